//! Coinbase payouts without custody (PPLNS/TIDES with `coinbase_payees > 0`): the largest earners of
//! the current window are paid directly by outputs of the coinbase they mine; everyone else (and each
//! payee's sub-satoshi remainder) accrues a balance from the pool's own output.
//!
//! A coinbase is part of the work, so who it pays is fixed when the job is issued. The accounting
//! task therefore keeps a [`PayeePlan`]: the window's work by owner, read from the ledger's work log
//! up to its newest share (at most every [`PLAN_EVERY`]). A new job takes the newest plan (if younger
//! than [`PLAN_MAX_AGE`]), turns it into outputs for its template's coinbase value
//! ([`PayeePlan::outputs`]), and records the plan's reference ([`PlanRef`]: last share, window, fee)
//! in its share-log row. When a block of that job is found, the credit reads the same window again
//! (the work log up to a share id never changes), recomputes the split exactly, and books what the
//! coinbase actually paid ([`PayeePlan::decompose`]): each payee's output into its
//! `user/<owner>/coinbase` account, the rest of each owner's part into its immature balance.
//!
//! Eligible for an output: an owner that is an address of the pool's network, is not the pool's own
//! script, and is the first owner of the window with that script (two spellings of one address pay
//! one output). At most `max` outputs (largest amounts first, [`ledger::schemes::coinbase_payees`]),
//! each at least `min_sat`. The same rule decides at issue and at credit.
//!
//! The plan's window is kept in memory as shares arrive ([`RollingWindow`]): the accounting task
//! appends every share it copies into the work log and drops those that fell out of the window, so a
//! plan costs a pass over the owners, not a read of the window. It is read from the work log once at
//! start, and again when the window grows (a difficulty change); memory is about 32 bytes per share
//! in the window.
//!
//! Costs, said plainly: every payee output adds 31–43 bytes to the coinbase, which every share's
//! validation hashes and every `mining.notify` carries. The block must have room for it: a job's
//! payees weigh at most what the template leaves of the 4,000,000 weight units after its
//! transactions and [`COINBASE_BASE_WEIGHT`] (smallest payees left out first). Bitcoin Core fills a
//! template up to `-blockreservedweight` (8,000 by default) short of the limit, room for about 45
//! P2WPKH payees when the mempool is full; raise it for more. Legacy sigops of payee outputs
//! (1 per P2PKH) are held to [`COINBASE_PAYEE_SIGOPS_MAX`]: Core leaves the coinbase 400 sigop cost.

use bitcoin::{Address, Network, ScriptBuf, Transaction, TxOut};
use ledger::schemes::{coinbase_payees, fee_split, split_by_weight, Amounts};
use std::collections::{BTreeMap, HashMap};
use units::MilliSats;

/// Weight kept free for the rest of the block outside payee outputs: header, transaction count,
/// and the coinbase without payees (its input, the pool's output, the witness commitment and the
/// reserved witness), with room to spare.
pub const COINBASE_BASE_WEIGHT: u64 = 4_000;
/// Legacy sigops all payee outputs of one coinbase may carry: Bitcoin Core's templates leave the
/// coinbase 400 sigop cost (4 per legacy sigop), less room for the pool's own output.
pub const COINBASE_PAYEE_SIGOPS_MAX: usize = 96;
/// The consensus block weight limit.
pub const MAX_BLOCK_WEIGHT: u64 = 4_000_000;

/// Shortest interval between two plans (each reads the whole window from the work log).
pub const PLAN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// A plan older than this is not used: the job's coinbase pays the pool alone and everyone accrues.
pub const PLAN_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(120);

/// Who pays whom in coinbases: the rule of a pool with coinbase payouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayeeRule {
    /// Most payee outputs per coinbase (at most [`crate::config::COINBASE_PAYEES_MAX`]).
    pub max: usize,
    /// Smallest payee output, sat.
    pub min_sat: u64,
    /// The network owners' addresses belong to.
    pub network: Network,
    /// The pool's own script (its output holds the fee and every balance credit).
    pub pool_script: ScriptBuf,
}

