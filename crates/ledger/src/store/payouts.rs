//! Balance payouts in the ledger's database: each on-chain payout is a row written in the **same
//! database transaction** as its ledger transaction (the payees' balances move into
//! `platform/payouts-in-flight`), together with the signed transaction's bytes, *before* anything is
//! broadcast. Settling it (confirmed, or abandoned and reversed) is again one database transaction with
//! its ledger transaction. So the books and the payout table never disagree, and a restart finds every
//! payout that may be on the network, with the exact bytes to re-broadcast: a crash between recording
//! and confirmation can never pay twice.
//!
//! A confirmed or abandoned payout is final and lines never change (triggers enforce it). Owners above
//! the threshold who cannot be paid (an owner that is not an address of the network, an amount below
//! the dust limit after the network fee) are kept in `payout_skips` with the reason.

use super::{classify, now_ms, Db, Ledger, LedgerError, Posted};
use crate::model::Transaction;
use sqlx::Row;

/// One payee of a payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutLine {
    /// Ledger owner whose `available` balance is paid.
    pub owner: String,
    /// The address the output pays.
    pub address: String,
    /// What left the owner's balance (msat): the output plus the payee's share of the network fee.
    pub debit_msat: i64,
    /// The output's value (sat).
    pub paid_sat: i64,
}

/// How a payout is signed and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutMethod {
    /// Built and signed with the pool's own key; the recorded bytes are final.
    PoolKey,
    /// Built without a key and exported as a PSBT; the recorded bytes are the unsigned transaction
    /// (its txid is final: every input is segwit) until the signed one is imported.
    Psbt,
    /// Sent by Bitcoin Core's wallet (`sendmany`); until then the txid column holds the intent id
    /// (the comment the wallet transaction carries) and the bytes the outputs to pay.
    CoreWallet,
}

impl PayoutMethod {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutMethod::PoolKey => "pool-key",
            PayoutMethod::Psbt => "psbt",
            PayoutMethod::CoreWallet => "core-wallet",
        }
    }
    fn parse(s: &str) -> Result<PayoutMethod, LedgerError> {
        Ok(match s {
            "pool-key" => PayoutMethod::PoolKey,
            "psbt" => PayoutMethod::Psbt,
            "core-wallet" => PayoutMethod::CoreWallet,
            other => return Err(LedgerError::Invariant(format!("payout method {other:?}"))),
        })
    }
}

/// A payout about to be recorded: the transaction (signed, or to be signed or sent) and its payees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutDraft {
    /// Transaction id (hex, display order); a Core wallet payout's intent id until it is sent.
    pub txid: String,
    /// The transaction, consensus-encoded (see [`PayoutMethod`] for what it holds).
    pub raw_tx: Vec<u8>,
    /// Network fee (sat); for a Core wallet payout, the fee the payees bear (the wallet's actual
    /// fee is booked against it when the payout confirms).
    pub fee_sat: u64,
    /// Payees.
    pub lines: Vec<PayoutLine>,
    /// How it is signed and sent.
    pub method: PayoutMethod,
    /// Whether `raw_tx` is the final, signed transaction.
    pub signed: bool,
    /// The exported PSBT (method [`PayoutMethod::Psbt`]).
    pub psbt: Option<Vec<u8>>,
}

/// Where a payout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutState {
    /// Recorded; broadcast (or about to be); not yet confirmed deep enough.
    InFlight,
    /// Confirmed: settled into `platform/paid-out`.
    Confirmed,
    /// Refused by the network before it ever confirmed: the debit was reversed.
    Abandoned,
}

impl PayoutState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PayoutState::InFlight => "in_flight",
            PayoutState::Confirmed => "confirmed",
            PayoutState::Abandoned => "abandoned",
        }
    }
    fn parse(s: &str) -> Result<PayoutState, LedgerError> {
        Ok(match s {
            "in_flight" => PayoutState::InFlight,
            "confirmed" => PayoutState::Confirmed,
            "abandoned" => PayoutState::Abandoned,
            other => return Err(LedgerError::Invariant(format!("payout state {other:?}"))),
        })
    }
}

