//! `getblocktemplate`'s result (BIP22/23/145 plus Core's extras) and its conversion to and from
//! [`mining_core::BlockTemplate`].
//!
//! Parsing checks what a pool must not take on trust: each transaction's `txid`/`hash` match its
//! `data`, `target` matches `bits`, `default_witness_commitment` matches the wtxids, fees are sane,
//! and every `!`-prefixed rule is one we implement. A template that fails any check is refused with
//! a message naming the field.

use bitcoin::hashes::Hash;
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::{BlockHash, ScriptBuf, Transaction, Txid, Wtxid};
use mining_core::{BlockTemplate, TemplateTx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;
use units::{Sats, Target};

/// Rules we understand (a `!rule` outside this list makes a template unusable, per BIP9).
pub const KNOWN_RULES: &[&str] = &["csv", "segwit", "taproot", "signet"];

/// A template transaction as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GbtTx {
    /// Raw transaction hex (with witness).
    pub data: String,
    /// txid, display order.
    pub txid: String,
    /// wtxid, display order.
    pub hash: String,
    /// 1-based indexes of transactions this one depends on.
    #[serde(default)]
    pub depends: Vec<u64>,
    /// Fee in satoshis.
    #[serde(default)]
    pub fee: Option<i64>,
    /// Sigop cost.
    #[serde(default)]
    pub sigops: Option<u64>,
    /// Weight.
    #[serde(default)]
    pub weight: Option<u64>,
}

/// The `getblocktemplate` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GbtResult {
    /// Capabilities the server supports.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Block version.
    pub version: u32,
    /// Active rules.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Pending version bits deployments.
    #[serde(default)]
    pub vbavailable: BTreeMap<String, u32>,
    /// Required version bits.
    #[serde(default)]
    pub vbrequired: u32,
    /// Parent block hash (display order).
    pub previousblockhash: String,
    /// Transactions, block order.
    pub transactions: Vec<GbtTx>,
    /// Data for the coinbase scriptSig.
    #[serde(default)]
    pub coinbaseaux: BTreeMap<String, String>,
    /// Satoshis available to the coinbase.
    pub coinbasevalue: u64,
    /// Long-poll id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longpollid: Option<String>,
    /// Target (big-endian hex).
    pub target: String,
    /// Minimum time.
    pub mintime: u32,
    /// Mutable fields.
    #[serde(default)]
    pub mutable: Vec<String>,
    /// Nonce range.
    #[serde(default)]
    pub noncerange: String,
    /// Sigop limit.
    #[serde(default)]
    pub sigoplimit: u64,
    /// Size limit.
    #[serde(default)]
    pub sizelimit: u64,
    /// Weight limit.
    #[serde(default)]
    pub weightlimit: u64,
    /// Current time.
    pub curtime: u32,
    /// Compact target (hex).
    pub bits: String,
    /// Height of the block to build.
    pub height: u32,
    /// Witness commitment scriptPubKey hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_witness_commitment: Option<String>,
}

/// Why a template is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unusable block template: {0}")]
pub struct TemplateError(pub String);

fn bad<T>(s: impl Into<String>) -> Result<T, TemplateError> {
    Err(TemplateError(s.into()))
}

