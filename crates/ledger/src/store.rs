//! The ledger in a database: SQLite (a file in the data directory, the default) or PostgreSQL
//! (`postgres://…`), one schema, versioned migrations applied at open.
//!
//! Posting is set-based: a batch of transactions is one database transaction of a few multi-row
//! statements. Read the batch's keys that already exist and the balances of every account involved
//! (locked on PostgreSQL); decide each transaction in order in memory ([`Plan`]: a repeated key with
//! the same content returns the first posting, with other content it is refused; an overdraft is a
//! typed refusal and writes nothing); insert the accepted transactions and their entries, move the
//! balances, and seal the transactions, which the schema allows only if their entries balance.
//!
//! The database enforces the invariants a second time (CHECK constraints, triggers: balanced and
//! complete on seal, entries and sealed transactions immutable, non-negative balances). If it ever
//! refuses something the Rust checks let through, or [`Ledger::verify`] finds a mismatch, the ledger
//! halts: every later write fails with [`LedgerError::Halted`] until an operator investigates. It
//! never limps on.
//!
//! One source for both backends: the SQL uses `$n` placeholders, which SQLite and PostgreSQL both
//! read, and the `on_pool!` / `with_conn!` macros expand the same code once per driver.

use crate::model::{Account, Transaction};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long SQLite waits for a lock before reporting the database busy.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL connections in the pool.
pub const PG_CONNECTIONS_MAX: u32 = 8;
/// How long to wait for a PostgreSQL connection.
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most transactions in one [`Ledger::post_batch`].
pub const BATCH_MAX: usize = 10_000;
/// Most bind parameters per statement (below SQLite's 32,766 and PostgreSQL's 65,535).
const PARAMS_MAX: usize = 6_000;

/// `($1,$2,…),(…)` (PostgreSQL) or `(?,?,…),(…)` (SQLite) for `rows` rows of `cols` columns. SQLite
/// gets anonymous `?`: looking up `$n` names costs it O(n) per parameter, O(n²) per statement.
fn placeholders(rows: usize, cols: usize, numbered: bool) -> String {
    let mut out = String::with_capacity(rows * cols * 6);
    let mut n = 1;
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        if cols > 1 {
            out.push('(');
        }
        for c in 0..cols {
            if c > 0 {
                out.push(',');
            }
            if numbered {
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push('?');
            }
            n += 1;
        }
        if cols > 1 {
            out.push(')');
        }
    }
    out
}

/// What a batch will do, decided in memory from the keys and balances read at its start: each
/// transaction in order is a duplicate (same key, same content), a key conflict, refused (a balance
/// would go negative or past ±21 M BTC, given every earlier accepted transaction of the batch), or
/// accepted. No I/O: the store writes exactly the accepted ones.
#[derive(Debug)]
pub struct Plan {
    outcome: Vec<Planned>,
    fingerprints: Vec<String>,
    deltas: HashMap<i64, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Planned {
    Accept,
    Duplicate(i64),
    /// Same key as an earlier transaction of this batch, same content.
    DuplicateOf(usize),
    Refuse(LedgerError),
}

impl Plan {
    /// Plans `txs` against the stored keys (`key → (id, fingerprint)`), account ids and balances
    /// (`id → (balance, allow_negative)`).
    pub fn new(
        txs: &[Transaction],
        existing: &HashMap<String, (i64, String)>,
        ids: &HashMap<String, i64>,
        balances: &HashMap<i64, (i64, bool)>,
    ) -> Result<Plan, LedgerError> {
        let mut bal: HashMap<i64, (i64, bool)> = balances.clone();
        let mut outcome = Vec::with_capacity(txs.len());
        let mut fingerprints = Vec::with_capacity(txs.len());
        let mut in_batch: HashMap<&str, usize> = HashMap::new();
        let mut deltas: HashMap<i64, i64> = HashMap::new();
        for (i, t) in txs.iter().enumerate() {
            let fp = t.fingerprint();
            let o = if let Some((id, f)) = existing.get(t.key()) {
                if *f == fp {
                    Planned::Duplicate(*id)
                } else {
                    Planned::Refuse(LedgerError::KeyConflict {
                        key: t.key().to_string(),
                        existing: *id,
                    })
                }
            } else if let Some(&j) = in_batch.get(t.key()) {
                if fingerprints.get(j) == Some(&fp) {
                    Planned::DuplicateOf(j)
                } else {
                    Planned::Refuse(LedgerError::KeyConflict {
                        key: t.key().to_string(),
                        existing: -1,
                    })
                }
            } else {
                let mut refusal = None;
                for p in t.postings() {
                    let name = p.account.name();
                    let id = ids
                        .get(&name)
                        .ok_or_else(|| LedgerError::Invariant(format!("account {name} has no id")))?;
                    let (b, neg) = bal.get(id).copied().unwrap_or((0, p.account.allow_negative()));
                    let after = i128::from(b) + i128::from(p.msat);
                    if !neg && after < 0 {
                        refusal = Some(LedgerError::InsufficientFunds {
                            account: name,
                            balance: b,
                            posting: p.msat,
                        });
                        break;
                    }
                    if after.unsigned_abs() > crate::model::MAX_MSAT.unsigned_abs() as u128 {
                        refusal = Some(LedgerError::Overflow { account: name });
                        break;
                    }
                }
                match refusal {
                    Some(e) => Planned::Refuse(e),
                    None => {
                        for p in t.postings() {
                            if let Some(id) = ids.get(&p.account.name()) {
                                let e = bal.entry(*id).or_insert((0, p.account.allow_negative()));
                                e.0 += p.msat;
                                *deltas.entry(*id).or_insert(0) += p.msat;
                            }
                        }
                        in_batch.insert(t.key(), i);
                        Planned::Accept
                    }
                }
            };
            outcome.push(o);
            fingerprints.push(fp);
        }
        Ok(Plan {
            outcome,
            fingerprints,
            deltas,
        })
    }

