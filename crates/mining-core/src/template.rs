//! A block template (getblocktemplate's shape, typed) and assembling a block from a winning share.
//!
//! Both chain backends produce a [`BlockTemplate`]: the embedded dev chain directly, Bitcoin Core
//! through `core-rpc`'s parser. The pool turns it into jobs; when a share is a block, [`BlockTemplate::assemble`]
//! rebuilds the full block (coinbase in witness form when there is a commitment).

use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, ScriptBuf, Transaction, Txid, Witness, Wtxid};
use units::{Sats, Target};

/// A transaction in a template, in block order.
#[derive(Clone, Debug)]
pub struct TemplateTx {
    /// The transaction (with witness).
    pub tx: Transaction,
    /// Its txid.
    pub txid: Txid,
    /// Its wtxid.
    pub wtxid: Wtxid,
    /// Fee paid.
    pub fee: Sats,
    /// BIP141 weight.
    pub weight: u64,
}

/// Everything needed to build blocks on the current tip.
#[derive(Clone, Debug)]
pub struct BlockTemplate {
    /// Block version (bits inside the Stratum version mask are clear on both backends).
    pub version: u32,
    /// Parent block.
    pub prev_hash: BlockHash,
    /// Height of the block being built.
    pub height: u32,
    /// nbits.
    pub bits: u32,
    /// The target nbits stands for.
    pub target: Target,
    /// Suggested time (never ahead of the wall clock on the dev chain).
    pub cur_time: u32,
    /// Smallest allowed time (median time past + 1).
    pub min_time: u32,
    /// Subsidy plus fees available to the coinbase.
    pub coinbase_value: Sats,
    /// Transactions, in block order, coinbase excluded.
    pub transactions: Vec<TemplateTx>,
    /// The witness commitment scriptPubKey (present whenever segwit is active).
    pub default_witness_commitment: Option<ScriptBuf>,
    /// GBT coinbaseaux bytes (put into the scriptSig).
    pub coinbase_aux: Vec<u8>,
    /// Long-poll id, when the backend offers long polling.
    pub longpoll_id: Option<String>,
}

impl BlockTemplate {
    /// The Stratum merkle branch for this template's transactions.
    pub fn merkle_branch(&self) -> Vec<[u8; 32]> {
        let txids: Vec<[u8; 32]> = self.transactions.iter().map(|t| t.txid.to_byte_array()).collect();
        crate::merkle::branch_from_txids(&txids)
    }

    /// Total fees of the template's transactions.
    pub fn fees(&self) -> Sats {
        self.transactions
            .iter()
            .fold(Sats::ZERO, |a, t| a.checked_add(t.fee).unwrap_or(a))
    }

    /// Assembles the block for a winning share: header fields plus the coinbase (non-witness bytes as the
    /// miner hashed them). When the template carries a witness commitment the coinbase gets the 32-zero-byte
    /// reserved value as its witness (BIP141), as Core's `submitblock` would add.
    pub fn assemble(
        &self,
        coinbase_nonwitness: &[u8],
        header: &[u8; 80],
    ) -> Result<Block, bitcoin::consensus::encode::Error> {
        let mut coinbase: Transaction = bitcoin::consensus::deserialize(coinbase_nonwitness)?;
        if self.default_witness_commitment.is_some() {
            if let Some(input) = coinbase.input.first_mut() {
                input.witness = Witness::from_slice(&[[0u8; 32]]);
            }
        }
        let header: Header = bitcoin::consensus::deserialize(header)?;
        let mut txdata = Vec::with_capacity(self.transactions.len() + 1);
        txdata.push(coinbase);
        txdata.extend(self.transactions.iter().map(|t| t.tx.clone()));
        Ok(Block { header, txdata })
    }

    /// The header version as rust-bitcoin's type.
    pub fn block_version(&self) -> Version {
        Version::from_consensus(self.version as i32)
    }
}
