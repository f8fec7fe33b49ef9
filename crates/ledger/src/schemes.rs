//! Payout scheme formulas (product.md), in exact integer arithmetic. No I/O: the pool feeds share
//! windows and block facts in, and posts what comes out to the ledger.
//!
//! Notation: `w` a share's work (its assigned difficulty · 2^32, in hashes), `W` the block's work
//! (`2^256 / (target + 1)`), `B` the subsidy, `F` fees, `f` the pool fee (parts per million), `R = B + F`.
//!
//! | scheme | credit | here |
//! |---|---|---|
//! | PPS | `w/W × B × (1 − f)` per share, at once | [`pps_credit`] |
//! | FPPS | `w/W × (B + E[F]) × (1 − f)` per share, `E[F]` the mean fees of recent blocks | [`pps_credit`] with [`expected_fees`] |
//! | PPLNS | on a block: `R × (1 − f) × (owner's work in the last N) / N`, `N` in work (e.g. 2·D·2^32) | [`fee_split`], [`window_split`] |
//! | TIDES | PPLNS with `N = 8·D·2^32`, the window fixed when the work is issued | [`window_split`] on the window the job carried |
//! | SOLO | the block to the finder, in the coinbase | no split |
//!
//! Rounding, accounted for to the millisatoshi: the fee is `floor(R · f)` and the miners' part is
//! `R − fee`, so the two add up to `R`. A window split gives each owner `floor(part · w_i / N)` and
//! then one more millisatoshi to the owners with the largest remainders until the parts add up to
//! exactly `part` (ties go to the lower owner index). PPS credits are floored per share; the
//! fractions stay with the pool, whose reserve pays the credits.

use units::{MilliSats, Target, Work, U256};

/// Why a formula cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    /// The fee is above 100 %.
    #[error("pool fee {0} ppm is above 1,000,000 (100 %)")]
    Fee(u32),
    /// The block's work does not fit the arithmetic (a target of zero).
    #[error("block work out of range")]
    BlockWork,
    /// An owner index is outside the owner table.
    #[error("share owner {0} outside the owner table of {1}")]
    Owner(u32, usize),
    /// A result does not fit.
    #[error("amount out of range")]
    Overflow,
}

/// Parts per million of the pool fee.
pub const PPM: u64 = 1_000_000;

/// The work a block at `target` stands for: `floor(2^256 / (target + 1))`.
pub fn block_work(target: Target) -> Result<U256, SchemeError> {
    let t1 = target
        .to_u256()
        .checked_add(U256::ONE)
        .ok_or(SchemeError::BlockWork)?;
    // 2^256 / (t+1) = (2^256 - 1) / (t+1) unless t+1 divides 2^256 exactly (a power of two).
    let (q, r) = U256::MAX.div_rem(t1).ok_or(SchemeError::BlockWork)?;
    let exact = r.checked_add(U256::ONE).is_some_and(|x| x == t1);
    if exact {
        q.checked_add(U256::ONE).ok_or(SchemeError::BlockWork)
    } else {
        Ok(q)
    }
}

/// Splits a reward into (pool fee, miners' part): `fee = floor(R · ppm / 10^6)`, part = `R − fee`.
pub fn fee_split(reward: MilliSats, fee_ppm: u32) -> Result<(MilliSats, MilliSats), SchemeError> {
    if u64::from(fee_ppm) > PPM {
        return Err(SchemeError::Fee(fee_ppm));
    }
    let r = u128::from(reward.to_msat());
    let fee = u64::try_from(r * u128::from(fee_ppm) / u128::from(PPM)).map_err(|_| SchemeError::Overflow)?;
    let fee = MilliSats::new(fee).map_err(|_| SchemeError::Overflow)?;
    let part = reward.checked_sub(fee).map_err(|_| SchemeError::Overflow)?;
    Ok((fee, part))
}

/// PPS / FPPS credit for one share: `floor(reward · (10^6 − ppm) · w / (W · 10^6))`. For FPPS pass
/// `reward = B + E[F]`.
pub fn pps_credit(
    reward: MilliSats,
    fee_ppm: u32,
    share: Work,
    block: U256,
) -> Result<MilliSats, SchemeError> {
    if u64::from(fee_ppm) > PPM {
        return Err(SchemeError::Fee(fee_ppm));
    }
    let num = U256::from_u128(share.hashes())
        .checked_mul_u64(reward.to_msat())
        .and_then(|x| x.checked_mul_u64(PPM - u64::from(fee_ppm)))
        .ok_or(SchemeError::Overflow)?;
    let den = block.checked_mul_u64(PPM).ok_or(SchemeError::BlockWork)?;
    let (q, _) = num.div_rem(den).ok_or(SchemeError::BlockWork)?;
    if q.bits() > 64 {
        return Err(SchemeError::Overflow);
    }
    MilliSats::new(u64::try_from(q.low_u128()).map_err(|_| SchemeError::Overflow)?)
        .map_err(|_| SchemeError::Overflow)
}

