//! Balance payouts on chain, without ever paying twice.
//!
//! * [`wallet`]: the pool wallet's key and P2WPKH script; batched payout transactions built from its
//!   coins and signed (no I/O).
//! * [`keyfile`]: the key file in the data directory (created once, 0600, fsynced).
//! * [`engine`]: payout rounds over the ledger and a chain backend: recorded in the ledger before
//!   broadcast, re-broadcast from the recorded bytes after a crash, settled on confirmation.

pub mod engine;
pub mod keyfile;
pub mod wallet;

pub use engine::{Engine, PayoutConfig, Round, Settled};
pub use wallet::{build_payout, BuildError, Built, PayTo, Wallet};
