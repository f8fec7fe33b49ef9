//! `cloudmine mine` against real `cloudmine serve` processes over loopback: shares accepted with
//! version rolling, dev-chain blocks found, failover when the first pool is killed, reconnect after a
//! pool restarts, and not one rejected share in any of it.

use super::{serve_at, Proc};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADDR: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
/// About 2^22 hashes per share: several shares a second from one thread.
const DIFF: &str = "0.001";

/// A running `cloudmine mine --json` and the events it printed so far.
struct MinerProc {
    proc: Option<Proc>,
    events: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn mine(args: &[&str]) -> MinerProc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
        .arg("mine")
        .args(args)
        .args(["--json", "--interval", "1", "-t", "1"])
        .env("CLOUDMINE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let events: Arc<Mutex<Vec<Value>>> = Arc::default();
    let ev = events.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            ev.lock().unwrap().push(v);
        }
    });
    MinerProc {
        proc: Some(Proc(child)),
        events,
        reader: Some(reader),
    }
}

impl MinerProc {
    fn snapshot(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `pred` holds on the events so far.
    fn wait(&self, what: &str, secs: u64, pred: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let ev = self.snapshot();
            if pred(&ev) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events: {ev:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the full event list (with the summary).
    fn stop(mut self) -> Vec<Value> {
        let mut p = self.proc.take().unwrap();
        let pid = p.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "miner did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.snapshot()
    }
}

fn is(ev: &Value, kind: &str) -> bool {
    ev["event"] == kind
}

fn accepted_on(ev: &[Value], pool: &str) -> usize {
    ev.iter()
        .filter(|e| is(e, "share") && e["result"] == "accepted" && e["pool"] == pool)
        .count()
}

fn rejects(ev: &[Value]) -> Vec<&Value> {
    ev.iter()
        .filter(|e| is(e, "share") && e["result"] != "accepted")
        .collect()
}

/// Waits until serve's accounting copied every share of `data_dir`'s share log into the ledger at
/// `ledger_url`; returns (shares logged, work-log records read back).
async fn wait_ingested(
    data_dir: &std::path::Path,
    ledger_url: &str,
    secs: u64,
) -> (i64, Vec<(String, u128)>) {
    let (log, _w) = pool::share_log::ShareLog::open(&data_dir.join("pool.sqlite"))
        .await
        .unwrap();
    let logged = log.share_count().await.unwrap();
    let l = ledger::Ledger::open(ledger_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let hw = l.work_high_water("pool").await.unwrap().unwrap_or(0);
        if hw as i64 >= logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ledger work log stuck at {hw} of {logged} shares"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = l.work_window("pool", u128::MAX).await.unwrap();
    l.close().await;
    (logged, window)
}

fn url(a: std::net::SocketAddr) -> String {
    format!("stratum+tcp://{a}")
}

#[test]
fn mines_on_serve_with_version_rolling_and_finds_blocks_without_a_reject() {
    let dir = tempfile::tempdir().unwrap();
    let (served, addr) = serve_at(dir.path(), "127.0.0.1:0", DIFF, true);
    let user = format!("{ADDR}.cpu");
    let m = mine(&["-o", &url(addr), "-u", &user]);
    let pool = url(addr);
    m.wait(
        "10 accepted shares including a block candidate, and a status line",
        90,
        |ev| {
            accepted_on(ev, &pool) >= 10
                && ev
                    .iter()
                    .any(|e| is(e, "share") && e["result"] == "accepted" && e["block"] == true)
                && ev
                    .iter()
                    .any(|e| is(e, "status") && e["hashrate"].as_f64().unwrap_or(0.0) > 0.0)
        },
    );
    let ev = m.stop();
    let connected: Vec<&Value> = ev.iter().filter(|e| is(e, "connected")).collect();
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0]["version_mask"], "1fffe000");
    assert!(rejects(&ev).is_empty(), "rejected shares: {:?}", rejects(&ev));
    let summary = ev
        .iter()
        .find(|e| is(e, "summary"))
        .expect("a summary on SIGTERM");
    assert_eq!(summary["rejected"], 0);
    assert_eq!(summary["stale"], 0);
    let accepted = accepted_on(&ev, &pool);
    // Accounting: serve copies every logged share into the ledger's work log (DATA/ledger.sqlite).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ledger_url = dir.path().join("ledger.sqlite").to_string_lossy().into_owned();
    let (_, window) = rt.block_on(wait_ingested(dir.path(), &ledger_url, 20));
    assert!(window.iter().all(|(owner, _)| owner == ADDR));
    let ingested = window.len();
    assert!(ingested >= accepted, "{ingested} ingested < {accepted} accepted");
    drop(served);
    // The pool's own records: every accepted share is logged, rolled version bits were used, and the
    // dev chain took at least one block from this miner.
    rt.block_on(async {
        let (log, _w) = pool::share_log::ShareLog::open(&dir.path().join("pool.sqlite"))
            .await
            .unwrap();
        let headers = log.headers().await.unwrap();
        assert!(headers.len() >= accepted, "{} logged < {accepted} accepted", headers.len());
        let rolled = headers
            .iter()
            .filter(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) & 0x1fff_e000 != 0)
            .count();
        assert!(rolled > 0, "no share used rolled version bits");
        let blocks = log.blocks().await.unwrap();
        assert!(
            blocks.iter().any(|(_, fate)| fate == "accepted"),
            "no block accepted by the dev chain: {blocks:?}"
        );
        eprintln!(
            "miner: {accepted} shares accepted, 0 rejected, {rolled} with rolled version bits, {} blocks accepted by the dev chain",
            blocks.iter().filter(|(_, f)| f == "accepted").count()
        );
    });
}

#[test]
fn fails_over_when_the_first_pool_dies_and_fails_back_when_it_restarts() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, addr_a) = serve_at(da.path(), "127.0.0.1:0", DIFF, true);
    let (b, addr_b) = serve_at(db.path(), "127.0.0.1:0", DIFF, true);
    let (pa, pb) = (url(addr_a), url(addr_b));
    let user = format!("{ADDR}.failover");
    let m = mine(&[
        "-o",
        &pa,
        "-o",
        &pb,
        "-u",
        &user,
        "--backoff-min-ms",
        "100",
        "--backoff-max-s",
        "1",
        "--failback-s",
        "1",
    ]);
    m.wait("shares on the first pool", 60, |ev| accepted_on(ev, &pa) >= 3);
    assert_eq!(
        accepted_on(&m.snapshot(), &pb),
        0,
        "the second pool is for failover only"
    );

    // Kill the first pool: the miner moves to the second.
    drop(a);
    m.wait("shares on the second pool", 60, |ev| accepted_on(ev, &pb) >= 3);

    // Restart the first pool on the same port: while the second still works, the miner's failback
    // prober finds the first reachable again and switches back to it.
    let (_a2, addr_a2) = serve_at(da.path(), &addr_a.to_string(), DIFF, true);
    assert_eq!(addr_a2, addr_a);
    let before = accepted_on(&m.snapshot(), &pa);
    m.wait("shares on the restarted first pool", 60, |ev| {
        accepted_on(ev, &pa) >= before + 3
    });
    assert!(m
        .snapshot()
        .iter()
        .any(|e| is(e, "disconnected") && e["reason"].as_str().unwrap_or("").contains("switching back")));
    drop(b);

    let ev = m.stop();
    assert!(rejects(&ev).is_empty(), "rejected shares: {:?}", rejects(&ev));
    let connects: Vec<&str> = ev
        .iter()
        .filter(|e| is(e, "connected"))
        .map(|e| e["pool"].as_str().unwrap())
        .collect();
    assert_eq!(connects, vec![pa.as_str(), pb.as_str(), pa.as_str()]);
    let summary = ev.iter().find(|e| is(e, "summary")).unwrap();
    assert_eq!(
        (summary["rejected"].as_u64(), summary["stale"].as_u64()),
        (Some(0), Some(0))
    );
    eprintln!(
        "failover: {} accepted on A (before and after its restart), {} on B, 0 rejected",
        accepted_on(&ev, &pa),
        accepted_on(&ev, &pb)
    );
}

