//! The durable log of accepted shares and found blocks.
//!
//! SQLite in the data directory, WAL journal, `synchronous=FULL`. One writer task takes records from a
//! bounded queue ([`QUEUE_MAX`]), groups whatever is waiting (up to [`BATCH_MAX`]) into one transaction
//! and acknowledges each record only after the commit returns: a share is answered `true` only once
//! its row is on disk, and a `kill -9` at any moment loses no acknowledged share or block.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use tokio::sync::{mpsc, oneshot};
use units::Difficulty;

/// Records waiting for the writer at most; a full queue makes submitters wait (backpressure).
pub const QUEUE_MAX: usize = 65_536;
/// Records per transaction at most.
pub const BATCH_MAX: usize = 8_192;

/// The pending acknowledgement of a queued record.
#[derive(Debug)]
pub struct Committed(oneshot::Receiver<Result<(), LogError>>);

impl Committed {
    /// Waits for the commit.
    pub async fn wait(self) -> Result<(), LogError> {
        self.0
            .await
            .map_err(|_| LogError::Failed("writer stopped before committing".into()))?
    }
}

/// An accepted share.
#[derive(Clone, Debug)]
pub struct ShareRecord {
    /// When accepted (unix ms).
    pub ts_ms: i64,
    /// Payout address.
    pub address: String,
    /// Worker name (after the dot).
    pub worker: String,
    /// Global job number.
    pub job_id: i64,
    /// Assigned difficulty (credited).
    pub difficulty: Difficulty,
    /// Extranonce1.
    pub extranonce1: Vec<u8>,
    /// Extranonce2.
    pub extranonce2: Vec<u8>,
    /// The 80-byte header (proves the work with the hash).
    pub header: [u8; 80],
    /// Whether it was a block.
    pub is_block: bool,
}

/// A found block.
#[derive(Clone, Debug)]
pub struct BlockRecord {
    /// When found (unix ms).
    pub ts_ms: i64,
    /// Height.
    pub height: u32,
    /// Hash (display hex).
    pub hash: String,
    /// Finder's address.
    pub finder: String,
    /// The serialized block.
    pub block: Vec<u8>,
    /// [`FATE_SUBMITTING`] (the intent, written before the block goes to the chain), then
    /// `accepted` or the node's reject reason.
    pub fate: String,
}

/// A block row's fate from its intent until the chain answered: written (durably) before the block
/// is submitted, so a crash between the submission and the answer never loses the block's credit;
/// `Pool::start` settles such rows against the chain ([`crate::Pool::start`]).
pub const FATE_SUBMITTING: &str = "submitting";

/// A job as issued: what a PPS/FPPS credit for its shares is computed from (written once per job,
/// before any share of it can be acknowledged). The row also gets `shares_before`, the newest share
/// queued before it: where a TIDES window for the job's blocks ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// Global job number (the shares' `job_id`).
    pub job_id: i64,
    /// When issued (unix ms).
    pub ts_ms: i64,
    /// Height of the block the job builds.
    pub height: i64,
    /// Its nbits (the network target the share is measured against).
    pub bits: u32,
    /// Block subsidy `B` (the template's coinbase value minus its fees), sat.
    pub subsidy_sat: i64,
    /// The template's fees, sat.
    pub fees_sat: i64,
    /// `E[F]` for FPPS at issue: the mean fees of the best chain's recent blocks (at most 144), sat.
    pub expected_fees_sat: i64,
    /// The coinbase payee plan the job's coinbase was built from ([`crate::payees::PlanRef`] as
    /// JSON), if it pays payees.
    pub payout_plan: Option<String>,
}

enum Record {
    Share(ShareRecord),
    Block(BlockRecord),
    Job(JobRecord),
    Prune(PruneRequest, oneshot::Sender<Result<Pruned, LogError>>),
}

/// Job rows are pruned only while at most this many shares wait for accounting.
pub const JOBS_PRUNE_BACKLOG_MAX: i64 = 10_000;

/// One retention step ([`ShareLog::prune`]).
#[derive(Debug, Clone, Copy)]
struct PruneRequest {
    accounted_upto: i64,
    older_than_ms: i64,
    max_rows: i64,
}

