//! The embedded dev chain in process, and its Bitcoin Core JSON-RPC face.
//!
//! [`DevNode`] owns the [`DevChain`] behind one `std::sync::Mutex` that is only ever taken inside
//! `spawn_blocking` (never across `.await`), and publishes the tip on a `watch` channel. The wall clock
//! is read here, at the edge, and passed into the chain.

use crate::{BlockFate, Tip};
use bitcoin::hex::{DisplayHex, FromHex};
use bitcoin::{Address, Block, BlockHash, Network, Transaction, Txid};
use core_rpc::error::code;
use core_rpc::gbt::GbtResult;
use core_rpc::server::RpcHandler;
use core_rpc::RpcError;
use devchain::chain::SubmitError;
use devchain::DevChain;
use serde_json::{json, Value};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Most blocks one `generatetoaddress` call may mine.
pub const GENERATE_BLOCKS_MAX: u64 = 1_000;
/// Longest `generatetoaddress` waits for the clock between two blocks (the dev chain's throttle).
pub const GENERATE_CLOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// Default nonces tried per extranonce in `generatetoaddress` (Core's default maxtries is 1,000,000).
pub const GENERATE_TRIES_DEFAULT: u64 = 1_000_000;

/// Seconds since the epoch (the edge reads the clock; the chain never does).
pub fn now() -> u32 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

/// The dev chain, shared.
#[derive(Clone, Debug)]
pub struct DevNode {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    chain: Mutex<DevChain>,
    tip: watch::Sender<Tip>,
    /// Core's regtest `setmocktime`: the node's clock when non-zero.
    mocktime: std::sync::atomic::AtomicU32,
}

impl DevNode {
    /// Wraps an opened chain.
    pub fn new(chain: DevChain) -> DevNode {
        let tip = Tip {
            hash: chain.tip().hash,
            height: chain.height(),
        };
        let (tx, _) = watch::channel(tip);
        DevNode {
            inner: Arc::new(Inner {
                chain: Mutex::new(chain),
                tip: tx,
                mocktime: std::sync::atomic::AtomicU32::new(0),
            }),
        }
    }

    /// Locks the chain (callers: blocking context only, never across `.await`).
    pub fn lock(&self) -> MutexGuard<'_, DevChain> {
        self.inner.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's clock: the wall clock, or the time `setmocktime` set.
    pub fn now(&self) -> u32 {
        match self.inner.mocktime.load(std::sync::atomic::Ordering::Relaxed) {
            0 => now(),
            t => t,
        }
    }

    /// Core's regtest `setmocktime`: pretend the clock reads `t` (0: the wall clock again). Lets a
    /// test bury a block 100 deep at the dev chain's pace without waiting 100 intervals.
    pub fn set_mocktime(&self, t: u32) {
        self.inner.mocktime.store(t, std::sync::atomic::Ordering::Relaxed);
    }

    /// Watches the tip.
    pub fn tip_watch(&self) -> watch::Receiver<Tip> {
        self.inner.tip.subscribe()
    }

    fn publish(&self, chain: &DevChain) {
        let t = Tip {
            hash: chain.tip().hash,
            height: chain.height(),
        };
        self.inner.tip.send_if_modified(|cur| {
            let changed = *cur != t;
            *cur = t;
            changed
        });
    }

