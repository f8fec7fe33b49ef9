//! Hashing a share and deciding share / block, exactly, at the speed of the kernel.
//!
//! Precomputation: a [`PreparedJob`] holds the decoded job once; a [`CoinbasePrefix`] holds the
//! SHA-256 midstate over the whole 64-byte blocks of `coinb1 ‖ EN1` (fixed per connection and job),
//! so a share hashes only its tail (`… ‖ EN2 ‖ coinb2`), the merkle branch and the header.
//! [`BatchHasher`] hashes shares two at a time with interleaved compressions (the SHA-NI latency is
//! hidden only when two independent messages are in flight); results are identical to one at a time.
//!
//! The decision is exact integer comparison: a share meets difficulty `D` iff its hash, read as a
//! little-endian 256-bit integer, is `≤ D.to_target()`; it is a block iff it is `≤` the network target.

use crate::header::build_header;
use sha256d::{pad_tail, sha256d_80, sha256d_80_x2, Midstate, Sha256};
use units::{CompactError, Difficulty, Target};

/// A job decoded once: what every share of it shares.
#[derive(Clone, Debug)]
pub struct PreparedJob {
    /// Coinbase bytes before EN1.
    pub coinb1: Vec<u8>,
    /// Coinbase bytes after EN2.
    pub coinb2: Vec<u8>,
    /// Merkle branch, internal byte order.
    pub branch: Vec<[u8; 32]>,
    /// Job version (before rolling).
    pub version: u32,
    /// Previous block hash in header order.
    pub prevhash: [u8; 32],
    /// nbits as in the header.
    pub nbits: u32,
    /// The job's ntime.
    pub ntime: u32,
    /// The network target decoded from nbits.
    pub network_target: Target,
}

impl PreparedJob {
    /// Decodes nbits; everything else is taken as given.
    pub fn new(
        coinb1: Vec<u8>,
        coinb2: Vec<u8>,
        branch: Vec<[u8; 32]>,
        version: u32,
        prevhash: [u8; 32],
        nbits: u32,
        ntime: u32,
    ) -> Result<PreparedJob, CompactError> {
        let network_target = Target::from_compact(nbits)?;
        Ok(PreparedJob {
            coinb1,
            coinb2,
            branch,
            version,
            prevhash,
            nbits,
            ntime,
            network_target,
        })
    }

    /// Precomputes the coinbase midstate for one extranonce1.
    pub fn prefix(&self, en1: &[u8]) -> CoinbasePrefix {
        let mut h = Sha256::new();
        let total = self.coinb1.len() + en1.len();
        let whole = total - total % 64;
        let mut joined = Vec::with_capacity(total);
        joined.extend_from_slice(&self.coinb1);
        joined.extend_from_slice(en1);
        let (head, tail) = joined.split_at(whole);
        h.update(head);
        let mid = h.midstate().unwrap_or(Midstate::INITIAL);
        CoinbasePrefix {
            mid,
            pending: tail.to_vec(),
        }
    }

    /// The full non-witness coinbase for a share (for block assembly and audit).
    pub fn coinbase_bytes(&self, en1: &[u8], en2: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.coinb1.len() + en1.len() + en2.len() + self.coinb2.len());
        v.extend_from_slice(&self.coinb1);
        v.extend_from_slice(en1);
        v.extend_from_slice(en2);
        v.extend_from_slice(&self.coinb2);
        v
    }
}

/// The coinbase midstate for one (job, extranonce1).
#[derive(Clone, Debug)]
pub struct CoinbasePrefix {
    mid: Midstate,
    /// Bytes of `coinb1 ‖ EN1` after the last whole block (< 64).
    pending: Vec<u8>,
}

/// One share to hash. `version` is the rolled nVersion (see [`crate::roll_version`]).
#[derive(Clone, Copy, Debug)]
pub struct ShareInput<'a> {
    /// The job.
    pub job: &'a PreparedJob,
    /// Its prefix for the submitting connection's EN1.
    pub prefix: &'a CoinbasePrefix,
    /// Extranonce2 bytes.
    pub en2: &'a [u8],
    /// Submitted ntime.
    pub ntime: u32,
    /// Submitted nonce.
    pub nonce: u32,
    /// nVersion after rolling.
    pub version: u32,
}

/// A hashed share: its header and hash, and the exact decisions on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareCheck {
    /// The 80-byte header.
    pub header: [u8; 80],
    /// `dSHA256(header)`, internal byte order.
    pub hash: [u8; 32],
}

impl ShareCheck {
    /// True iff the hash meets `target` (`H ≤ target`).
    #[inline]
    pub fn meets(&self, target: Target) -> bool {
        target.is_met_by(&self.hash)
    }
    /// The difficulty the hash achieved (for "best share" statistics; credit the assigned one).
    pub fn achieved_difficulty(&self) -> Difficulty {
        Difficulty::of_hash(&self.hash)
    }
    /// The merkle root inside the header.
    pub fn merkle_root(&self) -> [u8; 32] {
        let mut r = [0u8; 32];
        r.copy_from_slice(&self.header[36..68]);
        r
    }
}

