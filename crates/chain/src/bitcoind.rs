//! Bitcoin Core over JSON-RPC.
//!
//! * `connect` checks the first node: reachable, credentials accepted, on the expected network
//!   (`getblockchaininfo.chain`), not in initial block download; each failure is its own error.
//! * Templates: `getblocktemplate {"rules":["segwit"]}` from the first node that answers, parsed and
//!   checked by `core-rpc`.
//! * Blocks: `submitblock` to every node at once; transport failures are retried with backoff
//!   ([`SUBMIT_ATTEMPTS_MAX`] attempts per node); `null` and `duplicate` count as accepted.
//! * New tips: with [`BitcoindConfig::zmq_hashblock`] set, each ZMQ `hashblock` message triggers a tip
//!   fetch at once and polling drops to a safety net every [`ZMQ_SAFETY_POLL`]; without it
//!   `getbestblockhash` is polled every [`BitcoindConfig::poll_interval`] (100 ms default). On failure
//!   the poller backs off exponentially up to [`POLL_BACKOFF_MAX`] and recovers by itself.
//!
//! The poller task is owned by the backend and stops when the last handle is dropped.

use crate::{BlockFate, Tip};
use bitcoin::hex::DisplayHex;
use bitcoin::{Block, BlockHash};
use core_rpc::error::code;
use core_rpc::gbt::GbtResult;
use core_rpc::{Auth, ClientError, RpcClient};
use mining_core::BlockTemplate;
use serde_json::{json, Value};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Attempts per node for one `submitblock` when the node cannot be reached.
pub const SUBMIT_ATTEMPTS_MAX: u32 = 6;
/// Tip polling interval when ZMQ notifications are configured (a safety net for dropped messages).
pub const ZMQ_SAFETY_POLL: Duration = Duration::from_secs(5);
/// Longest wait between failed tip polls.
pub const POLL_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why the Core backend cannot do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Cannot reach the node.
    #[error("bitcoind at {url} is unreachable: {detail}")]
    Unreachable {
        /// Node URL.
        url: String,
        /// Cause.
        detail: String,
    },
    /// Credentials refused.
    #[error("bitcoind at {url} refused the credentials: check --bitcoind-auth (user:pass or the node's .cookie file)")]
    Auth {
        /// Node URL.
        url: String,
    },
    /// The node is on another network.
    #[error("bitcoind at {url} is on chain '{got}', but --bitcoind-chain is '{expected}'")]
    WrongNetwork {
        /// Node URL.
        url: String,
        /// Configured.
        expected: String,
        /// Reported.
        got: String,
    },
    /// The node is still syncing.
    #[error("bitcoind at {url} is still syncing (blocks {blocks}, headers {headers}, progress {progress:.4}); mining waits until it is done")]
    Syncing {
        /// Node URL.
        url: String,
        /// Validated blocks.
        blocks: u64,
        /// Known headers.
        headers: u64,
        /// Verification progress.
        progress: f64,
    },
    /// The template is unusable.
    #[error("bitcoind at {url} sent an unusable template: {detail}")]
    BadTemplate {
        /// Node URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// Any other RPC failure.
    #[error(transparent)]
    Rpc(ClientError),
    /// Internal failure (a task could not run).
    #[error("internal error: {0}")]
    Internal(String),
}

fn classify(e: ClientError) -> BackendError {
    match e {
        ClientError::Auth { url, .. } => BackendError::Auth { url },
        ClientError::Transport { url, detail } => BackendError::Unreachable { url, detail },
        ClientError::Timeout {
            url,
            method,
            timeout_ms,
        } => BackendError::Unreachable {
            url,
            detail: format!("{method} timed out after {timeout_ms} ms"),
        },
        ClientError::Rpc { url, error } if error.code == code::CLIENT_IN_INITIAL_DOWNLOAD => {
            BackendError::Syncing {
                url,
                blocks: 0,
                headers: 0,
                progress: 0.0,
            }
        }
        other => BackendError::Rpc(other),
    }
}