/// A recorded payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutRecord {
    /// Row id.
    pub id: i64,
    /// Idempotency key of its ledger transaction (`payout:<txid>`).
    pub key: String,
    /// Transaction id.
    pub txid: String,
    /// The signed transaction.
    pub raw_tx: Vec<u8>,
    /// Network fee (sat).
    pub fee_sat: i64,
    /// State.
    pub state: PayoutState,
    /// When recorded (ms since the Unix epoch).
    pub created_ms: i64,
    /// Height of the block that confirmed it.
    pub confirmed_height: Option<i64>,
    /// Why it was abandoned, if it was.
    pub note: String,
    /// Payees.
    pub lines: Vec<PayoutLine>,
    /// How it is signed and sent.
    pub method: PayoutMethod,
    /// Whether `raw_tx` is the final, signed transaction.
    pub signed: bool,
    /// The exported PSBT, if any.
    pub psbt: Option<Vec<u8>>,
}

/// One owner's line of a payout, with the payout's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPayout {
    /// Transaction id (a Core wallet payout's intent id until the wallet sent it).
    pub txid: String,
    /// State.
    pub state: PayoutState,
    /// Height of the confirming block.
    pub confirmed_height: Option<i64>,
    /// The owner's line.
    pub line: PayoutLine,
    /// How it is signed and sent.
    pub method: PayoutMethod,
    /// Whether its bytes are final (signed, or sent by the wallet).
    pub signed: bool,
}

/// An owner above the threshold who could not be paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutSkip {
    /// Owner.
    pub owner: String,
    /// Why.
    pub reason: String,
    /// Available balance when skipped (msat).
    pub balance_msat: i64,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
}

/// What a ledger posting also writes, in its database transaction.
#[derive(Debug)]
pub(super) enum Extra<'a> {
    None,
    Record(&'a PayoutDraft),
    Finish {
        payout_id: i64,
        state: PayoutState,
        height: Option<i64>,
        note: &'a str,
    },
}

/// Writes `$extra` on connection `$c` inside the posting's database transaction; `$tx_id` is the id
/// of the ledger transaction just posted. Expanded per driver like `on_pool!`.
macro_rules! write_extra {
    ($c:expr, $numbered:expr, $extra:expr, $tx_id:expr, $now:expr) => {{
        match $extra {
            payouts::Extra::None => {}
            payouts::Extra::Record(d) => {
                let fee = i64::try_from(d.fee_sat)
                    .map_err(|_| LedgerError::Invariant("payout fee out of range".into()))?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO payouts (tx_id, txid, raw_tx, fee_sat, state, created_ms, method, signed, psbt) \
                     VALUES ($1, $2, $3, $4, 'in_flight', $5, $6, $7, $8) RETURNING id",
                )
                .bind($tx_id)
                .bind(d.txid.as_str())
                .bind(d.raw_tx.as_slice())
                .bind(fee)
                .bind($now)
                .bind(d.method.as_str())
                .bind(i64::from(d.signed))
                .bind(d.psbt.as_deref())
                .fetch_one(&mut *$c)
                .await
                .map_err(classify)?;
                for chunk in d.lines.chunks(PARAMS_MAX / 5) {
                    let sql = format!(
                        "INSERT INTO payout_lines (payout_id, owner, address, debit_msat, paid_sat) VALUES {}",
                        placeholders(chunk.len(), 5, $numbered)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for l in chunk {
                        q = q
                            .bind(id)
                            .bind(l.owner.as_str())
                            .bind(l.address.as_str())
                            .bind(l.debit_msat)
                            .bind(l.paid_sat);
                    }
                    q.execute(&mut *$c).await.map_err(classify)?;
                }
            }
            payouts::Extra::Finish {
                payout_id,
                state,
                height,
                note,
            } => {
                let n = sqlx::query(
                    "UPDATE payouts SET state = $1, settled_ms = $2, confirmed_height = $3, note = $4 \
                     WHERE id = $5 AND state = 'in_flight'",
                )
                .bind(state.as_str())
                .bind($now)
                .bind(*height)
                .bind(*note)
                .bind(*payout_id)
                .execute(&mut *$c)
                .await
                .map_err(classify)?
                .rows_affected();
                if n != 1 {
                    return Err(LedgerError::Invariant(format!(
                        "payout {payout_id} was not in flight when it was settled"
                    )));
                }
            }
        }
    }};
}