/// A scripted pool over a real socket: it answers the handshake, then misbehaves.
struct FakePool {
    listener: std::net::TcpListener,
}

struct FakeConn {
    r: BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
}

impl FakePool {
    fn accept(&self) -> FakeConn {
        self.listener.set_nonblocking(false).unwrap();
        let (s, _) = self.listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        FakeConn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }
}

impl FakeConn {
    fn send(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        self.w.write_all(line.as_bytes())?;
        self.w.write_all(b"\n")
    }
    /// The next request (None on EOF or error).
    fn next(&mut self) -> Option<Value> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&l).unwrap()),
        }
    }
    /// Answers requests until authorize; returns the extranonce1 handed out.
    fn handshake(&mut self) {
        loop {
            let v = self.next().expect("miner closed during the handshake");
            let id = v["id"].clone();
            match v["method"].as_str().unwrap() {
                "mining.configure" => self
                    .send(&serde_json::json!({"id": id, "result": {"version-rolling": true, "version-rolling.mask": "1fffe000"}, "error": null}).to_string())
                    .unwrap(),
                "mining.subscribe" => self
                    .send(&serde_json::json!({"id": id, "result": [[["mining.notify", "1"]], "0a0b0c0d", 4], "error": null}).to_string())
                    .unwrap(),
                "mining.authorize" => {
                    self.send(&serde_json::json!({"id": id, "result": true, "error": null}).to_string()).unwrap();
                    return;
                }
                _ => self.send(&serde_json::json!({"id": id, "result": true, "error": null}).to_string()).unwrap(),
            }
        }
    }
}

