//! One pool session over TCP: the I/O edge around [`stratum::client::ClientSession`].
//!
//! Reads lines with the pool-side cap ([`POOL_LINE_BYTES_MAX`]), feeds them to the client state
//! machine, hands jobs to the [`Engine`], and submits the engine's verified shares. Limits, each
//! ending the session with a reason that names it: [`CONNECT_TIMEOUT`], [`HANDSHAKE_TIMEOUT`]
//! (subscribe and authorize answered), [`IDLE_TIMEOUT`] (no line from the pool), [`WRITE_TIMEOUT`],
//! the line cap, and the client's bound on requests in flight.
//!
//! Stale shares are not sent: a share from work older than the newest `clean_jobs` job or from a
//! previous connection is counted as "not sent (stale)" instead; a new connection voids all old work.
//! After submitting a share that is also a block, shares on the same prevhash are held back until
//! the pool's new job makes them stale, or until [`BLOCK_SETTLE`] after the pool's answer passes
//! without one (the chain refused the block), when they are sent.

use crate::engine::Engine;
use crate::report::Report;
use crate::work::Found;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};
use stratum::client::{Assignment, ClientError, ClientEvent, ClientOptions, ClientSession};
use stratum::framing::{LineBuffer, POOL_LINE_BYTES_MAX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long subscribe and authorize may take to be answered.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence from an authorized pool before reconnecting (pools send a job at least every
/// minute or so).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one write to the pool may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// A pool address from `-o`: `stratum+tcp://host:port`, `tcp://host:port` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUrl {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl fmt::Display for PoolUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "stratum+tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "stratum+tcp://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for PoolUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<PoolUrl, String> {
        let rest = if let Some((scheme, rest)) = s.split_once("://") {
            match scheme {
                "stratum+tcp" | "tcp" | "stratum" => rest,
                "stratum+ssl" | "stratum+tls" | "ssl" | "tls" => {
                    return Err(format!(
                        "{s}: TLS pools are not supported yet; use stratum+tcp://"
                    ))
                }
                other => {
                    return Err(format!(
                        "{s}: unknown scheme {other:?}; use stratum+tcp://HOST:PORT"
                    ))
                }
            }
        } else {
            s
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r
                .split_once("]:")
                .ok_or_else(|| format!("{s}: expected [IPv6]:PORT"))?;
            (h, p)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| format!("{s}: expected HOST:PORT"))?
        };
        if host.is_empty() || host.len() > 253 {
            return Err(format!("{s}: empty or overlong host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s}: port must be 1..=65535"))?;
        Ok(PoolUrl {
            host: host.to_string(),
            port,
        })
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The session never got authorized (connect refused, handshake refused or timed out).
    Failed(String),
    /// An authorized session ended.
    Lost(String),
    /// The pool sent `client.reconnect`; wait this long, then reconnect to the same pool.
    Reconnect(Duration),
}

async fn send(w: &mut OwnedWriteHalf, lines: Vec<String>) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let buf = lines.concat();
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(buf.as_bytes())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!(
            "write blocked longer than {WRITE_TIMEOUT:?} (WRITE_TIMEOUT)"
        )),
    }
}

/// After the pool answers a share that was a block, how long shares on the same prevhash are held
/// back waiting for the pool's new job. If none comes (the chain refused the block), they are sent.
pub const BLOCK_SETTLE: Duration = Duration::from_millis(500);
/// Shares held back during [`BLOCK_SETTLE`], at most; more are counted as not sent (stale).
pub const HELD_SHARES_MAX: usize = 256;

/// Per-session bookkeeping of what may still be submitted.
struct Staleness {
    first_seq: u64,
    min_seq: u64,
    /// A block was submitted on this prevhash: shares on it wait.
    spent: Option<[u8; 32]>,
    /// When the pool answered that block.
    block_answered: Option<Instant>,
    held: Vec<Found>,
}

impl Staleness {
    fn fresh(&self, f: &Found) -> bool {
        f.seq >= self.first_seq && f.seq >= self.min_seq
    }
    fn settle_deadline(&self) -> Option<Instant> {
        self.block_answered.map(|t| t + BLOCK_SETTLE)
    }
}

