//! The payout engine: pays matured balances on chain in batches, and never twice.
//!
//! One round ([`Engine::pay`]), at most every [`PayoutConfig::interval`] and only when no earlier
//! payout is still in flight:
//! 1. owners whose `available` balance is at least the threshold, largest first (at most
//!    [`PAYEES_PER_TX_MAX`](crate::wallet::PAYEES_PER_TX_MAX); the rest wait for the next round);
//!    an owner that is not an address of the network is skipped with the reason recorded;
//! 2. one transaction from the wallet's spendable coins paying each `⌊balance⌋` whole satoshis minus
//!    an equal share of the network fee ([`crate::wallet::build_payout`]);
//! 3. **recorded before broadcast**: the ledger transaction `payout:<txid>` (each payee's
//!    `available` → `platform/payouts-in-flight`) and the signed bytes, in one database transaction
//!    ([`ledger::Ledger::record_payout`]);
//! 4. broadcast.
//!
//! Every pass ([`Engine::settle`]) looks at the payouts in flight: confirmed [`PayoutConfig::confirmations`]
//! deep → `paid:<txid>` (`payouts-in-flight` → `platform/paid-out`, which therefore counts outputs and
//! network fees); unknown to the node (never broadcast because of a crash, dropped, or reorganised
//! out) → the same bytes are broadcast again; refused because its inputs are gone → `unpaid:<txid>`
//! reverses the debits. Because a payout is re-broadcast only as its recorded bytes, spending the
//! recorded coins, a crash at any point pays each balance at most once.
//!
//! Residual risk (documented): a reorganisation deeper than `confirmations` that drops a settled
//! payout whose change a later payout spends makes the later one refuse as "inputs missing" and be
//! reversed while it could still confirm after the earlier one returns. Keep `confirmations` at Core's
//! customary 6 on real networks.

use crate::wallet::{build_payout, BuildError, PayTo, Wallet, PAYEES_PER_TX_MAX};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::{Address, Network, Transaction};
use chain::{Backend, TxStatus};
use ledger::{Account, Ledger, PayoutDraft, PayoutLine, PayoutRecord, PayoutState, PlatformAccount, Posting};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use units::MilliSats;

/// How often in-flight payouts are looked at.
pub const SETTLE_EVERY: Duration = Duration::from_secs(2);

/// Payout settings.
#[derive(Debug, Clone)]
pub struct PayoutConfig {
    /// Network of payee addresses.
    pub network: Network,
    /// Pay an owner once their available balance reaches this (sat).
    pub threshold_sat: u64,
    /// Feerate of payout transactions (sat/vB).
    pub feerate_sat_per_vb: u64,
    /// Confirmations before a payout is settled as paid.
    pub confirmations: u32,
    /// Time between payout rounds.
    pub interval: Duration,
}

/// Test hook: when the environment variable `CLOUDMINE_FAILPOINT` names this point, the process
/// aborts there (no destructors, no flushing), exactly like `kill -9` at that instant.
fn failpoint(name: &str) {
    if std::env::var("CLOUDMINE_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Blocks after its confirmation during which a confirmed payout is still watched (and broadcast
/// again if a reorganisation took it out of the chain).
pub const CONFIRMED_WATCH_DEPTH: u32 = 100;

/// What a settle pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Settled as paid now (txids).
    pub confirmed: Vec<String>,
    /// Reversed now (txid, reason).
    pub abandoned: Vec<(String, String)>,
    /// Broadcast again now (txids).
    pub rebroadcast: Vec<String>,
    /// Still in flight after the pass.
    pub in_flight: usize,
}

/// What a payout round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// An earlier payout is still in flight.
    Busy,
    /// Nobody to pay (or every candidate skipped).
    Nothing,
    /// The wallet cannot fund the batch yet.
    Waiting(String),
    /// Recorded and broadcast (txid); the node refused it if `refused` is set (settled later).
    Paid {
        /// The payout's txid.
        txid: String,
        /// Payees.
        payees: usize,
        /// Why the node refused it now, if it did.
        refused: Option<String>,
    },
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    ledger: Arc<Ledger>,
    backend: Backend,
    wallet: Wallet,
    cfg: PayoutConfig,
}

fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn msat(v: i64) -> Result<MilliSats, String> {
    MilliSats::new(u64::try_from(v).map_err(e2s)?).map_err(e2s)
}

