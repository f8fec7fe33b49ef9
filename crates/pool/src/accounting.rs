//! Feeds accepted shares into accounting: the share log (local SQLite, every acknowledged share
//! already durable there) is the buffer; this task copies it, in id order, into the ledger's work
//! log (source [`SOURCE`], sequence = share log id), where PPLNS/TIDES windows are read.
//!
//! The ledger may be elsewhere (PostgreSQL) and may be down: the task retries with backoff up to
//! [`INGEST_RETRY_MAX`] and resumes from the ledger's high-water mark, so a database outage loses
//! nothing and a retry never counts a share twice (ingest is idempotent on `(source, seq)`). The
//! backlog (shares logged but not yet in the ledger) is the `cloudmine_pool_ledger_backlog` gauge.
//!
//! In pool mode (the coinbase pays the pool) every block the chain accepted is then credited PPLNS
//! ([`credit_block`]): the reward `R` (the coinbase's outputs) leaves `platform/mined`, the fee
//! `floor(R·f)` goes to `platform/fees`, and the rest is split over the last `N = 2·W` of work up to
//! and including the block's own share (`W` the block's work; TIDES: `N = 8·W` up to the newest
//! share durable when the block's job was issued, the job row's `shares_before`) into each owner's
//! *immature* balance,
//! exact to the millisatoshi ([`ledger::schemes`]). The transaction's key is `block:<hash>`, so a
//! restart or a retry never credits a block twice.
//!
//! With `--sharing pps|fpps` every share is paid instead, at once ([`credit_shares`]): each batch of
//! logged shares becomes one transaction `pps:<first id>-<last id>` from `platform/pool-reserve` into
//! the owners' *available* balances, each share worth `d/D × B × (1−f)` (PPS) or
//! `d/D × (B + E[F]) × (1−f)` (FPPS) with `D`, `B` and `E[F]` of its job as issued (the share log's
//! `jobs` rows), and at most one block's reward. The newest `pps:` key is the cursor, so a restart
//! resumes after the last credited share. The pool's blocks then refill the reserve (`block:<hash>`:
//! the whole reward from `platform/mined`), which may be negative: the operator's capital carries
//! the variance, as PPS pools' do.
//!
//! With coinbase payees ([`crate::payees`]) a block's job paid the window's largest earners in its
//! coinbase: that block is credited from the window fixed in the job's plan, each payee's output
//! into `user/<owner>/coinbase` and the rest of each amount into immature balances.
//!
//! Then each credited block is settled ([`settle_block`]): once it is [`COINBASE_MATURITY`] deep
//! in the best chain, every owner's credit moves from immature to available and every coinbase
//! payee's output to `platform/paid-out` (`mature:<hash>`); if it leaves the best chain first, the
//! credit is reversed posting by posting (`orphan:<hash>`).

use crate::stats::PoolStats;
use ledger::schemes::{block_work, fee_split, split_by_weight};
use ledger::{Account, Ledger, PlatformAccount, Posting, Transaction, WorkRecord};
use sqlx::{Row, SqlitePool};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The work log source name of this pool's shares.
pub const SOURCE: &str = "pool";
/// Shares copied per ledger call.
pub const INGEST_BATCH: i64 = 10_000;
/// Pause when caught up.
pub const INGEST_IDLE: Duration = Duration::from_millis(250);
/// Longest wait between retries while the ledger is unavailable.
pub const INGEST_RETRY_MAX: Duration = Duration::from_secs(10);

/// Copies one batch of shares after share id `after`; returns the records copied and the last id.
pub async fn ingest_once(
    log: &SqlitePool,
    ledger: &Ledger,
    after: i64,
) -> Result<(Vec<WorkRecord>, i64), String> {
    let rows = sqlx::query(
        "SELECT id, address, diff_int, diff_frac, ts_ms FROM shares WHERE id > ? ORDER BY id LIMIT ?",
    )
    .bind(after)
    .bind(INGEST_BATCH)
    .fetch_all(log)
    .await
    .map_err(|e| format!("share log: {e}"))?;
    let mut recs = Vec::with_capacity(rows.len());
    let mut last = after;
    for r in &rows {
        let id: i64 = r.try_get(0).map_err(|e| e.to_string())?;
        let owner: String = r.try_get(1).map_err(|e| e.to_string())?;
        let int: i64 = r.try_get(2).map_err(|e| e.to_string())?;
        let frac: i64 = r.try_get(3).map_err(|e| e.to_string())?;
        let ts_ms: i64 = r.try_get(4).map_err(|e| e.to_string())?;
        // Work = assigned difficulty · 2^32 = the fixed-point difficulty, exactly.
        let work = (u128::from(int.unsigned_abs()) << 32) | u128::from(frac.unsigned_abs());
        recs.push(WorkRecord {
            seq: id.unsigned_abs(),
            owner,
            work,
            ts_ms,
        });
        last = id;
    }
    if !recs.is_empty() {
        ledger
            .ingest_work(SOURCE, &recs)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((recs, last))
}

/// Longest interval between settlement passes when the tip does not move.
pub const SETTLE_EVERY: Duration = Duration::from_secs(5);

/// Confirmations after which a coinbase may be spent (consensus) and credits become available.
pub use chain::COINBASE_MATURITY;

/// Where a credited block stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Not credited by this pool (nothing to settle).
    NotCredited,
    /// Still immature.
    Pending(u32),
    /// Matured now or before.
    Matured,
    /// Left the best chain: its credit was reversed now or before.
    Orphaned,
}