/// Most payouts [`Ledger::payouts`] returns.
pub const PAYOUTS_LIST_MAX: u32 = 1_000;

impl Ledger {
    /// Posts `tx` (the payees' debits, key `payout:<txid>`) and records `draft` in one database
    /// transaction. A retry with the same content is a no-op returning the first posting.
    pub async fn record_payout(&self, tx: &Transaction, draft: &PayoutDraft) -> Result<Posted, LedgerError> {
        let mut r = self
            .post_batch_with(std::slice::from_ref(tx), Extra::Record(draft))
            .await?;
        r.pop()
            .unwrap_or_else(|| Err(LedgerError::Unavailable("empty batch result".into())))
    }

    /// Posts `tx` (the settlement: `paid:<txid>` or `unpaid:<txid>`) and marks payout `payout_id`
    /// final in one database transaction. If `tx` was posted before, the payout is already final and
    /// nothing is written.
    pub async fn finish_payout(
        &self,
        payout_id: i64,
        tx: &Transaction,
        state: PayoutState,
        height: Option<i64>,
        note: &str,
    ) -> Result<Posted, LedgerError> {
        if state == PayoutState::InFlight {
            return Err(LedgerError::Invariant(
                "a payout is finished as confirmed or abandoned".into(),
            ));
        }
        let extra = Extra::Finish {
            payout_id,
            state,
            height,
            note,
        };
        let mut r = self.post_batch_with(std::slice::from_ref(tx), extra).await?;
        r.pop()
            .unwrap_or_else(|| Err(LedgerError::Unavailable("empty batch result".into())))
    }

