//! Chain backend tests over real HTTP on 127.0.0.1: the Bitcoin Core backend against the dev chain's
//! JSON-RPC face and against Core-shaped recorded responses; the RPC server's answers to bad input.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bitcoin::hashes::Hash;
use bitcoin::hex::{DisplayHex, FromHex};
use chain::dev::{DevNode, DevRpc};
use chain::{BackendError, BitcoindBackend, BitcoindConfig, BlockFate};
use core_rpc::server::{self, Credentials, RpcHandler};
use core_rpc::{Auth, RpcClient, RpcError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const USERPASS: &str = "alice:s3cret";

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn serve(handler: Arc<dyn RpcHandler>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(server::serve(
        listener,
        handler,
        Credentials::new(vec![USERPASS.into()]),
        async {
            let _ = rx.await;
        },
    ));
    Server { addr, stop: Some(tx) }
}

fn dev_node(dir: &std::path::Path) -> DevNode {
    DevNode::new(devchain::DevChain::open(dir, 30).unwrap())
}

fn url(s: &Server) -> String {
    format!("http://{}/", s.addr)
}

fn auth() -> Auth {
    Auth::UserPass("alice".into(), "s3cret".into())
}

fn payout() -> bitcoin::ScriptBuf {
    bitcoin::ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([7; 20]))
}