    /// A template at the current wall-clock time.
    pub async fn template(&self) -> Result<mining_core::BlockTemplate, crate::BackendError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.lock().template(me.now()))
            .await
            .map_err(|e| crate::BackendError::Internal(format!("template task: {e}")))
    }

    /// Confirmations of `hash` in the best chain, `None` if it is not there.
    pub async fn confirmations(&self, hash: &bitcoin::BlockHash) -> Result<Option<u32>, crate::BackendError> {
        let me = self.clone();
        let hash = *hash;
        tokio::task::spawn_blocking(move || {
            let c = me.lock();
            let tip = c.height();
            c.by_hash(&hash)
                .filter(|b| c.at_height(b.height).is_some_and(|x| x.hash == hash))
                .map(|b| tip.saturating_sub(b.height) + 1)
        })
        .await
        .map_err(|e| crate::BackendError::Internal(format!("confirmations task: {e}")))
    }

    /// Fees of the block at `height` in the best chain (its transactions' fees, as the dev chain
    /// recorded them when it connected the block).
    pub async fn block_fees(&self, height: u32) -> Result<Option<u64>, crate::BackendError> {
        self.with_chain("block fees", move |c| {
            c.at_height(height).map(|b| b.fees.to_sat())
        })
        .await
    }

    /// Runs `f` on the locked chain on a blocking thread.
    async fn with_chain<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut DevChain) -> T + Send + 'static,
    ) -> Result<T, crate::BackendError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&mut me.lock()))
            .await
            .map_err(|e| crate::BackendError::Internal(format!("{what} task: {e}")))
    }

    /// Confirmed outputs paying `script` spendable in the next block, oldest first; outputs a mempool
    /// transaction already spends are left out.
    pub async fn spendable_coins(
        &self,
        script: &bitcoin::ScriptBuf,
    ) -> Result<Vec<crate::SpendableCoin>, crate::BackendError> {
        let script = script.clone();
        self.with_chain("coins", move |c| {
            let next = c.height() + 1;
            c.coins_for(&script)
                .into_iter()
                .filter(|(op, coin)| {
                    (!coin.coinbase || next.saturating_sub(coin.height) >= crate::COINBASE_MATURITY)
                        && c.mempool().spender(op).is_none()
                })
                .map(|(outpoint, coin)| crate::SpendableCoin {
                    outpoint,
                    txout: coin.out,
                    height: coin.height,
                })
                .collect()
        })
        .await
    }

    /// Puts a signed transaction in the dev chain's mempool (Core's rules; already known is success).
    pub async fn broadcast(&self, tx: &Transaction) -> Result<Result<Txid, String>, crate::BackendError> {
        let tx = tx.clone();
        self.with_chain("broadcast", move |c| {
            let txid = tx.compute_txid();
            if c.find_tx(&txid).is_some() {
                return Ok(txid);
            }
            c.accept_transaction(tx, 0, None).map_err(|r| r.reason)
        })
        .await
    }

    /// Where `txid` stands on the dev chain.
    pub async fn tx_status(&self, txid: &Txid) -> Result<crate::TxStatus, crate::BackendError> {
        let txid = *txid;
        self.with_chain("tx status", move |c| {
            if let Some(h) = c.find_tx(&txid) {
                crate::TxStatus::Confirmed {
                    confirmations: c.height().saturating_sub(h) + 1,
                    height: h,
                }
            } else if c.mempool().contains(&txid) {
                crate::TxStatus::Mempool
            } else {
                crate::TxStatus::Unknown
            }
        })
        .await
    }

    /// Submits a block; the reason string on rejection.
    pub async fn submit_block(&self, block: Block) -> BlockFate {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.submit_block_blocking(block))
            .await
            .unwrap_or_else(|e| BlockFate::Rejected(format!("internal error: {e}")))
    }

    /// Submits a block from a blocking context.
    pub fn submit_block_blocking(&self, block: Block) -> BlockFate {
        let mut chain = self.lock();
        let res = chain.submit_block(block, self.now());
        match res {
            Ok(ok) => {
                tracing::info!(height = ok.height, hash = %ok.hash, "dev chain accepted block");
                self.publish(&chain);
                BlockFate::Accepted
            }
            Err(SubmitError::Rejected(r)) => {
                tracing::info!(reason = %r.reason, detail = %r.detail, "dev chain rejected block");
                BlockFate::Rejected(r.reason)
            }
            Err(e) => {
                tracing::error!(error = %e, "dev chain could not store a block");
                BlockFate::Rejected(format!("store-failed: {e}"))
            }
        }
    }
}

/// The dev chain's Bitcoin Core JSON-RPC face.
#[derive(Clone, Debug)]
pub struct DevRpc {
    node: DevNode,
}

