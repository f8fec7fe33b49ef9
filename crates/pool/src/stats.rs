//! Pool statistics: counters, a submit-latency histogram, and per-worker and pool-wide hashrate.
//!
//! Hashrate is the accepted work (assigned difficulty × 2^32) in minute buckets: the current minute
//! and the [`WINDOW_MINUTES`] whole minutes before it, divided by the time those buckets actually
//! cover: from the bucket start, or from when the worker connected (the pool started) if that is
//! later. A worker that connected 40 s ago is measured over 40 s, not over ten minutes; every
//! figure says how long it covers ([`Rate::window_s`]).
//!
//! At most [`WORKERS_TRACKED_MAX`] workers are kept; past that one not seen since the last sweep is
//! dropped (the CLOCK approximation of least-recently-used: amortised O(1) per share, never a scan
//! of the table under the lock). The pool-wide figures are kept beside them, O(1) to read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use units::{Difficulty, Work};

/// Workers kept in memory for the API.
pub const WORKERS_TRACKED_MAX: usize = 100_000;
/// Whole minutes in the hashrate window (plus the current one).
pub const WINDOW_MINUTES: u64 = 10;
/// Upper bounds (seconds) of the submit-latency histogram buckets.
pub const LATENCY_BUCKETS_S: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A hashrate figure and the time it covers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Hashes per second.
    pub hps: f64,
    /// Seconds of the window that the figure is taken over.
    pub window_s: f64,
}

/// Accepted work per minute: (minute number, hashes), newest last, at most WINDOW_MINUTES + 1.
#[derive(Clone, Debug, Default)]
struct Minutes(Vec<(u64, u128)>);

impl Minutes {
    fn add(&mut self, now_ms: u64, hashes: u128) {
        let minute = now_ms / 60_000;
        match self.0.last_mut() {
            Some((m, work)) if *m == minute => *work = work.saturating_add(hashes),
            _ => self.0.push((minute, hashes)),
        }
        let excess = self.0.len().saturating_sub(WINDOW_MINUTES as usize + 1);
        self.0.drain(..excess);
    }

    /// Work in the current minute and the WINDOW_MINUTES before it, over the time they cover since
    /// `since_ms` (at least one second, so a first share is not a division by nothing).
    fn rate(&self, now_ms: u64, since_ms: u64) -> Rate {
        let now_min = now_ms / 60_000;
        let first = now_min.saturating_sub(WINDOW_MINUTES);
        let work: u128 = self
            .0
            .iter()
            .filter(|(m, _)| *m >= first && *m <= now_min)
            .map(|(_, w)| *w)
            .sum();
        let from = (first * 60_000).max(since_ms);
        let window_s = (now_ms.saturating_sub(from) as f64 / 1000.0).max(1.0);
        Rate {
            hps: work as f64 / window_s,
            window_s,
        }
    }
}

/// One worker's figures.
#[derive(Clone, Debug)]
pub struct WorkerStats {
    /// Extranonce1 of its latest connection (public-pool's `sessionId`).
    pub session_id: String,
    /// First seen (unix ms): when its connection authorized.
    pub start_ms: u64,
    /// Last accepted share (unix ms).
    pub last_share_ms: u64,
    /// Best achieved difficulty.
    pub best: Difficulty,
    /// Accepted shares.
    pub accepted: u64,
    minutes: Minutes,
    /// Touched since the eviction sweep last passed it (CLOCK).
    touched: bool,
}

impl WorkerStats {
    /// Hashes per second over the window before `now_ms`, and how long it covers.
    pub fn rate(&self, now_ms: u64) -> Rate {
        self.minutes.rate(now_ms, self.start_ms)
    }

    /// Hashes per second over the window before `now_ms`.
    pub fn hashrate(&self, now_ms: u64) -> f64 {
        self.rate(now_ms).hps
    }
}

/// Workers by address, then by name: a share's lookup borrows its strings (no allocation), and one
/// address's workers are read without scanning the others.
#[derive(Debug, Default)]
struct Workers {
    by_address: HashMap<String, HashMap<String, WorkerStats>>,
    count: usize,
    /// Every tracked worker once, oldest insertion first: the CLOCK sweep's ring.
    ring: VecDeque<(String, String)>,
    /// Pool-wide work per minute, and since when (the first share the pool counted).
    pool: Minutes,
    pool_since_ms: Option<u64>,
    total_work: u128,
}

