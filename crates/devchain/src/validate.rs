//! Block and transaction rules that need no UTXO set, with Core's reject strings.
//!
//! Mirrors Core's `CheckTransaction`, `CheckBlockHeader`, `CheckBlock` and the parts of
//! `ContextualCheckBlock` that need only the height (BIP34, witness commitment, weight). UTXO-dependent
//! rules (inputs exist, maturity, amounts, signatures) live in [`crate::chain`].
//! Not checked on the dev chain (documented gaps): sigop limits and BIP68/112 relative lock-times.

use bitcoin::{Block, Transaction};
use mining_core::coinbase::bip34_height_script;
use std::collections::HashSet;
use units::Target;

/// A rule a block or transaction broke: Core's reason string plus a human detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({detail})")]
pub struct Reject {
    /// Core's reason string (`high-hash`, `bad-txnmrklroot`, …).
    pub reason: String,
    /// What exactly was wrong.
    pub detail: String,
}

impl Reject {
    /// A reject with a reason and detail.
    pub fn new(reason: &str, detail: impl Into<String>) -> Reject {
        Reject {
            reason: reason.to_string(),
            detail: detail.into(),
        }
    }
}

const MAX_MONEY: u64 = units::MAX_MONEY_SATS;

/// Core's `CheckTransaction`.
pub fn check_transaction(tx: &Transaction) -> Result<(), Reject> {
    if tx.input.is_empty() {
        return Err(Reject::new("bad-txns-vin-empty", "no inputs"));
    }
    if tx.output.is_empty() {
        return Err(Reject::new("bad-txns-vout-empty", "no outputs"));
    }
    if tx.base_size() * 4 > crate::params::MAX_BLOCK_WEIGHT as usize {
        return Err(Reject::new("bad-txns-oversize", "transaction too large"));
    }
    let mut total = 0u64;
    for o in &tx.output {
        let v = o.value.to_sat();
        if v > MAX_MONEY {
            return Err(Reject::new("bad-txns-vout-toolarge", format!("output value {v}")));
        }
        total = total.saturating_add(v);
        if total > MAX_MONEY {
            return Err(Reject::new(
                "bad-txns-txouttotal-toolarge",
                format!("outputs total {total}"),
            ));
        }
    }
    let mut seen = HashSet::with_capacity(tx.input.len());
    for i in &tx.input {
        if !seen.insert(i.previous_output) {
            return Err(Reject::new(
                "bad-txns-inputs-duplicate",
                format!("{} spent twice", i.previous_output),
            ));
        }
    }
    if tx.is_coinbase() {
        let n = tx.input.first().map_or(0, |i| i.script_sig.len());
        if !(2..=100).contains(&n) {
            return Err(Reject::new(
                "bad-cb-length",
                format!("coinbase scriptSig is {n} bytes (2..=100)"),
            ));
        }
    } else if tx.input.iter().any(|i| i.previous_output.is_null()) {
        return Err(Reject::new(
            "bad-txns-prevout-null",
            "null prevout in a non-coinbase",
        ));
    }
    Ok(())
}

/// Proof of work: the header's hash meets the target its own bits encode.
pub fn check_pow(block: &Block) -> Result<(), Reject> {
    let bits = block.header.bits.to_consensus();
    let target = Target::from_compact(bits).map_err(|e| Reject::new("bad-diffbits", e.to_string()))?;
    if target > Target::REGTEST_POW_LIMIT {
        return Err(Reject::new(
            "bad-diffbits",
            format!("bits {bits:08x} above the powLimit"),
        ));
    }
    let header = bitcoin::consensus::serialize(&block.header);
    let mut h = [0u8; 80];
    h.copy_from_slice(header.get(..80).unwrap_or(&[0u8; 80]));
    if !target.is_met_by(&sha256d::sha256d_80(&h)) {
        return Err(Reject::new("high-hash", "proof of work failed"));
    }
    Ok(())
}