/// Settles one credited block: matures it, reverses it, or leaves it pending.
pub async fn settle_block(
    ledger: &Ledger,
    backend: &chain::Backend,
    hash: &str,
) -> Result<Settlement, String> {
    let credit_key = format!("block:{hash}");
    let (mature_key, orphan_key) = (format!("mature:{hash}"), format!("orphan:{hash}"));
    let e = |x: ledger::LedgerError| x.to_string();
    if ledger.find_key(&credit_key).await.map_err(e)?.is_none() {
        return Ok(Settlement::NotCredited);
    }
    if ledger.find_key(&mature_key).await.map_err(e)?.is_some() {
        return Ok(Settlement::Matured);
    }
    if ledger.find_key(&orphan_key).await.map_err(e)?.is_some() {
        return Ok(Settlement::Orphaned);
    }
    let h: bitcoin::BlockHash = hash.parse().map_err(|x| format!("block hash {hash}: {x}"))?;
    let confs = backend.confirmations(&h).await.map_err(|x| x.to_string())?;
    let postings = ledger.postings_of(&credit_key).await.map_err(e)?;
    let parse = |name: &str| Account::parse(name).map_err(|x| x.to_string());
    match confs {
        Some(c) if c < COINBASE_MATURITY => Ok(Settlement::Pending(c)),
        Some(_) => {
            let mut p = Vec::new();
            let mut paid_in_coinbase = 0i64;
            for (name, msat) in &postings {
                match parse(name)? {
                    Account::User {
                        owner,
                        bucket: ledger::UserBucket::Immature,
                    } => {
                        p.push(Posting {
                            account: Account::immature(&owner),
                            msat: -msat,
                        });
                        p.push(Posting {
                            account: Account::available(&owner),
                            msat: *msat,
                        });
                    }
                    // Paid on chain by the coinbase itself: spendable by its owner now, so paid out.
                    Account::User {
                        owner,
                        bucket: ledger::UserBucket::Coinbase,
                    } => {
                        p.push(Posting {
                            account: Account::coinbase(&owner),
                            msat: -msat,
                        });
                        paid_in_coinbase = paid_in_coinbase.checked_add(*msat).ok_or("paid overflow")?;
                    }
                    _ => {}
                }
            }
            if paid_in_coinbase != 0 {
                p.push(Posting {
                    account: Account::Platform(PlatformAccount::PaidOut),
                    msat: paid_in_coinbase,
                });
            }
            if !p.is_empty() {
                let tx = Transaction::new(
                    &mature_key,
                    &format!("block {hash} matured ({COINBASE_MATURITY} confirmations)"),
                    p,
                )
                .map_err(|x| x.to_string())?;
                ledger.post(&tx).await.map_err(e)?;
            }
            Ok(Settlement::Matured)
        }
        None => {
            let mut p = Vec::new();
            for (name, msat) in &postings {
                p.push(Posting {
                    account: parse(name)?,
                    msat: -msat,
                });
            }
            let tx = Transaction::new(
                &orphan_key,
                &format!("block {hash} left the best chain: credit reversed"),
                p,
            )
            .map_err(|x| x.to_string())?;
            ledger.post(&tx).await.map_err(e)?;
            tracing::warn!(
                block = hash,
                "a credited block left the best chain; its credits were reversed"
            );
            Ok(Settlement::Orphaned)
        }
    }
}

/// Settles every accepted block after block-log id `after` until the first that is still pending;
/// returns the id below which everything is settled.
async fn settle_blocks(
    log: &SqlitePool,
    ledger: &Ledger,
    backend: &chain::Backend,
    after: i64,
) -> Result<i64, String> {
    let rows = sqlx::query(
        "SELECT id, hash, fate FROM blocks WHERE id > ? AND fate IN ('accepted', ?) ORDER BY id LIMIT 200",
    )
    .bind(after)
    .bind(crate::share_log::FATE_SUBMITTING)
    .fetch_all(log)
    .await
    .map_err(|e| format!("share log: {e}"))?;
    let mut pos = after;
    let mut all_settled = true;
    for r in rows {
        let id: i64 = r.try_get(0).map_err(|e| e.to_string())?;
        let hash: String = r.try_get(1).map_err(|e| e.to_string())?;
        let fate: String = r.try_get(2).map_err(|e| e.to_string())?;
        if fate == crate::share_log::FATE_SUBMITTING {
            break; // its fate is not known yet: the cursor waits here
        }
        match settle_block(ledger, backend, &hash).await? {
            Settlement::Pending(_) => all_settled = false,
            Settlement::NotCredited | Settlement::Matured | Settlement::Orphaned => {
                if all_settled {
                    pos = id;
                }
            }
        }
    }
    Ok(pos)
}

/// How a pool-mode block is shared: the window rule and the pool fee.
#[derive(Debug, Clone)]
pub struct Rule {
    /// PPLNS or TIDES.
    pub sharing: crate::config::Sharing,
    /// Pool fee, parts per million of the reward.
    pub fee_ppm: u32,
    /// Coinbase payouts: the rule that books a coinbase's payee outputs (needed to credit any block
    /// whose job paid payees), and the slot new plans go to when the pool pays payees
    /// ([`crate::payees`]).
    pub payees: Option<(crate::payees::PayeeRule, Option<crate::server::PlanSlot>)>,
}

impl Rule {
    /// A rule without coinbase payees.
    pub fn new(sharing: crate::config::Sharing, fee_ppm: u32) -> Rule {
        Rule {
            sharing,
            fee_ppm,
            payees: None,
        }
    }
}

/// What happened to one accepted block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credit {
    /// Posted now or before (idempotent): the ledger transaction id.
    Posted(i64),
    /// No share of this pool's log carries it (its share's commit failed, so the miner was told to
    /// retry): nothing to credit.
    NotOurs,
    /// Its share is not in the ledger's work log yet: try again later.
    Wait,
}

/// How long a logged block may wait for its share's row before it counts as not ours: the block row
/// is committed before its share (the block goes to the chain and the log first), so for a moment
/// the share is not there yet.
pub const BLOCK_SHARE_GRACE: Duration = Duration::from_secs(60);

/// A row of the share log's `blocks` table.
#[derive(Debug, Clone, Copy)]
pub struct LoggedBlock<'a> {
    /// Block hash (display hex).
    pub hash: &'a str,
    /// Height.
    pub height: i64,
    /// The serialized block.
    pub raw: &'a [u8],
    /// When it was logged (unix ms).
    pub logged_ms: i64,
}

/// The work of a block at `bits` (hashes), at most 2^120 (a window factor times it stays in u128).
fn work_of_bits(bits: u32) -> Result<u128, String> {
    let target = units::Target::from_compact(bits).map_err(|e| e.to_string())?;
    let w = block_work(target).map_err(|e| e.to_string())?;
    if w.bits() > 120 {
        return Err(format!("bits {bits:08x}: work out of range"));
    }
    Ok(w.low_u128())
}