    fn accepted(&self) -> Vec<usize> {
        self.outcome
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == Planned::Accept)
            .map(|(i, _)| i)
            .collect()
    }

    fn fingerprint(&self, i: usize) -> &str {
        self.fingerprints.get(i).map_or("", String::as_str)
    }

    /// Net balance change per account id, sorted by id (non-zero only).
    fn deltas(&self) -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = self
            .deltas
            .iter()
            .filter(|(_, d)| **d != 0)
            .map(|(a, d)| (*a, *d))
            .collect();
        v.sort_unstable();
        v
    }

    fn results(&self, ids: &HashMap<usize, i64>) -> Vec<Result<Posted, LedgerError>> {
        self.outcome
            .iter()
            .enumerate()
            .map(|(i, o)| match o {
                Planned::Accept => ids
                    .get(&i)
                    .map(|id| Posted::New(*id))
                    .ok_or_else(|| LedgerError::Invariant("accepted without id".into())),
                Planned::Duplicate(id) => Ok(Posted::Duplicate(*id)),
                Planned::DuplicateOf(j) => ids
                    .get(j)
                    .map(|id| Posted::Duplicate(*id))
                    .ok_or_else(|| LedgerError::Invariant("duplicate of an unposted transaction".into())),
                Planned::Refuse(e) => Err(e.clone()),
            })
            .collect()
    }
}

/// Why a posting or a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The transaction itself is malformed (checked before any write).
    #[error(transparent)]
    Tx(#[from] crate::model::TxError),
    /// The idempotency key was used before for different content.
    #[error("idempotency key {key:?} was already used for a different transaction (id {existing})")]
    KeyConflict {
        /// The key.
        key: String,
        /// The transaction that holds it.
        existing: i64,
    },
    /// An account would go negative.
    #[error("insufficient funds in {account}: balance {balance} msat, posting {posting} msat")]
    InsufficientFunds {
        /// The account.
        account: String,
        /// Its balance.
        balance: i64,
        /// The posting.
        posting: i64,
    },
    /// A balance would pass ±21 million BTC.
    #[error("balance of {account} would exceed 21 million BTC")]
    Overflow {
        /// The account.
        account: String,
    },
    /// Too many transactions in one batch.
    #[error("batch of {0} transactions exceeds BATCH_MAX ({BATCH_MAX})")]
    BatchTooLarge(usize),
    /// The database is unreachable, locked or failed; nothing was written. Retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused a write that broke an invariant: the ledger has halted.
    #[error("ledger invariant violated, ledger halted: {0}")]
    Invariant(String),
    /// The ledger halted earlier; no writes until it is investigated.
    #[error("ledger halted: {0}")]
    Halted(String),
    /// The request does not apply to what is stored (nothing was written).
    #[error("refused: {0}")]
    Refused(String),
    /// A work window needs records that retention deleted ([`Ledger::prune_work`]); it is not
    /// computed over less work than it asked for.
    #[error("work window of {work_source:?} reaches below seq {below}, which retention deleted (keep more work: a longer retention)")]
    WorkPruned {
        /// The work source.
        work_source: String,
        /// Records below this were deleted.
        below: u64,
    },
}

/// The result of posting one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// Written now, with this id.
    New(i64),
    /// The key was posted before with the same content: nothing written, the first id returned.
    Duplicate(i64),
}

impl Posted {
    /// The transaction id.
    pub fn id(self) -> i64 {
        match self {
            Posted::New(i) | Posted::Duplicate(i) => i,
        }
    }
}

/// Most work records per [`Ledger::ingest_work`] call.
pub const WORK_INGEST_MAX: usize = 50_000;

/// One unit of credited work (an accepted share), identified by its source's sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkRecord {
    /// The source's sequence number (the pool's share log id): the idempotency key.
    pub seq: u64,
    /// Who did the work (payout address or user).
    pub owner: String,
    /// Credited work in hashes (assigned difficulty · 2^32), below 2^126.
    pub work: u128,
    /// When it was accepted (ms since the Unix epoch).
    pub ts_ms: i64,
}

/// One result per transaction of a batch, in order.
pub type BatchResults = Vec<Result<Posted, LedgerError>>;

/// One line of an account's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// Transaction id.
    pub tx_id: i64,
    /// Its idempotency key.
    pub key: String,
    /// Its memo.
    pub memo: String,
    /// When it was posted (ms since the Unix epoch).
    pub posted_at_ms: i64,
    /// This account's posting.
    pub msat: i64,
}

/// What [`Ledger::verify`] checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Transactions checked.
    pub transactions: i64,
    /// Entries checked.
    pub entries: i64,
    /// Accounts checked.
    pub accounts: i64,
    /// Sum of all balances (must be 0).
    pub balance_sum: i64,
    /// Every violation found (empty: all invariants hold).
    pub problems: Vec<String>,
}

