//! The embedded dev chain: a real Bitcoin-rules chain kept by cloudmine in its data directory.
//!
//! Regtest genesis, addresses (`bcrt1…`), subsidy schedule (halving every 150 blocks), BIP34 from height
//! 1 (OP_1..OP_16 for heights 1–16), segwit from genesis with witness commitments, coinbase maturity of
//! 100 blocks. Unlike regtest, the difficulty retargets **every block** toward a configurable interval
//! ([`params`]), floor at regtest's powLimit, and a block's time may never be ahead of the wall clock.
//!
//! * [`params`]: consensus parameters, subsidy, the retarget rule.
//! * [`store`]: the append-only, checksummed, fsynced block file and the parameters file.
//! * [`validate`]: block and transaction rules with Core's reject strings.
//! * [`script`]: signature checks for the spend types the dev chain supports (P2WPKH, P2TR key path).
//! * [`mempool`]: standard transactions waiting for a block.
//! * [`chain`]: [`DevChain`], which ties them together; time is always passed in.
//!
//! No async and no clock: the edges (`chain`, `core-rpc`, the binary) wrap a `DevChain` in one mutex
//! and call it from blocking tasks.

pub mod chain;
pub mod mempool;
pub mod params;
pub mod script;
pub mod store;
pub mod validate;

pub use chain::{BlockInfo, DevChain, OpenError, SubmitOutcome};
pub use mempool::TxReject;
pub use params::DevParams;
pub use validate::Reject;
