//! What the miner tells its user: events as they happen, a status line per interval (hashrate per
//! thread and total, accepted / rejected / stale with reasons, pool difficulty, uptime) and an
//! end-of-run summary. Three forms: human lines, `--json` (one JSON object per line, for scripts
//! and tests) and `--quiet` (warnings and the summary only). Everything goes to stdout; logs from
//! `tracing` go to stderr.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Output form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
    /// Only warnings and the summary.
    Quiet,
}

/// Counters shown in status lines and the summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Shares the pool accepted.
    pub accepted: u64,
    /// Shares the pool rejected as stale (job not found / stale).
    pub stale: u64,
    /// Other rejects.
    pub rejected: u64,
    /// Reject reasons as the pool gave them, with counts.
    pub reasons: BTreeMap<String, u64>,
    /// Shares found but not sent because their job was already superseded.
    pub discarded_stale: u64,
    /// Accepted shares that also met the network target (block candidates: whether the chain took
    /// each is the pool's to say).
    pub block_candidates: u64,
    /// Sum of the difficulty of accepted shares (expected hashes / 2^32).
    pub accepted_difficulty: f64,
    /// Connections that got as far as authorized.
    pub sessions: u64,
}

#[derive(Debug)]
struct State {
    tally: Tally,
    pool: Option<String>,
    difficulty: Option<f64>,
    last_hashes: Vec<u64>,
    last_at: Instant,
}

/// The reporter; shared by the connection and the status ticker.
#[derive(Debug)]
pub struct Report {
    output: Output,
    started: Instant,
    state: Mutex<State>,
}

fn fmt_rate(h: f64) -> String {
    if h >= 1e9 {
        format!("{:.2} GH/s", h / 1e9)
    } else if h >= 1e6 {
        format!("{:.2} MH/s", h / 1e6)
    } else if h >= 1e3 {
        format!("{:.2} kH/s", h / 1e3)
    } else {
        format!("{h:.0} H/s")
    }
}

fn fmt_uptime(s: u64) -> String {
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    format!("{h:02}:{m:02}:{s:02}")
}

/// Whether a pool's reject reason means "stale".
pub fn is_stale_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("stale") || r.contains("job not found") || r.contains("invalid jobid")
}

impl Report {
    /// A reporter for `threads` hashing threads.
    pub fn new(output: Output, threads: usize) -> Report {
        Report {
            output,
            started: Instant::now(),
            state: Mutex::new(State {
                tally: Tally::default(),
                pool: None,
                difficulty: None,
                last_hashes: vec![0; threads],
                last_at: Instant::now(),
            }),
        }
    }

    fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn emit(&self, important: bool, human: impl FnOnce() -> String, js: impl FnOnce() -> Value) {
        let line = match self.output {
            Output::Json => {
                let mut v = js();
                if let Value::Object(o) = &mut v {
                    o.insert("uptime_s".into(), json!(self.started.elapsed().as_secs_f64()));
                }
                v.to_string()
            }
            Output::Human => format!("[{}] {}", fmt_uptime(self.uptime()), human()),
            Output::Quiet if important => format!("[{}] {}", fmt_uptime(self.uptime()), human()),
            Output::Quiet => return,
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        self.state.lock().ok().map(|mut g| f(&mut g))
    }

    /// A snapshot of the counters.
    pub fn tally(&self) -> Tally {
        self.with(|s| s.tally.clone()).unwrap_or_default()
    }

    /// Connecting to a pool.
    pub fn connecting(&self, pool: &str) {
        self.emit(
            false,
            || format!("connecting to {pool}"),
            || json!({"event": "connecting", "pool": pool}),
        );
    }

    /// Subscribed and authorized.
    pub fn connected(
        &self,
        pool: &str,
        extranonce1: &str,
        extranonce2_size: usize,
        version_mask: Option<u32>,
    ) {
        self.with(|s| {
            s.pool = Some(pool.to_string());
            s.tally.sessions += 1;
        });
        let mask = version_mask.map(|m| format!("{m:08x}"));
        self.emit(
            false,
            || {
                format!(
                    "connected to {pool}: extranonce1 {extranonce1}, extranonce2 {extranonce2_size} bytes, version rolling {}",
                    mask.clone().unwrap_or_else(|| "off".into())
                )
            },
            || json!({"event": "connected", "pool": pool, "extranonce1": extranonce1, "extranonce2_size": extranonce2_size, "version_mask": mask}),
        );
    }

    /// A connection ended or failed.
    pub fn disconnected(&self, pool: &str, reason: &str, retry_in_ms: Option<u64>) {
        self.with(|s| s.pool = None);
        self.emit(
            true,
            || match retry_in_ms {
                Some(ms) => format!("{pool}: {reason}; retrying in {:.1} s", ms as f64 / 1000.0),
                None => format!("{pool}: {reason}"),
            },
            || json!({"event": "disconnected", "pool": pool, "reason": reason, "retry_in_ms": retry_in_ms}),
        );
    }

    /// A new job.
    pub fn job(&self, job_id: &str, clean: bool, difficulty: f64) {
        self.with(|s| s.difficulty = Some(difficulty));
        self.emit(
            false,
            || {
                format!(
                    "job {job_id}{} at difficulty {difficulty}",
                    if clean { " (clean)" } else { "" }
                )
            },
            || json!({"event": "job", "job": job_id, "clean": clean, "difficulty": difficulty}),
        );
    }

    /// A job that cannot be mined.
    pub fn bad_job(&self, why: &str) {
        self.emit(
            true,
            || format!("job dropped: {why}"),
            || json!({"event": "bad_job", "reason": why}),
        );
    }

    /// A message from the pool (`client.show_message`).
    pub fn message(&self, m: &str) {
        self.emit(
            true,
            || format!("pool says: {m}"),
            || json!({"event": "message", "text": m}),
        );
    }

    /// The pool's verdict on a share.
    pub fn verdict(
        &self,
        job: &str,
        nonce: u32,
        difficulty: f64,
        block: bool,
        outcome: &Result<(), String>,
        latency_ms: f64,
    ) {
        let counts = self.with(|s| {
            match outcome {
                Ok(()) => {
                    s.tally.accepted += 1;
                    s.tally.accepted_difficulty += difficulty;
                    if block {
                        s.tally.block_candidates += 1;
                    }
                }
                Err(r) => {
                    if is_stale_reason(r) {
                        s.tally.stale += 1;
                    } else {
                        s.tally.rejected += 1;
                    }
                    *s.tally.reasons.entry(r.chars().take(80).collect()).or_insert(0) += 1;
                }
            }
            (s.tally.accepted, s.tally.rejected + s.tally.stale, s.pool.clone())
        });
        let (a, r, pool) = counts.unwrap_or((0, 0, None));
        let result = if outcome.is_ok() { "accepted" } else { "rejected" };
        let reason = outcome.as_ref().err().cloned();
        self.emit(
            outcome.is_err() || block,
            || {
                let what = match &reason {
                    None if block => "accepted, meets the network target (block candidate)".to_string(),
                    None => "accepted".to_string(),
                    Some(r) => format!("rejected: {r}"),
                };
                format!("share {what} (job {job}, nonce {nonce:08x}, {latency_ms:.1} ms) [A {a} R {r}]")
            },
            || json!({"event": "share", "pool": pool, "result": result, "reason": reason, "job": job, "nonce": format!("{nonce:08x}"), "difficulty": difficulty, "block": block, "latency_ms": latency_ms}),
        );
    }

    /// A share found for a job already superseded: not sent.
    pub fn discarded_stale(&self) {
        self.with(|s| s.tally.discarded_stale += 1);
    }

    /// A status line from the engine's per-thread hash counters.
    pub fn status(&self, hashes: &[u64]) {
        let Some((rates, tally, pool, diff)) = self.with(|s| {
            let dt = s.last_at.elapsed().as_secs_f64().max(1e-3);
            let rates: Vec<f64> = hashes
                .iter()
                .zip(s.last_hashes.iter().chain(std::iter::repeat(&0)))
                .map(|(now, before)| now.saturating_sub(*before) as f64 / dt)
                .collect();
            s.last_hashes = hashes.to_vec();
            s.last_at = Instant::now();
            (rates, s.tally.clone(), s.pool.clone(), s.difficulty)
        }) else {
            return;
        };
        let total: f64 = rates.iter().sum();
        self.emit(
            false,
            || {
                let per: Vec<String> = rates.iter().map(|r| format!("{:.2}", r / 1e6)).collect();
                format!(
                    "{} = {} | A {} R {} S {} | diff {} | {}{}",
                    per.join(" + "),
                    fmt_rate(total),
                    tally.accepted,
                    tally.rejected,
                    tally.stale,
                    diff.map_or_else(|| "-".into(), |d| d.to_string()),
                    pool.clone().unwrap_or_else(|| "not connected".into()),
                    if tally.block_candidates > 0 { format!(" | block candidates {}", tally.block_candidates) } else { String::new() }
                )
            },
            || json!({"event": "status", "hashrate": total, "threads": rates, "accepted": tally.accepted, "rejected": tally.rejected, "stale": tally.stale, "block_candidates": tally.block_candidates, "difficulty": diff, "pool": pool}),
        );
    }

    /// The end-of-run summary.
    pub fn summary(&self, hashes: &[u64], dropped: u64) {
        let tally = self.tally();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let total: u64 = hashes.iter().sum();
        let rate = total as f64 / secs;
        let reasons = tally.reasons.clone();
        // Hashrate the pool can see: accepted difficulty · 2^32 / time.
        let effective = tally.accepted_difficulty * 4_294_967_296.0 / secs;
        self.emit(
            true,
            || {
                let mut s = format!(
                    "summary: {} in {:.1} s, {} hashes ({}), effective {} from shares; accepted {}, rejected {}, stale {}, not sent (stale) {}, block candidates {}, dropped {}",
                    fmt_uptime(self.uptime()),
                    secs,
                    total,
                    fmt_rate(rate),
                    fmt_rate(effective),
                    tally.accepted,
                    tally.rejected,
                    tally.stale,
                    tally.discarded_stale,
                    tally.block_candidates,
                    dropped
                );
                for (r, n) in &reasons {
                    s.push_str(&format!("\n  rejected {n}x: {r}"));
                }
                s
            },
            || json!({"event": "summary", "seconds": secs, "hashes": total, "hashrate": rate, "effective_hashrate": effective, "accepted": tally.accepted, "rejected": tally.rejected, "stale": tally.stale, "discarded_stale": tally.discarded_stale, "block_candidates": tally.block_candidates, "dropped": dropped, "reasons": reasons}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_tallied_by_kind() {
        let r = Report::new(Output::Quiet, 2);
        r.verdict("1", 1, 0.5, false, &Ok(()), 0.3);
        r.verdict("1", 2, 0.5, true, &Ok(()), 0.3);
        r.verdict("1", 3, 0.5, false, &Err("Job not found".into()), 0.3);
        r.verdict("1", 4, 0.5, false, &Err("Low difficulty share".into()), 0.3);
        r.discarded_stale();
        let t = r.tally();
        assert_eq!(
            (
                t.accepted,
                t.block_candidates,
                t.stale,
                t.rejected,
                t.discarded_stale
            ),
            (2, 1, 1, 1, 1)
        );
        assert_eq!(t.accepted_difficulty, 1.0);
        assert_eq!(t.reasons.get("Low difficulty share"), Some(&1));
        assert_eq!(fmt_rate(30.5e6), "30.50 MH/s");
        assert_eq!(fmt_uptime(3725), "01:02:05");
    }
}
