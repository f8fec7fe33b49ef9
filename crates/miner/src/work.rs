//! What a hashing thread works on, without threads or I/O: a pool [`Assignment`] turned into a
//! search space of headers and nonce slices, and the exact check of every candidate.
//!
//! The space of one job: headers `k = 0, 1, …`, each a pair (version bits, extranonce2), and for each
//! header the 2^32 nonces, cut into [`SLICES_PER_HEADER`] slices. Threads take *items* (header,
//! slice) from one shared counter, so the nonce range of a header is split across threads and no
//! two threads ever hash the same nonce. Header `k` rolls the version first (cheap: only the first
//! block's midstate changes) and moves to the next extranonce2 (a new coinbase and merkle root) when
//! the version space is used up (stratum-v1.md §11). With rolling, header 0 already sets the lowest
//! mask bit, so rolled bits are on the wire from the first share.
//!
//! A candidate from the kernel (top hash word small enough) is rebuilt and hashed again by
//! `mining-core`'s share hasher, the same code the pool validates with, and kept only if it meets
//! the assigned target exactly. Nothing is submitted that was not verified here.

use mining_core::{
    prevhash_from_stratum, roll_version, BatchHasher, CoinbasePrefix, PreparedJob, ShareInput,
};
use sha256d::{target_top_word, HeaderScan};
use std::sync::atomic::{AtomicU64, Ordering};
use stratum::client::Assignment;
use units::{Difficulty, Target};

/// Nonce slices per header: 2^32 / 64 = 2^26 nonces, about 2 s of one thread.
pub const SLICES_PER_HEADER: u64 = 64;
/// Nonces per slice.
pub const SLICE_NONCES: u64 = (1u64 << 32) / SLICES_PER_HEADER;

/// Why a job cannot be mined.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkError {
    /// nbits does not decode to a target.
    #[error("job {job}: bad nbits {nbits:08x}: {why}")]
    Nbits {
        /// Job id.
        job: String,
        /// The nbits.
        nbits: u32,
        /// Why.
        why: String,
    },
    /// The difficulty cannot be represented.
    #[error("job {job}: difficulty {difficulty} unusable: {why}")]
    Difficulty {
        /// Job id.
        job: String,
        /// The value.
        difficulty: f64,
        /// Why.
        why: String,
    },
    /// The job's version has bits inside the rolling mask (stratum-v1.md §5): rolling would be ambiguous.
    #[error("job {job}: version {version:08x} has bits inside the mask {mask:08x}; not rolling it")]
    VersionInMask {
        /// Job id.
        job: String,
        /// Version.
        version: u32,
        /// Mask.
        mask: u32,
    },
}

/// One job made ready for the hashing threads.
#[derive(Debug)]
pub struct Work {
    /// The pool's job id.
    pub job_id: String,
    /// Sequence number of this work in its engine (new work, new number).
    pub seq: u64,
    /// Prevhash (Stratum form), to recognise shares made stale by a block.
    pub prevhash: [u8; 32],
    /// Whether the job discards earlier ones.
    pub clean: bool,
    /// Difficulty as assigned.
    pub difficulty: f64,
    /// Share target.
    pub target: Target,
    job: PreparedJob,
    prefix: CoinbasePrefix,
    en2_size: usize,
    mask: u32,
    version_bits_count: u32,
    headers: u64,
    top_max: u32,
    next_item: AtomicU64,
}

/// One header of the search space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderWork {
    /// Index in the job.
    pub index: u64,
    /// Extranonce2 bytes.
    pub en2: Vec<u8>,
    /// nVersion as hashed.
    pub version: u32,
    /// Version bits to submit (`None` when not rolling).
    pub version_bits: Option<u32>,
    /// The header (nonce 0).
    pub header: [u8; 80],
}

/// A share verified against the assigned target.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Work sequence number it came from.
    pub seq: u64,
    /// Job id.
    pub job_id: String,
    /// Extranonce2.
    pub en2: Vec<u8>,
    /// ntime.
    pub ntime: u32,
    /// Nonce.
    pub nonce: u32,
    /// Version bits (when rolling).
    pub version_bits: Option<u32>,
    /// The hash (internal byte order).
    pub hash: [u8; 32],
    /// Whether it also meets the network target.
    pub is_block: bool,
    /// The difficulty it was assigned (what the pool credits).
    pub difficulty: f64,
    /// Prevhash (Stratum form).
    pub prevhash: [u8; 32],
}

/// Scatters the low bits of `v` into the set bits of `mask` (lowest first).
fn deposit(mut v: u64, mask: u32) -> u32 {
    let mut out = 0u32;
    let mut m = mask;
    while m != 0 && v != 0 {
        let low = m & m.wrapping_neg();
        if v & 1 == 1 {
            out |= low;
        }
        v >>= 1;
        m &= m - 1;
    }
    out
}

