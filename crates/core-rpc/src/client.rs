//! A JSON-RPC client for Bitcoin Core (and our dev chain's Core face) over HTTP/1.1.
//!
//! Auth is HTTP basic with `user:pass` or a cookie file (re-read on every 401, because Core writes a
//! new cookie at each start). Every call has a timeout ([`RPC_TIMEOUT_DEFAULT`]) and a response size
//! limit ([`RESPONSE_BYTES_MAX`]); errors say which node and what failed.

use crate::error::RpcError;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default per-call timeout.
pub const RPC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Largest response accepted (a mainnet template with a full block's transactions is ~2–4 MB of JSON).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// `user:pass`.
    UserPass(String, String),
    /// A Core cookie file (`__cookie__:<hex>`).
    CookieFile(PathBuf),
}

impl Auth {
    /// Parses `user:pass`, or a path to a cookie file when the value names an existing file or has no ':'.
    pub fn parse(s: &str) -> Auth {
        if std::path::Path::new(s).is_file() || !s.contains(':') {
            return Auth::CookieFile(PathBuf::from(s));
        }
        match s.split_once(':') {
            Some((u, p)) => Auth::UserPass(u.to_string(), p.to_string()),
            None => Auth::CookieFile(PathBuf::from(s)),
        }
    }

    fn header(&self) -> Result<Option<String>, ClientError> {
        let pair = match self {
            Auth::None => return Ok(None),
            Auth::UserPass(u, p) => format!("{u}:{p}"),
            Auth::CookieFile(path) => std::fs::read_to_string(path)
                .map_err(|e| ClientError::Cookie(format!("{}: {e}", path.display())))?
                .trim()
                .to_string(),
        };
        Ok(Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )))
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not connect or the connection broke.
    #[error("cannot reach {url}: {detail}")]
    Transport {
        /// The node.
        url: String,
        /// What happened.
        detail: String,
    },
    /// No answer within the timeout.
    #[error("{url}: no answer to {method} within {timeout_ms} ms")]
    Timeout {
        /// The node.
        url: String,
        /// The method.
        method: String,
        /// The timeout.
        timeout_ms: u128,
    },
    /// HTTP 401/403.
    #[error(
        "{url}: authentication failed (HTTP {status}); check --bitcoind-auth user:pass or the cookie file"
    )]
    Auth {
        /// The node.
        url: String,
        /// Status code.
        status: u16,
    },
    /// The cookie file cannot be read.
    #[error("cannot read the RPC cookie file {0}")]
    Cookie(String),
    /// The node answered with an RPC error.
    #[error("{url}: {error}")]
    Rpc {
        /// The node.
        url: String,
        /// The error.
        error: RpcError,
    },
    /// The answer is not what JSON-RPC promises.
    #[error("{url}: bad response ({detail})")]
    BadResponse {
        /// The node.
        url: String,
        /// What is wrong.
        detail: String,
    },
}

impl ClientError {
    /// The RPC error, if the node answered with one.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A JSON-RPC client for one node.
#[derive(Clone, Debug)]
pub struct RpcClient {
    url: String,
    uri: Uri,
    auth: Auth,
    timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
    next_id: std::sync::Arc<AtomicU64>,
}

impl RpcClient {
    /// A client for `url` (`http://host:port[/path]`).
    pub fn new(url: &str, auth: Auth) -> Result<RpcClient, ClientError> {
        let uri: Uri = url.parse().map_err(|e| ClientError::Transport {
            url: url.into(),
            detail: format!("bad URL: {e}"),
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::Transport {
                url: url.into(),
                detail: "only http:// URLs are supported (Core's RPC has no TLS)".into(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(4)
            .build(connector);
        Ok(RpcClient {
            url: url.to_string(),
            uri,
            auth,
            timeout: RPC_TIMEOUT_DEFAULT,
            http,
            next_id: std::sync::Arc::new(AtomicU64::new(1)),
        })
    }

    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, t: Duration) -> RpcClient {
        self.timeout = t;
        self
    }

    /// The node's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls `method` with positional `params`, waiting up to the client's timeout.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call_with_timeout(method, params, self.timeout).await
    }

    /// [`RpcClient::call`] with its own timeout, for the few calls that are slow by nature
    /// (`scantxoutset` reads the whole UTXO set).
    pub async fn call_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params}).to_string();
        let fut = self.send(body.into_bytes().into());
        let (status, bytes) =
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| ClientError::Timeout {
                    url: self.url.clone(),
                    method: method.to_string(),
                    timeout_ms: timeout.as_millis(),
                })??;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ClientError::Auth {
                url: self.url.clone(),
                status: status.as_u16(),
            });
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
            url: self.url.clone(),
            detail: format!("HTTP {status}, body is not JSON: {e}"),
        })?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let error: RpcError =
                serde_json::from_value(err.clone()).unwrap_or_else(|_| RpcError::new(-1, err.to_string()));
            return Err(ClientError::Rpc {
                url: self.url.clone(),
                error,
            });
        }
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(ClientError::BadResponse {
                url: self.url.clone(),
                detail: format!("HTTP {status}, no 'result'"),
            }),
        }
    }

    async fn send(&self, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
        let transport = |detail: String| ClientError::Transport {
            url: self.url.clone(),
            detail,
        };
        let mut req = Request::post(self.uri.clone()).header("content-type", "application/json");
        if let Some(h) = self.auth.header()? {
            req = req.header("authorization", h);
        }
        let req = req.body(Full::new(body)).map_err(|e| transport(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| transport(format!("{e:?}")))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| {
                transport(format!(
                    "reading the response (limit {RESPONSE_BYTES_MAX} bytes): {e}"
                ))
            })?
            .to_bytes();
        Ok((status, bytes))
    }
}
