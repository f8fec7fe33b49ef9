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
//! Who signs ([`Signer`]): the pool's own key ([`Signer::Key`], the default); an external signer
//! ([`Signer::Psbt`]: the batch is recorded unsigned under its final txid and exported as a PSBT to
//! `DATA/payouts/<txid>.psbt`; `cloudmine ledger import-psbt` records the signed one, which the next
//! pass broadcasts; a payout the operator broadcast themselves settles all the same); or Bitcoin
//! Core's wallet ([`Signer::Core`], [`crate::core`]: recorded under an intent id before `sendmany`,
//! found again by its comment after a crash).
//!
//! Residual risk (documented): a reorganisation deeper than `confirmations` that drops a settled
//! payout whose change a later payout spends makes the later one refuse as "inputs missing" and be
//! reversed while it could still confirm after the earlier one returns. Keep `confirmations` at Core's
//! customary 6 on real networks.

use crate::core::CoreWallet;
use crate::psbt::KeyOrigin;
use crate::wallet::{build_payout, BuildError, Built, PayTo, Wallet, PAYEES_PER_TX_MAX};
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::{Address, Network, Transaction};
use chain::{Backend, TxStatus};
use ledger::{
    Account, Ledger, PayoutDraft, PayoutLine, PayoutMethod, PayoutRecord, PayoutState, PlatformAccount,
    Posting,
};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use units::MilliSats;

/// A fixed valid public key (the secp256k1 generator) for the Core wallet fee estimate's stand-in
/// coin: it only gives the estimate a P2WPKH input and change of the right size.
const STAND_IN_KEY: [u8; 33] = [
    0x02, 0x79, 0xbe, 0x66, 0x7e, 0xf9, 0xdc, 0xbb, 0xac, 0x55, 0xa0, 0x62, 0x95, 0xce, 0x87, 0x0b, 0x07,
    0x02, 0x9b, 0xfc, 0xdb, 0x2d, 0xce, 0x28, 0xd9, 0x59, 0xf2, 0x81, 0x5b, 0x16, 0xf8, 0x17, 0x98,
];