/// `E[F]` for FPPS: the mean fees of recent blocks, floored (zero without history).
pub fn expected_fees(recent: &[MilliSats]) -> MilliSats {
    if recent.is_empty() {
        return MilliSats::ZERO;
    }
    let sum: u128 = recent.iter().map(|f| u128::from(f.to_msat())).sum();
    let mean = sum / recent.len() as u128;
    u64::try_from(mean)
        .ok()
        .and_then(|m| MilliSats::new(m).ok())
        .unwrap_or(MilliSats::ZERO)
}

/// Amounts by owner index: `(owner, amount)`.
pub type Amounts = Vec<(u32, u64)>;

/// One accepted share in a PPLNS/TIDES window: who (an index into the caller's owner table) and
/// its credited work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowShare {
    /// Owner index.
    pub owner: u32,
    /// Work credited (assigned difficulty · 2^32).
    pub work: u128,
}

/// PPLNS / TIDES: splits `part` over the last `window` of work in `shares` (oldest first), newest
/// backwards; the share that crosses the window's edge counts only with the part inside it. When the
/// shares hold less work than `window`, the whole of it is the window (everything is paid out).
/// Returns `(owner, msat)` for every owner with a non-zero amount, by owner index; the amounts add
/// up to exactly `part`.
pub fn window_split(
    shares: &[WindowShare],
    window: u128,
    owners: usize,
    part: MilliSats,
) -> Result<Vec<(u32, u64)>, SchemeError> {
    let mut work = vec![0u128; owners];
    let mut left = window;
    for s in shares.iter().rev() {
        if left == 0 {
            break;
        }
        let w = s.work.min(left);
        left -= w;
        let slot = work
            .get_mut(s.owner as usize)
            .ok_or(SchemeError::Owner(s.owner, owners))?;
        *slot = slot.checked_add(w).ok_or(SchemeError::Overflow)?;
    }
    let total = window - left;
    split_by_weight(&work, total, part.to_msat())
}

/// `amount · w_i / total` for each weight, floored, then the leftover millisatoshis to the largest
/// remainders: the result adds up to exactly `amount` (or is empty when there is no weight).
pub fn split_by_weight(weights: &[u128], total: u128, amount: u64) -> Result<Amounts, SchemeError> {
    if total == 0 || amount == 0 {
        return Ok(Vec::new());
    }
    let den = U256::from_u128(total);
    let mut out: Vec<(u32, u64, u128)> = Vec::new(); // (owner, floor, remainder)
    let mut given: u64 = 0;
    for (i, w) in weights.iter().enumerate() {
        if *w == 0 {
            continue;
        }
        let num = U256::from_u128(*w)
            .checked_mul_u64(amount)
            .ok_or(SchemeError::Overflow)?;
        let (q, r) = num.div_rem(den).ok_or(SchemeError::Overflow)?;
        let q = u64::try_from(q.low_u128()).map_err(|_| SchemeError::Overflow)?;
        given = given.checked_add(q).ok_or(SchemeError::Overflow)?;
        out.push((
            u32::try_from(i).map_err(|_| SchemeError::Overflow)?,
            q,
            r.low_u128(),
        ));
    }
    let mut leftover = amount.checked_sub(given).ok_or(SchemeError::Overflow)?;
    if leftover > 0 {
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by(|&a, &b| out[b].2.cmp(&out[a].2).then(out[a].0.cmp(&out[b].0)));
        for &k in &order {
            if leftover == 0 {
                break;
            }
            if let Some(o) = out.get_mut(k) {
                o.1 += 1;
                leftover -= 1;
            }
        }
    }
    Ok(out
        .into_iter()
        .filter(|o| o.1 > 0)
        .map(|(i, a, _)| (i, a))
        .collect())
}