/// A refusal that means the transaction can never confirm as it is (its inputs are spent or gone).
fn permanent(reason: &str) -> bool {
    reason.contains("missingorspent")
        || reason.contains("missing-inputs")
        || reason.contains("inputs-missing")
}

impl Engine {
    /// An engine paying from `wallet`.
    pub fn new(ledger: Arc<Ledger>, backend: Backend, wallet: Wallet, cfg: PayoutConfig) -> Engine {
        Engine {
            ledger,
            backend,
            wallet,
            cfg,
        }
    }

    /// The wallet's address (what the pool's coinbase must pay for payouts to be funded).
    pub fn address(&self) -> Address {
        self.wallet.address(self.cfg.network)
    }

    /// Settles, re-broadcasts or reverses every payout in flight.
    pub async fn settle(&self) -> Result<Settled, String> {
        let mut out = Settled::default();
        let pending = self
            .ledger
            .payouts(Some(PayoutState::InFlight), ledger::store::PAYOUTS_LIST_MAX)
            .await
            .map_err(e2s)?;
        for p in pending {
            let tx: Transaction =
                deserialize(&p.raw_tx).map_err(|e| format!("payout {}: stored bytes: {e}", p.txid))?;
            let txid = tx.compute_txid();
            match self.backend.tx_status(&txid).await.map_err(e2s)? {
                TxStatus::Confirmed {
                    confirmations: c,
                    height,
                } if c >= self.cfg.confirmations => {
                    self.finish(&p, PayoutState::Confirmed, Some(i64::from(height)), "")
                        .await?;
                    tracing::info!(txid = %p.txid, confirmations = c, "payout confirmed");
                    out.confirmed.push(p.txid.clone());
                }
                TxStatus::Confirmed { .. } | TxStatus::Mempool => out.in_flight += 1,
                TxStatus::Unknown => match self.backend.broadcast(&tx).await.map_err(e2s)? {
                    Ok(_) => {
                        tracing::info!(txid = %p.txid, "payout broadcast again (the node did not have it)");
                        out.rebroadcast.push(p.txid.clone());
                        out.in_flight += 1;
                    }
                    Err(reason) if permanent(&reason) => {
                        self.finish(&p, PayoutState::Abandoned, None, &reason).await?;
                        tracing::warn!(txid = %p.txid, %reason, "payout can never confirm: debits reversed, balances restored");
                        out.abandoned.push((p.txid.clone(), reason));
                    }
                    Err(reason) => {
                        tracing::warn!(txid = %p.txid, %reason, "payout refused by the node; will retry");
                        out.in_flight += 1;
                    }
                },
            }
        }
        self.watch_confirmed(&mut out).await?;
        Ok(out)
    }

    /// A confirmed payout is final in the books, but a reorganisation deeper than
    /// `--payout-confirmations` can take its block out of the best chain (and a crash can take it out
    /// of the mempool). For [`CONFIRMED_WATCH_DEPTH`] blocks after confirmation each one is looked
    /// up again, and one the node no longer knows is broadcast again from its recorded bytes. If
    /// its inputs were spent elsewhere meanwhile it cannot be, and that is logged as an error (the
    /// payee's balance is not restored: the residual risk of a reorg deeper than the setting).
    async fn watch_confirmed(&self, out: &mut Settled) -> Result<(), String> {
        let tip = i64::from(self.backend.tip().borrow().height);
        let recent = self
            .ledger
            // One payout is in flight at a time and each takes a block to confirm, so at most
            // CONFIRMED_WATCH_DEPTH of them confirmed within the watched depth: no need to read more.
            .payouts(Some(PayoutState::Confirmed), CONFIRMED_WATCH_DEPTH)
            .await
            .map_err(e2s)?;
        for p in recent.iter().take_while(|p| {
            p.confirmed_height
                .is_some_and(|h| h + i64::from(CONFIRMED_WATCH_DEPTH) >= tip)
        }) {
            let tx: Transaction =
                deserialize(&p.raw_tx).map_err(|e| format!("payout {}: stored bytes: {e}", p.txid))?;
            if self.backend.tx_status(&tx.compute_txid()).await.map_err(e2s)? != TxStatus::Unknown {
                continue;
            }
            match self.backend.broadcast(&tx).await.map_err(e2s)? {
                Ok(_) => {
                    tracing::warn!(txid = %p.txid, "a confirmed payout left the best chain: broadcast again");
                    out.rebroadcast.push(p.txid.clone());
                }
                Err(reason) => {
                    tracing::error!(txid = %p.txid, %reason, "a confirmed payout left the best chain and cannot be broadcast again");
                }
            }
        }
        Ok(())
    }

