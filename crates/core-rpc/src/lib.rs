//! Bitcoin Core's JSON-RPC, both halves.
//!
//! * [`error`]: Core's RPC error codes and the [`RpcError`] type.
//! * [`gbt`]: the `getblocktemplate` result as JSON, parsed into and produced from
//!   [`mining_core::BlockTemplate`], with consistency checks (txids, target vs bits, witness commitment).
//! * [`client`]: an HTTP/1.1 JSON-RPC client (basic auth or cookie file, timeouts, clear errors).
//! * [`server`]: a Core-compatible JSON-RPC HTTP server over any [`server::RpcHandler`]
//!   (auth, JSON-RPC 1.0/2.0 and batches, Core's status codes, named limits).
//!
//! This crate knows the wire format; it knows nothing about which chain answers.

pub mod client;
pub mod error;
pub mod gbt;
pub mod server;

pub use client::{Auth, ClientError, RpcClient};
pub use error::RpcError;
