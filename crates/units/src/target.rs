//! [`Target`]: a 256-bit proof-of-work target, and exact nbits (compact) conversion.
//!
//! A hash meets a target when the digest, read as a little-endian 256-bit integer, is `≤` the target.
//! Compact ("nbits") decoding follows Core's `SetCompact`: `e = bits >> 24`, `m = bits & 0x007fffff`,
//! `target = m · 256^(e−3)`; a set sign bit `0x00800000` with a non-zero mantissa, or a value that
//! overflows 256 bits, is an error, not a silent zero. Encoding is rust-bitcoin's (`to_compact_lossy`,
//! identical to Core's `GetCompact`).

use crate::{Difficulty, U256};
use bitcoin::pow::{CompactTarget, Target as BtcTarget};

/// A 256-bit proof-of-work target.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target(U256);

/// Why an nbits value is not a usable target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// The sign bit is set with a non-zero mantissa (a negative target).
    #[error("nbits {0:08x} is negative (sign bit 0x00800000 set)")]
    Negative(u32),
    /// The target does not fit in 256 bits.
    #[error("nbits {0:08x} overflows 256 bits")]
    Overflow(u32),
    /// The target is zero, which no hash can meet.
    #[error("nbits {0:08x} encodes a zero target")]
    Zero(u32),
}

impl Target {
    /// The difficulty-1 target `0x00000000FFFF0000…0` (= 0xFFFF · 2^208).
    pub const DIFF1: Target = Target(U256::from_limbs([0, 0, 0, 0x0000_0000_FFFF_0000]));
    /// Regtest's (and our dev chain's) proof-of-work limit, `0x7fff…ff`.
    pub const REGTEST_POW_LIMIT: Target =
        Target(U256::from_limbs([u64::MAX, u64::MAX, u64::MAX, i64::MAX as u64]));
    /// The largest target.
    pub const MAX: Target = Target(U256::MAX);

    /// From a 256-bit integer.
    pub const fn from_u256(v: U256) -> Target {
        Target(v)
    }

    /// The 256-bit integer.
    pub const fn to_u256(self) -> U256 {
        self.0
    }

    /// From 32 little-endian bytes.
    pub fn from_le_bytes(b: [u8; 32]) -> Target {
        Target(U256::from_le_bytes(b))
    }

    /// To 32 little-endian bytes.
    pub fn to_le_bytes(self) -> [u8; 32] {
        self.0.to_le_bytes()
    }

    /// Big-endian hex (as GBT's `target` field prints it).
    pub fn to_be_hex(self) -> String {
        self.0.to_be_hex()
    }

    /// Decodes nbits exactly, refusing negative, overflowing and zero targets.
    pub fn from_compact(bits: u32) -> Result<Target, CompactError> {
        let exp = bits >> 24;
        let mant = bits & 0x007f_ffff;
        if bits & 0x0080_0000 != 0 && mant != 0 {
            return Err(CompactError::Negative(bits));
        }
        // Core: overflow if mant != 0 && (exp > 34 || (mant > 0xff && exp > 33) || (mant > 0xffff && exp > 32))
        if mant != 0 && (exp > 34 || (mant > 0xff && exp > 33) || (mant > 0xffff && exp > 32)) {
            return Err(CompactError::Overflow(bits));
        }
        let t = BtcTarget::from_compact(CompactTarget::from_consensus(bits));
        let t = Target::from_le_bytes(t.to_le_bytes());
        if t.0.is_zero() {
            return Err(CompactError::Zero(bits));
        }
        Ok(t)
    }

    /// Encodes as nbits, rounding the mantissa down as Core's `GetCompact` does.
    pub fn to_compact(self) -> u32 {
        BtcTarget::from_le_bytes(self.to_le_bytes())
            .to_compact_lossy()
            .to_consensus()
    }

    /// True when a digest (internal byte order, as SHA-256 emits it) meets this target.
    #[inline]
    pub fn is_met_by(self, hash: &[u8; 32]) -> bool {
        U256::from_le_bytes(*hash) <= self.0
    }

    /// The difficulty this target stands for, `diff1 / target`, floored to 2^-32.
    pub fn difficulty(self) -> Difficulty {
        Difficulty::from_target(self)
    }

    /// As rust-bitcoin's target.
    pub fn to_bitcoin(self) -> BtcTarget {
        BtcTarget::from_le_bytes(self.to_le_bytes())
    }
}

impl core::fmt::Debug for Target {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Target({})", self.0.to_be_hex())
    }
}

impl core::fmt::Display for Target {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0.to_be_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_compacts() {
        assert_eq!(Target::from_compact(0x1d00ffff).unwrap(), Target::DIFF1);
        assert_eq!(Target::DIFF1.to_compact(), 0x1d00ffff);
        let regtest = Target::from_compact(0x207fffff).unwrap();
        assert_eq!(regtest.to_be_hex(), format!("7fffff{}", "0".repeat(58)));
        assert!(regtest <= Target::REGTEST_POW_LIMIT);
        assert_eq!(Target::REGTEST_POW_LIMIT.to_compact(), 0x207fffff);
        assert_eq!(
            Target::from_compact(0x04923456),
            Err(CompactError::Negative(0x04923456))
        );
        assert_eq!(
            Target::from_compact(0xff123456),
            Err(CompactError::Overflow(0xff123456))
        );
        assert_eq!(
            Target::from_compact(0x01003456),
            Err(CompactError::Zero(0x01003456))
        );
        // Core's examples from arith_uint256_tests: 0x05009234 -> 0x92340000
        assert_eq!(
            Target::from_compact(0x05009234).unwrap().to_u256().low_u128(),
            0x9234_0000
        );
        assert_eq!(Target::from_compact(0x20123456).unwrap().to_compact(), 0x20123456);
    }

    proptest! {
        /// nbits -> target -> nbits is the identity for every canonical nbits value.
        #[test]
        fn compact_round_trip(exp in 1u32..=32, mant in 0x008000u32..=0x7fffff) {
            let bits = (exp << 24) | mant;
            if let Ok(t) = Target::from_compact(bits) {
                // canonical encodings (no lost low bytes) round-trip exactly
                let back = t.to_compact();
                prop_assert_eq!(Target::from_compact(back).unwrap(), t);
                if exp >= 3 { prop_assert_eq!(back, bits); }
            }
        }

        /// Our decoder agrees with rust-bitcoin on every non-error input.
        #[test]
        fn agrees_with_rust_bitcoin(bits in any::<u32>()) {
            if let Ok(t) = Target::from_compact(bits) {
                let theirs = BtcTarget::from_compact(CompactTarget::from_consensus(bits));
                prop_assert_eq!(t.to_le_bytes(), theirs.to_le_bytes());
            }
        }
    }
}
