//! Payouts through Bitcoin Core's wallet (`--payout-signer core`): the node's wallet holds the keys,
//! chooses the coins, signs and broadcasts (`sendmany`); the pool keeps the books.
//!
//! Never twice: a payout is recorded in the ledger *before* `sendmany` (the payees' balances move to
//! `platform/payouts-in-flight`) under an intent id, and `sendmany` carries that id as its wallet
//! comment. After a crash the engine asks the wallet for a transaction with that comment
//! ([`CoreWallet::find_by_comment`]): found, it was sent, and its txid and bytes are recorded; not
//! found, Core never committed it (the wallet stores a transaction before it broadcasts it), and it
//! is sent again under the same comment.
//!
//! The payees bear the fee as with the pool's own key: each output is the balance less an equal whole
//! share of the fee the batch is estimated to cost at `--payout-feerate` (one P2WPKH input). The
//! wallet pays the actual fee from its change; when the payout confirms, the difference between what
//! the payees bore and what the wallet paid is booked to `platform/pool-reserve` (positive or
//! negative), so the books match the chain to the satoshi.

use core_rpc::{amount_to_sat, sat_to_amount, ClientError, RpcClient};
use serde_json::{json, Value};

/// Wallet entries read per `listtransactions` call when looking for a payout's comment. Core lists
/// one entry per output (a 500-payee `sendmany` is 500 entries) and the wallet may serve others, so
/// the search pages back (newest first, in the wallet's insertion order) until a whole page was
/// received before the payout's record (`timereceived`, less [`COMMENT_SEARCH_SLACK_SECS`]) or the
/// wallet has no more. `timereceived` is when the wallet stored the entry; `time` is not used, as a
/// transaction found by a rescan carries its old block's time though it is inserted as the newest.
pub const COMMENT_SEARCH_PAGE: u64 = 1_000;
/// Clock slack: entries stamped up to this long before the payout was recorded are still read.
pub const COMMENT_SEARCH_SLACK_SECS: i64 = 2 * 60 * 60;
/// Pages read at most: past them the search fails (the payout stays in flight, never sent twice)
/// rather than deciding that the wallet never sent it.
pub const COMMENT_SEARCH_PAGES_MAX: u64 = 1_000;

/// A wallet transaction as Core's `gettransaction` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletTx {
    /// Confirmations (0 in the mempool; negative: conflicted, not in the best chain).
    pub confirmations: i64,
    /// Height of the confirming block.
    pub block_height: Option<i64>,
    /// The transaction (consensus bytes).
    pub raw: Vec<u8>,
    /// The fee the wallet paid (sat).
    pub fee_sat: u64,
}

/// One wallet of a Bitcoin Core node (its RPC URL ends in `/wallet/<name>`).
#[derive(Debug, Clone)]
pub struct CoreWallet {
    rpc: RpcClient,
}

fn rpc_err(method: &str, e: ClientError) -> String {
    format!("Core wallet {method}: {e}")
}

impl CoreWallet {
    /// A wallet reached through `rpc`.
    pub fn new(rpc: RpcClient) -> CoreWallet {
        CoreWallet { rpc }
    }