/// Credits one accepted block (pool mode). `ingested` is the highest share id already in the
/// ledger's work log.
pub async fn credit_block(
    log: &SqlitePool,
    ledger: &Ledger,
    rule: &Rule,
    b: LoggedBlock<'_>,
    ingested: i64,
) -> Result<Credit, String> {
    use bitcoin::consensus::deserialize;
    let LoggedBlock {
        hash,
        height,
        raw,
        logged_ms,
    } = b;
    let (sharing, fee_ppm) = (rule.sharing, rule.fee_ppm);
    // Credited before (e.g. re-examined after a restart): no window to read again.
    if let Some(id) = ledger
        .find_key(&format!("block:{hash}"))
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(Credit::Posted(id));
    }
    let block: bitcoin::Block = deserialize(raw).map_err(|e| format!("block {hash}: {e}"))?;
    let header = raw
        .get(..80)
        .ok_or_else(|| format!("block {hash}: shorter than a header"))?;
    let share: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM shares WHERE is_block = 1 AND header = ? ORDER BY id DESC LIMIT 1",
    )
    .bind(header)
    .fetch_optional(log)
    .await
    .map_err(|e| format!("share log: {e}"))?;
    let Some(share) = share else {
        let age_ms = i64::try_from(crate::server::now_ms())
            .unwrap_or(i64::MAX)
            .saturating_sub(logged_ms);
        if age_ms < i64::try_from(BLOCK_SHARE_GRACE.as_millis()).unwrap_or(i64::MAX) {
            return Ok(Credit::Wait);
        }
        tracing::warn!(
            block = hash,
            "a logged block has no share row (its share was not recorded): not credited"
        );
        return Ok(Credit::NotOurs);
    };
    if share > ingested {
        return Ok(Credit::Wait);
    }
    let coinbase = block
        .txdata
        .first()
        .ok_or_else(|| format!("block {hash}: no coinbase"))?;
    let reward_sat: u64 = coinbase.output.iter().map(|o| o.value.to_sat()).sum();
    let reward = units::MilliSats::new(reward_sat.saturating_mul(1000)).map_err(|e| e.to_string())?;
    let w = work_of_bits(block.header.bits.to_consensus()).map_err(|e| format!("block {hash}: {e}"))?;
    if sharing.per_share() {
        // PPS/FPPS: the miners were paid for every share already; the block refills the reserve.
        let postings = vec![
            Posting::debit(Account::Platform(PlatformAccount::Mined), reward).map_err(|e| e.to_string())?,
            Posting::credit(Account::Platform(PlatformAccount::PoolReserve), reward)
                .map_err(|e| e.to_string())?,
        ];
        let memo = format!(
            "block {height}: reward into the pool reserve ({})",
            sharing.name()
        );
        return post_block_credit(ledger, hash, &memo, postings).await;
    }
    let job_row: Option<(i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT j.job_id, j.shares_before, j.payout_plan FROM shares s JOIN jobs j ON j.job_id = s.job_id WHERE s.id = ?",
    )
    .bind(share)
    .fetch_optional(log)
    .await
    .map_err(|e| format!("share log: {e}"))?;
    if let Some((job, _, Some(plan))) = &job_row {
        // The job's coinbase paid payees from a window fixed at issue: book what it paid.
        return credit_coinbase_payees(ledger, rule, (hash, height), coinbase, *job, plan).await;
    }
    // Without a plan the whole reward is the pool's to share: a coinbase paying anyone else would
    // be credited twice, so it is refused loudly instead.
    if let Some((prule, _)) = &rule.payees {
        if let Some(o) = coinbase
            .output
            .iter()
            .find(|o| o.value.to_sat() > 0 && o.script_pubkey != prule.pool_script)
        {
            return Err(format!(
                "block {hash}: its coinbase pays {} sat to {}, not the pool, and its job has no payee plan: not credited",
                o.value.to_sat(),
                o.script_pubkey
            ));
        }
    }
    let window = w * sharing.window_factor();
    // PPLNS: the window ends at the block's own share. TIDES: it was fixed when the block's job was
    // issued, at the newest share durable then (its jobs row); a share from before job rows existed
    // falls back to the block's share, and the memo says so.
    let (upto, anchor) = match sharing {
        crate::config::Sharing::Tides => match job_row.map(|(job, before, _)| (job, before)) {
            Some((job, before)) => (
                before,
                format!(", the window fixed when job {job} was issued (up to share {before})"),
            ),
            None => (
                share,
                format!(", up to share {share} (its job has no row: window not fixed at issue)"),
            ),
        },
        _ => (share, String::new()),
    };
    let shares = ledger
        .work_window_upto(SOURCE, upto.unsigned_abs(), window)
        .await
        .map_err(|e| e.to_string())?;
    let mut by_owner: BTreeMap<String, u128> = BTreeMap::new();
    for (owner, work) in shares {
        *by_owner.entry(owner).or_insert(0) += work;
    }
    let owners: Vec<&String> = by_owner.keys().collect();
    let weights: Vec<u128> = by_owner.values().copied().collect();
    let total: u128 = weights.iter().sum();
    let (fee, part) = fee_split(reward, fee_ppm).map_err(|e| e.to_string())?;
    let amounts = split_by_weight(&weights, total, part.to_msat()).map_err(|e| e.to_string())?;
    let msat = |v: u64| units::MilliSats::new(v).map_err(|e| e.to_string());
    let mut postings =
        vec![Posting::debit(Account::Platform(PlatformAccount::Mined), reward).map_err(|e| e.to_string())?];
    if fee.to_msat() > 0 {
        postings
            .push(Posting::credit(Account::Platform(PlatformAccount::Fees), fee).map_err(|e| e.to_string())?);
    }
    if amounts.is_empty() && part.to_msat() > 0 {
        // No work in the window (TIDES: a block on a job issued before any share; PPLNS cannot have
        // an empty window, but stay exact): the miners' part goes to the pool reserve.
        postings.push(
            Posting::credit(Account::Platform(PlatformAccount::PoolReserve), part)
                .map_err(|e| e.to_string())?,
        );
    }
    for (i, a) in amounts {
        let owner = owners.get(i as usize).ok_or("owner index out of range")?;
        postings.push(Posting::credit(Account::immature(owner), msat(a)?).map_err(|e| e.to_string())?);
    }
    let memo = format!(
        "block {height}: {} over {window} hashes of work, fee {fee_ppm} ppm{anchor}",
        sharing.name()
    );
    post_block_credit(ledger, hash, &memo, postings).await
}

