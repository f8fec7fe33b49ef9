//! The durable log of accepted shares and found blocks.
//!
//! Two stages. The **journal** ([`crate::journal`], a directory beside the database) is the point
//! of durability: one thread takes records from a bounded queue ([`QUEUE_MAX`]), writes whatever is
//! waiting (up to [`BATCH_MAX`]) as one checksummed frame, `fdatasync`s it and only then
//! acknowledges each record, so a share is answered `true` only once it is on disk and a `kill -9`
//! (or a power cut) at any moment loses no acknowledged share or block. The **applier** then copies
//! the records, in journal order, into SQLite (WAL, `synchronous=NORMAL`) for accounting and the
//! API, recording the last journal sequence number applied in the same transaction
//! (`journal_applied`). Opening replays what SQLite lacks from the journal; a journal segment is
//! deleted only after a `synchronous=FULL` commit made everything in it durable in SQLite.
//!
//! Acknowledgement costs one append and one `fdatasync`, without SQLite's B-tree work or a hop to
//! its thread on the path (the low-load latency in `BENCHMARKS.md`, session 14). While SQLite cannot
//! take records (a full disk or the size cap), the applier retries and new shares are refused with
//! the reason; acknowledged ones wait in the journal. One process owns a share log (a lock file in
//! the journal directory); another opens it read-only.

use crate::journal::{Frame, Journal, JournalError};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// A record that goes through the journal.
#[derive(Debug)]
enum Record {
    Share(ShareRecord),
    Block(BlockRecord),
    Job(JobRecord),
}

/// Work for the applier, in order: journaled records and block fates.
#[derive(Debug)]
enum Apply {
    Logged(u64, Record),
    Fate {
        hash: String,
        fate: String,
    },
    /// Answered once everything before it is in SQLite ([`ShareLog::flush`]).
    Flush(oneshot::Sender<()>),
}

/// What the journal thread and the applier share.
#[derive(Debug, Default)]
struct Stage {
    /// Why SQLite cannot take records now (new shares are refused with it), if it cannot.
    stalled: Mutex<Option<LogError>>,
    /// Journal sequence numbers up to this are durable in SQLite.
    durable: AtomicU64,
    /// The last sequence number of the newest closed journal segment (0: none).
    closed_upto: AtomicU64,
}

impl Stage {
    fn stalled(&self) -> Option<LogError> {
        self.stalled.lock().ok().and_then(|g| g.clone())
    }
    fn set_stalled(&self, e: Option<LogError>) {
        if let Ok(mut g) = self.stalled.lock() {
            *g = e;
        }
    }
}

/// How long a reader waits for the applier to copy what was acknowledged before it reads
/// ([`ShareLog::flush`]) before it reads what SQLite has.
pub const READ_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the applier waits before retrying records SQLite refused (a full disk).
pub const APPLY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long opening waits for another handle's applier (in this or another process) to let go of
/// the journal before opening read-only.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

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
    /// Classifies a journal error (a full disk is [`LogError::DiskFull`]).
    fn journal(e: JournalError) -> LogError {
        if e.is_disk_full() {
            LogError::DiskFull(e.to_string())
        } else {
            LogError::Failed(e.to_string())
        }
    }

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

type Ack = oneshot::Sender<Result<(), LogError>>;
type PruneAck = oneshot::Sender<Result<Pruned, LogError>>;

/// Handle to the share log.
#[derive(Clone, Debug)]
pub struct ShareLog {
    tx: mpsc::Sender<(Record, Option<Ack>)>,
    apply: mpsc::Sender<Apply>,
    prunes: mpsc::Sender<(PruneRequest, PruneAck)>,
    db: SqlitePool,
    /// Why this handle cannot write (another process owns the log), if it cannot.
    read_only: Option<Arc<str>>,
}