/// Hashes shares, reusing its buffers, two at a time where it can.
#[derive(Default, Debug)]
pub struct BatchHasher {
    a: Vec<u8>,
    b: Vec<u8>,
}

impl BatchHasher {
    /// A hasher with empty buffers.
    pub fn new() -> BatchHasher {
        BatchHasher::default()
    }

    fn tail(buf: &mut Vec<u8>, s: &ShareInput<'_>) {
        buf.clear();
        buf.extend_from_slice(&s.prefix.pending);
        buf.extend_from_slice(s.en2);
        buf.extend_from_slice(&s.job.coinb2);
        let total = s.prefix.mid.len + buf.len() as u64;
        pad_tail(buf, total);
    }

    /// Hashes one share.
    pub fn hash_one(&mut self, s: &ShareInput<'_>) -> ShareCheck {
        Self::tail(&mut self.a, s);
        let leaf = sha256d::sha256d_from_padded(&s.prefix.mid, &self.a);
        let root = sha256d::merkle_fold(leaf, &s.job.branch);
        let header = build_header(s.version, &s.job.prevhash, &root, s.ntime, s.job.nbits, s.nonce);
        ShareCheck {
            header,
            hash: sha256d_80(&header),
        }
    }

    /// Hashes two shares with interleaved compressions.
    pub fn hash_pair(&mut self, x: &ShareInput<'_>, y: &ShareInput<'_>) -> (ShareCheck, ShareCheck) {
        Self::tail(&mut self.a, x);
        Self::tail(&mut self.b, y);
        let (rx, ry) = sha256d::sha256d_from_padded_x2(&x.prefix.mid, &self.a, &y.prefix.mid, &self.b);
        let (rx, ry) = sha256d::merkle_fold_x2(rx, &x.job.branch, ry, &y.job.branch);
        let hx = build_header(x.version, &x.job.prevhash, &rx, x.ntime, x.job.nbits, x.nonce);
        let hy = build_header(y.version, &y.job.prevhash, &ry, y.ntime, y.job.nbits, y.nonce);
        let (dx, dy) = sha256d_80_x2(&hx, &hy);
        (
            ShareCheck { header: hx, hash: dx },
            ShareCheck { header: hy, hash: dy },
        )
    }

    /// Hashes a batch, pairing neighbours; appends one result per input, in order.
    pub fn hash_all(&mut self, inputs: &[ShareInput<'_>], out: &mut Vec<ShareCheck>) {
        let mut pairs = inputs.chunks_exact(2);
        for p in &mut pairs {
            if let [x, y] = p {
                let (a, b) = self.hash_pair(x, y);
                out.push(a);
                out.push(b);
            }
        }
        for s in pairs.remainder() {
            out.push(self.hash_one(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle;
    use proptest::prelude::*;

    fn job(c1: Vec<u8>, c2: Vec<u8>, branch: Vec<[u8; 32]>) -> PreparedJob {
        PreparedJob::new(c1, c2, branch, 0x2000_0000, [7; 32], 0x207fffff, 1_700_000_000).unwrap()
    }

    proptest! {
        /// Batched, paired and single hashing agree with the plain definition, for any shapes.
        #[test]
        fn all_paths_agree(c1 in proptest::collection::vec(any::<u8>(), 0..150),
                           c2 in proptest::collection::vec(any::<u8>(), 0..150),
                           c1b in proptest::collection::vec(any::<u8>(), 0..150),
                           branch in proptest::collection::vec(any::<[u8; 32]>(), 0..14),
                           branch_b in proptest::collection::vec(any::<[u8; 32]>(), 0..14),
                           en1 in any::<[u8; 4]>(), en2 in any::<[u8; 4]>(), nonce in any::<u32>()) {
            let ja = job(c1.clone(), c2.clone(), branch.clone());
            let jb = job(c1b, c2, branch_b);
            let (pa, pb) = (ja.prefix(&en1), jb.prefix(&en1));
            let sa = ShareInput { job: &ja, prefix: &pa, en2: &en2, ntime: 5, nonce, version: 0x2000_e000 };
            let sb = ShareInput { job: &jb, prefix: &pb, en2: &en2, ntime: 6, nonce: !nonce, version: 0x2000_0000 };
            let mut h = BatchHasher::new();
            let one_a = h.hash_one(&sa);
            let one_b = h.hash_one(&sb);
            let (pa2, pb2) = h.hash_pair(&sa, &sb);
            prop_assert_eq!(one_a, pa2);
            prop_assert_eq!(one_b, pb2);
            let mut out = Vec::new();
            h.hash_all(&[sa, sb, sa], &mut out);
            prop_assert_eq!(out, vec![one_a, one_b, one_a]);
            // plain definition
            let cb = ja.coinbase_bytes(&en1, &en2);
            let root = merkle::fold(sha256d::sha256d(&cb), &branch);
            let header = build_header(0x2000_e000, &[7; 32], &root, 5, 0x207fffff, nonce);
            prop_assert_eq!(one_a.hash, sha256d::sha256d(&header));
        }
    }
}