fn ledger_now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Records the signed transaction of an exported PSBT (`bytes`: the signer's PSBT file, binary or
/// base64): it must be the PSBT of an in-flight payout awaiting its signature, signed on every input
/// by the key its prevouts pay ([`crate::psbt::import`]). The pool's next settle pass broadcasts
/// it. Returns the txid. Nothing is written when anything is wrong.
pub async fn import_signed_psbt(ledger: &Ledger, bytes: &[u8]) -> Result<String, String> {
    let signed = crate::psbt::parse(bytes).map_err(e2s)?;
    let txid = signed.unsigned_tx.compute_txid().to_string();
    let pending = ledger
        .payouts(Some(PayoutState::InFlight), ledger::store::PAYOUTS_LIST_MAX)
        .await
        .map_err(e2s)?;
    let p = pending
        .iter()
        .find(|p| p.txid == txid && p.method == PayoutMethod::Psbt)
        .ok_or_else(|| format!("no payout {txid} is in flight awaiting a signature"))?;
    if p.signed {
        return Err(format!("payout {txid} is signed already"));
    }
    let recorded = p
        .psbt
        .as_deref()
        .ok_or_else(|| format!("payout {txid} has no recorded PSBT"))
        .and_then(|b| bitcoin::psbt::Psbt::deserialize(b).map_err(e2s))?;
    let tx = crate::psbt::import(&signed, &recorded).map_err(e2s)?;
    ledger
        .complete_payout(p.id, &txid, &serialize(&tx))
        .await
        .map_err(e2s)?;
    Ok(txid)
}

/// Where the PSBT of payout `txid` is written.
pub fn psbt_file(dir: &std::path::Path, txid: &str) -> PathBuf {
    dir.join(format!("{txid}.psbt"))
}

/// Writes the PSBT (base64 text, what `bitcoin-cli walletprocesspsbt` and HWI take) atomically
/// (temporary file, fsync, rename).
fn write_psbt(dir: &std::path::Path, txid: &str, psbt: &[u8]) -> Result<PathBuf, String> {
    use std::io::Write as _;
    let io = |e: std::io::Error| format!("writing the PSBT of {txid} under {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = psbt_file(dir, txid);
    let tmp = file.with_extension("psbt.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(crate::psbt::bytes_to_base64(psbt).as_bytes())
        .map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &file).map_err(io)?;
    Ok(file)
}

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
    /// Recorded unsigned and exported for the external signer (txid, the PSBT file).
    AwaitingSignature {
        /// The payout's txid (final: every input is segwit).
        txid: String,
        /// Payees.
        payees: usize,
        /// Where the PSBT was written.
        file: PathBuf,
    },
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

/// Who signs payouts.
#[derive(Debug)]
pub enum Signer {
    /// The pool's own key (`DATA/wallet.key`).
    Key(Wallet),
    /// An external signer: `wallet` is watch-only; PSBTs are written to `dir`.
    Psbt {
        /// The watch-only wallet (the signer's public key).
        wallet: Wallet,
        /// The key's origin in the signer's HD tree, put in every PSBT input.
        origin: Option<KeyOrigin>,
        /// Where PSBT files go (`DATA/payouts`).
        dir: PathBuf,
    },
    /// Bitcoin Core's wallet.
    Core(CoreWallet),
}

impl Signer {
    /// The pool wallet whose coins pay (its key, or only its public key); `None` for a Core wallet.
    pub fn wallet(&self) -> Option<&Wallet> {
        match self {
            Signer::Key(w) | Signer::Psbt { wallet: w, .. } => Some(w),
            Signer::Core(_) => None,
        }
    }
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    ledger: Arc<Ledger>,
    backend: Backend,
    signer: Signer,
    cfg: PayoutConfig,
}

/// The wallet comment a Core wallet payout carries: how a retry finds it.
pub fn intent_comment(intent: &str) -> String {
    format!("cloudmine-payout:{intent}")
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
    /// An engine paying from `wallet` with the pool's own key.
    pub fn new(ledger: Arc<Ledger>, backend: Backend, wallet: Wallet, cfg: PayoutConfig) -> Engine {
        Engine::with_signer(ledger, backend, Signer::Key(wallet), cfg)
    }

    /// An engine whose payouts `signer` signs.
    pub fn with_signer(ledger: Arc<Ledger>, backend: Backend, signer: Signer, cfg: PayoutConfig) -> Engine {
        Engine {
            ledger,
            backend,
            signer,
            cfg,
        }
    }

    /// The pool wallet's address (what the pool's coinbase must pay for payouts to be funded); `None`
    /// for a Core wallet (the operator gives one of its addresses).
    pub fn address(&self) -> Option<Address> {
        self.signer.wallet().map(|w| w.address(self.cfg.network))
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
            match (p.method, p.signed) {
                (PayoutMethod::CoreWallet, _) => {
                    self.settle_core(&p, &mut out).await?;
                    continue;
                }
                (PayoutMethod::Psbt, false) => {
                    self.settle_unsigned(&p, &mut out).await?;
                    continue;
                }
                (PayoutMethod::PoolKey | PayoutMethod::Psbt, _) => {}
            }
            let tx: Transaction =
                deserialize(&p.raw_tx).map_err(|e| format!("payout {}: stored bytes: {e}", p.txid))?;
            let txid = tx.compute_txid();
            match self.backend.tx_status(&txid).await.map_err(e2s)? {
                TxStatus::Confirmed {
                    confirmations: c,
                    height,
                } if c >= self.cfg.confirmations => {
                    self.finish(&p, PayoutState::Confirmed, Some(i64::from(height)), "", None)
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
                        self.finish(&p, PayoutState::Abandoned, None, &reason, None)
                            .await?;
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

    /// An exported PSBT not yet imported: settled if the operator broadcast it themselves (the node
    /// knows the txid), else it waits; its file is written again if it is missing.
    async fn settle_unsigned(&self, p: &PayoutRecord, out: &mut Settled) -> Result<(), String> {
        let txid: bitcoin::Txid = p.txid.parse().map_err(e2s)?;
        match self.backend.tx_status(&txid).await.map_err(e2s)? {
            TxStatus::Confirmed {
                confirmations: c,
                height,
            } if c >= self.cfg.confirmations => {
                self.finish(p, PayoutState::Confirmed, Some(i64::from(height)), "", None)
                    .await?;
                tracing::info!(txid = %p.txid, "payout confirmed (signed and broadcast outside the pool)");
                out.confirmed.push(p.txid.clone());
            }
            _ => {
                if let (Signer::Psbt { dir, .. }, Some(psbt)) = (&self.signer, &p.psbt) {
                    let file = psbt_file(dir, &p.txid);
                    if !file.exists() {
                        write_psbt(dir, &p.txid, psbt)?;
                    }
                }
                out.in_flight += 1;
            }
        }
        Ok(())
    }

    /// A Core wallet payout: sent (or found sent, by its comment) if it was not yet; settled when the
    /// wallet reports it confirmed deep enough, with the wallet's actual fee booked.
    async fn settle_core(&self, p: &PayoutRecord, out: &mut Settled) -> Result<(), String> {
        let Signer::Core(w) = &self.signer else {
            tracing::warn!(txid = %p.txid, "a Core wallet payout is in flight but the pool pays with another signer: start with --payout-signer core to settle it");
            out.in_flight += 1;
            return Ok(());
        };
        if !p.signed {
            let comment = intent_comment(&p.txid);
            let txid = match w.find_by_comment(&comment, p.created_ms).await? {
                Some(t) => t,
                None => {
                    let outputs: Vec<(String, u64)> = p
                        .lines
                        .iter()
                        .map(|l| Ok((l.address.clone(), u64::try_from(l.paid_sat).map_err(e2s)?)))
                        .collect::<Result<_, String>>()?;
                    match w.send_many(&outputs, &comment, self.cfg.feerate_sat_per_vb).await {
                        Ok(t) => {
                            failpoint("payout-broadcast");
                            t
                        }
                        Err(e) => {
                            tracing::warn!(intent = %p.txid, error = %e, "Core wallet did not send the payout; retried on the next pass");
                            out.in_flight += 1;
                            return Ok(());
                        }
                    }
                }
            };
            let Some(wtx) = w.transaction(&txid).await? else {
                out.in_flight += 1; // found next pass by its comment
                return Ok(());
            };
            self.ledger
                .complete_payout(p.id, &txid, &wtx.raw)
                .await
                .map_err(e2s)?;
            tracing::info!(intent = %p.txid, %txid, fee_sat = wtx.fee_sat, "payout sent by the Core wallet");
            out.in_flight += 1;
            return Ok(());
        }
        match w.transaction(&p.txid).await? {
            Some(t) if t.confirmations >= i64::from(self.cfg.confirmations) => {
                self.finish(p, PayoutState::Confirmed, t.block_height, "", Some(t.fee_sat))
                    .await?;
                tracing::info!(txid = %p.txid, confirmations = t.confirmations, "payout confirmed");
                out.confirmed.push(p.txid.clone());
            }
            Some(t) if t.confirmations < 0 => {
                tracing::warn!(txid = %p.txid, confirmations = t.confirmations, "the Core wallet reports the payout conflicted; it stays in flight until the operator resolves it");
                out.in_flight += 1;
            }
            Some(_) => out.in_flight += 1,
            None => {
                tracing::warn!(txid = %p.txid, "the Core wallet does not know a payout it sent (another wallet?); it stays in flight");
                out.in_flight += 1;
            }
        }
        Ok(())
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
            // Core's wallet rebroadcasts its own; an unsigned PSBT's bytes cannot be broadcast.
            if p.method == PayoutMethod::CoreWallet || !p.signed {
                continue;
            }
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

    /// Settles `p`. `actual_fee_sat`: what a Core wallet actually paid, when it differs from the
    /// fee the payees bore; the difference goes to (or comes from) `platform/pool-reserve`.
    async fn finish(
        &self,
        p: &PayoutRecord,
        state: PayoutState,
        height: Option<i64>,
        note: &str,
        actual_fee_sat: Option<u64>,
    ) -> Result<(), String> {
        let total: i64 = p.lines.iter().map(|l| l.debit_msat).sum();
        let inflight = Account::Platform(PlatformAccount::PayoutsInFlight);
        let tx = match state {
            PayoutState::Confirmed => {
                let mut postings = vec![Posting::debit(inflight, msat(total)?).map_err(e2s)?];
                let mut memo = format!(
                    "payout {} confirmed at height {}: {} payees, network fee {} sat",
                    p.txid,
                    height.unwrap_or(0),
                    p.lines.len(),
                    actual_fee_sat.map_or(p.fee_sat, |f| i64::try_from(f).unwrap_or(i64::MAX))
                );
                let outputs: i64 = p.lines.iter().map(|l| l.paid_sat.saturating_mul(1000)).sum();
                let left = match actual_fee_sat {
                    Some(fee) => {
                        let paid = outputs
                            .checked_add(
                                i64::try_from(fee)
                                    .map_err(e2s)?
                                    .checked_mul(1000)
                                    .ok_or("fee overflow")?,
                            )
                            .ok_or("paid overflow")?;
                        postings.push(
                            Posting::credit(Account::Platform(PlatformAccount::PaidOut), msat(paid)?)
                                .map_err(e2s)?,
                        );
                        total - paid
                    }
                    None => {
                        postings.push(
                            Posting::credit(Account::Platform(PlatformAccount::PaidOut), msat(total)?)
                                .map_err(e2s)?,
                        );
                        0
                    }
                };
                if left != 0 {
                    memo.push_str(&format!(
                        "; the payees bore {} sat of fee, the difference of {} msat is the pool reserve's",
                        p.fee_sat, left
                    ));
                    postings.push(Posting {
                        account: Account::Platform(PlatformAccount::PoolReserve),
                        msat: left,
                    });
                }
                ledger::Transaction::new(&format!("paid:{}", p.txid), &memo, postings)
            }
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
        let wallet = match &self.signer {
            Signer::Key(w) | Signer::Psbt { wallet: w, .. } => w,
            Signer::Core(core) => return self.pay_core(core, payees, who).await,
        };
        let coins = self.backend.spendable_coins(wallet.script()).await.map_err(e2s)?;
        // Payees come largest first. When the wallet cannot fund all of them (PPS pays balances
        // ahead of the blocks that cover them), pay the longest prefix it can fund; the rest keep
        // their balances for a later round.
        let feerate = self.cfg.feerate_sat_per_vb;
        let built = match build_payout(wallet, &coins, &payees, feerate) {
            Ok(b) => b,
            Err(BuildError::NoPayees) => return Ok(Round::Nothing),
            Err(e @ (BuildError::InsufficientFunds { .. } | BuildError::DustChange(_))) => {
                let fits =
                    |k: usize| build_payout(wallet, &coins, payees.get(..k).unwrap_or(&[]), feerate).ok();
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
        let txid = built.tx.compute_txid().to_string();
        let (lines, tx) = self.lines_keyed(&built, &payees, &who, &txid).await?;
        let (method, signed, psbt) = match &self.signer {
            Signer::Psbt { origin, .. } => (
                PayoutMethod::Psbt,
                false,
                Some(
                    crate::psbt::export(&built, wallet, origin.as_ref())
                        .map_err(e2s)?
                        .serialize(),
                ),
            ),
            _ => (PayoutMethod::PoolKey, true, None),
        };
        let draft = PayoutDraft {
            txid: txid.clone(),
            raw_tx: serialize(&built.tx),
            fee_sat: built.fee_sat,
            lines: lines.clone(),
            method,
            signed,
            psbt: psbt.clone(),
        };
        self.ledger.record_payout(&tx, &draft).await.map_err(e2s)?;
        failpoint("payout-recorded");
        for l in &lines {
            self.ledger.clear_payout_skip(&l.owner).await.map_err(e2s)?;
        }
        if let (Signer::Psbt { dir, .. }, Some(psbt)) = (&self.signer, &psbt) {
            let file = write_psbt(dir, &txid, psbt)?;
            tracing::warn!(%txid, payees = lines.len(), file = %file.display(), "payout recorded and exported for signing: sign the PSBT and run `cloudmine ledger import-psbt FILE`");
            return Ok(Round::AwaitingSignature {
                txid,
                payees: lines.len(),
                file,
            });
        }
        let refused = match self.backend.broadcast(&built.tx).await {
            Ok(Ok(_)) => None,
            Ok(Err(r)) => Some(r),
            Err(e) => Some(format!("node unavailable: {e}")),
        };
        failpoint("payout-broadcast");
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

    /// The payout lines of a built batch and its ledger transaction (`payout:<id>`: each payee's
    /// debit into `platform/payouts-in-flight`); owners the batch dropped get their skip reason.
    async fn lines_keyed(
        &self,
        built: &Built,
        payees: &[PayTo],
        who: &[(String, String)],
        id: &str,
    ) -> Result<(Vec<PayoutLine>, ledger::Transaction), String> {
        for (i, reason) in &built.dropped {
            if let (Some((owner, _)), Some(p)) = (who.get(*i), payees.get(*i)) {
                let bal = i64::try_from(p.debit_sat.saturating_mul(1000)).unwrap_or(i64::MAX);
                self.ledger
                    .record_payout_skip(owner, reason, bal)
                    .await
                    .map_err(e2s)?;
            }
        }
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
            &format!("payout:{id}"),
            &format!(
                "payout {id}: {} payees, network fee {} sat shared equally",
                lines.len(),
                built.fee_sat
            ),
            postings,
        )
        .map_err(e2s)?;
        Ok((lines, tx))
    }

    /// A payout round through Bitcoin Core's wallet: the payees' outputs and fee shares are computed
    /// as for the pool's own key (one P2WPKH input assumed for the fee estimate), recorded under an
    /// intent id, then sent by the settle pass (`sendmany` with the intent's comment).
    async fn pay_core(
        &self,
        core: &CoreWallet,
        payees: Vec<PayTo>,
        who: Vec<(String, String)>,
    ) -> Result<Round, String> {
        let need: u64 = payees.iter().map(|p| p.debit_sat).fold(0, u64::saturating_add);
        // The fee estimate: the same builder over one stand-in coin (never broadcast, never signed).
        let stand_in =
            Wallet::watch_only(bitcoin::CompressedPublicKey::from_slice(&STAND_IN_KEY).map_err(e2s)?);
        let coin = chain::SpendableCoin {
            outpoint: bitcoin::OutPoint::null(),
            txout: bitcoin::TxOut {
                value: bitcoin::Amount::from_sat(need.saturating_add(100_000_000)),
                script_pubkey: stand_in.script().clone(),
            },
            height: 0,
        };
        let built = match build_payout(&stand_in, &[coin], &payees, self.cfg.feerate_sat_per_vb) {
            Ok(b) => b,
            Err(BuildError::NoPayees) => return Ok(Round::Nothing),
            Err(e) => return Err(e.to_string()),
        };
        let paying: u64 = built.paid.iter().flatten().sum();
        let have = core.balance_sat().await?;
        if have < paying.saturating_add(built.fee_sat) {
            let why = format!(
                "the Core wallet holds {have} sat trusted, the batch needs {} sat",
                paying + built.fee_sat
            );
            tracing::warn!(%why, "payout round waits");
            return Ok(Round::Waiting(why));
        }
        let intent = {
            use bitcoin::hashes::{sha256, Hash};
            let mut data = format!("cloudmine payout intent {}", ledger_now_ms()).into_bytes();
            data.extend_from_slice(&serialize(&built.tx));
            sha256::Hash::hash(&data).to_string()
        };
        let (lines, tx) = self.lines_keyed(&built, &payees, &who, &intent).await?;
        let draft = PayoutDraft {
            txid: intent.clone(),
            raw_tx: serialize(&built.tx),
            fee_sat: built.fee_sat,
            lines: lines.clone(),
            method: PayoutMethod::CoreWallet,
            signed: false,
            psbt: None,
        };
        self.ledger.record_payout(&tx, &draft).await.map_err(e2s)?;
        failpoint("payout-recorded");
        for l in &lines {
            self.ledger.clear_payout_skip(&l.owner).await.map_err(e2s)?;
        }
        // Send it now (the same step a restart takes for an unsent intent).
        let mut out = Settled::default();
        let recorded = self
            .ledger
            .payouts(Some(PayoutState::InFlight), 1)
            .await
            .map_err(e2s)?;
        let mut txid = intent.clone();
        let mut refused = Some("the Core wallet has not sent it yet; retried on the next pass".to_string());
        if let Some(p) = recorded.iter().find(|p| p.txid == intent) {
            self.settle_core(p, &mut out).await?;
            if let Some(p) = self
                .ledger
                .payouts(Some(PayoutState::InFlight), 1)
                .await
                .map_err(e2s)?
                .first()
                .filter(|p| p.signed)
            {
                txid.clone_from(&p.txid);
                refused = None;
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
