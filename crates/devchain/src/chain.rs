//! [`DevChain`]: the chain state (block index, UTXO set, mempool) over the block file.
//!
//! Every call that depends on time takes `now` (unix seconds). A block is checked completely, written
//! and fsynced, and only then applied in memory and acknowledged; a rejected block or a failed write
//! leaves the chain exactly as it was.

use crate::mempool::{code, Entry, Mempool, TxReject, MIN_RELAY_SAT_PER_KVB, TX_WEIGHT_MAX};
use crate::params::{self, DevParams, COINBASE_MATURITY, MTP_WINDOW};
use crate::store::{self, BlockFile, StoreError};
use crate::validate::{check_block, check_pow, check_transaction, contextual_check_block, Reject};
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Secp256k1, VerifyOnly};
use bitcoin::{Block, BlockHash, OutPoint, ScriptBuf, Transaction, TxOut, Txid};
use mining_core::{BlockTemplate, TemplateTx};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use units::{Sats, Target};

/// The block version the dev chain's templates use (BIP9 top bits; no bit inside the Stratum mask).
pub const TEMPLATE_VERSION: u32 = 0x2000_0000;

/// An unspent output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coin {
    /// The output.
    pub out: TxOut,
    /// Height of the block that created it.
    pub height: u32,
    /// Created by a coinbase.
    pub coinbase: bool,
}

/// A block on the active chain.
#[derive(Clone, Debug)]
pub struct BlockInfo {
    /// The block.
    pub block: Arc<Block>,
    /// Its hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Median time past of the 11 blocks ending at this one.
    pub median_time: u32,
    /// Cumulative work up to and including this block.
    pub chainwork: bitcoin::pow::Work,
    /// Fees collected by its coinbase.
    pub fees: Sats,
    /// Its transactions' ids, in block order (computed once, for [`DevChain::find_tx`]).
    pub txids: Vec<Txid>,
    /// The bits the retarget asked of a block at this height; a block that carries other bits (the
    /// minimum) used the minimum-difficulty allowance ([`params::min_difficulty_allowed`]).
    pub regular_bits: u32,
}

/// Result of an accepted block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// Height of the accepted block.
    pub height: u32,
    /// Its hash.
    pub hash: BlockHash,
}

/// Why the chain could not be opened or a block not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A data file is unreadable or damaged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored block breaks a rule (the file was altered, or written by an incompatible version).
    #[error("{file}: block #{height} ({hash}) fails validation on load: {reject}")]
    InvalidStoredBlock {
        /// The block file.
        file: PathBuf,
        /// Height.
        height: u32,
        /// Hash.
        hash: BlockHash,
        /// The rule.
        reject: Reject,
    },
    /// The block interval is out of range.
    #[error("--dev-block-interval must be within {min}..={max} seconds, got {got}")]
    BadInterval {
        /// Given.
        got: u32,
        /// Minimum.
        min: u32,
        /// Maximum.
        max: u32,
    },
}

/// Why a submitted block was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// It breaks a rule; the chain is unchanged.
    #[error("rejected: {0}")]
    Rejected(Reject),
    /// It could not be made durable; the chain is unchanged.
    #[error("block store failed: {0}")]
    Store(#[from] StoreError),
}

/// Spent coins per block, to undo it.
type Undo = Vec<(OutPoint, Coin)>;

/// The dev chain.
pub struct DevChain {
    dir: PathBuf,
    params: DevParams,
    file: BlockFile,
    chain: Vec<BlockInfo>,
    undo: Vec<Undo>,
    by_hash: HashMap<BlockHash, u32>,
    utxo: HashMap<OutPoint, Coin>,
    mempool: Mempool,
    secp: Secp256k1<VerifyOnly>,
}

impl std::fmt::Debug for DevChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevChain")
            .field("dir", &self.dir)
            .field("height", &self.height())
            .finish()
    }
}

