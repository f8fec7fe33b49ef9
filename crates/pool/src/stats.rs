//! Pool statistics: counters, a submit-latency histogram, and per-worker figures for the API.
//!
//! Worker hashrate is the accepted work (assigned difficulty × 2^32) in the last ten whole minutes
//! divided by 600 s, the window public-pool reports; minutes are buckets, so the window is exact to the
//! minute and a share is counted in exactly one bucket. At most [`WORKERS_TRACKED_MAX`] workers are
//! kept; past that the one seen longest ago is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use units::{Difficulty, Work};

/// Workers kept in memory for the API.
pub const WORKERS_TRACKED_MAX: usize = 100_000;
/// Minutes in the hashrate window.
pub const WINDOW_MINUTES: u64 = 10;
/// Upper bounds (seconds) of the submit-latency histogram buckets.
pub const LATENCY_BUCKETS_S: [f64; 11] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// One worker's figures.
#[derive(Clone, Debug)]
pub struct WorkerStats {
    /// Extranonce1 of its latest connection (public-pool's `sessionId`).
    pub session_id: String,
    /// First seen (unix ms).
    pub start_ms: u64,
    /// Last accepted share (unix ms).
    pub last_share_ms: u64,
    /// Best achieved difficulty.
    pub best: Difficulty,
    /// Accepted shares.
    pub accepted: u64,
    /// Work per minute: (minute number, hashes), newest last, at most WINDOW_MINUTES + 1.
    minutes: Vec<(u64, u128)>,
}

impl WorkerStats {
    /// Hashes per second over the last WINDOW_MINUTES whole minutes before `now_ms`.
    pub fn hashrate(&self, now_ms: u64) -> f64 {
        let now_min = now_ms / 60_000;
        let work: u128 = self
            .minutes
            .iter()
            .filter(|(m, _)| *m < now_min && *m + WINDOW_MINUTES >= now_min)
            .map(|(_, w)| *w)
            .sum();
        work as f64 / (WINDOW_MINUTES * 60) as f64
    }
}

/// Workers by address, then by name: a share's lookup borrows its strings (no allocation), and one
/// address's workers are read without scanning the others.
#[derive(Debug, Default)]
struct Workers {
    by_address: HashMap<String, HashMap<String, WorkerStats>>,
    count: usize,
}

impl Workers {
    /// Drops the worker seen longest ago (a linear scan, only when the table is full).
    fn evict_oldest(&mut self) {
        let oldest = self
            .by_address
            .iter()
            .flat_map(|(a, m)| m.iter().map(move |(n, w)| (w.last_share_ms, a, n)))
            .min()
            .map(|(_, a, n)| (a.clone(), n.clone()));
        if let Some((a, n)) = oldest {
            if let Some(m) = self.by_address.get_mut(&a) {
                if m.remove(&n).is_some() {
                    self.count -= 1;
                }
                if m.is_empty() {
                    self.by_address.remove(&a);
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
    /// Accepted work in units of 2^16 hashes (difficulty fixed-point >> 16).
    pub accepted_work: AtomicU64,
    /// Blocks accepted by the chain.
    pub blocks: AtomicU64,
    /// Blocks the chain rejected.
    pub blocks_rejected: AtomicU64,
    /// Connections refused (caps, bans).
    pub refused: AtomicU64,
    /// Shares in the share log not yet copied into the ledger's work log.
    pub ledger_backlog: AtomicU64,
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

    /// Records an accepted share for the API.
    pub fn worker_share(
        &self,
        address: &str,
        worker: &str,
        session: &[u8],
        assigned: Difficulty,
        achieved: Difficulty,
        now_ms: u64,
    ) {
        let mut guard = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let known = guard
            .by_address
            .get(address)
            .is_some_and(|m| m.contains_key(worker));
        if !known {
            if guard.count >= WORKERS_TRACKED_MAX {
                guard.evict_oldest();
            }
            guard.count += 1;
            guard.by_address.entry(address.to_string()).or_default().insert(
                worker.to_string(),
                WorkerStats {
                    session_id: stratum::to_hex(session),
                    start_ms: now_ms,
                    last_share_ms: now_ms,
                    best: Difficulty::MIN,
                    accepted: 0,
                    minutes: Vec::new(),
                },
            );
        }
        let Some(w) = guard.by_address.get_mut(address).and_then(|m| m.get_mut(worker)) else {
            return;
        };
        if !is_hex_of(&w.session_id, session) {
            w.session_id = stratum::to_hex(session);
        }
        w.last_share_ms = now_ms;
        w.best = w.best.max(achieved);
        w.accepted += 1;
        let minute = now_ms / 60_000;
        match w.minutes.last_mut() {
            Some((m, work)) if *m == minute => *work = work.saturating_add(assigned.work().hashes()),
            _ => w.minutes.push((minute, assigned.work().hashes())),
        }
        let excess = w.minutes.len().saturating_sub(WINDOW_MINUTES as usize + 1);
        w.minutes.drain(..excess);
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

    /// Pool hashrate over the window (sum of workers).
    pub fn hashrate(&self, now_ms: u64) -> f64 {
        let map = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        map.by_address
            .values()
            .flat_map(|m| m.values())
            .map(|w| w.hashrate(now_ms))
            .sum()
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
        let work = Work::from_hashes(u128::from(g(&self.accepted_work)) << 16);
        metric(
            "cloudmine_pool_accepted_work_hashes_total",
            "counter",
            "Expected hashes of accepted shares (assigned difficulty x 2^32).",
            &[(String::new(), work.hashes().to_string())],
        );
        metric(
            "cloudmine_pool_hashrate_hps",
            "gauge",
            "Pool hashrate over the last 10 whole minutes.",
            &[(String::new(), format!("{:.0}", self.hashrate(now_ms)))],
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
    fn workers_are_kept_per_address_and_the_longest_unseen_goes_first() {
        let s = PoolStats::default();
        let d = Difficulty::ONE;
        s.worker_share("a", "w1", &[0, 0, 0, 1], d, d, 60_000);
        s.worker_share("a", "w2", &[0, 0, 0, 2], d, d, 60_001);
        s.worker_share("b", "w1", &[0, 0, 0, 3], d, d, 60_002);
        s.worker_share("a", "w1", &[0xab, 0, 0, 4], d, d, 120_000);
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
        // a.w1's two difficulty-1 shares (minutes 1 and 2) are inside the window before minute 3.
        assert!((a[0].1.hashrate(180_000) - 2.0 * 2f64.powi(32) / 600.0).abs() < 1.0);
        // Full table: the worker seen longest ago (a.w2) is dropped for a new one.
        {
            let mut g = s.workers.lock().unwrap();
            let filler = g.by_address["b"]["w1"].clone();
            for i in 0..WORKERS_TRACKED_MAX - 3 {
                g.by_address
                    .entry(format!("x{i}"))
                    .or_default()
                    .insert("w".into(), filler.clone());
                g.count += 1;
            }
        }
        // (the filler's last share is b.w1's, 60_002: a.w2 at 60_001 is the oldest)
        s.worker_share("c", "new", &[0, 0, 0, 5], d, d, 200_000);
        assert_eq!(s.workers.lock().unwrap().count, WORKERS_TRACKED_MAX);
        assert_eq!(s.workers_of("a").len(), 1, "a.w2 evicted");
        assert_eq!(s.workers_of("c").len(), 1);
    }
}