    /// Trusted spendable balance (`getbalances` → `mine.trusted`), sat.
    pub async fn balance_sat(&self) -> Result<u64, String> {
        let v = self
            .rpc
            .call("getbalances", json!([]))
            .await
            .map_err(|e| rpc_err("getbalances", e))?;
        v.pointer("/mine/trusted")
            .and_then(amount_to_sat)
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| format!("Core wallet getbalances: no mine.trusted amount in {v}"))
    }

    /// `sendmany` paying each `(address, sat)` exactly (the fee comes from the wallet's change) at
    /// `feerate` sat/vB, with `comment` stored in the wallet transaction. Returns the txid.
    pub async fn send_many(
        &self,
        outputs: &[(String, u64)],
        comment: &str,
        feerate: u64,
    ) -> Result<String, String> {
        let mut amounts = serde_json::Map::new();
        for (addr, sat) in outputs {
            amounts.insert(addr.clone(), sat_to_amount(*sat));
        }
        // sendmany "" amounts minconf comment subtractfeefrom replaceable conf_target estimate_mode fee_rate
        let params = json!([
            "",
            Value::Object(amounts),
            1,
            comment,
            [],
            true,
            null,
            "unset",
            feerate
        ]);
        let v = self
            .rpc
            .call("sendmany", params)
            .await
            .map_err(|e| rpc_err("sendmany", e))?;
        let txid = v
            .as_str()
            .or_else(|| v.get("txid").and_then(Value::as_str))
            .ok_or_else(|| format!("Core wallet sendmany: no txid in {v}"))?;
        check_txid(txid).map(str::to_string)
    }

    /// The txid of the wallet's send whose comment is `comment`, if it made one since `since_ms`
    /// (unix ms, when the payout was recorded): pages back through `listtransactions`
    /// ([`COMMENT_SEARCH_PAGE`] entries at a time) until every entry of a page was received before
    /// that (less [`COMMENT_SEARCH_SLACK_SECS`]) or the wallet has no more; an error past
    /// [`COMMENT_SEARCH_PAGES_MAX`] pages, never a "not found" it did not establish.
    pub async fn find_by_comment(&self, comment: &str, since_ms: i64) -> Result<Option<String>, String> {
        let since = since_ms
            .div_euclid(1000)
            .saturating_sub(COMMENT_SEARCH_SLACK_SECS);
        for page in 0..COMMENT_SEARCH_PAGES_MAX {
            let skip = page * COMMENT_SEARCH_PAGE;
            let v = self
                .rpc
                .call("listtransactions", json!(["*", COMMENT_SEARCH_PAGE, skip, true]))
                .await
                .map_err(|e| rpc_err("listtransactions", e))?;
            let list = v
                .as_array()
                .ok_or_else(|| format!("Core wallet listtransactions: not a list: {v}"))?;
            // The newest insertion time in the page (a page is oldest-first, but read them all).
            let mut newest: Option<i64> = None;
            for t in list {
                if t.get("comment").and_then(Value::as_str) == Some(comment)
                    && t.get("category").and_then(Value::as_str) == Some("send")
                {
                    let txid = t
                        .get("txid")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("Core wallet listtransactions: entry without txid: {t}"))?;
                    return check_txid(txid).map(|s| Some(s.to_string()));
                }
                let received = t.get("timereceived").and_then(Value::as_i64);
                newest = newest.max(received);
            }
            if newest.is_some_and(|at| at < since) || (list.len() as u64) < COMMENT_SEARCH_PAGE {
                return Ok(None);
            }
        }
        Err(format!(
            "Core wallet: payout {comment:?} not found in the newest {} wallet entries, which all \
             look newer than the payout; not sending it again (check the wallet for it)",
            COMMENT_SEARCH_PAGES_MAX * COMMENT_SEARCH_PAGE
        ))
    }

    /// The wallet's view of `txid` (`gettransaction`); `None` if the wallet does not know it.
    pub async fn transaction(&self, txid: &str) -> Result<Option<WalletTx>, String> {
        let v = match self.rpc.call("gettransaction", json!([txid, true])).await {
            Ok(v) => v,
            Err(ClientError::Rpc { error, .. })
                if error.code == core_rpc::error::code::INVALID_ADDRESS_OR_KEY =>
            {
                return Ok(None);
            }
            Err(e) => return Err(rpc_err("gettransaction", e)),
        };
        let bad = |what: &str| format!("Core wallet gettransaction {txid}: {what} in {v}");
        let confirmations = v
            .get("confirmations")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("no confirmations"))?;
        let raw = v
            .get("hex")
            .and_then(Value::as_str)
            .and_then(|h| <Vec<u8> as bitcoin::hex::FromHex>::from_hex(h).ok())
            .ok_or_else(|| bad("no hex"))?;
        let fee_sat = v
            .get("fee")
            .and_then(amount_to_sat)
            .map(i64::unsigned_abs)
            .ok_or_else(|| bad("no fee"))?;
        Ok(Some(WalletTx {
            confirmations,
            block_height: v.get("blockheight").and_then(Value::as_i64),
            raw,
            fee_sat,
        }))
    }
}

fn check_txid(s: &str) -> Result<&str, String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(format!("Core wallet returned a malformed txid {s:?}"))
    }
}
