//! The CPU miner behind `cloudmine mine`.
//!
//! * [`work`]: a pool job as a search space of (version bits, extranonce2) headers and nonce
//!   slices, and the exact check of each candidate (no threads, no I/O).
//! * [`engine`]: the hashing threads, fed new work through one shared slot; they notice a new job
//!   between kernel calls of [`sha256d::SCAN_STEP`] nonces.
//! * [`connection`]: one pool session over TCP with the `stratum` crate's client half, and its limits.
//! * [`run`]: the pools in failover order, reconnects with exponential backoff and jitter, reports.
//! * [`bench`]: `--benchmark`, a synthetic job hashed the same way every time.

pub mod bench;
pub mod connection;
pub mod engine;
pub mod report;
pub mod run;
pub mod work;