impl DevRpc {
    /// Serves `node`.
    pub fn new(node: DevNode) -> DevRpc {
        DevRpc { node }
    }
}

fn param(p: &[Value], i: usize) -> Option<&Value> {
    p.get(i).filter(|v| !v.is_null())
}

fn str_param<'a>(p: &'a [Value], i: usize, name: &str) -> Result<&'a str, RpcError> {
    match param(p, i) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RpcError::type_error(format!("{name}: expected a string"))),
        None => Err(RpcError::new(
            code::MISC_ERROR,
            format!("missing required parameter '{name}'"),
        )),
    }
}

fn u64_param(p: &[Value], i: usize, name: &str, default: Option<u64>) -> Result<u64, RpcError> {
    match param(p, i) {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| RpcError::type_error(format!("{name}: expected a non-negative integer"))),
        Some(_) => Err(RpcError::type_error(format!("{name}: expected a number"))),
        None => default
            .ok_or_else(|| RpcError::new(code::MISC_ERROR, format!("missing required parameter '{name}'"))),
    }
}

fn hash_param(p: &[Value], i: usize, name: &str) -> Result<BlockHash, RpcError> {
    let s = str_param(p, i, name)?;
    if s.len() != 64 {
        return Err(RpcError::invalid_parameter(format!(
            "{name} must be of length 64 (not {}, for '{s}')",
            s.len()
        )));
    }
    BlockHash::from_str(s)
        .map_err(|_| RpcError::invalid_parameter(format!("{name} must be hexadecimal string (not '{s}')")))
}

fn address(s: &str) -> Result<Address, String> {
    let a = Address::from_str(s).map_err(|e| format!("Invalid address: {e}"))?;
    a.require_network(Network::Regtest)
        .map_err(|_| "Invalid address: not a regtest (bcrt1…) address".to_string())
}

fn difficulty(bits: u32) -> f64 {
    units::Target::from_compact(bits)
        .map(|t| t.to_bitcoin().difficulty_float())
        .unwrap_or(0.0)
}