/// What one retention step deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Share rows.
    pub shares: u64,
    /// Job rows.
    pub jobs: u64,
}

/// The newest job rows are kept whatever their age: every job a miner may still submit to is among
/// them (a connection keeps `PoolConfig::jobs_kept` jobs), and the newest one resumes the job
/// counter after a restart.
pub const JOBS_KEPT_ROWS: i64 = 1_024;

/// Why a record could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The database failed or the writer stopped; nothing in the batch was acknowledged.
    #[error("share log: {0}")]
    Failed(String),
    /// The disk (or the database's size limit) is full: shares are refused, never acknowledged,
    /// until space is freed; retention ([`ShareLog::prune`]) frees it over time.
    #[error("share log: the disk is full ({0}); shares are refused until space is freed")]
    DiskFull(String),
}

impl LogError {
    /// Classifies a database error (SQLite's `SQLITE_FULL`, code 13, is [`LogError::DiskFull`]).
    fn db(e: sqlx::Error) -> LogError {
        match &e {
            sqlx::Error::Database(d) if d.code().is_some_and(|c| c == "13") => {
                LogError::DiskFull(d.message().to_string())
            }
            _ => LogError::Failed(e.to_string()),
        }
    }
}

/// Handle to the share log.
#[derive(Clone, Debug)]
pub struct ShareLog {
    tx: mpsc::Sender<(Record, oneshot::Sender<Result<(), LogError>>)>,
    db: SqlitePool,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS shares (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        address TEXT NOT NULL,
        worker TEXT NOT NULL,
        job_id INTEGER NOT NULL,
        diff_int INTEGER NOT NULL CHECK (diff_int >= 0),
        diff_frac INTEGER NOT NULL CHECK (diff_frac >= 0 AND diff_frac < 4294967296),
        extranonce1 BLOB NOT NULL,
        extranonce2 BLOB NOT NULL,
        header BLOB NOT NULL CHECK (length(header) = 80),
        is_block INTEGER NOT NULL)",
    // Nothing reads shares by address (per-address figures come from memory and the ledger's work
    // log); the index of earlier versions cost a second B-tree insert per share.
    "DROP INDEX IF EXISTS shares_address_ts",
    // Accounting finds a block's own share by its header; only block shares are indexed.
    "CREATE INDEX IF NOT EXISTS shares_block_header ON shares(header) WHERE is_block = 1",
    // One row per issued job; job ids stay unique across restarts (the counter resumes above them).
    "CREATE TABLE IF NOT EXISTS jobs (
        job_id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        height INTEGER NOT NULL CHECK (height >= 0),
        bits INTEGER NOT NULL CHECK (bits >= 0 AND bits < 4294967296),
        subsidy_sat INTEGER NOT NULL CHECK (subsidy_sat >= 0),
        fees_sat INTEGER NOT NULL CHECK (fees_sat >= 0),
        expected_fees_sat INTEGER NOT NULL CHECK (expected_fees_sat >= 0),
        shares_before INTEGER NOT NULL DEFAULT 0,
        payout_plan TEXT)",
    // Retention: share rows below `below` were deleted (`ShareLog::prune`); accounting refuses a
    // cursor below it (a ledger restored from an older backup would otherwise skip them silently).
    "CREATE TABLE IF NOT EXISTS retention (name TEXT PRIMARY KEY, below INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS blocks (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        height INTEGER NOT NULL,
        hash TEXT NOT NULL,
        finder TEXT NOT NULL,
        block BLOB NOT NULL,
        fate TEXT NOT NULL)",
    // Fates are written and blocks found by hash (set_block_fate, settlement).
    "CREATE INDEX IF NOT EXISTS blocks_hash ON blocks(hash)",
];

impl ShareLog {
    /// Opens (creating) `path` and starts the writer; the writer ends when every handle is dropped.
    pub async fn open(path: &Path) -> Result<(ShareLog, tokio::task::JoinHandle<()>), LogError> {
        ShareLog::open_with(path, None).await
    }