/// What a job row records of the plan its coinbase was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanRef {
    /// The window ends at this share id (inclusive).
    pub upto: i64,
    /// Window length in hashes of work.
    pub window: u128,
    /// Pool fee at issue, ppm.
    pub fee_ppm: u32,
}

impl PlanRef {
    /// The stored form: `{"upto":…,"window":"…","fee_ppm":…}` (the window as a decimal string: it
    /// may exceed 2^63).
    pub fn to_json(self) -> String {
        serde_json::json!({"upto": self.upto, "window": self.window.to_string(), "fee_ppm": self.fee_ppm})
            .to_string()
    }

    /// Parses [`PlanRef::to_json`].
    pub fn parse(s: &str) -> Result<PlanRef, String> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(|e| format!("payout plan {s:?}: {e}"))?;
        let bad = || format!("payout plan {s:?}: missing or malformed field");
        Ok(PlanRef {
            upto: v["upto"].as_i64().ok_or_else(bad)?,
            window: v["window"]
                .as_str()
                .and_then(|w| w.parse().ok())
                .ok_or_else(bad)?,
            fee_ppm: v["fee_ppm"]
                .as_u64()
                .and_then(|f| u32::try_from(f).ok())
                .ok_or_else(bad)?,
        })
    }
}

/// The newest `window` of work of the work log, kept as shares arrive: the same shares, and the same
/// partial edge share, that [`ledger::Ledger::work_window_upto`] would read, without reading them.
#[derive(Debug, Clone, Default)]
pub struct RollingWindow {
    window: u128,
    upto: i64,
    /// Oldest first: (owner index, work counted). The oldest may be counted in part (the edge).
    shares: std::collections::VecDeque<(u32, u128)>,
    total: u128,
    owners: Vec<String>,
    index: HashMap<String, u32>,
    sums: Vec<u128>,
}

impl RollingWindow {
    /// A window loaded from the work log's read (`(owner, work)` newest first, as
    /// `work_window_upto` returns them) ending at share `upto`.
    pub fn load(newest_first: Vec<(String, u128)>, upto: i64, window: u128) -> RollingWindow {
        let mut w = RollingWindow {
            window,
            upto,
            ..RollingWindow::default()
        };
        for (owner, work) in newest_first.into_iter().rev() {
            w.append(owner, work);
        }
        w.trim();
        w
    }

    /// Its length in work, and its last share.
    pub fn span(&self) -> (u128, i64) {
        (self.window, self.upto)
    }

    /// Shares held.
    pub fn len(&self) -> usize {
        self.shares.len()
    }

    /// Whether it holds no share.
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    fn append(&mut self, owner: String, work: u128) {
        let i = match self.index.get(&owner) {
            Some(i) => *i,
            None => {
                let i = u32::try_from(self.owners.len()).unwrap_or(u32::MAX);
                self.index.insert(owner.clone(), i);
                self.owners.push(owner);
                self.sums.push(0);
                i
            }
        };
        if let Some(s) = self.sums.get_mut(i as usize) {
            *s = s.saturating_add(work);
        }
        self.shares.push_back((i, work));
        self.total = self.total.saturating_add(work);
    }

    /// Drops whole shares older than the window and cuts the oldest kept to the part inside it.
    fn trim(&mut self) {
        while let Some(&(i, w)) = self.shares.front() {
            let rest = self.total - w;
            if rest >= self.window {
                self.shares.pop_front();
                self.total = rest;
                if let Some(s) = self.sums.get_mut(i as usize) {
                    *s -= w;
                }
                continue;
            }
            let inside = self.window - rest;
            if inside < w {
                if let (Some(f), Some(s)) = (self.shares.front_mut(), self.sums.get_mut(i as usize)) {
                    f.1 = inside;
                    *s -= w - inside;
                }
                self.total = self.window;
            }
            break;
        }
    }