impl RpcHandler for DevRpc {
    fn call(&self, method: &str, p: &[Value]) -> Result<Value, RpcError> {
        match method {
            "getblocktemplate" => self.getblocktemplate(p),
            "submitblock" => self.submitblock(p),
            "getbestblockhash" => Ok(json!(self.node.lock().tip().hash.to_string())),
            "getblockcount" => Ok(json!(self.node.lock().height())),
            "getblockhash" => {
                let h = match param(p, 0) {
                    Some(Value::Number(n)) => n
                        .as_i64()
                        .ok_or_else(|| RpcError::type_error("height: expected an integer"))?,
                    Some(_) => return Err(RpcError::type_error("height: expected a number")),
                    None => {
                        return Err(RpcError::new(
                            code::MISC_ERROR,
                            "missing required parameter 'height'",
                        ))
                    }
                };
                let chain = self.node.lock();
                u32::try_from(h)
                    .ok()
                    .and_then(|h| chain.hash_at(h))
                    .map(|x| json!(x.to_string()))
                    .ok_or_else(|| RpcError::invalid_parameter("Block height out of range"))
            }
            "getblockheader" => self.getblockheader(p),
            "getblock" => self.getblock(p),
            "getblockchaininfo" => {
                let chain = self.node.lock();
                let tip = chain.tip();
                Ok(json!({
                    "chain": "regtest",
                    "blocks": tip.height,
                    "headers": tip.height,
                    "bestblockhash": tip.hash.to_string(),
                    "bits": format!("{:08x}", tip.block.header.bits.to_consensus()),
                    "target": units::Target::from_compact(tip.block.header.bits.to_consensus()).map(|t| t.to_be_hex()).unwrap_or_default(),
                    "difficulty": difficulty(tip.block.header.bits.to_consensus()),
                    "time": tip.block.header.time,
                    "mediantime": tip.median_time,
                    "verificationprogress": 1.0,
                    "initialblockdownload": false,
                    "chainwork": format!("{:x}", tip.chainwork).trim_start_matches("0x").to_string(),
                    "size_on_disk": std::fs::metadata(chain.dir().join(devchain::store::BLOCKS_FILE)).map(|m| m.len()).unwrap_or(0),
                    "pruned": false,
                    "warnings": [],
                }))
            }
            "getmininginfo" => {
                let chain = self.node.lock();
                let tip = chain.tip();
                let next = chain.next_bits();
                Ok(json!({
                    "blocks": tip.height,
                    "bits": format!("{next:08x}"),
                    "difficulty": difficulty(tip.block.header.bits.to_consensus()),
                    "target": units::Target::from_compact(next).map(|t| t.to_be_hex()).unwrap_or_default(),
                    "networkhashps": network_hashps(&chain),
                    "pooledtx": chain.mempool().len(),
                    "chain": "regtest",
                    "warnings": [],
                    "blockinterval": chain.params().interval_at(tip.height + 1),
                }))
            }
            "getnetworkinfo" => Ok(json!({
                "version": 290000,
                "subversion": concat!("/cloudmine-devchain:", env!("CARGO_PKG_VERSION"), "/"),
                "protocolversion": 70016,
                "localservices": "0000000000000409",
                "localrelay": true,
                "timeoffset": 0,
                "networkactive": true,
                "connections": 0,
                "connections_in": 0,
                "connections_out": 0,
                "networks": [],
                "relayfee": 0.00001,
                "incrementalfee": 0.00001,
                "localaddresses": [],
                "warnings": [],
            })),
            "getdifficulty" => {
                let chain = self.node.lock();
                Ok(json!(difficulty(chain.tip().block.header.bits.to_consensus())))
            }
            "validateaddress" => {
                let s = str_param(p, 0, "address")?;
                Ok(match address(s) {
                    Ok(a) => address_json(&a, false),
                    Err(e) => json!({"isvalid": false, "error": e}),
                })
            }
            "getaddressinfo" => {
                let s = str_param(p, 0, "address")?;
                let a = address(s).map_err(|e| RpcError::new(code::INVALID_ADDRESS_OR_KEY, e))?;
                Ok(address_json(&a, true))
            }
            "sendrawtransaction" => self.sendrawtransaction(p),
            "getrawmempool" => {
                let verbose = matches!(param(p, 0), Some(Value::Bool(true)));
                let chain = self.node.lock();
                let entries = chain.mempool().ordered();
                if verbose {
                    let m: serde_json::Map<String, Value> = entries
                        .iter()
                        .map(|e| {
                            (
                                e.txid.to_string(),
                                json!({
                                    "vsize": e.weight.div_ceil(4),
                                    "weight": e.weight,
                                    "fees": {"base": btc(e.fee.to_sat())},
                                    "wtxid": e.wtxid.to_string(),
                                    "depends": [],
                                }),
                            )
                        })
                        .collect();
                    Ok(Value::Object(m))
                } else {
                    Ok(json!(entries
                        .iter()
                        .map(|e| e.txid.to_string())
                        .collect::<Vec<_>>()))
                }
            }
            "gettxout" => {
                let txid = Txid::from_str(str_param(p, 0, "txid")?)
                    .map_err(|e| RpcError::invalid_parameter(format!("txid: {e}")))?;
                let vout = u32::try_from(u64_param(p, 1, "n", None)?)
                    .map_err(|_| RpcError::invalid_parameter("n out of range"))?;
                let chain = self.node.lock();
                let op = bitcoin::OutPoint { txid, vout };
                Ok(match chain.coin(&op) {
                    None => Value::Null,
                    Some(c) => json!({
                        "bestblock": chain.tip().hash.to_string(),
                        "confirmations": chain.height().saturating_sub(c.height) + 1,
                        "value": btc(c.out.value.to_sat()),
                        "scriptPubKey": {"hex": c.out.script_pubkey.as_bytes().to_lower_hex_string()},
                        "coinbase": c.coinbase,
                    }),
                })
            }
            "generatetoaddress" => self.generatetoaddress(p),
            "invalidateblock" => {
                let h = hash_param(p, 0, "blockhash")?;
                let mut chain = self.node.lock();
                chain.invalidate_block(&h, self.node.now()).map_err(|e| match e {
                    SubmitError::Rejected(r) if r.reason == "Block not found" => {
                        RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Block not found")
                    }
                    other => RpcError::new(code::MISC_ERROR, other.to_string()),
                })?;
                self.node.publish(&chain);
                Ok(Value::Null)
            }
            "setmocktime" => {
                let t = match param(p, 0) {
                    Some(Value::Number(n)) => {
                        n.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| {
                            RpcError::invalid_parameter("Mocktime must be in the range [0, 4294967295]")
                        })?
                    }
                    _ => return Err(RpcError::type_error("timestamp: expected a number")),
                };
                self.node.set_mocktime(t);
                Ok(Value::Null)
            }
            "uptime" => Ok(json!(0)),
            _ => Err(RpcError::new(code::METHOD_NOT_FOUND, "Method not found")),
        }
    }
}