    async fn finish(
        &self,
        p: &PayoutRecord,
        state: PayoutState,
        height: Option<i64>,
        note: &str,
    ) -> Result<(), String> {
        let total: i64 = p.lines.iter().map(|l| l.debit_msat).sum();
        let inflight = Account::Platform(PlatformAccount::PayoutsInFlight);
        let tx = match state {
            PayoutState::Confirmed => ledger::Transaction::new(
                &format!("paid:{}", p.txid),
                &format!(
                    "payout {} confirmed at height {}: {} payees, network fee {} sat",
                    p.txid,
                    height.unwrap_or(0),
                    p.lines.len(),
                    p.fee_sat
                ),
                vec![
                    Posting::debit(inflight, msat(total)?).map_err(e2s)?,
                    Posting::credit(Account::Platform(PlatformAccount::PaidOut), msat(total)?)
                        .map_err(e2s)?,
                ],
            ),
            PayoutState::Abandoned | PayoutState::InFlight => {
                let mut postings = vec![Posting::debit(inflight, msat(total)?).map_err(e2s)?];
                for l in &p.lines {
                    postings.push(
                        Posting::credit(Account::available(&l.owner), msat(l.debit_msat)?).map_err(e2s)?,
                    );
                }
                let memo: String = format!("payout {} reversed: {note}", p.txid)
                    .chars()
                    .take(400)
                    .collect();
                ledger::Transaction::new(&format!("unpaid:{}", p.txid), &memo, postings)
            }
        }
        .map_err(e2s)?;
        self.ledger
            .finish_payout(p.id, &tx, state, height, note)
            .await
            .map_err(e2s)?;
        Ok(())
    }

