//! Nonce search over one 80-byte header: what a miner spends its time on.
//!
//! [`HeaderScan`] takes the header once, computes the SHA-256 midstate of its first 64 bytes (version,
//! prevhash and 28 bytes of the merkle root) and keeps the three fixed words of the second block
//! (the root's last 4 bytes, ntime, nbits). Each nonce then costs two compressions, less what the
//! SHA-NI kernel precomputes or skips (the two nonce-independent first rounds, the constant padding
//! words, and the last two rounds of the outer hash, which cannot change the digest's top word).
//!
//! Early rejection is by the hash's top 32 bits: a hash whose top word (bytes 28..32 of the digest,
//! read little-endian) exceeds the target's top word cannot meet the target, so only nonces whose top
//! word is `<=` it are returned. That is sound for every target; callers then check each candidate
//! exactly (a candidate with an equal top word may still miss). The portable path returns exactly the
//! same candidates; tests compare the two.

use crate::kernel::{self, compress, words_from_bytes, State, INITIAL_STATE};
use crate::shapes::{digest_block, tail_block};

/// A header prepared for nonce search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderScan {
    mid: State,
    w012: [u32; 3],
}

/// Nonces hashed per kernel call between caller checks; a multiple of the kernel's ways.
pub const SCAN_STEP: u32 = 1 << 12;

impl HeaderScan {
    /// Prepares `header` (its nonce field is ignored).
    pub fn new(header: &[u8; 80]) -> HeaderScan {
        let mut first = [0u8; 64];
        first.copy_from_slice(&header[..64]);
        let mut mid = INITIAL_STATE;
        compress(&mut mid, &words_from_bytes(&first));
        let word = |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        HeaderScan {
            mid,
            w012: [word(64), word(68), word(72)],
        }
    }

    /// The hash's top 32 bits for one nonce (portable; the reference for the fast path).
    pub fn top_word(&self, nonce: u32) -> u32 {
        let mut s = self.mid;
        kernel::portable::compress(&mut s, &tail_block(self.w012, nonce.swap_bytes()));
        let mut outer = INITIAL_STATE;
        kernel::portable::compress(&mut outer, &digest_block(&s));
        outer[7].swap_bytes()
    }

    /// Hashes nonces `start ..= start + count - 1` (wrapping past `u32::MAX` is refused by clamping
    /// `count` to the end of the nonce space) and appends every nonce whose hash's top word is
    /// `<= top_max` to `hits`, in increasing order. Returns how many nonces were hashed.
    pub fn scan(&self, start: u32, count: u32, top_max: u32, hits: &mut Vec<u32>) -> u64 {
        let room = u64::from(u32::MAX - start) + 1;
        let count = u64::from(count).min(room);
        let ways = u64::from(kernel::SCAN_WAYS);
        let fused = count - count % ways;
        let mut done = 0u64;
        if fused > 0 {
            // `fused < 2^32` because count <= u32::MAX as given.
            let n = u32::try_from(fused).unwrap_or(u32::MAX - (u32::MAX % kernel::SCAN_WAYS));
            if kernel::fused_scan(&self.mid, self.w012, start, n, top_max, hits) {
                done = u64::from(n);
            }
        }
        let mut nonce = u64::from(start) + done;
        let end = u64::from(start) + count;
        while nonce < end {
            // nonce < 2^32 here because end <= 2^32.
            let n = nonce as u32;
            if self.top_word(n) <= top_max {
                hits.push(n);
            }
            nonce += 1;
        }
        count
    }
}

/// The top word (`u32`) of a 256-bit little-endian target: the bound for [`HeaderScan::scan`].
pub fn target_top_word(target_le: &[u8; 32]) -> u32 {
    u32::from_le_bytes([target_le[28], target_le[29], target_le[30], target_le[31]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256d_80;
    use proptest::prelude::*;

    fn top_of(h: &[u8; 80], nonce: u32) -> u32 {
        let mut x = *h;
        x[76..80].copy_from_slice(&nonce.to_le_bytes());
        target_top_word(&sha256d_80(&x))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn scan_matches_full_hashing(h in any::<[u8; 80]>(), start in any::<u32>(), count in 0u32..700, bound in 0u32..0x2000_0000) {
            let s = HeaderScan::new(&h);
            let mut hits = Vec::new();
            let n = s.scan(start, count, bound, &mut hits);
            let room = u64::from(u32::MAX - start) + 1;
            prop_assert_eq!(n, u64::from(count).min(room));
            let want: Vec<u32> = (0..n).map(|i| start.wrapping_add(i as u32)).filter(|&x| top_of(&h, x) <= bound).collect();
            prop_assert_eq!(&hits, &want);
            for x in want.iter().take(5) {
                prop_assert_eq!(s.top_word(*x), top_of(&h, *x));
            }
        }
    }

    #[test]
    fn scan_stops_at_the_end_of_the_nonce_space() {
        let s = HeaderScan::new(&[7u8; 80]);
        let mut hits = Vec::new();
        assert_eq!(s.scan(u32::MAX - 2, 100, u32::MAX, &mut hits), 3);
        assert_eq!(hits, vec![u32::MAX - 2, u32::MAX - 1, u32::MAX]);
    }

    #[test]
    fn finds_the_genesis_nonce() {
        // Bitcoin's genesis header; its nonce 2083236893 gives a hash with 43 leading zero bits.
        let hex = "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c";
        let b: Vec<u8> = (0..80)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let mut h = [0u8; 80];
        h.copy_from_slice(&b);
        let s = HeaderScan::new(&h);
        let mut hits = Vec::new();
        s.scan(2_083_236_893 - 1000, 4096, 0, &mut hits);
        assert_eq!(hits, vec![2_083_236_893]);
    }
}
