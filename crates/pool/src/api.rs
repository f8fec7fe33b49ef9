//! The pool's HTTP edge: Prometheus metrics and JSON status.
//!
//! * `GET /metrics`: Prometheus text (connections, shares by result, accepted work, hashrate, blocks by
//!   fate, refused connections, chain height, submit latency histogram).
//! * `GET /api/v1/pool`: pool summary.
//! * `GET /api/v1/miners/{address}`: per-worker hashrate (the current minute and the 10 before it, or since the worker connected; `hashrate_window_s` says which), last share, best
//!   difficulty, accepted shares; 404 for an address with no shares since start.
//! * `GET /api/client/{address}`: the same in public-pool's shape (`bestDifficulty`, `workersCount`,
//!   `workers[]` with `sessionId`, `name`, `bestDifficulty`, `hashRate`, `startTime`, `lastSeen`).
//!
//! * `GET /api/v1/ledger/{owner}`: the owner's balances in msat (available, immature, …) and its
//!   last 100 postings; `GET /api/v1/ledger/{owner}/blocks`: earnings per block (key `block:<hash>`,
//!   matured or reversed; `balance_msat` credited, `coinbase_msat` paid by a coinbase output);
//!   `GET /api/v1/ledger/{owner}/payouts`: on-chain payouts with txids, state (in_flight, confirmed,
//!   abandoned), `method` (pool-key, psbt, core-wallet), `awaiting` (signature, wallet send) while
//!   its bytes are not final (a Core wallet payout has its `intent` id and no txid until sent), the
//!   amount debited and paid, the last skip reason if the owner could not be paid,
//!   and `coinbase`: the pool's coinbases that paid the owner directly (block, coinbase txid, sat,
//!   immature/mature/orphaned). 503 while no ledger is connected.
//!
//! Only GET; no request body is read. Pool figures come from memory; the ledger endpoints read the
//! ledger (its own connection pool, bounded).

use crate::config::PayoutScheme;
use crate::server::{now_ms, Shared};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Longest address accepted in a path.
pub const ADDRESS_BYTES_MAX: usize = 128;

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    token: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/pool", get(pool))
        .route("/api/v1/miners/{address}", get(miner))
        .route("/api/client/{address}", get(public_pool_client))
        .route("/api/v1/ledger/{owner}", get(ledger_owner))
        .route("/api/v1/ledger/{owner}/blocks", get(ledger_blocks))
        .route("/api/v1/ledger/{owner}/payouts", get(ledger_payouts));
    let limits = core_rpc::http::HttpLimits {
        connections_per_ip_max: shared.cfg.http_connections_per_ip_max,
        ..API_HTTP_LIMITS
    };
    let app = app.with_state(shared);
    core_rpc::http::serve(listener, app, limits, async move { token.cancelled().await }).await
}

/// Connection limits of the API (`core_rpc::http`): dashboards and Prometheus keep few connections.
pub const API_HTTP_LIMITS: core_rpc::http::HttpLimits = core_rpc::http::HttpLimits {
    connections_max: 256,
    connections_per_ip_max: 64,
    header_read_timeout: std::time::Duration::from_secs(10),
    connection_time_max: std::time::Duration::from_secs(120),
};