/// Credits a block whose job's coinbase paid window earners directly: the window is read again from
/// the job's plan (the work log up to a share id never changes), the split recomputed exactly, and
/// the coinbase booked against it ([`crate::payees::PayeePlan::decompose`]): each payee's output into
/// `user/<owner>/coinbase`, the rest of each owner's amount into its immature balance, the fee to
/// `platform/fees`; together exactly the reward taken from `platform/mined`.
async fn credit_coinbase_payees(
    ledger: &Ledger,
    rule: &Rule,
    (hash, height): (&str, i64),
    coinbase: &bitcoin::Transaction,
    job: i64,
    plan: &str,
) -> Result<Credit, String> {
    use crate::payees::{PayeePlan, PlanRef};
    let r = PlanRef::parse(plan)?;
    let prule = rule.payees.as_ref().map(|(p, _)| p).ok_or_else(|| {
        format!("block {hash}: job {job} paid coinbase payees, but this pool has no payee rule")
    })?;
    let shares = ledger
        .work_window_upto(SOURCE, r.upto.unsigned_abs(), r.window)
        .await
        .map_err(|e| e.to_string())?;
    let plan = PayeePlan::new(shares, r.upto, r.window, prule);
    let d = plan
        .decompose(coinbase, r.fee_ppm, prule)
        .map_err(|e| format!("block {hash}: {e}"))?;
    let postings = payee_postings(&d)?;
    let memo = format!(
        "block {height}: {} over {} hashes of work, fee {} ppm, {} paid in the coinbase, the window fixed when job {job} was issued (up to share {})",
        rule.sharing.name(),
        r.window,
        r.fee_ppm,
        d.paid.len(),
        r.upto
    );
    post_block_credit(ledger, hash, &memo, postings).await
}

/// The postings of a block whose coinbase paid payees: the reward out of `platform/mined`, the fee
/// into `platform/fees`, each payee's output into `user/<owner>/coinbase`, the rest of each amount
/// into `user/<owner>/immature` (no one in the window: the miners' part to the pool reserve).
pub fn payee_postings(d: &crate::payees::Decomposed) -> Result<Vec<Posting>, String> {
    let e = |x: ledger::TxError| x.to_string();
    let msat = |v: u64| units::MilliSats::new(v).map_err(|e| e.to_string());
    let reward = d.fee.checked_add(d.part).map_err(|e| e.to_string())?;
    let mut postings = vec![Posting::debit(Account::Platform(PlatformAccount::Mined), reward).map_err(e)?];
    if d.fee.to_msat() > 0 {
        postings.push(Posting::credit(Account::Platform(PlatformAccount::Fees), d.fee).map_err(e)?);
    }
    if d.paid.is_empty() && d.credits.is_empty() && d.part.to_msat() > 0 {
        postings.push(Posting::credit(Account::Platform(PlatformAccount::PoolReserve), d.part).map_err(e)?);
    }
    for (owner, sat) in &d.paid {
        let m = sat.checked_mul(1000).ok_or("payee overflow")?;
        postings.push(Posting::credit(Account::coinbase(owner), msat(m)?).map_err(e)?);
    }
    for (owner, m) in &d.credits {
        postings.push(Posting::credit(Account::immature(owner), msat(*m)?).map_err(e)?);
    }
    Ok(postings)
}

/// Posts a block's credit under its key `block:<hash>` (a retry is a no-op).
async fn post_block_credit(
    ledger: &Ledger,
    hash: &str,
    memo: &str,
    postings: Vec<Posting>,
) -> Result<Credit, String> {
    let tx = Transaction::new(&format!("block:{hash}"), memo, postings).map_err(|e| e.to_string())?;
    let posted = ledger.post(&tx).await.map_err(|e| e.to_string())?;
    Ok(Credit::Posted(posted.id()))
}

/// Credits every accepted block after block-log id `after` that can be credited now; returns the
/// new position.
async fn credit_blocks(
    log: &SqlitePool,
    ledger: &Ledger,
    rule: &Rule,
    after: i64,
    ingested: i64,
) -> Result<i64, String> {
    let rows = sqlx::query(
        "SELECT id, hash, height, block, ts_ms, fate FROM blocks WHERE id > ? AND fate IN ('accepted', ?) ORDER BY id LIMIT 100",
    )
    .bind(after)
    .bind(crate::share_log::FATE_SUBMITTING)
    .fetch_all(log)
    .await
    .map_err(|e| format!("share log: {e}"))?;
    let mut pos = after;
    for r in rows {
        let id: i64 = r.try_get(0).map_err(|e| e.to_string())?;
        let hash: String = r.try_get(1).map_err(|e| e.to_string())?;
        let height: i64 = r.try_get(2).map_err(|e| e.to_string())?;
        let raw: Vec<u8> = r.try_get(3).map_err(|e| e.to_string())?;
        let logged_ms: i64 = r.try_get(4).map_err(|e| e.to_string())?;
        let fate: String = r.try_get(5).map_err(|e| e.to_string())?;
        if fate == crate::share_log::FATE_SUBMITTING {
            break; // submitted, answer not logged yet: credit nothing past it until it is
        }
        let b = LoggedBlock {
            hash: &hash,
            height,
            raw: &raw,
            logged_ms,
        };
        match credit_block(log, ledger, rule, b, ingested).await? {
            Credit::Wait => break,
            Credit::Posted(_) | Credit::NotOurs => pos = id,
        }
    }
    Ok(pos)
}

/// Key prefix of PPS/FPPS credits: `pps:<first share id>-<last share id>`; the newest such key is the
/// crediting cursor, so a restart resumes after the last credited share and never pays one twice.
pub const PPS_KEY_PREFIX: &str = "pps:";

