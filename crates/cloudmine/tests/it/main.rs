//! Real-process tests of the `cloudmine` binary: a dev chain node killed with SIGKILL while blocks are
//! being submitted keeps every block it acknowledged.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use core_rpc::gbt::GbtResult;
use core_rpc::{Auth, RpcClient};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::zombie_processes)] // the child is killed and waited for in Node's Drop, on every path
fn start(dir: &std::path::Path) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
        .args([
            "node",
            "--dev-rpc-listen",
            "127.0.0.1:0",
            "--dev-rpc-auth",
            "u:p",
            "--data-dir",
        ])
        .arg(dir)
        .env("CLOUDMINE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "node did not start");
        let line = lines.next().expect("node exited before listening").unwrap();
        if let Some(rest) = line.strip_prefix("JSON-RPC listening on ") {
            let url = rest.split_whitespace().next().unwrap().to_string();
            // keep draining stdout so the child never blocks on a full pipe
            std::thread::spawn(move || for _ in lines {});
            return Node {
                child,
                url: format!("{url}/"),
            };
        }
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
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
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
    node.child.kill().unwrap();
    node.child.wait().unwrap();
}