/// Mines a template (time moved into the past, after MTP, so blocks never wait for the clock).
fn mine(mut t: mining_core::BlockTemplate) -> bitcoin::Block {
    t.cur_time = t.min_time.max(1_700_000_000);
    devchain::chain::mine_template(&t, &payout(), 10_000_000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_backend_drives_the_dev_chain_over_http() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (n1, n2) = (dev_node(d1.path()), dev_node(d2.path()));
    let (s1, s2) = (
        serve(Arc::new(DevRpc::new(n1.clone()))).await,
        serve(Arc::new(DevRpc::new(n2.clone()))).await,
    );
    let mut cfg = BitcoindConfig::single(&url(&s1), auth(), "regtest");
    cfg.nodes.push((url(&s2), auth()));
    let backend = BitcoindBackend::connect(cfg).await.unwrap();
    let mut tips = backend.tip_watch();
    assert_eq!(tips.borrow().height, 0);

    for expect_height in 1..=3u32 {
        let t = backend.template().await.unwrap();
        assert_eq!(t.height, expect_height);
        assert!(t.default_witness_commitment.is_some());
        let block = mine(t);
        // submitted to both nodes at once; both accept (same genesis, same rules)
        assert_eq!(backend.submit_block(&block).await.unwrap(), BlockFate::Accepted);
        assert_eq!(n1.lock().height(), expect_height);
        assert_eq!(n2.lock().height(), expect_height);
        // the poller sees the new tip
        tokio::time::timeout(Duration::from_secs(5), async {
            while tips.borrow_and_update().height < expect_height {
                tips.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        assert_eq!(tips.borrow().hash, block.block_hash());
        // resubmission is "duplicate", which counts as accepted
        assert_eq!(backend.submit_block(&block).await.unwrap(), BlockFate::Accepted);
    }
    // a block that fails a rule comes back with Core's reason
    let mut bad = mine(backend.template().await.unwrap());
    bad.header.merkle_root = bitcoin::TxMerkleNode::all_zeros();
    let fate = backend.submit_block(&bad).await.unwrap();
    assert!(
        matches!(fate, BlockFate::Rejected(ref r) if r == "bad-txnmrklroot" || r == "high-hash"),
        "{fate:?}"
    );
    // Confirmations, through Core's getblockheader and directly on the dev chain: the same answers.
    let first = n1.lock().at_height(1).unwrap().hash;
    let tip = n1.lock().tip().hash;
    let dev = chain::Backend::Dev(n1.clone());
    for b in [chain::Backend::Bitcoind(backend.clone()), dev] {
        assert_eq!(b.confirmations(&first).await.unwrap(), Some(3));
        assert_eq!(b.confirmations(&tip).await.unwrap(), Some(1));
        assert_eq!(
            b.confirmations(&bitcoin::BlockHash::all_zeros()).await.unwrap(),
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_backend_gives_clear_connect_errors() {
    let d = tempfile::tempdir().unwrap();
    let s = serve(Arc::new(DevRpc::new(dev_node(d.path())))).await;
    // wrong network
    let e = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, BackendError::WrongNetwork { ref got, .. } if got == "regtest"),
        "{e}"
    );
    // wrong password
    let e = BitcoindBackend::connect(BitcoindConfig::single(
        &url(&s),
        Auth::UserPass("alice".into(), "nope".into()),
        "regtest",
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, BackendError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("--bitcoind-auth"));
    // nobody listening
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = BitcoindBackend::connect(BitcoindConfig::single(
        &format!("http://{dead}/"),
        auth(),
        "regtest",
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, BackendError::Unreachable { .. }), "{e}");
    // a cookie file works, and a missing one is a clear error
    let cookie = d.path().join("cookie");
    std::fs::write(&cookie, USERPASS).unwrap();
    BitcoindBackend::connect(BitcoindConfig::single(
        &url(&s),
        Auth::CookieFile(cookie),
        "regtest",
    ))
    .await
    .unwrap();
    let e = BitcoindBackend::connect(BitcoindConfig::single(
        &url(&s),
        Auth::CookieFile(d.path().join("nope")),
        "regtest",
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("cookie"), "{e}");
}

/// Replays fixed, Core-shaped responses.
struct Recorded(HashMap<&'static str, Result<Value, RpcError>>);

impl RpcHandler for Recorded {
    fn call(&self, method: &str, _params: &[Value]) -> Result<Value, RpcError> {
        self.0
            .get(method)
            .cloned()
            .unwrap_or_else(|| Err(RpcError::new(-32601, "Method not found")))
    }
}

fn mainnet_info(ibd: bool, blocks: u64, headers: u64) -> Value {
    json!({"chain": "main", "blocks": blocks, "headers": headers, "initialblockdownload": ibd,
           "verificationprogress": if ibd { 0.42 } else { 0.99999 },
           "bestblockhash": "000000000000000000010538edbfd2d5b809a33dd83f284aeea41c6d0d96968a"})
}

/// A getblocktemplate result in Core's exact shape for mainnet block 900001: 3,000 segwit
/// transactions, large fees, block 900000 as parent. Generated deterministically here (no Core node
/// can run on this machine); txids, wtxids, the commitment and target are computed with rust-bitcoin.
fn mainnet_shaped_gbt(n: usize) -> Value {
    let mut txs = Vec::with_capacity(n);
    let mut wtxids = vec![bitcoin::Wtxid::all_zeros()];
    let mut fees = 0u64;
    for i in 0..n as u32 {
        let mut prev = [0u8; 32];
        prev[..4].copy_from_slice(&i.to_le_bytes());
        prev[4] = 0xaa;
        let tx = bitcoin::Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![bitcoin::TxIn {
                previous_output: bitcoin::OutPoint {
                    txid: bitcoin::Txid::from_byte_array(prev),
                    vout: i % 3,
                },
                script_sig: bitcoin::ScriptBuf::new(),
                sequence: bitcoin::Sequence::MAX,
                witness: bitcoin::Witness::from_slice(&[vec![0x30u8; 71], vec![0x02u8; 33]]),
            }],
            output: vec![
                bitcoin::TxOut {
                    value: bitcoin::Amount::from_sat(10_000 + u64::from(i)),
                    script_pubkey: payout(),
                },
                bitcoin::TxOut {
                    value: bitcoin::Amount::from_sat(5_000_000),
                    script_pubkey: payout(),
                },
            ],
        };
        let fee = 1_000 + u64::from(i) * 37 % 50_000;
        fees += fee;
        wtxids.push(tx.compute_wtxid());
        txs.push(json!({
            "data": bitcoin::consensus::serialize(&tx).to_lower_hex_string(),
            "txid": tx.compute_txid().to_string(),
            "hash": tx.compute_wtxid().to_string(),
            "depends": [], "fee": fee, "sigops": 1, "weight": tx.weight().to_wu(),
        }));
    }
    let root = bitcoin::merkle_tree::calculate_root(wtxids.into_iter().map(|w| w.to_raw_hash())).unwrap();
    let commitment = bitcoin::Block::compute_witness_commitment(&root.into(), &[0u8; 32]);
    let mut spk = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
    spk.extend_from_slice(commitment.as_byte_array());
    let target = units::Target::from_compact(0x17023774).unwrap().to_be_hex();
    json!({
        "capabilities": ["proposal"], "version": 536870912, "rules": ["csv", "!segwit", "taproot"],
        "vbavailable": {}, "vbrequired": 0,
        "previousblockhash": "000000000000000000010538edbfd2d5b809a33dd83f284aeea41c6d0d96968a",
        "transactions": txs, "coinbaseaux": {}, "coinbasevalue": 312_500_000u64 + fees,
        "longpollid": "000000000000000000010538edbfd2d5b809a33dd83f284aeea41c6d0d96968a1234",
        "target": target, "mintime": 1_749_189_000, "mutable": ["time", "transactions", "prevblock"],
        "noncerange": "00000000ffffffff", "sigoplimit": 80000, "sizelimit": 4000000, "weightlimit": 4000000,
        "curtime": 1_749_192_936, "bits": "17023774", "height": 900001,
        "default_witness_commitment": spk.to_lower_hex_string(),
    })
}

fn recorded(gbt: Result<Value, RpcError>, info: Value) -> Arc<Recorded> {
    Arc::new(Recorded(HashMap::from([
        ("getblockchaininfo", Ok(info)),
        (
            "getbestblockhash",
            Ok(json!(
                "000000000000000000010538edbfd2d5b809a33dd83f284aeea41c6d0d96968a"
            )),
        ),
        ("getblockheader", Ok(json!({"height": 900000}))),
        ("getblocktemplate", gbt),
        ("submitblock", Ok(json!("high-hash"))),
    ])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_backend_parses_a_mainnet_shaped_template() {
    let gbt = mainnet_shaped_gbt(3_000);
    let s = serve(recorded(Ok(gbt.clone()), mainnet_info(false, 900000, 900000))).await;
    let backend = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
        .await
        .unwrap();
    assert_eq!(backend.tip_watch().borrow().height, 900000);
    let t = backend.template().await.unwrap();
    assert_eq!(t.transactions.len(), 3_000);
    assert_eq!(t.height, 900001);
    assert_eq!(t.coinbase_value.to_sat(), gbt["coinbasevalue"].as_u64().unwrap());
    assert_eq!(t.coinbase_value.to_sat() - t.fees().to_sat(), 312_500_000);
    let branch = t.merkle_branch();
    assert_eq!(branch.len(), 12); // ceil(log2(3001))
                                  // the branch folded onto any coinbase equals rust-bitcoin's full tree
    let cb = [9u8; 32];
    let ours = mining_core::merkle::fold(cb, &branch);
    let full = bitcoin::merkle_tree::calculate_root(
        std::iter::once(bitcoin::Txid::from_byte_array(cb))
            .chain(t.transactions.iter().map(|x| x.txid))
            .map(|t| t.to_raw_hash()),
    )
    .unwrap();
    assert_eq!(ours, full.to_byte_array());
    // Core's reject reason comes back as the block's fate
    let block = t.assemble(&[0u8; 0], &[0u8; 80]).err();
    assert!(block.is_some(), "an empty coinbase does not decode");

    // every inconsistency is refused with the field named
    let mut bad = gbt.clone();
    bad["transactions"][17]["txid"] = json!("00".repeat(32));
    assert!(template_error(bad).await.contains("transactions[17].txid"));
    let mut bad = gbt.clone();
    bad["target"] = json!("00".repeat(32));
    assert!(template_error(bad).await.contains("does not match bits"));
    let mut bad = gbt.clone();
    bad["rules"] = json!(["!segwit", "!futurerule"]);
    assert!(template_error(bad).await.contains("!futurerule"));
    let mut bad = gbt;
    bad["transactions"].as_array_mut().unwrap().swap(1, 2);
    assert!(template_error(bad).await.contains("default_witness_commitment"));
}

/// Serves `gbt` as a recorded mainnet node and returns the backend's error for it.
async fn template_error(gbt: Value) -> String {
    let s = serve(recorded(Ok(gbt), mainnet_info(false, 900000, 900000))).await;
    let b = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
        .await
        .unwrap();
    b.template().await.unwrap_err().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_backend_reports_a_syncing_node() {
    let s = serve(recorded(Ok(json!({})), mainnet_info(true, 500_000, 900_000))).await;
    let e = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Syncing {
                blocks: 500_000,
                headers: 900_000,
                ..
            }
        ),
        "{e}"
    );
    // a node that finished IBD but answers GBT with -10 (Core: "in initial sync")
    let s = serve(recorded(
        Err(RpcError::new(
            -10,
            "Bitcoin Core is in initial sync and waiting for blocks...",
        )),
        mainnet_info(false, 900000, 900000),
    ))
    .await;
    let b = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
        .await
        .unwrap();
    assert!(matches!(
        b.template().await.unwrap_err(),
        BackendError::Syncing { .. }
    ));
}

/// Raw HTTP: returns (status, body).
async fn post_raw(addr: SocketAddr, auth: Option<&str>, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| {
            use base64::Engine as _;
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        })
        .unwrap_or_default();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_rpc_answers_bad_input_like_core_and_carries_on() {
    let d = tempfile::tempdir().unwrap();
    let s = serve(Arc::new(DevRpc::new(dev_node(d.path())))).await;
    let a = Some(USERPASS);
    let req = |m: &str, p: Value| json!({"jsonrpc": "1.0", "id": "t", "method": m, "params": p}).to_string();
    // (body, expected HTTP status, expected error code or None for success)
    let cases: Vec<(String, u16, Option<i64>)> = vec![
        ("{not json".into(), 500, Some(-32700)),
        ("42".into(), 400, Some(-32600)),
        (json!({"id": 1}).to_string(), 400, Some(-32600)),
        (req("nosuchmethod", json!([])), 404, Some(-32601)),
        (req("getblockhash", json!([-1])), 500, Some(-8)),
        (req("getblockhash", json!(["zero"])), 500, Some(-3)),
        (req("getblockhash", json!([1_000_000])), 500, Some(-8)),
        (req("getblockheader", json!(["zz"])), 500, Some(-8)),
        (req("getblockheader", json!(["00".repeat(32)])), 500, Some(-5)),
        (req("getblock", json!([])), 500, Some(-1)),
        (req("submitblock", json!(["00"])), 500, Some(-22)),
        (req("submitblock", json!([12])), 500, Some(-3)),
        (req("sendrawtransaction", json!(["zz"])), 500, Some(-22)),
        (req("getblocktemplate", json!([{}])), 500, Some(-8)),
        (req("getblocktemplate", json!(["segwit"])), 500, Some(-3)),
        (
            req(
                "getaddressinfo",
                json!(["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"]),
            ),
            500,
            Some(-5),
        ),
        (
            req(
                "generatetoaddress",
                json!([5_000, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]),
            ),
            500,
            Some(-8),
        ),
        (req("getnetworkinfo", json!({"verbose": true})), 500, Some(-8)),
        (req("getblockcount", json!([])), 200, None),
        (
            req(
                "validateaddress",
                json!(["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"]),
            ),
            200,
            None,
        ),
    ];
    for (body, status, code) in cases {
        let (st, resp) = post_raw(s.addr, a, &body).await;
        assert_eq!(st, status, "{body} -> {resp}");
        let v: Value = serde_json::from_str(&resp).unwrap();
        match code {
            Some(c) => assert_eq!(v["error"]["code"].as_i64(), Some(c), "{body} -> {resp}"),
            None => assert!(v["error"].is_null(), "{body} -> {resp}"),
        }
    }
    // no credentials / wrong credentials: 401
    assert_eq!(
        post_raw(s.addr, None, &req("getblockcount", json!([]))).await.0,
        401
    );
    assert_eq!(
        post_raw(s.addr, Some("alice:x"), &req("getblockcount", json!([])))
            .await
            .0,
        401
    );
    // JSON-RPC 2.0: errors with HTTP 200
    let (st, resp) = post_raw(
        s.addr,
        a,
        &json!({"jsonrpc": "2.0", "id": 5, "method": "nope"}).to_string(),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&resp).unwrap()["error"]["code"],
        -32601
    );
    // a batch
    let batch = json!([{"id": 1, "method": "getblockcount"}, {"id": 2, "method": "nope"}]).to_string();
    let (st, resp) = post_raw(s.addr, a, &batch).await;
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v[0]["result"], 0);
    assert_eq!(v[1]["error"]["code"], -32601);
    // a body over the limit is refused
    let big = format!("[\"{}\"]", "0".repeat(server::BODY_BYTES_MAX + 10));
    assert_eq!(post_raw(s.addr, a, &big).await.0, 413);
    // and after all that the server still answers, and validateaddress knows regtest
    let c = RpcClient::new(&url(&s), auth()).unwrap();
    let v = c
        .call(
            "validateaddress",
            json!(["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]),
        )
        .await
        .unwrap();
    assert_eq!(v["isvalid"], true);
    assert_eq!(v["witness_version"], 0);
    let v = c
        .call(
            "validateaddress",
            json!(["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"]),
        )
        .await
        .unwrap();
    assert_eq!(v["isvalid"], false);
    let gbt = c
        .call("getblocktemplate", json!([{"rules": ["segwit"]}]))
        .await
        .unwrap();
    assert_eq!(gbt["height"], 1);
    assert_eq!(gbt["bits"], "207fffff");
    assert_eq!(
        gbt["default_witness_commitment"],
        "6a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9"
    );
    // generatetoaddress mines real blocks (brute force) and getblock shows them
    let hashes = c
        .call(
            "generatetoaddress",
            json!([2, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]),
        )
        .await
        .unwrap();
    assert_eq!(hashes.as_array().unwrap().len(), 2);
    let blk = c.call("getblock", json!([hashes[1], 2])).await.unwrap();
    assert_eq!(blk["height"], 2);
    assert_eq!(
        blk["tx"][0]["vin"][0]["coinbase"].as_str().unwrap().get(..2),
        Some("52")
    ); // OP_2
    let hex = c.call("getblock", json!([hashes[0], 0])).await.unwrap();
    let raw = Vec::<u8>::from_hex(hex.as_str().unwrap()).unwrap();
    let block: bitcoin::Block = bitcoin::consensus::deserialize(&raw).unwrap();
    assert_eq!(block.block_hash().to_string(), hashes[0].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_backend_follows_zmq_hashblock() {
    let d = tempfile::tempdir().unwrap();
    let node = dev_node(d.path());
    let s = serve(Arc::new(DevRpc::new(node.clone()))).await;
    let (endpoint, publisher) = chain::zmq::publish("tcp://127.0.0.1:0", node.tip_watch())
        .await
        .unwrap();
    let mut cfg = BitcoindConfig::single(&url(&s), auth(), "regtest");
    cfg.poll_interval = Duration::from_secs(60); // only ZMQ can deliver the tip within the test's deadline
    cfg.zmq_hashblock = Some(endpoint);
    let backend = BitcoindBackend::connect(cfg).await.unwrap();
    let mut tips = backend.tip_watch();
    tokio::time::sleep(Duration::from_millis(500)).await; // ZMQ subscriptions take a moment to join
    for h in 1..=2u32 {
        let block = mine(backend.template().await.unwrap());
        assert_eq!(backend.submit_block(&block).await.unwrap(), BlockFate::Accepted);
        tokio::time::timeout(Duration::from_secs(3), async {
            while tips.borrow_and_update().height < h {
                tips.changed().await.unwrap();
            }
        })
        .await
        .expect("ZMQ hashblock did not arrive");
        assert_eq!(tips.borrow().hash, block.block_hash());
    }
    publisher.abort();
}

/// The wallet calls payouts make of a Core node (pool key, `scantxoutset` / `sendrawtransaction` /
/// `getrawtransaction`), against responses in Core's documented shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_backend_wallet_calls_read_cores_shapes() {
    let spk = payout();
    let tip = "000000000000000000010538edbfd2d5b809a33dd83f284aeea41c6d0d96968a";
    let txid = |b: u8| bitcoin::Txid::from_byte_array([b; 32]).to_string();
    let unspent = |b: u8, amount: Value, coinbase: bool, height: u64| {
        json!({"txid": txid(b), "vout": 1, "scriptPubKey": spk.as_bytes().to_lower_hex_string(),
               "desc": "raw(…)#x", "amount": amount, "coinbase": coinbase, "height": height,
               "blockhash": tip, "confirmations": 900_001 - height})
    };
    let mut calls = recorded(Ok(json!({})), mainnet_info(false, 900000, 900000));
    let m = &mut Arc::get_mut(&mut calls).unwrap().0;
    m.insert(
        "scantxoutset",
        Ok(
            json!({"success": true, "txouts": 123, "height": 900000, "bestblock": tip,
                  "unspents": [
                      unspent(1, json!(0.00012345), false, 899_000),
                      unspent(2, json!(3.125), true, 899_950),   // coinbase 51 deep: immature
                      unspent(3, json!(3.12500001), true, 899_000),
                      unspent(4, json!(0.00000546), false, 899_001), // printed 5.46e-6 by a double
                  ],
                  "total_amount": 6.25012892}),
        ),
    );
    m.insert(
        "getblockstats",
        Ok(json!({"height": 900000, "totalfee": 2_345_678})),
    );
    m.insert(
        "sendrawtransaction",
        Err(RpcError::new(-25, "bad-txns-inputs-missingorspent")),
    );
    m.insert(
        "getrawtransaction",
        Ok(json!({"txid": txid(7), "confirmations": 3, "blockhash": tip})),
    );
    let s = serve(calls).await;
    let b = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
        .await
        .unwrap();
    let coins = b.spendable_coins(&spk).await.unwrap();
    let got: Vec<(String, u64, u32)> = coins
        .iter()
        .map(|c| (c.outpoint.txid.to_string(), c.txout.value.to_sat(), c.height))
        .collect();
    assert_eq!(
        got,
        vec![
            (txid(1), 12_345, 899_000),
            (txid(3), 312_500_001, 899_000),
            (txid(4), 546, 899_001)
        ],
        "exact amounts; the immature coinbase left out"
    );
    assert_eq!(b.block_fees(900_000).await.unwrap(), Some(2_345_678));
    let tx = bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![],
        output: vec![],
    };
    let refused = b.broadcast(&tx).await.unwrap().unwrap_err();
    assert!(refused.contains("missingorspent"), "{refused}");
    let st = b.tx_status(&txid(7).parse().unwrap()).await.unwrap();
    assert_eq!(
        st,
        chain::TxStatus::Confirmed {
            confirmations: 3,
            height: 900_000
        }
    );
    // "Already known" is success; unknown transaction is -5.
    let mut calls = recorded(Ok(json!({})), mainnet_info(false, 900000, 900000));
    let m = &mut Arc::get_mut(&mut calls).unwrap().0;
    m.insert(
        "sendrawtransaction",
        Err(RpcError::new(-27, "Transaction already in block chain")),
    );
    m.insert(
        "getrawtransaction",
        Err(RpcError::new(
            -5,
            "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
        )),
    );
    let s = serve(calls).await;
    let b = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
        .await
        .unwrap();
    assert_eq!(b.broadcast(&tx).await.unwrap(), Ok(tx.compute_txid()));
    assert_eq!(
        b.tx_status(&tx.compute_txid()).await.unwrap(),
        chain::TxStatus::Unknown
    );
}

/// Issue 12: a regtest tutorial's `generatetoaddress 101 <address>` succeeds quickly even after real
/// mining raised the dev chain's difficulty (the minimum-difficulty allowance), so a newcomer can
/// mature a coinbase in seconds; the blocks stay within two hours of the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generatetoaddress_101_is_quick_on_a_hardened_dev_chain() {
    let d = tempfile::tempdir().unwrap();
    let node = dev_node(d.path());
    // Harden: blocks 1 s apart by block time (about half a bit harder each), ending near the clock.
    {
        let mut c = node.lock();
        let mut t = chain::dev::now().saturating_sub(200);
        for _ in 0..40 {
            t += 1;
            let b = c.generate_block(&payout(), t, u32::MAX).unwrap();
            c.submit_block(b, t).unwrap();
        }
        let d = units::Difficulty::from_target(units::Target::from_compact(c.next_bits()).unwrap());
        assert!(d.to_f64() > 1e-4, "hardened to {d}");
    }
    let s = serve(Arc::new(DevRpc::new(node.clone()))).await;
    let c = RpcClient::new(&url(&s), auth()).unwrap();
    let started = std::time::Instant::now();
    let hashes = c
        .call(
            "generatetoaddress",
            json!([101, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]),
        )
        .await
        .unwrap();
    assert_eq!(hashes.as_array().unwrap().len(), 101);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // the first block just over 2·T after its parent, the rest a second apart: a couple of minutes
    // ahead of the clock at most, so real mining goes on at once
    let tip = node.lock().tip().block.header.time;
    assert!(
        tip <= chain::dev::now() + 2 * 30 + 1 + 101,
        "tip {tip} vs now {}",
        chain::dev::now()
    );
}

/// `scantxoutset` reads Core's whole UTXO set (minutes on mainnet): it waits up to its own timeout
/// (`BitcoindConfig::scan_timeout`), not the ordinary call timeout, which would fail every payout
/// round on a real node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scantxoutset_waits_past_the_ordinary_call_timeout() {
    struct Slow(Arc<Recorded>);
    impl RpcHandler for Slow {
        fn call(&self, method: &str, params: &[Value]) -> Result<Value, RpcError> {
            if method == "scantxoutset" {
                std::thread::sleep(Duration::from_millis(1_500));
            }
            self.0.call(method, params)
        }
    }
    let spk = payout();
    let mut calls = recorded(Ok(json!({})), mainnet_info(false, 900000, 900000));
    Arc::get_mut(&mut calls).unwrap().0.insert(
        "scantxoutset",
        Ok(json!({"success": true, "txouts": 1, "height": 900000,
                  "bestblock": "000000000000000000010538edbfd2d5b809a33dd83f284aeea41c6d0d96968a",
                  "unspents": [], "total_amount": 0})),
    );
    let s = serve(Arc::new(Slow(calls))).await;
    let mut cfg = BitcoindConfig::single(&url(&s), auth(), "main");
    cfg.timeout = Duration::from_millis(500);
    assert_eq!(cfg.scan_timeout, chain::bitcoind::SCANTXOUTSET_TIMEOUT);
    let b = BitcoindBackend::connect(cfg.clone()).await.unwrap();
    assert!(b.spendable_coins(&spk).await.unwrap().is_empty());
    // The same scan under the ordinary timeout fails: its own timeout is what lets it finish.
    cfg.scan_timeout = cfg.timeout;
    let b = BitcoindBackend::connect(cfg).await.unwrap();
    let e = b.spendable_coins(&spk).await.unwrap_err();
    assert!(
        e.to_string().contains("scantxoutset timed out after 500 ms"),
        "{e}"
    );
}

/// Core's `submitblock` answers `inconclusive` for a block that is valid so far but not on its best
/// chain (a competing block at the same height came first): that decides nothing, so it is not a
/// rejection (the pool would otherwise never credit a block that may still win).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconclusive_submitblock_answer_is_not_a_rejection() {
    let block = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Bitcoin);
    let node = |answer: &str| {
        let mut calls = recorded(Ok(json!({})), mainnet_info(false, 900000, 900000));
        Arc::get_mut(&mut calls)
            .unwrap()
            .0
            .insert("submitblock", Ok(json!(answer)));
        calls
    };
    for answer in ["inconclusive", "duplicate-inconclusive"] {
        let s = serve(node(answer)).await;
        let b = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
            .await
            .unwrap();
        assert_eq!(
            b.submit_block(&block).await.unwrap(),
            BlockFate::Inconclusive(answer.into())
        );
    }
    // One node rejects, another cannot decide yet: undecided, not rejected.
    let (a, c) = (serve(node("high-hash")).await, serve(node("inconclusive")).await);
    let mut cfg = BitcoindConfig::single(&url(&a), auth(), "main");
    cfg.nodes.push((url(&c), auth()));
    let b = BitcoindBackend::connect(cfg).await.unwrap();
    assert_eq!(
        b.submit_block(&block).await.unwrap(),
        BlockFate::Inconclusive("inconclusive".into())
    );
    // A rejection by every node stays one.
    let s = serve(node("bad-txnmrklroot")).await;
    let b = BitcoindBackend::connect(BitcoindConfig::single(&url(&s), auth(), "main"))
        .await
        .unwrap();
    assert_eq!(
        b.submit_block(&block).await.unwrap(),
        BlockFate::Rejected("bad-txnmrklroot".into())
    );
}