impl Workers {
    /// Drops one worker not touched since the sweep last passed it; touched ones get a second
    /// chance (their flag is cleared and they go to the back). Each share sets the flag once, so the
    /// sweep costs amortised O(1) per share.
    fn evict_one(&mut self) {
        while let Some((a, n)) = self.ring.pop_front() {
            let Some(m) = self.by_address.get_mut(&a) else {
                continue;
            };
            match m.get_mut(&n) {
                None => continue,
                Some(w) if w.touched => {
                    w.touched = false;
                    self.ring.push_back((a, n));
                }
                Some(_) => {
                    m.remove(&n);
                    if m.is_empty() {
                        self.by_address.remove(&a);
                    }
                    self.count = self.count.saturating_sub(1);
                    return;
                }
            }
        }
    }
}

/// Whether `hex` is the lowercase hex of `bytes`.
fn is_hex_of(hex: &str, bytes: &[u8]) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    hex.len() == bytes.len() * 2
        && hex.as_bytes().chunks(2).zip(bytes).all(|(h, b)| {
            h.first() == HEX.get(usize::from(b >> 4)) && h.get(1) == HEX.get(usize::from(b & 15))
        })
}

/// Counters for status lines, metrics and the API.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Open connections.
    pub connections: AtomicU64,
    /// Accepted shares.
    pub accepted: AtomicU64,
    /// Rejected shares and malformed requests.
    pub rejected: AtomicU64,
    /// Blocks accepted by the chain.
    pub blocks: AtomicU64,
    /// Blocks the chain rejected.
    pub blocks_rejected: AtomicU64,
    /// Connections refused (caps, bans).
    pub refused: AtomicU64,
    /// Shares in the share log not yet copied into the ledger's work log.
    pub ledger_backlog: AtomicU64,
    /// Share rows deleted from the share log by retention.
    pub pruned_shares: AtomicU64,
    /// Work records deleted from the ledger's work log by retention.
    pub pruned_work: AtomicU64,
    /// The newest clean job (new prevhash) and how its notify went out: connections written and the
    /// time from the template's arrival to the latest connection's completed write (µs).
    clean_job: AtomicU64,
    clean_written: AtomicU64,
    clean_last_us: AtomicU64,
    latency: [AtomicU64; 12],
    latency_sum_us: AtomicU64,
    workers: Mutex<Workers>,
}

impl PoolStats {
    /// A clean job was published: its fan-out figures start from zero.
    pub fn clean_published(&self, job: u64) {
        self.clean_job.store(job, Ordering::Relaxed);
        self.clean_written.store(0, Ordering::Relaxed);
        self.clean_last_us.store(0, Ordering::Relaxed);
    }