/// Core backend configuration.
#[derive(Clone, Debug)]
pub struct BitcoindConfig {
    /// Nodes: URL and credentials. The first is primary for templates and tip polling.
    pub nodes: Vec<(String, Auth)>,
    /// Expected `getblockchaininfo.chain`: `main`, `test`, `testnet4`, `signet` or `regtest`.
    pub chain: String,
    /// Tip polling interval.
    pub poll_interval: Duration,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Timeout of `scantxoutset`, which reads the whole UTXO set (minutes on mainnet, far past
    /// [`BitcoindConfig::timeout`]): [`SCANTXOUTSET_TIMEOUT`] by default.
    pub scan_timeout: Duration,
    /// Core's `-zmqpubhashblock` endpoint (e.g. `tcp://127.0.0.1:28332`), if configured.
    pub zmq_hashblock: Option<String>,
}

impl BitcoindConfig {
    /// One node, defaults for the rest.
    pub fn single(url: &str, auth: Auth, chain: &str) -> BitcoindConfig {
        BitcoindConfig {
            nodes: vec![(url.to_string(), auth)],
            chain: chain.to_string(),
            poll_interval: Duration::from_millis(100),
            timeout: core_rpc::client::RPC_TIMEOUT_DEFAULT,
            scan_timeout: SCANTXOUTSET_TIMEOUT,
            zmq_hashblock: None,
        }
    }
}

/// How long a `scantxoutset` may take by default: Core reads its whole UTXO set (on mainnet, about
/// 180 M outputs, several minutes on a busy node); payouts run on a schedule, so waiting is cheap
/// and giving up at the ordinary call timeout would make every payout round fail.
pub const SCANTXOUTSET_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Bitcoin Core nodes as a chain backend.
#[derive(Clone, Debug)]
pub struct BitcoindBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clients: Vec<RpcClient>,
    scan_timeout: Duration,
    tip: watch::Sender<Tip>,
    /// Tip poller and ZMQ subscriber: owned here, aborted when the last handle goes.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for h in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            h.abort();
        }
    }
}

impl BitcoindBackend {
    /// Connects, checks the primary node, and starts the tip poller.
    pub async fn connect(cfg: BitcoindConfig) -> Result<BitcoindBackend, BackendError> {
        if cfg.nodes.is_empty() {
            return Err(BackendError::Internal("no bitcoind node configured".into()));
        }
        let mut clients = Vec::with_capacity(cfg.nodes.len());
        for (url, auth) in &cfg.nodes {
            clients.push(
                RpcClient::new(url, auth.clone())
                    .map_err(classify)?
                    .with_timeout(cfg.timeout),
            );
        }
        let primary = clients
            .first()
            .ok_or_else(|| BackendError::Internal("no node".into()))?
            .clone();
        let info = primary
            .call("getblockchaininfo", json!([]))
            .await
            .map_err(classify)?;
        let got = info
            .get("chain")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if got != cfg.chain {
            return Err(BackendError::WrongNetwork {
                url: primary.url().into(),
                expected: cfg.chain,
                got,
            });
        }
        let blocks = info.get("blocks").and_then(Value::as_u64).unwrap_or(0);
        let headers = info.get("headers").and_then(Value::as_u64).unwrap_or(0);
        let ibd = info
            .get("initialblockdownload")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if ibd || headers > blocks {
            let progress = info
                .get("verificationprogress")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            return Err(BackendError::Syncing {
                url: primary.url().into(),
                blocks,
                headers,
                progress,
            });
        }
        let tip = fetch_tip(&primary).await.map_err(classify)?;
        let (tx, _) = watch::channel(tip);
        let inner = Arc::new(Inner {
            clients,
            scan_timeout: cfg.scan_timeout,
            tip: tx,
            tasks: Mutex::new(Vec::new()),
        });
        let every = if cfg.zmq_hashblock.is_some() {
            ZMQ_SAFETY_POLL.max(cfg.poll_interval)
        } else {
            cfg.poll_interval
        };
        let mut tasks = vec![tokio::spawn(poll_tip(
            Arc::downgrade(&inner),
            primary.clone(),
            every,
        ))];
        if let Some(endpoint) = cfg.zmq_hashblock {
            // Each notification wakes a fetch of the tip over RPC (the message carries no height).
            let (kick, mut kicked) = tokio::sync::mpsc::channel::<()>(1);
            tasks.push(tokio::spawn(crate::zmq::subscribe(endpoint, move |_hash| {
                let _ = kick.try_send(()); // a full channel already holds a pending fetch
            })));
            let weak = Arc::downgrade(&inner);
            tasks.push(tokio::spawn(async move {
                while kicked.recv().await.is_some() {
                    let Some(inner) = weak.upgrade() else { return };
                    match fetch_tip(&primary).await {
                        Ok(t) => publish(&inner, t),
                        Err(e) => tracing::warn!(error = %e, "tip fetch after ZMQ hashblock failed"),
                    }
                }
            }));
        }
        *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Ok(BitcoindBackend { inner })
    }