const PREV: &str = "4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000";

fn notify(job: &str, branch: Value, nbits: &str, clean: bool) -> String {
    serde_json::json!({"id": null, "method": "mining.notify", "params": [
        job, PREV, "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20020862062f503253482f04b8864e5008",
        "072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000",
        branch, "20000000", nbits, "504e86b9", clean]}).to_string()
}

/// Checks a submit the way a pool does, with `mining-core`: true iff it meets `difficulty`.
fn share_is_valid(params: &Value, difficulty: f64) -> bool {
    use mining_core::{prevhash_from_stratum, roll_version, BatchHasher, PreparedJob, ShareInput};
    let hex = |s: &str| stratum::parse_hex(s, 1 << 16).unwrap();
    let p = params.as_array().unwrap();
    let n: [u8; 32] = hex(PREV).try_into().unwrap();
    let job = PreparedJob::new(
        hex("01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20020862062f503253482f04b8864e5008"),
        hex("072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000"),
        vec![[0x11; 32], [0x22; 32]],
        0x2000_0000,
        prevhash_from_stratum(&n),
        0x1d00_ffff,
        0x504e_86b9,
    )
    .unwrap();
    let prefix = job.prefix(&[0x0a, 0x0b, 0x0c, 0x0d]);
    let en2 = hex(p[2].as_str().unwrap());
    let u = |i: usize| stratum::parse_hex_u32(p[i].as_str().unwrap()).unwrap();
    let version = roll_version(0x2000_0000, u(5), 0x1fff_e000).unwrap();
    let c = BatchHasher::new().hash_one(&ShareInput {
        job: &job,
        prefix: &prefix,
        en2: &en2,
        ntime: u(3),
        nonce: u(4),
        version,
    });
    en2.len() == 4 && c.meets(units::Difficulty::from_f64(difficulty).unwrap().to_target())
}