#[derive(Debug)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Expands `$body` once per backend with `$pool` bound to the concrete pool.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// Sequence numbers per page of a work-window read.
pub const WINDOW_PAGE: i64 = 10_000;

/// Versioned migrations, embedded in the binary: (version, description, SQL). Same versions and
/// tables for both backends; only the dialect differs.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "ledger", include_str!("../migrations/sqlite/0001_ledger.sql")),
    (
        2,
        "work log",
        include_str!("../migrations/sqlite/0002_work_log.sql"),
    ),
    (
        3,
        "payouts",
        include_str!("../migrations/sqlite/0003_payouts.sql"),
    ),
    (
        4,
        "pool reserve may go negative",
        include_str!("../migrations/sqlite/0004_pool_reserve.sql"),
    ),
    (
        5,
        "payout methods: pool key, PSBT, Core wallet",
        include_str!("../migrations/sqlite/0005_payout_methods.sql"),
    ),
    (
        6,
        "work log retention mark",
        include_str!("../migrations/sqlite/0006_work_log_pruned.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../migrations/postgres/0001_ledger.sql"),
    ),
    (
        2,
        "work log",
        include_str!("../migrations/postgres/0002_work_log.sql"),
    ),
    (
        3,
        "payouts",
        include_str!("../migrations/postgres/0003_payouts.sql"),
    ),
    (
        4,
        "pool reserve may go negative",
        include_str!("../migrations/postgres/0004_pool_reserve.sql"),
    ),
    (
        5,
        "payout methods: pool key, PSBT, Core wallet",
        include_str!("../migrations/postgres/0005_payout_methods.sql"),
    ),
    (
        6,
        "work log retention mark",
        include_str!("../migrations/postgres/0006_work_log_pruned.sql"),
    ),
];

