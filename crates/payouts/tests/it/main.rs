//! Payouts end to end in process: a real dev chain (signatures checked, blocks mined and stored), a real
//! ledger on SQLite and PostgreSQL, the engine paying matured balances in one signed transaction.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bitcoin::{Address, Network, ScriptBuf};
use chain::{Backend, DevNode, TxStatus};
use ledger::{Account, Ledger, PayoutState, PlatformAccount, Posting, Transaction};
use payouts::{Engine, PayoutConfig, Round, Wallet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use units::MilliSats;

mod core_wallet;

fn wallet() -> Wallet {
    Wallet::from_secret(&[7u8; 32]).unwrap()
}

fn addr(i: u8) -> String {
    let key = Wallet::from_secret(&[i; 32]).unwrap();
    key.address(Network::Regtest).to_string()
}

fn open_node(dir: &Path) -> DevNode {
    DevNode::new(devchain::DevChain::open(dir, 30).unwrap())
}

/// Mines `n` blocks paying `script` (30 s apart), with whatever the mempool holds.
async fn mine(node: &DevNode, script: &ScriptBuf, n: u32) {
    test_support::mine_dev_blocks(node, script, n).await;
}

fn cfg(threshold_sat: u64, feerate: u64) -> PayoutConfig {
    PayoutConfig {
        network: Network::Regtest,
        threshold_sat,
        feerate_sat_per_vb: feerate,
        confirmations: 1,
        interval: Duration::from_secs(1),
    }
}

async fn credit(l: &Ledger, key: &str, owner: &str, msat: u64) {
    let tx = Transaction::new(
        key,
        "test credit",
        vec![
            Posting::debit(
                Account::Platform(PlatformAccount::Mined),
                MilliSats::new(msat).unwrap(),
            )
            .unwrap(),
            Posting::credit(Account::available(owner), MilliSats::new(msat).unwrap()).unwrap(),
        ],
    )
    .unwrap();
    l.post(&tx).await.unwrap();
}

/// Outputs of confirmed transactions (not coinbases) paying `address`, in the node's active chain.
fn paid_on_chain(node: &DevNode, address: &str) -> Vec<u64> {
    let spk = address
        .parse::<Address<_>>()
        .unwrap()
        .assume_checked()
        .script_pubkey();
    let c = node.lock();
    let mut out = Vec::new();
    for h in 0..=c.height() {
        for tx in c.at_height(h).unwrap().block.txdata.iter().skip(1) {
            for o in &tx.output {
                if o.script_pubkey == spk {
                    out.push(o.value.to_sat());
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matured_balances_are_paid_in_one_signed_batch_and_settled_on_confirmation() {
    for (backend, url, _keep) in test_support::fresh_databases().await {
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(dir.path());
        let w = wallet();
        let wscript = w.script().clone();
        // 101 blocks to the pool wallet: the first coinbase (50 BTC) is spendable in block 102.
        mine(&node, &wscript, 101).await;
        let l = Arc::new(Ledger::open(&url).await.unwrap());
        let (alice, bob, erin, dave) = (addr(1), addr(2), addr(3), addr(4));
        credit(&l, "c1", &alice, 123_456_789_789).await; // 1.23456789 BTC + 789 msat
        credit(&l, "c2", &bob, 50_000_000_000).await; // 0.5 BTC
        credit(&l, "c3", &erin, 20_000_000).await; // 20,000 sat
        credit(&l, "c4", &dave, 600_000).await; // 600 sat: dust after the fee share
        credit(&l, "c5", "not-an-address", 5_000_000_000).await;
        credit(&l, "c6", &addr(5), 400_000).await; // below the threshold: untouched
        let engine = Engine::new(l.clone(), Backend::Dev(node.clone()), w, cfg(500, 10));
        let r = engine.pay().await.unwrap();
        let Round::Paid {
            txid,
            payees,
            refused,
        } = r
        else {
            panic!("{backend}: expected a payout, got {r:?}")
        };
        assert_eq!(payees, 3, "{backend}: alice, bob, erin");
        assert_eq!(refused, None);
        // Recorded before broadcast, in flight now; a second round waits for it.
        assert_eq!(engine.pay().await.unwrap(), Round::Busy);
        let inflight = Account::Platform(PlatformAccount::PayoutsInFlight);
        let debits = 123_456_789_000 + 50_000_000_000 + 20_000_000;
        assert_eq!(l.balance(&inflight).await.unwrap(), debits);
        assert_eq!(
            l.balance(&Account::available(&alice)).await.unwrap(),
            789,
            "the msat remainder stays"
        );
        assert_eq!(l.balance(&Account::available(&bob)).await.unwrap(), 0);
        assert_eq!(l.balance(&Account::available(&dave)).await.unwrap(), 600_000);
        let skips = l.payout_skips().await.unwrap();
        let reason = |o: &str| skips.iter().find(|s| s.owner == o).map(|s| s.reason.clone());
        assert!(
            reason("not-an-address").unwrap().contains("not an address"),
            "{skips:?}"
        );
        assert!(reason(&dave).unwrap().contains("dust"), "{skips:?}");
        assert_eq!(reason(&alice), None);
        // The one-owner lookup (the API's) agrees with the full list.
        assert_eq!(
            l.payout_skip_of(&dave).await.unwrap().map(|k| k.reason),
            reason(&dave)
        );
        assert_eq!(l.payout_skip_of(&alice).await.unwrap(), None);
        let tx_id: bitcoin::Txid = txid.parse().unwrap();
        assert_eq!(node.lock().mempool().len(), 1);
        assert_eq!(
            Backend::Dev(node.clone()).tx_status(&tx_id).await.unwrap(),
            TxStatus::Mempool
        );
        assert_eq!(engine.settle().await.unwrap().in_flight, 1);
        // One block confirms it.
        mine(&node, &wscript, 1).await;
        let s = engine.settle().await.unwrap();
        assert_eq!(s.confirmed, vec![txid.clone()], "{backend}");
        assert_eq!(l.balance(&inflight).await.unwrap(), 0);
        assert_eq!(
            l.balance(&Account::Platform(PlatformAccount::PaidOut))
                .await
                .unwrap(),
            debits
        );
        // On chain: each payee got their whole sats minus an equal fee share; the fee is what the
        // transaction leaves to the miner; nothing is lost.
        let rec = l.payouts(Some(PayoutState::Confirmed), 10).await.unwrap();
        assert_eq!(rec.len(), 1);
        let rec = &rec[0];
        assert_eq!(rec.txid, txid);
        assert_eq!(rec.confirmed_height, Some(i64::from(node.lock().height())));
        let share = rec.fee_sat / 3;
        assert_eq!(share * 3, rec.fee_sat);
        assert_eq!(paid_on_chain(&node, &alice), vec![123_456_789 - share as u64]);
        assert_eq!(paid_on_chain(&node, &bob), vec![50_000_000 - share as u64]);
        assert_eq!(paid_on_chain(&node, &erin), vec![20_000 - share as u64]);
        assert!(paid_on_chain(&node, &dave).is_empty());
        let tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&rec.raw_tx).unwrap();
        let vsize = tx.weight().to_wu().div_ceil(4);
        assert!(
            rec.fee_sat as u64 >= vsize * 10,
            "feerate met: {} sat for {vsize} vB",
            rec.fee_sat
        );
        assert!((rec.fee_sat as u64) < vsize * 10 + 3, "at most n-1 sat above it");
        let input = 5_000_000_000u64; // one 50 BTC coinbase
        let out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        assert_eq!(input - out, rec.fee_sat as u64);
        assert_eq!(
            rec.lines.iter().map(|x| x.debit_msat).sum::<i64>(),
            rec.lines.iter().map(|x| x.paid_sat * 1000).sum::<i64>() + rec.fee_sat * 1000
        );
        // The payees' API view.
        let mine_ = l.payouts_of(&alice, 10).await.unwrap();
        assert_eq!(mine_.len(), 1);
        assert_eq!(mine_[0].txid, txid);
        assert_eq!(mine_[0].state, PayoutState::Confirmed);
        // Nothing more to pay: the rest is below the threshold or unpayable.
        assert_eq!(engine.pay().await.unwrap(), Round::Nothing);
        assert!(l.verify().await.unwrap().problems.is_empty());
        l.close().await;
    }
}

/// The engine the tests pay with: threshold 1,000 sat, 2 sat/vB.
fn payer(node: &DevNode, l: &Arc<Ledger>) -> Engine {
    Engine::new(l.clone(), Backend::Dev(node.clone()), wallet(), cfg(1_000, 2))
}

/// A funded wallet pays alice 0.1 BTC (recorded and broadcast), then the node restarts from its
/// files, its mempool gone. Returns the data dir, the restarted node, the ledger, alice, the txid.
async fn paid_then_node_restarted(
    url: &str,
    backend: &str,
) -> (tempfile::TempDir, DevNode, Arc<Ledger>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());
    mine(&node, &wallet().script().clone(), 101).await;
    let l = Arc::new(Ledger::open(url).await.unwrap());
    let alice = addr(1);
    credit(&l, "c1", &alice, 10_000_000_000).await;
    let Round::Paid { txid, .. } = payer(&node, &l).pay().await.unwrap() else {
        panic!("{backend}: no payout")
    };
    drop(node);
    let node = open_node(dir.path());
    (dir, node, l, alice, txid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_the_node_lost_is_broadcast_again_from_its_bytes_and_paid_exactly_once() {
    for (backend, url, _keep) in test_support::fresh_databases().await {
        // The node restarts: its mempool (memory only) is gone, as after a crash before broadcast.
        let (_dir, node, l, alice, txid) = paid_then_node_restarted(&url, backend).await;
        let wscript = wallet().script().clone();
        assert_eq!(node.lock().mempool().len(), 0);
        let engine = payer(&node, &l);
        let s = engine.settle().await.unwrap();
        assert_eq!(s.rebroadcast, vec![txid.clone()], "{backend}");
        assert!(node.lock().mempool().contains(&txid.parse().unwrap()));
        mine(&node, &wscript, 1).await;
        assert_eq!(engine.settle().await.unwrap().confirmed, vec![txid.clone()]);
        assert_eq!(engine.pay().await.unwrap(), Round::Nothing);
        let paid = paid_on_chain(&node, &alice);
        assert_eq!(paid.len(), 1, "{backend}: exactly one payment: {paid:?}");
        assert_eq!(l.payouts(None, 10).await.unwrap().len(), 1);
        assert!(l.verify().await.unwrap().problems.is_empty());
        l.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_whose_inputs_were_spent_elsewhere_is_reversed_and_paid_again_later() {
    for (backend, url, _keep) in test_support::fresh_databases().await {
        // The node forgets it, and the same coin is spent by another transaction of the wallet
        // (an operator's manual spend) that confirms.
        let (_dir, node, l, alice, txid) = paid_then_node_restarted(&url, backend).await;
        let w = wallet();
        let wscript = w.script().clone();
        let coins = Backend::Dev(node.clone())
            .spendable_coins(&wscript)
            .await
            .unwrap();
        let other = payouts::build_payout(
            &w,
            &coins[..1],
            &[payouts::PayTo {
                script: Wallet::from_secret(&[9; 32]).unwrap().script().clone(),
                debit_sat: 1_000_000,
            }],
            2,
        )
        .unwrap();
        Backend::Dev(node.clone())
            .broadcast(&other.tx)
            .await
            .unwrap()
            .unwrap();
        mine(&node, &wscript, 1).await;
        let engine = payer(&node, &l);
        let s = engine.settle().await.unwrap();
        assert_eq!(s.abandoned.len(), 1, "{backend}: {s:?}");
        assert_eq!(s.abandoned[0].0, txid);
        assert!(s.abandoned[0].1.contains("missingorspent"), "{s:?}");
        assert_eq!(
            l.balance(&Account::available(&alice)).await.unwrap(),
            10_000_000_000,
            "the debit is reversed"
        );
        // The next round pays from another coin, once.
        let Round::Paid { txid: again, .. } = engine.pay().await.unwrap() else {
            panic!("no second payout")
        };
        assert_ne!(again, txid);
        mine(&node, &wscript, 1).await;
        assert_eq!(engine.settle().await.unwrap().confirmed, vec![again]);
        assert_eq!(paid_on_chain(&node, &alice).len(), 1);
        let all = l.payouts(None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|p| p.state).collect::<Vec<_>>(),
            vec![PayoutState::Confirmed, PayoutState::Abandoned]
        );
        assert!(l.verify().await.unwrap().problems.is_empty());
        l.close().await;
    }
}

/// One step of the random history.
#[derive(Debug, Clone)]
enum Op {
    /// The pool finds a block (coinbase to the wallet) and credits it 1 % fee, the rest by weight.
    Block(Vec<(u8, u32)>),
    /// The same, but the coinbase pays the two largest eligible earners directly (coinbase payees,
    /// `pool::payees`), booked as the pool books it.
    PayeeBlock(Vec<(u8, u32)>),
    /// The tip is invalidated (if it is a credited block, its credit must be reversed).
    Orphan,
    /// `n` blocks by someone else; then every credited block is settled (matured or reversed).
    Bury(u32),
    /// A payout round.
    Pay,
    /// A settle pass over payouts in flight.
    Settle,
    /// The process dies: the node's mempool and the engine are gone; the files stay.
    Crash,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => proptest::collection::vec((0u8..5, 1u32..100), 1..4).prop_map(Op::Block),
        2 => proptest::collection::vec((0u8..5, 1u32..100), 1..4).prop_map(Op::PayeeBlock),
        1 => Just(Op::Orphan),
        2 => (1u32..70).prop_map(Op::Bury),
        2 => Just(Op::Pay),
        2 => Just(Op::Settle),
        1 => Just(Op::Crash),
    ]
}

/// Owner `i`: four addresses and one ledger owner that is not an address (never payable).
fn owner(i: u8) -> String {
    if i == 0 {
        "account-without-address".into()
    } else {
        addr(i)
    }
}

struct World {
    dir: tempfile::TempDir,
    node: DevNode,
    engine: Engine,
    l: Arc<Ledger>,
    clock: u32,
    credited: Vec<String>,
}

impl World {
    async fn mine_to(&mut self, script: &ScriptBuf) -> bitcoin::Block {
        self.clock += 30;
        let (node, script, now) = (self.node.clone(), script.clone(), self.clock);
        tokio::task::spawn_blocking(move || {
            let mut c = node.lock();
            let b = c.generate_block(&script, now, 10_000_000).unwrap();
            c.submit_block(b.clone(), now).unwrap();
            b
        })
        .await
        .unwrap()
    }

    async fn settle_blocks(&self) {
        let backend = Backend::Dev(self.node.clone());
        for h in &self.credited {
            pool::accounting::settle_block(&self.l, &backend, h)
                .await
                .unwrap();
        }
    }

    fn engine(node: &DevNode, l: &Arc<Ledger>) -> Engine {
        Engine::new(l.clone(), Backend::Dev(node.clone()), wallet(), cfg(1_000, 3))
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Block(parts) => {
                let b = self.mine_to(&wallet().script().clone()).await;
                let hash = b.block_hash().to_string();
                let r = b.txdata[0].output.iter().map(|o| o.value.to_sat()).sum::<u64>() * 1000;
                let (fee, rest) = ledger::schemes::fee_split(MilliSats::new(r).unwrap(), 10_000).unwrap();
                let mut by: std::collections::BTreeMap<String, u128> = Default::default();
                for (i, w) in parts {
                    *by.entry(owner(*i)).or_default() += u128::from(*w);
                }
                let names: Vec<&String> = by.keys().collect();
                let weights: Vec<u128> = by.values().copied().collect();
                let split =
                    ledger::schemes::split_by_weight(&weights, weights.iter().sum(), rest.to_msat()).unwrap();
                let mut postings = vec![
                    Posting::debit(
                        Account::Platform(PlatformAccount::Mined),
                        MilliSats::new(r).unwrap(),
                    )
                    .unwrap(),
                    Posting::credit(Account::Platform(PlatformAccount::Fees), fee).unwrap(),
                ];
                for (i, a) in split {
                    postings.push(
                        Posting::credit(Account::immature(names[i as usize]), MilliSats::new(a).unwrap())
                            .unwrap(),
                    );
                }
                let tx = Transaction::new(&format!("block:{hash}"), "random block", postings).unwrap();
                self.l.post(&tx).await.unwrap();
                self.credited.push(hash);
            }
            Op::PayeeBlock(parts) => {
                let rule = pool::payees::PayeeRule {
                    max: 2,
                    min_sat: 1_000,
                    network: Network::Regtest,
                    pool_script: wallet().script().clone(),
                };
                let shares: Vec<(String, u128)> =
                    parts.iter().map(|(i, w)| (owner(*i), u128::from(*w))).collect();
                let window: u128 = shares.iter().map(|x| x.1).sum();
                let plan = pool::payees::PayeePlan::new(shares, 0, window, &rule);
                self.clock += 30;
                let (node, now, p, r) = (self.node.clone(), self.clock, plan.clone(), rule.clone());
                let b = tokio::task::spawn_blocking(move || {
                    let mut c = node.lock();
                    let b = c
                        .generate_block_paying(
                            |value| {
                                let mut outs = p.outputs(value, 10_000, &r, u64::MAX).unwrap();
                                let paid: u64 = outs.iter().map(|o| o.value.to_sat()).sum();
                                outs.push(bitcoin::TxOut {
                                    value: bitcoin::Amount::from_sat(value - paid),
                                    script_pubkey: r.pool_script.clone(),
                                });
                                outs
                            },
                            now,
                            10_000_000,
                        )
                        .unwrap();
                    c.submit_block(b.clone(), now).unwrap();
                    b
                })
                .await
                .unwrap();
                let d = plan.decompose(&b.txdata[0], 10_000, &rule).unwrap();
                let postings = pool::accounting::payee_postings(&d).unwrap();
                let hash = b.block_hash().to_string();
                let tx = Transaction::new(&format!("block:{hash}"), "random payee block", postings).unwrap();
                self.l.post(&tx).await.unwrap();
                self.credited.push(hash);
            }
            Op::Orphan => {
                let node = self.node.clone();
                let clock = self.clock;
                tokio::task::spawn_blocking(move || {
                    let mut c = node.lock();
                    let tip = c.tip().hash;
                    if c.height() > 1 {
                        c.invalidate_block(&tip, clock).unwrap();
                    }
                })
                .await
                .unwrap();
                self.settle_blocks().await;
            }
            Op::Bury(n) => {
                let other = Wallet::from_secret(&[99; 32]).unwrap().script().clone();
                for _ in 0..*n {
                    self.mine_to(&other).await;
                }
                self.settle_blocks().await;
            }
            Op::Pay => {
                self.engine.pay().await.unwrap();
            }
            Op::Settle => {
                self.engine.settle().await.unwrap();
            }
            Op::Crash => {
                let node = open_node(self.dir.path());
                self.engine = World::engine(&node, &self.l);
                self.node = node;
            }
        }
    }

    /// The books: balanced, verified, and paid + balances + fees = mined, to the msat.
    async fn check_books(&self) -> i64 {
        let l = &self.l;
        let v = l.verify().await.unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let b = |a: Account| async move { l.balance(&a).await.unwrap() };
        let mut users = 0;
        for i in 0..5 {
            users += b(Account::available(&owner(i))).await
                + b(Account::immature(&owner(i))).await
                + b(Account::coinbase(&owner(i))).await;
        }
        let p = |x| Account::Platform(x);
        let mined = -b(p(PlatformAccount::Mined)).await;
        let fees = b(p(PlatformAccount::Fees)).await;
        let inflight = b(p(PlatformAccount::PayoutsInFlight)).await;
        let paid = b(p(PlatformAccount::PaidOut)).await;
        assert_eq!(
            users + fees + inflight + paid,
            mined,
            "paid + balances + fees = mined"
        );
        paid
    }
}

/// Random histories of blocks, orphans, burials, payout rounds, settle passes and crashes: after
/// every step the ledger verifies and paid + balances + fees = mined; at the end every payee has
/// received on chain exactly what the confirmed payouts say, once.
#[test]
fn random_histories_of_blocks_orphans_payouts_and_crashes_keep_the_books_and_pay_once() {
    use proptest::strategy::Strategy as _;
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for backend in ["sqlite", "postgres"] {
        let cases = if backend == "sqlite" { 24 } else { 6 };
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = proptest::collection::vec(op(), 10..40).prop_map(|mut v| {
            // Always long enough for something to mature and be paid.
            v.insert(v.len() / 2, Op::Bury(101));
            v.push(Op::Pay);
            v
        });
        let stats = std::sync::Mutex::new((0usize, 0usize, 0usize, 0usize, 0usize));
        let result = runner.run(&strategy, |ops| {
            rt.block_on(async {
                let Some((_, url, _keep)) = test_support::fresh_databases()
                    .await
                    .into_iter()
                    .find(|(b, _, _)| *b == backend)
                else {
                    return; // PostgreSQL not configured (fresh_databases says so loudly)
                };
                let dir = tempfile::tempdir().unwrap();
                let node = open_node(dir.path());
                let l = Arc::new(Ledger::open(&url).await.unwrap());
                let mut w = World {
                    engine: World::engine(&node, &l),
                    node,
                    dir,
                    l: l.clone(),
                    clock: chain::dev::now(),
                    credited: Vec::new(),
                };
                for op in &ops {
                    w.apply(op).await;
                    w.check_books().await;
                }
                // Drain: confirm whatever is in flight.
                for _ in 0..3 {
                    w.engine.settle().await.unwrap();
                    let other = Wallet::from_secret(&[99; 32]).unwrap().script().clone();
                    w.mine_to(&other).await;
                }
                w.engine.settle().await.unwrap();
                let paid = w.check_books().await;
                let all = l.payouts(None, 1000).await.unwrap();
                let mut want: std::collections::BTreeMap<String, i64> = Default::default();
                let mut paid_confirmed = 0i64;
                for p in &all {
                    if p.state == PayoutState::Confirmed {
                        for line in &p.lines {
                            *want.entry(line.address.clone()).or_default() += line.paid_sat;
                            paid_confirmed += line.debit_msat;
                        }
                        let txid: bitcoin::Txid = p.txid.parse().unwrap();
                        assert!(
                            w.node.lock().find_tx(&txid).is_some(),
                            "confirmed payout {} not in the chain",
                            p.txid
                        );
                    }
                }
                // Coinbase payments count as paid out once their block matured, and the chain's
                // coinbase outputs say the same.
                let mut paid_in_coinbases = 0i64;
                for h in &w.credited {
                    if l.find_key(&format!("mature:{h}")).await.unwrap().is_none() {
                        continue;
                    }
                    let booked: i64 = l
                        .postings_of(&format!("mature:{h}"))
                        .await
                        .unwrap()
                        .iter()
                        .filter(|(n, _)| n.ends_with("/coinbase"))
                        .map(|(_, m)| -m)
                        .sum();
                    let hash: bitcoin::BlockHash = h.parse().unwrap();
                    let c = w.node.lock();
                    let blk = &c.by_hash(&hash).unwrap().block;
                    let wallet_script = wallet().script().clone();
                    let on_chain: u64 = blk.txdata[0]
                        .output
                        .iter()
                        .filter(|o| o.script_pubkey != wallet_script)
                        .map(|o| o.value.to_sat())
                        .sum();
                    assert_eq!(
                        booked,
                        on_chain as i64 * 1000,
                        "block {h}: coinbase payments as on chain"
                    );
                    paid_in_coinbases += booked;
                    if booked > 0 {
                        stats.lock().unwrap().4 += 1;
                    }
                }
                assert_eq!(
                    paid,
                    paid_confirmed + paid_in_coinbases,
                    "paid-out = confirmed payouts' debits + matured coinbase payments"
                );
                for i in 1..5 {
                    let a = addr(i);
                    let got: u64 = paid_on_chain(&w.node, &a).iter().sum();
                    assert_eq!(
                        got as i64,
                        want.get(&a).copied().unwrap_or(0),
                        "{a}: paid on chain once"
                    );
                }
                let mut orphaned = 0;
                for h in &w.credited {
                    if l.find_key(&format!("orphan:{h}")).await.unwrap().is_some() {
                        orphaned += 1;
                    }
                }
                let crashes = ops.iter().filter(|o| matches!(o, Op::Crash)).count();
                {
                    let mut s = stats.lock().unwrap();
                    s.0 += 1;
                    s.2 += orphaned;
                    s.3 += crashes;
                    s.1 += all.iter().filter(|p| p.state == PayoutState::Confirmed).count();
                }
                l.close().await;
            });
            Ok(())
        });
        result.unwrap();
        let s = stats.lock().unwrap();
        eprintln!(
            "{backend}: {} random histories, {} payouts confirmed, {} credited blocks orphaned and reversed, {} crashes, {} blocks' coinbase payments matured",
            s.0, s.1, s.2, s.3, s.4
        );
    }
}

/// A fresh dev chain whose first 101 blocks pay the pool wallet (two coinbases spendable in the next
/// block), and a ledger at `url`: (data dir, node, wallet script, ledger).
async fn funded_wallet(url: &str) -> (tempfile::TempDir, DevNode, ScriptBuf, Arc<Ledger>) {
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());
    let wscript = wallet().script().clone();
    mine(&node, &wscript, 101).await;
    let l = Arc::new(Ledger::open(url).await.unwrap());
    (dir, node, wscript, l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_short_of_funds_pays_the_largest_balances_it_can_and_the_rest_wait() {
    for (backend, url, _keep) in test_support::fresh_databases().await {
        // 101 blocks: two coinbases spendable in the next block, 100 BTC. Balances of 60 and 50 BTC
        // (PPS pays ahead of the blocks that cover it): only the larger fits.
        let (_dir, node, wscript, l) = funded_wallet(&url).await;
        let (alice, bob) = (addr(1), addr(2));
        credit(&l, "c1", &alice, 6_000_000_000_000).await;
        credit(&l, "c2", &bob, 5_000_000_000_000).await;
        let engine = payer(&node, &l);
        let Round::Paid { txid, payees, .. } = engine.pay().await.unwrap() else {
            panic!("{backend}: nothing paid")
        };
        assert_eq!(payees, 1, "{backend}: only the largest balance fits the wallet");
        assert_eq!(
            l.balance(&Account::available(&bob)).await.unwrap(),
            5_000_000_000_000
        );
        assert_eq!(l.balance(&Account::available(&alice)).await.unwrap() % 1000, 0);
        // One more block matures another coinbase; once alice's payout confirms, bob is paid.
        mine(&node, &wscript, 1).await;
        assert_eq!(engine.settle().await.unwrap().confirmed, vec![txid]);
        let Round::Paid { payees, .. } = engine.pay().await.unwrap() else {
            panic!("{backend}: bob not paid")
        };
        assert_eq!(payees, 1);
        mine(&node, &wscript, 1).await;
        engine.settle().await.unwrap();
        assert_eq!(paid_on_chain(&node, &alice).len(), 1, "{backend}");
        assert_eq!(paid_on_chain(&node, &bob).len(), 1, "{backend}");
        assert!(l.balance(&Account::available(&bob)).await.unwrap() < 1_000_000);
        assert!(l.verify().await.unwrap().problems.is_empty());
        l.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_payout_a_reorg_took_out_of_the_chain_is_broadcast_again() {
    for (backend, url, _keep) in test_support::fresh_databases().await {
        let (dir, node, wscript, l) = funded_wallet(&url).await;
        let alice = addr(1);
        credit(&l, "c1", &alice, 10_000_000_000).await;
        let engine = payer(&node, &l);
        let Round::Paid { txid, .. } = engine.pay().await.unwrap() else {
            panic!("{backend}: no payout")
        };
        mine(&node, &wscript, 1).await;
        // Confirmed at the configured depth (1): final in the books.
        assert_eq!(engine.settle().await.unwrap().confirmed, vec![txid.clone()]);
        // A reorg deeper than that takes its block out, and a restart empties the mempool.
        let n = node.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = n.lock();
            let tip = c.tip().hash;
            c.invalidate_block(&tip, chain::dev::now()).unwrap();
        })
        .await
        .unwrap();
        drop(engine);
        drop(node);
        let node = open_node(dir.path());
        assert!(node.lock().find_tx(&txid.parse().unwrap()).is_none(), "{backend}");
        let engine = payer(&node, &l);
        let s = engine.settle().await.unwrap();
        assert_eq!(
            s.rebroadcast,
            vec![txid.clone()],
            "{backend}: the same bytes go out again"
        );
        mine(&node, &wscript, 1).await;
        assert!(node.lock().find_tx(&txid.parse().unwrap()).is_some(), "{backend}");
        assert_eq!(paid_on_chain(&node, &alice).len(), 1, "{backend}: paid once");
        assert!(engine.settle().await.unwrap().rebroadcast.is_empty());
        assert!(l.verify().await.unwrap().problems.is_empty());
        l.close().await;
    }
}

/// An exported PSBT file's text signed by `secret`, as base64 (what the signer hands back).
fn sign_psbt_text(text: &str, secret: &[u8; 32]) -> Vec<u8> {
    let mut psbt = payouts::psbt::parse(text.as_bytes()).unwrap();
    test_support::sign_psbt_p2wpkh(&mut psbt, secret);
    payouts::psbt::to_base64(&psbt).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_signer_signs_the_exported_psbt_and_the_pool_broadcasts_it_once() {
    for (backend, url, _keep) in test_support::fresh_databases().await {
        // The pool holds only the public key of wallet(); the "hardware wallet" holds [7; 32].
        let (dir, node, wscript, l) = funded_wallet(&url).await;
        let (alice, bob) = (addr(1), addr(2));
        credit(&l, "c1", &alice, 3_000_000_000).await;
        credit(&l, "c2", &bob, 2_000_000_500).await;
        let psbt_dir = dir.path().join("payouts");
        let signer = payouts::Signer::Psbt {
            wallet: Wallet::watch_only(wallet().public_key()),
            origin: Some("d34db33f/84h/1h/0h/0/0".parse().unwrap()),
            dir: psbt_dir.clone(),
        };
        let engine = Engine::with_signer(l.clone(), Backend::Dev(node.clone()), signer, cfg(1_000, 2));
        let Round::AwaitingSignature { txid, payees, file } = engine.pay().await.unwrap() else {
            panic!("{backend}: not exported")
        };
        assert_eq!(payees, 2);
        assert_eq!(file, psbt_dir.join(format!("{txid}.psbt")));
        // In flight in the books; nothing on the network; no second payout while it waits.
        assert_eq!(l.balance(&Account::available(&alice)).await.unwrap(), 0);
        assert_eq!(engine.pay().await.unwrap(), Round::Busy);
        let s = engine.settle().await.unwrap();
        assert!(
            s.rebroadcast.is_empty() && s.confirmed.is_empty(),
            "{backend}: {s:?}"
        );
        assert_eq!(
            node.tx_status(&txid.parse().unwrap()).await.unwrap(),
            TxStatus::Unknown,
            "{backend}: an unsigned payout is never broadcast"
        );
        // The file is lost: the next pass writes it again from the ledger.
        std::fs::remove_file(&file).unwrap();
        engine.settle().await.unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        // A PSBT signed by the wrong key is refused; nothing is recorded.
        let wrong = sign_psbt_text(&text, &[9; 32]);
        let e = payouts::import_signed_psbt(&l, &wrong).await.unwrap_err();
        assert!(e.contains("not signed"), "{backend}: {e}");
        assert!(!l.payouts(None, 10).await.unwrap()[0].signed);
        // Signed properly: imported (once), broadcast by the next pass, confirmed, paid once.
        let signed = sign_psbt_text(&text, &[7; 32]);
        assert_eq!(payouts::import_signed_psbt(&l, &signed).await.unwrap(), txid);
        let again = payouts::import_signed_psbt(&l, &signed).await.unwrap_err();
        assert!(again.contains("signed already"), "{backend}: {again}");
        let s = engine.settle().await.unwrap();
        assert_eq!(s.rebroadcast, vec![txid.clone()], "{backend}");
        mine(&node, &wscript, 1).await;
        assert_eq!(engine.settle().await.unwrap().confirmed, vec![txid.clone()]);
        assert_eq!(paid_on_chain(&node, &alice).len(), 1, "{backend}");
        assert_eq!(paid_on_chain(&node, &bob).len(), 1, "{backend}");
        let p = &l.payouts(None, 10).await.unwrap()[0];
        assert_eq!(
            (p.state, p.method, p.signed),
            (PayoutState::Confirmed, ledger::PayoutMethod::Psbt, true)
        );
        let paid = l
            .balance(&Account::Platform(PlatformAccount::PaidOut))
            .await
            .unwrap();
        let debited: i64 = p.lines.iter().map(|x| x.debit_msat).sum();
        assert_eq!(paid, debited, "{backend}");
        assert!(l.verify().await.unwrap().problems.is_empty());
        l.close().await;
    }
}
