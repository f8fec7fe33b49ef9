//! The TCP edge of the pool.
//!
//! * Accept: a permit from a semaphore of [`PoolConfig::connections_max`] is taken *before* accepting;
//!   a per-IP count ([`PoolConfig::connections_per_ip_max`]) and a ban list are checked right after,
//!   and the connection is closed at once if either says no.
//! * Per connection: one task owns the socket and its [`Session`]; it reads into a bounded
//!   [`LineBuffer`], handles every complete line in order, writes replies in order, and sends new work
//!   when the job set changes (a `watch` channel: no per-connection queue to overflow). Deadlines: the
//!   handshake ([`PoolConfig::handshake_deadline`]) and idleness ([`PoolConfig::idle_timeout`]).
//! * Templates: one task follows the backend's tip (new prevhash → `clean_jobs`) and refreshes on the
//!   same tip every [`PoolConfig::job_refresh_interval`].
//! * Shutdown: a cancellation token stops accepting, ends every connection task after its current
//!   request, and the task tracker waits for them.

use crate::config::PoolConfig;
use crate::jobs::{Job, JobSet};
use crate::session::Session;
use crate::share_log::ShareLog;
pub use crate::stats::PoolStats;
use chain::Backend;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stratum::framing::LineBuffer;
use stratum::{ClientRequest, Incoming};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes read from a socket at once; also bounds how many pipelined requests wait unprocessed.
pub const READ_CHUNK_BYTES: usize = 4096;
/// Blocks whose fees make FPPS's `E[F]`: the newest this many of the best chain (about a day of
/// mainnet blocks).
pub const FEE_HISTORY_HEIGHTS: usize = 144;
/// How long start-up may spend reading the recent blocks' fees (past it, `E[F]` starts from what
/// was read, and grows with every new block).
pub const FEE_BACKFILL_TIMEOUT: Duration = Duration::from_secs(15);
/// Heights re-read below a new tip (a short reorganisation replaces their blocks' fees).
pub const FEE_REREAD_DEPTH: u32 = 3;
/// Most bytes waiting to be written to one connection at once: replies to one read (at most
/// [`READ_CHUNK_BYTES`] of requests) and new work fit many times over; past it the connection is
/// closed ("output over limit"). Together with [`PoolConfig::write_timeout`] this bounds what a peer
/// that never reads can hold.
pub const OUTGOING_BYTES_MAX: usize = 1 << 20;
/// A block intent whose fate is still unknown this long after it was logged is settled against the
/// chain at the next new tip (its own submission has long had its answer, or lost it).
pub const BLOCK_INTENT_SETTLE_AFTER: Duration = Duration::from_secs(60);
/// Longest a found block waits for its intent row to be durable before it is submitted anyway (a
/// block is never held back by a stalled disk; its fate is then settled like a crash's).
pub const BLOCK_INTENT_WAIT: Duration = Duration::from_secs(1);
/// Most addresses in the ban table (see `Shared::ban`).
pub const BANS_MAX: usize = 100_000;
/// How often connections run their vardiff check.
pub const TICK_INTERVAL: Duration = Duration::from_secs(5);

/// What every connection task shares.
pub struct Shared {
    /// Settings.
    pub cfg: PoolConfig,
    /// Current jobs.
    pub jobs: watch::Receiver<Arc<JobSet>>,
    /// The share log.
    pub log: ShareLog,
    /// The chain backend.
    pub backend: Backend,
    /// Counters.
    pub stats: Arc<PoolStats>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    bans: Mutex<HashMap<IpAddr, Instant>>,
    next_en1: AtomicU32,
    /// The best chain's recent blocks' fees by height (sat), at most [`FEE_HISTORY_HEIGHTS`]:
    /// FPPS's `E[F]` is their mean.
    fee_history: Mutex<std::collections::BTreeMap<u32, u64>>,
    /// Each live connection's control mailbox, by its extranonce1.
    mailboxes: Mutex<HashMap<[u8; 4], Arc<Mailbox>>>,
    /// The ledger, once [`Pool::feed_ledger`] connected one (read by the HTTP API).
    pub ledger: std::sync::OnceLock<Arc<ledger::Ledger>>,
    /// Coinbase payouts: the rule ([`PoolConfig::payee_rule`]) and the newest window plan, which the
    /// accounting task refreshes and each new job reads ([`crate::payees`]).
    pub payees: Option<(crate::payees::PayeeRule, PlanSlot)>,
}