    /// A connection finished writing the notify of clean job `job`, `since_template` after the
    /// template arrived.
    pub fn clean_written(&self, job: u64, since_template: std::time::Duration) {
        if self.clean_job.load(Ordering::Relaxed) == job {
            self.clean_written.fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(since_template.as_micros()).unwrap_or(u64::MAX);
            self.clean_last_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// (clean job, connections written, template → last write in µs) for the newest clean job.
    pub fn clean_fanout(&self) -> (u64, u64, u64) {
        (
            self.clean_job.load(Ordering::Relaxed),
            self.clean_written.load(Ordering::Relaxed),
            self.clean_last_us.load(Ordering::Relaxed),
        )
    }

    /// Records a submit's latency (receipt to durable verdict).
    pub fn observe_latency(&self, secs: f64) {
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        if let Some(c) = self.latency.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records an accepted share for the API: `since_ms` is when the worker's connection authorized
    /// (the start of its hashrate window).
    #[allow(clippy::too_many_arguments)] // one share's facts, passed flat on the hot path
    pub fn worker_share(
        &self,
        address: &str,
        worker: &str,
        session: &[u8],
        assigned: Difficulty,
        achieved: Difficulty,
        since_ms: u64,
        now_ms: u64,
    ) {
        let hashes = assigned.work().hashes();
        let mut guard = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let g = &mut *guard;
        g.total_work = g.total_work.saturating_add(hashes);
        g.pool.add(now_ms, hashes);
        let since = *g.pool_since_ms.get_or_insert(since_ms.min(now_ms));
        g.pool_since_ms = Some(since.min(since_ms));
        let known = g.by_address.get(address).is_some_and(|m| m.contains_key(worker));
        if !known {
            if g.count >= WORKERS_TRACKED_MAX {
                g.evict_one();
            }
            g.count += 1;
            g.ring.push_back((address.to_string(), worker.to_string()));
            g.by_address.entry(address.to_string()).or_default().insert(
                worker.to_string(),
                WorkerStats {
                    session_id: stratum::to_hex(session),
                    start_ms: since_ms.min(now_ms),
                    last_share_ms: now_ms,
                    best: Difficulty::MIN,
                    accepted: 0,
                    minutes: Minutes::default(),
                    touched: false,
                },
            );
        }
        let Some(w) = g.by_address.get_mut(address).and_then(|m| m.get_mut(worker)) else {
            return;
        };
        if !is_hex_of(&w.session_id, session) {
            w.session_id = stratum::to_hex(session);
            // A new connection of a worker that was idle longer than the window starts a new window.
            if now_ms.saturating_sub(w.last_share_ms) > (WINDOW_MINUTES + 1) * 60_000 {
                w.start_ms = since_ms.min(now_ms);
            }
        }
        w.last_share_ms = now_ms;
        w.best = w.best.max(achieved);
        w.accepted += 1;
        w.touched = true;
        w.minutes.add(now_ms, hashes);
    }

    /// The workers of an address, by name.
    pub fn workers_of(&self, address: &str) -> Vec<(String, WorkerStats)> {
        let map = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(String, WorkerStats)> = map
            .by_address
            .get(address)
            .map(|m| m.iter().map(|(n, w)| (n.clone(), w.clone())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Pool hashrate over the window, and how long it covers (from the first counted share's
    /// connection on, at most the window): O(1), never a walk over the workers.
    pub fn rate(&self, now_ms: u64) -> Rate {
        let g = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        match g.pool_since_ms {
            Some(since) => g.pool.rate(now_ms, since),
            None => Rate {
                hps: 0.0,
                window_s: 0.0,
            },
        }
    }

    /// Pool hashrate over the window (see [`PoolStats::rate`]).
    pub fn hashrate(&self, now_ms: u64) -> f64 {
        self.rate(now_ms).hps
    }

    /// Expected hashes of every accepted share so far (exact: assigned difficulty × 2^32, summed).
    pub fn accepted_work(&self) -> Work {
        Work::from_hashes(self.workers.lock().unwrap_or_else(|p| p.into_inner()).total_work)
    }

    /// Workers tracked (at most [`WORKERS_TRACKED_MAX`]).
    pub fn workers_tracked(&self) -> usize {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self, height: u32, now_ms: u64) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in lines {
                s.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        metric(
            "cloudmine_pool_connections",
            "gauge",
            "Open Stratum connections.",
            &[(String::new(), g(&self.connections).to_string())],
        );
        metric(
            "cloudmine_pool_shares_total",
            "counter",
            "Shares by result (rejected includes malformed requests).",
            &[
                ("{result=\"accepted\"}".into(), g(&self.accepted).to_string()),
                ("{result=\"rejected\"}".into(), g(&self.rejected).to_string()),
            ],
        );
        let (_, clean_n, clean_us) = self.clean_fanout();
        metric(
            "cloudmine_pool_clean_notify_connections",
            "gauge",
            "Connections written the newest clean_jobs notify.",
            &[(String::new(), clean_n.to_string())],
        );
        metric(
            "cloudmine_pool_clean_notify_last_write_seconds",
            "gauge",
            "Newest clean_jobs notify: template arrival to the last connection's completed write.",
            &[(String::new(), format!("{:.6}", clean_us as f64 / 1e6))],
        );
        let work = self.accepted_work();
        let rate = self.rate(now_ms);
        metric(
            "cloudmine_pool_accepted_work_hashes_total",
            "counter",
            "Expected hashes of accepted shares (assigned difficulty x 2^32).",
            &[(String::new(), work.hashes().to_string())],
        );
        metric(
            "cloudmine_pool_hashrate_hps",
            "gauge",
            "Pool hashrate over the current minute and the 10 before it (or since the first miner connected).",
            &[(String::new(), format!("{:.0}", rate.hps))],
        );
        metric(
            "cloudmine_pool_hashrate_window_seconds",
            "gauge",
            "Seconds the pool hashrate figure covers.",
            &[(String::new(), format!("{:.0}", rate.window_s))],
        );
        metric(
            "cloudmine_pool_blocks_total",
            "counter",
            "Blocks found, by the chain's verdict.",
            &[
                ("{fate=\"accepted\"}".into(), g(&self.blocks).to_string()),
                ("{fate=\"rejected\"}".into(), g(&self.blocks_rejected).to_string()),
            ],
        );
        metric(
            "cloudmine_pool_connections_refused_total",
            "counter",
            "Connections refused by caps or bans.",
            &[(String::new(), g(&self.refused).to_string())],
        );
        metric(
            "cloudmine_pool_ledger_backlog",
            "gauge",
            "Accepted shares in the local share log not yet copied into the ledger.",
            &[(String::new(), g(&self.ledger_backlog).to_string())],
        );
        metric(
            "cloudmine_pool_retention_deleted_total",
            "counter",
            "Rows deleted by retention since start (share log shares, ledger work log records).",
            &[
                ("{log=\"shares\"}".into(), g(&self.pruned_shares).to_string()),
                ("{log=\"work\"}".into(), g(&self.pruned_work).to_string()),
            ],
        );
        metric(
            "cloudmine_chain_height",
            "gauge",
            "Height of the chain tip.",
            &[(String::new(), height.to_string())],
        );
        let mut cum = 0u64;
        let mut lines = Vec::new();
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            cum += self.latency.get(i).map_or(0, g);
            lines.push((format!("_bucket{{le=\"{b}\"}}"), cum.to_string()));
        }
        cum += self.latency.get(LATENCY_BUCKETS_S.len()).map_or(0, g);
        lines.push(("_bucket{le=\"+Inf\"}".into(), cum.to_string()));
        lines.push((
            "_sum".into(),
            format!("{:.6}", g(&self.latency_sum_us) as f64 / 1e6),
        ));
        lines.push(("_count".into(), cum.to_string()));
        metric(
            "cloudmine_pool_submit_latency_seconds",
            "histogram",
            "mining.submit from receipt to durable verdict.",
            &lines,
        );
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
    use super::*;

    #[test]
    fn workers_are_kept_per_address_and_an_untouched_one_goes_first() {
        let s = PoolStats::default();
        let d = Difficulty::ONE;
        s.worker_share("a", "w1", &[0, 0, 0, 1], d, d, 60_000, 60_000);
        s.worker_share("a", "w2", &[0, 0, 0, 2], d, d, 60_001, 60_001);
        s.worker_share("b", "w1", &[0, 0, 0, 3], d, d, 60_002, 60_002);
        s.worker_share("a", "w1", &[0xab, 0, 0, 4], d, d, 119_000, 120_000);
        let a = s.workers_of("a");
        assert_eq!(
            a.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["w1", "w2"]
        );
        assert_eq!(a[0].1.accepted, 2);
        assert_eq!(
            a[0].1.session_id, "ab000004",
            "the latest connection's extranonce1"
        );
        assert_eq!(s.workers_of("b").len(), 1);
        assert!(s.workers_of("c").is_empty());
        // a.w1: two difficulty-1 shares over the 120 s since it connected at 60 s.
        let r = a[0].1.rate(180_000);
        assert_eq!(r.window_s, 120.0);
        assert!((r.hps - 2.0 * 2f64.powi(32) / 120.0).abs() < 1.0);
        // Later than the window: the window is the current minute and the 10 before it.
        let r = a[0].1.rate(1_000_000);
        assert_eq!(r.window_s, 1_000.0 - 360.0);
        // Full table: a worker not touched since the sweep passed it is dropped for a new one.
        {
            let mut g = s.workers.lock().unwrap();
            let mut filler = g.by_address["b"]["w1"].clone();
            filler.touched = false;
            for i in 0..WORKERS_TRACKED_MAX - 3 {
                g.by_address
                    .entry(format!("x{i}"))
                    .or_default()
                    .insert("w".into(), filler.clone());
                g.ring.push_back((format!("x{i}"), "w".into()));
                g.count += 1;
            }
        }
        // a.w1 was touched twice, a.w2 and b.w1 once: the sweep clears the first three flags and
        // drops the first untouched worker after them (x0).
        s.worker_share("c", "new", &[0, 0, 0, 5], d, d, 200_000, 200_000);
        assert_eq!(s.workers_tracked(), WORKERS_TRACKED_MAX);
        assert_eq!(s.workers_of("x0").len(), 0, "x0 evicted");
        assert_eq!(s.workers_of("a").len(), 2);
        assert_eq!(s.workers_of("c").len(), 1);
        // The sweep goes on where it stopped: x1 next (a.w1, a.w2, b.w1 went to the back).
        s.worker_share("c", "new2", &[0, 0, 0, 6], d, d, 200_000, 200_001);
        assert_eq!(s.workers_of("x1").len(), 0, "x1 evicted");
        assert_eq!(s.workers_tracked(), WORKERS_TRACKED_MAX);
    }

    #[test]
    fn pool_rate_covers_the_time_since_the_first_miner_connected() {
        let s = PoolStats::default();
        assert_eq!(s.rate(1_000).hps, 0.0);
        let d = Difficulty::from_f64(0.001).unwrap();
        // a miner connected at 100 s; 100 shares by 140 s
        for i in 0..100u64 {
            s.worker_share("a", "w", &[1, 2, 3, 4], d, d, 100_000, 100_000 + i * 400);
        }
        let r = s.rate(140_000);
        assert_eq!(r.window_s, 40.0);
        let expect = 100.0 * d.to_f64() * 2f64.powi(32) / 40.0;
        assert!((r.hps - expect).abs() / expect < 1e-3, "{} vs {expect}", r.hps);
        assert_eq!(s.accepted_work().hashes(), 100 * d.work().hashes());
    }
}
