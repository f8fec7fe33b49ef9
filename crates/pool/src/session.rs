//! One connection's protocol state, and the share validation order of stratum-v1.md §9.
//!
//! Requests are handled strictly in order and answered in order. Nothing unsolicited is sent until
//! subscribe and authorize have both completed (cgminer reads the line after a configure as its reply).
//! Job ids are per connection (short decimals) and map to the global job plus the difficulty that was
//! in force when the job was sent; duplicates are keyed on the global job and the parsed submission.

use crate::config::{PayoutScheme, EXTRANONCE2_BYTES, NTIME_FUTURE_S, VERSION_MASK};
use crate::jobs::{Job, JobCoinbase, JobSet};
use crate::server::Shared;
use crate::share_log::{BlockRecord, ShareRecord};
use bitcoin::{Address, ScriptBuf};
use mining_core::validate::Reject;
use mining_core::{IssuedJob, ShareValidator, Submission, Vardiff};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use stratum::server_to_client::{error_line, result_line, subscribe_result};
use stratum::{code, ClientRequest, ServerMessage, Submit};

use units::Difficulty;

/// The reject message when accounting is too far behind (not the miner's fault: never counted toward a ban).
pub const BACKLOG_FULL: &str =
    "Accounting backlog full (ledger unavailable); share not accepted, retry later";

/// The reply to a share the share log could not take because the pool's disk is full: refused,
/// never acknowledged (the miner keeps it and may retry).
pub const SHARE_LOG_FULL: &str = "Pool storage full: share not recorded; retry later";

/// A valid share queued for the group commit: its reply (`true`) waits for [`Session::finish`].
#[derive(Debug)]
pub struct PendingShare {
    id: Value,
    committed: crate::share_log::Committed,
    address: String,
    worker: String,
    assigned: Difficulty,
    achieved: Difficulty,
    started: std::time::Instant,
    reservation: mining_core::validate::Reservation,
}

/// What the connection should do after a request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Lines to write, in order.
    pub lines: Vec<String>,
    /// Close the connection after writing (with the reason, for the log).
    pub close: Option<&'static str>,
    /// Ban the peer's IP.
    pub ban: bool,
    /// A share waiting for its commit; its reply comes before `lines` (see [`Session::finish`]).
    pub pending: Option<PendingShare>,
}

/// What the pool keeps with each job it sent on a connection ([`mining_core::IssuedJob`]'s payload).
struct ConnWork {
    job: Arc<Job>,
    cb: Arc<JobCoinbase>,
}

impl mining_core::IssuedWork for ConnWork {
    fn prepared(&self) -> &mining_core::PreparedJob {
        &self.cb.prepared
    }
}

/// Per-connection state.
pub struct Session {
    en1: [u8; 4],
    subscribed: bool,
    address: Option<(String, ScriptBuf)>,
    workers: HashSet<String>,
    version_mask: Option<u32>,
    extranonce_subscribed: bool,
    vardiff: Vardiff,
    sent_difficulty: Option<Difficulty>,
    /// The share target of the last difficulty a job was sent at (a 256-bit division, so computed
    /// once per difficulty change rather than once per job send).
    target_cache: Option<(Difficulty, units::Target)>,
    /// The jobs sent and the shares accepted: the one share validator (`mining_core::validate`).
    validator: ShareValidator<ConnWork>,
    invalid_streak: u32,
    /// When the connection first authorized (unix ms): its workers' hashrate window starts here.
    authorized_ms: u64,
    /// When a difficulty suggestion was last applied.
    last_suggest_ms: Option<u64>,
    /// The newest global job sent under its own id on this connection (see `send_work`).
    newest_global_sent: u64,
    /// Accepted shares on this connection.
    pub accepted: u64,
    /// Best achieved difficulty on this connection.
    pub best: Difficulty,
}

