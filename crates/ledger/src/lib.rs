//! The ledger: where money lives. Double-entry, append-only, idempotent, in integer millisatoshis.
//!
//! * [`model`]: accounts and balanced transactions as types (the first enforcement of every rule).
//! * [`schemes`]: the payout formulas (PPS, FPPS, PPLNS, TIDES windows, coinbase payees), exact.
//! * [`store`]: the ledger in SQLite or PostgreSQL, one schema with the rules enforced again by
//!   constraints and triggers, posting, balances, history and `verify`; and the work log (credited
//!   shares ingested idempotently by source and sequence, read back as PPLNS/TIDES windows); on-chain
//!   payouts recorded with their postings in one database transaction (`store::payouts`).

pub mod model;
pub mod schemes;
pub mod store;

pub use model::{Account, PlatformAccount, Posting, Transaction, TxError, UserBucket};
pub use store::{
    Ledger, LedgerError, OwnerPayout, PayoutDraft, PayoutLine, PayoutMethod, PayoutRecord, PayoutSkip,
    PayoutState, Posted, VerifyReport, WorkRecord,
};