fn btc(sat: u64) -> Value {
    // JSON numbers in BTC as Core prints them (8 decimals); display only, amounts are integers everywhere else.
    let s = format!("{}.{:08}", sat / 100_000_000, sat % 100_000_000);
    serde_json::from_str(&s).unwrap_or(Value::Null)
}

fn network_hashps(chain: &DevChain) -> f64 {
    // Work of the last up-to-120 blocks over their time span.
    let h = chain.height();
    let start = h.saturating_sub(120);
    let (Some(a), Some(b)) = (chain.at_height(start), chain.at_height(h)) else {
        return 0.0;
    };
    let span = f64::from(b.block.header.time.saturating_sub(a.block.header.time));
    if h == start || span <= 0.0 {
        return 0.0;
    }
    let mut work = 0f64;
    for i in start + 1..=h {
        if let Some(x) = chain.at_height(i) {
            work += difficulty(x.block.header.bits.to_consensus()) * 4_294_967_296.0;
        }
    }
    work / span
}

fn address_json(a: &Address, info: bool) -> Value {
    let spk = a.script_pubkey();
    let mut v = json!({
        "isvalid": true,
        "address": a.to_string(),
        "scriptPubKey": spk.as_bytes().to_lower_hex_string(),
        "isscript": spk.is_p2sh() || spk.is_p2wsh(),
        "iswitness": spk.is_witness_program(),
    });
    if let Some(prog) = a.witness_program() {
        v["witness_version"] = json!(prog.version().to_num());
        v["witness_program"] = json!(prog.program().as_bytes().to_lower_hex_string());
    }
    if info {
        v["ismine"] = json!(false);
        v["iswatchonly"] = json!(false);
        v["solvable"] = json!(false);
        v["ischange"] = json!(false);
        v["labels"] = json!([]);
    }
    v
}

