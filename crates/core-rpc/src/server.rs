//! A Core-compatible JSON-RPC server over HTTP.
//!
//! Behaviour copied from Core's `httprpc.cpp`: POST only; HTTP basic auth (401 with
//! `WWW-Authenticate` otherwise); a JSON-RPC 1.0 request (no `"jsonrpc":"2.0"`) gets HTTP 200 on
//! success, 404 for an unknown method, 400 for an invalid request and 500 for any other error, with
//! `{"result":null,"error":{code,message},"id":…}`; a JSON-RPC 2.0 request always gets 200; an array is
//! a batch. Handlers run on blocking threads, at most [`RPC_WORKERS_MAX`] at once.
//!
//! Limits: request body [`BODY_BYTES_MAX`], read within [`BODY_READ_TIMEOUT`] and only *after* the
//! credentials were checked (an unauthenticated client gets 401 without a byte of its body read),
//! batch length [`BATCH_LEN_MAX`], concurrent handlers [`RPC_WORKERS_MAX`], and the connection limits
//! of [`crate::http`] ([`RPC_HTTP_LIMITS`]). Bad input gets an error response; the server carries on.

use crate::error::{code, RpcError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Largest request body (a 4 MB block as hex is 8 MB).
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long reading a request body may take.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Connection limits of the JSON-RPC server (Core's `-rpcworkqueue` is 16; a wallet or a pool keeps
/// a few connections open).
pub const RPC_HTTP_LIMITS: crate::http::HttpLimits = crate::http::HttpLimits {
    connections_max: 64,
    connections_per_ip_max: 32,
    header_read_timeout: std::time::Duration::from_secs(10),
    connection_time_max: std::time::Duration::from_secs(300),
};
/// Most requests in one batch.
pub const BATCH_LEN_MAX: usize = 1_000;
/// Most handlers running at once (Core: `-rpcthreads` 4, `-rpcworkqueue` 16).
pub const RPC_WORKERS_MAX: usize = 16;

/// Answers one method call. Runs on a blocking thread.
pub trait RpcHandler: Send + Sync + 'static {
    /// `params` is the positional parameter list (`null` becomes empty).
    fn call(&self, method: &str, params: &[Value]) -> Result<Value, RpcError>;
}

/// Accepted credentials (`user:pass` strings, compared in constant time).
#[derive(Clone, Debug, Default)]
pub struct Credentials(Vec<String>);

impl Credentials {
    /// Accepts these `user:pass` pairs.
    pub fn new(pairs: Vec<String>) -> Credentials {
        Credentials(pairs)
    }
    fn check(&self, headers: &HeaderMap) -> bool {
        let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some(b64) = v.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        self.0.iter().any(|c| constant_time_eq(c.as_bytes(), &raw))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
struct AppState {
    handler: Arc<dyn RpcHandler>,
    creds: Arc<Credentials>,
    workers: Arc<Semaphore>,
}

/// Serves JSON-RPC on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn RpcHandler>,
    creds: Credentials,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState {
        handler,
        creds: Arc::new(creds),
        workers: Arc::new(Semaphore::new(RPC_WORKERS_MAX)),
    };
    let app = Router::new()
        .route("/", post(rpc))
        .route("/wallet/{name}", post(rpc))
        .with_state(state);
    crate::http::serve(listener, app, RPC_HTTP_LIMITS, shutdown).await
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

async fn rpc(State(st): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    if !st.creds.check(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")],
            "",
        )
            .into_response();
    }
    let body: Bytes =
        match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, BODY_BYTES_MAX)).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over {BODY_BYTES_MAX} bytes, or broken\n"),
                )
                    .into_response()
            }
            Err(_) => {
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body not read within {} s\n", BODY_READ_TIMEOUT.as_secs()),
                )
                    .into_response()
            }
        };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let err = RpcError::new(code::PARSE_ERROR, format!("Parse error: {e}"));
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"result": null, "error": err, "id": null}),
            );
        }
    };
    match parsed {
        Value::Array(reqs) => {
            if reqs.len() > BATCH_LEN_MAX {
                let err = RpcError::new(
                    code::INVALID_REQUEST,
                    format!(
                        "batch of {} requests exceeds the limit {BATCH_LEN_MAX}",
                        reqs.len()
                    ),
                );
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"result": null, "error": err, "id": null}),
                );
            }
            let mut out = Vec::with_capacity(reqs.len());
            for r in reqs {
                out.push(one(&st, r).await.1);
            }
            reply(StatusCode::OK, Value::Array(out))
        }
        other => {
            let (status, v) = one(&st, other).await;
            reply(status, v)
        }
    }
}