impl Session {
    /// A new session with its unique extranonce1.
    pub fn new(en1: [u8; 4], shared: &Shared, now_ms: u64) -> Session {
        Session {
            en1,
            subscribed: false,
            address: None,
            workers: HashSet::new(),
            version_mask: None,
            extranonce_subscribed: false,
            vardiff: Vardiff::new(shared.cfg.vardiff, shared.cfg.initial_difficulty, now_ms),
            sent_difficulty: None,
            target_cache: None,
            validator: ShareValidator::new(shared.cfg.jobs_kept, EXTRANONCE2_BYTES),
            invalid_streak: 0,
            authorized_ms: now_ms,
            last_suggest_ms: None,
            newest_global_sent: 0,
            accepted: 0,
            best: Difficulty::MIN,
        }
    }

    /// Subscribed and authorized: work may be sent.
    pub fn ready(&self) -> bool {
        self.subscribed && self.address.is_some()
    }

    /// Handles one request (or notification, `id` null: acted on, not answered).
    pub async fn handle(&mut self, shared: &Shared, id: Value, req: ClientRequest, now_ms: u64) -> Outcome {
        let notify_only = id.is_null();
        let was_ready = self.ready();
        let mut out = Outcome::default();
        let reply = match req {
            ClientRequest::Configure(c) => {
                let mut result = serde_json::Map::new();
                for ext in &c.extensions {
                    match ext.as_str() {
                        "version-rolling" => {
                            let mask = VERSION_MASK & c.version_rolling_mask.unwrap_or(u32::MAX);
                            self.version_mask = Some(mask);
                            result.insert("version-rolling".into(), json!(true));
                            result.insert("version-rolling.mask".into(), json!(format!("{mask:08x}")));
                        }
                        "minimum-difficulty" => {
                            if let Some(d) = c.minimum_difficulty.and_then(|d| Difficulty::from_f64(d).ok()) {
                                self.vardiff.raise_min(d);
                            }
                            result.insert("minimum-difficulty".into(), json!(true));
                        }
                        "subscribe-extranonce" => {
                            self.extranonce_subscribed = true;
                            result.insert("subscribe-extranonce".into(), json!(true));
                        }
                        "info" => {
                            result.insert("info".into(), json!(true));
                        }
                        other => {
                            result.insert(other.to_string(), json!(false));
                        }
                    }
                }
                Ok(Value::Object(result))
            }
            ClientRequest::Subscribe { .. } => {
                self.subscribed = true;
                let sid = stratum::to_hex(&self.en1);
                Ok(subscribe_result(&sid, &self.en1, EXTRANONCE2_BYTES))
            }
            ClientRequest::Authorize { user, password } => self.authorize(shared, &user, &password, now_ms),
            ClientRequest::SuggestDifficulty(d) => {
                if let Ok(d) = Difficulty::from_f64(d) {
                    self.suggest(shared, d, now_ms);
                }
                Ok(json!(true))
            }
            ClientRequest::SuggestTarget(t) => {
                self.suggest(shared, t.difficulty(), now_ms);
                Ok(json!(true))
            }
            ClientRequest::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                Ok(json!(true))
            }
            ClientRequest::Submit(s) => {
                let started = std::time::Instant::now();
                let res = self.submit_inner(shared, s, now_ms, &id, started).await;
                if res.is_err() {
                    shared.stats.observe_latency(started.elapsed().as_secs_f64());
                }
                let res = res.map(|p| {
                    out.pending = Some(p);
                    Value::Null
                });
                match &res {
                    Ok(_) => self.invalid_streak = 0,
                    Err((c, m)) if *c != code::JOB_NOT_FOUND && m != BACKLOG_FULL => {
                        self.invalid_streak += 1;
                        if self.invalid_streak >= shared.cfg.invalid_shares_before_ban {
                            out.close = Some("too many invalid shares");
                            out.ban = true;
                        }
                    }
                    Err(_) => {}
                }
                res
            }
            ClientRequest::Unknown(_) => Err((code::OTHER, "Unsupported method".to_string())),
        };
        if !notify_only && out.pending.is_none() {
            out.lines.push(match reply {
                Ok(v) => result_line(&id, v),
                Err((c, m)) => error_line(&id, c, &m),
            });
        }
        // Work starts once both subscribe and authorize are done; a difficulty change sends new work.
        let jobs = shared.jobs.borrow().clone();
        if self.ready() && !was_ready {
            out.lines.extend(self.work_lines(shared, &jobs, true));
        } else if self.difficulty_changed(&jobs) {
            out.lines.extend(self.work_lines(shared, &jobs, false));
        }
        out
    }

    /// A malformed request: error 20 (with `"id": null` when the line was not even JSON, as JSON-RPC
    /// answers parse errors), counted toward the ban.
    pub fn malformed(&mut self, shared: &Shared, id: &Value, why: &str) -> Outcome {
        let mut out = Outcome::default();
        out.lines.push(error_line(id, code::OTHER, why));
        self.invalid_streak += 1;
        if self.invalid_streak >= shared.cfg.invalid_shares_before_ban {
            out.close = Some("too many invalid requests");
            out.ban = true;
        }
        out
    }

    fn authorize(
        &mut self,
        shared: &Shared,
        user: &str,
        password: &str,
        now_ms: u64,
    ) -> Result<Value, (i32, String)> {
        let (addr, worker) = user.split_once('.').unwrap_or((user, ""));
        let parsed = Address::from_str(addr)
            .map_err(|e| {
                (
                    code::UNAUTHORIZED,
                    format!("Unauthorized worker: '{addr}' is not a valid address ({e})"),
                )
            })?
            .require_network(shared.cfg.network)
            .map_err(|_| {
                (
                    code::UNAUTHORIZED,
                    format!(
                        "Unauthorized worker: '{addr}' is not an address for {}",
                        shared.cfg.network
                    ),
                )
            })?;
        if let Some((a, _)) = &self.address {
            if a != addr {
                return Err((
                    code::UNAUTHORIZED,
                    "Unauthorized worker: one payout address per connection".into(),
                ));
            }
        }
        // `d=` difficulty hint in the password (e.g. "x,d=512" or "d=0.01").
        for part in password.split([',', ';', ' ']) {
            if let Some(v) = part.strip_prefix("d=") {
                if let Ok(d) = v
                    .parse::<f64>()
                    .map_err(|_| ())
                    .and_then(|f| Difficulty::from_f64(f).map_err(|_| ()))
                {
                    self.suggest(shared, d, now_ms);
                }
            }
        }
        if !self.workers.contains(worker) && self.workers.len() >= shared.cfg.workers_per_connection_max {
            return Err((
                code::UNAUTHORIZED,
                format!(
                    "Unauthorized worker: at most {} worker names per connection",
                    shared.cfg.workers_per_connection_max
                ),
            ));
        }
        if self.address.is_none() {
            self.authorized_ms = now_ms;
        }
        self.address = Some((addr.to_string(), parsed.script_pubkey()));
        self.workers.insert(worker.to_string());
        Ok(json!(true))
    }

    /// A difficulty suggestion (`suggest_difficulty`, `suggest_target`, `d=`): a hint, applied at
    /// once before work is sent and at most once per [`crate::PoolConfig::suggest_interval`] after
    /// (each applied change sends new work); others are answered `true` and ignored.
    fn suggest(&mut self, shared: &Shared, d: Difficulty, now_ms: u64) {
        if self.sent_difficulty.is_some() {
            let every = u64::try_from(shared.cfg.suggest_interval.as_millis()).unwrap_or(u64::MAX);
            if self
                .last_suggest_ms
                .is_some_and(|t| now_ms.saturating_sub(t) < every)
            {
                return;
            }
            self.last_suggest_ms = Some(now_ms);
        }
        self.vardiff.set(d, now_ms);
    }

    /// The connection's extranonce1.
    pub fn extranonce1(&self) -> [u8; 4] {
        self.en1
    }

    /// Moves the connection to extranonce1 `en1` (stratum-v1.md §4): a miner that subscribed to
    /// `set_extranonce` (`mining.extranonce.subscribe` or BIP310 `subscribe-extranonce`) gets
    /// `mining.set_extranonce` followed at once by a `clean_jobs` notify under a job id it has never
    /// seen, so no share can be judged against the wrong extranonce1 (shares for earlier jobs are
    /// stale, 21). Any other miner is told to reconnect and the connection closes (its new
    /// connection gets a new extranonce1). Before subscribe and authorize nothing unsolicited may be
    /// sent, so the change is refused: `None`.
    pub fn reassign_extranonce(&mut self, shared: &Shared, en1: [u8; 4]) -> Option<Outcome> {
        if !self.ready() {
            return None;
        }
        let mut out = Outcome::default();
        if !self.extranonce_subscribed {
            out.lines.push(
                ServerMessage::Reconnect {
                    host: None,
                    port: None,
                    wait_s: 0,
                }
                .to_line(),
            );
            out.close = Some("extranonce1 reassigned; the miner did not subscribe to set_extranonce");
            return Some(out);
        }
        self.en1 = en1;
        out.lines.push(
            ServerMessage::SetExtranonce {
                extranonce1: en1.to_vec(),
                extranonce2_size: EXTRANONCE2_BYTES,
            }
            .to_line(),
        );
        self.validator.clear();
        let jobs = shared.jobs.borrow().clone();
        out.lines.extend(self.send_work(shared, &jobs, true, true));
        Some(out)
    }

    /// The work to send now: `set_difficulty` (if it changed) and a `notify` of the newest job.
    pub fn work_lines(&mut self, shared: &Shared, jobs: &JobSet, force_clean: bool) -> Vec<String> {
        self.send_work(shared, jobs, force_clean, false)
    }

    /// [`Session::work_lines`]; with `fresh_id` the job goes out under a new per-connection id even
    /// on its first send here (after an extranonce1 change the shared id is already taken).
    fn send_work(
        &mut self,
        shared: &Shared,
        jobs: &JobSet,
        force_clean: bool,
        fresh_id: bool,
    ) -> Vec<String> {
        let Some(job) = jobs.newest().cloned() else {
            return Vec::new();
        };
        let script = match (&shared.cfg.payout, &self.address) {
            (PayoutScheme::Pool(s), _) => s.clone(),
            (PayoutScheme::Solo, Some((_, s))) => s.clone(),
            (PayoutScheme::Solo, None) => return Vec::new(),
        };
        let cb = match job.coinbase_for(&script) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a coinbase");
                return Vec::new();
            }
        };
        let clean = force_clean
            || job.clean
                && self
                    .validator
                    .newest()
                    .is_none_or(|j| j.payload.job.prev_hash() != job.prev_hash());
        let mut lines = Vec::with_capacity(2);
        let d = assigned_difficulty(self.vardiff.current(), &job);
        // Already live here at this difficulty (e.g. a difficulty check saw the job before the job
        // watch did): sending it again would only retire the id the miner is working on.
        if !force_clean
            && !fresh_id
            && self
                .validator
                .newest()
                .is_some_and(|j| j.payload.job.id == job.id && j.difficulty == d)
        {
            return Vec::new();
        }
        // First send of this job on this connection: the shared, preformatted line with the global id.
        // A re-send (a new difficulty, a new extranonce1) is new work: a variant of the job whose
        // coinbase carries its own id (from the same global counter), so the work sent before keeps
        // its own difficulty and no hash can be credited at a difficulty of the miner's choosing.
        // "First" is judged by the newest global job ever sent here, not by the validator's kept
        // jobs: once variants pushed a job out of them, sending it again under its own id would
        // bring back its work with an empty duplicate set.
        let first_send = !fresh_id && (clean || job.id > self.newest_global_sent);
        let (id, cb) = if first_send {
            (job.id, cb)
        } else {
            let id = crate::jobs::NEXT_JOB_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match job.coinbase_variant(&script, id) {
                Ok(v) => (id, v),
                Err(e) => {
                    tracing::error!(error = %e, "cannot build a coinbase variant");
                    return Vec::new();
                }
            }
        };
        if first_send {
            self.newest_global_sent = self.newest_global_sent.max(job.id);
        }
        if self.sent_difficulty != Some(d) {
            lines.push(ServerMessage::SetDifficulty(d.to_f64()).to_line());
            self.sent_difficulty = Some(d);
        }
        lines.push(cb.lines[usize::from(clean)].clone());
        let prefix = cb.prepared.prefix(&self.en1);
        let target = match self.target_cache {
            Some((cd, t)) if cd == d => t,
            _ => {
                let t = d.to_target();
                self.target_cache = Some((d, t));
                t
            }
        };
        self.validator.issue(
            IssuedJob {
                id,
                dedup_id: id,
                prefix,
                min_time: job.template.min_time,
                difficulty: d,
                target,
                payload: ConnWork { job, cb },
            },
            clean,
        );
        lines
    }

    /// Waits for a queued share's commit and answers it: `true` once it is durable, error 20 if the
    /// log failed (the miner keeps the share). Then credits it (stats, vardiff) and returns the reply
    /// and any new work a difficulty change calls for.
    pub async fn finish(&mut self, shared: &Shared, p: PendingShare, now_ms: u64) -> Vec<String> {
        let durable = p.committed.wait().await;
        shared.stats.observe_latency(p.started.elapsed().as_secs_f64());
        let notify_only = p.id.is_null();
        let mut lines = Vec::new();
        match durable {
            Err(e) => {
                tracing::error!(error = %e, "share not durable; answering with an error so the miner keeps it");
                // Not durable, so not seen: the miner's retry is judged again, not refused as a duplicate.
                self.validator.release(p.reservation);
                if !notify_only {
                    let why = match e {
                        crate::share_log::LogError::DiskFull(_) => SHARE_LOG_FULL,
                        crate::share_log::LogError::Failed(_) => "Share could not be recorded; retry",
                    };
                    lines.push(error_line(&p.id, code::OTHER, why));
                }
                return lines;
            }
            Ok(()) => {
                if !notify_only {
                    lines.push(result_line(&p.id, json!(true)));
                }
            }
        }
        self.accepted += 1;
        self.best = self.best.max(p.achieved);
        shared.stats.worker_share(
            &p.address,
            &p.worker,
            &self.en1,
            p.assigned,
            p.achieved,
            self.authorized_ms,
            now_ms,
        );
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.vardiff.on_share(p.assigned, now_ms);
        let jobs = shared.jobs.borrow().clone();
        if self.difficulty_changed(&jobs) {
            lines.extend(self.work_lines(shared, &jobs, false));
        }
        lines
    }

    async fn submit_inner(
        &mut self,
        shared: &Shared,
        s: Submit,
        now_ms: u64,
        id: &Value,
        started: std::time::Instant,
    ) -> Result<PendingShare, (i32, String)> {
        // 1. subscribed, authorized, worker matches
        if !self.subscribed {
            return Err((code::NOT_SUBSCRIBED, "Not subscribed".into()));
        }
        let Some((address, _)) = self.address.clone() else {
            return Err((code::UNAUTHORIZED, "Unauthorized worker".into()));
        };
        let worker = s.worker.split_once('.').map_or("", |(_, w)| w).to_string();
        let (addr_part, _) = s.worker.split_once('.').unwrap_or((&s.worker, ""));
        if addr_part != address.as_str() || !self.workers.contains(&worker) {
            return Err((code::UNAUTHORIZED, "Unauthorized worker".into()));
        }
        // 2.–6. shape, job, version bits, ntime window, duplicate, hash against the job's target
        let now_s = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let sub = Submission {
            job_id: s.job_id.parse::<u64>().ok(),
            extranonce2: &s.extranonce2,
            ntime: s.ntime,
            nonce: s.nonce,
            version_bits: s.version_bits,
        };
        let mask = self.version_mask.unwrap_or(0);
        let (job, coinbase, header, is_block, global, assigned, achieved, reservation) =
            match self.validator.check(&sub, mask, now_s, NTIME_FUTURE_S) {
                Ok(a) => (
                    a.job.payload.job.clone(),
                    a.job
                        .payload
                        .cb
                        .prepared
                        .coinbase_bytes(&self.en1, &s.extranonce2),
                    a.check.header,
                    a.is_block,
                    a.job.payload.job.id,
                    a.job.difficulty,
                    a.check.achieved_difficulty(),
                    a.reservation,
                ),
                Err(r) => return Err((reject_code(&r), r.to_string())),
            };
        // 7. not past the accounting backlog bound (the ledger is down); a block share always goes on
        if !is_block && shared.stats.ledger_backlog.load(Ordering::Relaxed) >= shared.cfg.ledger_backlog_max {
            self.validator.release(reservation);
            return Err((code::OTHER, BACKLOG_FULL.into()));
        }
        // 8. queued for the group commit; the reply waits for it. A block share is queued before its
        // block's intent row, and the single writer commits in queue order, so once the intent is
        // durable the share is too: a crash after the chain took the block loses neither (accounting
        // finds the block's window through its share row).
        let rec = ShareRecord {
            ts_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
            address: address.clone(),
            worker: worker.clone(),
            job_id: i64::try_from(global).unwrap_or(i64::MAX),
            difficulty: assigned,
            extranonce1: self.en1.to_vec(),
            extranonce2: s.extranonce2.clone(),
            header,
            is_block,
        };
        let queued = shared.log.enqueue_share(rec).await;
        // 9. a block goes to the chain (never held back by the log)
        if is_block {
            self.found_block(shared, &job, &coinbase, &header, &address, now_ms)
                .await;
        }
        let committed = match queued {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "share log unavailable; answering with an error so the miner keeps the share");
                self.validator.release(reservation);
                return Err((code::OTHER, "Share could not be recorded; retry".to_string()));
            }
        };
        Ok(PendingShare {
            id: id.clone(),
            committed,
            address,
            worker,
            assigned,
            achieved,
            started,
            reservation,
        })
    }

    async fn found_block(
        &self,
        shared: &Shared,
        job: &Job,
        coinbase: &[u8],
        header: &[u8; 80],
        finder: &str,
        now_ms: u64,
    ) {
        let block = match job.template.assemble(coinbase, header) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "a block-meeting share did not assemble into a block");
                return;
            }
        };
        let hash = block.block_hash();
        let bytes = bitcoin::consensus::serialize(&block);
        // The intent first, durably: a crash after the chain took the block but before its fate is
        // logged leaves a row that `Pool::start` settles against the chain, never a lost credit.
        // (If the log cannot take it, the block still goes to the chain: a block is never held back.)
        let mut rec = BlockRecord {
            ts_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
            height: job.template.height,
            hash: hash.to_string(),
            finder: finder.to_string(),
            block: bytes,
            fate: crate::share_log::FATE_SUBMITTING.to_string(),
        };
        let intent = match tokio::time::timeout(
            crate::server::BLOCK_INTENT_WAIT,
            shared.log.append_block(rec.clone()),
        )
        .await
        {
            Ok(r) => r.map(|()| true),
            // Queued but not yet durable: submit anyway; the intent commits later and is settled
            // at a new tip (BLOCK_INTENT_SETTLE_AFTER) if the fate below finds no row to update.
            Err(_) => Ok(false),
        };
        match &intent {
            Err(e) => tracing::error!(error = %e, %hash, "block intent not recorded; submitting it anyway"),
            Ok(false) => {
                tracing::warn!(%hash, "block intent not durable within BLOCK_INTENT_WAIT; submitting it anyway")
            }
            Ok(true) => {}
        }
        let fate = match shared.backend.submit_block(block).await {
            Ok(chain::BlockFate::Accepted) => "accepted".to_string(),
            Ok(chain::BlockFate::Rejected(r)) => r,
            // Undecided (a competing block is the node's tip for now): the intent row stays and
            // is settled against the chain at a later tip, like one left by a crash.
            Ok(chain::BlockFate::Inconclusive(r)) => {
                tracing::warn!(height = job.template.height, %hash, answer = %r, finder,
                    "block found, the node's answer is inconclusive; it is settled against the chain at a later tip");
                if !matches!(intent, Ok(true)) {
                    if let Err(e) = shared.log.append_block(rec).await {
                        tracing::error!(error = %e, %hash, "inconclusive block's intent not recorded");
                    }
                }
                return;
            }
            // The node may have taken it all the same (a timeout after the submission): ask.
            Err(e) => match shared.backend.confirmations(&hash).await {
                Ok(Some(_)) => "accepted".to_string(),
                _ => format!("submit-failed: {e}"),
            },
        };
        crate::failpoint("block-submitted");
        tracing::info!(height = job.template.height, %hash, %fate, finder, "block found");
        if fate == "accepted" {
            shared.stats.blocks.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.stats.blocks_rejected.fetch_add(1, Ordering::Relaxed);
        }
        let logged = match intent {
            Ok(true) => shared.log.set_block_fate(&rec.hash, &fate).await,
            // No intent, or one not known to be queued: a row with the fate (a late intent row is
            // settled at a new tip; crediting is idempotent on the block hash, so two rows of one
            // block credit it once).
            Ok(false) | Err(_) => {
                let _ = shared.log.set_block_fate(&rec.hash, &fate).await;
                rec.fate = fate;
                shared.log.append_block(rec).await
            }
        };
        if let Err(e) = logged {
            tracing::error!(error = %e, %hash, "found block's fate not recorded (it was submitted to the chain; the next start settles it)");
        }
    }

    /// Work was sent and the difficulty the newest job would carry now differs from the one sent.
    fn difficulty_changed(&self, jobs: &JobSet) -> bool {
        self.ready()
            && self.sent_difficulty.is_some()
            && jobs
                .newest()
                .is_some_and(|j| Some(assigned_difficulty(self.vardiff.current(), j)) != self.sent_difficulty)
    }

    /// Periodic vardiff check; new work if the difficulty changed.
    pub fn tick(&mut self, shared: &Shared, now_ms: u64) -> Vec<String> {
        if !self.ready() {
            return Vec::new();
        }
        self.vardiff.on_tick(now_ms);
        let jobs = shared.jobs.borrow().clone();
        if self.difficulty_changed(&jobs) {
            return self.work_lines(shared, &jobs, false);
        }
        Vec::new()
    }
}