    /// Watches the tip.
    pub fn tip_watch(&self) -> watch::Receiver<Tip> {
        self.inner.tip.subscribe()
    }

    /// A template from the first node that answers.
    pub async fn template(&self) -> Result<BlockTemplate, BackendError> {
        let mut last = None;
        for c in &self.inner.clients {
            match c.call("getblocktemplate", json!([{"rules": ["segwit"]}])).await {
                Ok(v) => {
                    let gbt: GbtResult =
                        serde_json::from_value(v).map_err(|e| BackendError::BadTemplate {
                            url: c.url().into(),
                            detail: e.to_string(),
                        })?;
                    return gbt.into_template().map_err(|e| BackendError::BadTemplate {
                        url: c.url().into(),
                        detail: e.0,
                    });
                }
                Err(e) => last = Some(classify(e)),
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Internal("no node".into())))
    }

    /// Confirmations from the first node that answers `getblockheader` (Core reports -1 for a block
    /// outside its best chain; an unknown block is error -5).
    pub async fn confirmations(&self, hash: &bitcoin::BlockHash) -> Result<Option<u32>, BackendError> {
        let mut last = None;
        for c in &self.inner.clients {
            match c.call("getblockheader", json!([hash.to_string(), true])).await {
                Ok(v) => {
                    let n = v
                        .get("confirmations")
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or(-1);
                    return Ok(u32::try_from(n).ok().filter(|n| *n > 0));
                }
                Err(ClientError::Rpc { error, .. }) if error.code == -5 => return Ok(None),
                Err(e) => last = Some(classify(e)),
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Internal("no node".into())))
    }

    /// Fees of the best chain's block at `height` (`getblockstats` → `totalfee`, in sat), `None` if
    /// the node has no block there (error -8, height out of range).
    pub async fn block_fees(&self, height: u32) -> Result<Option<u64>, BackendError> {
        let mut last = None;
        for c in &self.inner.clients {
            match c.call("getblockstats", json!([height, ["totalfee"]])).await {
                Ok(v) => {
                    return v
                        .get("totalfee")
                        .and_then(serde_json::Value::as_u64)
                        .map(Some)
                        .ok_or_else(|| {
                            BackendError::Rpc(ClientError::Rpc {
                                url: c.url().to_string(),
                                error: core_rpc::RpcError::new(
                                    code::MISC_ERROR,
                                    format!("getblockstats: no totalfee in {v}"),
                                ),
                            })
                        });
                }
                Err(ClientError::Rpc { error, .. }) if error.code == code::INVALID_PARAMETER => {
                    return Ok(None)
                }
                Err(e) => last = Some(classify(e)),
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Internal("no node".into())))
    }

    /// Outputs paying `script` from the first node that answers `scantxoutset` (Core scans its UTXO
    /// set: slow on mainnet, minutes; payouts run on a schedule, and the call waits up to
    /// [`BitcoindConfig::scan_timeout`]). Immature coinbases are left out.
    /// Core's `scantxoutset` does not see the mempool: the payout engine keeps one payout in flight at
    /// a time, so it never picks a coin its own pending payout spends.
    pub async fn spendable_coins(
        &self,
        script: &bitcoin::ScriptBuf,
    ) -> Result<Vec<crate::SpendableCoin>, BackendError> {
        let desc = format!("raw({})", script.as_bytes().to_lower_hex_string());
        let mut last = None;
        for c in &self.inner.clients {
            let scan = c.call_with_timeout("scantxoutset", json!(["start", [desc]]), self.inner.scan_timeout);
            match scan.await {
                Ok(v) => return parse_scan(&v, script, c.url()),
                Err(e) => last = Some(classify(e)),
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Internal("no node".into())))
    }

