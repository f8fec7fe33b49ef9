//! Pool mode end to end with real processes: `cloudmine serve` (PPLNS, 1 % fee, coinbases paying the
//! pool wallet), two `cloudmine mine` workers on different addresses, blocks found and buried 100
//! deep, balances paid on chain in one batched transaction, and the serve process killed (abort, like
//! `kill -9`) between recording the payout and broadcasting it: after the restart the same
//! transaction is broadcast and confirmed, and every payee is paid exactly once.
//!
//! And PPLNS with coinbase payouts (`--coinbase-payees 1`): the pool's blocks pay a miner directly
//! in their coinbase, the other accrues and is paid by a batched transaction; chain and books agree.
//! A credited block orphaned through the dev chain's `invalidateblock` RPC has its credit reversed
//! by the running pool; `cloudmine ledger import-psbt` records an externally signed payout once.

use super::{spawn_env, Proc};
use core_rpc::{Auth, RpcClient};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ALICE: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

struct Served {
    proc: Proc,
    stratum: String,
    http: String,
    rpc: RpcClient,
}

fn serve(dir: &std::path::Path, failpoint: Option<&str>) -> Served {
    serve_with(dir, failpoint, &[])
}

fn serve_with(dir: &std::path::Path, failpoint: Option<&str>, extra: &[&str]) -> Served {
    let env: Vec<(&str, &str)> = failpoint
        .map(|f| vec![("CLOUDMINE_FAILPOINT", f)])
        .unwrap_or_default();
    let mut args = vec![
        "serve",
        "--stratum-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--status-interval",
        "0",
        "--start-difficulty",
        "0.001",
        "--min-difficulty",
        "0.001",
        "--payout-scheme",
        "pool",
        "--sharing",
        "pplns",
        "--pool-fee-ppm",
        "10000",
        "--dev-rpc-listen",
        "127.0.0.1:0",
        "--dev-rpc-auth",
        "u:p",
        "--payout-threshold-sat",
        "1000",
        "--payout-interval-s",
        "1",
        "--payout-confirmations",
        "1",
    ];
    args.extend_from_slice(extra);
    let (proc, stratum, before) = spawn_env(&args, dir, "cloudmine pool: stratum+tcp://", &env);
    let find = |prefix: &str| {
        before
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no '{prefix}' line in {before:?}"))
            .to_string()
    };
    let rpc_url = format!("{}/", find("dev chain JSON-RPC on "));
    Served {
        proc,
        stratum,
        http: find("HTTP API on http://"),
        rpc: RpcClient::new(&rpc_url, Auth::UserPass("u".into(), "p".into()))
            .unwrap()
            .with_timeout(Duration::from_secs(30)),
    }
}

fn miner(stratum: &str, user: &str) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
        .args(["mine", "-o", &format!("stratum+tcp://{stratum}"), "-u", user])
        .args(["--quiet", "-t", "1"])
        .env("CLOUDMINE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc(child)
}

