//! The miner's main loop: pools in failover order, reconnects with exponential backoff and jitter,
//! the status ticker, and the end-of-run summary.
//!
//! Order: always start from the first `-o` pool. A pool that cannot be reached or refuses the
//! handshake is skipped for the next one at once; only when every pool failed in a row does the
//! miner wait, `backoff.min` doubling up to `backoff.max`, each wait scaled by a random factor in
//! [0.5, 1) so that many miners do not reconnect in step. A session that got authorized resets the
//! backoff; when it ends the miner goes back to the first pool (so it returns to the primary as soon
//! as the primary is up). While on a backup, a prober checks every `failback` interval whether the
//! first pool accepts TCP connections again and, if so, switches back (cgminer's failback).
//! `client.reconnect` waits as asked, then reconnects to the same pool (like Bitaxe: a pool cannot
//! redirect the miner elsewhere).

use crate::connection::{session, PoolUrl, SessionEnd};
use crate::engine::{Engine, FOUND_QUEUE_MAX};
use crate::report::{Output, Report, Tally};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stratum::client::ClientOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reconnect backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First wait after a full round of failures.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

/// Everything `cloudmine mine` was asked to do.
#[derive(Debug, Clone)]
pub struct MinerConfig {
    /// Pools in failover order (at least one).
    pub pools: Vec<PoolUrl>,
    /// Stratum client options (user, password, rolling, suggested difficulty).
    pub client: ClientOptions,
    /// Hashing threads.
    pub threads: usize,
    /// Status line interval.
    pub status_every: Duration,
    /// Output form.
    pub output: Output,
    /// Stop after this long.
    pub time_limit: Option<Duration>,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// While on a backup pool, how often to check whether the first pool accepts connections again
    /// (and switch back to it if so). `None`: stay on the backup until its session ends.
    pub failback: Option<Duration>,
}

/// A small xorshift generator for jitter (no cryptographic use).
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(t ^ (u64::from(std::process::id()) << 32) | 1)
    }
    /// `d` scaled by a factor in [0.5, 1).
    fn scale(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let f = 0.5 + (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 0.5;
        d.mul_f64(f)
    }
}

/// Runs until `shutdown` (or the time limit); returns the final tally.
pub async fn run(cfg: MinerConfig, shutdown: CancellationToken) -> std::io::Result<Tally> {
    if cfg.pools.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no pool given (-o stratum+tcp://HOST:PORT)",
        ));
    }
    let (tx, mut rx) = mpsc::channel(FOUND_QUEUE_MAX);
    let engine = Arc::new(Engine::start(cfg.threads, tx)?);
    let report = Arc::new(Report::new(cfg.output, engine.threads()));
    let stop = shutdown.child_token();
    let ticker = {
        let (engine, report, stop) = (Arc::clone(&engine), Arc::clone(&report), stop.clone());
        let every = cfg.status_every.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = t.tick() => {
                        let h: Vec<u64> = engine.view().iter().map(|v| v.hashes).collect();
                        report.status(&h);
                    }
                }
            }
        })
    };
    let limiter = cfg.time_limit.map(|d| {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(d) => stop.cancel(),
            }
        })
    });
    let mut jitter = Jitter::new();
    let mut delay = cfg.backoff.min;
    let mut i = 0usize;
    let mut failures = 0usize;
    let n = cfg.pools.len();
    while !stop.is_cancelled() {
        let Some(url) = cfg.pools.get(i) else { break };
        let name = url.to_string();
        report.connecting(&name);
        // On a backup pool, a prober ends the session when the first pool is reachable again.
        let session_stop = stop.child_token();
        let prober = match (i, cfg.failback, cfg.pools.first()) {
            (1.., Some(every), Some(primary)) => {
                let (primary, token) = (primary.clone(), session_stop.clone());
                Some(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            () = token.cancelled() => return false,
                            () = tokio::time::sleep(every) => {}
                        }
                        let probe = tokio::net::TcpStream::connect((primary.host.as_str(), primary.port));
                        if let Ok(Ok(_)) =
                            tokio::time::timeout(crate::connection::CONNECT_TIMEOUT, probe).await
                        {
                            token.cancel();
                            return true;
                        }
                    }
                }))
            }
            _ => None,
        };
        let end = session(url, &cfg.client, &engine, &mut rx, &report, &session_stop).await;
        session_stop.cancel();
        let failed_back = match prober {
            Some(p) => p.await.unwrap_or(false),
            None => false,
        };
        if failed_back && !stop.is_cancelled() {
            report.disconnected(&name, "the first pool is reachable again: switching back", None);
            i = 0;
            failures = 0;
            delay = cfg.backoff.min;
            continue;
        }
        let wait = match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Reconnect(w) => {
                report.disconnected(&name, "pool asked to reconnect", Some(w.as_millis() as u64));
                delay = cfg.backoff.min;
                failures = 0;
                w
            }
            SessionEnd::Lost(why) => {
                delay = cfg.backoff.min;
                failures = 0;
                i = 0;
                let w = jitter.scale(Duration::from_millis(250));
                report.disconnected(&name, &why, Some(w.as_millis() as u64));
                w
            }
            SessionEnd::Failed(why) => {
                failures += 1;
                i = (i + 1) % n;
                if failures >= n {
                    failures = 0;
                    let w = jitter.scale(delay);
                    delay = (delay * 2).min(cfg.backoff.max);
                    report.disconnected(&name, &why, Some(w.as_millis() as u64));
                    w
                } else {
                    report.disconnected(&name, &format!("{why}; trying the next pool"), None);
                    Duration::ZERO
                }
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
    stop.cancel();
    let _ = ticker.await;
    if let Some(l) = limiter {
        let _ = l.await;
    }
    engine.clear();
    let hashes: Vec<u64> = engine.view().iter().map(|v| v.hashes).collect();
    report.summary(&hashes, engine.dropped());
    Ok(report.tally())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let d = j.scale(Duration::from_secs(2));
            assert!(d >= Duration::from_secs(1) && d < Duration::from_secs(2), "{d:?}");
        }
    }
}
