//! Units as types for the whole of cloudmine.
//!
//! Money is integer ([`Sats`], [`MilliSats`]) with checked arithmetic and no floats. Proof of work is
//! [`Target`] (a 256-bit integer), [`Difficulty`] (fixed point, 32 fractional bits, so fractional
//! difficulties below 1 are exact multiples of 2^-32), [`Work`] (expected hashes, an integer) and
//! [`Hashrate`] (an estimate, so a float). Every conversion between nbits, target and difficulty is
//! done with integers, following `stratum-v1.md` §8:
//!
//! * `diff1_target = 0xFFFF · 2^208`;
//! * a hash `H` (the digest read as a little-endian 256-bit integer) meets difficulty `D` iff
//!   `H ≤ floor(diff1_target / D)`; with `D = p / 2^32` this is `H ≤ floor(diff1_target · 2^32 / p)`;
//! * `D` stands for `D · 2^32 = p` expected hashes, so the fixed-point representation of a difficulty
//!   *is* its expected work in hashes.
//!
//! This crate depends on nothing internal.

mod difficulty;
mod money;
mod target;
mod u256;

pub use difficulty::{Difficulty, DifficultyError, Hashrate, Work};
pub use money::{AmountError, MilliSats, Sats, MAX_MONEY_SATS};
pub use target::{CompactError, Target};
pub use u256::U256;