/// The last share id PPS/FPPS-credited, from the newest `pps:` key (0 if none).
pub async fn pps_cursor(ledger: &Ledger) -> Result<i64, String> {
    let Some(key) = ledger
        .last_key_with_prefix(PPS_KEY_PREFIX)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(0);
    };
    key.strip_prefix(PPS_KEY_PREFIX)
        .and_then(|r| r.split_once('-'))
        .and_then(|(_, last)| last.parse::<i64>().ok())
        .ok_or_else(|| format!("malformed PPS key {key:?}"))
}

/// PPS/FPPS: credits the shares after share id `after` up to `upto` (at most [`INGEST_BATCH`]) at
/// once into their owners' available balances, out of `platform/pool-reserve`. Each share's value
/// is `d/D × (B [+ E[F]]) × (1−f)` with `d` its assigned difficulty, and `D`, `B` and `E[F]` those of
/// its job as issued (the share log's `jobs` row), so a credit is a pure function of logged data. A
/// share assigned more than the network difficulty counts as `D` (it is worth at most one block).
/// Exact to the msat per (owner, job basis) in a batch: work is summed exactly before the one
/// division; the sub-msat remainders stay in the reserve. Shares without a job row (logged by
/// versions before job rows existed) are not credited, and counted in the memo. Returns
/// (shares read, new cursor).
pub async fn credit_shares(
    log: &SqlitePool,
    ledger: &Ledger,
    rule: &Rule,
    after: i64,
    upto: i64,
) -> Result<(usize, i64), String> {
    use ledger::schemes::pps_credit;
    let rows = sqlx::query(
        "SELECT s.id, s.address, s.diff_int, s.diff_frac, j.bits, j.subsidy_sat, j.expected_fees_sat \
         FROM shares s LEFT JOIN jobs j ON j.job_id = s.job_id WHERE s.id > ? AND s.id <= ? ORDER BY s.id LIMIT ?",
    )
    .bind(after)
    .bind(upto)
    .bind(INGEST_BATCH)
    .fetch_all(log)
    .await
    .map_err(|e| format!("share log: {e}"))?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok((0, after));
    };
    let id_of = |r: &sqlx::sqlite::SqliteRow| r.try_get::<i64, _>(0).map_err(|e| e.to_string());
    let (first, last) = (id_of(first)?, id_of(last)?);
    // (owner, bits, reward msat) → Σ work: one exact division per group.
    let mut groups: BTreeMap<(String, u32, u64), u128> = BTreeMap::new();
    let mut block_works: std::collections::HashMap<u32, u128> = std::collections::HashMap::new();
    let mut unpriced = 0usize;
    for r in &rows {
        let owner: String = r.try_get(1).map_err(|e| e.to_string())?;
        let int: i64 = r.try_get(2).map_err(|e| e.to_string())?;
        let frac: i64 = r.try_get(3).map_err(|e| e.to_string())?;
        let bits: Option<i64> = r.try_get(4).map_err(|e| e.to_string())?;
        let subsidy: Option<i64> = r.try_get(5).map_err(|e| e.to_string())?;
        let expected: Option<i64> = r.try_get(6).map_err(|e| e.to_string())?;
        let (Some(bits), Some(subsidy), Some(expected)) = (bits, subsidy, expected) else {
            unpriced += 1;
            continue;
        };
        let basis_sat = match rule.sharing {
            crate::config::Sharing::Fpps => subsidy.saturating_add(expected),
            _ => subsidy,
        };
        let reward = u64::try_from(basis_sat)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| format!("share {}: reward out of range", id_of(r).unwrap_or(0)))?;
        let bits = u32::try_from(bits).map_err(|_| "bits out of range".to_string())?;
        let block = match block_works.get(&bits) {
            Some(w) => *w,
            None => {
                let target = units::Target::from_compact(bits).map_err(|e| e.to_string())?;
                let w = block_work(target).map_err(|e| e.to_string())?;
                if w.bits() > 127 {
                    return Err(format!("bits {bits:08x}: block work out of range"));
                }
                block_works.insert(bits, w.low_u128());
                w.low_u128()
            }
        };
        // A share is worth at most one block: work above the network's counts as the block's.
        let work = ((u128::from(int.unsigned_abs()) << 32) | u128::from(frac.unsigned_abs())).min(block);
        let g = groups.entry((owner, bits, reward)).or_insert(0);
        *g = g.checked_add(work).ok_or("work overflow")?;
    }
    let mut by_owner: BTreeMap<String, u64> = BTreeMap::new();
    for ((owner, bits, reward), work) in groups {
        let w = units::U256::from_u128(block_works.get(&bits).copied().ok_or("block work missing")?);
        let reward = units::MilliSats::new(reward).map_err(|e| e.to_string())?;
        let c =
            pps_credit(reward, rule.fee_ppm, units::Work::from_hashes(work), w).map_err(|e| e.to_string())?;
        let o = by_owner.entry(owner).or_insert(0);
        *o = o.checked_add(c.to_msat()).ok_or("credit overflow")?;
    }
    let total: u64 = by_owner
        .values()
        .try_fold(0u64, |a, v| a.checked_add(*v))
        .ok_or("credit overflow")?;
    if total == 0 {
        // Nothing to pay (no priced share, or every value below 1 msat): nothing to post.
        return Ok((rows.len(), last));
    }
    let msat = |v: u64| units::MilliSats::new(v).map_err(|e| e.to_string());
    let mut postings = vec![
        Posting::debit(Account::Platform(PlatformAccount::PoolReserve), msat(total)?)
            .map_err(|e| e.to_string())?,
    ];
    for (owner, c) in by_owner {
        if c > 0 {
            postings.push(Posting::credit(Account::available(&owner), msat(c)?).map_err(|e| e.to_string())?);
        }
    }
    let memo = format!(
        "{} for shares {first}..={last}, fee {} ppm{}",
        rule.sharing.name(),
        rule.fee_ppm,
        if unpriced > 0 {
            format!(", {unpriced} shares without a job row not credited")
        } else {
            String::new()
        }
    );
    let tx = Transaction::new(&format!("{PPS_KEY_PREFIX}{first}-{last}"), &memo, postings)
        .map_err(|e| e.to_string())?;
    ledger.post(&tx).await.map_err(|e| e.to_string())?;
    Ok((rows.len(), last))
}