    /// [`ShareLog::open`] with the database capped at `max_bytes` (SQLite's `max_page_count`):
    /// past it every commit fails with [`LogError::DiskFull`], exactly as on a full disk, and shares
    /// are refused until retention frees pages (they are reused).
    pub async fn open_with(
        path: &Path,
        max_bytes: Option<u64>,
    ) -> Result<(ShareLog, tokio::task::JoinHandle<()>), LogError> {
        let mut opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        // Commits never checkpoint (a checkpoint copies the WAL into the database and fsyncs it:
        // milliseconds inside one share's commit); `checkpoint_loop` does it beside them.
        opts = opts
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", WAL_FILE_BYTES_KEPT.to_string());
        if let Some(bytes) = max_bytes {
            opts = opts.pragma("max_page_count", (bytes / 4096).max(1).to_string());
        }
        // One writer plus readers for the API.
        let db = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| LogError::Failed(format!("opening {}: {e}", path.display())))?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&db)
                .await
                .map_err(|e| LogError::Failed(format!("{}: schema: {e}", path.display())))?;
        }
        // Share logs written before coinbase payees had no plan column.
        let has_plan: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = 'payout_plan'")
                .fetch_one(&db)
                .await
                .map_err(|e| LogError::Failed(format!("{}: schema: {e}", path.display())))?;
        if has_plan == 0 {
            sqlx::query("ALTER TABLE jobs ADD COLUMN payout_plan TEXT")
                .execute(&db)
                .await
                .map_err(|e| LogError::Failed(format!("{}: schema: {e}", path.display())))?;
        }
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        // The checkpointer belongs to the writer: it stops when the writer does.
        let (db2, db3) = (db.clone(), db.clone());
        let writer = tokio::spawn(async move {
            let wal_pages = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
            let checkpointer = tokio::spawn(checkpoint_loop(db3, wal_pages.clone()));
            write_loop(db2, rx, wal_pages).await;
            checkpointer.abort();
        });
        Ok((ShareLog { tx, db }, writer))
    }

    /// Appends a share and waits until it is committed.
    pub async fn append_share(&self, r: ShareRecord) -> Result<(), LogError> {
        self.submit(Record::Share(r)).await
    }

    /// Queues a share for the next group commit and returns the commit's acknowledgement without
    /// waiting for it, so a connection can queue several pipelined shares into one commit. The share
    /// is durable only once [`Committed::wait`] returns `Ok`.
    pub async fn enqueue_share(&self, r: ShareRecord) -> Result<Committed, LogError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((Record::Share(r), ack))
            .await
            .map_err(|_| LogError::Failed("writer stopped".into()))?;
        Ok(Committed(done))
    }

    /// Queues a job's row without waiting: every share of the job is queued after it (the job is
    /// published only once this returns) and the single writer commits in queue order, so a share
    /// is never durable before its job; a job row whose commit failed is retried with the next batch.
    pub async fn enqueue_job(&self, r: JobRecord) -> Result<(), LogError> {
        let (ack, _done) = oneshot::channel();
        self.tx
            .send((Record::Job(r), ack))
            .await
            .map_err(|_| LogError::Failed("writer stopped".into()))
    }

    /// The highest job number logged (0 if none): new job numbers start above it, so they are
    /// unique across restarts. Logs from before the jobs table are read once from the shares.
    pub async fn max_job_id(&self) -> Result<u64, LogError> {
        let err = LogError::db;
        let jobs: Option<i64> = sqlx::query_scalar("SELECT MAX(job_id) FROM jobs")
            .fetch_one(&self.db)
            .await
            .map_err(err)?;
        let max = match jobs {
            Some(j) => j,
            None => sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(job_id) FROM shares")
                .fetch_one(&self.db)
                .await
                .map_err(err)?
                .unwrap_or(0),
        };
        Ok(max.unsigned_abs())
    }

    /// Appends a block and waits until it is committed.
    pub async fn append_block(&self, r: BlockRecord) -> Result<(), LogError> {
        self.submit(Record::Block(r)).await
    }

    /// Records the chain's answer for a block whose intent row ([`FATE_SUBMITTING`]) is logged.
    pub async fn set_block_fate(&self, hash: &str, fate: &str) -> Result<(), LogError> {
        sqlx::query("UPDATE blocks SET fate = ? WHERE hash = ? AND fate = ?")
            .bind(fate)
            .bind(hash)
            .bind(FATE_SUBMITTING)
            .execute(&self.db)
            .await
            .map(|_| ())
            .map_err(LogError::db)
    }

    /// Blocks whose intent was logged at or before `logged_before_ms` (unix ms) but whose fate was
    /// not (a crash between the two, or a fate write that failed): (hash, serialized block).
    pub async fn submitting_blocks(&self, logged_before_ms: i64) -> Result<Vec<(String, Vec<u8>)>, LogError> {
        sqlx::query_as::<_, (String, Vec<u8>)>(
            "SELECT hash, block FROM blocks WHERE fate = ? AND ts_ms <= ? ORDER BY id",
        )
        .bind(FATE_SUBMITTING)
        .bind(logged_before_ms)
        .fetch_all(&self.db)
        .await
        .map_err(LogError::db)
    }

    async fn submit(&self, r: Record) -> Result<(), LogError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((r, ack))
            .await
            .map_err(|_| LogError::Failed("writer stopped".into()))?;
        done.await
            .map_err(|_| LogError::Failed("writer stopped before committing".into()))?
    }

    /// Retention, one bounded step: deletes up to `max_rows` of the oldest share rows that
    /// accounting is done with (id ≤ `accounted_upto`: copied to the work log, and credited under
    /// PPS/FPPS), older than `older_than_ms` (unix ms), and not the newest row (share ids are
    /// rowids: the newest keeps the next id above every id accounting has seen), then job rows older than
    /// that which no remaining work needs. Kept whatever their age: block shares (a block is credited
    /// and settled by its share's header and job), the newest [`JOBS_KEPT_ROWS`] jobs, and the jobs
    /// of shares not yet accounted. Rows go in id order: a share is deleted once a share logged
    /// after it (up to the step's newest) is older than the cutoff, so ages within a step differ by
    /// the commit queue's wait (milliseconds). It runs on the writer between group commits, after
    /// the acknowledgements of the batch before it, so it delays no waiting share by more than one
    /// step.
    pub async fn prune(
        &self,
        accounted_upto: i64,
        older_than_ms: i64,
        max_rows: u64,
    ) -> Result<Pruned, LogError> {
        let (ack, done) = oneshot::channel();
        let req = PruneRequest {
            accounted_upto,
            older_than_ms,
            max_rows: i64::try_from(max_rows.max(1)).unwrap_or(i64::MAX),
        };
        self.tx
            .send((Record::Prune(req, ack), oneshot::channel().0))
            .await
            .map_err(|_| LogError::Failed("writer stopped".into()))?;
        done.await
            .map_err(|_| LogError::Failed("writer stopped before pruning".into()))?
    }

    /// The newest share id (0 if none).
    pub async fn max_id(&self) -> Result<i64, LogError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM shares")
            .fetch_one(&self.db)
            .await
            .map_err(LogError::db)?;
        Ok(v.unwrap_or(0))
    }

    /// Share rows below this id were deleted by retention (0: none).
    pub async fn pruned_below(&self) -> Result<i64, LogError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT below FROM retention WHERE name = 'shares'")
            .fetch_optional(&self.db)
            .await
            .map_err(LogError::db)?;
        Ok(v.unwrap_or(0))
    }

    /// Number of shares logged.
    pub async fn share_count(&self) -> Result<i64, LogError> {
        let row = sqlx::query("SELECT COUNT(*) FROM shares")
            .fetch_one(&self.db)
            .await
            .map_err(LogError::db)?;
        row.try_get::<i64, _>(0).map_err(LogError::db)
    }

    /// Headers of every logged share, oldest first (audits and tests).
    pub async fn headers(&self) -> Result<Vec<Vec<u8>>, LogError> {
        let rows = sqlx::query("SELECT header FROM shares ORDER BY id")
            .fetch_all(&self.db)
            .await
            .map_err(LogError::db)?;
        rows.iter()
            .map(|r| r.try_get::<Vec<u8>, _>(0).map_err(LogError::db))
            .collect()
    }

    /// Hashes (display hex) and fates of logged blocks, oldest first.
    pub async fn blocks(&self) -> Result<Vec<(String, String)>, LogError> {
        sqlx::query_as::<_, (String, String)>("SELECT hash, fate FROM blocks ORDER BY id")
            .fetch_all(&self.db)
            .await
            .map_err(LogError::db)
    }

    /// The database (for read-only API queries).
    pub fn db(&self) -> &SqlitePool {
        &self.db
    }
}