fn height(shared: &Shared) -> u32 {
    shared.backend.tip().borrow().height
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let body = s.stats.prometheus(height(&s), now_ms());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn pool(State(s): State<Arc<Shared>>) -> Response {
    let now = now_ms();
    let tip = *s.backend.tip().borrow();
    let (clean_job, clean_n, clean_us) = s.stats.clean_fanout();
    let rate = s.stats.rate(now);
    Json(json!({
        "clean_notify": {"job": clean_job, "connections_written": clean_n, "template_to_last_write_ms": clean_us as f64 / 1000.0},
        "connections": s.stats.connections.load(Ordering::Relaxed),
        "hashrate_hps": rate.hps,
        "hashrate_window_s": rate.window_s,
        "shares_accepted": s.stats.accepted.load(Ordering::Relaxed),
        "shares_rejected": s.stats.rejected.load(Ordering::Relaxed),
        "blocks_found": s.stats.blocks.load(Ordering::Relaxed),
        "height": tip.height,
        "tip": tip.hash.to_string(),
        "network": s.cfg.network.to_string(),
        "payout_scheme": match s.cfg.payout { PayoutScheme::Solo => "solo", PayoutScheme::Pool(_) => "pool" },
    }))
    .into_response()
}

fn bad_address(a: &str) -> Option<Response> {
    (a.len() > ADDRESS_BYTES_MAX || !a.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| (StatusCode::BAD_REQUEST, Json(json!({"error": "not an address"}))).into_response())
}

async fn miner(State(s): State<Arc<Shared>>, Path(address): Path<String>) -> Response {
    if let Some(r) = bad_address(&address) {
        return r;
    }
    let now = now_ms();
    let workers = s.stats.workers_of(&address);
    if workers.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no shares from this address since the pool started"})),
        )
            .into_response();
    }
    let total: f64 = workers.iter().map(|(_, w)| w.hashrate(now)).sum();
    let window = workers
        .iter()
        .map(|(_, w)| w.rate(now).window_s)
        .fold(0.0, f64::max);
    Json(json!({
        "address": address,
        "hashrate_hps": total,
        "hashrate_window_s": window,
        "workers": workers.iter().map(|(name, w)| json!({
            "name": name,
            "hashrate_hps": w.hashrate(now),
            "hashrate_window_s": w.rate(now).window_s,
            "last_share_ms": w.last_share_ms,
            "best_difficulty": w.best.to_f64(),
            "accepted": w.accepted,
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

fn ledger_of(s: &Shared) -> Option<&Arc<ledger::Ledger>> {
    s.ledger.get()
}

fn no_ledger() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "no ledger connected"})),
    )
        .into_response()
}

fn ledger_error(e: &ledger::LedgerError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

async fn ledger_owner(State(s): State<Arc<Shared>>, Path(owner): Path<String>) -> Response {
    if let Some(r) = bad_address(&owner) {
        return r;
    }
    let Some(l) = ledger_of(&s) else {
        return no_ledger();
    };
    let balances = match l.balances_of(&owner).await {
        Ok(b) => b,
        Err(e) => return ledger_error(&e),
    };
    let mut out = serde_json::Map::new();
    let mut recent = Vec::new();
    for (name, msat) in &balances {
        let bucket = name.rsplit_once('/').map_or(name.as_str(), |(_, b)| b);
        out.insert(bucket.to_string(), json!(msat));
        if let Ok(acc) = ledger::Account::parse(name) {
            match l.history(&acc, 100).await {
                Ok(h) => recent.extend(h.into_iter().map(|x| {
                    json!({"account": name, "tx": x.tx_id, "key": x.key, "memo": x.memo, "posted_at_ms": x.posted_at_ms, "msat": x.msat})
                })),
                Err(e) => return ledger_error(&e),
            }
        }
    }
    Json(json!({"owner": owner, "balances_msat": out, "recent": recent})).into_response()
}

async fn ledger_blocks(State(s): State<Arc<Shared>>, Path(owner): Path<String>) -> Response {
    if let Some(r) = bad_address(&owner) {
        return r;
    }
    let Some(l) = ledger_of(&s) else {
        return no_ledger();
    };
    // A block's credit is an immature balance, a coinbase output, or both (a payee's sub-sat rest).
    let mut by_block: std::collections::BTreeMap<i64, (String, String, i64, i64, i64)> = Default::default();
    for (acc, coinbase) in [
        (ledger::Account::immature(&owner), false),
        (ledger::Account::coinbase(&owner), true),
    ] {
        let credits = match l.history(&acc, 1000).await {
            Ok(h) => h,
            Err(e) => return ledger_error(&e),
        };
        for c in credits.into_iter().filter(|c| c.key.starts_with("block:")) {
            let e = by_block
                .entry(c.tx_id)
                .or_insert_with(|| (c.key.clone(), c.memo.clone(), c.posted_at_ms, 0, 0));
            if coinbase {
                e.4 += c.msat;
            } else {
                e.3 += c.msat;
            }
        }
    }
    let mut blocks = Vec::new();
    for (key, memo, at, balance, in_coinbase) in by_block.into_values().rev() {
        let hash = key.trim_start_matches("block:");
        let state = match block_state(l, hash).await {
            Ok(s) => s,
            Err(e) => return ledger_error(&e),
        };
        blocks.push(json!({
            "block": hash,
            "msat": balance + in_coinbase,
            "balance_msat": balance,
            "coinbase_msat": in_coinbase,
            "state": state,
            "memo": memo,
            "posted_at_ms": at,
        }));
    }
    Json(json!({"owner": owner, "blocks": blocks})).into_response()
}

/// Bytes of a logged block read to find its coinbase: the header, the transaction count and the
/// coinbase, which this pool's coinbases (at most 200 payee outputs) fit many times over.
const COINBASE_READ_BYTES: i64 = 65_536;

/// The txid of the coinbase at the start of a serialized block (only the coinbase is decoded).
fn coinbase_txid(raw: &[u8]) -> Option<String> {
    use bitcoin::consensus::Decodable;
    let mut r = raw.get(80..)?;
    bitcoin::VarInt::consensus_decode(&mut r).ok()?;
    let tx = bitcoin::Transaction::consensus_decode(&mut r).ok()?;
    Some(tx.compute_txid().to_string())
}

/// `mature`, `orphaned` or `immature`: how a credited block stands.
async fn block_state(l: &ledger::Ledger, hash: &str) -> Result<&'static str, ledger::LedgerError> {
    if l.find_key(&format!("mature:{hash}")).await?.is_some() {
        return Ok("mature");
    }
    if l.find_key(&format!("orphan:{hash}")).await?.is_some() {
        return Ok("orphaned");
    }
    Ok("immature")
}

async fn ledger_payouts(State(s): State<Arc<Shared>>, Path(owner): Path<String>) -> Response {
    if let Some(r) = bad_address(&owner) {
        return r;
    }
    let Some(l) = ledger_of(&s) else {
        return no_ledger();
    };
    let list = match l.payouts_of(&owner, 1000).await {
        Ok(v) => v,
        Err(e) => return ledger_error(&e),
    };
    let skip = match l.payout_skip_of(&owner).await {
        Ok(v) => v,
        Err(e) => return ledger_error(&e),
    };
    let payouts: Vec<Value> = list
        .iter()
        .map(|p| {
            // An unsigned PSBT waits for its signer; an unsent Core wallet payout waits for the
            // wallet (its txid is the intent id until then).
            let waiting = match (p.method, p.signed) {
                (ledger::PayoutMethod::Psbt, false) => Some("signature"),
                (ledger::PayoutMethod::CoreWallet, false) => Some("wallet send"),
                _ => None,
            };
            json!({
                "txid": if p.method == ledger::PayoutMethod::CoreWallet && !p.signed { Value::Null } else { json!(p.txid) },
                "intent": (p.method == ledger::PayoutMethod::CoreWallet).then_some(&p.txid),
                "state": p.state.as_str(),
                "method": p.method.as_str(),
                "awaiting": waiting,
                "confirmed_height": p.confirmed_height,
                "address": p.line.address,
                "debit_msat": p.line.debit_msat,
                "paid_sat": p.line.paid_sat,
            })
        })
        .collect();
    // Coinbase payouts: the outputs of the pool's coinbases that paid this owner directly.
    let paid = match l.history(&ledger::Account::coinbase(&owner), 1000).await {
        Ok(h) => h,
        Err(e) => return ledger_error(&e),
    };
    let mut coinbase = Vec::new();
    for c in paid.iter().filter(|c| c.key.starts_with("block:") && c.msat > 0) {
        let hash = c.key.trim_start_matches("block:");
        let state = match block_state(l, hash).await {
            Ok(s) => s,
            Err(e) => return ledger_error(&e),
        };
        let raw: Option<Vec<u8>> =
            match sqlx::query_scalar("SELECT substr(block, 1, ?) FROM blocks WHERE hash = ? LIMIT 1")
                .bind(COINBASE_READ_BYTES)
                .bind(hash)
                .fetch_optional(s.log.db())
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    return (StatusCode::SERVICE_UNAVAILABLE, format!("share log: {e}\n")).into_response();
                }
            };
        let txid = raw.as_deref().and_then(coinbase_txid);
        coinbase.push(json!({"block": hash, "txid": txid, "paid_sat": c.msat / 1000, "state": state}));
    }
    Json(json!({
        "owner": owner,
        "payouts": payouts,
        "coinbase": coinbase,
        "skipped": skip.map(|k| json!({"reason": k.reason, "balance_msat": k.balance_msat, "at_ms": k.at_ms})),
    }))
    .into_response()
}

async fn public_pool_client(State(s): State<Arc<Shared>>, Path(address): Path<String>) -> Response {
    if let Some(r) = bad_address(&address) {
        return r;
    }
    let now = now_ms();
    let workers = s.stats.workers_of(&address);
    let best = workers
        .iter()
        .map(|(_, w)| w.best)
        .max()
        .map_or(0.0, |d| d.to_f64());
    Json(json!({
        "bestDifficulty": format!("{best:.2}"),
        "workersCount": workers.len(),
        "workers": workers.iter().map(|(name, w)| json!({
            "sessionId": w.session_id,
            "name": name,
            "bestDifficulty": format!("{:.2}", w.best.to_f64()),
            "hashRate": w.hashrate(now),
            "startTime": iso8601(w.start_ms),
            "lastSeen": iso8601(w.last_share_ms),
        })).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from unix milliseconds (proleptic Gregorian, UTC).
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::iso8601;

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