/// The journal directory of the share log at `path`: `<path>.journal`.
pub fn journal_dir(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
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
    // The last journal sequence number applied, written in each applier transaction.
    "CREATE TABLE IF NOT EXISTS journal_applied (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL CHECK (seq >= 0))",
    "INSERT OR IGNORE INTO journal_applied (id, seq) VALUES (1, 0)",
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
            .synchronous(SqliteSynchronous::Normal)
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
            .connect_with(opts.clone())
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
        let (apply, apply_rx) = mpsc::channel(QUEUE_MAX);
        let (prunes, prune_rx) = mpsc::channel(16);
        let dir = journal_dir(path);
        let Some(lock) = lock_journal(&dir).await? else {
            tracing::warn!(journal = %dir.display(), "share log opened read-only: another handle or process owns it");
            let read_only = Some(Arc::from(format!(
                "{} is open for writing elsewhere (lock on {}); this handle only reads",
                path.display(),
                dir.display()
            )));
            let log = ShareLog {
                tx,
                apply,
                prunes,
                db,
                read_only,
            };
            return Ok((log, tokio::spawn(async {})));
        };
        // The applier's own connection, outside the readers' pool: its prepared statements stay
        // cached, and closing the pool (readers) never waits for it.
        let mut conn = None;
        let next = replay(writer_conn(&opts, &mut conn).await?, &dir).await?;
        let journal = Journal::start(&dir, next).map_err(LogError::journal)?;
        let stage = Arc::new(Stage {
            durable: AtomicU64::new(next - 1),
            ..Stage::default()
        });
        let (apply_tx, stage2) = (apply.clone(), stage.clone());
        let journaler = std::thread::Builder::new()
            .name("share-journal".into())
            .spawn(move || journal_loop(journal, rx, apply_tx, stage2))
            .map_err(|e| LogError::Failed(format!("starting the journal thread: {e}")))?;
        // The checkpointer belongs to the applier: it stops when the applier does; the applier ends
        // once every handle and the journal thread are gone, and holds the journal's lock till then.
        let db3 = db.clone();
        let writer = tokio::spawn(async move {
            let wal_pages = Arc::new(std::sync::atomic::AtomicI64::new(0));
            let checkpointer = tokio::spawn(checkpoint_loop(db3, wal_pages.clone()));
            apply_loop(opts, conn, apply_rx, prune_rx, stage, wal_pages).await;
            checkpointer.abort();
            let _ = tokio::task::spawn_blocking(move || journaler.join()).await;
            drop(lock);
        });
        Ok((
            ShareLog {
                tx,
                apply,
                prunes,
                db,
                read_only: None,
            },
            writer,
        ))
    }

    fn stopped(&self) -> LogError {
        match &self.read_only {
            Some(why) => LogError::Failed(why.to_string()),
            None => LogError::Failed("writer stopped".into()),
        }
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
            .send((Record::Share(r), Some(ack)))
            .await
            .map_err(|_| self.stopped())?;
        Ok(Committed(done))
    }

    /// Queues a job's row without waiting: every share of the job is queued after it (the job is
    /// published only once this returns) and the journal writes in queue order, so a share is never
    /// durable before its job; a job row whose write failed is retried with the next frame.
    pub async fn enqueue_job(&self, r: JobRecord) -> Result<(), LogError> {
        self.tx
            .send((Record::Job(r), None))
            .await
            .map_err(|_| self.stopped())
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

    /// Records the chain's answer for a block whose intent row ([`FATE_SUBMITTING`]) is logged:
    /// queued behind the intent for the applier (not waited for; a fate lost to a crash leaves the
    /// intent, which is settled against the chain again).
    pub async fn set_block_fate(&self, hash: &str, fate: &str) -> Result<(), LogError> {
        self.apply
            .send(Apply::Fate {
                hash: hash.to_string(),
                fate: fate.to_string(),
            })
            .await
            .map_err(|_| self.stopped())
    }

    /// Blocks whose intent was logged at or before `logged_before_ms` (unix ms) but whose fate was
    /// not (a crash between the two, or a fate write that failed): (hash, serialized block).
    pub async fn submitting_blocks(&self, logged_before_ms: i64) -> Result<Vec<(String, Vec<u8>)>, LogError> {
        self.settled().await;
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
        self.tx.send((r, Some(ack))).await.map_err(|_| self.stopped())?;
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
    /// the commit queue's wait (milliseconds). It runs on the applier between its transactions,
    /// off the acknowledgements' path (and while SQLite refuses records, so that it can free room).
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
        self.prunes.send((req, ack)).await.map_err(|_| self.stopped())?;
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

    /// Waits until every record acknowledged before the call is in SQLite (acknowledgement means
    /// durable in the journal; the applier copies it a moment later). Readers that must see their
    /// own writes call it first; [`ShareLog::share_count`], [`ShareLog::headers`],
    /// [`ShareLog::blocks`] and [`ShareLog::submitting_blocks`] do, for at most
    /// [`READ_FLUSH_WAIT`]. A read-only handle has nothing of its own to wait for.
    pub async fn flush(&self) -> Result<(), LogError> {
        if self.read_only.is_some() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.apply
            .send(Apply::Flush(tx))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())
    }

    /// [`ShareLog::flush`] for readers, bounded by [`READ_FLUSH_WAIT`]: while SQLite refuses
    /// records (a full disk) a reader gets what is there rather than waiting for room.
    async fn settled(&self) {
        if tokio::time::timeout(READ_FLUSH_WAIT, self.flush()).await.is_err() {
            tracing::warn!("share log read without the newest records: SQLite has not taken them yet");
        }
    }

    /// Number of shares logged.
    pub async fn share_count(&self) -> Result<i64, LogError> {
        self.settled().await;
        let row = sqlx::query("SELECT COUNT(*) FROM shares")
            .fetch_one(&self.db)
            .await
            .map_err(LogError::db)?;
        row.try_get::<i64, _>(0).map_err(LogError::db)
    }

    /// Headers of every logged share, oldest first (audits and tests).
    pub async fn headers(&self) -> Result<Vec<Vec<u8>>, LogError> {
        self.settled().await;
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
        self.settled().await;
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

/// Takes the journal's lock file (`lock` in its directory), waiting up to [`LOCK_WAIT`] for a
/// closing handle to let go; `None` if another owner keeps it.
async fn lock_journal(dir: &Path) -> Result<Option<std::fs::File>, LogError> {
    let failed = |e: std::io::Error| LogError::Failed(format!("journal {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(failed)?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
    }
}

/// Applies to SQLite every journaled record it lacks (a crash before the applier caught up, or a
/// power cut that took SQLite's latest `synchronous=NORMAL` commits), durably; returns the sequence
/// number for the next record.
async fn replay(conn: &mut sqlx::SqliteConnection, dir: &Path) -> Result<u64, LogError> {
    let applied: i64 = sqlx::query_scalar("SELECT seq FROM journal_applied WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(LogError::db)?;
    let applied = u64::try_from(applied).unwrap_or(0);
    let dir2 = dir.to_path_buf();
    let (records, next) = tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        let next = crate::journal::recover(&dir2, applied, |seq, entry| {
            let r = decode(entry).map_err(|what| JournalError::Corrupt {
                path: dir2.clone(),
                offset: 0,
                what: format!("record {seq}: {what}"),
            })?;
            records.push(Apply::Logged(seq, r));
            Ok(())
        })?;
        Ok::<_, JournalError>((records, next))
    })
    .await
    .map_err(|e| LogError::Failed(format!("journal recovery: {e}")))?
    .map_err(LogError::journal)?;
    if !records.is_empty() {
        for chunk in records.chunks(BATCH_MAX) {
            commit(&mut *conn, chunk, true).await?;
        }
        tracing::info!(
            records = records.len(),
            "share log: journaled records SQLite lacked were applied"
        );
    }
    Ok(next)
}

/// The journal thread: frames whatever waits, `fdatasync`s it, acknowledges, hands the records to
/// the applier in order.
fn journal_loop(
    mut j: Journal,
    mut rx: mpsc::Receiver<(Record, Option<Ack>)>,
    apply: mpsc::Sender<Apply>,
    stage: Arc<Stage>,
) {
    let mut batch: Vec<(Record, Option<Ack>)> = Vec::with_capacity(BATCH_MAX);
    let mut kept: Vec<(Record, Option<Ack>)> = Vec::with_capacity(BATCH_MAX);
    let mut retry_jobs: Vec<JobRecord> = Vec::new();
    let mut frame = Frame::new();
    while let Some(first) = rx.blocking_recv() {
        // Job rows of a failed write go first in this one (nobody waits for them).
        batch.extend(retry_jobs.drain(..).map(|j| (Record::Job(j), None)));
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // While SQLite cannot take records, new shares are refused: acknowledged ones would only
        // pile up in the journal. Jobs and blocks still go in (few, and a block must be recorded).
        let stalled = stage.stalled();
        frame.clear();
        for (r, ack) in batch.drain(..) {
            let refused = match (&stalled, &r) {
                (Some(e), Record::Share(_)) => Some(e.clone()),
                _ => validate(&r).err(),
            };
            if let Some(e) = refused {
                if let Some(a) = ack {
                    let _ = a.send(Err(e));
                }
                continue;
            }
            frame.entry(|b| encode(&r, b));
            kept.push((r, ack));
        }
        if kept.is_empty() {
            continue;
        }
        match j.append(&mut frame) {
            Ok(first_seq) => {
                for (seq, (r, ack)) in (first_seq..).zip(kept.drain(..)) {
                    // Handed on before it is acknowledged: a block's fate, queued after the
                    // acknowledgement, reaches the applier after the block.
                    let _ = apply.blocking_send(Apply::Logged(seq, r));
                    if let Some(a) = ack {
                        let _ = a.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                let err = LogError::journal(e);
                tracing::error!(error = %err, records = kept.len(), "share log journal write failed; nothing in this frame was acknowledged");
                for (r, ack) in kept.drain(..) {
                    if let Record::Job(jr) = r {
                        retry_jobs.push(jr);
                    }
                    if let Some(a) = ack {
                        let _ = a.send(Err(err.clone()));
                    }
                }
            }
        }
        stage.closed_upto.store(j.closed_upto(), Ordering::Relaxed);
        if let Err(e) = j.retire(stage.durable.load(Ordering::Relaxed)) {
            tracing::warn!(error = %e, "share log journal: a segment could not be deleted (retried)");
        }
    }
}

/// The writer's connection, opened (again, after an error) if there is none.
async fn writer_conn<'a>(
    opts: &SqliteConnectOptions,
    conn: &'a mut Option<sqlx::SqliteConnection>,
) -> Result<&'a mut sqlx::SqliteConnection, LogError> {
    use sqlx::ConnectOptions as _;
    if conn.is_none() {
        let c = opts
            .connect()
            .await
            .map_err(|e| LogError::Failed(format!("no database connection: {e}")))?;
        *conn = Some(c);
    }
    conn.as_mut()
        .ok_or_else(|| LogError::Failed("no database connection".into()))
}

/// The applier: copies journaled records (and block fates) into SQLite in order, runs retention
/// steps between its transactions, and retries what SQLite refused until it takes it (the
/// records are acknowledged already; they wait in the journal meanwhile).
async fn apply_loop(
    opts: SqliteConnectOptions,
    mut conn: Option<sqlx::SqliteConnection>,
    mut rx: mpsc::Receiver<Apply>,
    mut prune_rx: mpsc::Receiver<(PruneRequest, PruneAck)>,
    stage: Arc<Stage>,
    wal_pages: Arc<std::sync::atomic::AtomicI64>,
) {
    let mut pending: Vec<Apply> = Vec::with_capacity(BATCH_MAX);
    let mut prunes_open = true;
    loop {
        tokio::select! {
            biased;
            p = prune_rx.recv(), if prunes_open => match p {
                Some((req, done)) => {
                    let res = match writer_conn(&opts, &mut conn).await {
                        Ok(c) => prune(c, req).await,
                        Err(e) => Err(e),
                    };
                    if res.is_err() {
                        conn = None;
                    }
                    let _ = done.send(res);
                }
                None => prunes_open = false,
            },
            r = rx.recv(), if pending.is_empty() => match r {
                None => break,
                Some(a) => {
                    pending.push(a);
                    while pending.len() < BATCH_MAX {
                        match rx.try_recv() {
                            Ok(a) => pending.push(a),
                            Err(_) => break,
                        }
                    }
                }
            },
            () = tokio::time::sleep(APPLY_RETRY), if !pending.is_empty() => {
                if rx.is_closed() && stage.stalled().is_some() {
                    tracing::warn!(records = pending.len(), "share log: stopping with records SQLite refused; they stay in the journal and are applied at the next open");
                    break;
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        // A closed journal segment waits until its records are durable here: this transaction
        // (which holds later records) commits at FULL, and its fsync of the WAL makes every earlier
        // commit durable with it.
        let full = stage.closed_upto.load(Ordering::Relaxed) > stage.durable.load(Ordering::Relaxed);
        let res = match writer_conn(&opts, &mut conn).await {
            Ok(c) => commit(c, &pending, full).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(last) => {
                for a in pending.drain(..) {
                    if let Apply::Flush(done) = a {
                        let _ = done.send(());
                    }
                }
                if stage.stalled().is_some() {
                    tracing::info!("share log: SQLite takes records again; shares are accepted");
                    stage.set_stalled(None);
                }
                if let (true, Some(last)) = (full, last) {
                    stage.durable.store(last, Ordering::Relaxed);
                }
            }
            Err(e) => {
                if stage.stalled().is_none() {
                    tracing::error!(error = %e, records = pending.len(), "share log: SQLite refused journaled records; retrying, and refusing new shares until it takes them");
                }
                stage.set_stalled(Some(e));
                conn = None;
                continue;
            }
        }
        // The background checkpoint fell behind: one here, with no commit running, copies
        // everything, so the next commit restarts the WAL.
        if wal_pages.load(Ordering::Relaxed) > WAL_PAGES_INLINE {
            if let Some(c) = conn.as_mut() {
                match checkpoint(c).await {
                    Ok((log, done)) => {
                        // What is left after it (0 once the WAL restarts at the next commit).
                        wal_pages.store(log - done, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "share log checkpoint failed"),
                }
            }
        }
    }
}

/// Why a record cannot be journaled (checked before it is, so the applier never meets a record
/// SQLite's constraints refuse: it could neither apply nor drop it).
fn validate(r: &Record) -> Result<(), LogError> {
    let bad = |what: &str| Err(LogError::Failed(format!("record refused: {what}")));
    let short = |b: &[u8]| b.len() <= usize::from(u16::MAX);
    match r {
        Record::Share(s) => {
            share_row(s)?;
            if !(short(s.address.as_bytes())
                && short(s.worker.as_bytes())
                && short(&s.extranonce1)
                && short(&s.extranonce2))
            {
                return bad("a share field is longer than 65,535 bytes");
            }
        }
        Record::Job(j) => {
            if j.height < 0 || j.subsidy_sat < 0 || j.fees_sat < 0 || j.expected_fees_sat < 0 {
                return bad("a job with a negative height or amount");
            }
        }
        Record::Block(b) => {
            if !(short(b.hash.as_bytes()) && short(b.finder.as_bytes()) && short(b.fate.as_bytes())) {
                return bad("a block field is longer than 65,535 bytes");
            }
            if u32::try_from(b.block.len()).is_err() {
                return bad("a block larger than 4 GiB");
            }
        }
    }
    Ok(())
}

fn put16(b: &mut Vec<u8>, x: &[u8]) {
    let n = x.len().min(usize::from(u16::MAX));
    b.extend_from_slice(&(n as u16).to_le_bytes());
    b.extend_from_slice(&x[..n]);
}

/// A record's journal entry (lengths were checked by [`validate`]).
fn encode(r: &Record, b: &mut Vec<u8>) {
    match r {
        Record::Share(s) => {
            b.push(1);
            b.extend_from_slice(&s.ts_ms.to_le_bytes());
            put16(b, s.address.as_bytes());
            put16(b, s.worker.as_bytes());
            b.extend_from_slice(&s.job_id.to_le_bytes());
            b.extend_from_slice(&s.difficulty.to_fixed().to_le_bytes());
            put16(b, &s.extranonce1);
            put16(b, &s.extranonce2);
            b.extend_from_slice(&s.header);
            b.push(u8::from(s.is_block));
        }
        Record::Job(j) => {
            b.push(2);
            for v in [j.job_id, j.ts_ms, j.height] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&j.bits.to_le_bytes());
            for v in [j.subsidy_sat, j.fees_sat, j.expected_fees_sat] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            match &j.payout_plan {
                Some(p) => {
                    b.push(1);
                    let n = u32::try_from(p.len()).unwrap_or(u32::MAX);
                    b.extend_from_slice(&n.to_le_bytes());
                    b.extend_from_slice(p.as_bytes());
                }
                None => b.push(0),
            }
        }
        Record::Block(k) => {
            b.push(3);
            b.extend_from_slice(&k.ts_ms.to_le_bytes());
            b.extend_from_slice(&k.height.to_le_bytes());
            put16(b, k.hash.as_bytes());
            put16(b, k.finder.as_bytes());
            let n = u32::try_from(k.block.len()).unwrap_or(u32::MAX);
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&k.block);
            put16(b, k.fate.as_bytes());
        }
    }
}

/// Reads a journal entry back ([`encode`]).
fn decode(entry: &[u8]) -> Result<Record, String> {
    struct Rd<'a>(&'a [u8]);
    impl<'a> Rd<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("entry cut short".into());
            }
            let (a, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(a)
        }
        fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
            self.take(N)?
                .try_into()
                .map_err(|_| "entry cut short".to_string())
        }
        fn i64(&mut self) -> Result<i64, String> {
            Ok(i64::from_le_bytes(self.arr()?))
        }
        fn u32(&mut self) -> Result<u32, String> {
            Ok(u32::from_le_bytes(self.arr()?))
        }
        fn b16(&mut self) -> Result<&'a [u8], String> {
            let n = u16::from_le_bytes(self.arr()?);
            self.take(usize::from(n))
        }
        fn s16(&mut self) -> Result<String, String> {
            String::from_utf8(self.b16()?.to_vec()).map_err(|_| "text is not UTF-8".to_string())
        }
    }
    let mut r = Rd(entry);
    let kind = r.arr::<1>()?[0];
    let rec = match kind {
        1 => Record::Share(ShareRecord {
            ts_ms: r.i64()?,
            address: r.s16()?,
            worker: r.s16()?,
            job_id: r.i64()?,
            difficulty: Difficulty::from_fixed(u128::from_le_bytes(r.arr()?)),
            extranonce1: r.b16()?.to_vec(),
            extranonce2: r.b16()?.to_vec(),
            header: r.arr()?,
            is_block: r.arr::<1>()?[0] != 0,
        }),
        2 => Record::Job(JobRecord {
            job_id: r.i64()?,
            ts_ms: r.i64()?,
            height: r.i64()?,
            bits: r.u32()?,
            subsidy_sat: r.i64()?,
            fees_sat: r.i64()?,
            expected_fees_sat: r.i64()?,
            payout_plan: match r.arr::<1>()?[0] {
                0 => None,
                _ => {
                    let n = r.u32()? as usize;
                    Some(
                        String::from_utf8(r.take(n)?.to_vec())
                            .map_err(|_| "plan is not UTF-8".to_string())?,
                    )
                }
            },
        }),
        3 => Record::Block(BlockRecord {
            ts_ms: r.i64()?,
            height: r.u32()?,
            hash: r.s16()?,
            finder: r.s16()?,
            block: {
                let n = r.u32()? as usize;
                r.take(n)?.to_vec()
            },
            fate: r.s16()?,
        }),
        k => return Err(format!("unknown record kind {k}")),
    };
    if !r.0.is_empty() {
        return Err("trailing bytes after the record".into());
    }
    Ok(rec)
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

