//! The HTTP edge both servers share (the dev chain's JSON-RPC and the pool's API): an axum router
//! served over HTTP/1.1 with named limits, so a slow or greedy client is dropped and the others
//! never notice.
//!
//! * [`HttpLimits::connections_max`]: open connections at most; a permit is taken *before* accept,
//!   so past the cap new clients wait in the kernel's backlog instead of costing memory.
//! * [`HttpLimits::header_read_timeout`]: the request head must arrive within this long of the
//!   connection (or of the previous response, on keep-alive): a slowloris client is closed.
//! * [`HttpLimits::connection_time_max`]: one connection lives at most this long, whatever it does
//!   (a slow body, an endless keep-alive); its in-flight request is answered first if it can be.
//! * [`HttpLimits::connections_per_ip_max`]: open connections from one IP address at most; one
//!   past it is answered `429 Too Many Requests` (naming the limit) and closed, so one client cannot
//!   take every permit.
//! * Shutdown: no new connections; open ones finish their request (at most
//!   [`SHUTDOWN_GRACE`]) and close.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How long open connections get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Limits of one HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Open connections at most.
    pub connections_max: usize,
    /// Open connections from one IP address (IPv6: one /64) at most; past it: 429 and close. Behind
    /// a reverse proxy every client has the proxy's address: raise it there.
    pub connections_per_ip_max: usize,
    /// Time allowed for a request's head.
    pub header_read_timeout: Duration,
    /// Longest life of one connection.
    pub connection_time_max: Duration,
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let per_ip: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(10); x }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Some(slot) = PerIp::take(&per_ip, peer.ip(), limits.connections_per_ip_max) else {
            drop(permit);
            // The refusal and its reason, written by a task of its own (bounded in number and
            // time: past REFUSALS_IN_FLIGHT the connection is just closed).
            if let Ok(r) = refusals.clone().try_acquire_owned() {
                let max = limits.connections_per_ip_max;
                tracker.spawn(async move {
                    let _r = r;
                    let _ = tokio::time::timeout(REFUSAL_TIME_MAX, refuse(stream, max)).await;
                });
            }
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let deadline = tokio::time::sleep(limits.connection_time_max);
            tokio::pin!(deadline);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = &mut deadline => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
                }
            }
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Refusals (429) being written at once at most; past it a refused connection is just closed.
pub const REFUSALS_IN_FLIGHT: usize = 64;
/// Time one refusal may take (write, close, drain).
pub const REFUSAL_TIME_MAX: Duration = Duration::from_secs(1);

/// Answers `429 Too Many Requests` naming the limit, closes our side, and drains what the client
/// sent (closing with unread bytes would reset the connection and could destroy the reply).
async fn refuse(mut stream: tokio::net::TcpStream, max: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!("too many connections from your address (connections_per_ip_max {max})\n");
    let reply = format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(reply.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// The address one per-IP count is kept for: IPv4 (also when mapped into IPv6) as it is, IPv6 by
/// its /64 (one subscriber's prefix: a client must not escape the cap by rotating addresses in it).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One connection's place in the per-IP count, given back when dropped.
struct PerIp {
    map: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts a connection from `ip`, or `None` if `ip` already has `max` open. The map holds only
    /// addresses with open connections (at most `connections_max` entries).
    fn take(map: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<PerIp> {
        let ip = ip_key(ip);
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(PerIp { map: map.clone(), ip })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
    use super::*;
    use axum::routing::get;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: HttpLimits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let app = Router::new().route("/", get(|| async { "ok" }));
        tokio::spawn(serve(l, app, limits, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Reads until EOF (or 5 s): what the server sent before closing.
    async fn read_all(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slowloris_is_closed_and_the_cap_holds_then_frees() {
        let limits = HttpLimits {
            connections_max: 2,
            connections_per_ip_max: 2,
            header_read_timeout: Duration::from_millis(300),
            connection_time_max: Duration::from_secs(30),
        };
        let (addr, _stop) = start(limits).await;
        // Two clients that never finish their request head hold both permits...
        let t0 = Instant::now();
        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        b.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...so a third is served only once the header timeout closed them.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let reply = read_all(&mut c).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("ok"));
        assert!(t0.elapsed() >= Duration::from_millis(250), "{:?}", t0.elapsed());
        let cut = read_all(&mut a).await;
        assert!(!cut.contains(" 200 "), "the slow client got no answer: {cut}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_lives_at_most_its_time() {
        let limits = HttpLimits {
            connections_max: 4,
            connections_per_ip_max: 4,
            header_read_timeout: Duration::from_secs(30),
            connection_time_max: Duration::from_millis(400),
        };
        let (addr, _stop) = start(limits).await;
        let t0 = Instant::now();
        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        // keep-alive requests, then silence: closed at the lifetime, not at the header timeout
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let got = read_all(&mut a).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        let t = t0.elapsed();
        assert!(
            t >= Duration::from_millis(350) && t < Duration::from_secs(3),
            "{t:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_address_gets_at_most_its_share_of_connections() {
        let limits = HttpLimits {
            connections_max: 16,
            connections_per_ip_max: 2,
            header_read_timeout: Duration::from_secs(30),
            connection_time_max: Duration::from_secs(30),
        };
        let (addr, _stop) = start(limits).await;
        // Two idle connections from 127.0.0.1 hold its share...
        let a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...so a third is told why and closed, while the server has permits left.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let refused = read_all(&mut c).await;
        assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
        assert!(refused.contains("connections_per_ip_max 2"), "{refused}");
        // Once one closes, the address is served again.
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut d = tokio::net::TcpStream::connect(addr).await.unwrap();
        d.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let reply = read_all(&mut d).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
