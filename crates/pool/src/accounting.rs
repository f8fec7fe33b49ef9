//! Feeds accepted shares into accounting: the share log (local SQLite, every acknowledged share
//! already durable there) is the buffer; this task copies it, in id order, into the ledger's work
//! log (source [`SOURCE`], sequence = share log id), where PPLNS/TIDES windows are read.
//!
//! The ledger may be elsewhere (PostgreSQL) and may be down: the task retries with backoff up to
//! [`INGEST_RETRY_MAX`] and resumes from the ledger's high-water mark, so a database outage loses
//! nothing and a retry never counts a share twice (ingest is idempotent on `(source, seq)`). The
//! backlog (shares logged but not yet in the ledger) is the `cloudmine_pool_ledger_backlog` gauge.

use crate::stats::PoolStats;
use ledger::{Ledger, WorkRecord};
use sqlx::{Row, SqlitePool};
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

/// Copies one batch; returns how many shares were read from the share log.
pub async fn ingest_once(log: &SqlitePool, ledger: &Ledger, after: i64) -> Result<(usize, i64), String> {
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
    Ok((recs.len(), last))
}

/// Runs until `token` is cancelled.
pub async fn ingest_loop(
    log: SqlitePool,
    ledger: Arc<Ledger>,
    stats: Arc<PoolStats>,
    token: CancellationToken,
) {
    let mut after: Option<i64> = None;
    let mut backoff = INGEST_IDLE;
    loop {
        let step = async {
            let from = match after {
                Some(a) => a,
                None => ledger
                    .work_high_water(SOURCE)
                    .await
                    .map_err(|e| e.to_string())?
                    .map_or(0, |h| i64::try_from(h).unwrap_or(i64::MAX)),
            };
            let (n, last) = ingest_once(&log, &ledger, from).await?;
            let max: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM shares")
                .fetch_one(&log)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((n, last, max.unwrap_or(0)))
        };
        let wait = match step.await {
            Ok((n, last, max)) => {
                after = Some(last);
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