    /// `sendrawtransaction` to every node; success if any has it.
    pub async fn broadcast(
        &self,
        tx: &bitcoin::Transaction,
    ) -> Result<Result<bitcoin::Txid, String>, BackendError> {
        let hex = bitcoin::consensus::serialize(tx).to_lower_hex_string();
        let txid = tx.compute_txid();
        let mut refused = None;
        let mut last = None;
        for c in &self.inner.clients {
            match c.call("sendrawtransaction", json!([hex])).await {
                Ok(_) => return Ok(Ok(txid)),
                // -27: already in the chain; "txn-already-known"/"already in mempool": the node has it.
                Err(ClientError::Rpc { error, .. })
                    if error.code == -27
                        || error.message.contains("already-known")
                        || error.message.contains("already in") =>
                {
                    return Ok(Ok(txid))
                }
                Err(ClientError::Rpc { error, .. }) if matches!(error.code, -25 | -26 | -22) => {
                    refused = Some(format!("{} ({})", error.message, error.code));
                }
                Err(e) => last = Some(classify(e)),
            }
        }
        match (refused, last) {
            (Some(r), _) => Ok(Err(r)),
            (None, Some(e)) => Err(e),
            (None, None) => Err(BackendError::Internal("no node".into())),
        }
    }

    /// `getrawtransaction txid true` on the first node that answers (needs `-txindex=1` for
    /// confirmed transactions that are not the node wallet's; error -5 means unknown).
    pub async fn tx_status(&self, txid: &bitcoin::Txid) -> Result<crate::TxStatus, BackendError> {
        let mut last = None;
        for c in &self.inner.clients {
            match c.call("getrawtransaction", json!([txid.to_string(), true])).await {
                Ok(v) => {
                    let confs = v.get("confirmations").and_then(Value::as_i64).unwrap_or(0);
                    let Ok(confirmations @ 1..) = u32::try_from(confs) else {
                        return Ok(crate::TxStatus::Mempool);
                    };
                    let block = v.get("blockhash").and_then(Value::as_str).unwrap_or_default();
                    let header = c
                        .call("getblockheader", json!([block, true]))
                        .await
                        .map_err(classify)?;
                    let height = header
                        .get("height")
                        .and_then(Value::as_u64)
                        .and_then(|h| u32::try_from(h).ok())
                        .ok_or_else(|| {
                            BackendError::Internal(format!("getblockheader {block}: no height"))
                        })?;
                    return Ok(crate::TxStatus::Confirmed {
                        confirmations,
                        height,
                    });
                }
                Err(ClientError::Rpc { error, .. }) if error.code == -5 => {
                    return Ok(crate::TxStatus::Unknown)
                }
                Err(e) => last = Some(classify(e)),
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Internal("no node".into())))
    }

    /// Submits a block to every node at once: accepted if any node took it, else inconclusive if
    /// any node could not decide ([`is_inconclusive`]), else rejected with a node's reason.
    pub async fn submit_block(&self, block: &Block) -> Result<BlockFate, BackendError> {
        let hex = bitcoin::consensus::serialize(block).to_lower_hex_string();
        let mut set = tokio::task::JoinSet::new();
        for c in self.inner.clients.clone() {
            let hex = hex.clone();
            set.spawn(async move { submit_one(&c, &hex).await });
        }
        let mut accepted = false;
        let mut reasons = Vec::new();
        let mut errors = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(None)) => accepted = true,
                Ok(Ok(Some(reason))) => reasons.push(reason),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(BackendError::Internal(e.to_string())),
            }
        }
        if accepted {
            return Ok(BlockFate::Accepted);
        }
        if let Some(r) = reasons.iter().find(|r| is_inconclusive(r)) {
            return Ok(BlockFate::Inconclusive(r.clone()));
        }
        if let Some(r) = reasons.into_iter().next() {
            return Ok(BlockFate::Rejected(r));
        }
        Err(errors
            .into_iter()
            .next()
            .unwrap_or_else(|| BackendError::Internal("no node answered".into())))
    }
}