impl DevRpc {
    fn getblocktemplate(&self, p: &[Value]) -> Result<Value, RpcError> {
        let req = param(p, 0).cloned().unwrap_or(json!({}));
        let Some(obj) = req.as_object() else {
            return Err(RpcError::type_error("template_request: expected an object"));
        };
        if let Some(mode) = obj.get("mode").and_then(Value::as_str) {
            if mode != "template" {
                return Err(RpcError::invalid_parameter("Invalid mode"));
            }
        }
        let rules: Vec<&str> = obj
            .get("rules")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !rules.contains(&"segwit") {
            return Err(RpcError::invalid_parameter(
                "getblocktemplate must be called with the segwit rule set (call with {\"rules\": [\"segwit\"]})",
            ));
        }
        let t = self.node.lock().template(self.node.now());
        serde_json::to_value(GbtResult::from_template(&t))
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))
    }

    fn submitblock(&self, p: &[Value]) -> Result<Value, RpcError> {
        let hex = str_param(p, 0, "hexdata")?;
        let block: Block = Vec::<u8>::from_hex(hex)
            .ok()
            .and_then(|b| bitcoin::consensus::deserialize(&b).ok())
            .ok_or_else(|| RpcError::new(code::DESERIALIZATION_ERROR, "Block decode failed"))?;
        if block.txdata.first().is_none_or(|cb| !cb.is_coinbase()) {
            return Err(RpcError::new(
                code::DESERIALIZATION_ERROR,
                "Block does not start with a coinbase",
            ));
        }
        let block = fill_witness_nonce(block);
        Ok(match self.node.submit_block_blocking(block) {
            BlockFate::Accepted => Value::Null,
            BlockFate::Rejected(r) | BlockFate::Inconclusive(r) => json!(r),
        })
    }

    fn getblockheader(&self, p: &[Value]) -> Result<Value, RpcError> {
        let h = hash_param(p, 0, "blockhash")?;
        let verbose = !matches!(param(p, 1), Some(Value::Bool(false)));
        let chain = self.node.lock();
        let b = chain
            .by_hash(&h)
            .ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Block not found"))?;
        if !verbose {
            return Ok(json!(
                bitcoin::consensus::serialize(&b.block.header).to_lower_hex_string()
            ));
        }
        Ok(header_json(&chain, b))
    }

    fn getblock(&self, p: &[Value]) -> Result<Value, RpcError> {
        let h = hash_param(p, 0, "blockhash")?;
        let verbosity = match param(p, 1) {
            None => 1,
            Some(Value::Bool(b)) => u64::from(*b),
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| RpcError::type_error("verbosity: expected 0, 1 or 2"))?,
            Some(_) => return Err(RpcError::type_error("verbosity: expected a number")),
        };
        let chain = self.node.lock();
        let b = chain
            .by_hash(&h)
            .ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Block not found"))?;
        if verbosity == 0 {
            return Ok(json!(
                bitcoin::consensus::serialize(&*b.block).to_lower_hex_string()
            ));
        }
        let mut v = header_json(&chain, b);
        v["size"] = json!(b.block.total_size());
        v["weight"] = json!(b.block.weight().to_wu());
        v["tx"] = if verbosity >= 2 {
            json!(b.block.txdata.iter().map(tx_json).collect::<Vec<_>>())
        } else {
            json!(b
                .block
                .txdata
                .iter()
                .map(|t| t.compute_txid().to_string())
                .collect::<Vec<_>>())
        };
        Ok(v)
    }

    fn sendrawtransaction(&self, p: &[Value]) -> Result<Value, RpcError> {
        let hex = str_param(p, 0, "hexstring")?;
        let tx: Transaction = Vec::<u8>::from_hex(hex)
            .ok()
            .and_then(|b| bitcoin::consensus::deserialize(&b).ok())
            .ok_or_else(|| {
                RpcError::new(
                    code::DESERIALIZATION_ERROR,
                    "TX decode failed. Make sure the tx has at least one input.",
                )
            })?;
        // maxfeerate in BTC/kvB, default 0.10 (Core); 0 disables the check.
        let max = match param(p, 1) {
            None => Some(10_000_000u64),
            Some(Value::Number(n)) => {
                let f = n
                    .as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .ok_or_else(|| RpcError::type_error("maxfeerate"))?;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                // checked finite, non-negative
                Some((f * 100_000_000.0).round() as u64)
            }
            Some(_) => return Err(RpcError::type_error("maxfeerate: expected a number")),
        };
        let mut chain = self.node.lock();
        chain
            .accept_transaction(tx, self.node.now(), max)
            .map(|txid| json!(txid.to_string()))
            .map_err(|r| RpcError::new(r.code, r.reason))
    }

    fn generatetoaddress(&self, p: &[Value]) -> Result<Value, RpcError> {
        let n = u64_param(p, 0, "nblocks", None)?;
        if n > GENERATE_BLOCKS_MAX {
            return Err(RpcError::invalid_parameter(format!(
                "nblocks {n} exceeds the limit {GENERATE_BLOCKS_MAX}"
            )));
        }
        let a = address(str_param(p, 1, "address")?)
            .map_err(|_| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Error: Invalid address"))?;
        let tries =
            u32::try_from(u64_param(p, 2, "maxtries", Some(GENERATE_TRIES_DEFAULT))?).unwrap_or(u32::MAX);
        let script = a.script_pubkey();
        let mut hashes = Vec::new();
        let mut waited = std::time::Duration::ZERO;
        while (hashes.len() as u64) < n {
            let block = {
                let chain = self.node.lock();
                // Quick at any difficulty: the dev chain's minimum-difficulty allowance (a block
                // stamped more than two intervals after its parent), as testnet's rule.
                chain.generate_block_quick(&script, self.node.now(), tries)
            };
            let Some(block) = block else {
                // The dev chain's throttle: a block may be timed at most two hours ahead of the wall
                // clock and must be after the median time past; wait for the clock (bounded). (At the
                // minimum difficulty `maxtries` is never what runs out: half of all hashes meet it.)
                if waited >= GENERATE_CLOCK_WAIT_MAX {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                waited += std::time::Duration::from_millis(100);
                continue;
            };
            let hash = block.block_hash();
            match self.node.submit_block_blocking(block) {
                BlockFate::Accepted => {
                    hashes.push(hash.to_string());
                    waited = std::time::Duration::ZERO;
                }
                BlockFate::Rejected(r) | BlockFate::Inconclusive(r) => {
                    return Err(RpcError::new(
                        code::MISC_ERROR,
                        format!("generated block rejected: {r}"),
                    ))
                }
            }
        }
        Ok(json!(hashes))
    }
}

/// Core's `UpdateUncommittedBlockStructures`: a block with a commitment but an empty coinbase witness
/// gets the 32-byte zero reserved value.
fn fill_witness_nonce(mut block: Block) -> Block {
    let has_commitment = block.txdata.first().is_some_and(|cb| {
        cb.output.iter().any(|o| {
            o.script_pubkey
                .as_bytes()
                .starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed])
        })
    });
    if has_commitment {
        if let Some(input) = block.txdata.first_mut().and_then(|cb| cb.input.first_mut()) {
            if input.witness.is_empty() {
                input.witness = bitcoin::Witness::from_slice(&[[0u8; 32]]);
            }
        }
    }
    block
}

