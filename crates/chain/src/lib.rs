//! Where block templates come from and where found blocks go.
//!
//! * [`dev`]: the embedded dev chain in process ([`DevNode`]), and [`dev::DevRpc`], its Bitcoin Core
//!   JSON-RPC face, so other pool software (and our own Core backend) can run against it.
//! * [`bitcoind`]: [`BitcoindBackend`], Bitcoin Core over JSON-RPC: templates with the segwit rule,
//!   `submitblock` to every configured node at once, new-tip detection by polling, reconnect with
//!   backoff, clear errors for auth failure, wrong network and a node still syncing; new tips by ZMQ
//!   `hashblock` when configured.
//! * [`zmq`]: ZMQ `hashblock` subscriber and publisher (the dev chain can publish like Core).
//! * [`Backend`]: the one type the pool holds, either of the two.
//!
//! Both report the tip through a `tokio::sync::watch` channel so a new block reaches the pool at once.
//!
//! For balance payouts signed by the pool's own key, both also answer what a wallet needs: the spendable
//! outputs paying a script ([`Backend::spendable_coins`]), broadcasting a signed transaction
//! ([`Backend::broadcast`]) and where a transaction stands ([`Backend::tx_status`]).

pub mod bitcoind;
pub mod dev;
pub mod zmq;

pub use bitcoind::{BackendError, BitcoindBackend, BitcoindConfig};
pub use dev::DevNode;

use bitcoin::{Block, BlockHash};
use mining_core::BlockTemplate;

/// The chain tip as the pool sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    /// Best block hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
}

/// What became of a submitted block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockFate {
    /// Accepted by at least one node (or already known to it).
    Accepted,
    /// Rejected with Core's reason string by every node that answered.
    Rejected(String),
    /// Not decided yet: Core answered `inconclusive` (or `duplicate-inconclusive`): the block is
    /// valid as far as checked but is not on the node's best chain now (a competing block at the
    /// same height arrived first). Neither accepted nor rejected: the pool keeps its intent and
    /// settles it against the chain at a later tip.
    Inconclusive(String),
}

/// An unspent output a wallet may spend now (confirmed; a coinbase only once mature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendableCoin {
    /// Where it is.
    pub outpoint: bitcoin::OutPoint,
    /// What it holds.
    pub txout: bitcoin::TxOut,
    /// Height of the block that created it.
    pub height: u32,
}

/// Where a transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// In the best chain.
    Confirmed {
        /// Confirmations (1 = in the tip).
        confirmations: u32,
        /// Height of its block.
        height: u32,
    },
    /// Waiting in the node's mempool.
    Mempool,
    /// Neither (never seen, dropped, or its block left the best chain).
    Unknown,
}

/// The confirmations after which a coinbase output may be spent (consensus; the dev chain's rule).
pub use devchain::params::COINBASE_MATURITY;

/// A chain backend.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The embedded dev chain.
    Dev(DevNode),
    /// Bitcoin Core nodes.
    Bitcoind(BitcoindBackend),
}

impl Backend {
    /// A fresh template on the current tip.
    pub async fn template(&self) -> Result<BlockTemplate, BackendError> {
        match self {
            Backend::Dev(d) => d.template().await,
            Backend::Bitcoind(b) => b.template().await,
        }
    }

    /// Submits a block (to every node for Bitcoin Core).
    pub async fn submit_block(&self, block: Block) -> Result<BlockFate, BackendError> {
        match self {
            Backend::Dev(d) => Ok(d.submit_block(block).await),
            Backend::Bitcoind(b) => b.submit_block(&block).await,
        }
    }

    /// Confirmations of `hash` in the best chain (1 = it is the tip), or `None` when the block is
    /// not in the best chain (unknown, or orphaned by a reorganisation).
    pub async fn confirmations(&self, hash: &bitcoin::BlockHash) -> Result<Option<u32>, BackendError> {
        match self {
            Backend::Dev(d) => d.confirmations(hash).await,
            Backend::Bitcoind(b) => b.confirmations(hash).await,
        }
    }

    /// Confirmed outputs paying `script` that can be spent in the next block (coinbases mature).
    pub async fn spendable_coins(
        &self,
        script: &bitcoin::ScriptBuf,
    ) -> Result<Vec<SpendableCoin>, BackendError> {
        match self {
            Backend::Dev(d) => d.spendable_coins(script).await,
            Backend::Bitcoind(b) => b.spendable_coins(script).await,
        }
    }

    /// Broadcasts a signed transaction: `Ok(Ok(txid))` when the node has it (accepted now, or
    /// already in its mempool or chain), `Ok(Err(reason))` when the node refused it.
    pub async fn broadcast(
        &self,
        tx: &bitcoin::Transaction,
    ) -> Result<Result<bitcoin::Txid, String>, BackendError> {
        match self {
            Backend::Dev(d) => d.broadcast(tx).await,
            Backend::Bitcoind(b) => b.broadcast(tx).await,
        }
    }

    /// Where `txid` stands.
    pub async fn tx_status(&self, txid: &bitcoin::Txid) -> Result<TxStatus, BackendError> {
        match self {
            Backend::Dev(d) => d.tx_status(txid).await,
            Backend::Bitcoind(b) => b.tx_status(txid).await,
        }
    }

    /// Fees (sat) of the best chain's block at `height` (for FPPS's `E[F]`), `None` above the tip.
    pub async fn block_fees(&self, height: u32) -> Result<Option<u64>, BackendError> {
        match self {
            Backend::Dev(d) => d.block_fees(height).await,
            Backend::Bitcoind(b) => b.block_fees(height).await,
        }
    }

    /// Watches the tip.
    pub fn tip(&self) -> tokio::sync::watch::Receiver<Tip> {
        match self {
            Backend::Dev(d) => d.tip_watch(),
            Backend::Bitcoind(b) => b.tip_watch(),
        }
    }
}
