//! Payouts through Bitcoin Core's wallet, against a fake wallet that answers with Core's recorded
//! response shapes (tests/data/core-wallet.json) over real JSON-RPC on loopback: the payout is
//! recorded before `sendmany`, a failed send is retried, a send whose answer was lost is found
//! again by its comment (never sent twice), and the wallet's actual fee is booked when it confirms.

use super::{addr, cfg, credit, open_node};
use bitcoin::consensus::serialize;
use chain::Backend;
use core_rpc::server::{Credentials, RpcHandler};
use core_rpc::{Auth, RpcClient, RpcError};
use ledger::{Account, PayoutMethod, PayoutState, PlatformAccount};
use payouts::{Engine, Round, Signer};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// (outputs as sent, comment, fee_rate) of every sendmany that committed.
    sent: Vec<(Value, String, Value)>,
    /// txid → (transaction, comment, confirmations).
    txs: Vec<(bitcoin::Transaction, String, i64)>,
    fail_next_sendmany: bool,
    fail_next_gettransaction: bool,
    /// Entries of other wallet activity, newer than every send.
    other_entries: usize,
}

struct FakeWallet {
    recorded: Value,
    state: Mutex<State>,
}

impl FakeWallet {
    fn tx_json(&self, tx: &bitcoin::Transaction, comment: &str, confs: i64) -> Value {
        let mut v = self.recorded["gettransaction"].clone();
        v["txid"] = json!(tx.compute_txid().to_string());
        v["wtxid"] = json!(tx.compute_wtxid().to_string());
        v["hex"] = json!(bitcoin::hex::DisplayHex::to_lower_hex_string(&serialize(tx)[..]));
        v["comment"] = json!(comment);
        v["confirmations"] = json!(confs);
        if confs > 0 {
            v["blockheight"] = json!(200);
        }
        v
    }
}

