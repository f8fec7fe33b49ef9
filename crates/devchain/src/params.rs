//! Dev chain consensus parameters and the per-block retarget rule.
//!
//! **Retarget (relative ASERT).** For the block at height `h`:
//! * `h = 1`: bits = regtest powLimit (`207fffff`).
//! * `h ≥ 2`: with parent `P` (height `h−1`) and grandparent `G`, `solvetime = clamp(P.time − G.time, 0, 6·T)`
//!   and `target = P.target · 2^((solvetime − T) / τ)`, where `T` is the block interval in force at `h`
//!   and `τ = 2·T` the half-life. The power of two is computed in 16.16 fixed point with the cubic
//!   approximation of aserti3-2d (Bitcoin Cash), so the rule is integer-only and deterministic. The result
//!   is clamped to `[1, powLimit]` and encoded as compact bits; the block must carry exactly those bits.
//!
//! **Minimum-difficulty allowance (testnet's rule, and a run of them).** A block whose timestamp is
//! more than `2·T` after its parent's may carry the minimum difficulty (regtest's powLimit bits,
//! `207fffff`) instead of the retarget's bits, and so may any block whose parent did and whose
//! timestamp is after its parent's ([`min_difficulty_allowed`]). Such blocks are transparent to the
//! retarget's bits: the next regular block needs the bits the first of them would have needed
//! (testnet3 walks back the same way). This keeps `generatetoaddress` quick once real miners have
//! raised the difficulty: the first block is stamped `2·T + 1` s after its parent, the rest one
//! second apart, so 101 blocks run at most about `2·T + 100` s ahead of the clock and real mining
//! goes on at its difficulty right after (a rule that needed the gap before every block would put
//! the chain an hour and a half ahead, and the compressed timestamps of the real blocks after it
//! would ratchet the retarget up for as long).
//!
//! A chain of blocks found exactly `T` apart keeps its target; faster blocks make it harder by `1/2`
//! bit per block at the limit (solvetime 0), slower ones easier. Idle periods raise the target at most
//! `2^2.5` per block (the solvetime clamp), so a returning miner is not flooded.

use bitcoin::{Block, Network};
use serde::{Deserialize, Serialize};
use units::{Sats, Target, U256};

/// Blocks between halvings (regtest).
pub const HALVING_INTERVAL: u32 = 150;
/// Confirmations before a coinbase output can be spent.
pub const COINBASE_MATURITY: u32 = 100;
/// How far a block's timestamp may run ahead of the wall clock (Core's `MAX_FUTURE_BLOCK_TIME`, two
/// hours). Blocks found faster than one a second push the median time past ahead of the clock, and a
/// block must be after it: without this allowance those blocks could only be refused.
pub const MAX_FUTURE_BLOCK_TIME_S: u32 = 7_200;
/// Blocks in the median-time-past window.
pub const MTP_WINDOW: usize = 11;
/// Maximum block weight.
pub const MAX_BLOCK_WEIGHT: u64 = 4_000_000;
/// The initial subsidy, 50 BTC.
pub const INITIAL_SUBSIDY_SATS: u64 = 50 * 100_000_000;
/// Smallest allowed block interval.
pub const BLOCK_INTERVAL_MIN_S: u32 = 1;
/// Largest allowed block interval (one day).
pub const BLOCK_INTERVAL_MAX_S: u32 = 86_400;

/// The block interval in force from a height on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalFrom {
    /// First height this interval applies to.
    pub from_height: u32,
    /// Target seconds between blocks.
    pub seconds: u32,
}

/// Dev chain parameters: the block-interval history (an interval change applies from the next block,
/// so blocks already mined keep validating under the rule they were mined with).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevParams {
    /// File format version.
    pub format: u32,
    /// Interval history, ascending by height; never empty.
    pub intervals: Vec<IntervalFrom>,
}

impl DevParams {
    /// Parameters for a new chain.
    pub fn new(block_interval_s: u32) -> DevParams {
        DevParams {
            format: 1,
            intervals: vec![IntervalFrom {
                from_height: 1,
                seconds: block_interval_s,
            }],
        }
    }

    /// The interval in force at `height`.
    pub fn interval_at(&self, height: u32) -> u32 {
        self.intervals
            .iter()
            .rev()
            .find(|i| i.from_height <= height)
            .or(self.intervals.first())
            .map_or(30, |i| i.seconds)
    }
}

/// The regtest genesis block (hash `0f9188f1…466e2206`).
pub fn genesis() -> Block {
    bitcoin::blockdata::constants::genesis_block(Network::Regtest)
}

/// Subsidy at `height`: 50 BTC halving every 150 blocks, zero after 64 halvings.
pub fn subsidy(height: u32) -> Sats {
    let halvings = height / HALVING_INTERVAL;
    let sat = if halvings >= 64 {
        0
    } else {
        INITIAL_SUBSIDY_SATS >> halvings
    };
    Sats::new(sat).unwrap_or(Sats::ZERO)
}