/// Handles one request object: (HTTP status for a lone request, response object).
async fn one(st: &AppState, req: Value) -> (StatusCode, Value) {
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let v2 = req.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let respond = |res: Result<Value, RpcError>| -> (StatusCode, Value) {
        match (res, v2) {
            (Ok(r), true) => (StatusCode::OK, json!({"jsonrpc": "2.0", "result": r, "id": id})),
            (Ok(r), false) => (StatusCode::OK, json!({"result": r, "error": null, "id": id})),
            (Err(e), true) => (StatusCode::OK, json!({"jsonrpc": "2.0", "error": e, "id": id})),
            (Err(e), false) => {
                let status = match e.code {
                    code::INVALID_REQUEST => StatusCode::BAD_REQUEST,
                    code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, json!({"result": null, "error": e, "id": id}))
            }
        }
    };
    let Some(obj) = req.as_object() else {
        return respond(Err(RpcError::new(
            code::INVALID_REQUEST,
            "Invalid Request object",
        )));
    };
    let Some(method) = obj.get("method").and_then(Value::as_str).map(str::to_string) else {
        return respond(Err(RpcError::new(
            code::INVALID_REQUEST,
            "Method must be a string",
        )));
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(_)) => {
            return respond(Err(RpcError::new(
                code::INVALID_PARAMETER,
                "named parameters are not supported by this server; pass params as an array",
            )))
        }
        Some(_) => {
            return respond(Err(RpcError::new(
                code::INVALID_REQUEST,
                "Params must be an array or object",
            )))
        }
    };
    let Ok(permit) = st.workers.clone().acquire_owned().await else {
        return respond(Err(RpcError::new(code::INTERNAL_ERROR, "server shutting down")));
    };
    let handler = st.handler.clone();
    let res = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        handler.call(&method, &params)
    })
    .await
    .unwrap_or_else(|e| {
        Err(RpcError::new(
            code::INTERNAL_ERROR,
            format!("handler failed: {e}"),
        ))
    });
    respond(res)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Echo;
    impl RpcHandler for Echo {
        fn call(&self, method: &str, _params: &[Value]) -> Result<Value, RpcError> {
            Ok(json!(method))
        }
    }

    async fn start() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(
            l,
            Arc::new(Echo),
            Credentials::new(vec!["u:p".into()]),
            std::future::pending(),
        ));
        addr
    }

    async fn exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Credentials are checked before a byte of the body is read: a client announcing 100 MB and
    /// sending none gets 401 at once; an authenticated one over the limit gets 413.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auth_before_body_and_the_body_limit() {
        let addr = start().await;
        let t = std::time::Instant::now();
        let r = exchange(
            addr,
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000000\r\n\r\n",
            b"",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        let big = vec![b' '; BODY_BYTES_MAX + 1];
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p");
        let r = exchange(
            addr,
            &format!(
                "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n",
                big.len()
            ),
            &big,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        let body = r#"{"id":1,"method":"getblockcount","params":[]}"#;
        let r = exchange(
            addr,
            &format!(
                "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
            body.as_bytes(),
        )
        .await;
        assert!(r.contains("\"result\":\"getblockcount\""), "{r}");
    }
}