    /// Payouts, newest first: all of them or those in one state, at most `limit`
    /// (≤ [`PAYOUTS_LIST_MAX`]).
    pub async fn payouts(
        &self,
        state: Option<PayoutState>,
        limit: u32,
    ) -> Result<Vec<PayoutRecord>, LedgerError> {
        let limit = i64::from(limit.min(PAYOUTS_LIST_MAX));
        let filter = state.map_or("%", PayoutState::as_str);
        let mut out = on_pool!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT p.id, t.idem_key, p.txid, p.raw_tx, p.fee_sat, p.state, p.created_ms, p.confirmed_height, p.note, \
                 p.method, p.signed, p.psbt FROM payouts p JOIN ledger_transactions t ON t.id = p.tx_id \
                 WHERE p.state LIKE $1 ORDER BY p.id DESC LIMIT $2",
            )
            .bind(filter)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                let state: String = r.try_get(5).map_err(classify)?;
                let method: String = r.try_get(9).map_err(classify)?;
                let signed: i64 = r.try_get(10).map_err(classify)?;
                v.push(PayoutRecord {
                    method: PayoutMethod::parse(&method)?,
                    signed: signed != 0,
                    psbt: r.try_get(11).map_err(classify)?,
                    id: r.try_get(0).map_err(classify)?,
                    key: r.try_get(1).map_err(classify)?,
                    txid: r.try_get(2).map_err(classify)?,
                    raw_tx: r.try_get(3).map_err(classify)?,
                    fee_sat: r.try_get(4).map_err(classify)?,
                    state: PayoutState::parse(&state)?,
                    created_ms: r.try_get(6).map_err(classify)?,
                    confirmed_height: r.try_get(7).map_err(classify)?,
                    note: r.try_get(8).map_err(classify)?,
                    lines: Vec::new(),
                });
            }
            v
        });
        // Every listed payout's lines in one read: the id range they span, kept by id.
        let (Some(lo), Some(hi)) = (out.iter().map(|p| p.id).min(), out.iter().map(|p| p.id).max()) else {
            return Ok(out);
        };
        let mut lines: std::collections::HashMap<i64, Vec<PayoutLine>> = std::collections::HashMap::new();
        on_pool!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT payout_id, owner, address, debit_msat, paid_sat FROM payout_lines \
                 WHERE payout_id BETWEEN $1 AND $2 ORDER BY payout_id, owner",
            )
            .bind(lo)
            .bind(hi)
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            for r in &rows {
                lines.entry(r.try_get(0).map_err(classify)?).or_default().push(PayoutLine {
                    owner: r.try_get(1).map_err(classify)?,
                    address: r.try_get(2).map_err(classify)?,
                    debit_msat: r.try_get(3).map_err(classify)?,
                    paid_sat: r.try_get(4).map_err(classify)?,
                });
            }
        });
        for p in &mut out {
            p.lines = lines.remove(&p.id).unwrap_or_default();
        }
        Ok(out)
    }

    /// Completes an in-flight payout whose bytes were not final: the signed transaction of an
    /// exported PSBT (same txid), or what a Core wallet sent (its txid replaces the intent id). Once:
    /// a payout already completed is refused, and so is a PSBT payout's different txid.
    pub async fn complete_payout(
        &self,
        payout_id: i64,
        txid: &str,
        raw_tx: &[u8],
    ) -> Result<(), LedgerError> {
        self.check_halted()?;
        let n = on_pool!(&self.db, pool => sqlx::query(
            "UPDATE payouts SET txid = $1, raw_tx = $2, signed = 1 \
             WHERE id = $3 AND state = 'in_flight' AND signed = 0 AND (method = 'core-wallet' OR txid = $1)",
        )
        .bind(txid)
        .bind(raw_tx)
        .bind(payout_id)
        .execute(pool)
        .await
        .map_err(classify)?
        .rows_affected());
        if n != 1 {
            return Err(LedgerError::Refused(format!(
                "payout {payout_id} is not an in-flight payout awaiting its bytes with txid {txid}"
            )));
        }
        Ok(())
    }

    /// Whether any payout is in flight (one indexed probe; no rows read).
    pub async fn payout_in_flight(&self) -> Result<bool, LedgerError> {
        let n: Option<i64> = on_pool!(&self.db, pool => sqlx::query_scalar("SELECT id FROM payouts WHERE state = 'in_flight' LIMIT 1")
            .fetch_optional(pool)
            .await
            .map_err(classify)?);
        Ok(n.is_some())
    }

    /// One owner's payouts, newest first, at most `limit` (≤ [`PAYOUTS_LIST_MAX`]).
    pub async fn payouts_of(&self, owner: &str, limit: u32) -> Result<Vec<OwnerPayout>, LedgerError> {
        let limit = i64::from(limit.min(PAYOUTS_LIST_MAX));
        Ok(on_pool!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT p.txid, p.state, p.confirmed_height, l.owner, l.address, l.debit_msat, l.paid_sat, p.method, p.signed \
                 FROM payout_lines l JOIN payouts p ON p.id = l.payout_id \
                 WHERE l.owner = $1 ORDER BY l.payout_id DESC LIMIT $2",
            )
            .bind(owner)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                let state: String = r.try_get(1).map_err(classify)?;
                let method: String = r.try_get(7).map_err(classify)?;
                let signed: i64 = r.try_get(8).map_err(classify)?;
                v.push(OwnerPayout {
                    txid: r.try_get(0).map_err(classify)?,
                    state: PayoutState::parse(&state)?,
                    confirmed_height: r.try_get(2).map_err(classify)?,
                    line: PayoutLine {
                        owner: r.try_get(3).map_err(classify)?,
                        address: r.try_get(4).map_err(classify)?,
                        debit_msat: r.try_get(5).map_err(classify)?,
                        paid_sat: r.try_get(6).map_err(classify)?,
                    },
                    method: PayoutMethod::parse(&method)?,
                    signed: signed != 0,
                });
            }
            v
        }))
    }

    /// Owners whose `available` balance is at least `min_msat`, largest first, at most `limit`.
    pub async fn available_at_least(
        &self,
        min_msat: i64,
        limit: u32,
    ) -> Result<Vec<(String, i64)>, LedgerError> {
        let rows = on_pool!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT name, balance_msat FROM ledger_accounts \
                 WHERE name LIKE 'user/%/available' AND balance_msat >= $1 \
                 ORDER BY balance_msat DESC, name LIMIT $2",
            )
            .bind(min_msat.max(1))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0).map_err(classify)?, r.try_get::<i64, _>(1).map_err(classify)?)))
                .collect::<Result<Vec<_>, LedgerError>>()?
        });
        let mut out = Vec::with_capacity(rows.len());
        for (name, msat) in rows {
            if let Some(owner) = name
                .strip_prefix("user/")
                .and_then(|x| x.strip_suffix("/available"))
                .filter(|o| !o.contains('/'))
            {
                out.push((owner.to_string(), msat));
            }
        }
        Ok(out)
    }

    /// Records (or replaces) why `owner` could not be paid.
    pub async fn record_payout_skip(
        &self,
        owner: &str,
        reason: &str,
        balance_msat: i64,
    ) -> Result<(), LedgerError> {
        self.check_halted()?;
        let now = now_ms();
        on_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO payout_skips (owner, reason, balance_msat, at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (owner) DO UPDATE SET reason = excluded.reason, balance_msat = excluded.balance_msat, at_ms = excluded.at_ms",
            )
            .bind(owner)
            .bind(reason)
            .bind(balance_msat)
            .bind(now)
            .execute(pool)
            .await
            .map_err(classify)?;
        });
        Ok(())
    }

    /// Clears `owner`'s skip record (they were paid).
    pub async fn clear_payout_skip(&self, owner: &str) -> Result<(), LedgerError> {
        on_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM payout_skips WHERE owner = $1")
                .bind(owner)
                .execute(pool)
                .await
                .map_err(classify)?;
        });
        Ok(())
    }

    /// Why `owner` was last skipped, if they were and have not been paid since.
    pub async fn payout_skip_of(&self, owner: &str) -> Result<Option<PayoutSkip>, LedgerError> {
        Ok(self.payout_skips_where(Some(owner)).await?.pop())
    }

    /// Every recorded skip, by owner (at most 10,000).
    pub async fn payout_skips(&self) -> Result<Vec<PayoutSkip>, LedgerError> {
        self.payout_skips_where(None).await
    }

    async fn payout_skips_where(&self, owner: Option<&str>) -> Result<Vec<PayoutSkip>, LedgerError> {
        Ok(on_pool!(&self.db, pool => {
            let rows = sqlx::query("SELECT owner, reason, balance_msat, at_ms FROM payout_skips WHERE CAST($1 AS TEXT) IS NULL OR owner = $1 ORDER BY owner LIMIT 10000")
                .bind(owner)
                .fetch_all(pool)
                .await
                .map_err(classify)?;
            rows.iter()
                .map(|r| {
                    Ok(PayoutSkip {
                        owner: r.try_get(0).map_err(classify)?,
                        reason: r.try_get(1).map_err(classify)?,
                        balance_msat: r.try_get(2).map_err(classify)?,
                        at_ms: r.try_get(3).map_err(classify)?,
                    })
                })
                .collect::<Result<Vec<_>, LedgerError>>()?
        }))
    }
}
