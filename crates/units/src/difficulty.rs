//! [`Difficulty`] (fixed point, 2^-32 resolution), [`Work`] (expected hashes) and [`Hashrate`].
//!
//! `Difficulty` stores `p = D · 2^32` as a `u128`. Because one share of difficulty `D` stands for
//! `D · 2^32` expected hashes, `p` is also the share's expected work, so `Work` sums are exact
//! integers. The share target is `floor(diff1 · 2^32 / p)` (stratum-v1.md §8), computed once per
//! job and compared with a plain 256-bit `≤`.
//!
//! Resolution is 2^-32 (difficulty ≈ 2.3e-10). That covers every share difficulty a miner can be given
//! (a difficulty below 2^-32 would need a target above 2^256). Network difficulties below that, such as
//! regtest's ≈ 4.66e-10, floor to a multiple of 2^-32: exact network-relative math (e.g. PPS's `d / D`)
//! must use the network [`Target`] (`d / D = d · target / diff1`) rather than a `Difficulty`.

use crate::{Target, U256};

/// Fractional bits of the fixed-point representation.
const FRAC_BITS: u32 = 32;

/// A share or network difficulty, `D = p / 2^32`, strictly positive.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Difficulty(u128);

/// Why a value is not a difficulty.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DifficultyError {
    /// Zero, negative, NaN or infinite.
    #[error("difficulty must be a finite number > 0, got {0}")]
    NotPositive(f64),
    /// Below 2^-32, the smallest representable difficulty.
    #[error("difficulty {0} is below the smallest supported value 2^-32")]
    TooSmall(f64),
    /// Above 2^96.
    #[error("difficulty {0} is above the largest supported value 2^96")]
    TooLarge(f64),
}

impl Difficulty {
    /// Difficulty 1.
    pub const ONE: Difficulty = Difficulty(1u128 << FRAC_BITS);
    /// The smallest difficulty, 2^-32.
    pub const MIN: Difficulty = Difficulty(1);
    /// The largest difficulty, just under 2^96.
    pub const MAX: Difficulty = Difficulty(u128::MAX);

    /// From the fixed-point value `p = D · 2^32` (also the expected hashes of one share). Zero is raised to 1.
    pub const fn from_fixed(p: u128) -> Difficulty {
        Difficulty(if p == 0 { 1 } else { p })
    }

    /// The fixed-point value `p = D · 2^32`.
    pub const fn to_fixed(self) -> u128 {
        self.0
    }

    /// An integer difficulty (0 is treated as [`Difficulty::MIN`]).
    pub const fn from_int(d: u64) -> Difficulty {
        Difficulty::from_fixed((d as u128) << FRAC_BITS)
    }

    /// From a float (e.g. a Stratum `set_difficulty` of 0.001), rounded to the nearest 2^-32.
    pub fn from_f64(d: f64) -> Result<Difficulty, DifficultyError> {
        if !d.is_finite() || d <= 0.0 {
            return Err(DifficultyError::NotPositive(d));
        }
        let p = (d * 4_294_967_296.0).round();
        if p < 1.0 {
            return Err(DifficultyError::TooSmall(d));
        }
        if p >= 2f64.powi(128) {
            return Err(DifficultyError::TooLarge(d));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // range checked just above
        Ok(Difficulty(p as u128))
    }

    /// As a float, for display and estimates (never for money).
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / 4_294_967_296.0
    }

    /// The integer part, `floor(D)`.
    pub const fn floor(self) -> u128 {
        self.0 >> FRAC_BITS
    }

    /// The share target `floor(diff1 · 2^32 / p)`: a hash meets `D` iff it is `≤` this target.
    pub fn to_target(self) -> Target {
        // diff1 · 2^32 = 0xFFFF · 2^240 < 2^256: no overflow.
        let n = Target::DIFF1
            .to_u256()
            .checked_shl(FRAC_BITS)
            .unwrap_or(U256::MAX);
        match n.div_rem(U256::from_u128(self.0)) {
            Some((q, _)) => Target::from_u256(q),
            None => Target::MAX, // p is never zero by construction
        }
    }

    /// The difficulty a target stands for, `floor(diff1 · 2^32 / target) / 2^32`, at least [`Difficulty::MIN`].
    pub fn from_target(t: Target) -> Difficulty {
        Difficulty::of_hash_value(t.to_u256())
    }

    /// The difficulty a hash achieved: `diff1 / H` with `H` the digest read little-endian,
    /// floored to 2^-32 (so `floor()` of it is exactly `floor(diff1 / H)`). Saturates at [`Difficulty::MAX`].
    pub fn of_hash(hash: &[u8; 32]) -> Difficulty {
        Difficulty::of_hash_value(U256::from_le_bytes(*hash))
    }

    fn of_hash_value(h: U256) -> Difficulty {
        let n = Target::DIFF1
            .to_u256()
            .checked_shl(FRAC_BITS)
            .unwrap_or(U256::MAX);
        match n.div_rem(h) {
            Some((q, _)) if q.bits() <= 128 => Difficulty::from_fixed(q.low_u128()),
            Some(_) | None => Difficulty::MAX,
        }
    }

    /// Expected work of one share at this difficulty.
    pub const fn work(self) -> Work {
        Work(self.0)
    }
}

impl core::fmt::Debug for Difficulty {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Difficulty({})", self.to_f64())
    }
}

impl core::fmt::Display for Difficulty {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let d = self.to_f64();
        if d >= 1.0 && self.0 & 0xffff_ffff == 0 {
            write!(f, "{}", self.floor())
        } else {
            write!(f, "{d}")
        }
    }
}

