//! `cloudmine mine --benchmark`: hashes a synthetic job with the real engine (same threads, same
//! kernel, same candidate checks) and prints H/s with one thread and with all threads, plus how long
//! a new job takes to reach every thread. The job is fixed (a 12-level merkle branch, version rolling
//! with the 1fffe000 mask, difficulty 1), so figures compare across versions and machines.
//!
//! Method: per run, publish the job, let the threads warm up for 0.5 s, then read every thread's hash
//! counter at the start and end of the measured window. Each phase runs `runs` times; the median is
//! reported. Job switches are measured separately: the job is republished 50 times, 20 ms apart,
//! and for each the latest thread's pick-up time after publication is recorded.

use crate::engine::{Engine, FOUND_QUEUE_MAX};
use std::time::{Duration, Instant};
use stratum::client::Assignment;
use stratum::Notify;
use tokio::sync::mpsc;

/// The figures.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// Threads in the multi-thread phase.
    pub threads: usize,
    /// One thread, H/s, each run.
    pub one_thread: Vec<f64>,
    /// All threads, total H/s, each run.
    pub all_threads: Vec<f64>,
    /// All threads, per thread H/s, of the median run.
    pub per_thread: Vec<f64>,
    /// Job switch to every thread, ms, each switch.
    pub switch_ms: Vec<f64>,
    /// Whether the SHA-NI kernel ran.
    pub sha_ni: bool,
}

/// Median of a sample (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn synthetic(job: u64) -> Assignment {
    let branch: Vec<[u8; 32]> = (0..12u8)
        .map(|i| [i.wrapping_mul(37).wrapping_add(1); 32])
        .collect();
    Assignment {
        notify: Notify {
            job_id: job.to_string(),
            prevhash: [0x5a; 32],
            coinb1: (0..60u8).collect(),
            coinb2: (0..90u8).rev().collect(),
            merkle_branch: branch,
            version: 0x2000_0000,
            nbits: 0x1703_6e3a,
            ntime: 0x6740_0000,
            clean_jobs: true,
        },
        extranonce1: vec![0xc0, 0xff, 0xee, 0x01],
        extranonce2_size: 4,
        difficulty: 1.0,
        version_mask: Some(0x1fff_e000),
    }
}

fn measure(engine: &Engine, rx: &mut mpsc::Receiver<crate::work::Found>, seconds: f64, job: u64) -> Vec<f64> {
    let _ = engine.set_work(&synthetic(job));
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<u64> = engine.view().iter().map(|v| v.hashes).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let after: Vec<u64> = engine.view().iter().map(|v| v.hashes).collect();
    let dt = t0.elapsed().as_secs_f64();
    engine.clear();
    while rx.try_recv().is_ok() {}
    after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b) as f64 / dt)
        .collect()
}

/// Runs the benchmark: `runs` windows of `seconds` with one thread, then with `threads`.
pub fn run(threads: usize, seconds: f64, runs: usize) -> std::io::Result<BenchResult> {
    let runs = runs.max(1);
    let seconds = seconds.clamp(0.2, 600.0);
    let mut one = Vec::new();
    {
        let (tx, mut rx) = mpsc::channel(FOUND_QUEUE_MAX);
        let e = Engine::start(1, tx)?;
        for r in 0..runs {
            one.push(measure(&e, &mut rx, seconds, r as u64).iter().sum());
        }
    }
    let (tx, mut rx) = mpsc::channel(FOUND_QUEUE_MAX);
    let e = Engine::start(threads, tx)?;
    let mut all: Vec<(f64, Vec<f64>)> = Vec::new();
    for r in 0..runs {
        let per = measure(&e, &mut rx, seconds, 100 + r as u64);
        all.push((per.iter().sum(), per));
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let per_thread = all.get(all.len() / 2).map(|x| x.1.clone()).unwrap_or_default();
    // Job switches.
    let mut switch_ms = Vec::new();
    for j in 0..50u64 {
        let Ok(seq) = e.set_work(&synthetic(1000 + j)) else {
            continue;
        };
        let published = e.published_ns();
        std::thread::sleep(Duration::from_millis(20));
        let v = e.view();
        if v.iter().all(|t| t.seq >= seq) {
            let last = v.iter().map(|t| t.picked_ns).max().unwrap_or(published);
            switch_ms.push(last.saturating_sub(published) as f64 / 1e6);
        } else {
            // A thread missed the 20 ms window: record the window as a lower bound.
            switch_ms.push(20.0);
        }
        while rx.try_recv().is_ok() {}
    }
    e.clear();
    Ok(BenchResult {
        threads: e.threads(),
        one_thread: one,
        all_threads: all.iter().map(|x| x.0).collect(),
        per_thread,
        switch_ms,
        sha_ni: sha256d::has_sha_ni(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn a_short_benchmark_hashes_and_switches() {
        let r = run(2, 0.2, 1).unwrap();
        assert_eq!(r.threads, 2);
        assert!(r.one_thread[0] > 0.0 && r.all_threads[0] > 0.0);
        assert_eq!(r.per_thread.len(), 2);
        assert_eq!(r.switch_ms.len(), 50);
    }
}