    /// Appends shares copied into the work log after the last one held (`(seq, owner, work)` in seq
    /// order; any at or below it are skipped: a re-copy after an outage).
    pub fn push<'a>(&mut self, records: impl IntoIterator<Item = (i64, &'a str, u128)>) {
        for (seq, owner, work) in records {
            if seq <= self.upto || work == 0 {
                continue;
            }
            self.upto = seq;
            self.append(owner.to_string(), work);
        }
        self.trim();
    }

    /// A narrower window (a difficulty rise) from the same shares; a wider one needs older shares
    /// and returns `false` (load it again).
    pub fn narrow_to(&mut self, window: u128) -> bool {
        if window > self.window {
            return false;
        }
        self.window = window;
        self.trim();
        true
    }

    /// The plan of this window.
    pub fn plan(&self, rule: &PayeeRule) -> PayeePlan {
        let shares = self
            .owners
            .iter()
            .zip(&self.sums)
            .filter(|(_, w)| **w > 0)
            .map(|(o, w)| (o.clone(), *w))
            .collect();
        PayeePlan::new(shares, self.upto, self.window, rule)
    }
}

/// A window's work by owner, and which owners may be paid in a coinbase.
#[derive(Debug, Clone)]
pub struct PayeePlan {
    /// Last share in the window.
    pub upto: i64,
    /// Window length in hashes of work.
    pub window: u128,
    /// When it was made.
    pub made: std::time::Instant,
    owners: Vec<String>,
    weights: Vec<u128>,
    /// The output script of each eligible owner (same index as `owners`).
    scripts: Vec<Option<ScriptBuf>>,
}

/// A block's reward as its coinbase paid it, by owner index of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decomposed {
    /// Pool fee, msat.
    pub fee: MilliSats,
    /// The miners' part (reward − fee), msat.
    pub part: MilliSats,
    /// `(owner, sat)` paid by coinbase outputs.
    pub paid: Vec<(String, u64)>,
    /// `(owner, msat)` left to credit as a balance.
    pub credits: Vec<(String, u64)>,
}

impl PayeePlan {
    /// A plan from the window's shares (`(owner, work)`, any order) as the work log returned them.
    pub fn new(shares: Vec<(String, u128)>, upto: i64, window: u128, rule: &PayeeRule) -> PayeePlan {
        let mut by_owner: BTreeMap<String, u128> = BTreeMap::new();
        for (owner, work) in shares {
            let w = by_owner.entry(owner).or_insert(0);
            *w = w.saturating_add(work);
        }
        let mut seen: std::collections::HashSet<ScriptBuf> = std::collections::HashSet::new();
        let mut scripts = Vec::with_capacity(by_owner.len());
        for owner in by_owner.keys() {
            let script = owner
                .parse::<Address<_>>()
                .ok()
                .and_then(|a| a.require_network(rule.network).ok())
                .map(|a| a.script_pubkey())
                .filter(|s| *s != rule.pool_script && seen.insert(s.clone()));
            scripts.push(script);
        }
        let (owners, weights) = by_owner.into_iter().unzip();
        PayeePlan {
            upto,
            window,
            made: std::time::Instant::now(),
            owners,
            weights,
            scripts,
        }
    }

    /// Owners in the window.
    pub fn owners(&self) -> usize {
        self.owners.len()
    }

    /// (fee, miners' part, every owner's amount of the part): exact to the msat, by owner index.
    fn split(&self, reward: MilliSats, fee_ppm: u32) -> Result<(MilliSats, MilliSats, Amounts), String> {
        let (fee, part) = fee_split(reward, fee_ppm).map_err(|e| e.to_string())?;
        let total = self
            .weights
            .iter()
            .try_fold(0u128, |a, w| a.checked_add(*w))
            .ok_or("window work overflow")?;
        let amounts = split_by_weight(&self.weights, total, part.to_msat()).map_err(|e| e.to_string())?;
        Ok((fee, part, amounts))
    }

