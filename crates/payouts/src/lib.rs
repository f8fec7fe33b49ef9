//! Balance payouts on chain, without ever paying twice.
//!
//! * [`wallet`]: the pool wallet's key and P2WPKH script; batched payout transactions built from its
//!   coins and signed (no I/O).
//! * [`core`]: payouts through Bitcoin Core's wallet (`sendmany` with an intent comment).
//! * [`psbt`]: payouts for an external signer: unsigned batches exported as PSBTs, signed ones
//!   imported after every signature is checked.
//! * [`keyfile`]: the key file in the data directory (created once, 0600, fsynced).
//! * [`engine`]: payout rounds over the ledger and a chain backend: recorded in the ledger before
//!   broadcast, re-broadcast from the recorded bytes after a crash, settled on confirmation.

pub mod core;
pub mod engine;
pub mod keyfile;
pub mod psbt;
pub mod wallet;

pub use engine::{import_signed_psbt, Engine, PayoutConfig, Round, Settled, Signer};
pub use wallet::{build_payout, BuildError, Built, PayTo, Wallet};