/// Where the accounting task leaves the newest coinbase payee plan for the template task.
pub type PlanSlot = Arc<Mutex<Option<Arc<crate::payees::PayeePlan>>>>;

/// An instruction for one connection's task, delivered through its [`Mailbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// Move to this extranonce1 ([`Session::reassign_extranonce`]).
    SetExtranonce([u8; 4]),
}

/// One connection's control slot: the newest instruction wins; the task wakes on `notify` (a stored
/// permit, so an instruction sent while the task is busy is not lost).
#[derive(Debug, Default)]
struct Mailbox {
    notify: tokio::sync::Notify,
    control: Mutex<Option<Control>>,
}

/// Keeps a connection's mailbox registered under its current extranonce1; unregisters on drop.
struct Registration<'a> {
    shared: &'a Shared,
    en1: [u8; 4],
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared
            .mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.en1);
    }
}

/// A running pool.
pub struct Pool {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Pool {
    /// Binds, loads the first template, and starts accepting.
    pub async fn start(
        cfg: PoolConfig,
        backend: Backend,
        log: ShareLog,
        listen: SocketAddr,
    ) -> std::io::Result<Pool> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        // Job numbers stay unique across restarts: the share log's jobs and shares refer to them.
        let logged = log
            .max_job_id()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        crate::jobs::NEXT_JOB_ID.fetch_max(logged.saturating_add(1), Ordering::Relaxed);
        settle_block_intents(&log, &backend, i64::MAX).await;
        let (jobs_tx, jobs_rx) = watch::channel(Arc::new(JobSet::default()));
        let cfg_payees = cfg.payee_rule().map(|r| (r, PlanSlot::default()));
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let shared = Arc::new(Shared {
            cfg,
            jobs: jobs_rx,
            log,
            backend,
            stats: Arc::new(PoolStats::default()),
            per_ip: Mutex::new(HashMap::new()),
            bans: Mutex::new(HashMap::new()),
            // Start from a random point so restarts do not reuse extranonce1 values.
            next_en1: AtomicU32::new(rand_u32()),
            mailboxes: Mutex::new(HashMap::new()),
            fee_history: Mutex::new(std::collections::BTreeMap::new()),
            ledger: std::sync::OnceLock::new(),
            payees: cfg_payees,
        });
        let tip = shared.backend.tip().borrow().height;
        let first = tip.saturating_sub(u32::try_from(FEE_HISTORY_HEIGHTS).unwrap_or(u32::MAX) - 1);
        if tokio::time::timeout(FEE_BACKFILL_TIMEOUT, learn_block_fees(&shared, first, tip))
            .await
            .is_err()
        {
            tracing::warn!("reading recent blocks' fees took longer than FEE_BACKFILL_TIMEOUT; E[F] starts from those read");
        }
        refresh_once(&shared, &jobs_tx, true).await;
        tracker.spawn(templates(shared.clone(), jobs_tx, token.clone()));
        tracker.spawn(accept_loop(
            shared.clone(),
            listener,
            token.clone(),
            tracker.clone(),
        ));
        Ok(Pool {
            shared,
            local_addr,
            token,
            tracker,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Addresses in the ban table (at most [`BANS_MAX`]).
    pub fn bans_len(&self) -> usize {
        self.shared.bans_len()
    }

    /// Counters.
    pub fn stats(&self) -> Arc<PoolStats> {
        self.shared.stats.clone()
    }

    /// The share log.
    pub fn log(&self) -> &ShareLog {
        &self.shared.log
    }

    /// Copies accepted shares into `ledger`'s work log until shutdown ([`crate::accounting`]).
    /// Shares logged after the last copy are copied at the next start.
    pub fn feed_ledger(&self, ledger: Arc<ledger::Ledger>) {
        let _ = self.shared.ledger.set(ledger.clone());
        let stats = self.shared.stats.clone();
        // Pool mode credits blocks PPLNS; SOLO blocks pay the finder in the coinbase.
        let pplns = match self.shared.cfg.payout {
            crate::config::PayoutScheme::Pool(_) => Some(crate::accounting::Rule {
                sharing: self.shared.cfg.sharing,
                fee_ppm: self.shared.cfg.fee_ppm,
                payees: self.shared.cfg.payee_book().map(|r| {
                    let slot = self.shared.payees.as_ref().map(|(_, s)| s.clone());
                    (r, slot)
                }),
            }),
            crate::config::PayoutScheme::Solo => None,
        };
        self.tracker.spawn(crate::accounting::ingest_loop(
            self.shared.log.clone(),
            ledger,
            stats,
            (pplns, self.shared.cfg.retention),
            self.shared.backend.clone(),
            self.token.clone(),
        ));
    }

    /// Serves the HTTP API (`/metrics`, `/api/v1/…`, `/api/client/{address}`) on `listener` until shutdown.
    pub fn serve_http(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let token = self.token.clone();
        self.tracker.spawn(async move {
            if let Err(e) = crate::api::serve(shared, listener, token).await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
    }

    /// Moves the connection whose extranonce1 is `en1` to a fresh, unique extranonce1 (for a miner
    /// that subscribed to `mining.set_extranonce`; any other is told to reconnect). Returns the new
    /// value, or `None` if no such connection is open. The connection applies it between requests;
    /// one still in its handshake keeps its extranonce1.
    pub fn reassign_extranonce(&self, en1: [u8; 4]) -> Option<[u8; 4]> {
        let mailbox = self
            .shared
            .mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&en1)
            .cloned()?;
        let new = self.shared.allocate_en1();
        *mailbox.control.lock().unwrap_or_else(|p| p.into_inner()) = Some(Control::SetExtranonce(new));
        mailbox.notify.notify_one();
        Some(new)
    }

    /// The current job set.
    pub fn jobs(&self) -> Arc<JobSet> {
        self.shared.jobs.borrow().clone()
    }

    /// Stops accepting, lets every connection finish its current request, and waits for all tasks.
    pub async fn shutdown(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Shared {
    /// Whether `ip` is banned at `now`; an expired ban is removed on the way.
    fn banned(&self, ip: IpAddr, now: Instant) -> bool {
        let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        match bans.get(&ip) {
            Some(until) if now < *until => true,
            Some(_) => {
                bans.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Bans `ip` for [`PoolConfig::ban_duration`]. The table holds at most [`BANS_MAX`] addresses:
    /// when full, expired bans are dropped first, then the ban that ends soonest (logged).
    fn ban(&self, ip: IpAddr, now: Instant) {
        let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        if bans.len() >= BANS_MAX && !bans.contains_key(&ip) {
            bans.retain(|_, until| now < *until);
            if bans.len() >= BANS_MAX {
                if let Some(first) = bans.iter().min_by_key(|(_, u)| **u).map(|(a, _)| *a) {
                    tracing::warn!(evicted = %first, "ban table full (BANS_MAX); the ban that ends soonest is lifted early");
                    bans.remove(&first);
                }
            }
        }
        bans.insert(ip, now + self.cfg.ban_duration);
    }

    /// Addresses in the ban table (expired ones included until they are next looked at).
    fn bans_len(&self) -> usize {
        self.bans.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// An extranonce1 no live connection holds (the counter starts at a random point so restarts do
    /// not reuse values; a value still in use after a wrap of the 32-bit counter is skipped).
    fn allocate_en1(&self) -> [u8; 4] {
        let boxes = self.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let en1 = self.next_en1.fetch_add(1, Ordering::Relaxed).to_be_bytes();
            if !boxes.contains_key(&en1) {
                return en1;
            }
        }
    }
}

/// Blocks logged as submitted at or before `logged_before_ms` whose fate was not (the process
/// stopped in between, the fate write failed, the chain was unreachable): each is submitted again
/// from its logged bytes (a duplicate is harmless) and its fate recorded: `accepted` if the chain has
/// it, the chain's reason otherwise. Accounting waits at such a row until then. Run at start (every
/// row) and after each new tip (rows older than [`BLOCK_INTENT_SETTLE_AFTER`]).
async fn settle_block_intents(log: &ShareLog, backend: &Backend, logged_before_ms: i64) {
    let rows = match log.submitting_blocks(logged_before_ms).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "block intents not read; accounting waits at them");
            return;
        }
    };
    for (hash, raw) in rows {
        let fate = match bitcoin::consensus::deserialize::<bitcoin::Block>(&raw) {
            Err(e) => format!("unreadable logged block: {e}"),
            Ok(block) => {
                let h = block.block_hash();
                let _ = backend.submit_block(block).await;
                match backend.confirmations(&h).await {
                    Ok(Some(_)) => "accepted".to_string(),
                    Ok(None) => "not in the best chain when settled".to_string(),
                    Err(e) => {
                        tracing::warn!(error = %e, %hash, "block intent not settled (chain unavailable); accounting waits at it");
                        continue;
                    }
                }
            }
        };
        tracing::info!(%hash, %fate, "block intent from before the restart settled");
        if let Err(e) = log.set_block_fate(&hash, &fate).await {
            tracing::error!(error = %e, %hash, "block intent's fate not recorded");
        }
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as u32) ^ ((t >> 32) as u32).rotate_left(13) ^ std::process::id()
}

/// The wall clock in unix milliseconds (the edge's clock; 0 before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn refresh_once(shared: &Shared, tx: &watch::Sender<Arc<JobSet>>, clean: bool) {
    match shared.backend.template().await {
        Ok(t) => {
            let cur = tx.borrow().clone();
            let clean = clean || cur.newest().is_none_or(|j| j.prev_hash() != t.prev_hash);
            let now = u32::try_from(now_ms() / 1000).unwrap_or(u32::MAX);
            let (payees, plan) = coinbase_payees(shared, &t);
            let job = Arc::new(Job::new(
                crate::jobs::NEXT_JOB_ID.fetch_add(1, Ordering::Relaxed),
                Arc::new(t),
                clean,
                shared.cfg.coinbase_tag.clone(),
                now,
                payees,
            ));
            tracing::debug!(job = job.id, height = job.template.height, clean, "new job");
            // Its row goes into the share log queue before any connection can see the job.
            let fees_sat = job.template.fees().to_sat();
            let fees = i64::try_from(fees_sat).unwrap_or(i64::MAX);
            let subsidy = job.template.coinbase_value.to_sat().saturating_sub(fees_sat);
            // E[F]: the mean fees of the recent blocks below this job's height, floored.
            let expected = {
                let h = shared.fee_history.lock().unwrap_or_else(|p| p.into_inner());
                let older: Vec<u64> = h.range(..job.template.height).map(|(_, f)| *f).collect();
                let sum: u128 = older.iter().map(|f| u128::from(*f)).sum();
                let mean = sum.checked_div(older.len() as u128).unwrap_or(0);
                i64::try_from(mean).unwrap_or(i64::MAX)
            };
            let rec = crate::share_log::JobRecord {
                job_id: i64::try_from(job.id).unwrap_or(i64::MAX),
                ts_ms: i64::try_from(now_ms()).unwrap_or(i64::MAX),
                height: i64::from(job.template.height),
                bits: job.template.bits,
                subsidy_sat: i64::try_from(subsidy).unwrap_or(i64::MAX),
                fees_sat: fees,
                expected_fees_sat: expected,
                payout_plan: plan.map(crate::payees::PlanRef::to_json),
            };
            if let Err(e) = shared.log.enqueue_job(rec).await {
                tracing::error!(error = %e, "job not recorded; not issued");
                return;
            }
            if clean {
                shared.stats.clean_published(job.id);
            }
            let _ = tx.send(Arc::new(cur.with(job, shared.cfg.jobs_kept)));
        }
        Err(e) => tracing::warn!(error = %e, "no block template"),
    }
}

/// The payee outputs of a new job's coinbase worth `value_sat`, from the newest plan if there is a
/// fresh one, and the plan's reference for the job row; nothing if the pool pays no payees (or the
/// plan pays no one: every earner accrues then, and the job row says so by carrying no plan).
fn coinbase_payees(
    shared: &Shared,
    template: &mining_core::BlockTemplate,
) -> (Vec<bitcoin::TxOut>, Option<crate::payees::PlanRef>) {
    use crate::payees::{COINBASE_BASE_WEIGHT, MAX_BLOCK_WEIGHT};
    let value_sat = template.coinbase_value.to_sat();
    let txs: u64 = template
        .transactions
        .iter()
        .map(|t| t.weight)
        .fold(0, u64::saturating_add);
    let budget = MAX_BLOCK_WEIGHT
        .saturating_sub(txs)
        .saturating_sub(COINBASE_BASE_WEIGHT);
    let Some((rule, slot)) = &shared.payees else {
        return (Vec::new(), None);
    };
    let plan = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(plan) = plan.filter(|p| p.made.elapsed() <= crate::payees::PLAN_MAX_AGE) else {
        tracing::debug!("no fresh coinbase payee plan: this job's coinbase pays the pool alone");
        return (Vec::new(), None);
    };
    match plan.outputs(value_sat, shared.cfg.fee_ppm, rule, budget) {
        Ok(outs) if outs.is_empty() => (outs, None),
        Ok(outs) => (
            outs,
            Some(crate::payees::PlanRef {
                upto: plan.upto,
                window: plan.window,
                fee_ppm: shared.cfg.fee_ppm,
            }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "coinbase payees not computed: this job's coinbase pays the pool alone");
            (Vec::new(), None)
        }
    }
}

/// Reads the fees of the best chain's blocks at heights `first..=last` into the FPPS fee history
/// (a height above the tip is dropped), keeping the newest [`FEE_HISTORY_HEIGHTS`].
async fn learn_block_fees(shared: &Shared, first: u32, last: u32) {
    for h in first.max(1)..=last {
        match shared.backend.block_fees(h).await {
            Ok(f) => {
                let mut hist = shared.fee_history.lock().unwrap_or_else(|p| p.into_inner());
                match f {
                    Some(f) => hist.insert(h, f),
                    None => hist.remove(&h),
                };
                while hist.len() > FEE_HISTORY_HEIGHTS {
                    hist.pop_first();
                }
            }
            Err(e) => {
                tracing::warn!(height = h, error = %e, "block fees not read (FPPS's E[F] goes on without them)");
                return;
            }
        }
    }
}

async fn templates(shared: Arc<Shared>, tx: watch::Sender<Arc<JobSet>>, token: CancellationToken) {
    let mut tip = shared.backend.tip();
    let mut refresh = tokio::time::interval(shared.cfg.job_refresh_interval);
    refresh.tick().await;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            r = tip.changed() => {
                if r.is_err() { return; }
                let height = tip.borrow_and_update().height;
                refresh_once(&shared, &tx, true).await;
                refresh.reset();
                // After the clean job went out (its E[F] ends one block earlier): the new block's
                // fees, and those of the few below it a short reorganisation may have replaced.
                learn_block_fees(&shared, height.saturating_sub(FEE_REREAD_DEPTH - 1), height).await;
                let before = now_ms().saturating_sub(u64::try_from(BLOCK_INTENT_SETTLE_AFTER.as_millis()).unwrap_or(u64::MAX));
                settle_block_intents(&shared.log, &shared.backend, i64::try_from(before).unwrap_or(i64::MAX)).await;
            }
            _ = refresh.tick() => refresh_once(&shared, &tx, false).await,
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(shared.cfg.connections_max));
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            () = token.cancelled() => return,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(10); x }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let ip = peer.ip();
        if shared.banned(ip, Instant::now()) {
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            continue; // dropping the stream closes it
        }
        {
            let mut per_ip = shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= shared.cfg.connections_per_ip_max {
                shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            *n += 1;
        }
        let _ = stream.set_nodelay(true);
        let shared2 = shared.clone();
        let token2 = token.clone();
        let fut = async move {
            shared2.stats.connections.fetch_add(1, Ordering::Relaxed);
            let reason = connection(&shared2, stream, token2).await;
            tracing::debug!(%peer, reason, "connection closed");
            shared2.stats.connections.fetch_sub(1, Ordering::Relaxed);
            let mut per_ip = shared2.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
            drop(permit);
        };
        tracker.spawn(fut);
    }
}

/// Why a bounded write ended early.
enum WriteEnd {
    Failed,
    TimedOut,
}

/// Writes `out` within [`PoolConfig::write_timeout`].
async fn write_bounded(shared: &Shared, stream: &mut TcpStream, out: &str) -> Result<(), WriteEnd> {
    match tokio::time::timeout(shared.cfg.write_timeout, stream.write_all(out.as_bytes())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteEnd::Failed),
        Err(_) => Err(WriteEnd::TimedOut),
    }
}

/// Tells the miner to come back (ckpool sends `client.reconnect []` the same way); a miner that ignores
/// it reconnects on the closed socket anyway.
async fn say_reconnect(stream: &mut TcpStream, out: &mut String) {
    out.push_str(
        &stratum::ServerMessage::Reconnect {
            host: None,
            port: None,
            wait_s: 0,
        }
        .to_line(),
    );
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.write_all(out.as_bytes())).await;
}

/// Serves one miner until it leaves, breaks a rule, or the pool shuts down. Returns why it ended.
/// One request's place in the reply order.
enum Reply {
    Lines(Vec<String>),
    Pending(crate::session::PendingShare),
}

async fn connection(shared: &Arc<Shared>, mut stream: TcpStream, token: CancellationToken) -> &'static str {
    let en1 = shared.allocate_en1();
    let mailbox = Arc::new(Mailbox::default());
    shared
        .mailboxes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(en1, mailbox.clone());
    let mut registration = Registration { shared, en1 };
    let start = Instant::now();
    let mut session = Session::new(en1, shared, now_ms());
    let mut lines = LineBuffer::new(shared.cfg.line_bytes_max);
    let mut jobs = shared.jobs.clone();
    jobs.borrow_and_update();
    let mut last_activity = Instant::now();
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    let mut out = String::new();
    // A clean job's notify waiting in `out`: (job, when its template arrived), for the fan-out figure.
    let mut clean_sent: Option<(u64, Instant)> = None;
    loop {
        let deadline = if session.ready() {
            last_activity + shared.cfg.idle_timeout
        } else {
            (start + shared.cfg.handshake_deadline).min(last_activity + shared.cfg.idle_timeout)
        };
        tokio::select! {
            biased;
            () = token.cancelled() => {
                say_reconnect(&mut stream, &mut out).await;
                return "shutdown";
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                return if session.ready() { "idle timeout" } else { "handshake deadline" };
            }
            () = mailbox.notify.notified() => {
                let control = mailbox.control.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(Control::SetExtranonce(new)) = control {
                    match session.reassign_extranonce(shared, new) {
                        None => tracing::debug!("extranonce1 change refused before the handshake completed"),
                        Some(outcome) => {
                            for l in &outcome.lines { out.push_str(l); }
                            if let Some(reason) = outcome.close {
                                let _ = write_bounded(shared, &mut stream, &out).await;
                                return reason;
                            }
                            let mut boxes = shared.mailboxes.lock().unwrap_or_else(|p| p.into_inner());
                            boxes.remove(&registration.en1);
                            boxes.insert(new, mailbox.clone());
                            registration.en1 = new;
                            clean_sent = None;
                        }
                    }
                }
            }
            _ = tick.tick() => {
                for l in session.tick(shared, now_ms()) { out.push_str(&l); }
            }
            r = jobs.changed() => {
                if r.is_err() {
                    say_reconnect(&mut stream, &mut out).await;
                    return "pool stopped";
                }
                let set = jobs.borrow_and_update().clone();
                if session.ready() {
                    let before = out.len();
                    for l in session.work_lines(shared, &set, false) { out.push_str(&l); }
                    if out.len() > before {
                        clean_sent = set.newest().filter(|j| j.clean).map(|j| (j.id, j.issued));
                    }
                }
            }
            // Read straight into the heap line buffer: the stack chunk lives only inside one poll, so
            // it is not part of the connection's resting future (that keeps idle connections small).
            // `poll_read` (unlike `try_read`) clears readiness after a short read, which saves the
            // extra would-block read per wakeup.
            r = std::future::poll_fn(|cx| {
                let mut chunk = [0u8; READ_CHUNK_BYTES];
                let mut buf = tokio::io::ReadBuf::new(&mut chunk);
                match std::pin::Pin::new(&mut stream).poll_read(cx, &mut buf) {
                    std::task::Poll::Ready(Ok(())) => {
                        lines.extend(buf.filled());
                        std::task::Poll::Ready(Ok(buf.filled().len()))
                    }
                    std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            }) => {
                match r {
                    Ok(0) | Err(_) => return "peer closed",
                    Ok(_) => {}
                }
                last_activity = Instant::now();
                // Replies in request order; a valid share's reply waits for its group commit, and
                // every share of this read is queued before any is awaited, so pipelined submits
                // share one commit.
                let mut replies: VecDeque<Reply> = VecDeque::new();
                let mut close: Option<(&'static str, bool)> = None;
                loop {
                    let line = match lines.next_line() {
                        Ok(Some(l)) => l.to_vec(),
                        Ok(None) => break,
                        Err(_) => {
                            let _ = write_bounded(shared, &mut stream, &out).await;
                            return "line too long";
                        }
                    };
                    let outcome = match Incoming::parse(&line) {
                        Ok(Incoming::Request { id, method, params }) => match ClientRequest::parse(&method, &params) {
                            // Boxed: the handler's state exists only while a request is in flight.
                            Ok(req) => Box::pin(session.handle(shared, id, req, now_ms())).await,
                            Err(e) => { shared.stats.rejected.fetch_add(1, Ordering::Relaxed); session.malformed(shared, &id, &e.to_string()) }
                        },
                        // A notification (id null) is acted on and never answered, even when malformed.
                        Ok(Incoming::Notification { method, params }) => match ClientRequest::parse(&method, &params) {
                            Ok(req) => Box::pin(session.handle(shared, serde_json::Value::Null, req, now_ms())).await,
                            Err(_) => { shared.stats.rejected.fetch_add(1, Ordering::Relaxed); crate::session::Outcome::default() }
                        },
                        Ok(Incoming::Response { .. }) => crate::session::Outcome::default(),
                        Err(e) => {
                            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                            session.malformed(shared, &serde_json::Value::Null, &e.to_string())
                        }
                    };
                    if let Some(p) = outcome.pending {
                        replies.push_back(Reply::Pending(p));
                    }
                    if !outcome.lines.is_empty() {
                        replies.push_back(Reply::Lines(outcome.lines));
                    }
                    if let Some(reason) = outcome.close {
                        close = Some((reason, outcome.ban));
                        break;
                    }
                }
                for r in replies {
                    let lines = match r {
                        Reply::Lines(l) => l,
                        Reply::Pending(p) => Box::pin(session.finish(shared, p, now_ms())).await,
                    };
                    for l in &lines {
                        if l.contains("\"result\":false") || l.contains("\"error\":[") {
                            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        out.push_str(l);
                    }
                }
                if let Some((reason, ban)) = close {
                    let _ = write_bounded(shared, &mut stream, &out).await;
                    if ban {
                        if let Ok(peer) = stream.peer_addr() {
                            shared.ban(peer.ip(), Instant::now());
                        }
                    }
                    return reason;
                }
            }
        }
        if !out.is_empty() {
            if out.len() > OUTGOING_BYTES_MAX {
                return "output over limit";
            }
            match write_bounded(shared, &mut stream, &out).await {
                Ok(()) => {}
                Err(WriteEnd::Failed) => return "write failed",
                Err(WriteEnd::TimedOut) => return "write timeout (the peer does not read)",
            }
            if let Some((job, issued)) = clean_sent.take() {
                shared.stats.clean_written(job, issued.elapsed());
            }
            // Release the buffer: an idle connection holds no write buffer.
            out = String::new();
        }
    }
}