async fn write_loop(
    db: SqlitePool,
    mut rx: mpsc::Receiver<(Record, oneshot::Sender<Result<(), LogError>>)>,
    wal_pages: std::sync::Arc<std::sync::atomic::AtomicI64>,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    // One connection for every commit: its prepared statements stay cached (a pool would rotate
    // the writer over its connections, each with a cold cache and its own worker thread).
    let mut conn: Option<sqlx::pool::PoolConnection<sqlx::Sqlite>> = None;
    let mut retry_jobs: Vec<JobRecord> = Vec::new();
    // Retention steps run after the batch's commit and acknowledgements.
    let mut prunes = Vec::new();
    while let Some(first) = rx.recv().await {
        sort(first, &mut batch, &mut prunes);
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => sort(r, &mut batch, &mut prunes),
                Err(_) => break,
            }
        }
        // Job rows of a failed commit go first in this one (nobody waits for them).
        if !retry_jobs.is_empty() {
            let retried: Vec<_> = retry_jobs
                .drain(..)
                .map(|j| (Record::Job(j), oneshot::channel().0))
                .collect();
            batch.splice(0..0, retried);
        }
        let res = if batch.is_empty() {
            Ok(())
        } else {
            match conn.as_mut() {
                Some(c) => commit(c, &batch).await,
                None => match db.acquire().await {
                    Ok(c) => commit(conn.insert(c), &batch).await,
                    Err(e) => Err(LogError::Failed(format!("no database connection: {e}"))),
                },
            }
        };
        if let Err(e) = &res {
            tracing::error!(error = %e, records = batch.len(), "share log commit failed; nothing in this batch was acknowledged");
            // Start the next commit on a fresh connection.
            conn = None;
            retry_jobs.extend(batch.iter().filter_map(|(r, _)| match r {
                Record::Job(j) => Some(j.clone()),
                _ => None,
            }));
        }
        for (_, ack) in batch.drain(..) {
            let _ = ack.send(res.clone());
        }
        // The background checkpoint fell behind: one here, with no commit running, copies
        // everything, so the next commit restarts the WAL.
        if wal_pages.load(std::sync::atomic::Ordering::Relaxed) > WAL_PAGES_INLINE {
            if let Some(c) = conn.as_mut() {
                match checkpoint(c).await {
                    Ok((log, done)) => {
                        // What is left after it (0 once the WAL restarts at the next commit).
                        wal_pages.store(log - done, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "share log checkpoint failed"),
                }
            }
        }
        for (req, ack) in prunes.drain(..) {
            let res = match conn.as_mut() {
                Some(c) => prune(c, req).await,
                None => match db.acquire().await {
                    Ok(c) => prune(conn.insert(c), req).await,
                    Err(e) => Err(LogError::Failed(format!("no database connection: {e}"))),
                },
            };
            if res.is_err() {
                conn = None;
            }
            let _ = ack.send(res);
        }
    }
}