/// Reads a `scantxoutset` result: unspents with exact amounts (Core prints 8 decimals), immature
/// coinbases dropped (the scan's `height` is the tip).
fn parse_scan(
    v: &Value,
    script: &bitcoin::ScriptBuf,
    url: &str,
) -> Result<Vec<crate::SpendableCoin>, BackendError> {
    let bad = |d: String| {
        BackendError::Rpc(ClientError::Rpc {
            url: url.to_string(),
            error: core_rpc::RpcError::new(code::MISC_ERROR, format!("scantxoutset: {d}")),
        })
    };
    let tip = v
        .get("height")
        .and_then(Value::as_u64)
        .and_then(|h| u32::try_from(h).ok())
        .ok_or_else(|| bad("no height".into()))?;
    let list = v
        .get("unspents")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no unspents".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for u in list {
        let txid = u
            .get("txid")
            .and_then(Value::as_str)
            .and_then(|s| bitcoin::Txid::from_str(s).ok())
            .ok_or_else(|| bad("bad txid".into()))?;
        let vout = u
            .get("vout")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("bad vout".into()))?;
        let amount = u
            .get("amount")
            .and_then(core_rpc::amount_to_sat)
            .and_then(|s| u64::try_from(s).ok())
            .map(bitcoin::Amount::from_sat)
            .ok_or_else(|| bad(format!("bad amount in {u}")))?;
        let height = u
            .get("height")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("bad height".into()))?;
        let coinbase = u.get("coinbase").and_then(Value::as_bool).unwrap_or(false);
        if coinbase && (tip + 1).saturating_sub(height) < crate::COINBASE_MATURITY {
            continue;
        }
        out.push(crate::SpendableCoin {
            outpoint: bitcoin::OutPoint { txid, vout },
            txout: bitcoin::TxOut {
                value: amount,
                script_pubkey: script.clone(),
            },
            height,
        });
    }
    out.sort_by_key(|c| (c.height, c.outpoint.txid, c.outpoint.vout));
    Ok(out)
}

/// Core's `submitblock` answers that decide nothing: the block is valid so far but not on the
/// node's best chain (BIP 22's `inconclusive`; `duplicate-inconclusive` for one it had already).
pub fn is_inconclusive(answer: &str) -> bool {
    answer == "inconclusive" || answer == "duplicate-inconclusive"
}

/// `Ok(None)` accepted, `Ok(Some(reason))` not (rejected, or [`is_inconclusive`]).
async fn submit_one(c: &RpcClient, hex: &str) -> Result<Option<String>, BackendError> {
    let mut wait = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match c.call("submitblock", json!([hex])).await {
            Ok(Value::Null) => return Ok(None),
            Ok(Value::String(s)) if s == "duplicate" => return Ok(None),
            Ok(Value::String(s)) => return Ok(Some(s)),
            Ok(other) => return Ok(Some(other.to_string())),
            Err(e @ (ClientError::Transport { .. } | ClientError::Timeout { .. }))
                if attempt < SUBMIT_ATTEMPTS_MAX =>
            {
                tracing::warn!(node = c.url(), attempt, error = %e, "submitblock failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(classify(e)),
        }
    }
}

async fn fetch_tip(c: &RpcClient) -> Result<Tip, ClientError> {
    let hash = c.call("getbestblockhash", json!([])).await?;
    let hash = hash
        .as_str()
        .and_then(|s| BlockHash::from_str(s).ok())
        .ok_or_else(|| ClientError::BadResponse {
            url: c.url().into(),
            detail: "getbestblockhash is not a hash".into(),
        })?;
    let header = c.call("getblockheader", json!([hash.to_string(), true])).await?;
    let height = header
        .get("height")
        .and_then(Value::as_u64)
        .and_then(|h| u32::try_from(h).ok())
        .ok_or_else(|| ClientError::BadResponse {
            url: c.url().into(),
            detail: "getblockheader has no height".into(),
        })?;
    Ok(Tip { hash, height })
}

fn publish(inner: &Inner, t: Tip) {
    inner.tip.send_if_modified(|cur| {
        let changed = *cur != t;
        *cur = t;
        changed
    });
}

async fn poll_tip(inner: std::sync::Weak<Inner>, c: RpcClient, every: Duration) {
    let mut wait = every;
    let mut failing = false;
    loop {
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        match fetch_tip(&c).await {
            Ok(t) => {
                if failing {
                    tracing::info!(node = c.url(), "bitcoind reachable again");
                }
                failing = false;
                wait = every;
                publish(&inner, t);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(node = c.url(), error = %e, "tip poll failed; backing off");
                }
                failing = true;
                wait = (wait * 2).min(POLL_BACKOFF_MAX);
            }
        }
    }
}