/// A notify decoded for hashing (nbits checked): the one conversion every client uses.
pub fn prepared_job(n: &stratum::Notify) -> Result<PreparedJob, units::CompactError> {
    PreparedJob::new(
        n.coinb1.clone(),
        n.coinb2.clone(),
        n.merkle_branch.clone(),
        n.version,
        prevhash_from_stratum(&n.prevhash),
        n.nbits,
        n.ntime,
    )
}

impl Work {
    /// Prepares an assignment. `mask` is the rolling mask in force (`None`: no rolling).
    pub fn new(a: &Assignment, seq: u64) -> Result<Work, WorkError> {
        let n = &a.notify;
        let job = prepared_job(n).map_err(|e| WorkError::Nbits {
            job: n.job_id.clone(),
            nbits: n.nbits,
            why: e.to_string(),
        })?;
        let difficulty = Difficulty::from_f64(a.difficulty).map_err(|e| WorkError::Difficulty {
            job: n.job_id.clone(),
            difficulty: a.difficulty,
            why: e.to_string(),
        })?;
        // The share target, or the network target if that is easier: a hash that is a block is
        // always submitted, even to a pool that assigns a difficulty above the network's.
        let target = difficulty.to_target().max(job.network_target);
        let mask = a.version_mask.unwrap_or(0);
        if n.version & mask != 0 {
            return Err(WorkError::VersionInMask {
                job: n.job_id.clone(),
                version: n.version,
                mask,
            });
        }
        let version_bits_count = mask.count_ones();
        let en2_space_bits = (a.extranonce2_size * 8).min(63) as u32;
        // headers = 2^(version bits + en2 bits), saturating at 2^63 (never exhausted in practice).
        let headers = 1u64 << (version_bits_count + en2_space_bits).min(63);
        Ok(Work {
            job_id: n.job_id.clone(),
            seq,
            prevhash: n.prevhash,
            clean: n.clean_jobs,
            difficulty: a.difficulty,
            target,
            prefix: job.prefix(&a.extranonce1),
            job,
            en2_size: a.extranonce2_size,
            mask,
            version_bits_count,
            headers,
            top_max: target_top_word(&target.to_le_bytes()),
            next_item: AtomicU64::new(0),
        })
    }

    /// Takes the next (header index, first nonce, nonce count) item; `None` when the job's space is used up.
    pub fn take_item(&self) -> Option<(u64, u32, u32)> {
        let item = self.next_item.fetch_add(1, Ordering::Relaxed);
        let k = item / SLICES_PER_HEADER;
        if k >= self.headers {
            return None;
        }
        let slice = item % SLICES_PER_HEADER;
        // slice < 64 and SLICE_NONCES = 2^26: both fit u32.
        let start = u32::try_from(slice * SLICE_NONCES).ok()?;
        let count = u32::try_from(SLICE_NONCES).ok()?;
        Some((k, start, count))
    }

    /// Header `k`: version rolled first, then extranonce2.
    pub fn header(&self, k: u64) -> HeaderWork {
        let versions_log2 = self.version_bits_count.min(63);
        let v_index = k & ((1u64 << versions_log2) - 1);
        let en2_value = k >> versions_log2;
        let (version, version_bits) = if self.mask == 0 {
            (self.job.version, None)
        } else {
            // Start one step in, so rolled bits are exercised from the first header.
            let count = 1u64 << versions_log2;
            let bits = deposit((v_index + 1) % count, self.mask);
            let v = roll_version(self.job.version, bits, self.mask).unwrap_or(self.job.version);
            (v, Some(bits))
        };
        let mut en2 = vec![0u8; self.en2_size];
        for (i, b) in en2.iter_mut().rev().take(8).enumerate() {
            *b = (en2_value >> (8 * i)) as u8;
        }
        let mut hasher = BatchHasher::new();
        let check = hasher.hash_one(&self.input(&en2, version, 0));
        HeaderWork {
            index: k,
            en2,
            version,
            version_bits,
            header: check.header,
        }
    }

    fn input<'a>(&'a self, en2: &'a [u8], version: u32, nonce: u32) -> ShareInput<'a> {
        ShareInput {
            job: &self.job,
            prefix: &self.prefix,
            en2,
            ntime: self.job.ntime,
            nonce,
            version,
        }
    }

    /// The kernel's bound on the hash's top word for this target.
    pub fn top_max(&self) -> u32 {
        self.top_max
    }

    /// Prepares a header for the nonce kernel.
    pub fn scanner(h: &HeaderWork) -> HeaderScan {
        HeaderScan::new(&h.header)
    }