/// Coinbase payees: makes a new plan from the window ending at share `last` (the newest in the work
/// log) when the current one is at least [`crate::payees::PLAN_EVERY`] old. The window is
/// `factor × W` for the newest job's bits, held in `rolling` as shares are copied; it is read from the
/// work log when there is none yet, after a gap, or when the window grew.
async fn refresh_plan(
    log: &SqlitePool,
    ledger: &Ledger,
    (sharing, rule, slot): (
        crate::config::Sharing,
        &crate::payees::PayeeRule,
        &crate::server::PlanSlot,
    ),
    rolling: &mut Option<crate::payees::RollingWindow>,
    last: i64,
) -> Result<(), String> {
    use crate::payees::{RollingWindow, PLAN_EVERY};
    let current = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if current.as_ref().is_some_and(|p| p.made.elapsed() < PLAN_EVERY) {
        return Ok(());
    }
    let bits: Option<i64> = sqlx::query_scalar("SELECT bits FROM jobs ORDER BY job_id DESC LIMIT 1")
        .fetch_optional(log)
        .await
        .map_err(|e| format!("share log: {e}"))?;
    let Some(bits) = bits.and_then(|b| u32::try_from(b).ok()) else {
        return Ok(());
    };
    let window = work_of_bits(bits)? * sharing.window_factor();
    let usable = match rolling.as_mut() {
        Some(r) if r.span().1 == last => r.span().0 == window || r.narrow_to(window),
        _ => false,
    };
    if !usable {
        let shares = ledger
            .work_window_upto(SOURCE, last.unsigned_abs(), window)
            .await
            .map_err(|e| e.to_string())?;
        *rolling = Some(RollingWindow::load(shares, last, window));
    }
    let plan = rolling.as_ref().map(|r| r.plan(rule)).ok_or("no payee window")?;
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(plan));
    Ok(())
}

/// Rows deleted per retention call at most; a pass makes at most [`PRUNE_CALLS_PER_PASS`] calls.
/// Each share-log call runs on the share log's single writer between two group commits, so this
/// bounds how long one step can delay a commit.
pub const PRUNE_CHUNK: u64 = 2_000;
/// Retention calls per log per accounting pass at most (a pass copies up to [`INGEST_BATCH`] shares,
/// so retention deletes faster than shares arrive and keeps up at full load).
pub const PRUNE_CALLS_PER_PASS: usize = 8;
/// Retention passes at most this often while they find less than a full chunk to delete (each
/// share-log pass takes a turn on the single writer).
pub const PRUNE_EVERY: Duration = Duration::from_secs(2);
/// Pause after a failed retention step (the failure is logged; accounting goes on).
pub const PRUNE_RETRY: Duration = Duration::from_secs(60);
/// Marks kept by [`WorkFloor`] at most; past it every other one is dropped (the floor then moves
/// in coarser steps, never past what a window needs).
pub const WORK_FLOOR_MARKS_MAX: usize = 4_096;

/// The oldest work record a payout window may still need, followed in memory: the work log is read
/// once (at most [`crate::config::WORK_RETAIN_WINDOWS`] windows, at the first pass), then every
/// copied batch adds a mark (its last seq, the cumulative work up to it). Records up to a mark may
/// go once the work after it is at least `keep`.
#[derive(Debug, Default)]
struct WorkFloor {
    /// (seq, cumulative work up to and including it), oldest first.
    marks: std::collections::VecDeque<(u64, u128)>,
    /// Cumulative work up to the newest record copied.
    cum: u128,
    /// The newest seq counted.
    last: u64,
}

impl WorkFloor {
    /// Reads the window of `keep` ending at `upto` from the ledger.
    async fn load(ledger: &Ledger, upto: u64, keep: u128) -> Result<WorkFloor, String> {
        let start = ledger
            .work_window_start(SOURCE, upto, keep)
            .await
            .map_err(|e| e.to_string())?;
        let mut f = WorkFloor {
            last: upto,
            ..WorkFloor::default()
        };
        // The mark sits just below the oldest record read; the work read is after it.
        let (seq, work) = start.unwrap_or((1, 0));
        f.marks.push_back((seq.saturating_sub(1), 0));
        f.cum = work;
        Ok(f)
    }

    /// Counts newly copied records (contiguous after `last`; anything else is ignored, which only
    /// keeps more).
    fn push(&mut self, recs: &[WorkRecord]) {
        let (Some(first), Some(last)) = (recs.first(), recs.last()) else {
            return;
        };
        if first.seq <= self.last {
            return;
        }
        self.cum = self.cum.saturating_add(recs.iter().map(|r| r.work).sum());
        self.last = last.seq;
        if self.marks.len() >= WORK_FLOOR_MARKS_MAX {
            let kept: std::collections::VecDeque<_> = self.marks.iter().copied().step_by(2).collect();
            self.marks = kept;
        }
        self.marks.push_back((self.last, self.cum));
    }

    /// Records below the returned seq may go: the newest mark with at least `keep` of work after it
    /// (0 while there is none).
    fn below(&mut self, keep: u128) -> u64 {
        while self
            .marks
            .get(1)
            .is_some_and(|&(_, c)| self.cum.saturating_sub(c) >= keep)
        {
            self.marks.pop_front();
        }
        match self.marks.front() {
            Some(&(seq, c)) if self.cum.saturating_sub(c) >= keep => seq.saturating_add(1),
            _ => 0,
        }
    }
}

/// Retention of the share log and the ledger's work log ([`crate::config::Retention`]), driven by
/// the accounting loop, which knows what accounting is done with.
struct Pruner {
    retention: crate::config::Retention,
    floor: Option<WorkFloor>,
    /// No pass before this (after a failure, or a pass that found less than a full chunk).
    next_at: Option<std::time::Instant>,
}

impl Pruner {
    fn new(retention: crate::config::Retention) -> Pruner {
        Pruner {
            retention,
            floor: None,
            next_at: None,
        }
    }