/// Queues a share's submit; returns false if the client refused it (logged).
fn submit_share(
    pool: &str,
    cs: &mut ClientSession,
    pending: &mut HashMap<u64, (Found, Instant)>,
    stale: &mut Staleness,
    f: Found,
) {
    match cs.submit(&f.job_id, &f.en2, f.ntime, f.nonce, f.version_bits) {
        Ok(id) => {
            if f.is_block {
                stale.spent = Some(f.prevhash);
                stale.block_answered = None;
            }
            pending.insert(id, (f, Instant::now()));
        }
        Err(e) => tracing::warn!(pool, error = %e, "share not sent"),
    }
}

/// Runs one session until it ends.
pub async fn session(
    url: &PoolUrl,
    opts: &ClientOptions,
    engine: &Engine,
    found: &mut mpsc::Receiver<Found>,
    report: &Report,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let pool = url.to_string();
    let stream = tokio::select! {
        () = shutdown.cancelled() => return SessionEnd::Shutdown,
        r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((url.host.as_str(), url.port))) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return SessionEnd::Failed(format!("connect failed: {e}")),
            Err(_) => return SessionEnd::Failed(format!("connect took longer than {CONNECT_TIMEOUT:?} (CONNECT_TIMEOUT)")),
        },
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut cs = ClientSession::new(opts.clone());
    cs.start();
    if let Err(e) = send(&mut wr, cs.take_output()).await {
        return SessionEnd::Failed(e);
    }
    // Work from an earlier session is void.
    engine.clear();
    let mut stale = Staleness {
        first_seq: engine.seq() + 1,
        min_seq: 0,
        spent: None,
        block_answered: None,
        held: Vec::new(),
    };
    let end = run(
        &pool, &mut cs, &mut rd, &mut wr, engine, found, report, shutdown, &mut stale,
    )
    .await;
    engine.clear();
    end
}