/// How often the WAL is checkpointed into the database, off the commit path (SQLite's automatic
/// checkpoint, which runs inside the commit that crosses 1,000 WAL pages, is off).
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// WAL pages past which the writer itself checkpoints between two batches. A checkpoint beside
/// commits that keep coming rarely copies the very last frame, and SQLite restarts the WAL from its
/// start only after a checkpoint copied everything; one on the writer's connection, with no commit
/// running, does, so the WAL stays bounded under any load (as with SQLite's automatic checkpoint,
/// but only when the background one falls behind).
pub const WAL_PAGES_INLINE: i64 = 4_096;
/// The WAL file is truncated to this size when it restarts (it only grows otherwise).
pub const WAL_FILE_BYTES_KEPT: u64 = 64 * 1024 * 1024;

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] on a reader connection, PASSIVE (it never waits
/// for readers or the writer, so it never delays a commit), and publishes the WAL's size in pages
/// for the writer ([`WAL_PAGES_INLINE`]).
/// A batch's records go to the commit; retention steps wait for the commit to finish.
type Ack = oneshot::Sender<Result<(), LogError>>;
fn sort(
    (r, ack): (Record, Ack),
    batch: &mut Vec<(Record, Ack)>,
    prunes: &mut Vec<(PruneRequest, oneshot::Sender<Result<Pruned, LogError>>)>,
) {
    match r {
        Record::Prune(req, done) => prunes.push((req, done)),
        r => batch.push((r, ack)),
    }
}

/// A PASSIVE checkpoint on `c`: (WAL frames, frames copied into the database).
async fn checkpoint(c: &mut sqlx::SqliteConnection) -> Result<(i64, i64), sqlx::Error> {
    let (_, log, done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(c)
        .await?;
    Ok((log, done))
}

async fn checkpoint_loop(db: SqlitePool, wal_pages: std::sync::Arc<std::sync::atomic::AtomicI64>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let res = match db.acquire().await {
            Ok(mut c) => checkpoint(&mut c).await,
            Err(e) => Err(e),
        };
        match res {
            Ok((log, _)) => wal_pages.store(log, std::sync::atomic::Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, "share log checkpoint failed (retried; the WAL grows meanwhile)")
            }
        }
    }
}