impl GbtResult {
    /// Parses and checks into a [`BlockTemplate`].
    pub fn into_template(self) -> Result<BlockTemplate, TemplateError> {
        for r in &self.rules {
            if let Some(rule) = r.strip_prefix('!') {
                if !KNOWN_RULES.contains(&rule) {
                    return bad(format!("rules: unknown mandatory rule '!{rule}'"));
                }
            }
        }
        let prev_hash = BlockHash::from_str(&self.previousblockhash)
            .map_err(|e| TemplateError(format!("previousblockhash: {e}")))?;
        let bits = u32::from_str_radix(&self.bits, 16)
            .map_err(|e| TemplateError(format!("bits '{}': {e}", self.bits)))?;
        if self.bits.len() != 8 {
            return bad(format!("bits '{}' is not 8 hex digits", self.bits));
        }
        let target = Target::from_compact(bits).map_err(|e| TemplateError(format!("bits: {e}")))?;
        let given = units::U256::from_be_hex(&self.target)
            .ok_or_else(|| TemplateError(format!("target '{}' is not hex", self.target)))?;
        if given != target.to_u256() {
            return bad(format!(
                "target {} does not match bits {}",
                self.target, self.bits
            ));
        }
        let coinbase_value =
            Sats::new(self.coinbasevalue).map_err(|e| TemplateError(format!("coinbasevalue: {e}")))?;
        let mut transactions = Vec::with_capacity(self.transactions.len());
        for (n, t) in self.transactions.iter().enumerate() {
            let raw = Vec::<u8>::from_hex(&t.data)
                .map_err(|e| TemplateError(format!("transactions[{n}].data: {e}")))?;
            let tx: Transaction = bitcoin::consensus::deserialize(&raw)
                .map_err(|e| TemplateError(format!("transactions[{n}].data does not decode: {e}")))?;
            let txid = tx.compute_txid();
            let wtxid = tx.compute_wtxid();
            if Txid::from_str(&t.txid).ok() != Some(txid) {
                return bad(format!(
                    "transactions[{n}].txid {} does not match its data ({txid})",
                    t.txid
                ));
            }
            if Wtxid::from_str(&t.hash).ok() != Some(wtxid) {
                return bad(format!(
                    "transactions[{n}].hash {} does not match its data ({wtxid})",
                    t.hash
                ));
            }
            let fee = t.fee.unwrap_or(0);
            let fee = u64::try_from(fee)
                .ok()
                .and_then(|f| Sats::new(f).ok())
                .ok_or_else(|| {
                    TemplateError(format!(
                        "transactions[{n}].fee {fee} is negative or above MAX_MONEY"
                    ))
                })?;
            let weight = t.weight.unwrap_or_else(|| tx.weight().to_wu());
            transactions.push(TemplateTx {
                tx,
                txid,
                wtxid,
                fee,
                weight,
            });
        }
        let default_witness_commitment = match &self.default_witness_commitment {
            None => None,
            Some(h) => {
                let spk = ScriptBuf::from_bytes(
                    Vec::<u8>::from_hex(h)
                        .map_err(|e| TemplateError(format!("default_witness_commitment: {e}")))?,
                );
                let ours =
                    mining_core::coinbase::witness_commitment_script(transactions.iter().map(|t| t.wtxid));
                if spk != ours {
                    return bad("default_witness_commitment does not match the transactions' wtxids");
                }
                Some(spk)
            }
        };
        let mut coinbase_aux = Vec::new();
        for (k, v) in &self.coinbaseaux {
            let b = Vec::<u8>::from_hex(v).map_err(|e| TemplateError(format!("coinbaseaux.{k}: {e}")))?;
            coinbase_aux.extend_from_slice(&b);
        }
        Ok(BlockTemplate {
            version: self.version,
            prev_hash,
            height: self.height,
            bits,
            target,
            cur_time: self.curtime,
            min_time: self.mintime,
            coinbase_value,
            transactions,
            default_witness_commitment,
            coinbase_aux,
            longpoll_id: self.longpollid,
        })
    }

    /// The JSON a Core node would return for this template.
    pub fn from_template(t: &BlockTemplate) -> GbtResult {
        GbtResult {
            capabilities: vec!["proposal".into()],
            version: t.version,
            rules: vec!["csv".into(), "!segwit".into(), "taproot".into()],
            vbavailable: BTreeMap::new(),
            vbrequired: 0,
            previousblockhash: t.prev_hash.to_string(),
            transactions: t
                .transactions
                .iter()
                .map(|x| GbtTx {
                    data: bitcoin::consensus::serialize(&x.tx).to_lower_hex_string(),
                    txid: x.txid.to_string(),
                    hash: x.wtxid.to_string(),
                    depends: Vec::new(),
                    fee: i64::try_from(x.fee.to_sat()).ok(),
                    sigops: Some(4 * x.tx.input.len() as u64),
                    weight: Some(x.weight),
                })
                .collect(),
            coinbaseaux: BTreeMap::new(),
            coinbasevalue: t.coinbase_value.to_sat(),
            longpollid: t.longpoll_id.clone(),
            target: t.target.to_be_hex(),
            mintime: t.min_time,
            mutable: vec!["time".into(), "transactions".into(), "prevblock".into()],
            noncerange: "00000000ffffffff".into(),
            sigoplimit: 80_000,
            sizelimit: 4_000_000,
            weightlimit: 4_000_000,
            curtime: t.cur_time,
            bits: format!("{:08x}", t.bits),
            height: t.height,
            default_witness_commitment: t
                .default_witness_commitment
                .as_ref()
                .map(|s| s.as_bytes().to_lower_hex_string()),
        }
    }
}

/// The txid as it goes in a merkle branch (internal order).
pub fn txid_internal(t: &Txid) -> [u8; 32] {
    t.to_byte_array()
}