/// Which window earners are paid in the coinbase: the largest amounts first, at most `max_outputs`,
/// each at least `min_output_sat` whole satoshis (outputs are whole satoshis). Returns
/// `(coinbase outputs in sat by owner, balance credits in msat by owner)`: an owner paid in the
/// coinbase gets its sub-satoshi remainder as a balance credit, everyone else accrues the whole
/// amount. Sum of outputs·1000 + credits = sum of the split, exactly.
pub fn coinbase_payees(split: &[(u32, u64)], max_outputs: usize, min_output_sat: u64) -> (Amounts, Amounts) {
    let mut order: Vec<&(u32, u64)> = split.iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut outputs = Vec::new();
    let mut credits = Vec::new();
    for (owner, msat) in order {
        let sat = msat / 1000;
        if outputs.len() < max_outputs && sat >= min_output_sat.max(1) {
            outputs.push((*owner, sat));
            if msat % 1000 > 0 {
                credits.push((*owner, msat % 1000));
            }
        } else {
            credits.push((*owner, *msat));
        }
    }
    outputs.sort_unstable();
    credits.sort_unstable();
    (outputs, credits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(v: u64) -> MilliSats {
        MilliSats::new(v).unwrap()
    }

    #[test]
    fn block_work_matches_the_definition() {
        // target = 2^255 - 1 → 2^256 / 2^255 = 2 exactly.
        let t = Target::from_u256(U256::MAX.shr_bits(1));
        assert_eq!(block_work(t).unwrap(), U256::from_u128(2));
        // difficulty-1 target: 2^256 / (0xffff·2^208 + 1) = 4295032833 (Bitcoin's diff-1 chainwork).
        assert_eq!(block_work(Target::DIFF1).unwrap(), U256::from_u128(4_295_032_833));
    }

    #[test]
    fn fee_and_pps() {
        let (fee, part) = fee_split(m(312_500_000_000), 20_000).unwrap(); // 2 %
        assert_eq!((fee.to_msat(), part.to_msat()), (6_250_000_000, 306_250_000_000));
        assert!(fee_split(m(1), 1_000_001).is_err());
        // A share of exactly the block's work earns the whole reward less the fee.
        let w = U256::from_u128(1 << 40);
        assert_eq!(
            pps_credit(m(5_000_000_000), 10_000, Work::from_hashes(1 << 40), w)
                .unwrap()
                .to_msat(),
            4_950_000_000
        );
        // Half the work, half the credit (floored).
        assert_eq!(
            pps_credit(m(5_000_000_001), 0, Work::from_hashes(1 << 39), w)
                .unwrap()
                .to_msat(),
            2_500_000_000
        );
        assert_eq!(expected_fees(&[m(10), m(20), m(31)]).to_msat(), 20);
        assert_eq!(expected_fees(&[]).to_msat(), 0);
    }

    #[test]
    fn window_counts_the_newest_work_and_cuts_the_edge_share() {
        let s = |owner, work| WindowShare { owner, work };
        // oldest first: owner 0 (10), owner 1 (10), owner 2 (10); window 15 → owner 2: 10, owner 1: 5.
        let split = window_split(&[s(0, 10), s(1, 10), s(2, 10)], 15, 3, m(1500)).unwrap();
        assert_eq!(split, vec![(1, 500), (2, 1000)]);
        // Window larger than all work: everything counts.
        let split = window_split(&[s(0, 10), s(1, 30)], 1000, 2, m(1000)).unwrap();
        assert_eq!(split, vec![(0, 250), (1, 750)]);
        // Leftover millisatoshis go to the largest remainders.
        let split = window_split(&[s(0, 1), s(1, 1), s(2, 1)], 3, 3, m(100)).unwrap();
        assert_eq!(split, vec![(0, 34), (1, 33), (2, 33)]);
        assert_eq!(
            window_split(&[s(5, 1)], 3, 3, m(1)),
            Err(SchemeError::Owner(5, 3))
        );
    }

    #[test]
    fn coinbase_takes_the_largest_earners_and_credits_the_rest() {
        let split = vec![(0, 5_000_500), (1, 700), (2, 3_000_000), (3, 9_000_000)];
        let (outs, credits) = coinbase_payees(&split, 2, 546);
        assert_eq!(outs, vec![(0, 5_000), (3, 9_000)]);
        assert_eq!(credits, vec![(0, 500), (1, 700), (2, 3_000_000)]);
    }

    proptest! {
        #[test]
        fn window_split_is_exact(shares in proptest::collection::vec((0u32..20, 1u128..1_000_000), 1..200), window in 1u128..50_000_000, amount in 0u64..10_000_000_000_000) {
            let ws: Vec<WindowShare> = shares.iter().map(|(o, w)| WindowShare { owner: *o, work: *w }).collect();
            let split = window_split(&ws, window, 20, m(amount)).unwrap();
            let total: u64 = split.iter().map(|x| x.1).sum();
            prop_assert_eq!(total, amount);
            // Each owner is within 1 msat of the exact proportional share.
            let mut work = [0u128; 20];
            let mut left = window;
            for s in ws.iter().rev() {
                let w = s.work.min(left);
                left -= w;
                work[s.owner as usize] += w;
            }
            let t = window - left;
            for (o, a) in &split {
                let exact = (work[*o as usize] as f64) * amount as f64 / t as f64;
                prop_assert!((*a as f64 - exact).abs() <= 1.0 + exact * 1e-12, "{o}: {a} vs {exact}");
            }
            let (outs, credits) = coinbase_payees(&split, 5, 546);
            let back: u64 = outs.iter().map(|x| x.1 * 1000).sum::<u64>() + credits.iter().map(|x| x.1).sum::<u64>();
            prop_assert_eq!(back, amount);
            prop_assert!(outs.len() <= 5);
        }
    }
}
