//! The ledger in a database: SQLite (a file in the data directory, the default) or PostgreSQL
//! (`postgres://…`), one schema, versioned migrations applied at open.
//!
//! Posting one [`Transaction`] is one database transaction: insert the transaction row (its
//! idempotency key is unique; a repeated key with the same content returns the first posting, with
//! other content it is refused), insert every entry, move every balance with a conditional update
//! (`… WHERE allow_negative OR balance + amount >= 0`, so an overdraft is a typed error and nothing is
//! written), then seal the transaction, which the schema allows only if its entries balance.
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

/// Versioned migrations, embedded in the binary: (version, description, SQL). Same versions and
/// tables for both backends; only the dialect differs.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "ledger", include_str!("../migrations/sqlite/0001_ledger.sql"))];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "ledger",
    include_str!("../migrations/postgres/0001_ledger.sql"),
)];

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

/// The ledger.
#[derive(Debug)]
pub struct Ledger {
    db: Db,
    ids: Mutex<HashMap<String, i64>>,
    halted: Mutex<Option<String>>,
}

/// Posts one transaction on an open connection (inside a database transaction). Expanded per driver.
macro_rules! post_on {
    ($conn:expr, $tx:expr, $now:expr, $ids:expr, $fresh:expr, $added:expr) => {
        async {
            let tx: &Transaction = $tx;
            let fp = tx.fingerprint();
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO ledger_transactions (idem_key, fingerprint, memo, posted_at_ms, postings) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idem_key) DO NOTHING RETURNING id",
            )
            .bind(tx.key())
            .bind(&fp)
            .bind(tx.memo())
            .bind($now)
            .bind(i64::try_from(tx.postings().len()).unwrap_or(i64::MAX))
            .fetch_optional(&mut *$conn)
            .await
            .map_err(classify)?;
            match inserted {
                None => {
                    let row =
                        sqlx::query("SELECT id, fingerprint FROM ledger_transactions WHERE idem_key = $1")
                            .bind(tx.key())
                            .fetch_one(&mut *$conn)
                            .await
                            .map_err(classify)?;
                    let id: i64 = row.try_get(0).map_err(classify)?;
                    let existing: String = row.try_get(1).map_err(classify)?;
                    if existing == fp {
                        Ok::<Posted, LedgerError>(Posted::Duplicate(id))
                    } else {
                        Err(LedgerError::KeyConflict {
                            key: tx.key().to_string(),
                            existing: id,
                        })
                    }
                }
                Some(tx_id) => {
                    for p in tx.postings() {
                        let name = p.account.name();
                        let cached = $ids.lock().ok().and_then(|m| m.get(&name).copied());
                        let account_id = match cached.or_else(|| $fresh.get(&name).copied()) {
                            Some(id) => id,
                            None => {
                                sqlx::query(
                                    "INSERT INTO ledger_accounts (name, allow_negative) VALUES ($1, $2) \
                                 ON CONFLICT (name) DO NOTHING",
                                )
                                .bind(&name)
                                .bind(p.account.allow_negative())
                                .execute(&mut *$conn)
                                .await
                                .map_err(classify)?;
                                let id: i64 =
                                    sqlx::query_scalar("SELECT id FROM ledger_accounts WHERE name = $1")
                                        .bind(&name)
                                        .fetch_one(&mut *$conn)
                                        .await
                                        .map_err(classify)?;
                                $fresh.insert(name.clone(), id);
                                $added.push(name.clone());
                                id
                            }
                        };
                        sqlx::query(
                            "INSERT INTO ledger_entries (tx_id, account_id, amount_msat) VALUES ($1, $2, $3)",
                        )
                        .bind(tx_id)
                        .bind(account_id)
                        .bind(p.msat)
                        .execute(&mut *$conn)
                        .await
                        .map_err(classify)?;
                        let moved = sqlx::query(
                            "UPDATE ledger_accounts SET balance_msat = balance_msat + $1 WHERE id = $2 \
                         AND (allow_negative OR balance_msat + $1 >= 0) \
                         AND balance_msat + $1 BETWEEN -2100000000000000000 AND 2100000000000000000",
                        )
                        .bind(p.msat)
                        .bind(account_id)
                        .execute(&mut *$conn)
                        .await
                        .map_err(classify)?
                        .rows_affected();
                        if moved != 1 {
                            let balance: i64 =
                                sqlx::query_scalar("SELECT balance_msat FROM ledger_accounts WHERE id = $1")
                                    .bind(account_id)
                                    .fetch_one(&mut *$conn)
                                    .await
                                    .map_err(classify)?;
                            return Err(if i128::from(balance) + i128::from(p.msat) < 0 {
                                LedgerError::InsufficientFunds {
                                    account: name,
                                    balance,
                                    posting: p.msat,
                                }
                            } else {
                                LedgerError::Overflow { account: name }
                            });
                        }
                    }
                    sqlx::query("UPDATE ledger_transactions SET sealed = TRUE WHERE id = $1")
                        .bind(tx_id)
                        .execute(&mut *$conn)
                        .await
                        .map_err(classify)?;
                    Ok(Posted::New(tx_id))
                }
            }
        }
        .await
    };
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

    fn after(&self, r: &Result<Posted, LedgerError>) {
        if let Err(LedgerError::Invariant(why)) = r {
            self.halt(why);
        }
    }

    /// Posts one transaction.
    pub async fn post(&self, tx: &Transaction) -> Result<Posted, LedgerError> {
        self.check_halted()?;
        let now = now_ms();
        let mut fresh: HashMap<String, i64> = HashMap::new();
        let mut added: Vec<String> = Vec::new();
        let r: Result<Posted, LedgerError> = on_pool!(&self.db, pool => async {
            let mut dbtx = pool.begin().await.map_err(classify)?;
            let r = post_on!(&mut *dbtx, tx, now, self.ids, fresh, added);
            match r {
                Ok(p) => {
                    dbtx.commit().await.map_err(classify)?;
                    Ok(p)
                }
                Err(e) => {
                    let _ = dbtx.rollback().await;
                    Err(e)
                }
            }
        }.await);
        if r.is_ok() {
            self.remember(fresh);
        }
        self.after(&r);
        r
    }

    /// Posts many transactions in one database transaction (one commit, one fsync). Each either
    /// posts or fails on its own (a savepoint each); the outer error is for the database or a halt.
    pub async fn post_batch(
        &self,
        txs: &[Transaction],
    ) -> Result<Vec<Result<Posted, LedgerError>>, LedgerError> {
        self.check_halted()?;
        if txs.len() > BATCH_MAX {
            return Err(LedgerError::BatchTooLarge(txs.len()));
        }
        let now = now_ms();
        let mut fresh_all: HashMap<String, i64> = HashMap::new();
        let out: Result<Vec<Result<Posted, LedgerError>>, LedgerError> = on_pool!(&self.db, pool => async {
            let mut dbtx = pool.begin().await.map_err(classify)?;
            let mut results = Vec::with_capacity(txs.len());
            for tx in txs {
                let mut sp = sqlx::Acquire::begin(&mut *dbtx).await.map_err(classify)?;
                let mut added: Vec<String> = Vec::new();
                let r = post_on!(&mut *sp, tx, now, self.ids, fresh_all, added);
                let r = match r {
                    Ok(p) => sp.commit().await.map_err(classify).map(|()| p),
                    Err(e) => {
                        let _ = sp.rollback().await;
                        Err(e)
                    }
                };
                match r {
                    Ok(p) => results.push(Ok(p)),
                    Err(e @ (LedgerError::Invariant(_) | LedgerError::Unavailable(_))) => {
                        let _ = dbtx.rollback().await;
                        return Err(e);
                    }
                    Err(e) => {
                        // Accounts created inside the rolled-back savepoint are gone again.
                        for n in added {
                            fresh_all.remove(&n);
                        }
                        results.push(Err(e));
                    }
                }
            }
            dbtx.commit().await.map_err(classify)?;
            Ok(results)
        }.await);
        match &out {
            Ok(_) => self.remember(fresh_all),
            Err(LedgerError::Invariant(why)) => self.halt(why),
            Err(_) => {}
        }
        out
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

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        on_pool!(&self.db, pool => pool.close().await);
    }
}
