//! The hashing threads.
//!
//! One slot holds the current [`Work`]; a sequence counter says when it changed. Each thread takes
//! items (header, nonce slice) from the work's shared counter, so the nonce range of one header is
//! split across threads, and hashes the slice in kernel calls of [`SCAN_STEP`] nonces. Between calls
//! it checks the sequence counter (one relaxed atomic load, about every 0.15 ms at 30 MH/s), so a new
//! job reaches every thread well within a millisecond of [`Engine::set_work`]. Threads without work
//! park and are woken by `set_work`.
//!
//! Candidates are verified exactly ([`Work::verify`]) on the thread that found them and sent on a
//! bounded channel ([`FOUND_QUEUE_MAX`]); if the connection side falls that far behind, further
//! shares are counted as dropped and logged, never queued without bound.

use crate::work::{Found, HeaderWork, Work, WorkError};
use mining_core::BatchHasher;
use sha256d::{HeaderScan, SCAN_STEP};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};
use stratum::client::Assignment;
use tokio::sync::mpsc;

/// Verified shares waiting for the connection, at most; beyond it they are dropped and counted.
pub const FOUND_QUEUE_MAX: usize = 4096;

/// Most hashing threads (`-t`); more than this is a typo, not a machine.
pub const THREADS_MAX: usize = 1024;

/// A counter on its own cache line, so threads never share one.
#[derive(Default, Debug)]
#[repr(align(128))]
struct Padded(AtomicU64);

#[derive(Debug)]
struct Shared {
    slot: Mutex<Option<Arc<Work>>>,
    seq: AtomicU64,
    stop: AtomicBool,
    hashes: Vec<Padded>,
    /// Per thread: the work sequence it is on, and when it picked it up (ns since `epoch`).
    on_seq: Vec<Padded>,
    picked_ns: Vec<Padded>,
    published_ns: AtomicU64,
    epoch: Instant,
    dropped: AtomicU64,
    found: mpsc::Sender<Found>,
}

/// The hashing threads and their work slot. Dropping it stops and joins them.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    threads: Vec<Thread>,
}

/// Where each thread is: for reports and for measuring how fast new work reaches the threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadView {
    /// Hashes done so far.
    pub hashes: u64,
    /// Work sequence number the thread is on.
    pub seq: u64,
    /// When it picked that work up, ns since the engine started.
    pub picked_ns: u64,
}