    /// The payee outputs of a coinbase worth `value_sat` (ordered by owner; empty if no one is
    /// eligible), weighing at most `weight_budget` weight units together: the smallest payees are
    /// left out (they accrue) when the block has no room for them. The pool's output, which the job
    /// adds, gets the rest.
    pub fn outputs(
        &self,
        value_sat: u64,
        fee_ppm: u32,
        rule: &PayeeRule,
        weight_budget: u64,
    ) -> Result<Vec<TxOut>, String> {
        let reward = value_sat
            .checked_mul(1000)
            .and_then(|m| MilliSats::new(m).ok())
            .ok_or("coinbase value out of range")?;
        let (_, _, amounts) = self.split(reward, fee_ppm)?;
        let eligible: Vec<(u32, u64)> = amounts
            .into_iter()
            .filter(|(i, _)| self.scripts.get(*i as usize).is_some_and(Option::is_some))
            .collect();
        let (mut outs, _) = coinbase_payees(&eligible, rule.max, rule.min_sat);
        // Largest first into the weight budget (an output weighs 4 × its serialized size) and the
        // coinbase's sigop allowance (legacy sigops of output scripts count, e.g. 1 per P2PKH).
        outs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let (mut used, mut sigops) = (0u64, 0usize);
        outs.retain(|(i, _)| {
            let Some(s) = self.scripts.get(*i as usize).and_then(Option::as_ref) else {
                return false;
            };
            let (w, n) = (4 * (9 + s.len() as u64), s.count_sigops_legacy());
            if used.saturating_add(w) <= weight_budget && sigops + n <= COINBASE_PAYEE_SIGOPS_MAX {
                used += w;
                sigops += n;
                true
            } else {
                false
            }
        });
        outs.sort_unstable();
        outs.into_iter()
            .map(|(i, sat)| {
                let script = self
                    .scripts
                    .get(i as usize)
                    .and_then(Clone::clone)
                    .ok_or("payee index out of range")?;
                Ok(TxOut {
                    value: bitcoin::Amount::from_sat(sat),
                    script_pubkey: script,
                })
            })
            .collect()
    }