#[test]
fn a_misbehaving_pool_gets_reasons_and_reconnects_never_a_panic_or_an_unverified_share() {
    let pool = FakePool {
        listener: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    };
    let addr = pool.listener.local_addr().unwrap();
    let m = mine(&[
        "-o",
        &url(addr),
        "-u",
        "anyone",
        "--backoff-min-ms",
        "50",
        "--backoff-max-s",
        "1",
    ]);
    let mut c = pool.accept();
    c.handshake();
    let branch = serde_json::json!([hex32(0x11), hex32(0x22)]);
    // Garbage and malformed jobs first: each is dropped with a reason, none is mined.
    for bad in [
        "{".to_string(),
        "[1,2,3]".to_string(),
        r#"{"id":null,"method":"mining.notify","params":"x"}"#.to_string(),
        r#"{"id":null,"method":"mining.set_difficulty","params":[-1]}"#.to_string(),
        r#"{"id":null,"method":"mining.set_difficulty","params":["a lot"]}"#.to_string(),
        notify("1", serde_json::json!(["abc"]), "1d00ffff", true), // malformed branch
        notify("2", branch.clone(), "zz00ffff", true),             // malformed nbits
        notify("3", branch.clone(), "1d80ffff", true),             // nbits with the sign bit
        r#"{"id":77,"method":"mining.unknown_request","params":[]}"#.to_string(),
        r#"{"id":999,"result":true,"error":null}"#.to_string(),
    ] {
        c.send(&bad).unwrap();
    }
    c.send(r#"{"id":null,"method":"mining.set_difficulty","params":[0.0005]}"#)
        .unwrap();
    c.send(&notify("4", branch, "1d00ffff", true)).unwrap();
    // Every share that comes must be valid at 0.0005 for job 4.
    let mut valid = 0;
    while valid < 3 {
        let v = c.next().expect("miner closed");
        if v["method"] == "mining.submit" {
            assert_eq!(v["params"][1], "4", "a share for a job that was refused: {v}");
            assert!(
                share_is_valid(&v["params"], 0.0005),
                "unverified share submitted: {v}"
            );
            valid += 1;
            c.send(&serde_json::json!({"id": v["id"], "result": true, "error": null}).to_string())
                .unwrap();
        } else if !v["id"].is_null() && v["method"].is_string() {
            // e.g. the answer to our unknown request is a response, not a request; requests get `true`.
            c.send(&serde_json::json!({"id": v["id"], "result": true, "error": null}).to_string())
                .unwrap();
        }
    }
    m.wait("the bad jobs reported", 10, |ev| {
        ev.iter().filter(|e| is(e, "bad_job")).count() >= 1
    });
    // An oversized line: the miner drops the connection and reconnects.
    let huge = "a".repeat(300 * 1024);
    let _ = c.send(&huge);
    drop(c);
    let mut c2 = pool.accept();
    c2.handshake();
    // A line cut off by the pool closing: reconnect again.
    use std::io::Write;
    c2.w.write_all(br#"{"id":null,"method":"mining.notify","par"#)
        .unwrap();
    drop(c2);
    let mut c3 = pool.accept();
    c3.handshake();
    // client.reconnect naming another host: the miner reconnects to its configured pool.
    c3.send(r#"{"id":null,"method":"client.reconnect","params":["elsewhere.example",3333,0]}"#)
        .unwrap();
    let mut c4 = pool.accept();
    c4.handshake();
    let ev = m.stop();
    let disconnects: Vec<String> = ev
        .iter()
        .filter(|e| is(e, "disconnected"))
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        disconnects.iter().any(|r| r.contains("POOL_LINE_BYTES_MAX")),
        "{disconnects:?}"
    );
    assert!(
        disconnects.iter().any(|r| r.contains("closed")),
        "{disconnects:?}"
    );
    assert!(
        ev.iter().any(|e| is(e, "summary")),
        "the miner exits cleanly on SIGTERM"
    );
    let bad_jobs: Vec<&Value> = ev.iter().filter(|e| is(e, "bad_job")).collect();
    assert!(
        bad_jobs
            .iter()
            .any(|e| e["reason"].as_str().unwrap().contains("nbits")),
        "{bad_jobs:?}"
    );
}

fn hex32(b: u8) -> String {
    stratum::to_hex(&[b; 32])
}

/// A PostgreSQL server of this test's own (scripts/postgres.sh), so stopping it disturbs no other test.
struct OwnPostgres {
    url: String,
    env: Vec<(String, String)>,
}

impl OwnPostgres {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh")
    }
    fn start() -> Option<OwnPostgres> {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}' && pg_start >&2 && echo \"$CLOUDMINE_TEST_DATABASE_URL $PG_DIR $PG_BIN $PG_PORT\"",
                Self::script().display()
            ))
            .stderr(Stdio::inherit())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [url, dir, bin, port] = parts.as_slice() else {
            return None;
        };
        Some(OwnPostgres {
            url: (*url).to_string(),
            env: vec![
                ("PG_DIR".into(), (*dir).to_string()),
                ("PG_BIN".into(), (*bin).to_string()),
                ("PG_PORT".into(), (*port).to_string()),
            ],
        })
    }
    fn run(&self, f: &str) {
        let ok = Command::new("bash")
            .arg("-c")
            .arg(format!("source '{}' && {f}", Self::script().display()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .status()
            .unwrap()
            .success();
        assert!(ok, "{f} failed");
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!("source '{}' && pg_stop", Self::script().display()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .status();
    }
}

#[test]
fn postgres_stopped_and_restarted_under_load_loses_no_share() {
    let Some(pg) = OwnPostgres::start() else {
        assert!(
            std::env::var("CLOUDMINE_REQUIRE_POSTGRES").is_err(),
            "PostgreSQL is required (CLOUDMINE_REQUIRE_POSTGRES) but could not be started"
        );
        eprintln!("SKIPPED: PostgreSQL not available (run scripts/test.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (served, addr) = super::serve_with(
        dir.path(),
        "127.0.0.1:0",
        DIFF,
        true,
        &["--database-url", &pg.url],
    );
    let pool_url = format!("stratum+tcp://{addr}");
    let m = mine(&["-o", &pool_url, "-u", &format!("{ADDR}.pg")]);
    m.wait("shares before the outage", 60, |ev| {
        accepted_on(ev, &pool_url) >= 5
    });
    pg.run("pg_halt");
    let before = accepted_on(&m.snapshot(), &pool_url);
    // The pool keeps accepting (the share log is the buffer) while the ledger database is down.
    m.wait("shares during the outage", 60, |ev| {
        accepted_on(ev, &pool_url) >= before + 10
    });
    pg.run("pg_resume");
    let ev = m.stop();
    assert!(rejects(&ev).is_empty(), "rejected shares: {:?}", rejects(&ev));
    let accepted = accepted_on(&ev, &pool_url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (logged, window) = rt.block_on(wait_ingested(dir.path(), &pg.url, 60));
    let ingested = window.len();
    drop(served);
    assert!(logged >= accepted as i64);
    assert_eq!(
        ingested as i64, logged,
        "every logged share is in the ledger exactly once"
    );
    eprintln!("PostgreSQL outage: {accepted} shares accepted ({} during the outage), all {logged} in the ledger after restart", accepted - before);
}

/// A `p2wsh` regtest address, distinct per `b`.
pub(crate) fn p2wsh_addr(b: u8) -> String {
    bitcoin::Address::p2wsh(
        &bitcoin::ScriptBuf::from_bytes(vec![0x51, 0x01, b]),
        bitcoin::Network::Regtest,
    )
    .to_string()
}

/// `cloudmine ledger ARGS --json --data-dir DIR`, parsed.
fn ledger_cli(dir: &std::path::Path, args: &[&str]) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
        .arg("ledger")
        .args(args)
        .args(["--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()
}

/// `cloudmine serve` in pool mode (`--pool-address`, payouts off) with `extra` flags, and two
/// `cloudmine mine` workers, alice and bob, run until both have a positive balance of kind
/// `bucket(owner)` in the ledger; the miners are stopped (none may have a reject). Returns serve,
/// alice, bob, the ledger URL and a runtime.
fn pool_mode_until_both_credited(
    dir: &std::path::Path,
    extra: &[&str],
    bucket: fn(&str) -> ledger::Account,
) -> (Proc, String, String, String, tokio::runtime::Runtime) {
    let (pool_addr, alice, bob) = (p2wsh_addr(9), p2wsh_addr(1), p2wsh_addr(2));
    let mut flags = vec!["--payout-scheme", "pool", "--pool-address", &pool_addr];
    flags.extend(extra);
    let (served, stratum) = super::serve_with(dir, "127.0.0.1:0", DIFF, true, &flags);
    let pool_url = format!("stratum+tcp://{stratum}");
    let ma = mine(&["-o", &pool_url, "-u", &format!("{alice}.a")]);
    let mb = mine(&["-o", &pool_url, "-u", &format!("{bob}.b")]);
    let ledger_url = dir.join("ledger.sqlite").to_string_lossy().into_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let seen = match ledger::Ledger::open(&ledger_url).await {
                Ok(l) => {
                    let a = l.balance(&bucket(&alice)).await.unwrap_or(0);
                    let b = l.balance(&bucket(&bob)).await.unwrap_or(0);
                    let work = l.work_high_water("pool").await;
                    l.close().await;
                    if a > 0 && b > 0 {
                        return;
                    }
                    format!("alice {a}, bob {b}, work log at {work:?}")
                }
                Err(e) => format!("ledger: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "no credits for both miners within 120 s ({seen})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let (ea, eb) = (ma.stop(), mb.stop());
    // The share difficulty is capped at the network's, so on the young dev chain every share is a
    // block: the other miner's block makes shares in flight stale (21). Nothing else may be refused.
    let not_stale = |ev: &[Value]| -> Vec<Value> {
        rejects(ev)
            .into_iter()
            .filter(|e| e["reason"] != "Job not found")
            .cloned()
            .collect()
    };
    assert!(
        not_stale(&ea).is_empty() && not_stale(&eb).is_empty(),
        "{:?} {:?}",
        not_stale(&ea),
        not_stale(&eb)
    );
    (served, alice, bob, ledger_url, rt)
}

#[test]
fn two_miners_in_pool_mode_are_credited_pplns_and_the_books_balance() {
    let dir = tempfile::tempdir().unwrap();
    // Mine until the dev chain has accepted blocks from both (it refuses blocks that come faster than
    // its clock allows, so count credits in the ledger, not block candidates).
    let (served, alice, bob, ledger_url, rt) = pool_mode_until_both_credited(
        dir.path(),
        &["--pool-fee-ppm", "20000"],
        ledger::Account::immature,
    );
    // Wait until every accepted block is credited, then read the books through the CLI.
    rt.block_on(async {
        let (log, _w) = pool::share_log::ShareLog::open(&dir.path().join("pool.sqlite"))
            .await
            .unwrap();
        let accepted = log
            .blocks()
            .await
            .unwrap()
            .iter()
            .filter(|(_, f)| f == "accepted")
            .count();
        let l = ledger::Ledger::open(&ledger_url).await.unwrap();
        let mined = ledger::Account::Platform(ledger::PlatformAccount::Mined);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let h = l.history(&mined, 10_000).await.unwrap();
            if h.len() >= accepted {
                l.close().await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {accepted} blocks credited",
                h.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Stop serve (and its accounting) before reading the books, so nothing is credited mid-read.
    drop(served);
    let (credited, total) = rt.block_on(async {
        let l = ledger::Ledger::open(&ledger_url).await.unwrap();
        let h = l
            .history(&ledger::Account::Platform(ledger::PlatformAccount::Mined), 10_000)
            .await
            .unwrap();
        l.close().await;
        (h.len(), h.iter().map(|x| -x.msat).sum::<i64>())
    });
    let cli = |args: &[&str]| ledger_cli(dir.path(), args);
    let v = cli(&["verify"]);
    assert_eq!(v["ok"], true, "{v}");
    let imm = |who: &str| {
        cli(&["balance", who])["balances_msat"]["user/".to_string() + who + "/immature"]
            .as_i64()
            .unwrap_or(0)
    };
    let (a, b) = (imm(&alice), imm(&bob));
    let fees = cli(&["balance", "platform/fees"])["balances_msat"]["platform/fees"]
        .as_i64()
        .unwrap();
    assert!(a > 0 && b > 0, "both miners were credited: alice {a}, bob {b}");
    assert_eq!(
        a + b + fees,
        total,
        "every msat of {credited} blocks is accounted for"
    );
    assert_eq!(fees, total / 50, "2 % of 50 BTC per block, exactly");
    eprintln!("pool mode, two cloudmine mine processes: {credited} blocks credited PPLNS: alice {a}, bob {b}, fees {fees} msat; ledger verify ok");
}

#[test]
fn two_miners_in_pps_mode_are_paid_per_share_at_once_and_the_books_balance() {
    let dir = tempfile::tempdir().unwrap();
    // PPS pays every share at once: both available balances grow without waiting for any block.
    let (served, alice, bob, _, rt) = pool_mode_until_both_credited(
        dir.path(),
        &["--sharing", "pps", "--pool-fee-ppm", "20000"],
        ledger::Account::available,
    );
    // Let accounting credit every logged share, then stop serve before reading the books.
    rt.block_on(super::wait_pps_credited(dir.path()));
    drop(served);
    let cli = |args: &[&str]| ledger_cli(dir.path(), args);
    assert_eq!(cli(&["verify"])["ok"], true);
    let available = |who: &str| {
        cli(&["balance", who])["balances_msat"][format!("user/{who}/available")]
            .as_i64()
            .unwrap_or(0)
    };
    let (a, b) = (available(&alice), available(&bob));
    let reserve = cli(&["balance", "platform/pool-reserve"])["balances_msat"]["platform/pool-reserve"]
        .as_i64()
        .unwrap_or(0);
    let mined = -cli(&["balance", "platform/mined"])["balances_msat"]["platform/mined"]
        .as_i64()
        .unwrap_or(0);
    assert!(a > 0 && b > 0, "alice {a}, bob {b}");
    assert_eq!(
        a + b + reserve,
        mined,
        "paid per share + reserve = mined, to the msat"
    );
    eprintln!("PPS, two cloudmine mine processes: alice {a}, bob {b} msat available; reserve {reserve}, mined {mined}; ledger verify ok");
}

/// `GET path` from serve's HTTP API, as JSON (blocking; for the synchronous process tests).
fn get_json(http: &str, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let body = buf.split_once("\r\n\r\n").map_or("", |x| x.1);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {buf}"))
}

/// `serve` with its defaults (no difficulty flags; only the listen addresses are made free ports)
/// and `cloudmine mine -t 1` with none either: the first share is accepted within 10 s of the
/// miner's start and the dev chain grows within 20 s. Run twice: on a fresh dev chain (its minimum
/// difficulty) and on one that real mining made harder (the newcomer's second run).
fn first_minute(harden: bool) {
    let dir = tempfile::tempdir().unwrap();
    if harden {
        let mut c = devchain::DevChain::open(dir.path(), 30).unwrap();
        let script = bitcoin::ScriptBuf::new_op_return([]);
        let mut t = chain::dev::now().saturating_sub(600);
        // blocks 1 s apart: about half a bit harder each, to a difficulty where a CPU thread needs
        // well over a second per block
        while units::Difficulty::from_target(units::Target::from_compact(c.next_bits()).unwrap()).to_f64()
            < 0.002
        {
            t += 1;
            let b = c.generate_block(&script, t, u32::MAX).unwrap();
            c.submit_block(b, t).unwrap();
        }
    }
    let (_served, stratum, before) = super::spawn_env(
        &[
            "serve",
            "--stratum-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
        "cloudmine pool: stratum+tcp://",
        &[],
    );
    let http = before
        .iter()
        .find_map(|l| l.strip_prefix("HTTP API on http://"))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let height0 = get_json(&http, "/api/v1/pool")["height"].as_u64().unwrap();
    let started = Instant::now();
    let pool = format!("stratum+tcp://{stratum}");
    let m = mine(&["-o", &pool, "-u", &format!("{ADDR}.cpu")]);
    m.wait("the first accepted share", 10, |ev| accepted_on(ev, &pool) >= 1);
    let first = started.elapsed();
    let deadline = started + Duration::from_secs(20);
    loop {
        let h = get_json(&http, "/api/v1/pool")["height"].as_u64().unwrap();
        if h > height0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dev chain still at height {h} 20 s after the miner started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let grew = started.elapsed();
    let p = get_json(&http, "/api/v1/pool");
    assert!(p["hashrate_hps"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["hashrate_window_s"].as_f64().unwrap() <= 60.0, "{p}");
    eprintln!(
        "first minute (hardened {harden}): first share after {first:?}, chain grew after {grew:?}; {p}"
    );
    m.stop();
}

#[test]
fn first_minute_on_a_fresh_dev_chain_with_defaults() {
    first_minute(false);
}

#[test]
fn first_minute_on_a_hardened_dev_chain_with_defaults() {
    first_minute(true);
}

/// `serve --share-log-max-mb 1` (as on a full disk): once the share log is full, `cloudmine mine`
/// sees its shares refused with the reason, never acknowledged, and every share it saw accepted is
/// in the share log.
#[test]
fn a_share_log_at_its_size_cap_refuses_shares_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (served, addr) = super::serve_with(
        dir.path(),
        "127.0.0.1:0",
        "0.00001", // pinned: a few hundred shares a second fill 1 MiB in seconds
        true,
        &["--share-log-max-mb", "1"],
    );
    let m = mine(&[
        "-o",
        &format!("stratum+tcp://{addr}"),
        "-u",
        &format!("{}.full", p2wsh_addr(1)),
    ]);
    m.wait("a share refused for a full share log", 120, |ev| {
        ev.iter().any(|e| {
            is(e, "share")
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("Pool storage full"))
        })
    });
    let ev = m.stop();
    drop(served);
    let accepted = ev
        .iter()
        .filter(|e| is(e, "share") && e["result"] == "accepted")
        .count() as i64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let logged = rt.block_on(async {
        let (log, _w) = pool::share_log::ShareLog::open(&dir.path().join("pool.sqlite"))
            .await
            .unwrap();
        log.share_count().await.unwrap()
    });
    assert!(accepted > 0);
    assert!(
        logged >= accepted,
        "{accepted} shares acknowledged, {logged} in the share log"
    );
    let size = std::fs::metadata(dir.path().join("pool.sqlite")).unwrap().len();
    assert!(
        size <= 1024 * 1024,
        "the database grew to {size} bytes past its 1 MiB cap"
    );
}