impl RpcHandler for FakeWallet {
    fn call(&self, method: &str, params: &[Value]) -> Result<Value, RpcError> {
        let mut s = self.state.lock().unwrap();
        match method {
            "getbalances" => Ok(self.recorded["getbalances"].clone()),
            "sendmany" => {
                if std::mem::take(&mut s.fail_next_sendmany) {
                    return Err(RpcError::new(-6, "Insufficient funds"));
                }
                assert_eq!(params.first(), Some(&json!("")), "dummy must be \"\"");
                let amounts = params.get(1).cloned().unwrap_or(Value::Null);
                let comment = params.get(3).and_then(Value::as_str).unwrap_or("").to_string();
                // A real transaction paying exactly the amounts (strings parsed as Core would).
                let mut output = Vec::new();
                for (a, amt) in amounts.as_object().unwrap() {
                    let sat =
                        bitcoin::Amount::from_str_in(amt.as_str().unwrap(), bitcoin::Denomination::Bitcoin)
                            .unwrap();
                    let spk = a
                        .parse::<bitcoin::Address<_>>()
                        .unwrap()
                        .assume_checked()
                        .script_pubkey();
                    output.push(bitcoin::TxOut {
                        value: sat,
                        script_pubkey: spk,
                    });
                }
                let tx = bitcoin::Transaction {
                    version: bitcoin::transaction::Version::TWO,
                    lock_time: bitcoin::absolute::LockTime::ZERO,
                    input: vec![bitcoin::TxIn {
                        previous_output: bitcoin::OutPoint {
                            txid: bitcoin::hashes::Hash::from_byte_array([s.sent.len() as u8 + 1; 32]),
                            vout: 0,
                        },
                        ..Default::default()
                    }],
                    output,
                };
                s.sent.push((
                    amounts,
                    comment.clone(),
                    params.get(8).cloned().unwrap_or(Value::Null),
                ));
                let txid = tx.compute_txid().to_string();
                s.txs.push((tx, comment, 0));
                Ok(json!(txid))
            }
            "listtransactions" => {
                // As Core: one entry per output of a send, oldest first; `count` entries after
                // skipping the `skip` newest (Core's default count is 10).
                assert_eq!(params.first(), Some(&json!("*")));
                let count = params.get(1).and_then(Value::as_u64).unwrap_or(10) as usize;
                let skip = params.get(2).and_then(Value::as_u64).unwrap_or(0) as usize;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let mut list = Vec::new();
                for (tx, c, confs) in &s.txs {
                    for vout in 0..tx.output.len() {
                        let mut e = self.recorded["listtransactions_entry"].clone();
                        e["txid"] = json!(tx.compute_txid().to_string());
                        e["vout"] = json!(vout);
                        e["comment"] = json!(c);
                        e["confirmations"] = json!(confs);
                        e["time"] = json!(now);
                        e["timereceived"] = json!(now);
                        list.push(e);
                    }
                }
                for i in 0..s.other_entries {
                    let mut e = self.recorded["listtransactions_entry"].clone();
                    e["category"] = json!("receive");
                    e["txid"] = json!(format!("{i:064x}"));
                    // Found by a rescan: an old block's time, received (inserted) now.
                    e["time"] = json!(1_600_000_000);
                    e["timereceived"] = json!(now);
                    list.push(e);
                }
                let end = list.len().saturating_sub(skip);
                let start = end.saturating_sub(count);
                Ok(Value::Array(list[start..end].to_vec()))
            }
            "gettransaction" => {
                if std::mem::take(&mut s.fail_next_gettransaction) {
                    return Err(RpcError::new(-1, "simulated: the answer was lost"));
                }
                let txid = params.first().and_then(Value::as_str).unwrap_or("");
                match s
                    .txs
                    .iter()
                    .find(|(t, _, _)| t.compute_txid().to_string() == txid)
                {
                    Some((tx, c, confs)) => Ok(self.tx_json(tx, c, *confs)),
                    None => Err(RpcError::new(-5, "Invalid or non-wallet transaction id")),
                }
            }
            other => Err(RpcError::new(-32601, format!("Method not found: {other}"))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_wallet_payouts_are_recorded_first_sent_once_and_booked_at_the_wallet_fee() {
    let recorded: Value = serde_json::from_str(include_str!("../data/core-wallet.json")).unwrap();
    for (backend, url, _keep) in test_support::fresh_databases().await {
        let fake = Arc::new(FakeWallet {
            recorded: recorded.clone(),
            state: Mutex::new(State::default()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let handler: Arc<dyn RpcHandler> = fake.clone();
        let server = tokio::spawn(core_rpc::server::serve(
            listener,
            handler,
            Credentials::new(vec!["u:p".into()]),
            std::future::pending(),
        ));
        let rpc = RpcClient::new(
            &format!("http://{at}/wallet/pool"),
            Auth::UserPass("u".into(), "p".into()),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(dir.path());
        let l = Arc::new(ledger::Ledger::open(&url).await.unwrap());
        let (alice, bob) = (addr(1), addr(2));
        credit(&l, "c1", &alice, 3_000_000_000).await;
        credit(&l, "c2", &bob, 2_000_000_500).await;
        let engine = Engine::with_signer(
            l.clone(),
            Backend::Dev(node),
            Signer::Core(payouts::core::CoreWallet::new(rpc)),
            cfg(1_000, 2),
        );
        // 1. The wallet refuses the first send: the payout is recorded (balances in flight) and not sent.
        fake.state.lock().unwrap().fail_next_sendmany = true;
        let Round::Paid {
            txid: intent, payees, ..
        } = engine.pay().await.unwrap()
        else {
            panic!("{backend}: no payout")
        };
        assert_eq!(payees, 2);
        let p = l.payouts(None, 10).await.unwrap().remove(0);
        assert_eq!(
            (p.method, p.signed, p.state),
            (PayoutMethod::CoreWallet, false, PayoutState::InFlight)
        );
        assert_eq!(
            p.txid, intent,
            "{backend}: recorded under its intent id before sendmany"
        );
        assert_eq!(l.balance(&Account::available(&alice)).await.unwrap(), 0);
        assert!(fake.state.lock().unwrap().sent.is_empty());
        assert_eq!(engine.pay().await.unwrap(), Round::Busy);
        // 2. The next pass sends it, with the intent's comment and each payee's exact amount.
        engine.settle().await.unwrap();
        let (amounts, comment, feerate) = fake.state.lock().unwrap().sent[0].clone();
        assert_eq!(comment, payouts::engine::intent_comment(&intent));
        assert_eq!(feerate, json!(2));
        for line in &p.lines {
            let want = core_rpc::sat_to_amount(line.paid_sat as u64);
            assert_eq!(amounts[&line.address], want, "{backend}: {line:?}");
            assert!(
                line.paid_sat * 1000 < line.debit_msat,
                "the payee bears a fee share"
            );
        }
        let p = l.payouts(None, 10).await.unwrap().remove(0);
        assert!(p.signed, "{backend}: the wallet's txid and bytes recorded");
        let sent_tx: bitcoin::Transaction = bitcoin::consensus::deserialize(&p.raw_tx).unwrap();
        assert_eq!(sent_tx.compute_txid().to_string(), p.txid);
        // More passes send nothing more.
        engine.settle().await.unwrap();
        assert_eq!(fake.state.lock().unwrap().sent.len(), 1, "{backend}: sent once");
        // 3. Confirmed 1 deep (the configured depth): settled; the wallet's actual fee (1,410 sat)
        //    is what was paid out, the payees' shares covered the rest and the reserve holds it.
        fake.state.lock().unwrap().txs[0].2 = 1;
        assert_eq!(engine.settle().await.unwrap().confirmed, vec![p.txid.clone()]);
        let outputs: i64 = p.lines.iter().map(|x| x.paid_sat * 1000).sum();
        let debited: i64 = p.lines.iter().map(|x| x.debit_msat).sum();
        let paid_out = l
            .balance(&Account::Platform(PlatformAccount::PaidOut))
            .await
            .unwrap();
        let reserve = l
            .balance(&Account::Platform(PlatformAccount::PoolReserve))
            .await
            .unwrap();
        assert_eq!(
            paid_out,
            outputs + 1_410_000,
            "{backend}: outputs + the wallet's fee"
        );
        assert_eq!(
            reserve,
            debited - paid_out,
            "{backend}: the fee difference, exactly"
        );
        assert_eq!(
            l.balance(&Account::Platform(PlatformAccount::PayoutsInFlight))
                .await
                .unwrap(),
            0
        );
        // 4. A send whose answer is lost (the pool crashed, or the connection broke, after Core
        //    committed it): the next pass finds it by its comment and does not send again.
        credit(&l, "c3", &alice, 4_000_000_000).await;
        fake.state.lock().unwrap().fail_next_gettransaction = true;
        assert!(
            engine.pay().await.is_err(),
            "{backend}: the pass fails with the answer lost"
        );
        assert_eq!(fake.state.lock().unwrap().sent.len(), 2);
        // Meanwhile the wallet served others: 1,500 newer entries push the send past the first
        // page of listtransactions (the search pages back until entries predate the payout).
        fake.state.lock().unwrap().other_entries = 1_500;
        let p2 = l
            .payouts(Some(PayoutState::InFlight), 10)
            .await
            .unwrap()
            .remove(0);
        assert!(!p2.signed);
        engine.settle().await.unwrap();
        assert_eq!(
            fake.state.lock().unwrap().sent.len(),
            2,
            "{backend}: found by its comment, never sent twice"
        );
        let p2 = l
            .payouts(Some(PayoutState::InFlight), 10)
            .await
            .unwrap()
            .remove(0);
        assert!(p2.signed);
        assert_eq!(
            p2.txid,
            fake.state.lock().unwrap().txs[1].0.compute_txid().to_string()
        );
        assert!(l.verify().await.unwrap().problems.is_empty());
        l.close().await;
        server.abort();
    }
}