/// The Stratum error code of a validator reject (stratum-v1.md §6).
fn reject_code(r: &Reject) -> i32 {
    match r {
        Reject::JobNotFound => code::JOB_NOT_FOUND,
        Reject::Duplicate => code::DUPLICATE,
        Reject::LowDifficulty => code::LOW_DIFFICULTY,
        Reject::Extranonce2Size(_) | Reject::VersionBits(_) | Reject::NtimeOutOfRange => code::OTHER,
    }
}

/// The difficulty a job goes out at: vardiff's, as sent on the wire, never above the job's network
/// difficulty (so a hash that is a block always meets the share target: `Difficulty::from_target`
/// floors, and the target of a floored difficulty is at least the network target).
fn assigned_difficulty(vardiff: Difficulty, job: &Job) -> Difficulty {
    wire_difficulty(vardiff.min(job.network_difficulty))
}

/// The difficulty actually assigned and sent: whole numbers from 1 up (ASIC firmware reads `valueint`),
/// fractions only below 1 (only when the operator's floor allows them). The job is judged against this
/// exact value, so what the miner was told and what the pool checks never differ.
fn wire_difficulty(d: Difficulty) -> Difficulty {
    if d >= Difficulty::ONE {
        Difficulty::from_fixed(d.to_fixed() & !0xffff_ffff)
    } else {
        d
    }
}
