//! The one implementation of header and share math for all of cloudmine (pool, proxy, miner, dev chain).
//!
//! * [`merkle`]: the Stratum merkle branch (siblings of the coinbase) and folding it.
//! * [`header`]: the 80-byte header from Stratum fields, prevhash word swap, version rolling.
//! * [`share`]: per-job and per-connection precomputation, hashing a share (alone or in interleaved
//!   pairs), and the exact share / block decision.
//! * [`coinbase`]: the coinbase split into `coinb1 ‖ EN1 ‖ EN2 ‖ coinb2`, BIP34 height, witness commitment.
//! * [`template`]: a block template (the getblocktemplate shape, typed) and block assembly from a share.
//! * [`validate`]: the one share validator (stratum-v1.md §9 steps 2–6) over a connection's issued jobs.
//!
//! No I/O, no clock, no async: callers pass time in.

pub mod coinbase;
pub mod header;
pub mod merkle;
pub mod share;
pub mod template;
pub mod validate;
pub mod vardiff;

pub use header::{build_header, prevhash_from_stratum, prevhash_to_stratum, roll_version, VersionBitsError};
pub use share::{BatchHasher, CoinbasePrefix, PreparedJob, ShareCheck, ShareInput};
pub use template::{BlockTemplate, TemplateTx};
pub use validate::{IssuedJob, IssuedWork, ShareValidator, Submission};
pub use vardiff::{Vardiff, VardiffConfig};