/// A PASSIVE checkpoint on `c`: (WAL frames, frames copied into the database).
async fn checkpoint(c: &mut sqlx::SqliteConnection) -> Result<(i64, i64), sqlx::Error> {
    let (_, log, done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(c)
        .await?;
    Ok((log, done))
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] on a reader connection, PASSIVE (it never waits
/// for readers or the writer, so it never delays a commit), and publishes the WAL's size in pages
/// for the writer ([`WAL_PAGES_INLINE`]).
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

/// Applies `items` in order in one transaction, with the last journal sequence number among them;
/// at `synchronous=FULL` if `full` (durable when it returns; otherwise at the next FULL commit or
/// checkpoint). Returns that sequence number.
async fn commit(
    conn: &mut sqlx::SqliteConnection,
    items: &[Apply],
    full: bool,
) -> Result<Option<u64>, LogError> {
    if full {
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await
            .map_err(LogError::db)?;
    }
    let res = commit_items(conn, items).await;
    if full {
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await
            .map_err(LogError::db)?;
    }
    res
}

async fn commit_items(conn: &mut sqlx::SqliteConnection, items: &[Apply]) -> Result<Option<u64>, LogError> {
    use sqlx::Connection as _;
    let err = LogError::db;
    // Rows go in journal order: a job row's `shares_before` is the newest share logged before it.
    let mut tx = conn.begin().await.map_err(err)?;
    let mut shares = Vec::with_capacity(items.len());
    let mut last = None;
    for item in items {
        match item {
            Apply::Logged(seq, r) => {
                last = Some(*seq);
                match r {
                    Record::Share(s) => shares.push(share_row(s)?),
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
                    Record::Block(b) => {
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
                }
            }
            Apply::Flush(_) => {}
            Apply::Fate { hash, fate } => {
                sqlx::query("UPDATE blocks SET fate = ? WHERE hash = ? AND fate = ?")
                    .bind(fate)
                    .bind(hash)
                    .bind(FATE_SUBMITTING)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
        }
    }
    insert_shares(&mut tx, &shares).await?;
    if let Some(seq) = last {
        sqlx::query("UPDATE journal_applied SET seq = ? WHERE id = 1")
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(last)
}