impl serde::Serialize for Difficulty {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.to_f64())
    }
}

/// Expected work in hashes (`Σ D_i · 2^32`), an exact integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, serde::Serialize)]
pub struct Work(u128);

impl Work {
    /// No work.
    pub const ZERO: Work = Work(0);
    /// From a count of hashes.
    pub const fn from_hashes(h: u128) -> Work {
        Work(h)
    }
    /// The count of hashes.
    pub const fn hashes(self) -> u128 {
        self.0
    }
    /// Checked addition.
    pub fn checked_add(self, o: Work) -> Option<Work> {
        self.0.checked_add(o.0).map(Work)
    }
    /// Saturating addition (statistics only).
    pub fn saturating_add(self, o: Work) -> Work {
        Work(self.0.saturating_add(o.0))
    }
    /// The same work counted in difficulty-1 shares (`hashes / 2^32`), as a float for display.
    pub fn diff1_shares(self) -> f64 {
        self.0 as f64 / 4_294_967_296.0
    }
}

/// A hashrate estimate in hashes per second (a float: estimates are not money).
#[derive(Clone, Copy, PartialEq, PartialOrd, Default, Debug, serde::Serialize)]
pub struct Hashrate(f64);

impl Hashrate {
    /// From hashes per second.
    pub fn from_hps(h: f64) -> Hashrate {
        Hashrate(if h.is_finite() && h > 0.0 { h } else { 0.0 })
    }
    /// Hashes per second.
    pub fn hps(self) -> f64 {
        self.0
    }
    /// `work / seconds` over a window of wall time (shares strictly inside the window only).
    pub fn from_work(work: Work, seconds: f64) -> Hashrate {
        if seconds > 0.0 {
            Hashrate::from_hps(work.0 as f64 / seconds)
        } else {
            Hashrate(0.0)
        }
    }
}

impl core::fmt::Display for Hashrate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const UNITS: [&str; 7] = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s", "EH/s"];
        let mut v = self.0;
        let mut i = 0;
        while v >= 1000.0 && i + 1 < UNITS.len() {
            v /= 1000.0;
            i += 1;
        }
        write!(f, "{v:.2} {}", UNITS.get(i).copied().unwrap_or("H/s"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn diff1_and_fractions() {
        assert_eq!(Difficulty::ONE.to_target(), Target::DIFF1);
        assert_eq!(Target::DIFF1.difficulty(), Difficulty::ONE);
        let half = Difficulty::from_f64(0.5).unwrap();
        assert_eq!(
            half.to_target().to_u256(),
            Target::DIFF1.to_u256().checked_shl(1).unwrap()
        );
        let milli = Difficulty::from_f64(0.001).unwrap();
        assert!(milli.to_target() > Target::DIFF1);
        assert!(Difficulty::from_f64(0.0).is_err());
        assert!(Difficulty::from_f64(-1.0).is_err());
        assert!(Difficulty::from_f64(f64::NAN).is_err());
        assert!(Difficulty::from_f64(1e-12).is_err());
        assert!(Difficulty::from_f64(1e40).is_err());
        // The regtest limit is difficulty ~4.66e-10 = 1.9999 * 2^-32: it floors to the resolution, 2^-32.
        // (Exact network-relative math such as PPS's d/D goes through `Target`, not `Difficulty`.)
        assert_eq!(Target::REGTEST_POW_LIMIT.difficulty(), Difficulty::MIN);
        assert_eq!(Difficulty::from_int(16384).to_string(), "16384");
    }

    #[test]
    fn exact_boundary() {
        // A hash equal to the share target meets it; one more does not.
        for d in [1u64, 3, 7, 512, 65536, 1 << 40] {
            let t = Difficulty::from_int(d).to_target();
            let h = t.to_le_bytes();
            assert!(t.is_met_by(&h));
            let above = Target::from_u256(t.to_u256().checked_add(U256::ONE).unwrap()).to_le_bytes();
            assert!(!t.is_met_by(&above));
            // and the hash at the target achieves at least difficulty d
            assert!(Difficulty::of_hash(&h) >= Difficulty::from_int(d));
        }
    }

    proptest! {
        /// target -> difficulty -> target never makes the target stricter than the original by more than rounding.
        #[test]
        fn difficulty_target_round_trip(p in 1u128..(1u128 << 100)) {
            let d = Difficulty::from_fixed(p);
            let t = d.to_target();
            // H * p <= diff1 * 2^32  <=>  H <= t  (the exact rule)
            let n = Target::DIFF1.to_u256().checked_shl(32).unwrap();
            prop_assert!(t.to_u256().checked_mul_u128(p).is_some_and(|x| x <= n));
            let t1 = U256::from_u128(1).checked_add(t.to_u256()).unwrap();
            prop_assert!(t1.checked_mul_u128(p).is_none_or(|x| x > n));
            // back to a difficulty: never below the original
            prop_assert!(Difficulty::from_target(t) >= d);
        }

        #[test]
        fn nbits_target_difficulty(exp in 4u32..=0x20, mant in 0x008000u32..=0x7fffff) {
            let bits = (exp << 24) | mant;
            if let Ok(t) = Target::from_compact(bits) {
                let d = t.difficulty();
                let t2 = d.to_target();
                // floor(N / floor(N / T)) >= T, and the round trip lands on the same nbits or above
                prop_assert!(t2 >= t);
                prop_assert_eq!(Target::from_compact(t.to_compact()).unwrap(), t);
            }
        }
    }
}