    /// One payout round (see the module docs).
    pub async fn pay(&self) -> Result<Round, String> {
        if self.ledger.payout_in_flight().await.map_err(e2s)? {
            return Ok(Round::Busy);
        }
        let threshold_msat = i64::try_from(self.cfg.threshold_sat.saturating_mul(1000)).map_err(e2s)?;
        let candidates = self
            .ledger
            .available_at_least(threshold_msat, PAYEES_PER_TX_MAX as u32)
            .await
            .map_err(e2s)?;
        let mut payees = Vec::new();
        let mut who = Vec::new();
        for (owner, bal) in candidates {
            let addr = Address::from_str(&owner)
                .map_err(|e| format!("not an address: {e}"))
                .and_then(|a| {
                    a.require_network(self.cfg.network)
                        .map_err(|_| format!("not an address of {}", self.cfg.network))
                });
            match addr {
                Ok(a) => {
                    payees.push(PayTo {
                        script: a.script_pubkey(),
                        debit_sat: u64::try_from(bal / 1000).map_err(e2s)?,
                    });
                    who.push((owner, a.to_string()));
                }
                Err(reason) => {
                    tracing::warn!(%owner, %reason, "payee skipped");
                    self.ledger
                        .record_payout_skip(&owner, &reason, bal)
                        .await
                        .map_err(e2s)?;
                }
            }
        }
        if payees.is_empty() {
            return Ok(Round::Nothing);
        }
        let coins = self
            .backend
            .spendable_coins(self.wallet.script())
            .await
            .map_err(e2s)?;
        // Payees come largest first. When the wallet cannot fund all of them (PPS pays balances
        // ahead of the blocks that cover them), pay the longest prefix it can fund; the rest keep
        // their balances for a later round.
        let feerate = self.cfg.feerate_sat_per_vb;
        let built = match build_payout(&self.wallet, &coins, &payees, feerate) {
            Ok(b) => b,
            Err(BuildError::NoPayees) => return Ok(Round::Nothing),
            Err(e @ (BuildError::InsufficientFunds { .. } | BuildError::DustChange(_))) => {
                let fits = |k: usize| {
                    build_payout(&self.wallet, &coins, payees.get(..k).unwrap_or(&[]), feerate).ok()
                };
                // Funding is monotone in the prefix length (each payee only adds to what is needed),
                // so the longest fundable prefix is found by bisection.
                let (mut lo, mut hi) = (0usize, payees.len()); // fits(lo) or lo == 0; !fits(hi)
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if fits(mid).is_some() {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                match (lo > 0).then(|| fits(lo)).flatten() {
                    Some(b) => {
                        tracing::warn!(error = %e, paying = lo, waiting = payees.len() - lo, "the wallet funds only the largest balances this round");
                        payees.truncate(lo);
                        who.truncate(lo);
                        b
                    }
                    None => {
                        tracing::warn!(error = %e, "payout round waits: the wallet cannot fund it yet");
                        return Ok(Round::Waiting(e.to_string()));
                    }
                }
            }
            Err(e) => return Err(e.to_string()),
        };
        for (i, reason) in &built.dropped {
            if let (Some((owner, _)), Some(p)) = (who.get(*i), payees.get(*i)) {
                let bal = i64::try_from(p.debit_sat.saturating_mul(1000)).unwrap_or(i64::MAX);
                self.ledger
                    .record_payout_skip(owner, reason, bal)
                    .await
                    .map_err(e2s)?;
            }
        }
        let txid = built.tx.compute_txid().to_string();
        let mut lines = Vec::new();
        let inflight = Account::Platform(PlatformAccount::PayoutsInFlight);
        let mut postings = Vec::new();
        let mut total = 0i64;
        for (i, paid) in built.paid.iter().enumerate() {
            let (Some(sat), Some((owner, address)), Some(p)) = (paid, who.get(i), payees.get(i)) else {
                continue;
            };
            let debit = i64::try_from(p.debit_sat.saturating_mul(1000)).map_err(e2s)?;
            total += debit;
            postings.push(Posting::debit(Account::available(owner), msat(debit)?).map_err(e2s)?);
            lines.push(PayoutLine {
                owner: owner.clone(),
                address: address.clone(),
                debit_msat: debit,
                paid_sat: i64::try_from(*sat).map_err(e2s)?,
            });
        }
        postings.push(Posting::credit(inflight, msat(total)?).map_err(e2s)?);
        let tx = ledger::Transaction::new(
            &format!("payout:{txid}"),
            &format!(
                "payout {txid}: {} payees, network fee {} sat shared equally",
                lines.len(),
                built.fee_sat
            ),
            postings,
        )
        .map_err(e2s)?;
        let draft = PayoutDraft {
            txid: txid.clone(),
            raw_tx: serialize(&built.tx),
            fee_sat: built.fee_sat,
            lines: lines.clone(),
        };
        self.ledger.record_payout(&tx, &draft).await.map_err(e2s)?;
        failpoint("payout-recorded");
        let refused = match self.backend.broadcast(&built.tx).await {
            Ok(Ok(_)) => None,
            Ok(Err(r)) => Some(r),
            Err(e) => Some(format!("node unavailable: {e}")),
        };
        failpoint("payout-broadcast");
        for l in &lines {
            self.ledger.clear_payout_skip(&l.owner).await.map_err(e2s)?;
        }
        match &refused {
            None => tracing::info!(%txid, payees = lines.len(), fee_sat = built.fee_sat, "payout broadcast"),
            Some(r) => {
                tracing::warn!(%txid, reason = %r, "payout recorded but not accepted by the node yet; retried on the next pass")
            }
        }
        Ok(Round::Paid {
            txid,
            payees: lines.len(),
            refused,
        })
    }

    /// Runs until `token` is cancelled: settles every [`SETTLE_EVERY`] (and at once when the tip
    /// moves), pays every `interval`.
    pub async fn run(self, token: CancellationToken) {
        let mut tip = self.backend.tip();
        let mut last_round: Option<Instant> = None;
        let mut backoff = SETTLE_EVERY;
        loop {
            let step = async {
                self.settle().await?;
                if last_round.is_none_or(|t| t.elapsed() >= self.cfg.interval) {
                    let r = self.pay().await?;
                    if r != Round::Busy {
                        last_round = Some(Instant::now());
                    }
                }
                Ok::<_, String>(())
            };
            let wait = match step.await {
                Ok(()) => {
                    backoff = SETTLE_EVERY;
                    SETTLE_EVERY
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "payout pass failed");
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    w
                }
            };
            tokio::select! {
                () = token.cancelled() => return,
                r = tip.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(wait).await; // the backend is gone: poll
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