async fn http_get(addr: &str, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, secs: u64, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Mines `n` blocks through RPC, each 120 s after the last by the node's mock clock (slower than the
/// 30 s target, so whatever difficulty the miners drove the chain to decays back to the floor).
async fn bury(rpc: &RpcClient, n: u32) {
    let bury_to = payouts::Wallet::from_secret(&[9; 32])
        .unwrap()
        .address(bitcoin::Network::Regtest)
        .to_string();
    let info = rpc.call("getblockchaininfo", json!([])).await.unwrap();
    let mut t = info["time"].as_u64().unwrap();
    for _ in 0..n {
        t += 120;
        rpc.call("setmocktime", json!([t])).await.unwrap();
        let v = rpc.call("generatetoaddress", json!([1, bury_to])).await.unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(1), "block not generated: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pplns_pool_pays_two_miners_in_one_transaction_exactly_once_across_a_crash_mid_payout() {
    let bob = payouts::Wallet::from_secret(&[2; 32])
        .unwrap()
        .address(bitcoin::Network::Regtest)
        .to_string();
    let bob = bob.as_str();
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path(), Some("payout-recorded"));
    // 1. Two miners until each has at least one block credit (immature).
    let ma = miner(&s.stratum, &format!("{ALICE}.a"));
    let mb = miner(&s.stratum, &format!("{bob}.b"));
    let http = s.http.clone();
    wait_for("both miners credited for a block", 120, || {
        let http = http.clone();
        async move {
            let a = http_get(&http, &format!("/api/v1/ledger/{ALICE}/blocks")).await;
            let b = http_get(&http, &format!("/api/v1/ledger/{bob}/blocks")).await;
            a["blocks"].as_array().is_some_and(|v| !v.is_empty())
                && b["blocks"].as_array().is_some_and(|v| !v.is_empty())
        }
    })
    .await;
    drop(ma);
    drop(mb);
    // 2. Bury them 100 deep: credits mature, the payout round records a payout and the process
    //    aborts before broadcasting it.
    bury(&s.rpc, 101).await;
    let mut proc = s.proc;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = proc.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "serve never reached the payout failpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "serve aborted at the failpoint: {status:?}");
    // The payout is in the ledger, in flight, and was never broadcast.
    let crashed: String;
    let ledger_path = dir.path().join("ledger.sqlite");
    {
        let l = ledger::Ledger::open(&ledger_path.to_string_lossy())
            .await
            .unwrap();
        let p = l.payouts(None, 10).await.unwrap();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].state, ledger::PayoutState::InFlight);
        crashed = p[0].txid.to_string();
        let owners: Vec<&str> = p[0].lines.iter().map(|x| x.owner.as_str()).collect();
        assert!(
            owners.contains(&ALICE) && owners.contains(&bob),
            "one batch pays both: {owners:?}"
        );
        l.close().await;
    }
    // 3. Restart without the failpoint: the recorded transaction is broadcast and confirmed. (Blocks
    //    that matured after that round, if the miners' blocks span several heights, are paid by later
    //    rounds: each balance once.)
    let s = serve(dir.path(), None);
    tokio::time::sleep(Duration::from_secs(3)).await; // one settle pass re-broadcasts it
    let http = s.http.clone();
    let mut settled = false;
    for _ in 0..20 {
        bury(&s.rpc, 1).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let a = http_get(&http, &format!("/api/v1/ledger/{ALICE}/payouts")).await;
        let b = http_get(&http, &format!("/api/v1/ledger/{bob}/payouts")).await;
        let all_confirmed = |v: &Value| {
            v["payouts"]
                .as_array()
                .is_some_and(|p| !p.is_empty() && p.iter().all(|x| x["state"] == "confirmed"))
        };
        if all_confirmed(&a) && all_confirmed(&b) {
            settled = true;
            break;
        }
    }
    assert!(settled, "payouts not all confirmed");
    let a = http_get(&s.http, &format!("/api/v1/ledger/{ALICE}/payouts")).await;
    let b = http_get(&s.http, &format!("/api/v1/ledger/{bob}/payouts")).await;
    let txids = |v: &Value| -> Vec<String> {
        v["payouts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["txid"].as_str().unwrap().to_string())
            .collect()
    };
    let (ta, tb) = (txids(&a), txids(&b));
    assert!(
        ta.contains(&crashed) && tb.contains(&crashed),
        "the crashed batch paid both: {a} {b}"
    );
    let mut ledger_txids: Vec<String> = ta.iter().chain(tb.iter()).cloned().collect();
    ledger_txids.sort();
    ledger_txids.dedup();
    drop(s);
    // 4. The chain and the books, read from the files the processes left.
    let chain = devchain::DevChain::open(dir.path(), 30).unwrap();
    let (wallet, created) = payouts::keyfile::load_or_create(&dir.path().join("wallet.key")).unwrap();
    assert!(!created);
    let spk = |a: &str| {
        a.parse::<bitcoin::Address<_>>()
            .unwrap()
            .assume_checked()
            .script_pubkey()
    };
    let (sa, sb) = (spk(ALICE), spk(bob));
    let mut paying = Vec::new();
    let mut pool_coinbases = 0;
    for h in 1..=chain.height() {
        let b = &chain.at_height(h).unwrap().block;
        if b.txdata[0]
            .output
            .iter()
            .any(|o| o.script_pubkey == *wallet.script())
        {
            pool_coinbases += 1;
        }
        for tx in b.txdata.iter().skip(1) {
            let outs: Vec<(bool, bool, u64)> = tx
                .output
                .iter()
                .map(|o| (o.script_pubkey == sa, o.script_pubkey == sb, o.value.to_sat()))
                .collect();
            if outs.iter().any(|(a, b, _)| *a || *b) {
                paying.push((tx.compute_txid().to_string(), outs));
            }
        }
    }
    let mut chain_txids: Vec<String> = paying.iter().map(|p| p.0.clone()).collect();
    chain_txids.sort();
    assert_eq!(
        chain_txids, ledger_txids,
        "the chain pays the miners exactly in the ledger's payouts, each once: {paying:?}"
    );
    assert!(pool_coinbases >= 2, "the pool's blocks pay the pool wallet");
    // The CLI shows the same payout.
    let out = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
        .args(["ledger", "--data-dir"])
        .arg(dir.path())
        .args(["--json", "payouts"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli = v["payouts"].as_array().unwrap();
    assert_eq!(cli.len(), ledger_txids.len(), "{v}");
    assert!(cli.iter().all(|x| x["state"] == "confirmed"), "{v}");
    assert!(cli.iter().any(|x| x["txid"] == crashed.as_str()), "{v}");
    let l = ledger::Ledger::open(&ledger_path.to_string_lossy())
        .await
        .unwrap();
    assert!(l.verify().await.unwrap().problems.is_empty());
    let bal = |a: ledger::Account| {
        let l = &l;
        async move { l.balance(&a).await.unwrap() }
    };
    use ledger::{Account, PlatformAccount};
    let mined = -bal(Account::Platform(PlatformAccount::Mined)).await;
    let fees = bal(Account::Platform(PlatformAccount::Fees)).await;
    let paid = bal(Account::Platform(PlatformAccount::PaidOut)).await;
    let mut users = 0;
    for who in [ALICE, bob] {
        users += bal(Account::available(who)).await + bal(Account::immature(who)).await;
        assert!(
            bal(Account::available(who)).await < 1_000_000,
            "{who}: paid down below the threshold"
        );
    }
    assert_eq!(bal(Account::Platform(PlatformAccount::PayoutsInFlight)).await, 0);
    assert_eq!(
        paid + users + fees,
        mined,
        "paid + balances + fees = mined, to the msat"
    );
    // Every payout's lines are what its transaction on the chain pays, to the satoshi.
    let all = l.payouts(None, 100).await.unwrap();
    assert_eq!(all.len(), ledger_txids.len());
    for p in &all {
        let want_txid = p.txid.to_string();
        let tx = paying
            .iter()
            .find(|(t, _)| *t == want_txid)
            .unwrap_or_else(|| panic!("payout {} not on the chain", p.txid));
        for line in &p.lines {
            let want = if line.owner == ALICE { &sa } else { &sb };
            let on_chain: u64 =
                tx.1.iter()
                    .filter(|(a, b, _)| if want == &sa { *a } else { *b })
                    .map(|x| x.2)
                    .sum();
            assert_eq!(on_chain as i64, line.paid_sat);
            assert_eq!(
                line.debit_msat,
                (line.paid_sat + p.fee_sat / p.lines.len() as i64) * 1000
            );
        }
    }
    eprintln!(
        "pool paid {paid} msat in {} payout(s), the first {crashed} after a crash between record and broadcast; mined {mined}, fees {fees}, balances {users}",
        all.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pplns_with_coinbase_payees_pays_on_chain_and_the_books_agree() {
    let bob = payouts::Wallet::from_secret(&[3; 32])
        .unwrap()
        .address(bitcoin::Network::Regtest)
        .to_string();
    let bob = bob.as_str();
    let dir = tempfile::tempdir().unwrap();
    let s = serve_with(
        dir.path(),
        None,
        &["--coinbase-payees", "1", "--coinbase-payee-min-sat", "1000"],
    );
    let ma = miner(&s.stratum, &format!("{ALICE}.a"));
    let mb = miner(&s.stratum, &format!("{bob}.b"));
    let http = s.http.clone();
    // 1. Until some block paid a miner in its coinbase and the other miner has a balance credit.
    wait_for("a coinbase payment and a balance credit", 180, || {
        let http = http.clone();
        async move {
            let mut coinbase = 0;
            let mut credited = 0;
            for who in [ALICE, bob] {
                let p = http_get(&http, &format!("/api/v1/ledger/{who}/payouts")).await;
                coinbase += p["coinbase"].as_array().map_or(0, Vec::len);
                let b = http_get(&http, &format!("/api/v1/ledger/{who}/blocks")).await;
                credited += b["blocks"].as_array().map_or(0, |v| {
                    v.iter()
                        .filter(|x| x["balance_msat"].as_i64() > Some(2_000_000))
                        .count()
                });
            }
            coinbase > 0 && credited > 0
        }
    })
    .await;
    drop(ma);
    drop(mb);
    // 2. Bury 101: coinbase payments mature (paid out), balances mature and are paid in a batch,
    //    which the next blocks confirm.
    bury(&s.rpc, 101).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    // The maturity pass and the payout pass run apart: wait for both, a confirmed payout and no
    // coinbase payment still immature (the last block found may mature a pass after the payout).
    loop {
        let (mut n, mut immature) = (0, 0);
        for who in [ALICE, bob] {
            let p = http_get(&s.http, &format!("/api/v1/ledger/{who}/payouts")).await;
            n += p["payouts"]
                .as_array()
                .map_or(0, |v| v.iter().filter(|x| x["state"] == "confirmed").count());
            immature += p["coinbase"]
                .as_array()
                .map_or(0, |v| v.iter().filter(|x| x["state"] == "immature").count());
        }
        if n > 0 && immature == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no balance payout confirmed ({n}) or a coinbase payment still immature ({immature})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        bury(&s.rpc, 1).await;
    }
    let (mut api_coinbase, mut api_payouts) = (Vec::new(), Vec::new());
    for who in [ALICE, bob] {
        let p = http_get(&s.http, &format!("/api/v1/ledger/{who}/payouts")).await;
        for c in p["coinbase"].as_array().unwrap() {
            api_coinbase.push((
                who.to_string(),
                c["txid"].as_str().unwrap().to_string(),
                c["paid_sat"].as_i64().unwrap(),
                c["state"].clone(),
            ));
        }
        for x in p["payouts"].as_array().unwrap() {
            api_payouts.push((
                who.to_string(),
                x["txid"].as_str().unwrap().to_string(),
                x["paid_sat"].as_i64().unwrap(),
            ));
        }
    }
    drop(s);
    // 3. The chain: every coinbase output paying a miner is one the API lists, and every other
    //    transaction paying a miner is a recorded payout.
    let chain = devchain::DevChain::open(dir.path(), 30).unwrap();
    let spk = |a: &str| {
        a.parse::<bitcoin::Address<_>>()
            .unwrap()
            .assume_checked()
            .script_pubkey()
    };
    let miners = [(ALICE, spk(ALICE)), (bob, spk(bob))];
    let (mut chain_coinbase, mut chain_payouts) = (Vec::new(), Vec::new());
    for h in 1..=chain.height() {
        let b = &chain.at_height(h).unwrap().block;
        for (i, tx) in b.txdata.iter().enumerate() {
            for (who, script) in &miners {
                let sat: u64 = tx
                    .output
                    .iter()
                    .filter(|o| o.script_pubkey == *script)
                    .map(|o| o.value.to_sat())
                    .sum();
                if sat > 0 {
                    let row = (who.to_string(), tx.compute_txid().to_string(), sat as i64);
                    if i == 0 {
                        chain_coinbase.push(row);
                    } else {
                        chain_payouts.push(row);
                    }
                }
            }
        }
    }
    assert!(!chain_coinbase.is_empty(), "a coinbase paid a miner directly");
    let mut listed: Vec<(String, String, i64)> = api_coinbase
        .iter()
        .filter(|c| c.3 == "mature")
        .map(|c| (c.0.clone(), c.1.clone(), c.2))
        .collect();
    assert!(
        api_coinbase.iter().all(|c| c.3 == "mature" || c.3 == "orphaned"),
        "{api_coinbase:?}"
    );
    listed.sort();
    chain_coinbase.sort();
    assert_eq!(
        listed, chain_coinbase,
        "the coinbase payments on chain are the ledger's"
    );
    api_payouts.sort();
    chain_payouts.sort();
    assert_eq!(
        api_payouts, chain_payouts,
        "the balance payouts on chain are the ledger's"
    );
    let batches: std::collections::BTreeSet<&String> = chain_payouts.iter().map(|p| &p.1).collect();
    assert_eq!(
        batches.len(),
        1,
        "one batched payout transaction: {chain_payouts:?}"
    );
    // 4. The books: mined = fees + balances + paid out (coinbase payments and the payout), exactly.
    let l = ledger::Ledger::open(&dir.path().join("ledger.sqlite").to_string_lossy())
        .await
        .unwrap();
    assert!(l.verify().await.unwrap().problems.is_empty());
    use ledger::{Account, PlatformAccount};
    let bal = |a: Account| {
        let l = &l;
        async move { l.balance(&a).await.unwrap() }
    };
    let mined = -bal(Account::Platform(PlatformAccount::Mined)).await;
    let fees = bal(Account::Platform(PlatformAccount::Fees)).await;
    let paid = bal(Account::Platform(PlatformAccount::PaidOut)).await;
    let mut users = 0;
    for who in [ALICE, bob] {
        users += bal(Account::available(who)).await
            + bal(Account::immature(who)).await
            + bal(Account::coinbase(who)).await;
    }
    assert_eq!(bal(Account::Platform(PlatformAccount::PayoutsInFlight)).await, 0);
    let coinbase_msat: i64 = chain_coinbase.iter().map(|c| c.2 * 1000).sum();
    let payout = &l.payouts(None, 10).await.unwrap()[0];
    let payout_debit: i64 = payout.lines.iter().map(|x| x.debit_msat).sum();
    assert_eq!(
        paid,
        coinbase_msat + payout_debit,
        "paid out = coinbase outputs + the payout's debits"
    );
    assert_eq!(
        paid + users + fees,
        mined,
        "paid + balances + fees = mined, to the msat"
    );
    eprintln!(
        "coinbase payouts: {} coinbase outputs paid {} msat directly; one batched payout {}; mined {mined}, fees {fees}, balances {users}",
        chain_coinbase.len(),
        coinbase_msat,
        payout.txid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_import_psbt_records_an_externally_signed_payout_once() {
    // A pool wallet whose key the pool never holds: 101 dev-chain blocks pay its address.
    let dir = tempfile::tempdir().unwrap();
    let secret = [5u8; 32];
    let watch = payouts::Wallet::watch_only(payouts::Wallet::from_secret(&secret).unwrap().public_key());
    let node = chain::DevNode::new(devchain::DevChain::open(dir.path(), 30).unwrap());
    test_support::mine_dev_blocks(&node, watch.script(), 101).await;
    let l = std::sync::Arc::new(
        ledger::Ledger::open(&dir.path().join("ledger.sqlite").to_string_lossy())
            .await
            .unwrap(),
    );
    use ledger::{Account, PlatformAccount, Posting};
    let m = units::MilliSats::new(3_000_000_000).unwrap();
    let tx = ledger::Transaction::new(
        "c1",
        "credit",
        vec![
            Posting::debit(Account::Platform(PlatformAccount::Mined), m).unwrap(),
            Posting::credit(Account::available(ALICE), m).unwrap(),
        ],
    )
    .unwrap();
    l.post(&tx).await.unwrap();
    let engine = payouts::Engine::with_signer(
        l.clone(),
        chain::Backend::Dev(node),
        payouts::Signer::Psbt {
            wallet: watch,
            origin: None,
            dir: dir.path().join("payouts"),
        },
        payouts::PayoutConfig {
            network: bitcoin::Network::Regtest,
            threshold_sat: 1_000,
            feerate_sat_per_vb: 2,
            confirmations: 1,
            interval: Duration::from_secs(1),
        },
    );
    let payouts::Round::AwaitingSignature { txid, file, .. } = engine.pay().await.unwrap() else {
        panic!("not exported")
    };
    drop(engine);
    l.close().await;
    // The operator signs the file elsewhere and imports it with the CLI.
    let mut psbt = payouts::psbt::parse(&std::fs::read(&file).unwrap()).unwrap();
    test_support::sign_psbt_p2wpkh(&mut psbt, &secret);
    let signed = dir.path().join("signed.psbt");
    std::fs::write(&signed, psbt.serialize()).unwrap(); // binary this time
    let import = |f: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_cloudmine"))
            .args(["ledger", "--data-dir"])
            .arg(dir.path())
            .arg("import-psbt")
            .arg(f)
            .output()
            .unwrap()
    };
    let out = import(&signed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&txid));
    let again = import(&signed);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("signed already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let junk = dir.path().join("junk.psbt");
    std::fs::write(&junk, b"not a psbt at all").unwrap();
    let bad = import(&junk);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a PSBT"));
    let l = ledger::Ledger::open(&dir.path().join("ledger.sqlite").to_string_lossy())
        .await
        .unwrap();
    let p = &l.payouts(None, 10).await.unwrap()[0];
    assert!(p.signed && p.txid == txid);
    let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&p.raw_tx).unwrap();
    assert!(
        tx.input.iter().all(|i| i.witness.len() == 2),
        "finalized P2WPKH witnesses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_orphaned_by_invalidateblock_has_its_credit_reversed_in_the_running_pool() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path(), None);
    let m = miner(&s.stratum, &format!("{ALICE}.a"));
    // Until the tip is one of the pool's credited blocks.
    let (http, rpc) = (s.http.clone(), &s.rpc);
    let deadline = Instant::now() + Duration::from_secs(120);
    let tip = loop {
        let b = http_get(&http, &format!("/api/v1/ledger/{ALICE}/blocks")).await;
        if b["blocks"].as_array().is_some_and(|v| !v.is_empty()) {
            drop(m);
            break loop {
                // The miner has stopped; the tip settles on a block the pool credited.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let tip = rpc.call("getbestblockhash", json!([])).await.unwrap();
                let tip = tip.as_str().unwrap().to_string();
                let b = http_get(&http, &format!("/api/v1/ledger/{ALICE}/blocks")).await;
                if b["blocks"].as_array().unwrap().iter().any(|x| x["block"] == tip) {
                    break tip;
                }
                assert!(Instant::now() < deadline, "the tip {tip} is never credited");
            };
        }
        assert!(Instant::now() < deadline, "no block credited");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Core's invalidateblock on the dev chain's RPC, as an operator (or a reorg) would.
    rpc.call("invalidateblock", json!([tip])).await.unwrap();
    wait_for("the credit reversed", 60, || {
        let http = http.clone();
        let tip = tip.clone();
        async move {
            let b = http_get(&http, &format!("/api/v1/ledger/{ALICE}/blocks")).await;
            b["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["block"] == tip && x["state"] == "orphaned")
        }
    })
    .await;
    drop(s);
    let l = ledger::Ledger::open(&dir.path().join("ledger.sqlite").to_string_lossy())
        .await
        .unwrap();
    let credit = l.postings_of(&format!("block:{tip}")).await.unwrap();
    let reversal = l.postings_of(&format!("orphan:{tip}")).await.unwrap();
    assert!(!credit.is_empty());
    assert_eq!(
        reversal,
        credit.iter().map(|(n, m)| (n.clone(), -m)).collect::<Vec<_>>(),
        "posting by posting"
    );
    assert!(l.verify().await.unwrap().problems.is_empty());
    l.close().await;
    let out = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
        .args(["ledger", "--data-dir"])
        .arg(dir.path())
        .arg("verify")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_an_external_signer_exports_a_psbt_and_broadcasts_it_once_imported() {
    let dir = tempfile::tempdir().unwrap();
    let secret = [6u8; 32];
    let pubkey = payouts::Wallet::from_secret(&secret)
        .unwrap()
        .public_key()
        .to_string();
    let s = serve_with(
        dir.path(),
        None,
        &["--payout-signer", "psbt", "--payout-pubkey", &pubkey],
    );
    assert!(
        !dir.path().join("wallet.key").exists(),
        "no key is created when an external signer holds it"
    );
    let m = miner(&s.stratum, &format!("{ALICE}.a"));
    let http = s.http.clone();
    wait_for("a block credit", 120, || {
        let http = http.clone();
        async move {
            let b = http_get(&http, &format!("/api/v1/ledger/{ALICE}/blocks")).await;
            b["blocks"].as_array().is_some_and(|v| !v.is_empty())
        }
    })
    .await;
    drop(m);
    bury(&s.rpc, 101).await;
    // The round records the payout unsigned and writes its PSBT.
    let psbt_dir = dir.path().join("payouts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        if let Some(f) = std::fs::read_dir(&psbt_dir).ok().and_then(|mut d| {
            d.find_map(|e| {
                e.ok()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "psbt"))
            })
        }) {
            break f;
        }
        assert!(Instant::now() < deadline, "no PSBT exported");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let txid = file.file_stem().unwrap().to_string_lossy().to_string();
    let a = http_get(&s.http, &format!("/api/v1/ledger/{ALICE}/payouts")).await;
    assert_eq!(a["payouts"][0]["txid"], txid.as_str());
    assert_eq!(a["payouts"][0]["state"], "in_flight");
    assert_eq!(a["payouts"][0]["method"], "psbt");
    assert_eq!(a["payouts"][0]["awaiting"], "signature");
    // Signed outside, imported with the CLI while serve runs; serve broadcasts it; a block confirms it.
    let mut psbt = payouts::psbt::parse(&std::fs::read(&file).unwrap()).unwrap();
    test_support::sign_psbt_p2wpkh(&mut psbt, &secret);
    let signed = dir.path().join("signed.psbt");
    std::fs::write(&signed, payouts::psbt::to_base64(&psbt)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
        .args(["ledger", "--data-dir"])
        .arg(dir.path())
        .arg("import-psbt")
        .arg(&signed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = http_get(&s.http, &format!("/api/v1/ledger/{ALICE}/payouts")).await;
        if a["payouts"][0]["state"] == "confirmed" {
            assert!(a["payouts"][0]["awaiting"].is_null(), "{a}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the imported payout never confirmed: {a}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        bury(&s.rpc, 1).await;
    }
    drop(s);
    let chain = devchain::DevChain::open(dir.path(), 30).unwrap();
    let found = (1..=chain.height()).any(|h| {
        chain
            .at_height(h)
            .unwrap()
            .block
            .txdata
            .iter()
            .any(|t| t.compute_txid().to_string() == txid)
    });
    assert!(found, "the signed payout {txid} is in the chain");
}

#[test]
fn serve_refuses_payout_flags_that_do_not_fit_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cloudmine"))
            .args(["serve", "--data-dir"])
            .arg(dir.path())
            .args(["--stratum-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(extra)
            .env("CLOUDMINE_LOG", "warn")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    for (extra, says) in [
        (&["--coinbase-payees", "5"][..], "needs --payout-scheme pool"),
        (
            &[
                "--payout-scheme",
                "pool",
                "--sharing",
                "pps",
                "--coinbase-payees",
                "5",
            ][..],
            "needs --sharing pplns or tides",
        ),
        (
            &["--payout-scheme", "pool", "--coinbase-payees", "201"][..],
            "201",
        ),
        (
            &["--payout-scheme", "pool", "--payout-signer", "psbt"][..],
            "needs --payout-pubkey",
        ),
        (
            &[
                "--payout-scheme",
                "pool",
                "--payout-signer",
                "psbt",
                "--payout-pubkey",
                "02abcd",
            ][..],
            "not a compressed public key",
        ),
        (
            &[
                "--payout-scheme",
                "pool",
                "--payout-signer",
                "core",
                "--payout-core-wallet",
                "w",
            ][..],
            "needs --chain bitcoind",
        ),
    ] {
        let err = run(extra);
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?}: {err}");
    }
}

/// A block the chain took while the pool crashed before logging its fate (abort right after the
/// submission, like `kill -9`) is not lost: its intent row was durable before the submission, the
/// restart settles it against the chain, and accounting credits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_submitted_just_before_a_crash_is_credited_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path(), Some("block-submitted"));
    let m = miner(&s.stratum, &format!("{ALICE}.a"));
    let mut proc = s.proc;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = proc.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "no block found within 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "serve aborted at the failpoint: {status:?}");
    drop(m);
    // The intent is in the share log; the block is in the dev chain.
    let hash = {
        let (log, _w) = pool::share_log::ShareLog::open(&dir.path().join("pool.sqlite"))
            .await
            .unwrap();
        let blocks = log.blocks().await.unwrap();
        let (hash, fate) = blocks.last().cloned().unwrap();
        assert_eq!(fate, pool::share_log::FATE_SUBMITTING, "{blocks:?}");
        hash
    };
    {
        let c = devchain::DevChain::open(dir.path(), 30).unwrap();
        let h: bitcoin::BlockHash = hash.parse().unwrap();
        assert!(
            c.by_hash(&h).is_some(),
            "the chain took the block before the crash"
        );
    }
    // Restart: the intent is settled and the block credited.
    let s = serve(dir.path(), None);
    let key = format!("block:{hash}");
    let ledger_url = dir.path().join("ledger.sqlite").to_string_lossy().into_owned();
    wait_for("the crashed block credited", 60, || {
        let (url, key) = (ledger_url.clone(), key.clone());
        async move {
            let Ok(l) = ledger::Ledger::open(&url).await else {
                return false;
            };
            let found = l.last_key_with_prefix("block:").await.ok().flatten() == Some(key);
            l.close().await;
            found
        }
    })
    .await;
    let (log, _w) = pool::share_log::ShareLog::open(&dir.path().join("pool.sqlite"))
        .await
        .unwrap();
    let blocks = log.blocks().await.unwrap();
    assert!(
        blocks.iter().any(|(h, f)| *h == hash && f == "accepted"),
        "{blocks:?}"
    );
    drop(s);
}