#[allow(clippy::too_many_arguments)]
async fn run(
    pool: &str,
    cs: &mut ClientSession,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    engine: &Engine,
    found: &mut mpsc::Receiver<Found>,
    report: &Report,
    shutdown: &CancellationToken,
    stale: &mut Staleness,
) -> SessionEnd {
    let started = Instant::now();
    let mut last_line = Instant::now();
    let mut lines = LineBuffer::new(POOL_LINE_BYTES_MAX);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut pending: HashMap<u64, (Found, Instant)> = HashMap::new();
    let mut current: Option<Assignment> = None;
    let mut subscribed: Option<(String, usize)> = None;
    let lost = |cs: &ClientSession, why: String| {
        if cs.ready() {
            SessionEnd::Lost(why)
        } else {
            SessionEnd::Failed(why)
        }
    };
    loop {
        let deadline = if cs.ready() {
            last_line + IDLE_TIMEOUT
        } else {
            (started + HANDSHAKE_TIMEOUT).min(last_line + IDLE_TIMEOUT)
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            r = rd.read(&mut buf) => {
                let n = match r {
                    Ok(0) => return lost(cs, "pool closed the connection".into()),
                    Ok(n) => n,
                    Err(e) => return lost(cs, format!("read failed: {e}")),
                };
                last_line = Instant::now();
                lines.extend(buf.get(..n).unwrap_or_default());
                loop {
                    let events = match lines.next_line() {
                        Ok(Some(line)) => cs.on_line(line),
                        Ok(None) => break,
                        Err(e) => return lost(cs, format!("pool sent a line longer than {} bytes (POOL_LINE_BYTES_MAX)", e.limit)),
                    };
                    let events = match events {
                        Ok(ev) => ev,
                        Err(e @ (ClientError::Subscribe(_) | ClientError::Authorize(_) | ClientError::OutOfOrder(_))) => {
                            return SessionEnd::Failed(e.to_string())
                        }
                        Err(e) => return lost(cs, e.to_string()),
                    };
                    for ev in events {
                        match ev {
                            ClientEvent::Subscribed { extranonce1, extranonce2_size } => {
                                subscribed = Some((stratum::to_hex(&extranonce1), extranonce2_size));
                            }
                            ClientEvent::VersionRolling(_) | ClientEvent::Difficulty(_) => {}
                            ClientEvent::Authorized => {
                                let (en1, size) = subscribed.clone().unwrap_or_default();
                                report.connected(pool, &en1, size, cs.version_mask());
                            }
                            ClientEvent::Job(a) => {
                                match engine.set_work(&a) {
                                    Ok(seq) => {
                                        if a.notify.clean_jobs {
                                            stale.min_seq = seq;
                                            stale.spent = None;
                                            stale.block_answered = None;
                                            for _ in stale.held.drain(..) {
                                                report.discarded_stale();
                                            }
                                        }
                                        report.job(&a.notify.job_id, a.notify.clean_jobs, a.difficulty);
                                        current = Some(*a);
                                    }
                                    Err(e) => {
                                        report.bad_job(&e.to_string());
                                        if a.notify.clean_jobs {
                                            // The old work is stale and the new one unusable: idle until the next job.
                                            engine.clear();
                                        }
                                    }
                                }
                            }
                            ClientEvent::VersionMask(_) => {
                                // Applies at once: re-issue the current job under the new mask.
                                if let Some(a) = current.as_mut() {
                                    a.version_mask = cs.version_mask();
                                    match engine.set_work(a) {
                                        Ok(seq) => stale.min_seq = seq,
                                        Err(e) => report.bad_job(&e.to_string()),
                                    }
                                }
                            }
                            ClientEvent::SubmitResult { id, outcome } => {
                                if let Some((f, at)) = pending.remove(&id) {
                                    if f.is_block && stale.spent == Some(f.prevhash) {
                                        stale.block_answered = Some(Instant::now());
                                    }
                                    let ms = at.elapsed().as_secs_f64() * 1e3;
                                    report.verdict(&f.job_id, f.nonce, f.difficulty, f.is_block, &outcome, ms);
                                }
                            }
                            ClientEvent::Reconnect { host, port, wait_s } => {
                                if host.is_some() || port.is_some() {
                                    tracing::info!(?host, ?port, "client.reconnect names a host; reconnecting to the configured pool instead");
                                }
                                return SessionEnd::Reconnect(Duration::from_secs(wait_s));
                            }
                            ClientEvent::Message(m) => report.message(&m),
                            ClientEvent::Ignored(why) => tracing::warn!(pool, %why, "ignored a line from the pool"),
                        }
                    }
                }
                if let Err(e) = send(wr, cs.take_output()).await {
                    return lost(cs, e);
                }
            }
            f = found.recv() => {
                let Some(f) = f else { return SessionEnd::Shutdown };
                if !stale.fresh(&f) {
                    report.discarded_stale();
                    continue;
                }
                if stale.spent == Some(f.prevhash) {
                    if stale.held.len() < HELD_SHARES_MAX {
                        stale.held.push(f);
                    } else {
                        report.discarded_stale();
                    }
                    continue;
                }
                submit_share(pool, cs, &mut pending, stale, f);
                if let Err(e) = send(wr, cs.take_output()).await {
                    return lost(cs, e);
                }
            }
            () = sleep_until_opt(stale.settle_deadline()) => {
                // The pool answered our block and sent no new job: it still works on that prevhash.
                stale.spent = None;
                stale.block_answered = None;
                for f in std::mem::take(&mut stale.held) {
                    if stale.fresh(&f) {
                        submit_share(pool, cs, &mut pending, stale, f);
                    } else {
                        report.discarded_stale();
                    }
                }
                if let Err(e) = send(wr, cs.take_output()).await {
                    return lost(cs, e);
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                return if cs.ready() {
                    SessionEnd::Lost(format!("no line from the pool for {IDLE_TIMEOUT:?} (IDLE_TIMEOUT)"))
                } else {
                    SessionEnd::Failed(format!("subscribe/authorize not answered within {HANDSHAKE_TIMEOUT:?} (HANDSHAKE_TIMEOUT)"))
                };
            }
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_urls() {
        let p: PoolUrl = "stratum+tcp://127.0.0.1:3333".parse().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 3333));
        assert_eq!(p.to_string(), "stratum+tcp://127.0.0.1:3333");
        let p: PoolUrl = "pool.example:3334".parse().unwrap();
        assert_eq!(p.port, 3334);
        let p: PoolUrl = "stratum+tcp://[::1]:3333/".parse().unwrap();
        assert_eq!(p.host, "::1");
        for bad in [
            "stratum+ssl://x:1",
            "http://x:1",
            "x",
            "x:0",
            "x:99999",
            ":3333",
            "stratum+tcp://[::1]3333",
        ] {
            assert!(bad.parse::<PoolUrl>().is_err(), "{bad}");
        }
    }
}