    /// One pass after a copy of `recs`: share rows up to `accounted` and older than the share log's
    /// retention; work records below the kept windows (TIDES' `8·W`, the largest of any scheme,
    /// whatever this run pays by: a later run may switch) and older than the work log's retention.
    /// The next pass comes at once after a full chunk, after [`PRUNE_EVERY`] otherwise, and after
    /// [`PRUNE_RETRY`] if this one failed (logged; accounting goes on).
    async fn step(
        &mut self,
        (share_log, ledger, stats): (&crate::share_log::ShareLog, &Ledger, &PoolStats),
        recs: &[WorkRecord],
        accounted: i64,
    ) {
        if let Some(f) = self.floor.as_mut() {
            f.push(recs);
        }
        if self.next_at.is_some_and(|t| std::time::Instant::now() < t) {
            return;
        }
        let wait = match self.pass(share_log, ledger, accounted).await {
            Ok((shares, work)) => {
                stats.pruned_shares.fetch_add(shares, Ordering::Relaxed);
                stats.pruned_work.fetch_add(work, Ordering::Relaxed);
                if shares >= PRUNE_CHUNK || work >= PRUNE_CHUNK {
                    Duration::ZERO
                } else {
                    PRUNE_EVERY
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?PRUNE_RETRY, "retention failed (nothing is lost; the logs grow until it succeeds)");
                PRUNE_RETRY
            }
        };
        self.next_at = Some(std::time::Instant::now() + wait);
    }

    /// Returns the share rows and work records deleted.
    async fn pass(
        &mut self,
        share_log: &crate::share_log::ShareLog,
        ledger: &Ledger,
        accounted: i64,
    ) -> Result<(u64, u64), String> {
        let now = i64::try_from(crate::server::now_ms()).unwrap_or(i64::MAX);
        let cutoff = |age: Duration| now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let (mut shares, mut work) = (0, 0);
        if let Some(age) = self.retention.share_log {
            for _ in 0..PRUNE_CALLS_PER_PASS {
                let p = share_log
                    .prune(accounted, cutoff(age), PRUNE_CHUNK)
                    .await
                    .map_err(|e| e.to_string())?;
                shares += p.shares;
                if p.shares < PRUNE_CHUNK && p.jobs < PRUNE_CHUNK {
                    break;
                }
            }
        }
        let Some(age) = self.retention.work_log else {
            return Ok((shares, work));
        };
        let factor = crate::config::TIDES_WINDOW_FACTOR.max(crate::config::PPLNS_WINDOW_FACTOR);
        let Some(keep) = kept_work(share_log.db(), factor).await? else {
            return Ok((shares, work));
        };
        let floor = match self.floor.as_mut() {
            Some(f) => f,
            None => self
                .floor
                .insert(WorkFloor::load(ledger, ledger_upto(ledger).await?, keep).await?),
        };
        let below = floor.below(keep);
        for _ in 0..PRUNE_CALLS_PER_PASS {
            let n = ledger
                .prune_work(SOURCE, below, cutoff(age), PRUNE_CHUNK)
                .await
                .map_err(|e| e.to_string())?;
            work += n;
            if n < PRUNE_CHUNK {
                break;
            }
        }
        Ok((shares, work))
    }
}

/// Refuses a cursor (`what` ends at share `from`) below the share rows retention deleted.
async fn cursor_not_pruned(
    share_log: &crate::share_log::ShareLog,
    from: i64,
    what: &str,
) -> Result<(), String> {
    let pruned = share_log.pruned_below().await.map_err(|e| e.to_string())?;
    if from.saturating_add(1) < pruned {
        return Err(format!(
            "{what} ends at share {from}, but retention deleted the share log's rows below {pruned}: \
             shares {} to {} cannot be accounted (restore a newer ledger, or a share log backup)",
            from.saturating_add(1),
            pruned - 1
        ));
    }
    Ok(())
}

/// The newest record in the work log (0 if none).
async fn ledger_upto(ledger: &Ledger) -> Result<u64, String> {
    Ok(ledger
        .work_high_water(SOURCE)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(0))
}

/// The work retention keeps behind the newest record: [`crate::config::WORK_RETAIN_WINDOWS`] × the
/// largest window (`factor × W`, `W` the work of a block at the highest difficulty among the newest
/// [`crate::share_log::JOBS_KEPT_ROWS`] jobs). `None` before the first job.
async fn kept_work(log: &SqlitePool, factor: u128) -> Result<Option<u128>, String> {
    let bits: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT bits FROM jobs WHERE job_id > (SELECT MAX(job_id) FROM jobs) - ?",
    )
    .bind(crate::share_log::JOBS_KEPT_ROWS)
    .fetch_all(log)
    .await
    .map_err(|e| format!("share log: {e}"))?;
    let mut largest: u128 = 0;
    for b in bits {
        let Ok(b) = u32::try_from(b) else { continue };
        if units::Target::from_compact(b).is_err() {
            continue;
        }
        largest = largest.max(work_of_bits(b)?);
    }
    Ok((largest > 0).then(|| {
        largest
            .saturating_mul(factor)
            .saturating_mul(crate::config::WORK_RETAIN_WINDOWS)
    }))
}