/// One retention step on the writer's connection ([`ShareLog::prune`]).
async fn prune(conn: &mut sqlx::SqliteConnection, req: PruneRequest) -> Result<Pruned, LogError> {
    use sqlx::Connection as _;
    let err = LogError::db;
    // The oldest share that is not a block's (block rows stay, and a few of them sit at the start).
    let oldest: Option<i64> =
        sqlx::query_scalar("SELECT id FROM shares WHERE is_block = 0 ORDER BY id LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(err)?;
    // The newest row always stays: share ids are SQLite rowids (max + 1), and deleting the newest
    // would hand its id to the next share, which accounting (past that id already) would skip.
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM shares")
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
    let mut out = Pruned::default();
    let mut tx = conn.begin().await.map_err(err)?;
    if let (Some(lo), Some(newest)) = (oldest, newest) {
        let bound = req
            .accounted_upto
            .min(newest - 1)
            .min(lo.saturating_add(req.max_rows - 1));
        let upto: Option<i64> =
            sqlx::query_scalar("SELECT MAX(id) FROM shares WHERE id >= ? AND id <= ? AND ts_ms < ?")
                .bind(lo)
                .bind(bound)
                .bind(req.older_than_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
        if let Some(upto) = upto {
            out.shares = sqlx::query("DELETE FROM shares WHERE id >= ? AND id <= ? AND is_block = 0")
                .bind(lo)
                .bind(upto)
                .execute(&mut *tx)
                .await
                .map_err(err)?
                .rows_affected();
            sqlx::query(
                "INSERT INTO retention (name, below) VALUES ('shares', ?) \
                 ON CONFLICT (name) DO UPDATE SET below = excluded.below WHERE excluded.below > retention.below",
            )
            .bind(upto.saturating_add(1))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        // Job rows wait while accounting is far behind: finding the oldest job of the unaccounted
        // shares would scan them all on the writer.
        if newest.saturating_sub(req.accounted_upto) > JOBS_PRUNE_BACKLOG_MAX {
            tx.commit().await.map_err(err)?;
            return Ok(out);
        }
    }
    out.jobs = sqlx::query(
        "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs WHERE ts_ms < ?1 \
           AND job_id <= (SELECT MAX(job_id) FROM jobs) - ?2 \
           AND job_id < COALESCE((SELECT MIN(job_id) FROM shares WHERE id > ?3), 9223372036854775807) \
           AND job_id NOT IN (SELECT job_id FROM shares INDEXED BY shares_block_header WHERE is_block = 1) \
           ORDER BY job_id LIMIT ?4)",
    )
    .bind(req.older_than_ms)
    .bind(JOBS_KEPT_ROWS)
    .bind(req.accounted_upto)
    .bind(req.max_rows)
    .execute(&mut *tx)
    .await
    .map_err(err)?
    .rows_affected();
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// Rows per multi-row INSERT at most. With one writer connection, every statement shape (1 to this
/// many rows) stays in its statement cache (sqlx keeps 100 per connection), so after warm-up no
/// commit prepares a statement.
pub const ROWS_PER_INSERT: usize = 64;

/// Inserts `shares` in order, at most [`ROWS_PER_INSERT`] per statement.
async fn insert_shares(
    tx: &mut sqlx::SqliteConnection,
    shares: &[(&ShareRecord, i64, i64)],
) -> Result<(), LogError> {
    for chunk in shares.chunks(ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO shares (ts_ms, address, worker, job_id, diff_int, diff_frac, extranonce1, extranonce2, header, is_block) ",
        );
        q.push_values(chunk, |mut b, (s, int, frac)| {
            b.push_bind(s.ts_ms)
                .push_bind(s.address.as_str())
                .push_bind(s.worker.as_str())
                .push_bind(s.job_id)
                .push_bind(*int)
                .push_bind(*frac)
                .push_bind(s.extranonce1.as_slice())
                .push_bind(s.extranonce2.as_slice())
                .push_bind(&s.header[..])
                .push_bind(s.is_block);
        });
        q.build().execute(&mut *tx).await.map_err(LogError::db)?;
    }
    Ok(())
}

/// A share and its difficulty as the two columns of the fixed-point value (integer part, 32-bit
/// fraction).
fn share_row(s: &ShareRecord) -> Result<(&ShareRecord, i64, i64), LogError> {
    let p = s.difficulty.to_fixed();
    let int = i64::try_from(p >> 32).map_err(|_| LogError::Failed("difficulty too large".into()))?;
    let frac = i64::try_from(p & 0xffff_ffff).unwrap_or(0);
    Ok((s, int, frac))
}

async fn commit(
    conn: &mut sqlx::SqliteConnection,
    batch: &[(Record, oneshot::Sender<Result<(), LogError>>)],
) -> Result<(), LogError> {
    use sqlx::Connection as _;
    let err = LogError::db;
    // The common case at low load: a few shares and nothing else. One multi-row INSERT is its own
    // transaction (autocommit; durable when it returns, synchronous=FULL), which saves the BEGIN and
    // COMMIT round trips to SQLite's thread on the latency every share waits for.
    if batch.len() <= ROWS_PER_INSERT && batch.iter().all(|(r, _)| matches!(r, Record::Share(_))) {
        let mut shares = Vec::with_capacity(batch.len());
        for (r, _) in batch {
            if let Record::Share(s) = r {
                shares.push(share_row(s)?);
            }
        }
        return insert_shares(conn, &shares).await;
    }
    // Rows go in queue order: a job row's `shares_before` is the newest share queued before it.
    let mut tx = conn.begin().await.map_err(err)?;
    let mut shares = Vec::with_capacity(batch.len());
    let mut blocks = Vec::new();
    for (r, _) in batch {
        match r {
            Record::Job(j) => {
                insert_shares(&mut tx, &shares).await?;
                shares.clear();
                sqlx::query(
                    "INSERT INTO jobs (job_id, ts_ms, height, bits, subsidy_sat, fees_sat, expected_fees_sat, payout_plan, shares_before) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(id), 0) FROM shares)) ON CONFLICT (job_id) DO NOTHING",
                )
                .bind(j.job_id)
                .bind(j.ts_ms)
                .bind(j.height)
                .bind(i64::from(j.bits))
                .bind(j.subsidy_sat)
                .bind(j.fees_sat)
                .bind(j.expected_fees_sat)
                .bind(j.payout_plan.as_deref())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
            Record::Share(s) => shares.push(share_row(s)?),
            Record::Block(b) => blocks.push(b),
            Record::Prune(..) => {} // run after the commit (write_loop)
        }
    }
    insert_shares(&mut tx, &shares).await?;
    for b in blocks {
        sqlx::query(
            "INSERT INTO blocks (ts_ms, height, hash, finder, block, fate) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(b.ts_ms)
        .bind(i64::from(b.height))
        .bind(&b.hash)
        .bind(&b.finder)
        .bind(&b.block)
        .bind(&b.fate)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}