impl DevChain {
    /// Opens (or creates) the dev chain in `dir`, replaying and fully re-checking every stored block.
    /// `block_interval_s` applies from the next block if it differs from the stored one.
    pub fn open(dir: &Path, block_interval_s: u32) -> Result<DevChain, OpenError> {
        let (min, max) = (params::BLOCK_INTERVAL_MIN_S, params::BLOCK_INTERVAL_MAX_S);
        if !(min..=max).contains(&block_interval_s) {
            return Err(OpenError::BadInterval {
                got: block_interval_s,
                min,
                max,
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            file: dir.to_path_buf(),
            source: e,
        })?;
        let stored = store::read_params(dir)?;
        let fresh = stored.is_none();
        let mut params = stored.unwrap_or_else(|| DevParams::new(block_interval_s));
        let (file, loaded) = BlockFile::open(dir)?;
        let genesis = params::genesis();
        let ghash = genesis.block_hash();
        let genesis_txids = genesis.txdata.iter().map(Transaction::compute_txid).collect();
        let gwork = Target::REGTEST_POW_LIMIT.to_bitcoin().to_work();
        let mut chain = DevChain {
            dir: dir.to_path_buf(),
            params: params.clone(),
            file,
            chain: vec![BlockInfo {
                median_time: genesis.header.time,
                block: Arc::new(genesis),
                hash: ghash,
                height: 0,
                chainwork: gwork,
                fees: Sats::ZERO,
                txids: genesis_txids,
                regular_bits: Target::REGTEST_POW_LIMIT.to_compact(),
            }],
            undo: vec![Vec::new()],
            by_hash: HashMap::from([(ghash, 0)]),
            utxo: HashMap::new(),
            mempool: Mempool::default(),
            secp: Secp256k1::verification_only(),
        };
        for block in loaded.blocks {
            let height = chain.height() + 1;
            let hash = block.block_hash();
            let undo = chain
                .connect(&block, None)
                .map_err(|reject| OpenError::InvalidStoredBlock {
                    file: dir.join(store::BLOCKS_FILE),
                    height,
                    hash,
                    reject,
                })?;
            chain.apply(block, undo);
        }
        let tip = chain.height();
        if params.interval_at(tip + 1) != block_interval_s {
            params.intervals.retain(|i| i.from_height <= tip);
            params.intervals.push(params::IntervalFrom {
                from_height: tip + 1,
                seconds: block_interval_s,
            });
            store::write_params(dir, &params)?;
        } else if fresh {
            store::write_params(dir, &params)?;
        }
        chain.params = params;
        Ok(chain)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The parameters (interval history).
    pub fn params(&self) -> &DevParams {
        &self.params
    }
    /// Height of the tip.
    pub fn height(&self) -> u32 {
        u32::try_from(self.chain.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }
    /// The tip.
    pub fn tip(&self) -> &BlockInfo {
        // The chain always holds genesis.
        &self.chain[self.chain.len() - 1]
    }
    /// The block at `height` on the active chain.
    pub fn at_height(&self, height: u32) -> Option<&BlockInfo> {
        self.chain.get(height as usize)
    }
    /// The block with this hash, if on the active chain.
    pub fn by_hash(&self, hash: &BlockHash) -> Option<&BlockInfo> {
        self.by_hash.get(hash).and_then(|h| self.at_height(*h))
    }
    /// The unspent output at `op`.
    pub fn coin(&self, op: &OutPoint) -> Option<&Coin> {
        self.utxo.get(op)
    }
    /// Number of unspent outputs.
    pub fn utxo_count(&self) -> usize {
        self.utxo.len()
    }
    /// Unspent outputs paying `script` (for tests and wallets; linear scan).
    pub fn coins_for(&self, script: &ScriptBuf) -> Vec<(OutPoint, Coin)> {
        let mut v: Vec<(OutPoint, Coin)> = self
            .utxo
            .iter()
            .filter(|(_, c)| c.out.script_pubkey == *script)
            .map(|(o, c)| (*o, c.clone()))
            .collect();
        v.sort_by_key(|(o, c)| (c.height, o.txid, o.vout));
        v
    }
    /// The mempool.
    pub fn mempool(&self) -> &Mempool {
        &self.mempool
    }

    /// Whether the tip carries the minimum difficulty under the allowance (not as the retarget's
    /// own bits).
    pub fn tip_used_allowance(&self) -> bool {
        let tip = self.tip();
        tip.height >= 1 && tip.block.header.bits.to_consensus() != tip.regular_bits
    }

    /// The bits the next block must carry, unless it uses the minimum-difficulty allowance. After
    /// a block that used the allowance the retarget pauses: the next regular block needs what that
    /// block would have needed.
    pub fn next_bits(&self) -> u32 {
        let h = self.height() + 1;
        let tip = self.tip();
        if self.tip_used_allowance() {
            return tip.regular_bits;
        }
        let parent = &tip.block.header;
        let gp_time = self
            .at_height(h.saturating_sub(2))
            .map_or(0, |b| b.block.header.time);
        params::next_bits(&self.params, h, parent.bits.to_consensus(), parent.time, gp_time)
    }

    /// A block template on the tip. `cur_time` is `max(now, mintime)`; when mintime is ahead of `now`
    /// (blocks came faster than one per second for a while) the template cannot be mined until the
    /// clock catches up: that is the dev chain's throttle.
    pub fn template(&self, now: u32) -> BlockTemplate {
        let height = self.height() + 1;
        let bits = self.next_bits();
        let min_time = self.tip().median_time.saturating_add(1);
        let entries = self.mempool.ordered();
        let mut weight = 4_000u64; // reserved for the coinbase
        let mut txs = Vec::with_capacity(entries.len());
        for e in entries {
            if weight + e.weight > params::MAX_BLOCK_WEIGHT {
                continue;
            }
            weight += e.weight;
            txs.push(TemplateTx {
                tx: e.tx.clone(),
                txid: e.txid,
                wtxid: e.wtxid,
                fee: e.fee,
                weight: e.weight,
            });
        }
        let fees = txs
            .iter()
            .fold(Sats::ZERO, |a, t| a.checked_add(t.fee).unwrap_or(a));
        let coinbase_value = params::subsidy(height).checked_add(fees).unwrap_or(Sats::ZERO);
        let commitment = mining_core::coinbase::witness_commitment_script(txs.iter().map(|t| t.wtxid));
        BlockTemplate {
            version: TEMPLATE_VERSION,
            prev_hash: self.tip().hash,
            height,
            bits,
            target: Target::from_compact(bits).unwrap_or(Target::REGTEST_POW_LIMIT),
            cur_time: now.max(min_time),
            min_time,
            coinbase_value,
            transactions: txs,
            default_witness_commitment: Some(commitment),
            coinbase_aux: Vec::new(),
            longpoll_id: Some(format!("{}{:016x}", self.tip().hash, self.mempool.seq())),
        }
    }

    /// Checks a block completely, makes it durable, applies it. The chain is unchanged on any error.
    pub fn submit_block(&mut self, block: Block, now: u32) -> Result<SubmitOutcome, SubmitError> {
        let undo = self.connect(&block, Some(now)).map_err(SubmitError::Rejected)?;
        self.file.append(&block)?;
        let hash = block.block_hash();
        self.mempool.remove_for_block(&block.txdata);
        self.apply(block, undo);
        Ok(SubmitOutcome {
            height: self.height(),
            hash,
        })
    }

    /// Median time past of the last 11 blocks ending at `height`.
    fn median_time_at(&self, height: u32) -> u32 {
        let end = height as usize + 1;
        let start = end.saturating_sub(MTP_WINDOW);
        let mut times: Vec<u32> = self
            .chain
            .get(start..end)
            .unwrap_or(&[])
            .iter()
            .map(|b| b.block.header.time)
            .collect();
        times.sort_unstable();
        times.get(times.len() / 2).copied().unwrap_or(0)
    }

    /// Every rule, without changing anything. Returns the coins the block spends (its undo data).
    fn connect(&self, block: &Block, now: Option<u32>) -> Result<Undo, Reject> {
        let hash = block.block_hash();
        if self.by_hash.contains_key(&hash) {
            return Err(Reject::new("duplicate", "block already in the chain"));
        }
        check_pow(block)?;
        check_block(block)?;
        match self.by_hash.get(&block.header.prev_blockhash) {
            None => return Err(Reject::new("prev-blk-not-found", "parent unknown")),
            Some(h) if *h != self.height() => {
                return Err(Reject::new(
                    "stale-prevblk",
                    "parent is not the tip (the dev chain keeps no forks)",
                ))
            }
            Some(_) => {}
        }
        let height = self.height() + 1;
        let bits = block.header.bits.to_consensus();
        let want = self.next_bits();
        let easy = params::min_difficulty_allowed(
            &self.params,
            height,
            self.tip().block.header.time,
            self.tip_used_allowance(),
            block.header.time,
        ) && bits == Target::REGTEST_POW_LIMIT.to_compact();
        if bits != want && !easy {
            return Err(Reject::new(
                "bad-diffbits",
                format!("incorrect proof of work: bits {bits:08x}, expected {want:08x}"),
            ));
        }
        let mtp = self.tip().median_time;
        let time = block.header.time;
        if time <= mtp {
            return Err(Reject::new(
                "time-too-old",
                format!("block's timestamp {time} is not after the median time past {mtp}"),
            ));
        }
        if let Some(now) = now {
            if time > now.saturating_add(params::MAX_FUTURE_BLOCK_TIME_S) {
                return Err(Reject::new(
                    "time-too-new",
                    format!(
                        "block timestamp {time} is more than {} s ahead of the wall clock {now}",
                        params::MAX_FUTURE_BLOCK_TIME_S
                    ),
                ));
            }
        }
        let version = block.header.version.to_consensus();
        if version < 4 {
            return Err(Reject::new(
                &format!("bad-version(0x{version:08x})"),
                "rejected nVersion block",
            ));
        }
        contextual_check_block(block, height, mtp)?;

        // UTXO rules.
        let mut created: HashMap<OutPoint, Coin> = HashMap::new();
        let mut spent: HashSet<OutPoint> = HashSet::new();
        let mut undo = Vec::new();
        let mut fees = 0u64;
        for tx in block.txdata.iter().skip(1) {
            let txid = tx.compute_txid();
            let mut prevouts = Vec::with_capacity(tx.input.len());
            let mut value_in = 0u64;
            for i in &tx.input {
                let op = i.previous_output;
                let coin = if spent.contains(&op) {
                    None
                } else {
                    created.get(&op).or_else(|| self.utxo.get(&op))
                };
                let Some(coin) = coin else {
                    return Err(Reject::new(
                        "bad-txns-inputs-missingorspent",
                        format!("{txid}: input {op} missing or spent"),
                    ));
                };
                if coin.coinbase && height.saturating_sub(coin.height) < COINBASE_MATURITY {
                    return Err(Reject::new(
                        "bad-txns-premature-spend-of-coinbase",
                        format!(
                            "{txid}: tried to spend coinbase at depth {}",
                            height.saturating_sub(coin.height)
                        ),
                    ));
                }
                value_in = value_in.saturating_add(coin.out.value.to_sat());
                prevouts.push(coin.out.clone());
                if !created.contains_key(&op) {
                    undo.push((op, coin.clone()));
                }
            }
            let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
            if value_in < value_out {
                return Err(Reject::new(
                    "bad-txns-in-belowout",
                    format!("{txid}: value in {value_in} < value out {value_out}"),
                ));
            }
            for idx in 0..tx.input.len() {
                crate::script::verify_input(&self.secp, tx, idx, &prevouts).map_err(|e| {
                    Reject::new(
                        "mandatory-script-verify-flag-failed",
                        format!("{txid} input {idx}: {e}"),
                    )
                })?;
            }
            fees = fees.saturating_add(value_in - value_out);
            for i in &tx.input {
                spent.insert(i.previous_output);
                created.remove(&i.previous_output);
            }
            for (vout, o) in tx.output.iter().enumerate() {
                let op = OutPoint {
                    txid,
                    vout: vout as u32,
                };
                created.insert(
                    op,
                    Coin {
                        out: o.clone(),
                        height,
                        coinbase: false,
                    },
                );
            }
        }
        let allowed = params::subsidy(height).to_sat().saturating_add(fees);
        let paid: u64 = block
            .txdata
            .first()
            .map_or(0, |cb| cb.output.iter().map(|o| o.value.to_sat()).sum());
        if paid > allowed {
            return Err(Reject::new(
                "bad-cb-amount",
                format!("coinbase pays too much (actual={paid} vs limit={allowed})"),
            ));
        }
        Ok(undo)
    }

    /// Applies a checked block to the in-memory state.
    fn apply(&mut self, block: Block, undo: Undo) {
        let height = self.height() + 1;
        let regular_bits = self.next_bits();
        let mut fees = 0u64;
        for tx in block.txdata.iter() {
            let txid = tx.compute_txid();
            let coinbase = tx.is_coinbase();
            if !coinbase {
                let mut value_in = 0u64;
                for i in &tx.input {
                    if let Some(c) = self.utxo.remove(&i.previous_output) {
                        value_in = value_in.saturating_add(c.out.value.to_sat());
                    }
                }
                let out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
                fees = fees.saturating_add(value_in.saturating_sub(out));
            }
            for (vout, o) in tx.output.iter().enumerate() {
                // Provably unspendable outputs (OP_RETURN) never enter the UTXO set.
                if o.script_pubkey.is_op_return() {
                    continue;
                }
                self.utxo.insert(
                    OutPoint {
                        txid,
                        vout: vout as u32,
                    },
                    Coin {
                        out: o.clone(),
                        height,
                        coinbase,
                    },
                );
            }
        }
        let hash = block.block_hash();
        let work = block.header.target().to_work();
        let chainwork = self.tip().chainwork + work;
        self.by_hash.insert(hash, height);
        let txids = block.txdata.iter().map(Transaction::compute_txid).collect();
        self.chain.push(BlockInfo {
            txids,
            block: Arc::new(block),
            hash,
            height,
            median_time: 0,
            chainwork,
            fees: Sats::new(fees).unwrap_or(Sats::ZERO),
            regular_bits,
        });
        let mtp = self.median_time_at(height);
        if let Some(last) = self.chain.last_mut() {
            last.median_time = mtp;
        }
        self.undo.push(undo);
    }

    /// Disconnects blocks from the tip down to and including `hash` (Core's `invalidateblock`), cuts
    /// the block file back, and returns still-valid transactions to the mempool.
    pub fn invalidate_block(&mut self, hash: &BlockHash, now: u32) -> Result<u32, SubmitError> {
        let Some(&height) = self.by_hash.get(hash) else {
            return Err(SubmitError::Rejected(Reject::new(
                "Block not found",
                hash.to_string(),
            )));
        };
        if height == 0 {
            return Err(SubmitError::Rejected(Reject::new(
                "genesis",
                "cannot invalidate the genesis block",
            )));
        }
        self.file.truncate_to(height as usize - 1)?;
        let mut returned = Vec::new();
        while self.height() >= height {
            let Some(info) = self.chain.pop() else { break };
            let undo = self.undo.pop().unwrap_or_default();
            for tx in info.block.txdata.iter() {
                let txid = tx.compute_txid();
                for vout in 0..tx.output.len() {
                    self.utxo.remove(&OutPoint {
                        txid,
                        vout: vout as u32,
                    });
                }
            }
            for (op, coin) in undo {
                self.utxo.insert(op, coin);
            }
            self.by_hash.remove(&info.hash);
            returned.extend(info.block.txdata.iter().skip(1).cloned());
        }
        returned.extend(self.mempool.drain());
        for tx in returned {
            let _ = self.accept_transaction(tx, now, None);
        }
        Ok(self.height())
    }

    /// Accepts a transaction into the mempool (Core's `sendrawtransaction` rules and codes).
    /// `max_fee_rate_sat_per_kvb`: refuse higher feerates (Core's `maxfeerate`), `None` for no limit.
    pub fn accept_transaction(
        &mut self,
        tx: Transaction,
        _now: u32,
        max_fee_rate_sat_per_kvb: Option<u64>,
    ) -> Result<Txid, TxReject> {
        let txid = tx.compute_txid();
        if self.mempool.contains(&txid) {
            return Ok(txid);
        }
        check_transaction(&tx).map_err(|r| TxReject::rejected(r.reason))?;
        if tx.is_coinbase() {
            return Err(TxReject::rejected("coinbase"));
        }
        let v = tx.version.0;
        if !(1..=2).contains(&v) {
            return Err(TxReject::rejected("version"));
        }
        let weight = tx.weight().to_wu();
        if weight > TX_WEIGHT_MAX {
            return Err(TxReject::rejected("tx-size"));
        }
        let height = self.height() + 1;
        let h = bitcoin::absolute::Height::from_consensus(height)
            .map_err(|e| TxReject::rejected(e.to_string()))?;
        let t = bitcoin::absolute::Time::from_consensus(self.tip().median_time.max(500_000_000))
            .map_err(|e| TxReject::rejected(e.to_string()))?;
        if !tx.is_absolute_timelock_satisfied(h, t) {
            return Err(TxReject::rejected("non-final"));
        }
        let mut prevouts = Vec::with_capacity(tx.input.len());
        let mut value_in = 0u64;
        for i in &tx.input {
            let op = i.previous_output;
            if self.mempool.spender(&op).is_some() {
                return Err(TxReject::rejected("txn-mempool-conflict"));
            }
            let Some(coin) = self.utxo.get(&op) else {
                let already =
                    (0..tx.output.len()).any(|n| self.utxo.contains_key(&OutPoint { txid, vout: n as u32 }));
                if already {
                    return Err(TxReject {
                        code: code::ALREADY_IN_CHAIN,
                        reason: "Transaction outputs already in utxo set".into(),
                    });
                }
                return Err(TxReject {
                    code: code::VERIFY_ERROR,
                    reason: "bad-txns-inputs-missingorspent".into(),
                });
            };
            if coin.coinbase && height.saturating_sub(coin.height) < COINBASE_MATURITY {
                return Err(TxReject::rejected("bad-txns-premature-spend-of-coinbase"));
            }
            value_in = value_in.saturating_add(coin.out.value.to_sat());
            prevouts.push(coin.out.clone());
        }
        let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        if value_in < value_out {
            return Err(TxReject::rejected("bad-txns-in-belowout"));
        }
        let fee = value_in - value_out;
        let vsize = weight.div_ceil(4);
        let min_fee = (vsize * MIN_RELAY_SAT_PER_KVB).div_ceil(1000);
        if fee < min_fee {
            return Err(TxReject::rejected(format!(
                "min relay fee not met, {fee} < {min_fee}"
            )));
        }
        if let Some(max) = max_fee_rate_sat_per_kvb {
            if max > 0 && fee.saturating_mul(1000) > max.saturating_mul(vsize) {
                return Err(TxReject {
                    code: code::VERIFY_ERROR,
                    reason: "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)".into(),
                });
            }
        }
        for idx in 0..tx.input.len() {
            crate::script::verify_input(&self.secp, &tx, idx, &prevouts)
                .map_err(|e| TxReject::rejected(format!("mandatory-script-verify-flag-failed ({e})")))?;
        }
        let wtxid = tx.compute_wtxid();
        self.mempool.insert(Entry {
            tx,
            txid,
            wtxid,
            fee: Sats::new(fee).map_err(|e| TxReject::rejected(e.to_string()))?,
            weight,
            seq: 0,
        })?;
        Ok(txid)
    }

    /// Builds and mines a block paying `script` on top of the tip by brute force (regtest's
    /// `generatetoaddress`). Gives up after `max_tries` nonces per extranonce × 16 extranonces.
    pub fn generate_block(&self, script: &ScriptBuf, now: u32, max_tries: u32) -> Option<Block> {
        let t = self.template(now);
        crate::chain::mine_template(&t, script, max_tries)
    }

    /// Regtest's `generatetoaddress` on the dev chain: a block paying `script` that is quick to mine
    /// whatever the chain's difficulty. Above the minimum it uses the minimum-difficulty allowance
    /// ([`params::min_difficulty_allowed`]): the block is stamped just over two block intervals
    /// after its parent, or one second after a parent that used the allowance (never before `now`). `None` when that stamp would be more than
    /// [`params::MAX_FUTURE_BLOCK_TIME_S`] ahead of `now` (the caller waits for the clock), or after
    /// `max_tries` nonces per extranonce × 16 extranonces.
    pub fn generate_block_quick(&self, script: &ScriptBuf, now: u32, max_tries: u32) -> Option<Block> {
        let mut t = self.template(now);
        let limit = Target::REGTEST_POW_LIMIT;
        if t.bits != limit.to_compact() {
            let parent_time = self.tip().block.header.time;
            let gap = if self.tip_used_allowance() {
                1
            } else {
                2 * self.params.interval_at(t.height) + 1
            };
            t.cur_time = t.cur_time.max(parent_time.saturating_add(gap));
            t.bits = limit.to_compact();
            t.target = limit;
        }
        if t.cur_time > now.saturating_add(params::MAX_FUTURE_BLOCK_TIME_S) {
            return None;
        }
        crate::chain::mine_template(&t, script, max_tries)
    }

    /// [`DevChain::generate_block`] whose coinbase pays `outputs(coinbase value)` (a pool paying
    /// payees in its coinbase).
    pub fn generate_block_paying(
        &self,
        outputs: impl FnOnce(u64) -> Vec<TxOut>,
        now: u32,
        max_tries: u32,
    ) -> Option<Block> {
        let t = self.template(now);
        let outs = outputs(t.coinbase_value.to_sat());
        crate::chain::mine_template_paying(&t, outs, max_tries)
    }

    /// Block hash at height, as a hex-free convenience for tests.
    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.at_height(height).map(|b| b.hash)
    }

    /// The height at which `txid` is confirmed on the active chain (a scan from the tip over the
    /// txids computed when each block was connected: no hashing; the dev chain is small and wallets
    /// ask about recent transactions).
    pub fn find_tx(&self, txid: &Txid) -> Option<u32> {
        self.chain
            .iter()
            .rev()
            .find(|b| b.txids.contains(txid))
            .map(|b| b.height)
    }
}

/// Mines `t` by brute force with a coinbase paying `script` (all of `coinbase_value`), using the one
/// header builder and share hasher of `mining-core`.
pub fn mine_template(t: &BlockTemplate, script: &ScriptBuf, max_tries: u32) -> Option<Block> {
    let all = vec![TxOut {
        value: t.coinbase_value.to_amount(),
        script_pubkey: script.clone(),
    }];
    mine_template_paying(t, all, max_tries)
}

/// [`mine_template`] with a coinbase paying `outputs` (at most `coinbase_value` together).
pub fn mine_template_paying(t: &BlockTemplate, outputs: Vec<TxOut>, max_tries: u32) -> Option<Block> {
    use mining_core::coinbase::{split, CoinbaseSpec};
    let spec = CoinbaseSpec {
        height: t.height,
        aux: &t.coinbase_aux,
        tag: b"/cloudmine-dev/",
        extranonce_len: 8,
        outputs,
        coinbase_value: t.coinbase_value,
        witness_commitment: t.default_witness_commitment.clone(),
    };
    let parts = split(&spec).ok()?;
    let job = mining_core::PreparedJob::new(
        parts.coinb1,
        parts.coinb2,
        t.merkle_branch(),
        t.version,
        t.prev_hash.to_byte_array(),
        t.bits,
        t.cur_time,
    )
    .ok()?;
    let en1 = [0u8; 4];
    let prefix = job.prefix(&en1);
    let mut hasher = mining_core::BatchHasher::new();
    for en2 in 0u32..16 {
        let en2 = en2.to_le_bytes();
        for nonce in 0..max_tries {
            let s = mining_core::ShareInput {
                job: &job,
                prefix: &prefix,
                en2: &en2,
                ntime: t.cur_time,
                nonce,
                version: t.version,
            };
            let c = hasher.hash_one(&s);
            if c.meets(job.network_target) {
                return t.assemble(&job.coinbase_bytes(&en1, &en2), &c.header).ok();
            }
        }
    }
    None
}