fn migrator(list: &'static [(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    sqlx::migrate::Migrator::with_migrations(
        list.iter()
            .map(|(v, d, sql)| {
                sqlx::migrate::Migration::new(
                    *v,
                    std::borrow::Cow::Borrowed(*d),
                    sqlx::migrate::MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// `SELECT … WHERE <col> IN (<values>)<tail>` for one chunk of bound values, on an open connection;
/// expanded per driver like [`on_pool!`]. Returns the rows.
macro_rules! fetch_in {
    ($conn:expr, $numbered:expr, $head:expr, $values:expr, $tail:expr) => {{
        let values = $values;
        let sql = format!(
            "{} IN ({}){}",
            $head,
            placeholders(values.len(), 1, $numbered),
            $tail
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in values {
            q = q.bind(v);
        }
        q.fetch_all(&mut *$conn).await.map_err(classify)?
    }};
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn classify(e: sqlx::Error) -> LedgerError {
    if let sqlx::Error::Database(d) = &e {
        let msg = d.message().to_string();
        if msg.contains("ledger invariant") || matches!(d.kind(), sqlx::error::ErrorKind::CheckViolation) {
            return LedgerError::Invariant(msg);
        }
    }
    LedgerError::Unavailable(e.to_string())
}

#[macro_use]
mod payouts;
pub use payouts::{
    OwnerPayout, PayoutDraft, PayoutLine, PayoutMethod, PayoutRecord, PayoutSkip, PayoutState,
    PAYOUTS_LIST_MAX,
};

/// The ledger.
#[derive(Debug)]
pub struct Ledger {
    db: Db,
    ids: Mutex<HashMap<String, i64>>,
    halted: Mutex<Option<String>>,
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `url`: `postgres://…`, `sqlite://PATH` or a plain
    /// path to a SQLite file. Applies pending migrations.
    pub async fn open(url: &str) -> Result<Ledger, LedgerError> {
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts =
                PgConnectOptions::from_str(url).map_err(|e| LedgerError::Unavailable(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(PG_CONNECTIONS_MAX)
                .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
            migrator(POSTGRES_MIGRATIONS)
                .run(&pool)
                .await
                .map_err(|e| LedgerError::Unavailable(format!("migrations: {e}")))?;
            Db::Postgres(pool)
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            // One connection: SQLite has one writer; queueing here beats SQLITE_BUSY.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
            migrator(SQLITE_MIGRATIONS)
                .run(&pool)
                .await
                .map_err(|e| LedgerError::Unavailable(format!("migrations: {e}")))?;
            Db::Sqlite(pool)
        };
        Ok(Ledger {
            db,
            ids: Mutex::new(HashMap::new()),
            halted: Mutex::new(None),
        })
    }

    /// Which backend: `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    fn check_halted(&self) -> Result<(), LedgerError> {
        match self.halted.lock() {
            Ok(g) => match g.as_ref() {
                Some(why) => Err(LedgerError::Halted(why.clone())),
                None => Ok(()),
            },
            Err(_) => Err(LedgerError::Halted("ledger state lock poisoned".into())),
        }
    }

    fn halt(&self, why: &str) {
        tracing::error!(
            reason = why,
            "LEDGER HALTED: an invariant failed; refusing all writes"
        );
        if let Ok(mut g) = self.halted.lock() {
            g.get_or_insert_with(|| why.to_string());
        }
    }

    /// Why the ledger halted, if it did.
    pub fn halted(&self) -> Option<String> {
        self.halted.lock().ok().and_then(|g| g.clone())
    }

    fn remember(&self, fresh: HashMap<String, i64>) {
        if let Ok(mut m) = self.ids.lock() {
            m.extend(fresh);
        }
    }

    /// Posts one transaction (a batch of one).
    pub async fn post(&self, tx: &Transaction) -> Result<Posted, LedgerError> {
        let mut r = self.post_batch(std::slice::from_ref(tx)).await?;
        r.pop()
            .unwrap_or_else(|| Err(LedgerError::Unavailable("empty batch result".into())))
    }

    /// Posts many transactions in one database transaction (one commit, one fsync), in order. Each
    /// posts or is refused on its own ([`Plan`]); the outer error is for the database or a halt, and
    /// then nothing at all was written.
    pub async fn post_batch(&self, txs: &[Transaction]) -> Result<BatchResults, LedgerError> {
        self.post_batch_with(txs, payouts::Extra::None).await
    }

    /// [`Ledger::post_batch`] with a payout row written (or settled) in the same database
    /// transaction when the batch's first transaction posts now.
    async fn post_batch_with(
        &self,
        txs: &[Transaction],
        extra: payouts::Extra<'_>,
    ) -> Result<BatchResults, LedgerError> {
        self.check_halted()?;
        if txs.len() > BATCH_MAX {
            return Err(LedgerError::BatchTooLarge(txs.len()));
        }
        if txs.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let (lock, numbered) = match self.db {
            Db::Postgres(_) => (" FOR UPDATE", true),
            Db::Sqlite(_) => ("", false),
        };
        let out: Result<(BatchResults, HashMap<String, i64>), LedgerError> = on_pool!(&self.db, pool => async {
                let mut dbtx = pool.begin().await.map_err(classify)?;
                let c = &mut *dbtx;
                // 1. Keys already in the ledger.
                let keys: Vec<&str> = txs.iter().map(Transaction::key).collect();
                let mut existing: HashMap<String, (i64, String)> = HashMap::new();
                for chunk in keys.chunks(PARAMS_MAX) {
                    let head = "SELECT idem_key, id, fingerprint FROM ledger_transactions WHERE idem_key";
                    for row in fetch_in!(c, numbered, head, chunk.iter().copied(), "") {
                        existing.insert(
                            row.try_get(0).map_err(classify)?,
                            (row.try_get(1).map_err(classify)?, row.try_get(2).map_err(classify)?),
                        );
                    }
                }
                // 2. Account ids (created if new).
                let mut names: Vec<(String, bool)> = Vec::new();
                let mut ids: HashMap<String, i64> = HashMap::new();
                {
                    let cache = self.ids.lock().map_err(|_| LedgerError::Halted("ledger id cache poisoned".into()))?;
                    let mut seen = std::collections::HashSet::new();
                    for t in txs {
                        for p in t.postings() {
                            let n = p.account.name();
                            if let Some(id) = cache.get(&n) {
                                ids.insert(n, *id);
                            } else if seen.insert(n.clone()) {
                                names.push((n, p.account.allow_negative()));
                            }
                        }
                    }
                }
                let mut fresh: HashMap<String, i64> = HashMap::new();
                for chunk in names.chunks(PARAMS_MAX / 2) {
                    let sql = format!(
                        "INSERT INTO ledger_accounts (name, allow_negative) VALUES {} ON CONFLICT (name) DO NOTHING",
                        placeholders(chunk.len(), 2, numbered)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (n, neg) in chunk {
                        q = q.bind(n.as_str()).bind(*neg);
                    }
                    q.execute(&mut *c).await.map_err(classify)?;
                    let head = "SELECT name, id FROM ledger_accounts WHERE name";
                    for row in fetch_in!(c, numbered, head, chunk.iter().map(|(n, _)| n.as_str()), "") {
                        let n: String = row.try_get(0).map_err(classify)?;
                        let id: i64 = row.try_get(1).map_err(classify)?;
                        fresh.insert(n.clone(), id);
                        ids.insert(n, id);
                    }
                }
                // 3. Current balances of every account involved (locked on PostgreSQL).
                let mut id_list: Vec<i64> = ids.values().copied().collect();
                id_list.sort_unstable();
                id_list.dedup();
                let mut balances: HashMap<i64, (i64, bool)> = HashMap::new();
                for chunk in id_list.chunks(PARAMS_MAX) {
                    let head = "SELECT id, balance_msat, allow_negative FROM ledger_accounts WHERE id";
                    let tail = format!(" ORDER BY id{lock}");
                    for row in fetch_in!(c, numbered, head, chunk.iter().copied(), tail) {
                        balances.insert(
                            row.try_get(0).map_err(classify)?,
                            (row.try_get(1).map_err(classify)?, row.try_get(2).map_err(classify)?),
                        );
                    }
                }
                // 4. Decide, in order, in memory.
                let plan = Plan::new(txs, &existing, &ids, &balances)?;
                // 5. Write: transactions, entries, balances, seals.
                let mut tx_ids: HashMap<usize, i64> = HashMap::new();
                let accepted: Vec<usize> = plan.accepted();
                for chunk in accepted.chunks(PARAMS_MAX / 5) {
                    let sql = format!(
                        "INSERT INTO ledger_transactions (idem_key, fingerprint, memo, posted_at_ms, postings) VALUES {} RETURNING id, idem_key",
                        placeholders(chunk.len(), 5, numbered)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for &i in chunk {
                        let t = txs.get(i).ok_or_else(|| LedgerError::Invariant("plan index out of range".into()))?;
                        q = q
                            .bind(t.key())
                            .bind(plan.fingerprint(i))
                            .bind(t.memo())
                            .bind(now)
                            .bind(i64::try_from(t.postings().len()).unwrap_or(i64::MAX));
                    }
                    let by_key: HashMap<&str, usize> = chunk
                        .iter()
                        .filter_map(|&i| txs.get(i).map(|t| (t.key(), i)))
                        .collect();
                    for row in q.fetch_all(&mut *c).await.map_err(classify)? {
                        let id: i64 = row.try_get(0).map_err(classify)?;
                        let key: String = row.try_get(1).map_err(classify)?;
                        if let Some(&i) = by_key.get(key.as_str()) {
                            tx_ids.insert(i, id);
                        }
                    }
                }
                let mut entries: Vec<(i64, i64, i64)> = Vec::new();
                for &i in &accepted {
                    let (Some(t), Some(&tx_id)) = (txs.get(i), tx_ids.get(&i)) else {
                        return Err(LedgerError::Invariant("a planned transaction got no id".into()));
                    };
                    for p in t.postings() {
                        let acc = ids.get(&p.account.name()).copied().ok_or_else(|| LedgerError::Invariant("account without id".into()))?;
                        entries.push((tx_id, acc, p.msat));
                    }
                }
                for chunk in entries.chunks(PARAMS_MAX / 3) {
                    let sql = format!(
                        "INSERT INTO ledger_entries (tx_id, account_id, amount_msat) VALUES {}",
                        placeholders(chunk.len(), 3, numbered)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (t, a, m) in chunk {
                        q = q.bind(*t).bind(*a).bind(*m);
                    }
                    q.execute(&mut *c).await.map_err(classify)?;
                }
                let deltas = plan.deltas();
                for chunk in deltas.chunks(PARAMS_MAX / 2) {
                    let sql = format!(
                        "WITH d (account, delta) AS (VALUES {}) \
                         UPDATE ledger_accounts SET balance_msat = balance_msat + d.delta \
                         FROM d WHERE ledger_accounts.id = d.account",
                        placeholders(chunk.len(), 2, numbered)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (a, d) in chunk {
                        q = q.bind(*a).bind(*d);
                    }
                    let n = q.execute(&mut *c).await.map_err(classify)?.rows_affected();
                    if n != chunk.len() as u64 {
                        return Err(LedgerError::Invariant(format!("balance update touched {n} of {} accounts", chunk.len())));
                    }
                }
                let sealed: Vec<i64> = accepted.iter().filter_map(|i| tx_ids.get(i).copied()).collect();
                for chunk in sealed.chunks(PARAMS_MAX) {
                    let sql = format!(
                        "UPDATE ledger_transactions SET sealed = TRUE WHERE id IN ({})",
                        placeholders(chunk.len(), 1, numbered)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    q.execute(&mut *c).await.map_err(classify)?;
                }
                if let Some(&first) = tx_ids.get(&0) {
                    write_extra!(c, numbered, &extra, first, now);
                }
                dbtx.commit().await.map_err(classify)?;
                Ok((plan.results(&tx_ids), fresh))
            }.await);
        match out {
            Ok((results, fresh)) => {
                self.remember(fresh);
                Ok(results)
            }
            Err(e) => {
                if let LedgerError::Invariant(why) = &e {
                    self.halt(why);
                }
                Err(e)
            }
        }
    }

    /// An account's balance (0 if it never had a posting).
    pub async fn balance(&self, account: &Account) -> Result<i64, LedgerError> {
        let name = account.name();
        let b: Option<i64> = on_pool!(&self.db, pool => sqlx::query_scalar("SELECT balance_msat FROM ledger_accounts WHERE name = $1")
            .bind(&name)
            .fetch_optional(pool)
            .await
            .map_err(classify)?);
        Ok(b.unwrap_or(0))
    }

    /// Every account of one owner with its balance.
    pub async fn balances_of(&self, owner: &str) -> Result<Vec<(String, i64)>, LedgerError> {
        // `user/<owner>/` .. `user/<owner>0`: exactly the names with that prefix ('0' follows '/').
        let lo = format!("user/{owner}/");
        let hi = format!("user/{owner}0");
        let rows = on_pool!(&self.db, pool => {
            let rows = sqlx::query("SELECT name, balance_msat FROM ledger_accounts WHERE name >= $1 AND name < $2 ORDER BY name")
                .bind(&lo)
                .bind(&hi)
                .fetch_all(pool)
                .await
                .map_err(classify)?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0).map_err(classify)?, r.try_get::<i64, _>(1).map_err(classify)?)))
                .collect::<Result<Vec<_>, LedgerError>>()?
        });
        Ok(rows)
    }

    /// An account's most recent postings, newest first.
    pub async fn history(&self, account: &Account, limit: u32) -> Result<Vec<HistoryLine>, LedgerError> {
        let name = account.name();
        let lines = on_pool!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT t.id, t.idem_key, t.memo, t.posted_at_ms, e.amount_msat \
                 FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.tx_id \
                 JOIN ledger_accounts a ON a.id = e.account_id \
                 WHERE a.name = $1 ORDER BY t.id DESC LIMIT $2",
            )
            .bind(&name)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            rows.iter()
                .map(|r| {
                    Ok(HistoryLine {
                        tx_id: r.try_get(0).map_err(classify)?,
                        key: r.try_get(1).map_err(classify)?,
                        memo: r.try_get(2).map_err(classify)?,
                        posted_at_ms: r.try_get(3).map_err(classify)?,
                        msat: r.try_get(4).map_err(classify)?,
                    })
                })
                .collect::<Result<Vec<_>, LedgerError>>()?
        });
        Ok(lines)
    }

    /// Recomputes every balance from the entries and checks every invariant. Any problem halts
    /// the ledger.
    pub async fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let mut r = VerifyReport::default();
        on_pool!(&self.db, pool => {
            let mut c = pool.acquire().await.map_err(classify)?;
            let c = &mut *c;
            r.transactions = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_transactions").fetch_one(&mut *c).await.map_err(classify)?;
            r.entries = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_entries").fetch_one(&mut *c).await.map_err(classify)?;
            r.accounts = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_accounts").fetch_one(&mut *c).await.map_err(classify)?;
            r.balance_sum = sqlx::query_scalar("SELECT CAST(COALESCE(SUM(balance_msat), 0) AS BIGINT) FROM ledger_accounts")
                .fetch_one(&mut *c).await.map_err(classify)?;
            if r.balance_sum != 0 {
                r.problems.push(format!("balances sum to {} msat, not 0", r.balance_sum));
            }
            let unsealed: Vec<String> = sqlx::query_scalar("SELECT idem_key FROM ledger_transactions WHERE NOT sealed ORDER BY id LIMIT 20")
                .fetch_all(&mut *c).await.map_err(classify)?;
            for k in unsealed {
                r.problems.push(format!("transaction {k:?} is not sealed"));
            }
            let rows = sqlx::query(
                "SELECT t.idem_key, CAST(COALESCE(SUM(e.amount_msat), 0) AS BIGINT), COUNT(e.tx_id), t.postings \
                 FROM ledger_transactions t LEFT JOIN ledger_entries e ON e.tx_id = t.id \
                 GROUP BY t.id, t.idem_key, t.postings \
                 HAVING COALESCE(SUM(e.amount_msat), 0) <> 0 OR COUNT(e.tx_id) <> t.postings LIMIT 20",
            )
            .fetch_all(&mut *c).await.map_err(classify)?;
            for row in rows {
                let k: String = row.try_get(0).map_err(classify)?;
                let s: i64 = row.try_get(1).map_err(classify)?;
                let n: i64 = row.try_get(2).map_err(classify)?;
                let want: i64 = row.try_get(3).map_err(classify)?;
                r.problems.push(format!("transaction {k:?}: entries sum to {s} msat over {n} of {want} postings"));
            }
            let rows = sqlx::query(
                "SELECT a.name, a.balance_msat, CAST(COALESCE(SUM(e.amount_msat), 0) AS BIGINT), a.allow_negative \
                 FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id \
                 GROUP BY a.id, a.name, a.balance_msat, a.allow_negative \
                 HAVING a.balance_msat <> COALESCE(SUM(e.amount_msat), 0) OR (NOT a.allow_negative AND a.balance_msat < 0) LIMIT 20",
            )
            .fetch_all(&mut *c).await.map_err(classify)?;
            for row in rows {
                let name: String = row.try_get(0).map_err(classify)?;
                let bal: i64 = row.try_get(1).map_err(classify)?;
                let sum: i64 = row.try_get(2).map_err(classify)?;
                r.problems.push(format!("account {name}: balance {bal} msat, entries sum to {sum} msat"));
            }
        });
        if !r.problems.is_empty() {
            self.halt(&format!("verify: {}", r.problems.join("; ")));
        }
        Ok(r)
    }

    /// The id of the transaction posted under `key`, if any.
    pub async fn find_key(&self, key: &str) -> Result<Option<i64>, LedgerError> {
        let id: Option<i64> = on_pool!(&self.db, pool => sqlx::query_scalar("SELECT id FROM ledger_transactions WHERE idem_key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await
            .map_err(classify)?);
        Ok(id)
    }

    /// The key of the newest transaction whose key starts with `prefix` (a cursor kept in the keys
    /// themselves, e.g. the PPS crediting's `pps:<first>-<last>`). `prefix` may not contain `%`,
    /// `_` or `\\`.
    pub async fn last_key_with_prefix(&self, prefix: &str) -> Result<Option<String>, LedgerError> {
        if prefix.is_empty() || prefix.contains(['%', '_', '\\']) {
            return Err(LedgerError::Tx(crate::model::TxError::Key));
        }
        let pattern = format!("{prefix}%");
        let key: Option<String> = on_pool!(&self.db, pool => sqlx::query_scalar(
            "SELECT idem_key FROM ledger_transactions WHERE idem_key LIKE $1 ORDER BY id DESC LIMIT 1")
            .bind(&pattern)
            .fetch_optional(pool)
            .await
            .map_err(classify)?);
        Ok(key)
    }

    /// The postings of the transaction posted under `key` (account name, msat), in account order.
    pub async fn postings_of(&self, key: &str) -> Result<Vec<(String, i64)>, LedgerError> {
        let rows = on_pool!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT a.name, e.amount_msat FROM ledger_entries e \
                 JOIN ledger_transactions t ON t.id = e.tx_id JOIN ledger_accounts a ON a.id = e.account_id \
                 WHERE t.idem_key = $1 ORDER BY a.name",
            )
            .bind(key)
            .fetch_all(pool)
            .await
            .map_err(classify)?;
            rows.iter()
                .map(|r| Ok((r.try_get::<String, _>(0).map_err(classify)?, r.try_get::<i64, _>(1).map_err(classify)?)))
                .collect::<Result<Vec<_>, LedgerError>>()?
        });
        Ok(rows)
    }

    /// Ingests credited work idempotently: a record whose `(source, seq)` is already stored is
    /// skipped. One database transaction; returns how many records were new. At most
    /// [`WORK_INGEST_MAX`] records per call.
    pub async fn ingest_work(&self, source: &str, records: &[WorkRecord]) -> Result<u64, LedgerError> {
        if records.len() > WORK_INGEST_MAX {
            return Err(LedgerError::BatchTooLarge(records.len()));
        }
        if source.is_empty() || source.len() > 64 {
            return Err(LedgerError::Tx(crate::model::TxError::Key));
        }
        for r in records {
            if r.owner.is_empty() || r.owner.len() > crate::model::KEY_BYTES_MAX {
                return Err(LedgerError::Tx(crate::model::TxError::AccountName(
                    r.owner.chars().take(64).collect(),
                    "work owner must be 1..=200 bytes",
                )));
            }
            if r.work >> 126 != 0 || i64::try_from(r.seq).is_err() {
                return Err(LedgerError::Overflow {
                    account: r.owner.clone(),
                });
            }
        }
        let split = |w: u128| ((w >> 63) as i64, (w & ((1u128 << 63) - 1)) as i64);
        match &self.db {
            Db::Postgres(pool) => {
                // One statement for the whole batch: the columns travel as arrays.
                let mut seq = Vec::with_capacity(records.len());
                let mut owner = Vec::with_capacity(records.len());
                let mut hi = Vec::with_capacity(records.len());
                let mut lo = Vec::with_capacity(records.len());
                let mut ts = Vec::with_capacity(records.len());
                for r in records {
                    let (h, l) = split(r.work);
                    seq.push(i64::try_from(r.seq).unwrap_or(i64::MAX));
                    owner.push(r.owner.as_str());
                    hi.push(h);
                    lo.push(l);
                    ts.push(r.ts_ms);
                }
                let n = sqlx::query(
                    "INSERT INTO work_log (source, seq, owner, work_hi, work_lo, ts_ms) \
                     SELECT $1, * FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[]) \
                     ON CONFLICT (source, seq) DO NOTHING",
                )
                .bind(source)
                .bind(&seq)
                .bind(&owner)
                .bind(&hi)
                .bind(&lo)
                .bind(&ts)
                .execute(pool)
                .await
                .map_err(classify)?
                .rows_affected();
                Ok(n)
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(classify)?;
                let mut n = 0;
                for chunk in records.chunks(PARAMS_MAX / 6) {
                    let sql = format!(
                        "INSERT INTO work_log (source, seq, owner, work_hi, work_lo, ts_ms) VALUES {} \
                         ON CONFLICT (source, seq) DO NOTHING",
                        placeholders(chunk.len(), 6, false)
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for r in chunk {
                        let (h, l) = split(r.work);
                        q = q
                            .bind(source)
                            .bind(i64::try_from(r.seq).unwrap_or(i64::MAX))
                            .bind(r.owner.as_str())
                            .bind(h)
                            .bind(l)
                            .bind(r.ts_ms);
                    }
                    n += q.execute(&mut *tx).await.map_err(classify)?.rows_affected();
                }
                tx.commit().await.map_err(classify)?;
                Ok(n)
            }
        }
    }

    /// The highest `seq` ingested from `source` (to resume ingestion after a restart).
    ///
    /// (Window reads go back in pages of [`WINDOW_PAGE`] sequence numbers.)
    pub async fn work_high_water(&self, source: &str) -> Result<Option<u64>, LedgerError> {
        let v: Option<i64> = on_pool!(&self.db, pool => sqlx::query_scalar("SELECT MAX(seq) FROM work_log WHERE source = $1")
            .bind(source)
            .fetch_one(pool)
            .await
            .map_err(classify)?);
        Ok(v.and_then(|x| u64::try_from(x).ok()))
    }

    /// The last `window` of work from `source`, newest record first, as `(owner, work)`; the record
    /// that crosses the window's edge counts only with its part inside (PPLNS/TIDES).
    pub async fn work_window(&self, source: &str, window: u128) -> Result<Vec<(String, u128)>, LedgerError> {
        self.work_window_upto(source, u64::MAX, window).await
    }

    /// [`Ledger::work_window`] ending at record `last_seq` (inclusive): the window a block found
    /// by that share pays.
    pub async fn work_window_upto(
        &self,
        source: &str,
        last_seq: u64,
        window: u128,
    ) -> Result<Vec<(String, u128)>, LedgerError> {
        let mut out = Vec::new();
        self.walk_window(source, last_seq, window, |_, owner, take| out.push((owner, take)))
            .await?;
        Ok(out)
    }

    /// The oldest record (its seq) of the window [`Ledger::work_window_upto`] would read and the
    /// work read (at most `window`; less when the log up to `last_seq` holds less), or `None` for an
    /// empty log. Retention keeps everything from that record up ([`Ledger::prune_work`]).
    pub async fn work_window_start(
        &self,
        source: &str,
        last_seq: u64,
        window: u128,
    ) -> Result<Option<(u64, u128)>, LedgerError> {
        let mut oldest = None;
        let mut work = 0u128;
        self.walk_window(source, last_seq, window, |seq, _, w| {
            oldest = Some(seq);
            work += w;
        })
        .await?;
        Ok(oldest.map(|seq| (seq, work)))
    }

    /// Calls `visit(seq, owner, work inside the window)` for each record of a window, newest first,
    /// holding one page in memory at a time.
    async fn walk_window(
        &self,
        source: &str,
        last_seq: u64,
        window: u128,
        mut visit: impl FnMut(u64, String, u128),
    ) -> Result<(), LedgerError> {
        let mut left = window;
        let mut before = i64::try_from(last_seq).map_or(i64::MAX, |s| s.saturating_add(1));
        // Pages are seq ranges, not LIMITs: each reads at most WINDOW_PAGE rows whatever plan the
        // database picks (PostgreSQL with stale statistics bitmap-scans everything below a bound and
        // sorts it, which made a LIMIT page cost the whole remaining log). An empty range with older
        // rows below it (a gap in the sequence) jumps to the next one.
        while left > 0 {
            let page: Vec<(i64, String, i64, i64)> = on_pool!(&self.db, pool => {
                let rows = sqlx::query(
                    "SELECT seq, owner, work_hi, work_lo FROM work_log WHERE source = $1 AND seq < $2 AND seq >= $3 \
                     ORDER BY seq DESC",
                )
                .bind(source)
                .bind(before)
                .bind(before.saturating_sub(WINDOW_PAGE))
                .fetch_all(pool)
                .await
                .map_err(classify)?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0).map_err(classify)?, r.try_get(1).map_err(classify)?, r.try_get(2).map_err(classify)?, r.try_get(3).map_err(classify)?)))
                    .collect::<Result<Vec<_>, LedgerError>>()?
            });
            if page.is_empty() {
                let older: Option<i64> = on_pool!(&self.db, pool => sqlx::query_scalar(
                    "SELECT MAX(seq) FROM work_log WHERE source = $1 AND seq < $2",
                )
                .bind(source)
                .bind(before)
                .fetch_one(pool)
                .await
                .map_err(classify)?);
                match older {
                    Some(s) => {
                        before = s.saturating_add(1);
                        continue;
                    }
                    None => break,
                }
            }
            for (seq, owner, hi, lo) in page {
                before = seq;
                let w = (u128::from(hi.unsigned_abs()) << 63) | u128::from(lo.unsigned_abs());
                let take = w.min(left);
                left -= take;
                if take > 0 {
                    visit(seq.unsigned_abs(), owner, take);
                }
                if left == 0 {
                    break;
                }
            }
        }
        // The log ran out before the window filled: fine for a young log, not when retention
        // deleted what the window asks for.
        if left > 0 {
            let below = self.work_pruned_below(source).await?;
            // Retention deleted records of this source, and the window needs more than is left.
            if below > 0 {
                return Err(LedgerError::WorkPruned {
                    work_source: source.to_string(),
                    below,
                });
            }
        }
        Ok(())
    }

    /// Records of `source` below this seq were deleted by retention (0: none).
    pub async fn work_pruned_below(&self, source: &str) -> Result<u64, LedgerError> {
        let v: Option<i64> = on_pool!(&self.db, pool => sqlx::query_scalar("SELECT below_seq FROM work_log_pruned WHERE source = $1")
            .bind(source)
            .fetch_optional(pool)
            .await
            .map_err(classify)?);
        Ok(v.map_or(0, i64::unsigned_abs))
    }

    /// Retention: deletes up to `max_rows` of the oldest work records of `source` that are below
    /// `below_seq` (the caller keeps every window it may still read above it) and older than
    /// `older_than_ms` (unix ms), and records the mark ([`Ledger::work_pruned_below`]) in the same
    /// transaction. Records go in seq order: one is deleted once a record after it (up to the chunk's
    /// newest) is older than the cutoff. The newest record is never deleted (the ingest cursor).
    /// Returns the number deleted.
    pub async fn prune_work(
        &self,
        source: &str,
        below_seq: u64,
        older_than_ms: i64,
        max_rows: u64,
    ) -> Result<u64, LedgerError> {
        self.check_halted()?;
        let below = i64::try_from(below_seq).unwrap_or(i64::MAX);
        let chunk = i64::try_from(max_rows).unwrap_or(i64::MAX);
        on_pool!(&self.db, pool => {
            let (oldest, newest): (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM work_log WHERE source = $1")
                    .bind(source)
                    .fetch_one(pool)
                    .await
                    .map_err(classify)?;
            let (Some(oldest), Some(newest)) = (oldest, newest) else { return Ok(0) };
            let bound = below.min(newest).min(oldest.saturating_add(chunk));
            let upto: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM work_log WHERE source = $1 AND seq >= $2 AND seq < $3 AND ts_ms < $4",
            )
            .bind(source)
            .bind(oldest)
            .bind(bound)
            .bind(older_than_ms)
            .fetch_one(pool)
            .await
            .map_err(classify)?;
            let Some(upto) = upto else { return Ok(0) };
            let mut tx = pool.begin().await.map_err(classify)?;
            let deleted = sqlx::query("DELETE FROM work_log WHERE source = $1 AND seq >= $2 AND seq <= $3")
                .bind(source)
                .bind(oldest)
                .bind(upto)
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
            sqlx::query(
                "INSERT INTO work_log_pruned (source, below_seq) VALUES ($1, $2) \
                 ON CONFLICT (source) DO UPDATE SET below_seq = excluded.below_seq \
                 WHERE excluded.below_seq > work_log_pruned.below_seq",
            )
            .bind(source)
            .bind(upto.saturating_add(1))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            Ok(deleted)
        })
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        on_pool!(&self.db, pool => pool.close().await);
    }
}