/// Runs until `token` is cancelled. `rule`: credit blocks by it (pool mode); `None` (SOLO) only
/// copies the work. `retention`: what the share log and the work log keep.
pub async fn ingest_loop(
    share_log: crate::share_log::ShareLog,
    ledger: Arc<Ledger>,
    stats: Arc<PoolStats>,
    (rule, retention): (Option<Rule>, crate::config::Retention),
    backend: chain::Backend,
    token: CancellationToken,
) {
    let log = share_log.db().clone();
    let mut pruner = Pruner::new(retention);
    let mut after: Option<i64> = None;
    // The last share copied by a pass that succeeded (kept across failures, for the backlog).
    let mut copied: Option<i64> = None;
    // Blocks are re-examined from the start after a restart; crediting and settling are idempotent.
    let mut blocks_after: i64 = 0;
    let mut settled_after: i64 = 0;
    let mut last_settle = std::time::Instant::now();
    let mut settled_tip = u32::MAX;
    let mut backoff = INGEST_IDLE;
    // PPS/FPPS: the last share credited (None: read it from the ledger's newest `pps:` key).
    let mut pps_after: Option<i64> = None;
    // Coinbase payees: the window in memory (None: read it from the work log at the next plan).
    let mut rolling: Option<crate::payees::RollingWindow> = None;
    loop {
        let step = async {
            // A cursor read again from the ledger may be below what retention deleted (a ledger
            // restored from an older backup): refuse rather than skip the gap without a word.
            let from = match after {
                Some(a) => a,
                None => {
                    let from = ledger
                        .work_high_water(SOURCE)
                        .await
                        .map_err(|e| e.to_string())?
                        .map_or(0, |h| i64::try_from(h).unwrap_or(i64::MAX));
                    cursor_not_pruned(&share_log, from, "the ledger's work log").await?;
                    from
                }
            };
            let (recs, last) = ingest_once(&log, &ledger, from).await?;
            let n = recs.len();
            // The payee plan's window follows the copy; after a gap (a resume from the ledger's
            // high-water mark) it is read again.
            if let Some(w) = rolling.as_mut() {
                if w.span().1 == from {
                    w.push(
                        recs.iter()
                            .map(|r| (i64::try_from(r.seq).unwrap_or(i64::MAX), r.owner.as_str(), r.work)),
                    );
                } else {
                    rolling = None;
                }
            }
            let max = share_log.max_id().await.map_err(|e| e.to_string())?;
            let mut n = n;
            if let Some(rule) = rule.as_ref().filter(|r| r.sharing.per_share()) {
                let from = match pps_after {
                    Some(a) => a,
                    None => {
                        let from = pps_cursor(&ledger).await?;
                        cursor_not_pruned(&share_log, from, "PPS credits").await?;
                        from
                    }
                };
                let (read, to) = credit_shares(&log, &ledger, rule, from, last).await?;
                pps_after = Some(to);
                n = n.max(read);
            }
            if let Some(rule) = &rule {
                if let Some((prule, Some(slot))) = &rule.payees {
                    refresh_plan(&log, &ledger, (rule.sharing, prule, slot), &mut rolling, last).await?;
                }
                blocks_after = credit_blocks(&log, &ledger, rule, blocks_after, last).await?;
                // Settling asks the chain about every pending block: at most every SETTLE_EVERY,
                // or at once when the tip moved.
                let tip = backend.tip().borrow().height;
                if last_settle.elapsed() >= SETTLE_EVERY || tip != settled_tip {
                    settled_after = settle_blocks(&log, &ledger, &backend, settled_after).await?;
                    last_settle = std::time::Instant::now();
                    settled_tip = tip;
                }
            }
            // Retention, once accounting is done with the rows (copied; credited under PPS/FPPS).
            let accounted = match (rule.as_ref().filter(|r| r.sharing.per_share()), pps_after) {
                (Some(_), Some(p)) => p.min(last),
                _ => last,
            };
            pruner.step((&share_log, &ledger, &stats), &recs, accounted).await;
            Ok::<_, String>((n, last, max))
        };
        let wait = match step.await {
            Ok((n, last, max)) => {
                after = Some(last);
                copied = Some(last);
                stats
                    .ledger_backlog
                    .store(u64::try_from(max - last).unwrap_or(0), Ordering::Relaxed);
                backoff = INGEST_IDLE;
                if n as i64 >= INGEST_BATCH {
                    Duration::ZERO
                } else {
                    INGEST_IDLE
                }
            }
            Err(e) => {
                after = None; // re-read the high-water mark: the ledger is the truth
                pps_after = None;
                rolling = None;
                // The backlog bound holds while the ledger is down: shares logged since the last
                // copy that succeeded, counted in the share log (which is local and up).
                if let Some(c) = copied {
                    match share_log.max_id().await {
                        Ok(max) => stats.ledger_backlog.store(
                            u64::try_from(max.saturating_sub(c)).unwrap_or(0),
                            Ordering::Relaxed,
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "share log unreadable; the backlog gauge keeps its last value")
                        }
                    }
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "ledger ingest failed; shares stay in the share log and will be copied later");
                let w = backoff;
                backoff = (backoff * 2).min(INGEST_RETRY_MAX);
                w
            }
        };
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(from: u64, works: &[u128]) -> Vec<WorkRecord> {
        works
            .iter()
            .enumerate()
            .map(|(i, &work)| WorkRecord {
                seq: from + i as u64,
                owner: "a".into(),
                work,
                ts_ms: 0,
            })
            .collect()
    }

    #[test]
    fn the_work_floor_keeps_the_last_keep_of_work_and_only_moves_forward_by_whole_batches() {
        // A young log (nothing read): nothing may go until `keep` of work arrived after a mark.
        let mut f = WorkFloor {
            marks: [(0, 0)].into(),
            ..WorkFloor::default()
        };
        assert_eq!(f.below(10), 0);
        f.push(&recs(1, &[4, 4])); // seq 1..=2, cum 8
        assert_eq!(f.below(10), 0);
        f.push(&recs(3, &[4])); // seq 3, cum 12: 12 ≥ 10 after mark (0, 0) → below 1
        assert_eq!(f.below(10), 1);
        f.push(&recs(4, &[10])); // seq 4, cum 22: seq 4 alone holds 10 → below 4
        assert_eq!(f.below(10), 4);
        assert_eq!(f.below(10), 4, "asking again changes nothing");
        // A larger keep (the difficulty rose) never moves the floor back below what was dropped, and
        // says 0 (prune nothing more) while the marks left cannot cover it.
        assert_eq!(f.below(1_000), 0);
        // Out-of-order or repeated batches are ignored (only ever keeping more).
        f.push(&recs(2, &[1_000]));
        assert_eq!(f.below(10), 4);
        // The marks stay bounded.
        for i in 0..(3 * WORK_FLOOR_MARKS_MAX as u64) {
            f.push(&recs(5 + i, &[1]));
        }
        assert!(f.marks.len() <= WORK_FLOOR_MARKS_MAX);
        let b = f.below(10);
        let newest = 4 + 3 * WORK_FLOOR_MARKS_MAX as u64;
        assert!(
            b <= newest - 9,
            "at least 10 records of work 1 kept: below {b}, newest {newest}"
        );
        assert!(b > newest - 40, "and not far more than that: below {b}");
    }
}