impl Engine {
    /// Starts `threads` hashing threads (at least 1, at most [`THREADS_MAX`]).
    pub fn start(threads: usize, found: mpsc::Sender<Found>) -> std::io::Result<Engine> {
        let n = threads.clamp(1, THREADS_MAX);
        let shared = Arc::new(Shared {
            slot: Mutex::new(None),
            seq: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            hashes: (0..n).map(|_| Padded::default()).collect(),
            on_seq: (0..n).map(|_| Padded::default()).collect(),
            picked_ns: (0..n).map(|_| Padded::default()).collect(),
            published_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            dropped: AtomicU64::new(0),
            found,
        });
        let mut handles = Vec::with_capacity(n);
        let mut thread_list = Vec::with_capacity(n);
        for i in 0..n {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || hash_thread(&s, i))?;
            thread_list.push(h.thread().clone());
            handles.push(h);
        }
        Ok(Engine {
            shared,
            handles,
            threads: thread_list,
        })
    }

    /// Number of hashing threads.
    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    /// Makes `a` the work of every thread; returns its sequence number.
    pub fn set_work(&self, a: &Assignment) -> Result<u64, WorkError> {
        let seq = self.shared.seq.load(Ordering::Relaxed) + 1;
        let w = Work::new(a, seq)?;
        self.publish(Some(Arc::new(w)));
        Ok(seq)
    }

    /// Voids the current work (threads idle until the next `set_work`).
    pub fn clear(&self) {
        self.publish(None);
    }

    fn publish(&self, w: Option<Arc<Work>>) {
        if let Ok(mut slot) = self.shared.slot.lock() {
            *slot = w;
            let now = self.now_ns();
            self.shared.published_ns.store(now, Ordering::Relaxed);
            self.shared.seq.fetch_add(1, Ordering::Release);
        }
        for t in &self.threads {
            t.unpark();
        }
    }

    /// The sequence number of the newest work (or clear).
    pub fn seq(&self) -> u64 {
        self.shared.seq.load(Ordering::Acquire)
    }

    /// Nanoseconds since the engine started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// When the newest work was published, ns since the engine started.
    pub fn published_ns(&self) -> u64 {
        self.shared.published_ns.load(Ordering::Relaxed)
    }

    /// Each thread's counters.
    pub fn view(&self) -> Vec<ThreadView> {
        (0..self.handles.len())
            .map(|i| ThreadView {
                hashes: self
                    .shared
                    .hashes
                    .get(i)
                    .map_or(0, |c| c.0.load(Ordering::Relaxed)),
                seq: self
                    .shared
                    .on_seq
                    .get(i)
                    .map_or(0, |c| c.0.load(Ordering::Acquire)),
                picked_ns: self
                    .shared
                    .picked_ns
                    .get(i)
                    .map_or(0, |c| c.0.load(Ordering::Relaxed)),
            })
            .collect()
    }

    /// Verified shares dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn hash_thread(s: &Shared, i: usize) {
    let mut hasher = BatchHasher::new();
    let mut hits = Vec::with_capacity(16);
    let mut my_seq = u64::MAX;
    let mut work: Option<Arc<Work>> = None;
    let mut header: Option<(HeaderWork, HeaderScan)> = None;
    let (Some(hashes), Some(on_seq), Some(picked)) = (s.hashes.get(i), s.on_seq.get(i), s.picked_ns.get(i))
    else {
        return;
    };
    'outer: while !s.stop.load(Ordering::Acquire) {
        let seq = s.seq.load(Ordering::Acquire);
        if seq != my_seq {
            work = s.slot.lock().ok().and_then(|g| g.clone());
            header = None;
            my_seq = seq;
            on_seq.0.store(seq, Ordering::Release);
            picked.0.store(
                u64::try_from(s.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        let Some(w) = work.as_ref() else {
            std::thread::park_timeout(Duration::from_millis(100));
            continue;
        };
        let Some((k, start, count)) = w.take_item() else {
            // The job's whole space is hashed; wait for new work.
            std::thread::park_timeout(Duration::from_millis(100));
            continue;
        };
        let (hw, scan) = match header.take() {
            Some((h, sc)) if h.index == k => (h, sc),
            _ => {
                let h = w.header(k);
                let sc = Work::scanner(&h);
                (h, sc)
            }
        };
        let top = w.top_max();
        let end = u64::from(start) + u64::from(count);
        let mut nonce = u64::from(start);
        while nonce < end {
            if s.seq.load(Ordering::Relaxed) != my_seq || s.stop.load(Ordering::Relaxed) {
                continue 'outer;
            }
            let step = u32::try_from((end - nonce).min(u64::from(SCAN_STEP))).unwrap_or(SCAN_STEP);
            // nonce < end <= 2^32 here.
            let first = u32::try_from(nonce).unwrap_or(u32::MAX);
            let done = scan.scan(first, step, top, &mut hits);
            hashes.0.fetch_add(done, Ordering::Relaxed);
            for n in hits.drain(..) {
                if let Some(f) = w.verify(&mut hasher, &hw, n) {
                    match s.found.try_send(f) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let n = s.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                            // Said at the 1st, 2nd, 4th, 8th… drop (a young dev chain, where every
                            // hash is a share, would otherwise print thousands of lines); the
                            // summary at exit has the total.
                            if n.is_power_of_two() {
                                tracing::warn!(
                                    limit = FOUND_QUEUE_MAX,
                                    dropped = n,
                                    "share queue full (FOUND_QUEUE_MAX); shares dropped so far"
                                );
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
            nonce += done.max(1);
        }
        header = Some((hw, scan));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(difficulty: f64) -> Assignment {
        Assignment {
            notify: stratum::Notify {
                job_id: "9".into(),
                prevhash: [1; 32],
                coinb1: vec![1, 2, 3],
                coinb2: vec![4, 5, 6],
                merkle_branch: vec![],
                version: 0x2000_0000,
                nbits: 0x1d00_ffff,
                ntime: 1,
                clean_jobs: true,
            },
            extranonce1: vec![0; 4],
            extranonce2_size: 4,
            difficulty,
            version_mask: Some(0x1fff_e000),
        }
    }

    #[test]
    fn threads_find_verified_distinct_shares_and_switch_jobs() {
        let (tx, mut rx) = mpsc::channel(FOUND_QUEUE_MAX);
        let e = Engine::start(2, tx).unwrap();
        // 2^-20: a share per ~2^12 hashes.
        let seq = e.set_work(&assignment(1.0 / 1_048_576.0)).unwrap();
        let mut got = Vec::new();
        while got.len() < 50 {
            let f = rx.blocking_recv().unwrap();
            assert_eq!(f.seq, seq);
            assert!(units::Difficulty::from_f64(1.0 / 1_048_576.0)
                .unwrap()
                .to_target()
                .is_met_by(&f.hash));
            got.push((f.en2.clone(), f.version_bits, f.nonce));
        }
        let mut dedup = got.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), got.len(), "no nonce hashed twice");
        let mut a = assignment(1.0 / 1_048_576.0);
        a.notify.job_id = "10".into();
        let seq2 = e.set_work(&a).unwrap();
        assert!(seq2 > seq);
        // Shares queued before the switch drain first (however long this thread was descheduled);
        // once the new work's first share arrives, old ones can only be the few each thread found in
        // its last kernel call before it noticed the switch.
        let mut reads = 0;
        loop {
            let f = rx.blocking_recv().unwrap();
            reads += 1;
            assert!(
                reads < FOUND_QUEUE_MAX + 10_000,
                "the new work never produced a share"
            );
            if f.seq == seq2 {
                break;
            }
        }
        let mut old = 0;
        for _ in 0..200 {
            let f = rx.blocking_recv().unwrap();
            if f.seq == seq2 {
                assert_eq!(f.job_id, "10");
            } else {
                old += 1;
            }
        }
        assert!(
            old <= 20,
            "{old} shares of the old work after the new work started"
        );
        e.clear();
        assert!(e.view().iter().all(|v| v.hashes > 0));
    }
}