    /// Books a found block's coinbase against this plan: what each owner's output paid, and what is
    /// left of each owner's amount as a balance credit. The reward is the sum of the coinbase's
    /// outputs. Refused (nothing can be booked) if an output pays a script that is neither an
    /// eligible owner's, the pool's nor a zero-value commitment, or pays an owner more than its
    /// amount.
    pub fn decompose(
        &self,
        coinbase: &Transaction,
        fee_ppm: u32,
        rule: &PayeeRule,
    ) -> Result<Decomposed, String> {
        let reward_sat: u64 = coinbase
            .output
            .iter()
            .try_fold(0u64, |a, o| a.checked_add(o.value.to_sat()))
            .ok_or("coinbase value overflow")?;
        let reward = reward_sat
            .checked_mul(1000)
            .and_then(|m| MilliSats::new(m).ok())
            .ok_or("coinbase value out of range")?;
        let (fee, part, amounts) = self.split(reward, fee_ppm)?;
        let by_script: HashMap<&ScriptBuf, usize> = self
            .scripts
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (s, i)))
            .collect();
        let mut paid: BTreeMap<usize, u64> = BTreeMap::new();
        for o in &coinbase.output {
            if o.script_pubkey == rule.pool_script || o.value.to_sat() == 0 {
                continue;
            }
            let i = by_script
                .get(&o.script_pubkey)
                .ok_or_else(|| format!("coinbase output to {} is no payee of the window", o.script_pubkey))?;
            let p = paid.entry(*i).or_insert(0);
            *p = p.checked_add(o.value.to_sat()).ok_or("payee overflow")?;
        }
        let mut credits = Vec::new();
        for (i, msat) in &amounts {
            let i = *i as usize;
            let got = paid
                .get(&i)
                .copied()
                .unwrap_or(0)
                .checked_mul(1000)
                .ok_or("payee overflow")?;
            let left = msat.checked_sub(got).ok_or_else(|| {
                format!(
                    "the coinbase pays {} {got} msat, more than its {msat} msat of the split",
                    self.owners.get(i).map_or("?", String::as_str)
                )
            })?;
            if left > 0 {
                credits.push((self.owners.get(i).cloned().ok_or("owner index")?, left));
            }
        }
        for i in paid.keys() {
            if !amounts.iter().any(|(j, _)| *j as usize == *i) {
                return Err(format!(
                    "the coinbase pays {}, which has no share of the split",
                    self.owners.get(*i).map_or("?", String::as_str)
                ));
            }
        }
        let paid = paid
            .into_iter()
            .map(|(i, sat)| Ok((self.owners.get(i).cloned().ok_or("owner index")?, sat)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Decomposed {
            fee,
            part,
            paid,
            credits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(b: u8) -> Address {
        let s = ScriptBuf::from_bytes(vec![0x51, 0x01, b]);
        Address::p2wsh(&s, Network::Regtest)
    }

    fn rule(max: usize) -> PayeeRule {
        PayeeRule {
            max,
            min_sat: 1_000,
            network: Network::Regtest,
            pool_script: addr(9).script_pubkey(),
        }
    }

    fn coinbase(outputs: Vec<TxOut>) -> Transaction {
        Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: outputs,
        }
    }

    #[test]
    fn outputs_then_decompose_books_every_msat() {
        let (a, b, c) = (
            addr(1).to_string(),
            addr(2).to_string(),
            "not-an-address".to_string(),
        );
        // work 5 : 3 : 2, plus the pool's own address (never a payee).
        let shares = vec![
            (a.clone(), 50),
            (b.clone(), 30),
            (c.clone(), 20),
            (addr(9).to_string(), 0),
        ];
        let r = rule(1);
        let plan = PayeePlan::new(shares, 7, 100, &r);
        let value = 5_000_000_001u64; // sat: the split has sub-sat remainders
        let outs = plan.outputs(value, 10_000, &r, u64::MAX).unwrap();
        // No room in the block: no payee output (everyone accrues).
        assert!(plan.outputs(value, 10_000, &r, 100).unwrap().is_empty());
        // One output (max 1): the largest eligible earner, a; c is not an address.
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].script_pubkey, addr(1).script_pubkey());
        let reward = value * 1000;
        let fee = reward / 100;
        let a_amount = (reward - fee) / 2; // exactly half (50 of 100)
        assert_eq!(outs[0].value.to_sat(), a_amount / 1000);
        let paid: u64 = outs.iter().map(|o| o.value.to_sat()).sum();
        let mut all = outs.clone();
        all.push(TxOut {
            value: bitcoin::Amount::from_sat(value - paid),
            script_pubkey: r.pool_script.clone(),
        });
        let d = plan.decompose(&coinbase(all.clone()), 10_000, &r).unwrap();
        assert_eq!(d.fee.to_msat(), fee);
        assert_eq!(d.paid, vec![(a.clone(), a_amount / 1000)]);
        let credited: u64 = d.credits.iter().map(|x| x.1).sum();
        assert_eq!(
            d.fee.to_msat() + paid * 1000 + credited,
            reward,
            "fee + outputs + credits = reward, to the msat"
        );
        assert!(d.credits.iter().any(|(o, m)| *o == a && *m == a_amount % 1000));
        assert!(d.credits.iter().any(|(o, _)| *o == b) && d.credits.iter().any(|(o, _)| *o == c));
        // A coinbase paying someone outside the window, or paying a payee too much, is refused.
        let mut stranger = all.clone();
        stranger.push(TxOut {
            value: bitcoin::Amount::from_sat(1),
            script_pubkey: addr(5).script_pubkey(),
        });
        assert!(plan.decompose(&coinbase(stranger), 10_000, &r).is_err());
        let mut greedy = all;
        greedy[0].value = bitcoin::Amount::from_sat(a_amount / 1000 + 1);
        assert!(plan
            .decompose(&coinbase(greedy), 10_000, &r)
            .unwrap_err()
            .contains("more than"));
        // Below the minimum: no output, everyone accrues.
        let small = PayeePlan::new(vec![(a, 1), (b, 1)], 7, 2, &r);
        assert!(small.outputs(1_500, 0, &r, u64::MAX).unwrap().is_empty());
    }

    #[test]
    fn the_rolling_window_holds_what_a_read_of_the_log_would() {
        use proptest::prelude::*;
        // Reference: the work log read newest first until the window is full (work_window_upto).
        fn read(log: &[(i64, String, u128)], upto: i64, window: u128) -> BTreeMap<String, u128> {
            let mut left = window;
            let mut out = BTreeMap::new();
            for (seq, o, w) in log.iter().rev() {
                if *seq > upto || left == 0 {
                    continue;
                }
                let take = (*w).min(left);
                left -= take;
                *out.entry(o.clone()).or_insert(0) += take;
            }
            out.retain(|_, w| *w > 0);
            out
        }
        fn sums(w: &RollingWindow) -> BTreeMap<String, u128> {
            w.owners
                .iter()
                .zip(&w.sums)
                .filter(|(_, s)| **s > 0)
                .map(|(o, s)| (o.clone(), *s))
                .collect()
        }
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
        let strat = (
            proptest::collection::vec((0u8..5, 1u128..1_000), 1..200),
            1u128..5_000,
            1u128..5_000,
            1usize..150,
        );
        runner
            .run(&strat, |(shares, window, window2, split)| {
                let log: Vec<(i64, String, u128)> = shares
                    .iter()
                    .enumerate()
                    .map(|(i, (o, w))| (i as i64 + 1, format!("o{o}"), *w))
                    .collect();
                let split = split.min(log.len());
                let first: Vec<(String, u128)> = {
                    // what work_window_upto returns for the first `split` shares, newest first
                    let mut left = window;
                    let mut v = Vec::new();
                    for (_, o, w) in log[..split].iter().rev() {
                        if left == 0 {
                            break;
                        }
                        let t = (*w).min(left);
                        left -= t;
                        v.push((o.clone(), t));
                    }
                    v
                };
                let mut w = RollingWindow::load(first, split as i64, window);
                prop_assert_eq!(sums(&w), read(&log, split as i64, window));
                w.push(log[split..].iter().map(|(s, o, x)| (*s, o.as_str(), *x)));
                w.push(log.iter().map(|(s, o, x)| (*s, o.as_str(), *x))); // a re-copy adds nothing
                let last = log.len() as i64;
                prop_assert_eq!(sums(&w), read(&log, last, window));
                if w.narrow_to(window2) {
                    prop_assert_eq!(sums(&w), read(&log, last, window2));
                } else {
                    prop_assert!(window2 > window);
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn p2pkh_payees_are_held_to_the_coinbase_sigop_allowance() {
        let r = rule(200);
        let shares: Vec<(String, u128)> = (0..150u8)
            .map(|i| {
                let pk = bitcoin::PublicKey::new(
                    bitcoin::secp256k1::SecretKey::from_slice(&[i.max(1).wrapping_add(1); 32])
                        .unwrap()
                        .public_key(&bitcoin::secp256k1::Secp256k1::new()),
                );
                let a = if i % 5 != 0 {
                    Address::p2pkh(pk, Network::Regtest)
                } else {
                    Address::p2wpkh(&bitcoin::CompressedPublicKey(pk.inner), Network::Regtest)
                };
                (a.to_string(), 1_000 + u128::from(i))
            })
            .collect();
        let plan = PayeePlan::new(shares, 1, u128::MAX, &r);
        let outs = plan.outputs(5_000_000_000, 0, &r, u64::MAX).unwrap();
        let p2pkh = outs.iter().filter(|o| o.script_pubkey.is_p2pkh()).count();
        let sigops: usize = outs.iter().map(|o| o.script_pubkey.count_sigops_legacy()).sum();
        assert!(sigops <= COINBASE_PAYEE_SIGOPS_MAX && p2pkh <= COINBASE_PAYEE_SIGOPS_MAX);
        assert!(
            outs.len() > p2pkh,
            "P2WPKH payees carry no legacy sigops and still fit"
        );
    }

    #[test]
    fn plan_ref_round_trips() {
        let p = PlanRef {
            upto: 42,
            window: u128::MAX,
            fee_ppm: 20_000,
        };
        assert_eq!(PlanRef::parse(&p.to_json()).unwrap(), p);
        assert!(PlanRef::parse("{\"upto\":1}").is_err());
        assert!(PlanRef::parse("nonsense").is_err());
    }
}
