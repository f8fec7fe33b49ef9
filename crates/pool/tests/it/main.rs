//! Pool integration tests over real TCP on 127.0.0.1 with the embedded dev chain, a real SQLite share
//! log, and test miners that hash for real (mining-core) and speak through the stratum crate.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bitcoin::Network;
use chain::{Backend, DevNode};
use pool::{PayoutScheme, Pool, PoolConfig};
use serde_json::json;
use std::time::Duration;
use test_support::{verdict, Miner};
use units::Difficulty;

const ADDR: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

struct Harness {
    pool: Pool,
    node: DevNode,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A ledger in the harness's directory (`ledger.sqlite`).
    async fn ledger(&self) -> std::sync::Arc<ledger::Ledger> {
        let url = self._dir.path().join("ledger.sqlite");
        std::sync::Arc::new(ledger::Ledger::open(&url.to_string_lossy()).await.unwrap())
    }
}

async fn harness(tweak: impl FnOnce(&mut PoolConfig)) -> Harness {
    harness_with_log_cap(tweak, None).await
}

/// [`harness`] with the share log capped at `max_bytes` (a full disk, as SQLite sees it).
async fn harness_with_log_cap(tweak: impl FnOnce(&mut PoolConfig), max_bytes: Option<u64>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let node = DevNode::new(devchain::DevChain::open(dir.path(), 30).unwrap());
    let mut cfg = PoolConfig::new(Network::Regtest, PayoutScheme::Solo);
    cfg.vardiff.min = Difficulty::MIN;
    cfg.initial_difficulty = Difficulty::from_f64(0.001).unwrap();
    tweak(&mut cfg);
    let (log, _writer) = pool::share_log::ShareLog::open_with(&dir.path().join("pool.sqlite"), max_bytes)
        .await
        .unwrap();
    let pool = Pool::start(
        cfg,
        Backend::Dev(node.clone()),
        log,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    Harness {
        pool,
        node,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpuminer_flow_shares_accepted_and_durable() {
    let h = harness(|_| {}).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    m.handshake(&format!("{ADDR}.cpu")).await;
    let mut accepted_headers = Vec::new();
    for _ in 0..5 {
        m.wait_job().await;
        let (p, header) = m.find_share(&format!("{ADDR}.cpu"), false);
        // cpuminer sends every submit with id 4
        let r = m.submit(json!(4), &p).await;
        assert_eq!(r["id"], 4);
        match verdict(&r) {
            Ok(()) => accepted_headers.push(header.to_vec()),
            Err(e) => assert_eq!(e, "Job not found", "only a block race may make a share stale"),
        }
    }
    assert!(!accepted_headers.is_empty());
    let logged = h.pool.log().headers().await.unwrap();
    for a in &accepted_headers {
        assert!(
            logged.contains(a),
            "an accepted share is missing from the share log"
        );
    }
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitaxe_pipelined_handshake_and_version_rolling() {
    let h = harness(|_| {}).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    // Bitaxe sends all four back to back; configure's reply must be the first line written.
    let burst = format!(
        "{}\n{}\n{}\n{}\n",
        r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"ffffffff"}]}"#,
        r#"{"id":2,"method":"mining.subscribe","params":["bitaxe/BM1366/v2.5.0"]}"#,
        json!({"id": 3, "method": "mining.authorize", "params": [format!("{ADDR}.axe"), "x"]}),
        r#"{"id":4,"method":"mining.suggest_difficulty","params":[0.001]}"#
    );
    m.send(&burst).await;
    let first = m.next().await.unwrap();
    assert_eq!(
        first["id"], 1,
        "first line after configure must be its reply: {first}"
    );
    assert_eq!(first["result"]["version-rolling"], true);
    assert_eq!(first["result"]["version-rolling.mask"], "1fffe000");
    m.mask = 0x1fffe000;
    let sub = m.next().await.unwrap();
    assert_eq!(sub["id"], 2);
    m.en1 = stratum::parse_hex(sub["result"][1].as_str().unwrap(), 8).unwrap();
    assert_eq!(sub["result"][2], 4);
    // work may arrive between the remaining replies (after authorize); replies stay in order
    assert_eq!(m.reply().await["id"], 3);
    assert_eq!(m.reply().await["id"], 4);
    m.wait_job().await;
    let mut ok = 0;
    for i in 0..6 {
        m.wait_job().await;
        let (p, _) = m.find_share(&format!("{ADDR}.axe"), true);
        assert_ne!(p[5], "00000000", "version bits are rolled");
        if verdict(&m.submit(json!(10 + i), &p).await).is_ok() {
            ok += 1;
        }
    }
    assert!(ok >= 3, "rolled shares accepted: {ok}");
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reject_code() {
    // Below the dev chain's network difficulty (~4.66e-10), so about half the shares are not blocks.
    let h = harness(|c| c.initial_difficulty = Difficulty::MIN).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.w");
    let sub = json!(["w", "1", "00000000", "00000000", "00000000"]);
    // 25 before subscribe
    let r = m.submit(json!(1), &sub).await;
    assert_eq!(r["error"][0], 25);
    m.send(r#"{"id":2,"method":"mining.subscribe","params":[]}"#)
        .await;
    let r = m.reply().await;
    m.en1 = stratum::parse_hex(r["result"][1].as_str().unwrap(), 8).unwrap();
    // 24 before authorize
    assert_eq!(m.submit(json!(3), &sub).await["error"][0], 24);
    // invalid address -> 24 with a reason
    m.send(
        r#"{"id":4,"method":"mining.authorize","params":["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq","x"]}"#,
    )
    .await;
    let r = m.reply().await;
    assert_eq!(r["error"][0], 24);
    assert!(
        r["error"][1]
            .as_str()
            .unwrap()
            .contains("not an address for regtest"),
        "{r}"
    );
    m.send(&json!({"id": 5, "method": "mining.authorize", "params": [user, "x"]}).to_string())
        .await;
    assert_eq!(m.reply().await["result"], true);
    m.wait_job().await;
    // unknown method: 20, connection stays
    m.send(r#"{"id":6,"method":"mining.get_transactions","params":[]}"#)
        .await;
    assert_eq!(m.reply().await["error"][0], 20);
    // 24: a worker that was not authorized
    let (good, _) = m.find_plain_share(&user);
    let mut other = good.clone();
    other[0] = json!(format!("{ADDR}.other"));
    assert_eq!(m.submit(json!(7), &other).await["error"][0], 24);
    // 21: unknown job
    let mut stale = good.clone();
    stale[1] = json!("999999");
    assert_eq!(m.submit(json!(8), &stale).await["error"][0], 21);
    // 20: EN2 of the wrong length
    let mut short = good.clone();
    short[2] = json!("0000");
    assert_eq!(m.submit(json!(9), &short).await["error"][0], 20);
    // 20: version bits outside the mask (no rolling negotiated)
    let mut bits = good.clone();
    bits.as_array_mut().unwrap().push(json!("00002000"));
    assert_eq!(m.submit(json!(10), &bits).await["error"][0], 20);
    // 20: ntime far in the future
    let mut future = good.clone();
    future[3] = json!("ffffff00");
    assert_eq!(m.submit(json!(11), &future).await["error"][0], 20);
    // accepted, then 22: the same share again (upper-case hex does not slip through)
    let r = m.submit(json!(12), &good).await;
    assert_eq!(verdict(&r), Ok(()));
    let mut upper = good.clone();
    upper[4] = json!(good[4].as_str().unwrap().to_uppercase());
    assert_eq!(m.submit(json!(13), &upper).await["error"][0], 22);
    // A suggestion far above the network difficulty is answered true but capped there: no share
    // difficulty above the network's is ever assigned.
    m.send(r#"{"id":14,"method":"mining.suggest_difficulty","params":[1000000]}"#)
        .await;
    assert_eq!(m.reply().await["result"], true);
    assert!(
        m.diff <= 1e-9,
        "share difficulty {} above the dev chain's",
        m.diff
    );
    // 23: a hash that misses the share target
    let low = m.find_low_share(&user);
    assert_eq!(m.submit(json!(15), &low).await["error"][0], 23);
    // malformed params: 20, not a crash
    m.send(r#"{"id":16,"method":"mining.submit","params":["w","1","00","-1","x"]}"#)
        .await;
    assert_eq!(m.reply().await["error"][0], 20);
    // string ids are echoed verbatim
    m.send(r#"{"id":"abc","method":"mining.extranonce.subscribe","params":[]}"#)
        .await;
    assert_eq!(m.reply().await["id"], "abc");
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn found_blocks_extend_the_dev_chain() {
    let h = harness(|_| {}).await;
    let start = h.node.lock().height();
    let mut m = Miner::connect(h.pool.local_addr()).await;
    m.handshake(&format!("{ADDR}.b")).await;
    // At the dev chain's floor about every second hash is a block; keep submitting until one lands.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.node.lock().height() == start {
        assert!(
            std::time::Instant::now() < deadline,
            "no block accepted by the dev chain"
        );
        m.wait_job().await;
        let (p, _) = m.find_share(&format!("{ADDR}.b"), false);
        let _ = m.submit(json!(5), &p).await;
        // let the clean job arrive
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let blocks = h.pool.log().blocks().await.unwrap();
    assert!(blocks.iter().any(|(_, fate)| fate == "accepted"), "{blocks:?}");
    // the block's coinbase pays the finder (SOLO)
    let paid = h.node.lock().tip().block.txdata[0].output[0]
        .script_pubkey
        .clone();
    let addr: bitcoin::Address = ADDR.parse::<bitcoin::Address<_>>().unwrap().assume_checked();
    assert_eq!(paid, addr.script_pubkey());
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_offenders_only() {
    let h = harness(|c| {
        c.handshake_deadline = Duration::from_millis(300);
        c.connections_per_ip_max = 3;
    })
    .await;
    // a well-behaved miner keeps working throughout
    let mut good = Miner::connect(h.pool.local_addr()).await;
    good.handshake(&format!("{ADDR}.good")).await;
    // line over 16 KiB: closed
    let mut big = Miner::connect(h.pool.local_addr()).await;
    big.send(&"x".repeat(stratum::framing::MINER_LINE_BYTES_MAX + 1))
        .await;
    assert!(
        big.next().await.is_none(),
        "overlong line must close the connection"
    );
    // silent connection: closed at the handshake deadline
    let mut silent = Miner::connect(h.pool.local_addr()).await;
    assert!(silent.next().await.is_none());
    // per-IP cap: good + 2 more allowed, the 4th is closed at once
    let _a = Miner::connect(h.pool.local_addr()).await;
    let _b = Miner::connect(h.pool.local_addr()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut over = Miner::connect(h.pool.local_addr()).await;
    assert!(
        over.next().await.is_none(),
        "fourth connection from one IP must be refused"
    );
    // the good miner never noticed
    good.wait_job().await;
    let (p, _) = good.find_share(&format!("{ADDR}.good"), false);
    let r = good.submit(json!(99), &p).await;
    assert!(verdict(&r).is_ok() || r["error"][0] == 21, "{r}");
    // graceful shutdown tells connected miners to reconnect
    let stopping = tokio::spawn(async move { h.pool.shutdown().await });
    let mut saw_reconnect = false;
    while let Some(v) = good.next().await {
        if v["method"] == "client.reconnect" {
            saw_reconnect = true;
        }
    }
    assert!(
        saw_reconnect,
        "no client.reconnect before the shutdown closed the connection"
    );
    stopping.await.unwrap();
}

/// Reads until a reply or EOF: `Some(reply)` or `None` when the pool closed the connection.
async fn reply_or_close(m: &mut Miner) -> Option<serde_json::Value> {
    m.next_reply_or_eof().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_table_while_a_good_miner_keeps_mining() {
    let h = harness(|c| c.initial_difficulty = Difficulty::MIN).await;
    let addr = h.pool.local_addr();
    // The well-behaved miner, on its own connection, for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut m = Miner::connect(addr).await;
            let user = format!("{ADDR}.good");
            m.handshake(&user).await;
            let (mut ok, mut id) = (0u32, 100u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (p, _) = m.find_share(&user, false);
                id += 1;
                let r = m.submit(json!(id), &p).await;
                match verdict(&r) {
                    Ok(()) => ok += 1,
                    Err(e) => assert_eq!(e, "Job not found", "the good miner got an unexpected reject"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ok
        })
    };
    let s = |p: serde_json::Value| json!({"id": 7, "method": "mining.submit", "params": p}).to_string();
    let w = format!("{ADDR}.bad");
    let nested = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let bad: Vec<(String, &str)> = vec![
        ("{not json".into(), "error"),
        ("[]".into(), "error"),
        ("\"just a string\"".into(), "error"),
        (r#"{"id":1}"#.into(), "error"),
        (r#"{"id":1,"method":5,"params":[]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.submit","params":{}}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.subscribe","params":"x"}"#.into(), "error"),
        (s(json!([w, "1", "00000000", "00000000"])), "error"),
        (s(json!([w, "1", "00000000", "00000000", "00000000", "00000000", "x"])), "error"),
        (s(json!([5, "1", "00000000", "00000000", "00000000"])), "error"),
        (s(json!([w, "1", "00000000", 1700000000, "00000000"])), "error"),
        (s(json!([w, "1", "00000000", -1, "00000000"])), "error"),
        (s(json!([w, "1", "00000000", "00000000", 1.5])), "error"),
        (s(json!([w, "1", "0".repeat(100), "00000000", "00000000"])), "error"),
        (s(json!([w, "1", "000", "00000000", "00000000"])), "error"),
        (s(json!([w, "1", "zzzzzzzz", "00000000", "00000000"])), "error"),
        (s(json!([w, "1", "00000000", "000000000", "00000000"])), "error"),
        (s(json!([w, "1", "00000000", "00000000", "00000000", "xyz"])), "error"),
        (s(json!([w, "abc", "00000000", "00000000", "00000000"])), "error"),
        (s(json!([w, "x".repeat(10_000), "00000000", "00000000", "00000000"])), "error"),
        (s(json!([w, "-1", "00000000", "00000000", "00000000"])), "error"),
        (r#"{"id":1,"method":"mining.authorize","params":[]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.authorize","params":[42,"x"]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.authorize","params":["notanaddress","x"]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.authorize","params":["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq","x"]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.suggest_difficulty","params":[-5]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.suggest_difficulty","params":["abc"]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.suggest_difficulty","params":[1e400]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.configure","params":"x"}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"zz"}]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.suggest_target","params":["00"]}"#.into(), "error"),
        (r#"{"id":1,"method":"mining.get_transactions","params":[]}"#.into(), "error"),
        (nested, "error"),
        ("\u{0}\u{1}\u{2}binary\u{7f}".into(), "error"),
        (format!(r#"{{"id":"{}","method":"nope","params":[]}}"#, "i".repeat(8_000)), "error"),
        ("x".repeat(stratum::framing::MINER_LINE_BYTES_MAX + 100), "close"),
    ];
    assert!(bad.len() >= 30);
    for (i, (line, want)) in bad.iter().enumerate() {
        let mut m = Miner::connect(addr).await;
        // most cases come after a normal handshake, so the error is about the message itself
        if i % 3 != 0 {
            m.handshake(&format!("{ADDR}.bad")).await;
        }
        m.send(line).await;
        let got = reply_or_close(&mut m).await;
        match (*want, got) {
            ("close", None) => {}
            ("error", Some(r)) => assert!(verdict(&r).is_err(), "case {i}: {line:.80} -> {r}"),
            (w, g) => panic!("case {i}: {line:.80}: wanted {w}, got {g:?}"),
        }
        if *want == "error" {
            // and the connection still works
            m.send(r#"{"id":"ping","method":"mining.extranonce.subscribe","params":[]}"#)
                .await;
            assert_eq!(
                m.reply().await["id"],
                "ping",
                "case {i}: connection unusable after the error"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ok = good.await.unwrap();
    assert!(ok >= 5, "the good miner had only {ok} shares accepted");
    h.pool.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_and_metrics() {
    let h = harness(|c| c.initial_difficulty = Difficulty::MIN).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    h.pool.serve_http(listener);
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.rig1");
    m.handshake(&user).await;
    let mut ok = 0;
    for i in 0..10 {
        let (p, _) = m.find_share(&user, false);
        if verdict(&m.submit(json!(i), &p).await).is_ok() {
            ok += 1;
        }
    }
    assert!(ok > 0);
    let (st, body) = http_get(http, &format!("/api/v1/miners/{ADDR}")).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["workers"][0]["name"], "rig1");
    assert_eq!(v["workers"][0]["accepted"], ok);
    assert!(v["workers"][0]["last_share_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let (st, body) = http_get(http, &format!("/api/client/{ADDR}")).await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["workersCount"], 1);
    assert_eq!(v["workers"][0]["sessionId"].as_str().unwrap().len(), 8);
    assert!(v["workers"][0]["lastSeen"].as_str().unwrap().ends_with('Z'));
    assert!(v["bestDifficulty"].is_string());
    let (st, body) = http_get(http, "/api/v1/pool").await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connections"], 1);
    assert!(v["shares_accepted"].as_u64().unwrap() >= ok);
    let (st, body) = http_get(http, "/metrics").await;
    assert_eq!(st, 200);
    assert!(
        body.contains(&format!(
            "cloudmine_pool_shares_total{{result=\"accepted\"}} {}",
            v["shares_accepted"]
        )),
        "{body}"
    );
    assert!(body.contains("cloudmine_pool_submit_latency_seconds_bucket{le=\"+Inf\"}"));
    assert!(body.contains("cloudmine_pool_connections 1"));
    assert_eq!(http_get(http, "/api/v1/miners/bcrt1qnobody").await.0, 404);
    assert_eq!(http_get(http, "/api/v1/miners/bad%20addr").await.0, 400);
    assert_eq!(http_get(http, "/nope").await.0, 404);
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_submits_are_answered_in_order_and_all_durable() {
    // Share difficulty 2^-32, half the dev chain's floor: half of all hashes are shares that are not
    // blocks, so the job stays current through the burst.
    let h = harness(|c| c.initial_difficulty = Difficulty::MIN).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.pipe");
    m.handshake(&user).await;
    // Eight distinct plain shares (none a block, so the job stays current), then one garbage line and
    // one duplicate of the first, all in one write.
    let mut burst = String::new();
    let mut headers = Vec::new();
    let mut first = None;
    for i in 0..8u64 {
        let (p, header) = m.find_plain_share(&user);
        first.get_or_insert_with(|| p.clone());
        headers.push(header.to_vec());
        burst.push_str(&json!({"id": 100 + i, "method": "mining.submit", "params": p}).to_string());
        burst.push('\n');
    }
    burst.push_str("{\"id\":200,\"method\":\"mining.submit\",\"params\":[1]}\n");
    burst.push_str(&json!({"id": 201, "method": "mining.submit", "params": first.unwrap()}).to_string());
    burst.push('\n');
    m.send(&burst).await;
    for i in 0..8u64 {
        let r = m.reply().await;
        assert_eq!(r["id"], 100 + i, "replies in request order");
        assert_eq!(verdict(&r), Ok(()));
    }
    let r = m.reply().await;
    assert_eq!(r["id"], 200);
    assert!(verdict(&r).is_err());
    let r = m.reply().await;
    assert_eq!(r["id"], 201);
    assert_eq!(verdict(&r), Err("Duplicate share".to_string()));
    // Every `true` was durable when it was written.
    let logged = h.pool.log().headers().await.unwrap();
    for hd in &headers {
        assert!(
            logged.contains(hd),
            "an acknowledged pipelined share is missing from the log"
        );
    }
    h.pool.shutdown().await;
}

/// Pool mode with a ledger fed by the pool and two miners, alice (`.a`) and bob (`.b`), on
/// p2wsh addresses; `sharing` and `fee_ppm` as given, shares at difficulty 2^-32 (half the dev
/// chain's floor: about half are blocks).
struct TwoMiners {
    h: Harness,
    l: std::sync::Arc<ledger::Ledger>,
    alice: String,
    bob: String,
    m1: Miner,
    m2: Miner,
}

async fn two_miners(sharing: pool::config::Sharing, fee_ppm: u32) -> TwoMiners {
    two_miners_with(sharing, fee_ppm, |_| {}).await
}

async fn two_miners_with(
    sharing: pool::config::Sharing,
    fee_ppm: u32,
    tweak: impl FnOnce(&mut PoolConfig),
) -> TwoMiners {
    let script = |b: u8| bitcoin::ScriptBuf::from_bytes(vec![0x51, 0x01, b]);
    let addr = |b: u8| bitcoin::Address::p2wsh(&script(b), Network::Regtest).to_string();
    let (alice, bob) = (addr(1), addr(2));
    let pool_script = bitcoin::Address::p2wsh(&script(9), Network::Regtest).script_pubkey();
    let h = harness(|c| {
        c.payout = PayoutScheme::Pool(pool_script);
        c.sharing = sharing;
        c.fee_ppm = fee_ppm;
        c.initial_difficulty = Difficulty::MIN;
        tweak(c);
    })
    .await;
    let l = h.ledger().await;
    h.pool.feed_ledger(l.clone());
    let mut m1 = Miner::connect(h.pool.local_addr()).await;
    let mut m2 = Miner::connect(h.pool.local_addr()).await;
    m1.handshake(&format!("{alice}.a")).await;
    m2.handshake(&format!("{bob}.b")).await;
    TwoMiners {
        h,
        l,
        alice,
        bob,
        m1,
        m2,
    }
}

impl TwoMiners {
    /// `rounds` shares, two of every three from alice; returns how many were accepted (a block race
    /// may make one stale, nothing else may reject it).
    async fn mine(&mut self, rounds: u32) -> u32 {
        let mut accepted = 0;
        for round in 0..rounds {
            let (m, user) = if round % 3 == 0 {
                (&mut self.m2, format!("{}.b", self.bob))
            } else {
                (&mut self.m1, format!("{}.a", self.alice))
            };
            // Catch up on jobs the other miner's blocks caused.
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), m.next()).await {}
            let (p, _) = m.find_share(&user, false);
            match verdict(&m.submit(json!(100 + round), &p).await) {
                Ok(()) => accepted += 1,
                Err(e) => assert_eq!(e, "Job not found", "only a block race may make a share stale"),
            }
        }
        accepted
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_mode_credits_every_block_pplns_exactly() {
    use ledger::{Account, PlatformAccount};
    // A block's window (2 × its work = 4 hashes) spans its last few shares, often from both miners.
    let mut t = two_miners(pool::config::Sharing::Pplns, 10_000).await; // 1 %
    t.mine(40).await;
    let TwoMiners { h, l, alice, bob, .. } = t;
    let blocks: Vec<(String, String)> = h.pool.log().blocks().await.unwrap();
    let accepted: Vec<&String> = blocks
        .iter()
        .filter(|(_, f)| f == "accepted")
        .map(|(hsh, _)| hsh)
        .collect();
    assert!(accepted.len() >= 3, "too few blocks to show anything: {blocks:?}");
    // Wait for the accounting task to credit them all.
    let mined = Account::Platform(PlatformAccount::Mined);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let credited = l.history(&mined, 1000).await.unwrap().len();
        if credited >= accepted.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{credited} of {} blocks credited; work log at {:?} of {} shares, backlog {}; blocks {blocks:?}",
            accepted.len(),
            l.work_high_water("pool").await,
            h.pool.log().share_count().await.unwrap(),
            h.pool
                .stats()
                .ledger_backlog
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = l.history(&mined, 1000).await.unwrap();
    let mut fees_expected = 0i64;
    let mut total = 0i64;
    for hline in &history {
        assert!(hline.key.starts_with("block:"));
        let r = -hline.msat;
        assert_eq!(
            r, 5_000_000_000_000,
            "a dev-chain block pays 50 BTC = 5e12 msat (no fees)"
        );
        fees_expected += r / 100;
        total += r;
    }
    let fees = l
        .balance(&Account::Platform(PlatformAccount::Fees))
        .await
        .unwrap();
    let a = l.balance(&Account::immature(&alice)).await.unwrap();
    let b = l.balance(&Account::immature(&bob)).await.unwrap();
    assert_eq!(fees, fees_expected, "fee = floor(R × 1 %) per block");
    assert_eq!(a + b + fees, total, "every msat of every block is accounted for");
    assert!(a > 0 && b > 0, "both miners earned: alice {a}, bob {b}");
    assert!(l.verify().await.unwrap().problems.is_empty());
    // Each block's split recomputed independently from the share log: the shares up to the block's
    // own, newest first, until 2 × the block's work; fee floor(R/100); the rest by work.
    let db = h.pool.log().db().clone();
    let rows =
        sqlx::query_as::<_, (String, Vec<u8>)>("SELECT hash, block FROM blocks WHERE fate = 'accepted'")
            .fetch_all(&db)
            .await
            .unwrap();
    for (hash, raw) in &rows {
        let block: bitcoin::Block = bitcoin::consensus::deserialize(raw).unwrap();
        let (share_id,): (i64,) = sqlx::query_as("SELECT id FROM shares WHERE is_block = 1 AND header = ?")
            .bind(&raw[..80])
            .fetch_one(&db)
            .await
            .unwrap();
        let target = units::Target::from_compact(block.header.bits.to_consensus()).unwrap();
        let window = ledger::schemes::block_work(target).unwrap().low_u128() * 2;
        let by_owner = window_from_share_log(&db, share_id, window).await;
        let r = 5_000_000_000_000u64;
        let part = r - r / 100;
        let weights: Vec<u128> = by_owner.values().copied().collect();
        let split = ledger::schemes::split_by_weight(&weights, weights.iter().sum(), part).unwrap();
        let mut want: Vec<(String, i64)> = split
            .iter()
            .map(|(i, a)| {
                (
                    format!("user/{}/immature", by_owner.keys().nth(*i as usize).unwrap()),
                    *a as i64,
                )
            })
            .collect();
        want.push(("platform/fees".into(), (r / 100) as i64));
        want.push(("platform/mined".into(), -(r as i64)));
        want.sort();
        assert_eq!(
            l.postings_of(&format!("block:{hash}")).await.unwrap(),
            want,
            "block {hash}"
        );
    }
    // Re-crediting is a no-op (the key is block:<hash>): run the accounting step again by hand.
    let row = sqlx::query_as::<_, (String, i64, Vec<u8>)>(
        "SELECT hash, height, block FROM blocks WHERE fate = 'accepted' ORDER BY id LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let again = pool::accounting::credit_block(
        &db,
        &l,
        &pool::accounting::Rule::new(pool::config::Sharing::Pplns, 10_000),
        pool::accounting::LoggedBlock {
            hash: &row.0,
            height: row.1,
            raw: &row.2,
            logged_ms: 0,
        },
        i64::MAX,
    )
    .await
    .unwrap();
    assert!(matches!(again, pool::accounting::Credit::Posted(_)));
    assert_eq!(l.balance(&Account::immature(&alice)).await.unwrap(), a);
    assert_eq!(l.history(&mined, 1000).await.unwrap().len(), history.len());
    // Orphan the newest credited block: its credit is reversed posting by posting.
    // (the chain tip, not the last row of the block log: two connections may log in either order)
    let last = h.node.lock().tip().hash.to_string();
    assert!(
        accepted.iter().any(|x| **x == last),
        "the tip is one of the pool's blocks"
    );
    let credit = l.postings_of(&format!("block:{last}")).await.unwrap();
    assert!(!credit.is_empty());
    let node = h.node.clone();
    let hash: bitcoin::BlockHash = last.parse().unwrap();
    tokio::task::spawn_blocking(move || node.lock().invalidate_block(&hash, chain::dev::now()).unwrap())
        .await
        .unwrap();
    let wait_key = |key: String| {
        let l = l.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while l.find_key(&key).await.unwrap().is_none() {
                assert!(std::time::Instant::now() < deadline, "{key} never posted");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_key(format!("orphan:{last}")).await;
    let reversal = l.postings_of(&format!("orphan:{last}")).await.unwrap();
    assert_eq!(
        reversal,
        credit.iter().map(|(n, m)| (n.clone(), -m)).collect::<Vec<_>>()
    );
    let a2 = l.balance(&Account::immature(&alice)).await.unwrap();
    let b2 = l.balance(&Account::immature(&bob)).await.unwrap();
    let orphaned_users: i64 = credit
        .iter()
        .filter(|(n, _)| n.starts_with("user/"))
        .map(|(_, m)| m)
        .sum();
    assert_eq!(a + b - (a2 + b2), orphaned_users);
    // Bury the rest 100 deep (blocks 30 s apart, so the dev chain's difficulty stays at its floor):
    // every remaining credit moves from immature to available.
    bury_100(&h.node).await;
    for hsh in accepted.iter().filter(|x| ***x != last) {
        wait_key(format!("mature:{hsh}")).await;
    }
    assert_eq!(l.balance(&Account::immature(&alice)).await.unwrap(), 0);
    assert_eq!(l.balance(&Account::immature(&bob)).await.unwrap(), 0);
    assert_eq!(l.balance(&Account::available(&alice)).await.unwrap(), a2);
    assert_eq!(l.balance(&Account::available(&bob)).await.unwrap(), b2);
    assert!(l.verify().await.unwrap().problems.is_empty());
    // The same through the HTTP API.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    h.pool.serve_http(listener);
    let (code, body) = http_get(http, &format!("/api/v1/ledger/{alice}")).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["balances_msat"]["available"], a2);
    assert_eq!(v["balances_msat"]["immature"], 0);
    let (code, body) = http_get(http, &format!("/api/v1/ledger/{alice}/blocks")).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let blocks = v["blocks"].as_array().unwrap();
    let matured: i64 = blocks
        .iter()
        .filter(|b| b["state"] == "mature")
        .map(|b| b["msat"].as_i64().unwrap())
        .sum();
    assert_eq!(matured, a2, "{body}");
    assert!(blocks
        .iter()
        .all(|b| b["state"] == "mature" || b["state"] == "orphaned"));
    eprintln!(
        "pool mode: {} blocks credited PPLNS (alice {a}, bob {b}, fees {fees} msat); 1 orphaned and reversed; the rest matured after 100 confirmations",
        history.len()
    );
    h.pool.shutdown().await;
}

/// A window recomputed from the share log alone: shares up to id `upto`, newest first, until
/// `window` of work (the edge share cut), summed by owner.
async fn window_from_share_log(
    db: &sqlx::SqlitePool,
    upto: i64,
    window: u128,
) -> std::collections::BTreeMap<String, u128> {
    let shares: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT address, diff_int, diff_frac FROM shares WHERE id <= ? ORDER BY id DESC")
            .bind(upto)
            .fetch_all(db)
            .await
            .unwrap();
    let mut left = window;
    let mut by_owner = std::collections::BTreeMap::<String, u128>::new();
    for (owner, int, frac) in shares {
        let w = ((int as u128) << 32 | frac as u128).min(left);
        left -= w;
        *by_owner.entry(owner).or_default() += w;
        if left == 0 {
            break;
        }
    }
    by_owner
}

/// 100 blocks by someone else (a P2WSH script of no miner's), 30 s apart: every credit matures.
async fn bury_100(node: &DevNode) {
    let script = bitcoin::ScriptBuf::from_bytes(vec![0x51, 0x01, 7]);
    let spk = bitcoin::Address::p2wsh(&script, Network::Regtest).script_pubkey();
    test_support::mine_dev_blocks(node, &spk, 100).await;
}

/// Waits until the ledger has a `block:` credit for every accepted block of the share log.
async fn wait_all_credited(h: &Harness, l: &ledger::Ledger) -> Vec<(String, String)> {
    let mined = ledger::Account::Platform(ledger::PlatformAccount::Mined);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let blocks = h.pool.log().blocks().await.unwrap();
        let accepted = blocks.iter().filter(|(_, f)| f == "accepted").count();
        let credited = l.history(&mined, 10_000).await.unwrap().len();
        if credited >= accepted {
            return blocks;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{credited} of {accepted} blocks credited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_payees_are_paid_in_the_coinbase_and_booked_exactly() {
    use ledger::{Account, PlatformAccount};
    let fee_ppm = 20_000; // 2 %
    let mut t = two_miners_with(pool::config::Sharing::Pplns, fee_ppm, |c| {
        c.coinbase_payees = 1;
        c.coinbase_payee_min_sat = 1_000;
    })
    .await;
    let db = t.h.pool.log().db().clone();
    // Mine until a block of a job that carried a payee plan is in the chain (plans follow the work
    // log, at most every PLAN_EVERY; a job issued before the first plan pays the pool alone).
    let with_plan = "SELECT b.hash, b.block, j.payout_plan FROM blocks b JOIN shares s ON s.is_block = 1 AND s.header = substr(b.block, 1, 80) \
                     JOIN jobs j ON j.job_id = s.job_id WHERE b.fate = 'accepted' AND j.payout_plan IS NOT NULL";
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        t.mine(15).await;
        let n: Vec<(String, Vec<u8>, String)> = sqlx::query_as(with_plan).fetch_all(&db).await.unwrap();
        if n.len() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no block of a job with payees"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let TwoMiners { h, l, alice, bob, .. } = t;
    wait_all_credited(&h, &l).await;
    let paid_blocks: Vec<(String, Vec<u8>, String)> = sqlx::query_as(with_plan).fetch_all(&db).await.unwrap();
    let pool_script = bitcoin::Address::p2wsh(
        &bitcoin::ScriptBuf::from_bytes(vec![0x51, 0x01, 9]),
        Network::Regtest,
    )
    .script_pubkey();
    let script_of = |a: &str| {
        a.parse::<bitcoin::Address<_>>()
            .unwrap()
            .assume_checked()
            .script_pubkey()
    };
    for (hash, raw, plan) in &paid_blocks {
        // Recomputed from the share log alone: the window the plan names (shares up to `upto`,
        // newest first, until `window` of work), fee floor(R·2 %), the rest by work; the one largest
        // earner paid in whole sat by an output, everything else an immature credit.
        let v: serde_json::Value = serde_json::from_str(plan).unwrap();
        let upto = v["upto"].as_i64().unwrap();
        let window: u128 = v["window"].as_str().unwrap().parse().unwrap();
        assert_eq!(v["fee_ppm"], fee_ppm);
        let by_owner = window_from_share_log(&db, upto, window).await;
        let block: bitcoin::Block = bitcoin::consensus::deserialize(raw).unwrap();
        let cb = &block.txdata[0];
        let r_sat: u64 = cb.output.iter().map(|o| o.value.to_sat()).sum();
        let r = r_sat * 1000;
        let fee = r * u64::from(fee_ppm) / 1_000_000;
        let owners: Vec<&String> = by_owner.keys().collect();
        let weights: Vec<u128> = by_owner.values().copied().collect();
        let split = ledger::schemes::split_by_weight(&weights, weights.iter().sum(), r - fee).unwrap();
        let (outs, credits) = ledger::schemes::coinbase_payees(&split, 1, 1_000);
        assert_eq!(outs.len(), 1, "block {hash}: one payee");
        let (payee, sat) = (owners[outs[0].0 as usize], outs[0].1);
        // On chain: the coinbase pays the payee its amount, the pool the rest, and a commitment.
        let to_payee: Vec<u64> = cb
            .output
            .iter()
            .filter(|o| o.script_pubkey == script_of(payee))
            .map(|o| o.value.to_sat())
            .collect();
        assert_eq!(to_payee, vec![sat], "block {hash}: the payee's output");
        let to_pool: u64 = cb
            .output
            .iter()
            .filter(|o| o.script_pubkey == pool_script)
            .map(|o| o.value.to_sat())
            .sum();
        assert_eq!(
            to_pool,
            r_sat - sat,
            "block {hash}: the pool's output holds the rest"
        );
        // In the ledger: exactly that.
        let mut want: Vec<(String, i64)> = credits
            .iter()
            .map(|(i, m)| (format!("user/{}/immature", owners[*i as usize]), *m as i64))
            .collect();
        want.push((format!("user/{payee}/coinbase"), (sat * 1000) as i64));
        want.push(("platform/fees".into(), fee as i64));
        want.push(("platform/mined".into(), -(r as i64)));
        want.sort();
        assert_eq!(
            l.postings_of(&format!("block:{hash}")).await.unwrap(),
            want,
            "block {hash}"
        );
    }
    assert!(l.verify().await.unwrap().problems.is_empty());
    // Bury everything 100 deep: immature credits become available, coinbase payments paid out.
    bury_100(&h.node).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (hash, _, _) in &paid_blocks {
        while l.find_key(&format!("mature:{hash}")).await.unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "block {hash} never matured");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Wait for every other block too, then check the books: mined = fees + balances + paid out.
    let all = wait_all_credited(&h, &l).await;
    for (hash, fate) in &all {
        if fate == "accepted" {
            while l.find_key(&format!("mature:{hash}")).await.unwrap().is_none()
                && l.find_key(&format!("orphan:{hash}")).await.unwrap().is_none()
            {
                assert!(std::time::Instant::now() < deadline, "block {hash} never settled");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let bal = |a: Account| {
        let l = l.clone();
        async move { l.balance(&a).await.unwrap() }
    };
    let mined = -bal(Account::Platform(PlatformAccount::Mined)).await;
    let fees = bal(Account::Platform(PlatformAccount::Fees)).await;
    let paid_out = bal(Account::Platform(PlatformAccount::PaidOut)).await;
    let mut users = 0;
    for who in [&alice, &bob] {
        assert_eq!(
            bal(Account::coinbase(who)).await,
            0,
            "matured: nothing left in {who}'s coinbase account"
        );
        assert_eq!(bal(Account::immature(who)).await, 0);
        users += bal(Account::available(who)).await;
    }
    assert!(paid_out > 0, "coinbase payments count as paid out once mature");
    assert_eq!(
        mined,
        fees + users + paid_out,
        "every msat mined is a fee, a balance or paid out"
    );
    assert!(l.verify().await.unwrap().problems.is_empty());
    // The API lists the coinbase payments with their transaction.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    h.pool.serve_http(listener);
    let mut listed = 0;
    for who in [&alice, &bob] {
        let (code, body) = http_get(http, &format!("/api/v1/ledger/{who}/payouts")).await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for c in v["coinbase"].as_array().unwrap() {
            let (hash, raw, _) = paid_blocks.iter().find(|(hsh, _, _)| c["block"] == *hsh).unwrap();
            let block: bitcoin::Block = bitcoin::consensus::deserialize(raw).unwrap();
            assert_eq!(c["txid"], block.txdata[0].compute_txid().to_string(), "{hash}");
            assert_eq!(c["state"], "mature");
            listed += 1;
        }
    }
    assert_eq!(listed, paid_blocks.len(), "every coinbase payment listed once");
    eprintln!(
        "coinbase payees: {} blocks paid their largest earner in the coinbase; {} msat paid out on maturity",
        paid_blocks.len(),
        paid_out
    );
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_accounting_backlog_bound_shares_are_refused_not_dropped() {
    let h = harness(|c| {
        c.initial_difficulty = Difficulty::MIN;
        c.ledger_backlog_max = 5;
    })
    .await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.backlog");
    m.handshake(&user).await;
    let (p, _) = m.find_plain_share(&user);
    assert_eq!(verdict(&m.submit(json!(10), &p).await), Ok(()));
    // The ledger has fallen 5 shares behind (as the accounting task reports when it is down).
    h.pool
        .stats()
        .ledger_backlog
        .store(5, std::sync::atomic::Ordering::Relaxed);
    let before = h.pool.log().share_count().await.unwrap();
    let (p, _) = m.find_plain_share(&user);
    let r = m.submit(json!(11), &p).await;
    assert_eq!(r["error"][0], 20);
    assert!(
        verdict(&r).unwrap_err().contains("Accounting backlog full"),
        "{r}"
    );
    assert_eq!(
        h.pool.log().share_count().await.unwrap(),
        before,
        "a refused share is not logged"
    );
    // Caught up again: shares are accepted.
    h.pool
        .stats()
        .ledger_backlog
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let (p, _) = m.find_plain_share(&user);
    assert_eq!(verdict(&m.submit(json!(12), &p).await), Ok(()));
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tides_uses_a_window_of_eight_times_the_block_work() {
    use ledger::{Account, PlatformAccount};
    let spk = bitcoin::Address::p2wsh(
        &bitcoin::ScriptBuf::from_bytes(vec![0x51, 0x01, 9]),
        Network::Regtest,
    )
    .script_pubkey();
    let h = harness(|c| {
        c.payout = PayoutScheme::Pool(spk);
        c.sharing = pool::config::Sharing::Tides;
        c.initial_difficulty = Difficulty::MIN;
    })
    .await;
    let l = h.ledger().await;
    h.pool.feed_ledger(l.clone());
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.t");
    m.handshake(&user).await;
    let mined = Account::Platform(PlatformAccount::Mined);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut id = 10;
    while l.history(&mined, 10).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no block credited");
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), m.next()).await {}
        let (p, _) = m.find_share(&user, false);
        id += 1;
        let _ = m.submit(json!(id), &p).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stop the pool first so no further block is credited while the books are read.
    let db = h.pool.log().db().clone();
    h.pool.shutdown().await;
    let credits = l.history(&mined, 1000).await.unwrap();
    let mut to_miner = 0i64;
    for c in &credits {
        // At the dev chain's floor a block's work is 2 hashes: TIDES pays the last 8 · 2 = 16...
        assert!(c.memo.contains("TIDES over 16 hashes"), "{}", c.memo);
        // ...of the shares durable when the block's job was issued, not up to the block's share.
        let hash = c.key.strip_prefix("block:").unwrap();
        let (raw,): (Vec<u8>,) = sqlx::query_as("SELECT block FROM blocks WHERE hash = ?")
            .bind(hash)
            .fetch_one(&db)
            .await
            .unwrap();
        let (share, job, before): (i64, i64, i64) = sqlx::query_as(
            "SELECT s.id, j.job_id, j.shares_before FROM shares s JOIN jobs j ON j.job_id = s.job_id \
             WHERE s.is_block = 1 AND s.header = ?",
        )
        .bind(&raw[..80])
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(before < share, "the window ends before the block's own share");
        assert!(
            c.memo
                .contains(&format!("fixed when job {job} was issued (up to share {before})")),
            "{}",
            c.memo
        );
        let postings = l.postings_of(&c.key).await.unwrap();
        let immature = format!("user/{ADDR}/immature");
        let got = postings
            .iter()
            .find(|(n, _)| *n == immature)
            .map_or(0, |(_, m)| *m);
        if before == 0 {
            assert_eq!(
                got, 0,
                "no share before the job: the reserve takes the miners' part"
            );
        } else {
            assert_eq!(got, -c.msat, "one miner: the whole reward");
        }
        to_miner += got;
    }
    assert_eq!(l.balance(&Account::immature(ADDR)).await.unwrap(), to_miner);
    let total: i64 = credits.iter().map(|c| -c.msat).sum();
    let reserve = l
        .balance(&Account::Platform(PlatformAccount::PoolReserve))
        .await
        .unwrap();
    assert_eq!(to_miner + reserve, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_extranonce_moves_a_subscribed_miner_and_reconnects_the_others() {
    // Below the dev chain's network difficulty, so about half the shares are not blocks (the job
    // must stay current); vardiff pinned so no set_difficulty interleaves.
    let h = harness(|c| {
        c.initial_difficulty = Difficulty::MIN;
        c.vardiff.max = Difficulty::MIN;
    })
    .await;
    assert_eq!(h.pool.reassign_extranonce([0xde, 0xad, 0xbe, 0xef]), None);
    // A: subscribes to set_extranonce (NiceHash's method).
    let mut a = Miner::connect(h.pool.local_addr()).await;
    a.handshake(&format!("{ADDR}.a")).await;
    a.send(r#"{"id":3,"method":"mining.extranonce.subscribe","params":[]}"#)
        .await;
    assert_eq!(a.reply().await["result"], true);
    let old_en1: [u8; 4] = a.en1.clone().try_into().unwrap();
    let old_job = a.job.clone().unwrap().job_id;
    // A share for the current job under the old extranonce1, kept for after the change.
    let (old_share, _) = a.find_plain_share(&format!("{ADDR}.a"));
    let new_en1 = h.pool.reassign_extranonce(old_en1).expect("A is connected");
    assert_ne!(new_en1, old_en1);
    // set_extranonce, then at once a clean notify under a job id A has not seen.
    let l = a.next().await.unwrap();
    assert_eq!(l["method"], "mining.set_extranonce", "{l}");
    assert_eq!(l["params"], json!([stratum::to_hex(&new_en1), 4]));
    let l = a.next().await.unwrap();
    assert_eq!(
        l["method"], "mining.notify",
        "set_extranonce must be followed by a notify: {l}"
    );
    assert_eq!(l["params"][8], true, "clean_jobs");
    assert_ne!(l["params"][0].as_str().unwrap(), old_job);
    assert_eq!(
        a.en1,
        new_en1.to_vec(),
        "the test miner applied it with the notify"
    );
    // The old job's share is stale now; a share under the new extranonce1 is accepted and logged.
    let r = a.submit(json!(4), &old_share).await;
    assert_eq!(r["error"][0], 21, "{r}");
    let (p, header) = a.find_plain_share(&format!("{ADDR}.a"));
    let r = a.submit(json!(5), &p).await;
    assert_eq!(verdict(&r), Ok(()), "{r}");
    assert!(h.pool.log().headers().await.unwrap().contains(&header.to_vec()));
    // The connection is now addressed by its new extranonce1 only.
    assert_eq!(h.pool.reassign_extranonce(old_en1), None);
    // B never subscribed to set_extranonce: told to reconnect, then closed.
    let mut b = Miner::connect(h.pool.local_addr()).await;
    b.handshake(&format!("{ADDR}.b")).await;
    let b_en1: [u8; 4] = b.en1.clone().try_into().unwrap();
    assert!(h.pool.reassign_extranonce(b_en1).is_some());
    let l = b.next().await.unwrap();
    assert_eq!(l["method"], "client.reconnect", "{l}");
    assert!(b.next().await.is_none(), "B's connection is closed");
    // A keeps mining.
    let (p, _) = a.find_plain_share(&format!("{ADDR}.a"));
    assert_eq!(verdict(&a.submit(json!(6), &p).await), Ok(()));
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_mode_pps_pays_every_share_at_once_exactly() {
    use ledger::{Account, PlatformAccount};
    let mut t = two_miners(pool::config::Sharing::Pps, 20_000).await; // 2 %
    let accepted = t.mine(30).await;
    let TwoMiners { h, l, alice, bob, .. } = t;
    assert!(accepted >= 10, "{accepted} shares accepted");
    // Every logged share credited: the PPS cursor reaches the newest share.
    let db = h.pool.log().db().clone();
    let (max_id,): (i64,) = sqlx::query_as("SELECT MAX(id) FROM shares")
        .fetch_one(&db)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pool::accounting::pps_cursor(&l).await.unwrap() < max_id {
        assert!(std::time::Instant::now() < deadline, "PPS crediting stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blocks: Vec<(String, String)> = h.pool.log().blocks().await.unwrap();
    let accepted_blocks: Vec<&String> = blocks
        .iter()
        .filter(|(_, f)| f == "accepted")
        .map(|(x, _)| x)
        .collect();
    let mined = Account::Platform(PlatformAccount::Mined);
    while l.history(&mined, 1000).await.unwrap().len() < accepted_blocks.len() {
        assert!(std::time::Instant::now() < deadline, "blocks not credited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.pool.shutdown().await; // nothing moves while the books are read
                             // Each PPS transaction pays exactly what the shares of its range are worth.
    let reserve = Account::Platform(PlatformAccount::PoolReserve);
    let mut paid = std::collections::BTreeMap::<String, u128>::new();
    let mut credited_to = 0;
    let mut pps_total = 0i64;
    let mut refills = 0i64;
    for line in l.history(&reserve, 10_000).await.unwrap().iter().rev() {
        if let Some(range) = line.key.strip_prefix("pps:") {
            let (a, b) = range.split_once('-').unwrap();
            let (a, b): (i64, i64) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(a, credited_to + 1, "ranges are contiguous: {}", line.key);
            credited_to = b;
            let want = test_support::pps_expected(&db, a, b, 20_000, false).await;
            let mut got = std::collections::BTreeMap::<String, u128>::new();
            for (name, msat) in l.postings_of(&line.key).await.unwrap() {
                if let Some(owner) = name
                    .strip_prefix("user/")
                    .and_then(|n| n.strip_suffix("/available"))
                {
                    got.insert(owner.to_string(), msat as u128);
                }
            }
            assert_eq!(got, want, "{}", line.key);
            for (o, v) in got {
                *paid.entry(o).or_default() += v;
            }
            pps_total += -line.msat;
        } else {
            assert!(line.key.starts_with("block:"), "{}", line.key);
            assert_eq!(
                line.msat, 5_000_000_000_000,
                "a block's whole reward refills the reserve"
            );
            refills += line.msat;
        }
    }
    assert_eq!(credited_to, max_id, "every share credited once");
    let a = l.balance(&Account::available(&alice)).await.unwrap();
    let b = l.balance(&Account::available(&bob)).await.unwrap();
    assert!(a > 0 && b > 0, "both paid at once: alice {a}, bob {b}");
    assert_eq!(a as u128, paid[&alice]);
    assert_eq!(b as u128, paid[&bob]);
    assert_eq!(a + b, pps_total);
    assert_eq!(l.balance(&reserve).await.unwrap(), refills - pps_total);
    assert_eq!(refills, -l.balance(&mined).await.unwrap());
    assert!(l.verify().await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fpps_prices_each_share_by_its_job_and_never_pays_twice() {
    use ledger::{Account, Ledger, PlatformAccount};
    use pool::share_log::{JobRecord, ShareLog, ShareRecord};
    let dir = tempfile::tempdir().unwrap();
    let (log, _w) = ShareLog::open(&dir.path().join("pool.sqlite")).await.unwrap();
    let l = Ledger::open(&dir.path().join("ledger.sqlite").to_string_lossy())
        .await
        .unwrap();
    // Two jobs, B = 3.125 BTC: difficulty-1 bits with E[F] = 0.2 BTC, and difficulty-16307 bits with
    // E[F] = 0.35 BTC. Shares of difficulty 1, 2.5 and 5 (above D = 1: count as 1) and 1024 for two
    // owners, and one share whose job was never logged (an older version's share): not credited.
    for (job, fees, bits) in [(7i64, 20_000_000i64, 0x1d00ffffu32), (8, 35_000_000, 0x1b0404cb)] {
        log.enqueue_job(JobRecord {
            job_id: job,
            ts_ms: 1,
            height: 900_000,
            bits,
            subsidy_sat: 312_500_000,
            fees_sat: 0,
            expected_fees_sat: fees,
            payout_plan: None,
        })
        .await
        .unwrap();
    }
    let share = |owner: &str, job: i64, d: f64| ShareRecord {
        ts_ms: 2,
        address: owner.into(),
        worker: "w".into(),
        job_id: job,
        difficulty: Difficulty::from_f64(d).unwrap(),
        extranonce1: vec![0; 4],
        extranonce2: vec![0; 4],
        header: [0; 80],
        is_block: false,
    };
    for (o, j, d) in [
        ("alice", 7, 1.0),
        ("bob", 7, 2.5),
        ("alice", 8, 1024.0),
        ("bob", 99, 5.0),
        ("alice", 7, 1.0),
        ("bob", 7, 5.0),
    ] {
        log.append_share(share(o, j, d)).await.unwrap();
    }
    let rule = &pool::accounting::Rule::new(pool::config::Sharing::Fpps, 0);
    let db = log.db().clone();
    let (read, to) = pool::accounting::credit_shares(&db, &l, rule, 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!((read, to), (6, 6));
    assert_eq!(pool::accounting::pps_cursor(&l).await.unwrap(), 6);
    let want = test_support::pps_expected(&db, 1, 6, 0, true).await;
    // By hand: W(0x1d00ffff) = 4295032833 hashes (difficulty 1), W(0x1b0404cb) from its target.
    let w7: u128 = 4_295_032_833;
    let w8 = ledger::schemes::block_work(units::Target::from_compact(0x1b0404cb).unwrap())
        .unwrap()
        .low_u128();
    assert!(w8 / w7 == 16_307, "difficulty 16307");
    let d1 = 1u128 << 32;
    let alice = 332_500_000_000 * (2 * d1) / w7 + 347_500_000_000 * (1024 * d1) / w8;
    let bob = 2 * 332_500_000_000; // d 2.5 and d 5 are both above D = 1: each counts as one block
    assert_eq!(want["alice"], alice);
    assert_eq!(want["bob"], bob);
    assert_eq!(
        l.balance(&Account::available("alice")).await.unwrap() as u128,
        alice
    );
    assert_eq!(
        l.balance(&Account::available("bob")).await.unwrap() as u128,
        want["bob"]
    );
    let memo = &l.history(&Account::available("bob"), 10).await.unwrap()[0].memo;
    assert!(memo.contains("1 shares without a job row not credited"), "{memo}");
    // The same range again (a retry after a crash before the cursor moved): a no-op.
    pool::accounting::credit_shares(&db, &l, rule, 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(
        l.balance(&Account::available("alice")).await.unwrap() as u128,
        alice
    );
    let reserve = l
        .balance(&Account::Platform(PlatformAccount::PoolReserve))
        .await
        .unwrap();
    assert_eq!(
        reserve,
        -i64::try_from(alice + want["bob"]).unwrap(),
        "the reserve carries what blocks have not yet covered"
    );
    assert!(l.verify().await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_row_records_the_newest_share_queued_before_it() {
    use pool::share_log::{JobRecord, ShareLog, ShareRecord};
    let dir = tempfile::tempdir().unwrap();
    let (log, _w) = ShareLog::open(&dir.path().join("pool.sqlite")).await.unwrap();
    let share = |job: i64| ShareRecord {
        ts_ms: 1,
        address: ADDR.into(),
        worker: "w".into(),
        job_id: job,
        difficulty: Difficulty::ONE,
        extranonce1: vec![0; 4],
        extranonce2: vec![0; 4],
        header: [0; 80],
        is_block: false,
    };
    let job = |id: i64| JobRecord {
        job_id: id,
        ts_ms: 1,
        height: 1,
        bits: 0x207fffff,
        subsidy_sat: 5_000_000_000,
        fees_sat: 0,
        expected_fees_sat: 0,
        payout_plan: None,
    };
    // Queued without waiting, so several land in one commit: the rows still go in queue order.
    log.enqueue_job(job(1)).await.unwrap();
    let a = log.enqueue_share(share(1)).await.unwrap();
    let b = log.enqueue_share(share(1)).await.unwrap();
    log.enqueue_job(job(2)).await.unwrap();
    let c = log.enqueue_share(share(2)).await.unwrap();
    for w in [a, b, c] {
        w.wait().await.unwrap();
    }
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT job_id, shares_before FROM jobs ORDER BY job_id")
        .fetch_all(log.db())
        .await
        .unwrap();
    assert_eq!(rows, vec![(1, 0), (2, 2)]);
    assert_eq!(log.max_job_id().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fpps_expected_fees_are_the_mean_fees_of_recent_blocks() {
    use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
    use bitcoin::sighash::{EcdsaSighashType, SighashCache};
    // A dev chain of 101 blocks paying a P2WPKH key, then one block whose only other transaction
    // spends the first coinbase and pays a fee of 12,345 sat.
    let dir = tempfile::tempdir().unwrap();
    let node = DevNode::new(devchain::DevChain::open(dir.path(), 30).unwrap());
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[7; 32]).unwrap();
    let pk = bitcoin::CompressedPublicKey(sk.public_key(&secp));
    let spk = bitcoin::ScriptBuf::new_p2wpkh(&pk.wpubkey_hash());
    let fee = 12_345u64;
    test_support::mine_dev_blocks(&node, &spk, 101).await;
    {
        let (node, spk) = (node.clone(), spk.clone());
        tokio::task::spawn_blocking(move || {
            let mut c = node.lock();
            let cb = c.at_height(1).unwrap().block.txdata[0].clone();
            let mut tx = bitcoin::Transaction {
                version: bitcoin::transaction::Version::TWO,
                lock_time: bitcoin::absolute::LockTime::ZERO,
                input: vec![bitcoin::TxIn {
                    previous_output: bitcoin::OutPoint {
                        txid: cb.compute_txid(),
                        vout: 0,
                    },
                    ..Default::default()
                }],
                output: vec![bitcoin::TxOut {
                    value: cb.output[0].value - bitcoin::Amount::from_sat(fee),
                    script_pubkey: spk.clone(),
                }],
            };
            let h = SighashCache::new(&tx)
                .p2wpkh_signature_hash(0, &spk, cb.output[0].value, EcdsaSighashType::All)
                .unwrap();
            let sig = bitcoin::ecdsa::Signature {
                signature: secp.sign_ecdsa(&Message::from(h), &sk),
                sighash_type: EcdsaSighashType::All,
            };
            tx.input[0].witness = bitcoin::Witness::p2wpkh(&sig, &pk.0);
            c.accept_transaction(tx, 0, None).unwrap();
        })
        .await
        .unwrap();
    }
    test_support::mine_dev_blocks(&node, &spk, 1).await;
    // Reopened, as `cloudmine serve` finds it (a node's tip watch starts at the stored tip; blocks
    // submitted straight to the locked chain above did not move it).
    drop(node);
    let node = DevNode::new(devchain::DevChain::open(dir.path(), 30).unwrap());
    assert_eq!(
        Backend::Dev(node.clone()).block_fees(102).await.unwrap(),
        Some(fee)
    );
    assert_eq!(Backend::Dev(node.clone()).block_fees(103).await.unwrap(), None);
    // An FPPS pool started on it: its first job's E[F] is the mean over the 102 blocks (heights
    // 1..=102, genesis aside), floored.
    let mut cfg = PoolConfig::new(
        Network::Regtest,
        PayoutScheme::Pool(
            bitcoin::Address::p2wsh(
                &bitcoin::ScriptBuf::from_bytes(vec![0x51, 0x01, 9]),
                Network::Regtest,
            )
            .script_pubkey(),
        ),
    );
    cfg.sharing = pool::config::Sharing::Fpps;
    let (log, _writer) = pool::share_log::ShareLog::open(&dir.path().join("pool.sqlite"))
        .await
        .unwrap();
    let pool = Pool::start(cfg, Backend::Dev(node), log, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let db = pool.log().db().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (height, expected): (i64, i64) = loop {
        let r: Option<(i64, i64)> =
            sqlx::query_as("SELECT height, expected_fees_sat FROM jobs ORDER BY job_id LIMIT 1")
                .fetch_optional(&db)
                .await
                .unwrap();
        if let Some(r) = r {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no job row");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(height, 103);
    assert_eq!(expected, (fee / 102) as i64, "E[F] = floor(12,345 / 102)");
    pool.shutdown().await;
}

/// Suggests difficulty `diff` and waits for work at it; returns that job.
async fn ask(m: &mut Miner, id: u32, diff: f64) -> stratum::Notify {
    let line = json!({"id": id, "method": "mining.suggest_difficulty", "params": [diff]}).to_string();
    m.send(&line).await;
    assert_eq!(m.reply().await["result"], true);
    while (m.diff - diff).abs() > 1e-20 {
        m.next().await.expect("work at the suggested difficulty");
    }
    m.job.clone().unwrap()
}

/// Issue 12's difficulty ladder, over real TCP. A miner asks for `d`, then `4d`, then `d` again, and
/// hashes the first job's work at `d`. It then tries to be credited `4d` for the hashes that meet
/// `4d`, sending them under the `4d` job id, and sends the rest under the first id (both ids live at
/// once) or under the third (one after the other). A difficulty change sends *new work* (the job id
/// is in the coinbase), so a hash of the first job is a share of the first job only: the credit is
/// never above the honest `N·d` (exactly: each accepted share is worth `d`). With the same work
/// re-sent under each id the first strategy took 1.73× and the second 1.75×.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_difficulty_ladder_credits_no_more_than_the_work_done() {
    let d = 2f64.powi(-20);
    // Vardiff held to [d, 4d] (its own flood bound would move it mid-test); every suggestion applied;
    // the rejected halves of the attack must not get the attacker banned before it is measured.
    let h = harness(|c| {
        c.job_refresh_interval = Duration::from_secs(3600);
        c.vardiff.min = Difficulty::from_f64(d).unwrap();
        c.vardiff.max = Difficulty::from_f64(4.0 * d).unwrap();
        c.suggest_interval = Duration::ZERO;
        c.invalid_shares_before_ban = 100_000;
    })
    .await;
    let net = test_support::harden_dev_chain(&h.node, 1e-4).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.ladder");
    m.handshake(&user).await;
    assert!(4.0 * d < net);
    let low = ask(&mut m, 3, d).await;
    let high = ask(&mut m, 4, 4.0 * d).await;
    let again = ask(&mut m, 5, d).await;
    // Hash at d on the first job's work; three groups of 150 shares: honest (all under the first
    // id), ladder with both ids live, ladder one after the other.
    m.job = Some(low.clone());
    m.diff = d;
    let n: u32 = 150;
    let mut batch = String::new();
    let mut sent = Vec::new();
    for i in 0..3 * n {
        let (mut p, header) = m.find_plain_share(&user);
        let hash = bitcoin::consensus::deserialize::<bitcoin::block::Header>(&header)
            .unwrap()
            .block_hash();
        let achieved = Difficulty::of_hash(&bitcoin::hashes::Hash::to_byte_array(hash));
        let group = i / n;
        let meets_high = achieved.to_f64() >= 4.0 * d;
        let (id, diff) = match (group, meets_high) {
            (0, _) => (&low.job_id, d),
            (_, true) => (&high.job_id, 4.0 * d),
            (1, false) => (&low.job_id, d),
            (_, false) => (&again.job_id, d),
        };
        p[1] = json!(id);
        batch.push_str(&json!({"id": 100 + i, "method": "mining.submit", "params": p}).to_string());
        batch.push('\n');
        sent.push((group, diff));
    }
    // Pipelined, as a fast miner sends them (replies come in order).
    m.send(&batch).await;
    let mut credit = [0.0f64; 3];
    for (i, (group, diff)) in sent.iter().enumerate() {
        let r = m.reply().await;
        assert_eq!(r["id"], json!(100 + i));
        if verdict(&r).is_ok() {
            credit[*group as usize] += diff;
        }
    }
    let honest = f64::from(n) * d;
    assert!(
        (credit[0] - honest).abs() < 1e-12,
        "honest shares all credited: {}",
        credit[0] / honest
    );
    for (g, what) in [(1, "both ids live"), (2, "one after the other")] {
        let ratio = credit[g] / honest;
        assert!(
            ratio <= 1.0 + 1e-9,
            "ladder ({what}) credited {ratio:.3}x the work done"
        );
    }
    h.pool.shutdown().await;
}

/// Two jobs of one template (a refresh with nothing new in the mempool) are different work: the
/// job id is in the coinbase, so a hash found for one is not a share of the other (the miner rolls
/// ntime, so ntime alone would not tell them apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_one_job_is_not_a_share_of_its_refresh() {
    let h = harness(|c| {
        c.job_refresh_interval = Duration::from_millis(300);
        c.vardiff.min = Difficulty::from_f64(2f64.powi(-12)).unwrap();
        c.vardiff.max = c.vardiff.min;
    })
    .await;
    test_support::harden_dev_chain(&h.node, 1e-3).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.refresh");
    m.handshake(&user).await;
    m.send(&json!({"id": 3, "method": "mining.suggest_difficulty", "params": [2f64.powi(-12)]}).to_string())
        .await;
    assert_eq!(m.reply().await["result"], true);
    let first = loop {
        m.next().await.expect("work");
        if (m.diff - 2f64.powi(-12)).abs() < 1e-20 {
            break m.job.clone().unwrap();
        }
    };
    // wait for the refresh of the same template
    let second = loop {
        m.next().await.expect("a refreshed job");
        let j = m.job.clone().unwrap();
        if j.job_id != first.job_id {
            break j;
        }
    };
    assert_eq!(first.prevhash, second.prevhash);
    // shares found on the first job, each sent under both ids: never two credits (under the second
    // id the hash is another, which meets 2^-12 by luck with probability 2^-20 per try)
    m.job = Some(first.clone());
    let mut double = 0;
    for i in 0..20 {
        let (p, _) = m.find_plain_share(&user);
        let mut q = p.clone();
        q[1] = json!(second.job_id);
        let a = verdict(&m.submit(json!(200 + 2 * i), &p).await).is_ok();
        let b = verdict(&m.submit(json!(201 + 2 * i), &q).await).is_ok();
        if a && b {
            double += 1;
        }
    }
    assert_eq!(double, 0, "a hash credited under two jobs");
    assert_ne!(first.coinb2, second.coinb2, "the job id is in the coinbase");
    h.pool.shutdown().await;
}

/// A peer that sends but never reads: the pool's writes to it stall, and after `write_timeout` the
/// connection is closed; a good miner keeps mining meanwhile, and a graceful shutdown is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_closed_after_the_write_timeout() {
    let h = harness(|c| c.write_timeout = Duration::from_millis(500)).await;
    let mut good = Miner::connect(h.pool.local_addr()).await;
    good.handshake(&format!("{ADDR}.good")).await;
    // A tiny receive buffer, and a flood of requests whose replies it never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = sock.connect(h.pool.local_addr()).await.unwrap();
    let line = "{\"id\":1,\"method\":\"mining.unknown\",\"params\":[]}\n".repeat(1000);
    // both connections registered (the accept runs after the client's connect returns)
    let t = std::time::Instant::now();
    while h
        .pool
        .stats()
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        != 2
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the slow peer was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let mut closed = false;
    // Keep writing until the pool gives up on us (its close shows as a write error here).
    while started.elapsed() < Duration::from_secs(20) {
        use tokio::io::AsyncWriteExt;
        if let Ok(Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), slow.write_all(line.as_bytes())).await
        {
            closed = true;
            break;
        }
        if h.pool
            .stats()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a peer that never reads was not closed");
    // the good miner never noticed
    good.wait_job().await;
    let (p, _) = good.find_share(&format!("{ADDR}.good"), false);
    let r = good.submit(json!(9), &p).await;
    assert!(verdict(&r).is_ok() || r["error"][0] == 21, "{r}");
    let t = std::time::Instant::now();
    h.pool.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// A ban ends after `ban_duration`: the address may connect again and its entry leaves the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_expire_and_leave_the_table() {
    let h = harness(|c| {
        c.invalid_shares_before_ban = 3;
        c.ban_duration = Duration::from_secs(2);
    })
    .await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    for i in 0..3 {
        m.send(&format!(
            "{{\"id\":{i},\"method\":\"mining.submit\",\"params\":[1]}}"
        ))
        .await;
    }
    while m.next().await.is_some() {}
    assert_eq!(h.pool.bans_len(), 1);
    // banned: closed at once
    let mut again = Miner::connect(h.pool.local_addr()).await;
    assert!(again.next_reply_or_eof().await.is_none());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let mut back = Miner::connect(h.pool.local_addr()).await;
    back.handshake(&format!("{ADDR}.back")).await;
    assert_eq!(h.pool.bans_len(), 0, "the expired ban left the table");
    h.pool.shutdown().await;
}

/// Difficulty changes push a job's first id out of the kept jobs; the next change must still send a
/// variant (new work), never the job again under its own id, which would come back with an empty
/// duplicate set: a share already credited under it is never credited again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pushed_out_by_its_variants_is_not_sent_again_under_its_id() {
    let h = harness(|c| {
        c.job_refresh_interval = Duration::from_secs(3600);
        c.jobs_kept = 3;
        c.suggest_interval = Duration::ZERO;
        c.vardiff.min = Difficulty::from_f64(2f64.powi(-22)).unwrap();
        c.vardiff.max = Difficulty::from_f64(2f64.powi(-14)).unwrap();
    })
    .await;
    test_support::harden_dev_chain(&h.node, 1e-3).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.again");
    m.handshake(&user).await;
    // the job as first sent, under its own (global) id
    let first = m.job.clone().unwrap();
    let (p, _) = m.find_plain_share(&user);
    assert_eq!(verdict(&m.submit(json!(4), &p).await), Ok(()));
    let mut ids = vec![first.job_id.clone()];
    for (i, e) in [-21, -22, -21, -22, -21, -22].iter().enumerate() {
        let j = ask(&mut m, 10 + i as u32, 2f64.powi(*e)).await;
        assert_eq!(j.prevhash, first.prevhash);
        assert!(!ids.contains(&j.job_id), "job id {} sent twice", j.job_id);
        ids.push(j.job_id);
    }
    // the first share, sent again under the first id: never a second credit
    let r = m.submit(json!(99), &p).await;
    assert!(verdict(&r).is_err(), "a share credited twice: {r}");
    h.pool.shutdown().await;
}

/// A block intent whose fate never got written (the write failed, or the chain was away at start)
/// does not hold accounting forever: once older than BLOCK_INTENT_SETTLE_AFTER it is settled
/// against the chain at the next new tip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_block_intent_is_settled_at_a_new_tip() {
    let h = harness(|_| {}).await;
    let script = bitcoin::ScriptBuf::new_op_return([]);
    let mine = |node: &chain::DevNode| {
        let b = node
            .lock()
            .generate_block(&script, chain::dev::now(), u32::MAX)
            .unwrap();
        let hash = b.block_hash();
        let raw = bitcoin::consensus::serialize(&b);
        assert_eq!(node.submit_block_blocking(b), chain::BlockFate::Accepted);
        (hash, raw)
    };
    let (hash, raw) = mine(&h.node);
    let old =
        chain::dev::now() as i64 * 1000 - 2 * pool::server::BLOCK_INTENT_SETTLE_AFTER.as_millis() as i64;
    h.pool
        .log()
        .append_block(pool::share_log::BlockRecord {
            ts_ms: old,
            height: 1,
            hash: hash.to_string(),
            finder: ADDR.into(),
            block: raw,
            fate: pool::share_log::FATE_SUBMITTING.into(),
        })
        .await
        .unwrap();
    // a new tip: the stuck intent is settled
    mine(&h.node);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let blocks = h.pool.log().blocks().await.unwrap();
        if blocks
            .iter()
            .any(|(b, f)| *b == hash.to_string() && f == "accepted")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{blocks:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_log_retention_deletes_only_old_accounted_rows_and_keeps_blocks_and_live_jobs() {
    use pool::share_log::{JobRecord, ShareLog, ShareRecord, JOBS_KEPT_ROWS};
    let dir = tempfile::tempdir().unwrap();
    let (log, _w) = ShareLog::open(&dir.path().join("pool.sqlite")).await.unwrap();
    let share = |job: i64, ts_ms: i64, is_block: bool| ShareRecord {
        ts_ms,
        address: ADDR.into(),
        worker: "w".into(),
        job_id: job,
        difficulty: Difficulty::ONE,
        extranonce1: vec![0; 4],
        extranonce2: vec![0; 4],
        header: [u8::from(is_block); 80],
        is_block,
    };
    let job = |id: i64, ts_ms: i64| JobRecord {
        job_id: id,
        ts_ms,
        height: 1,
        bits: 0x207fffff,
        subsidy_sat: 5_000_000_000,
        fees_sat: 0,
        expected_fees_sat: 0,
        payout_plan: None,
    };
    // Jobs 1..=JOBS_KEPT_ROWS+10, all old (ts 10); shares: ids 1..=100 at ts = id (job 1, id 50 a
    // block's share on job 2), ids 101..=120 at ts 1000 on job 3.
    let jobs = JOBS_KEPT_ROWS + 10;
    for id in 1..=jobs {
        log.enqueue_job(job(id, 10)).await.unwrap();
    }
    for id in 1..=100 {
        let (j, b) = if id == 50 { (2, true) } else { (1, false) };
        log.append_share(share(j, id, b)).await.unwrap();
    }
    for _ in 101..=120 {
        log.append_share(share(3, 1000, false)).await.unwrap();
    }
    let ids = |log: ShareLog| async move {
        sqlx::query_scalar::<_, i64>("SELECT id FROM shares ORDER BY id")
            .fetch_all(log.db())
            .await
            .unwrap()
    };
    // Accounted up to 80, older than ts 60, in chunks of 25: ids 1..=25 first.
    assert_eq!(log.pruned_below().await.unwrap(), 0);
    let p = log.prune(80, 60, 25).await.unwrap();
    assert_eq!(p.shares, 25);
    assert_eq!(
        log.pruned_below().await.unwrap(),
        26,
        "the mark accounting checks its cursor against"
    );
    // No job row goes: shares 81..=100 of job 1 are not accounted yet, and no job is below job 1.
    assert_eq!(p.jobs, 0);
    // 26..=50 but the block's share 50.
    let p = log.prune(80, 60, 25).await.unwrap();
    assert_eq!(p.shares, 24);
    let left = ids(log.clone()).await;
    assert!(left.contains(&50), "a block's share is kept");
    assert!(!left.iter().any(|&i| i < 50), "{left:?}");
    let p = log.prune(80, 60, 25).await.unwrap();
    assert_eq!(p.shares, 9, "51..=59");
    let p = log.prune(80, 60, 25).await.unwrap();
    assert_eq!(p.shares, 0, "60.. are not older than the cutoff");
    let left = ids(log.clone()).await;
    assert_eq!(left.first(), Some(&50));
    assert_eq!(left.get(1), Some(&60));
    // Everything is old now, but nothing past the accounted share goes.
    let p = log.prune(80, i64::MAX, 1_000).await.unwrap();
    assert_eq!(p.shares, 21, "60..=80");
    let left = ids(log.clone()).await;
    assert_eq!(left.len(), 1 + 40, "the block's share and 81..=120");
    // All accounted: every old job row goes but the block's job (2) and the newest JOBS_KEPT_ROWS.
    let p = log.prune(i64::MAX, i64::MAX, 10_000).await.unwrap();
    assert_eq!(
        p.shares, 39,
        "81..=119: the newest row (120) stays, its id is the next id's floor"
    );
    assert_eq!(ids(log.clone()).await, vec![50, 120]);
    log.append_share(share(3, 2000, false)).await.unwrap();
    assert_eq!(ids(log.clone()).await, vec![50, 120, 121], "ids never go back");
    assert_eq!(p.jobs, 9, "jobs 1 and 3..=10");
    let jobs_left: Vec<i64> = sqlx::query_scalar("SELECT job_id FROM jobs ORDER BY job_id")
        .fetch_all(log.db())
        .await
        .unwrap();
    assert_eq!(jobs_left.first(), Some(&2), "the block's job stays");
    assert_eq!(
        jobs_left.len() as i64,
        1 + JOBS_KEPT_ROWS,
        "{:?}",
        &jobs_left[..3]
    );
    assert_eq!(
        log.max_job_id().await.unwrap(),
        jobs as u64,
        "the job counter resumes above every job"
    );
    assert_eq!(log.blocks().await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_shares_with_a_reason_and_retention_frees_it() {
    // The share log capped at 64 KiB: as SQLite sees it, the disk fills after a few hundred shares.
    let h = harness_with_log_cap(|c| c.initial_difficulty = Difficulty::MIN, Some(64 * 1024)).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.full");
    m.handshake(&user).await;
    let mut accepted = 0;
    let mut refusal = None;
    for id in 0..5_000u32 {
        let (p, _) = m.find_plain_share(&user);
        let r = m.submit(json!(id), &p).await;
        match verdict(&r) {
            Ok(()) => accepted += 1,
            Err(e) => {
                refusal = Some((r["error"][0].clone(), e));
                break;
            }
        }
    }
    let (code, why) = refusal.expect("the capped share log never filled");
    assert_eq!(code, 20);
    assert_eq!(why, pool::session::SHARE_LOG_FULL);
    assert!(accepted > 10, "only {accepted} shares fit");
    assert_eq!(
        h.pool.log().share_count().await.unwrap(),
        accepted,
        "every share answered true is logged, the refused one is not"
    );
    // The refused share was never marked seen: once retention frees pages it is accepted as new
    // work (a refusal costs the miner nothing but the retry).
    let freed = h.pool.log().prune(i64::MAX, i64::MAX, 1_000).await.unwrap();
    assert!(freed.shares > 0);
    let (p, _) = m.find_plain_share(&user);
    assert_eq!(verdict(&m.submit(json!(9_999), &p).await), Ok(()));
    h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_through_accounting_prunes_accounted_shares_and_blocks_are_still_credited() {
    use pool::config::Retention;
    // Everything is "old" at once: only what accounting still needs is kept. (The work log keeps
    // 4 windows of the highest recent difficulty, more than this short run holds, so it keeps all;
    // its floor is tested in `pool::accounting` and `ledger`.)
    let tiny = Some(Duration::from_millis(1));
    let mut t = two_miners_with(pool::config::Sharing::Pplns, 0, |c| {
        c.retention = Retention {
            share_log: tiny,
            work_log: tiny,
        }
    })
    .await;
    t.mine(60).await;
    let stats = t.h.pool.stats();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stats.pruned_shares.load(std::sync::atomic::Ordering::Relaxed) < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "share log retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Blocks found before and after pruning are all credited (their shares, jobs and windows kept).
    t.mine(30).await;
    let blocks = wait_all_credited(&t.h, &t.l).await;
    let accepted = blocks.iter().filter(|(_, f)| f == "accepted").count();
    assert!(accepted >= 3, "{blocks:?}");
    let block_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM shares WHERE is_block = 1")
        .fetch_one(t.h.pool.log().db())
        .await
        .unwrap();
    assert!(block_rows as usize >= accepted, "block shares are kept");
    // Nothing in the work log was lost to retention: every accepted share is there.
    let max_id: i64 = sqlx::query_scalar("SELECT MAX(id) FROM shares")
        .fetch_one(t.h.pool.log().db())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while t.l.work_high_water("pool").await.unwrap() < Some(max_id as u64) {
        assert!(
            std::time::Instant::now() < deadline,
            "accounting stalled at {:?} of {max_id}",
            t.l.work_high_water("pool").await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let work = t.l.work_window("pool", u128::MAX).await.unwrap();
    assert_eq!(
        work.len() as u64,
        stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
        "pruned below {}, {} work records deleted, high water {:?}",
        t.l.work_pruned_below("pool").await.unwrap(),
        stats.pruned_work.load(std::sync::atomic::Ordering::Relaxed),
        t.l.work_high_water("pool").await.unwrap()
    );
    let v = t.l.verify().await.unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    // The metrics say what retention deleted.
    let (_, body) = {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = api.local_addr().unwrap();
        t.h.pool.serve_http(api);
        http_get(addr, "/metrics").await
    };
    assert!(
        body.contains("cloudmine_pool_retention_deleted_total{log=\"shares\"}"),
        "{body}"
    );
    t.h.pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_behind_the_pruned_share_log_is_refused_not_silently_skipped() {
    // Shares accepted and accounted by an earlier ledger, then pruned; now a ledger restored from an
    // older backup (here: empty) is fed: the shares in between are gone, and it must say so.
    let h = harness(|c| c.initial_difficulty = Difficulty::MIN).await;
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.restored");
    m.handshake(&user).await;
    for id in 0..20u32 {
        let (p, _) = m.find_plain_share(&user);
        assert_eq!(verdict(&m.submit(json!(id), &p).await), Ok(()));
    }
    let p = h.pool.log().prune(i64::MAX, i64::MAX, 1_000).await.unwrap();
    assert_eq!(p.shares, 19, "all but the newest");
    let l = h.ledger().await;
    h.pool.feed_ledger(l.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        l.work_high_water("pool").await.unwrap(),
        None,
        "nothing copied: the newest share alone would hide 19 missing ones"
    );
    h.pool.shutdown().await;
}

#[tokio::test]
async fn a_database_error_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _w) = pool::share_log::ShareLog::open(&dir.path().join("pool.sqlite"))
        .await
        .unwrap();
    log.db().close().await;
    let e = tokio::time::timeout(Duration::from_secs(5), log.max_job_id())
        .await
        .expect("an error, promptly")
        .unwrap_err();
    assert!(matches!(e, pool::share_log::LogError::Failed(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_beside_the_commits() {
    use pool::share_log::{ShareLog, ShareRecord, CHECKPOINT_EVERY};
    // Commits never checkpoint (wal_autocheckpoint=0); the checkpointer copies the WAL into the
    // database file every CHECKPOINT_EVERY. Without it the database file would keep its first size.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sqlite");
    let (log, _w) = ShareLog::open(&path).await.unwrap();
    tokio::time::sleep(CHECKPOINT_EVERY * 3).await;
    let before = std::fs::metadata(&path).unwrap().len();
    let share = ShareRecord {
        ts_ms: 1,
        address: ADDR.into(),
        worker: "w".into(),
        job_id: 1,
        difficulty: Difficulty::ONE,
        extranonce1: vec![0; 4],
        extranonce2: vec![0; 4],
        header: [7; 80],
        is_block: false,
    };
    let mut acks = Vec::new();
    for _ in 0..2_000 {
        acks.push(log.enqueue_share(share.clone()).await.unwrap());
    }
    for a in acks {
        a.wait().await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = std::fs::metadata(&path).unwrap().len();
        if after > before + 100_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {after} bytes (before {before}): no checkpoint ran"
        );
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
    assert_eq!(log.share_count().await.unwrap(), 2_000);
    // Under a steady stream of commits (each at least one WAL frame) the WAL keeps restarting:
    // without checkpoints it would hold 10,000+ frames.
    for _ in 0..10_000 {
        log.append_share(share.clone()).await.unwrap();
    }
    let (_, frames, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(log.db())
        .await
        .unwrap();
    assert!(
        frames <= pool::share_log::WAL_PAGES_INLINE,
        "{frames} frames in the WAL after 10,000 commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_ledger_is_down_the_backlog_bound_still_holds() {
    // The ledger goes away after one good pass: shares keep being logged, the backlog gauge keeps
    // counting them from the share log, and past the bound shares are refused (not accepted without
    // limit, as when the gauge was only updated by passes that succeeded).
    let h = harness(|c| {
        c.initial_difficulty = Difficulty::MIN;
        c.ledger_backlog_max = 5;
    })
    .await;
    let l = h.ledger().await;
    h.pool.feed_ledger(l.clone());
    let mut m = Miner::connect(h.pool.local_addr()).await;
    let user = format!("{ADDR}.down");
    m.handshake(&user).await;
    let (p, _) = m.find_plain_share(&user);
    assert_eq!(verdict(&m.submit(json!(1), &p).await), Ok(()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while l.work_high_water("pool").await.unwrap() != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first share was never copied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    l.close().await; // the ledger is down from here on
    let mut refused = None;
    for id in 2..40u32 {
        let (p, _) = m.find_plain_share(&user);
        let r = m.submit(json!(id), &p).await;
        if let Err(e) = verdict(&r) {
            refused = Some((id, e));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // a few failed passes in between
    }
    let (id, why) = refused.expect("39 shares accepted while the ledger was down, bound 5");
    assert!(why.contains("Accounting backlog full"), "{why}");
    assert!(id <= 12, "refused only at share {id}");
    h.pool.shutdown().await;
}

#[tokio::test]
async fn a_block_is_found_by_its_hash_through_an_index() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sqlite");
    let (_log, _w) = pool::share_log::ShareLog::open(&path).await.unwrap();
    // A connection opened after the schema (the plan of one opened before may predate the index).
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN UPDATE blocks SET fate = 'accepted' WHERE hash = 'x' AND fate = 'submitting'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(
        plan.iter().any(|(_, _, _, d)| d.contains("blocks_hash")),
        "{plan:?}"
    );
}
