//! Money: [`Sats`] and [`MilliSats`], integers with checked arithmetic. No floats ever touch them.

use serde::{Deserialize, Serialize};

/// 21 million BTC in satoshis.
pub const MAX_MONEY_SATS: u64 = 21_000_000 * 100_000_000;

/// Why an amount operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmountError {
    /// Above 21 million BTC.
    #[error("amount {0} sat is above MAX_MONEY (21e6 BTC)")]
    AboveMaxMoney(u128),
    /// The result would be negative.
    #[error("amount would be negative")]
    Negative,
    /// Division by zero.
    #[error("division by zero")]
    DivisionByZero,
}

/// An amount in satoshis, `0 ..= MAX_MONEY`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Sats(u64);

impl Sats {
    /// Zero.
    pub const ZERO: Sats = Sats(0);

    /// Checked constructor.
    pub const fn new(sat: u64) -> Result<Sats, AmountError> {
        if sat > MAX_MONEY_SATS {
            Err(AmountError::AboveMaxMoney(sat as u128))
        } else {
            Ok(Sats(sat))
        }
    }
    /// The satoshis.
    pub const fn to_sat(self) -> u64 {
        self.0
    }
    /// Checked addition (stays within MAX_MONEY).
    pub fn checked_add(self, o: Sats) -> Result<Sats, AmountError> {
        Sats::new(
            self.0
                .checked_add(o.0)
                .ok_or(AmountError::AboveMaxMoney(u128::from(self.0) + u128::from(o.0)))?,
        )
    }
    /// Checked subtraction.
    pub fn checked_sub(self, o: Sats) -> Result<Sats, AmountError> {
        self.0.checked_sub(o.0).map(Sats).ok_or(AmountError::Negative)
    }
    /// `self · num / den`, floored, computed in 128 bits; the remainder is returned so that it can be carried.
    pub fn mul_div_floor(self, num: u64, den: u64) -> Result<(Sats, u64), AmountError> {
        if den == 0 {
            return Err(AmountError::DivisionByZero);
        }
        let p = u128::from(self.0) * u128::from(num);
        let q = p / u128::from(den);
        let r = p % u128::from(den);
        let q = u64::try_from(q).map_err(|_| AmountError::AboveMaxMoney(q))?;
        #[allow(clippy::cast_possible_truncation)] // r < den <= u64::MAX
        Ok((Sats::new(q)?, r as u64))
    }
    /// In millisatoshis.
    pub fn to_msat(self) -> MilliSats {
        MilliSats(self.0 * 1000) // MAX_MONEY * 1000 < u64::MAX
    }
    /// As rust-bitcoin's amount.
    pub fn to_amount(self) -> bitcoin::Amount {
        bitcoin::Amount::from_sat(self.0)
    }
    /// From rust-bitcoin's amount.
    pub fn from_amount(a: bitcoin::Amount) -> Result<Sats, AmountError> {
        Sats::new(a.to_sat())
    }
}

impl TryFrom<u64> for Sats {
    type Error = AmountError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        Sats::new(v)
    }
}
impl From<Sats> for u64 {
    fn from(s: Sats) -> u64 {
        s.0
    }
}

impl core::fmt::Display for Sats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} sat", self.0)
    }
}

/// An amount in millisatoshis, `0 ..= MAX_MONEY · 1000` (fits in a `u64`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct MilliSats(u64);

impl MilliSats {
    /// Zero.
    pub const ZERO: MilliSats = MilliSats(0);
    /// Checked constructor.
    pub const fn new(msat: u64) -> Result<MilliSats, AmountError> {
        if msat / 1000 > MAX_MONEY_SATS || (msat / 1000 == MAX_MONEY_SATS && !msat.is_multiple_of(1000)) {
            Err(AmountError::AboveMaxMoney(msat as u128 / 1000))
        } else {
            Ok(MilliSats(msat))
        }
    }
    /// The millisatoshis.
    pub const fn to_msat(self) -> u64 {
        self.0
    }
    /// Whole satoshis (floored) and the remaining millisatoshis.
    pub const fn to_sats_floor(self) -> (Sats, u64) {
        (Sats(self.0 / 1000), self.0 % 1000)
    }
    /// Checked addition.
    pub fn checked_add(self, o: MilliSats) -> Result<MilliSats, AmountError> {
        MilliSats::new(
            self.0
                .checked_add(o.0)
                .ok_or(AmountError::AboveMaxMoney(u128::MAX))?,
        )
    }
    /// Checked subtraction.
    pub fn checked_sub(self, o: MilliSats) -> Result<MilliSats, AmountError> {
        self.0
            .checked_sub(o.0)
            .map(MilliSats)
            .ok_or(AmountError::Negative)
    }
}

impl TryFrom<u64> for MilliSats {
    type Error = AmountError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        MilliSats::new(v)
    }
}
impl From<MilliSats> for u64 {
    fn from(s: MilliSats) -> u64 {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_checked_ops() {
        assert!(Sats::new(MAX_MONEY_SATS).is_ok());
        assert!(Sats::new(MAX_MONEY_SATS + 1).is_err());
        let a = Sats::new(MAX_MONEY_SATS).unwrap();
        assert!(a.checked_add(Sats::new(1).unwrap()).is_err());
        assert_eq!(
            Sats::ZERO.checked_sub(Sats::new(1).unwrap()),
            Err(AmountError::Negative)
        );
        assert_eq!(a.to_msat().to_msat(), MAX_MONEY_SATS * 1000);
        assert!(MilliSats::new(MAX_MONEY_SATS * 1000 + 1).is_err());
        let (q, r) = Sats::new(100).unwrap().mul_div_floor(1, 3).unwrap();
        assert_eq!((q.to_sat(), r), (33, 1));
        assert!(Sats::new(1).unwrap().mul_div_floor(1, 0).is_err());
        assert_eq!(
            MilliSats::new(2500).unwrap().to_sats_floor(),
            (Sats::new(2).unwrap(), 500)
        );
        // serde refuses out-of-range input
        assert!(serde_json::from_str::<Sats>("2100000000000001").is_err());
        assert_eq!(serde_json::from_str::<Sats>("5").unwrap().to_sat(), 5);
    }
}
