//! Real-process tests of the `cloudmine` binary: a dev chain node killed with SIGKILL while blocks are
//! being submitted keeps every block it acknowledged; `cloudmine serve` killed under load keeps every
//! acknowledged share; `cloudmine mine` against real `cloudmine serve` processes ([`mine`]).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use core_rpc::gbt::GbtResult;
use core_rpc::{Auth, RpcClient};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod mine;
mod payouts;

struct Node {
    child: Proc,
    url: String,
}

/// Starts `cloudmine ARGS --data-dir DIR` and reads stdout until a line starting with `ready`; returns
/// the process (killed and reaped on drop) and the rest of that line's first word.
#[allow(clippy::zombie_processes)] // the child is killed and waited for in Proc's Drop, on every path
fn spawn(args: &[&str], dir: &std::path::Path, ready: &str) -> (Proc, String) {
    let (p, w, _) = spawn_env(args, dir, ready, &[]);
    (p, w)
}

/// [`spawn`] with extra environment variables; also returns the lines printed before the ready line.
#[allow(clippy::zombie_processes)] // the child is killed and waited for in Proc's Drop, on every path
fn spawn_env(
    args: &[&str],
    dir: &std::path::Path,
    ready: &str,
    env: &[(&str, &str)],
) -> (Proc, String, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudmine"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("CLOUDMINE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut before = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "cloudmine {} did not start", args[0]);
        let line = lines
            .next()
            .expect("cloudmine exited before it was ready")
            .unwrap();
        if let Some(rest) = line.strip_prefix(ready) {
            let word = rest.split_whitespace().next().unwrap().to_string();
            // keep draining stdout so the child never blocks on a full pipe
            std::thread::spawn(move || for _ in lines {});
            return (Proc(child), word, before);
        }
        before.push(line);
    }
}

/// A child process, killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path) -> Node {
    let (proc, url) = spawn(
        &["node", "--dev-rpc-listen", "127.0.0.1:0", "--dev-rpc-auth", "u:p"],
        dir,
        "JSON-RPC listening on ",
    );
    Node {
        child: proc,
        url: format!("{url}/"),
    }
}

fn client(n: &Node) -> RpcClient {
    RpcClient::new(&n.url, Auth::UserPass("u".into(), "p".into()))
        .unwrap()
        .with_timeout(Duration::from_secs(10))
}

/// Mines one block through the node's own RPC: template -> brute force -> submitblock. Block times are
/// spaced exactly one interval apart in the past, so difficulty stays at the floor. Returns the hash if
/// the node acknowledged it (submitblock returned null).
async fn mine_one(c: &RpcClient) -> Option<String> {
    let v = c
        .call("getblocktemplate", json!([{"rules": ["segwit"]}]))
        .await
        .ok()?;
    let mut t = serde_json::from_value::<GbtResult>(v)
        .ok()?
        .into_template()
        .ok()?;
    t.cur_time = 1_700_000_000 + t.height * 30;
    let script = bitcoin::ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array_compat([3; 20]));
    let block = devchain::chain::mine_template(&t, &script, 1_000_000)?;
    let hex = bitcoin::consensus::serialize(&block)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    match c.call("submitblock", json!([hex])).await {
        Ok(Value::Null) => Some(block.block_hash().to_string()),
        _ => None,
    }
}