    /// Rebuilds and hashes a candidate with the shared share hasher; `Some` only if it meets the target.
    pub fn verify(&self, hasher: &mut BatchHasher, h: &HeaderWork, nonce: u32) -> Option<Found> {
        let check = hasher.hash_one(&self.input(&h.en2, h.version, nonce));
        if !check.meets(self.target) {
            return None;
        }
        Some(Found {
            seq: self.seq,
            job_id: self.job_id.clone(),
            en2: h.en2.clone(),
            ntime: self.job.ntime,
            nonce,
            version_bits: h.version_bits,
            hash: check.hash,
            is_block: check.meets(self.job.network_target),
            difficulty: self.difficulty,
            prevhash: self.prevhash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratum::Notify;

    pub(crate) fn assignment(difficulty: f64, mask: Option<u32>) -> Assignment {
        Assignment {
            notify: Notify {
                job_id: "1".into(),
                prevhash: [3; 32],
                coinb1: vec![1, 0, 0, 0, 1, 0x11],
                coinb2: vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0],
                merkle_branch: vec![[9; 32], [8; 32]],
                version: 0x2000_0000,
                nbits: 0x207f_ffff,
                ntime: 0x6000_0000,
                clean_jobs: true,
            },
            extranonce1: vec![0xaa, 0xbb, 0xcc, 0xdd],
            extranonce2_size: 4,
            difficulty,
            version_mask: mask,
        }
    }

    #[test]
    fn deposit_scatters_into_the_mask() {
        assert_eq!(deposit(1, 0x1fff_e000), 0x2000);
        assert_eq!(deposit(0b101, 0x1fff_e000), 0xa000);
        assert_eq!(deposit(0xffff, 0x1fff_e000), 0x1fff_e000);
        assert_eq!(deposit(5, 0), 0);
    }

    #[test]
    fn headers_roll_version_then_extranonce2() {
        let w = Work::new(&assignment(1.0, Some(0x1fff_e000)), 0).unwrap();
        let h0 = w.header(0);
        assert_eq!(h0.version_bits, Some(0x2000));
        assert_eq!(h0.version, 0x2000_2000);
        assert_eq!(h0.en2, vec![0, 0, 0, 0]);
        let last = w.header(0xffff);
        assert_eq!(last.version_bits, Some(0));
        let next = w.header(0x1_0000);
        assert_eq!(next.en2, vec![0, 0, 0, 1]);
        assert_ne!(
            next.header[36..68],
            h0.header[36..68],
            "new extranonce2, new merkle root"
        );
        let plain = Work::new(&assignment(1.0, None), 0).unwrap();
        assert_eq!(plain.header(3).en2, vec![0, 0, 0, 3]);
        assert_eq!(plain.header(3).version_bits, None);
    }

    #[test]
    fn items_split_every_header_into_disjoint_slices() {
        let w = Work::new(&assignment(1.0, None), 0).unwrap();
        let mut covered = 0u64;
        for i in 0..SLICES_PER_HEADER {
            let (k, start, count) = w.take_item().unwrap();
            assert_eq!(k, 0);
            assert_eq!(u64::from(start), i * SLICE_NONCES);
            covered += u64::from(count);
        }
        assert_eq!(covered, 1 << 32);
        assert_eq!(w.take_item().unwrap().0, 1);
    }

    #[test]
    fn small_spaces_run_out() {
        let mut a = assignment(1.0, None);
        a.extranonce2_size = 0;
        let w = Work::new(&a, 0).unwrap();
        for _ in 0..SLICES_PER_HEADER {
            assert!(w.take_item().is_some());
        }
        assert_eq!(w.take_item(), None);
    }

    #[test]
    fn bad_jobs_are_refused_with_reasons() {
        let mut a = assignment(1.0, Some(0x1fff_e000));
        a.notify.nbits = 0x2080_0000; // sign bit
        assert!(matches!(Work::new(&a, 0), Err(WorkError::Nbits { .. })));
        let mut a = assignment(1.0, Some(0x1fff_e000));
        a.notify.version = 0x2000_2000;
        assert!(matches!(Work::new(&a, 0), Err(WorkError::VersionInMask { .. })));
        let a = assignment(1e-30, None);
        assert!(matches!(Work::new(&a, 0), Err(WorkError::Difficulty { .. })));
    }

    #[test]
    fn every_verified_share_meets_the_target_and_the_kernel_misses_none() {
        // Difficulty 2^-20: about one share per 2^12 hashes; 2^16 nonces give about 16.
        let w = Work::new(&assignment(1.0 / 1_048_576.0, Some(0x1fff_e000)), 0).unwrap();
        let h = w.header(5);
        let scan = Work::scanner(&h);
        let mut hits = Vec::new();
        scan.scan(0, 1 << 16, w.top_max(), &mut hits);
        let mut hasher = BatchHasher::new();
        let found: Vec<u32> = hits
            .iter()
            .filter_map(|n| w.verify(&mut hasher, &h, *n))
            .map(|f| f.nonce)
            .collect();
        // Reference: hash every nonce with the share hasher.
        let want: Vec<u32> = (0..1u32 << 16)
            .filter(|n| hasher.hash_one(&w.input(&h.en2, h.version, *n)).meets(w.target))
            .collect();
        assert!(!want.is_empty());
        assert_eq!(found, want);
    }
}
