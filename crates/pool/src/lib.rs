//! The Stratum V1 pool server.
//!
//! * [`accounting`]: copies accepted shares from the share log into the ledger's work log, resuming
//!   after a ledger outage without loss or double counting.
//! * [`config`]: every limit, named, with its default and reason.
//! * [`jobs`]: block templates become jobs; one coinbase per payout script (SOLO pays the finder, pool
//!   mode pays `--pool-address`), built lazily and shared by every connection paying the same script.
//! * [`payees`]: coinbase payouts without custody: the window plan new jobs' coinbases pay from, and
//!   how a found block's coinbase is booked against it.
//! * [`share_log`]: the durable log of accepted shares and found blocks (SQLite, WAL, group commit). A
//!   share is answered `true` only after its row is committed.
//! * [`session`]: one connection's protocol state and the share validation order of stratum-v1.md §9.
//! * [`stats`]: counters, the submit-latency histogram, per-worker hashrate for the API.
//! * [`api`]: the HTTP edge: Prometheus `/metrics`, `/api/v1/pool`, `/api/v1/miners/{address}`, and
//!   public-pool's `/api/client/{address}` shape for NerdMiner/Bitaxe community tools.
//! * [`server`]: the TCP edge: accept with connection caps, per-connection tasks, deadlines, job
//!   broadcast, graceful shutdown.
//!
//! [`Pool::run`] ties them together with a template refresher that follows the chain backend's tip.

pub mod accounting;
pub mod api;
pub mod config;
pub mod jobs;
pub mod payees;
pub mod server;
pub mod session;
pub mod share_log;
pub mod stats;

pub use config::{PayoutScheme, PoolConfig};
pub use server::{Pool, PoolStats};

/// Test hook: when the environment variable `CLOUDMINE_FAILPOINT` names this point, the process
/// aborts there (as `kill -9` would), so tests can crash a real process at an exact step.
pub fn failpoint(name: &str) {
    if std::env::var("CLOUDMINE_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