trait FromBytes {
    fn from_byte_array_compat(b: [u8; 20]) -> Self;
}
impl FromBytes for bitcoin::WPubkeyHash {
    fn from_byte_array_compat(b: [u8; 20]) -> Self {
        use bitcoin::hashes::Hash;
        bitcoin::WPubkeyHash::from_byte_array(b)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_block_submission_loses_no_acknowledged_block() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    for round in 0..3u64 {
        let mut node = start(dir.path());
        let c = client(&node);
        let before = c
            .call("getblockcount", json!([]))
            .await
            .unwrap()
            .as_u64()
            .unwrap();
        // every block acknowledged in earlier rounds is still there
        let so_far: Vec<String> = acked.lock().unwrap().clone();
        for h in &so_far {
            c.call("getblockheader", json!([h]))
                .await
                .unwrap_or_else(|e| panic!("acknowledged block {h} lost: {e}"));
        }
        assert!(before as usize >= acked.lock().unwrap().len());
        // submit blocks from a background task while we kill the node at an arbitrary moment
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(h) = mine_one(&c).await {
                        acked.lock().unwrap().push(h);
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(700 + 400 * round)).await;
        node.child.0.kill().unwrap(); // SIGKILL
        node.child.0.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        task.await.unwrap();
    }
    let n = acked.lock().unwrap().len();
    assert!(n >= 5, "too few blocks were mined to prove anything ({n})");
    let mut node = start(dir.path());
    let c = client(&node);
    let count = c
        .call("getblockcount", json!([]))
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(count as usize >= n, "height {count} < acknowledged {n}");
    let all: Vec<String> = acked.lock().unwrap().clone();
    for h in &all {
        let hd = c.call("getblockheader", json!([h])).await.unwrap();
        assert!(hd["confirmations"].as_i64().unwrap() >= 1);
    }
    eprintln!("{n} acknowledged blocks across 3 SIGKILLs, all present at height {count}");
    node.child.0.kill().unwrap();
    node.child.0.wait().unwrap();
}

/// Starts `cloudmine serve` on free ports at the minimum difficulty; returns the process and the Stratum address.
fn serve(dir: &std::path::Path) -> (Proc, std::net::SocketAddr) {
    serve_at(dir, "127.0.0.1:0", "0.0000000003", false)
}

/// Starts `cloudmine serve` with Stratum on `listen`, starting at `difficulty` (and held there if `pin`).
fn serve_at(
    dir: &std::path::Path,
    listen: &str,
    difficulty: &str,
    pin: bool,
) -> (Proc, std::net::SocketAddr) {
    serve_with(dir, listen, difficulty, pin, &[])
}

/// [`serve_at`] with extra flags.
fn serve_with(
    dir: &std::path::Path,
    listen: &str,
    difficulty: &str,
    pin: bool,
    extra: &[&str],
) -> (Proc, std::net::SocketAddr) {
    let mut args = vec![
        "serve",
        "--stratum-listen",
        listen,
        "--http-listen",
        "127.0.0.1:0",
        "--status-interval",
        "0",
        "--start-difficulty",
        difficulty,
        "--min-difficulty",
        difficulty,
    ];
    if pin {
        args.extend(["--max-difficulty", difficulty]);
    }
    args.extend(extra);
    let (proc, addr) = spawn(&args, dir, "cloudmine pool: stratum+tcp://");
    (proc, addr.parse().unwrap())
}

/// Waits (at most 60 s) until the PPS cursor in `dir`'s ledger reaches the newest share of its share
/// log; returns the share log and that share's id.
async fn wait_pps_credited(dir: &std::path::Path) -> (pool::share_log::ShareLog, i64) {
    let (log, _w) = pool::share_log::ShareLog::open(&dir.join("pool.sqlite"))
        .await
        .unwrap();
    let (max_id,): (i64,) = sqlx::query_as("SELECT MAX(id) FROM shares")
        .fetch_one(log.db())
        .await
        .unwrap();
    let l = ledger::Ledger::open(&dir.join("ledger.sqlite").to_string_lossy())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pool::accounting::pps_cursor(&l).await.unwrap() < max_id {
        assert!(Instant::now() < deadline, "PPS crediting stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    l.close().await;
    (log, max_id)
}

/// Test miners submitting shares one at a time to the pool at `addr` (one per user) until `stop`
/// or until the pool goes away; the header of every share answered `true` goes into `acked`.
fn submitters(
    addr: std::net::SocketAddr,
    users: Vec<String>,
    acked: &Arc<Mutex<Vec<Vec<u8>>>>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use test_support::{verdict, Miner};
    users
        .into_iter()
        .map(|user| {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut m = Miner::connect(addr).await;
                m.handshake(&user).await;
                let mut id = 10u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (p, header) = m.find_share(&user, false);
                    id += 1;
                    // the pool may die at any moment: only a `true` reply counts
                    if !m
                        .send_or_eof(&json!({"id": id, "method": "mining.submit", "params": p}).to_string())
                        .await
                    {
                        return;
                    }
                    let Some(r) = m.next_reply_or_eof().await else {
                        return;
                    };
                    if verdict(&r).is_ok() {
                        acked.lock().unwrap().push(header.to_vec());
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_under_load_loses_no_acknowledged_share_or_block() {
    const ADDR: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    for round in 0..2u64 {
        let (mut served, addr) = serve(dir.path());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let users = (0..3).map(|w| format!("{ADDR}.w{w}")).collect();
        let tasks = submitters(addr, users, &acked, &stop);
        tokio::time::sleep(Duration::from_millis(1500 + 700 * round)).await;
        served.0.kill().unwrap(); // SIGKILL under load
        served.0.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 5,
        "too few acknowledged shares to prove anything: {}",
        acked.len()
    );
    // Read the share log the killed process left behind.
    let (log, _w) = pool::share_log::ShareLog::open(&dir.path().join("pool.sqlite"))
        .await
        .unwrap();
    let logged: std::collections::HashSet<Vec<u8>> = log.headers().await.unwrap().into_iter().collect();
    let missing = acked.iter().filter(|h| !logged.contains(*h)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged shares lost",
        acked.len()
    );
    // Every block the log says the chain accepted is in the chain after restart.
    let blocks = log.blocks().await.unwrap();
    let chain = devchain::DevChain::open(dir.path(), 30).unwrap();
    let accepted: Vec<_> = blocks.iter().filter(|(_, f)| f == "accepted").collect();
    for (hash, _) in &accepted {
        let h: bitcoin::BlockHash = hash.parse().unwrap();
        assert!(
            chain.by_hash(&h).is_some(),
            "accepted block {hash} missing after kill -9"
        );
    }
    eprintln!(
        "{} acknowledged shares and {} accepted blocks across 2 SIGKILLs of `cloudmine serve`, all present",
        acked.len(),
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_in_pps_mode_pays_every_acknowledged_share_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let pool_addr = mine::p2wsh_addr(9);
    let owners = [mine::p2wsh_addr(1), mine::p2wsh_addr(2)];
    let pps = [
        "--payout-scheme",
        "pool",
        "--pool-address",
        pool_addr.as_str(),
        "--sharing",
        "pps",
        "--pool-fee-ppm",
        "10000",
    ];
    let acked: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    for round in 0..3u64 {
        let (mut served, stratum) = serve_with(dir.path(), "127.0.0.1:0", "0.0000000003", false, &pps);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let users = owners.iter().map(|o| format!("{o}.w")).collect();
        let tasks = submitters(stratum, users, &acked, &stop);
        tokio::time::sleep(Duration::from_millis(1200 + 500 * round)).await;
        served.0.kill().unwrap(); // SIGKILL while shares are being credited
        served.0.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    // A last start without load lets accounting catch up from where the killed ones left it.
    let (log, max_id) = {
        let (_served, _) = serve_with(dir.path(), "127.0.0.1:0", "0.0000000003", false, &pps);
        wait_pps_credited(dir.path()).await
    };
    let ledger_url = dir.path().join("ledger.sqlite").to_string_lossy().into_owned();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 5, "too few acknowledged shares: {}", acked.len());
    let logged: std::collections::HashSet<Vec<u8>> = log.headers().await.unwrap().into_iter().collect();
    assert!(
        acked.iter().all(|h| logged.contains(h)),
        "an acknowledged share was lost"
    );
    // Every logged share is in exactly one pps: range, and each range paid exactly its shares' value.
    let l = ledger::Ledger::open(&ledger_url).await.unwrap();
    let reserve = ledger::Account::Platform(ledger::PlatformAccount::PoolReserve);
    let mut next = 1;
    let mut paid = std::collections::BTreeMap::<String, i64>::new();
    for line in l.history(&reserve, 100_000).await.unwrap().iter().rev() {
        let Some(range) = line.key.strip_prefix("pps:") else {
            continue;
        };
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (i64, i64) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(a, next, "ranges are contiguous and never overlap: {}", line.key);
        next = b + 1;
        let want = test_support::pps_expected(log.db(), a, b, 10_000, false).await;
        let got: std::collections::BTreeMap<String, u128> = l
            .postings_of(&line.key)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|(n, m)| {
                let o = n.strip_prefix("user/")?.strip_suffix("/available")?;
                Some((o.to_string(), u128::try_from(m).ok()?))
            })
            .collect();
        assert_eq!(got, want, "{}", line.key);
        for (o, m) in got {
            *paid.entry(o).or_default() += i64::try_from(m).unwrap();
        }
    }
    assert_eq!(next, max_id + 1, "every logged share credited");
    for o in &owners {
        assert_eq!(l.balance(&ledger::Account::available(o)).await.unwrap(), paid[o]);
    }
    assert!(l.verify().await.unwrap().problems.is_empty());
    eprintln!(
        "PPS across 3 SIGKILLs of `cloudmine serve`: {} acknowledged shares, {max_id} logged, each credited exactly once",
        acked.len()
    );
}

#[tokio::test]
async fn ledger_cli_reads_balances_history_and_verifies() {
    use ledger::{Account, Ledger, PlatformAccount, Transaction};
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open(&dir.path().join("ledger.sqlite").to_string_lossy())
        .await
        .unwrap();
    let m = |n| units::MilliSats::new(n).unwrap();
    l.post(
        &Transaction::transfer(
            "b1",
            "block 1",
            Account::Platform(PlatformAccount::Mined),
            Account::available("alice"),
            m(1_500),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    l.post(
        &Transaction::transfer(
            "p1",
            "pay",
            Account::available("alice"),
            Account::immature("alice"),
            m(500),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    l.close().await;
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
            .arg("ledger")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (code, out) = run(&["balance", "alice", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["balances_msat"]["user/alice/available"], 1_000);
    assert_eq!(v["balances_msat"]["user/alice/immature"], 500);
    let (_, out) = run(&["history", "alice", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["history"][0]["msat"], -500);
    assert_eq!(v["history"][1]["key"], "b1");
    let (code, out) = run(&["verify"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 transactions, 4 entries"), "{out}");
    // Tamper with a balance behind the ledger's back: verify fails with exit status 1.
    let p = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("ledger.sqlite").display()
    ))
    .await
    .unwrap();
    sqlx::query(
        "UPDATE ledger_accounts SET balance_msat = balance_msat + 1 WHERE name = 'user/alice/available'",
    )
    .execute(&p)
    .await
    .unwrap();
    p.close().await;
    let (code, out) = run(&["verify"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("PROBLEM: account user/alice/available: balance 1001 msat"),
        "{out}"
    );
}

/// serve's dev RPC cookie is readable by its owner alone and is removed at a graceful stop.
#[test]
fn serve_writes_its_rpc_cookie_0600_and_removes_it_on_stop() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // an older cookie with wide permissions is tightened, not reused as it was
    std::fs::write(dir.path().join(".cookie"), "old").unwrap();
    std::fs::set_permissions(dir.path().join(".cookie"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (mut p, _) = spawn(
        &[
            "serve",
            "--stratum-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--dev-rpc-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
        "cloudmine pool: stratum+tcp://",
    );
    let meta = std::fs::metadata(dir.path().join(".cookie")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(dir.path().join(".cookie"))
        .unwrap()
        .starts_with("__cookie__:"));
    let pid = p.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.path().join(".cookie").exists(), "cookie left behind");
}

/// A `--connections-max` that cannot fit beside the databases and RPC sockets under the open-files
/// limit is refused at start with the numbers, never found out at the 19,000th accept.
#[test]
fn serve_refuses_a_connection_cap_the_open_files_limit_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
        .args([
            "serve",
            "--stratum-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--connections-max", "100000000", "--data-dir"])
        .arg(dir.path())
        .env("CLOUDMINE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--connections-max 100000000 does not fit the open-files limit"),
        "{err}"
    );
}