fn header_json(chain: &DevChain, b: &devchain::BlockInfo) -> Value {
    let hd = &b.block.header;
    let mut v = json!({
        "hash": b.hash.to_string(),
        "confirmations": chain.height().saturating_sub(b.height) + 1,
        "height": b.height,
        "version": hd.version.to_consensus(),
        "versionHex": format!("{:08x}", hd.version.to_consensus()),
        "merkleroot": hd.merkle_root.to_string(),
        "time": hd.time,
        "mediantime": b.median_time,
        "nonce": hd.nonce,
        "bits": format!("{:08x}", hd.bits.to_consensus()),
        "difficulty": difficulty(hd.bits.to_consensus()),
        "chainwork": format!("{:x}", b.chainwork),
        "nTx": b.block.txdata.len(),
    });
    if b.height > 0 {
        v["previousblockhash"] = json!(hd.prev_blockhash.to_string());
    }
    if let Some(next) = chain.hash_at(b.height + 1) {
        v["nextblockhash"] = json!(next.to_string());
    }
    v
}

fn tx_json(tx: &Transaction) -> Value {
    json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": tx.input.iter().map(|i| if tx.is_coinbase() {
            json!({"coinbase": i.script_sig.as_bytes().to_lower_hex_string(), "sequence": i.sequence.0})
        } else {
            json!({"txid": i.previous_output.txid.to_string(), "vout": i.previous_output.vout,
                   "txinwitness": i.witness.iter().map(|w| w.to_lower_hex_string()).collect::<Vec<_>>(), "sequence": i.sequence.0})
        }).collect::<Vec<_>>(),
        "vout": tx.output.iter().enumerate().map(|(n, o)| json!({
            "value": btc(o.value.to_sat()), "n": n,
            "scriptPubKey": {"hex": o.script_pubkey.as_bytes().to_lower_hex_string()},
        })).collect::<Vec<_>>(),
        "hex": bitcoin::consensus::serialize(tx).to_lower_hex_string(),
    })
}