/// Core's `CheckBlock` (structure, merkle root, transactions) without PoW.
pub fn check_block(block: &Block) -> Result<(), Reject> {
    let Some(coinbase) = block.txdata.first() else {
        return Err(Reject::new("bad-blk-length", "no transactions"));
    };
    // Merkle root and CVE-2012-2459 mutation (duplicate txids).
    if !block.check_merkle_root() {
        return Err(Reject::new("bad-txnmrklroot", "hashMerkleRoot mismatch"));
    }
    let mut txids = HashSet::with_capacity(block.txdata.len());
    for tx in &block.txdata {
        if !txids.insert(tx.compute_txid()) {
            return Err(Reject::new("bad-txns-duplicate", "duplicate transaction"));
        }
    }
    if block.txdata.len() * 4 > crate::params::MAX_BLOCK_WEIGHT as usize
        || block.base_size_compat() * 4 > crate::params::MAX_BLOCK_WEIGHT as usize
    {
        return Err(Reject::new("bad-blk-length", "size limits failed"));
    }
    if !coinbase.is_coinbase() {
        return Err(Reject::new("bad-cb-missing", "first tx is not coinbase"));
    }
    if block.txdata.iter().skip(1).any(|t| t.is_coinbase()) {
        return Err(Reject::new("bad-cb-multiple", "more than one coinbase"));
    }
    for tx in &block.txdata {
        check_transaction(tx)
            .map_err(|r| Reject::new(&r.reason, format!("Transaction check failed ({})", r.detail)))?;
    }
    Ok(())
}

/// Height-dependent block rules: BIP34, finality, witness commitment, weight.
pub fn contextual_check_block(block: &Block, height: u32, mtp: u32) -> Result<(), Reject> {
    let Some(coinbase) = block.txdata.first() else {
        return Err(Reject::new("bad-blk-length", "no transactions"));
    };
    let h = bitcoin::absolute::Height::from_consensus(height)
        .map_err(|e| Reject::new("bad-blk-length", e.to_string()))?;
    let t = bitcoin::absolute::Time::from_consensus(mtp.max(500_000_000))
        .map_err(|e| Reject::new("bad-txns-nonfinal", e.to_string()))?;
    if block
        .txdata
        .iter()
        .any(|tx| !tx.is_absolute_timelock_satisfied(h, t))
    {
        return Err(Reject::new("bad-txns-nonfinal", "non-final transaction"));
    }
    let expect = bip34_height_script(height);
    let sig = coinbase
        .input
        .first()
        .map(|i| i.script_sig.as_bytes())
        .unwrap_or(&[]);
    if !sig.starts_with(expect.as_bytes()) {
        return Err(Reject::new(
            "bad-cb-height",
            format!("block height mismatch in coinbase (expected {height})"),
        ));
    }
    // Witness commitment (BIP141): the last output carrying the magic.
    const MAGIC: [u8; 6] = [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
    let commitment = coinbase
        .output
        .iter()
        .rposition(|o| o.script_pubkey.len() >= 38 && o.script_pubkey.as_bytes().starts_with(&MAGIC));
    if let Some(pos) = commitment {
        let w = coinbase.input.first().map(|i| &i.witness);
        let ok_nonce = w.is_some_and(|w| w.len() == 1 && w.nth(0).is_some_and(|x| x.len() == 32));
        if !ok_nonce {
            return Err(Reject::new(
                "bad-witness-nonce-size",
                "invalid witness reserved value size",
            ));
        }
        let want: Option<[u8; 32]> = coinbase
            .output
            .get(pos)
            .and_then(|o| o.script_pubkey.as_bytes().get(6..38))
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        let reserved = w.and_then(|w| w.nth(0)).unwrap_or(&[]);
        let got = block.witness_root().map(|root| {
            use bitcoin::hashes::Hash;
            let mut pre = Vec::with_capacity(64);
            pre.extend_from_slice(root.as_byte_array());
            pre.extend_from_slice(reserved);
            sha256d::sha256d(&pre)
        });
        if want.is_none() || got != want {
            return Err(Reject::new(
                "bad-witness-merkle-match",
                "witness merkle commitment mismatch",
            ));
        }
    } else if block
        .txdata
        .iter()
        .any(|tx| tx.input.iter().any(|i| !i.witness.is_empty()))
    {
        return Err(Reject::new("unexpected-witness", "unexpected witness data found"));
    }
    let weight = block.weight().to_wu();
    if weight > crate::params::MAX_BLOCK_WEIGHT {
        return Err(Reject::new(
            "bad-blk-weight",
            format!("weight {weight} over the limit"),
        ));
    }
    Ok(())
}

trait BaseSize {
    fn base_size_compat(&self) -> usize;
}
impl BaseSize for Block {
    fn base_size_compat(&self) -> usize {
        80 + self.txdata.iter().map(|t| t.base_size()).sum::<usize>() + 9
    }
}