/// Whether the block at `height` stamped `time` may carry the minimum difficulty: its timestamp is
/// more than twice the block interval after its parent's (`parent_time`), or its parent carried the
/// minimum difficulty under this allowance (`parent_allowed`) and it is stamped after its parent.
pub fn min_difficulty_allowed(
    params: &DevParams,
    height: u32,
    parent_time: u32,
    parent_allowed: bool,
    time: u32,
) -> bool {
    height >= 2
        && (u64::from(time) > u64::from(parent_time) + 2 * u64::from(params.interval_at(height))
            || (parent_allowed && time > parent_time))
}

/// 2^(frac/65536) · 65536 for `frac` in `0..65536` (aserti3-2d's cubic approximation).
fn pow2_frac(frac: u64) -> u64 {
    let f = u128::from(frac);
    let poly = 195_766_423_245_049u128 * f + 971_821_376u128 * f * f + 5127u128 * f * f * f + (1u128 << 47);
    #[allow(clippy::cast_possible_truncation)] // < 2^17
    let r = 65_536 + (poly >> 48) as u64;
    r
}

/// The bits the block at `height` must carry, given its parent's bits and time and the grandparent's time.
pub fn next_bits(
    params: &DevParams,
    height: u32,
    parent_bits: u32,
    parent_time: u32,
    grandparent_time: u32,
) -> u32 {
    let limit = Target::REGTEST_POW_LIMIT;
    if height <= 1 {
        return limit.to_compact();
    }
    let t = i64::from(params.interval_at(height));
    let tau = 2 * t;
    let solvetime = (i64::from(parent_time) - i64::from(grandparent_time)).clamp(0, 6 * t);
    let exponent = (solvetime - t) * 65_536 / tau; // 16.16 fixed point
    let shifts = exponent >> 16; // floor
    let frac = (exponent - (shifts << 16)) as u64; // 0..65536
    let parent = Target::from_compact(parent_bits).unwrap_or(limit).to_u256();
    // The factor is < 2^17: for large targets divide first so the product stays inside 256 bits.
    let factor = pow2_frac(frac);
    let scaled = if parent.bits() > 200 {
        parent.shr_bits(16).checked_mul_u64(factor)
    } else {
        parent.checked_mul_u64(factor).map(|x| x.shr_bits(16))
    };
    let next = match scaled {
        None => limit.to_u256(),
        Some(x) if shifts >= 0 => x.checked_shl(shifts as u32).unwrap_or(limit.to_u256()),
        Some(x) => x.shr_bits((-shifts) as u32),
    };
    let next = if next.is_zero() {
        U256::ONE
    } else {
        next.min(limit.to_u256())
    };
    Target::from_u256(next).to_compact()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;

    #[test]
    fn genesis_and_subsidy() {
        assert_eq!(
            genesis().block_hash().to_string(),
            "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
        );
        let _ = genesis().block_hash().to_byte_array();
        assert_eq!(subsidy(1).to_sat(), 5_000_000_000);
        assert_eq!(subsidy(149).to_sat(), 5_000_000_000);
        assert_eq!(subsidy(150).to_sat(), 2_500_000_000);
        assert_eq!(subsidy(4800).to_sat(), 1);
        assert_eq!(subsidy(4950).to_sat(), 0);
        assert_eq!(subsidy(u32::MAX).to_sat(), 0);
    }

    #[test]
    fn retarget_behaviour() {
        let p = DevParams::new(30);
        let lim = 0x207fffff;
        assert_eq!(next_bits(&p, 1, lim, 0, 0), lim);
        // on schedule: unchanged (at the limit it stays at the limit)
        assert_eq!(next_bits(&p, 5, lim, 130, 100), lim);
        // a middle target: exactly on schedule keeps it
        let mid = Target::from_compact(0x1d00ffff).unwrap().to_compact();
        assert_eq!(next_bits(&p, 5, mid, 130, 100), mid);
        // instant block: target shrinks by 2^-0.5
        let faster = Target::from_compact(next_bits(&p, 5, mid, 100, 100)).unwrap();
        let m = Target::from_compact(mid).unwrap();
        assert!(faster < m);
        let ratio = faster
            .to_u256()
            .checked_mul_u64(1_000_000)
            .unwrap()
            .div_rem(m.to_u256())
            .unwrap()
            .0
            .low_u128();
        assert!((707_000..=707_200).contains(&ratio), "{ratio}");
        // slow block: easier, capped at 6T
        let slower = Target::from_compact(next_bits(&p, 5, mid, 100_000, 100)).unwrap();
        let capped = Target::from_compact(next_bits(&p, 5, mid, 280, 100)).unwrap();
        assert_eq!(slower, capped);
        assert!(slower > m);
        // never above the limit
        assert_eq!(next_bits(&p, 2, lim, 1_000_000, 0), lim);
        // at the limit, a fast block makes it harder (no overflow fallback to the limit)
        let hard = Target::from_compact(next_bits(&p, 5, lim, 100, 100)).unwrap();
        assert!(hard < Target::REGTEST_POW_LIMIT);
    }

    #[test]
    fn interval_history() {
        let mut p = DevParams::new(30);
        p.intervals.push(IntervalFrom {
            from_height: 10,
            seconds: 5,
        });
        assert_eq!(p.interval_at(1), 30);
        assert_eq!(p.interval_at(9), 30);
        assert_eq!(p.interval_at(10), 5);
        assert_eq!(p.interval_at(1000), 5);
    }
}
