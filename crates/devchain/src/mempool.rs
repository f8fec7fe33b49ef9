//! Transactions waiting for a block: standard, signature-checked spends of confirmed outputs.
//!
//! Policy (documented limits): inputs must be confirmed (no chains of unconfirmed transactions), a
//! feerate of at least [`MIN_RELAY_SAT_PER_KVB`], version 1 or 2, weight at most [`TX_WEIGHT_MAX`], and
//! the pool holds at most [`MEMPOOL_WEIGHT_MAX`] weight units; past that a new transaction is refused
//! with "mempool full" (nothing already accepted is evicted).

use bitcoin::{OutPoint, Transaction, Txid, Wtxid};
use std::collections::HashMap;
use units::Sats;

/// Core's default minimum relay feerate, 1 sat/vB.
pub const MIN_RELAY_SAT_PER_KVB: u64 = 1_000;
/// Core's standard transaction weight limit.
pub const TX_WEIGHT_MAX: u64 = 400_000;
/// Total weight the mempool holds (ten full blocks).
pub const MEMPOOL_WEIGHT_MAX: u64 = 40_000_000;

/// Core's RPC error codes for rejected transactions.
pub mod code {
    /// RPC_DESERIALIZATION_ERROR
    pub const DESERIALIZATION: i32 = -22;
    /// RPC_VERIFY_ERROR
    pub const VERIFY_ERROR: i32 = -25;
    /// RPC_VERIFY_REJECTED
    pub const VERIFY_REJECTED: i32 = -26;
    /// RPC_VERIFY_ALREADY_IN_CHAIN
    pub const ALREADY_IN_CHAIN: i32 = -27;
}

/// Why a transaction was refused, with Core's RPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct TxReject {
    /// Core's RPC error code (-25, -26, -27).
    pub code: i32,
    /// Core-style reason.
    pub reason: String,
}

impl TxReject {
    /// Rejected by policy or consensus (-26).
    pub fn rejected(reason: impl Into<String>) -> TxReject {
        TxReject {
            code: code::VERIFY_REJECTED,
            reason: reason.into(),
        }
    }
}

/// One mempool transaction.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The transaction.
    pub tx: Transaction,
    /// txid.
    pub txid: Txid,
    /// wtxid.
    pub wtxid: Wtxid,
    /// Fee.
    pub fee: Sats,
    /// Weight.
    pub weight: u64,
    /// Arrival order.
    pub seq: u64,
}

/// The mempool.
#[derive(Default, Debug)]
pub struct Mempool {
    entries: HashMap<Txid, Entry>,
    spends: HashMap<OutPoint, Txid>,
    weight: u64,
    seq: u64,
}

impl Mempool {
    /// Number of transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Total weight.
    pub fn weight(&self) -> u64 {
        self.weight
    }
    /// A change counter (for long polling).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Contains this txid.
    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }
    /// The mempool transaction spending `op`, if any.
    pub fn spender(&self, op: &OutPoint) -> Option<Txid> {
        self.spends.get(op).copied()
    }
    /// Entries in arrival order.
    pub fn ordered(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by_key(|e| e.seq);
        v
    }
    /// Adds a checked entry; refuses when full.
    pub fn insert(&mut self, mut e: Entry) -> Result<(), TxReject> {
        if self.weight.saturating_add(e.weight) > MEMPOOL_WEIGHT_MAX {
            return Err(TxReject::rejected(format!(
                "mempool full (limit {MEMPOOL_WEIGHT_MAX} weight units)"
            )));
        }
        self.seq += 1;
        e.seq = self.seq;
        for i in &e.tx.input {
            self.spends.insert(i.previous_output, e.txid);
        }
        self.weight += e.weight;
        self.entries.insert(e.txid, e);
        Ok(())
    }
    /// Removes a transaction.
    pub fn remove(&mut self, txid: &Txid) -> Option<Entry> {
        let e = self.entries.remove(txid)?;
        for i in &e.tx.input {
            if self.spends.get(&i.previous_output) == Some(txid) {
                self.spends.remove(&i.previous_output);
            }
        }
        self.weight = self.weight.saturating_sub(e.weight);
        self.seq += 1;
        Some(e)
    }
    /// Removes the block's transactions and everything conflicting with them.
    pub fn remove_for_block(&mut self, txs: &[Transaction]) {
        for tx in txs {
            self.remove(&tx.compute_txid());
            for i in &tx.input {
                if let Some(c) = self.spends.get(&i.previous_output).copied() {
                    self.remove(&c);
                }
            }
        }
    }
    /// Removes everything (returns the transactions, e.g. to re-add after a reorg).
    pub fn drain(&mut self) -> Vec<Transaction> {
        let txs = self.ordered().into_iter().map(|e| e.tx.clone()).collect();
        self.entries.clear();
        self.spends.clear();
        self.weight = 0;
        self.seq += 1;
        txs
    }
}
