//! The ledger against real databases: every test runs on SQLite (a temp file) and on PostgreSQL (a
//! fresh database in the server `scripts/test.sh` starts; `CLOUDMINE_TEST_DATABASE_URL`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ledger::{Account, Ledger, LedgerError, PlatformAccount, Posted, Posting, Transaction};
use proptest::prelude::*;
use units::MilliSats;

/// A fresh, empty ledger database per backend.
async fn fresh() -> Vec<(&'static str, String, Option<tempfile::TempDir>)> {
    test_support::fresh_databases().await
}

fn msat(n: u64) -> MilliSats {
    MilliSats::new(n).unwrap()
}

fn mined() -> Account {
    Account::Platform(PlatformAccount::Mined)
}

fn mint(key: &str, to: &str, n: u64) -> Transaction {
    Transaction::transfer(key, "block reward", mined(), Account::available(to), msat(n)).unwrap()
}

#[tokio::test]
async fn posting_moves_money_and_every_balance_derives_from_entries() {
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        assert_eq!(l.backend(), backend);
        l.post(&mint("m1", "alice", 5_000_000)).await.unwrap();
        let t = Transaction::new(
            "split-1",
            "pay bob and fees",
            vec![
                Posting::debit(Account::available("alice"), msat(3_000_000)).unwrap(),
                Posting::credit(Account::available("bob"), msat(2_900_000)).unwrap(),
                Posting::credit(Account::Platform(PlatformAccount::Fees), msat(100_000)).unwrap(),
            ],
        )
        .unwrap();
        assert!(matches!(l.post(&t).await.unwrap(), Posted::New(_)));
        assert_eq!(
            l.balance(&Account::available("alice")).await.unwrap(),
            2_000_000,
            "{backend}"
        );
        assert_eq!(l.balance(&Account::available("bob")).await.unwrap(), 2_900_000);
        assert_eq!(l.balance(&mined()).await.unwrap(), -5_000_000);
        assert_eq!(l.balance(&Account::available("nobody")).await.unwrap(), 0);
        let h = l.history(&Account::available("alice"), 10).await.unwrap();
        assert_eq!(
            h.iter().map(|x| x.msat).collect::<Vec<_>>(),
            vec![-3_000_000, 5_000_000]
        );
        assert_eq!(h[0].key, "split-1");
        let b = l.balances_of("alice").await.unwrap();
        assert_eq!(b, vec![("user/alice/available".to_string(), 2_000_000)]);
        let v = l.verify().await.unwrap();
        assert!(v.problems.is_empty(), "{backend}: {:?}", v.problems);
        assert_eq!((v.transactions, v.entries, v.balance_sum), (2, 5, 0));
        l.close().await;
        // Reopen: migrations are not re-applied, balances are still there.
        let l = Ledger::open(&url).await.unwrap();
        assert_eq!(l.balance(&Account::available("bob")).await.unwrap(), 2_900_000);
    }
}

#[tokio::test]
async fn a_retried_transaction_is_a_no_op_and_a_reused_key_is_refused() {
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        let first = l.post(&mint("block-100", "alice", 1_000)).await.unwrap();
        let again = l.post(&mint("block-100", "alice", 1_000)).await.unwrap();
        assert_eq!(again, Posted::Duplicate(first.id()), "{backend}");
        assert_eq!(l.balance(&Account::available("alice")).await.unwrap(), 1_000);
        let other = l.post(&mint("block-100", "alice", 2_000)).await;
        assert!(
            matches!(other, Err(LedgerError::KeyConflict { existing, .. }) if existing == first.id()),
            "{other:?}"
        );
        assert_eq!(l.balance(&Account::available("alice")).await.unwrap(), 1_000);
        assert!(l.verify().await.unwrap().problems.is_empty());
    }
}

#[tokio::test]
async fn an_overdraft_is_refused_and_writes_nothing() {
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        l.post(&mint("m", "alice", 100)).await.unwrap();
        let t = Transaction::transfer(
            "pay",
            "",
            Account::available("alice"),
            Account::available("carol"),
            msat(101),
        )
        .unwrap();
        let r = l.post(&t).await;
        assert!(
            matches!(
                &r,
                Err(LedgerError::InsufficientFunds {
                    balance: 100,
                    posting: -101,
                    ..
                })
            ),
            "{backend}: {r:?}"
        );
        assert_eq!(l.balance(&Account::available("carol")).await.unwrap(), 0);
        assert_eq!(l.verify().await.unwrap().transactions, 1);
        // The key was not consumed: the same key with an affordable amount posts.
        let t = Transaction::transfer(
            "pay",
            "",
            Account::available("alice"),
            Account::available("carol"),
            msat(100),
        )
        .unwrap();
        assert!(matches!(l.post(&t).await.unwrap(), Posted::New(_)));
        assert_eq!(l.halted(), None);
    }
}

#[tokio::test]
async fn a_batch_commits_once_and_each_transaction_stands_alone() {
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        let a = Account::available("a");
        let b = Account::available("b");
        let txs = vec![
            mint("b1", "a", 10),
            Transaction::transfer("b2", "", a.clone(), Account::available("new-in-batch"), msat(4)).unwrap(),
            Transaction::transfer("b3", "", b.clone(), a.clone(), msat(1)).unwrap(), // b has nothing
            Transaction::transfer("b4", "", Account::available("new-in-batch"), b.clone(), msat(4)).unwrap(),
            mint("b1", "a", 10), // duplicate inside the batch
        ];
        let r = l.post_batch(&txs).await.unwrap();
        assert!(matches!(r[0], Ok(Posted::New(_))), "{backend}");
        assert!(matches!(r[1], Ok(Posted::New(_))));
        assert!(matches!(r[2], Err(LedgerError::InsufficientFunds { .. })));
        assert!(matches!(r[3], Ok(Posted::New(_))));
        assert!(matches!(r[4], Ok(Posted::Duplicate(_))));
        assert_eq!(l.balance(&a).await.unwrap(), 6);
        assert_eq!(l.balance(&b).await.unwrap(), 4);
        let v = l.verify().await.unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.transactions, 3);
        assert!(matches!(
            l.post_batch(&vec![mint("x", "a", 1); 10_001]).await,
            Err(LedgerError::BatchTooLarge(10_001))
        ));
    }
}

/// Raw SQL on the same database, bypassing the Rust checks.
async fn raw(url: &str, sql: &str) -> Result<u64, String> {
    let q = sqlx::AssertSqlSafe(sql.to_string());
    if url.starts_with("postgres") {
        let p = sqlx::PgPool::connect(url).await.unwrap();
        let r = sqlx::query(q)
            .execute(&p)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| e.to_string());
        p.close().await;
        r
    } else {
        let p = sqlx::SqlitePool::connect(&format!("sqlite://{url}"))
            .await
            .unwrap();
        let r = sqlx::query(q)
            .execute(&p)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| e.to_string());
        p.close().await;
        r
    }
}

#[tokio::test]
async fn the_database_enforces_the_rules_again_and_tampering_halts_the_ledger() {
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        l.post(&mint("m", "alice", 1_000)).await.unwrap();
        // Entries are immutable; transactions are never deleted; sealed ones never change.
        for sql in [
            "UPDATE ledger_entries SET amount_msat = 1",
            "DELETE FROM ledger_entries",
            "DELETE FROM ledger_transactions",
            "UPDATE ledger_transactions SET memo = 'x'",
            "UPDATE ledger_accounts SET balance_msat = -1 WHERE name = 'user/alice/available'",
            "INSERT INTO ledger_entries (tx_id, account_id, amount_msat) SELECT id, 1, 0 FROM ledger_transactions",
        ] {
            let r = raw(&url, sql).await;
            assert!(r.is_err(), "{backend}: {sql} was allowed");
        }
        // An unbalanced transaction cannot be sealed.
        raw(&url, "INSERT INTO ledger_transactions (idem_key, fingerprint, memo, posted_at_ms, postings) VALUES ('raw', '', '', 0, 2)")
            .await
            .unwrap();
        raw(&url, "INSERT INTO ledger_entries (tx_id, account_id, amount_msat) SELECT id, 1, 5 FROM ledger_transactions WHERE idem_key = 'raw'")
            .await
            .unwrap();
        raw(&url, "INSERT INTO ledger_entries (tx_id, account_id, amount_msat) SELECT id, 2, -4 FROM ledger_transactions WHERE idem_key = 'raw'")
            .await
            .unwrap();
        let r = raw(
            &url,
            "UPDATE ledger_transactions SET sealed = TRUE WHERE idem_key = 'raw'",
        )
        .await;
        assert!(r.unwrap_err().contains("ledger invariant"), "{backend}");
        // verify sees the unsealed, unbalanced transaction and halts the ledger.
        let v = l.verify().await.unwrap();
        assert!(
            v.problems.iter().any(|p| p.contains("not sealed")),
            "{:?}",
            v.problems
        );
        assert!(
            v.problems.iter().any(|p| p.contains("entries sum to 1 msat")),
            "{:?}",
            v.problems
        );
        assert!(l.halted().is_some());
        let r = l.post(&mint("after", "alice", 1)).await;
        assert!(matches!(r, Err(LedgerError::Halted(_))), "{r:?}");
    }
}

#[tokio::test]
async fn a_balance_edited_behind_the_ledgers_back_is_found() {
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        l.post(&mint("m", "alice", 1_000)).await.unwrap();
        assert_eq!(raw(&url, "UPDATE ledger_accounts SET balance_msat = balance_msat + 7 WHERE name = 'user/alice/available'").await, Ok(1));
        let v = l.verify().await.unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("user/alice/available: balance 1007 msat, entries sum to 1000")),
            "{backend}: {:?}",
            v.problems
        );
        assert!(v.problems.iter().any(|p| p.contains("balances sum to 7")));
        assert!(matches!(
            l.post(&mint("m2", "bob", 1)).await,
            Err(LedgerError::Halted(_))
        ));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Mint(usize, u64),
    Transfer(usize, usize, u64),
    Retry(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..4, 1u64..1_000_000).prop_map(|(u, n)| Op::Mint(u, n)),
        (0usize..4, 0usize..4, 1u64..2_000_000).prop_map(|(a, b, n)| Op::Transfer(a, b, n)),
        (0usize..64).prop_map(Op::Retry),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Random mints, transfers (many overdrafts) and retries of earlier keys: the ledger agrees with a
    /// model kept in plain integers, every balance is non-negative, all balances sum to zero, and
    /// verify passes, on both backends.
    #[test]
    fn random_sequences_keep_the_books_exact(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for (backend, url, _keep) in fresh().await {
                let l = Ledger::open(&url).await.unwrap();
                let mut model = [0i64; 4];
                let mut minted = 0i64;
                let mut posted: Vec<(Transaction, bool)> = Vec::new();
                for (i, o) in ops.iter().enumerate() {
                    let (t, ok) = match o {
                        Op::Mint(u, n) => (mint(&format!("k{i}"), &format!("u{u}"), *n), true),
                        Op::Transfer(a, b, n) if a != b => (
                            Transaction::transfer(&format!("k{i}"), "", Account::available(&format!("u{a}")), Account::available(&format!("u{b}")), msat(*n)).unwrap(),
                            model[*a] >= i64::try_from(*n).unwrap(),
                        ),
                        Op::Transfer(..) => continue,
                        Op::Retry(j) => match posted.get(*j % posted.len().max(1)) {
                            Some((t, _)) => {
                                let r = l.post(t).await.unwrap();
                                assert!(matches!(r, Posted::Duplicate(_)), "{backend}");
                                continue;
                            }
                            None => continue,
                        },
                    };
                    let r = l.post(&t).await;
                    assert_eq!(r.is_ok(), ok, "{backend}: {o:?} -> {r:?}");
                    if ok {
                        match o {
                            Op::Mint(u, n) => { model[*u] += i64::try_from(*n).unwrap(); minted += i64::try_from(*n).unwrap(); }
                            Op::Transfer(a, b, n) => { model[*a] -= i64::try_from(*n).unwrap(); model[*b] += i64::try_from(*n).unwrap(); }
                            Op::Retry(_) => {}
                        }
                        posted.push((t, true));
                    }
                }
                for (u, want) in model.iter().enumerate() {
                    assert_eq!(l.balance(&Account::available(&format!("u{u}"))).await.unwrap(), *want, "{backend}");
                }
                assert_eq!(l.balance(&mined()).await.unwrap(), -minted);
                let v = l.verify().await.unwrap();
                assert!(v.problems.is_empty(), "{backend}: {:?}", v.problems);
                l.close().await;
            }
        });
    }
}

#[tokio::test]
async fn work_is_ingested_once_and_read_back_as_a_window() {
    use ledger::WorkRecord;
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        let rec = |seq: u64, owner: &str, work: u128| WorkRecord {
            seq,
            owner: owner.into(),
            work,
            ts_ms: 1_000 + seq as i64,
        };
        assert_eq!(l.work_high_water("pool").await.unwrap(), None);
        let big = (1u128 << 100) + 12_345; // needs both halves
        assert_eq!(
            l.ingest_work("pool", &[rec(1, "a", 10), rec(2, "b", big), rec(3, "a", 30)])
                .await
                .unwrap(),
            3,
            "{backend}"
        );
        // A retried ingest (overlapping) adds only what is new.
        assert_eq!(
            l.ingest_work("pool", &[rec(3, "a", 30), rec(4, "c", 5)])
                .await
                .unwrap(),
            1
        );
        // Another source has its own sequence.
        assert_eq!(l.ingest_work("proxy", &[rec(1, "z", 1)]).await.unwrap(), 1);
        assert_eq!(l.work_high_water("pool").await.unwrap(), Some(4));
        // Newest first; the edge record counts only its part inside the window.
        let w = l.work_window("pool", 40).await.unwrap();
        assert_eq!(
            w,
            vec![("c".to_string(), 5), ("a".to_string(), 30), ("b".to_string(), 5)]
        );
        let all = l.work_window("pool", u128::MAX).await.unwrap();
        assert_eq!(all.iter().map(|x| x.1).sum::<u128>(), 10 + big + 30 + 5);
        assert!(l.ingest_work("pool", &[rec(9, "", 1)]).await.is_err());
        assert!(l.ingest_work("pool", &[rec(9, "a", 1u128 << 127)]).await.is_err());
        // Reads go back in pages of sequence numbers: gaps longer than a page, and a window spanning
        // several pages, read the same as one walk.
        let page = ledger::store::WINDOW_PAGE as u64;
        let far: Vec<WorkRecord> = (0..3 * page)
            .map(|i| rec(5 + 3 * page + i, if i % 2 == 0 { "d" } else { "e" }, 2))
            .collect();
        l.ingest_work("pool", &far).await.unwrap();
        let w = l.work_window("pool", u128::MAX).await.unwrap();
        assert_eq!(w.len(), 4 + far.len(), "{backend}: every record across the gap");
        assert_eq!(
            w.iter().map(|x| x.1).sum::<u128>(),
            10 + big + 30 + 5 + 2 * far.len() as u128
        );
        let upto = l.work_window_upto("pool", 5 + 3 * page + 10, 7).await.unwrap();
        assert_eq!(upto.iter().map(|x| x.1).sum::<u128>(), 7, "{backend}");
        assert_eq!(upto.len(), 4, "{backend}: 2 + 2 + 2 + the edge's 1");
        let across = l
            .work_window_upto("pool", 5 + 3 * page + 1, 2 * 2 + 5 + 1)
            .await
            .unwrap();
        assert_eq!(
            across,
            vec![
                ("e".to_string(), 2),
                ("d".to_string(), 2),
                ("c".to_string(), 5),
                ("a".to_string(), 1)
            ],
            "{backend}: newest first across the gap, the edge cut"
        );
    }
}

#[tokio::test]
async fn the_pool_reserve_may_carry_pps_ahead_of_blocks_and_keys_are_a_cursor() {
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        let reserve = Account::Platform(PlatformAccount::PoolReserve);
        assert_eq!(l.last_key_with_prefix("pps:").await.unwrap(), None, "{backend}");
        // PPS pays before any block: the reserve goes negative (the operator's capital).
        for (k, n) in [("pps:1-10", 700u64), ("pps:11-12", 50)] {
            let t = Transaction::transfer(k, "PPS", reserve.clone(), Account::available("alice"), msat(n))
                .unwrap();
            l.post(&t).await.unwrap();
        }
        l.post(&mint("block:x", "bob", 5)).await.unwrap();
        assert_eq!(l.balance(&reserve).await.unwrap(), -750, "{backend}");
        assert_eq!(
            l.last_key_with_prefix("pps:").await.unwrap().as_deref(),
            Some("pps:11-12"),
            "{backend}: the newest key with the prefix, not the newest transaction"
        );
        // A block refills it.
        let refill =
            Transaction::transfer("block:y", "refill", mined(), reserve.clone(), msat(1000)).unwrap();
        l.post(&refill).await.unwrap();
        assert_eq!(l.balance(&reserve).await.unwrap(), 250);
        assert!(l.verify().await.unwrap().problems.is_empty(), "{backend}");
        // A user balance still may not.
        let t = Transaction::transfer("x", "", Account::available("bob"), reserve.clone(), msat(6)).unwrap();
        assert!(matches!(
            l.post(&t).await,
            Err(LedgerError::InsufficientFunds { .. })
        ));
        assert!(
            l.last_key_with_prefix("pps%").await.is_err(),
            "{backend}: LIKE wildcards refused"
        );
    }
}

#[tokio::test]
async fn payout_bytes_are_completed_once_and_signed_bytes_never_change() {
    use ledger::{PayoutDraft, PayoutLine, PayoutMethod, PayoutState};
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        l.post(&mint("m", "alice", 5_000_000)).await.unwrap();
        let inflight = Account::Platform(PlatformAccount::PayoutsInFlight);
        let debit = |key: &str| {
            Transaction::transfer(
                key,
                "payout",
                Account::available("alice"),
                inflight.clone(),
                msat(1_000_000),
            )
            .unwrap()
        };
        let line = PayoutLine {
            owner: "alice".into(),
            address: "bcrt1qexample".into(),
            debit_msat: 1_000_000,
            paid_sat: 900,
        };
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        // A Core wallet payout: recorded under its intent id, then completed with the wallet's txid.
        let draft = PayoutDraft {
            txid: a.clone(),
            raw_tx: vec![1; 60],
            fee_sat: 100,
            lines: vec![line.clone()],
            method: PayoutMethod::CoreWallet,
            signed: false,
            psbt: None,
        };
        l.record_payout(&debit(&format!("payout:{a}")), &draft)
            .await
            .unwrap();
        let id = l.payouts(None, 1).await.unwrap()[0].id;
        l.complete_payout(id, &b, &[2; 70]).await.unwrap();
        let p = &l.payouts(None, 1).await.unwrap()[0];
        assert_eq!(
            (p.txid.as_str(), p.signed, p.raw_tx.len()),
            (b.as_str(), true, 70),
            "{backend}"
        );
        // Once: a second completion is refused, and so is any edit of the signed bytes or txid.
        assert!(matches!(
            l.complete_payout(id, &a, &[3; 70]).await,
            Err(LedgerError::Refused(_))
        ));
        for sql in [
            "UPDATE payouts SET raw_tx = raw_tx || raw_tx",
            "UPDATE payouts SET txid = 'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc'",
            "UPDATE payouts SET signed = 0",
            "UPDATE payouts SET method = 'pool-key'",
        ] {
            let r = raw(&url, sql).await;
            assert!(
                r.unwrap_err().contains("ledger invariant"),
                "{backend}: {sql} was allowed"
            );
        }
        // A PSBT payout keeps its txid: completing it under another is refused.
        let c = "c".repeat(64);
        let draft = PayoutDraft {
            txid: c.clone(),
            method: PayoutMethod::Psbt,
            psbt: Some(vec![9; 10]),
            ..draft
        };
        l.record_payout(&debit(&format!("payout:{c}")), &draft)
            .await
            .unwrap();
        let p = l.payouts(Some(PayoutState::InFlight), 10).await.unwrap();
        let id = p.iter().find(|p| p.txid == c).unwrap().id;
        assert!(matches!(
            l.complete_payout(id, &a, &[4; 70]).await,
            Err(LedgerError::Refused(_))
        ));
        let d = "d".repeat(64);
        let r = raw(&url, &format!("UPDATE payouts SET txid = '{d}' WHERE id = {id}")).await;
        assert!(r.unwrap_err().contains("ledger invariant"), "{backend}");
        l.complete_payout(id, &c, &[4; 70]).await.unwrap();
        assert_eq!(
            l.payouts(None, 10)
                .await
                .unwrap()
                .iter()
                .filter(|p| p.signed)
                .count(),
            2
        );
        assert!(l.halted().is_none(), "{backend}: refusals do not halt");
        l.close().await;
    }
}

#[tokio::test]
async fn retention_deletes_old_work_below_the_kept_windows_and_refuses_a_window_reaching_past_it() {
    use ledger::WorkRecord;
    for (backend, url, _keep) in fresh().await {
        let l = Ledger::open(&url).await.unwrap();
        // seq 1..=100, one unit of work each, logged at ts = 10·seq.
        let recs: Vec<WorkRecord> = (1..=100u64)
            .map(|seq| WorkRecord {
                seq,
                owner: if seq % 2 == 0 { "a".into() } else { "b".into() },
                work: 1,
                ts_ms: 10 * seq as i64,
            })
            .collect();
        l.ingest_work("pool", &recs).await.unwrap();
        l.ingest_work("other", &recs).await.unwrap();
        // The window of 30 ending at 100 starts at 71; 200 is more than the log holds.
        assert_eq!(
            l.work_window_start("pool", 100, 30).await.unwrap(),
            Some((71, 30)),
            "{backend}"
        );
        assert_eq!(
            l.work_window_start("pool", 100, 200).await.unwrap(),
            Some((1, 100)),
            "{backend}"
        );
        assert_eq!(
            l.work_window_start("none", 100, 200).await.unwrap(),
            None,
            "{backend}"
        );
        assert_eq!(l.work_pruned_below("pool").await.unwrap(), 0);
        // Nothing older than ts 5: nothing deleted, no mark.
        assert_eq!(l.prune_work("pool", 71, 5, 1_000).await.unwrap(), 0, "{backend}");
        assert_eq!(l.work_pruned_below("pool").await.unwrap(), 0);
        // Older than ts 405 (seq ≤ 40) and below 71, in chunks of 25: seq 1..=25, then 26..=40.
        assert_eq!(l.prune_work("pool", 71, 405, 25).await.unwrap(), 25, "{backend}");
        assert_eq!(l.work_pruned_below("pool").await.unwrap(), 26);
        assert_eq!(l.prune_work("pool", 71, 405, 25).await.unwrap(), 15, "{backend}");
        assert_eq!(l.work_pruned_below("pool").await.unwrap(), 41);
        assert_eq!(
            l.prune_work("pool", 71, 405, 25).await.unwrap(),
            0,
            "{backend}: nothing left that old"
        );
        // Everything is old now, but nothing at or above the kept window's start goes.
        assert_eq!(
            l.prune_work("pool", 71, i64::MAX, 1_000).await.unwrap(),
            30,
            "{backend}"
        );
        assert_eq!(l.work_pruned_below("pool").await.unwrap(), 71);
        // The newest record always stays (it is the ingest cursor).
        assert_eq!(
            l.prune_work("pool", u64::MAX, i64::MAX, 1_000).await.unwrap(),
            29,
            "{backend}"
        );
        assert_eq!(l.work_high_water("pool").await.unwrap(), Some(100));
        // Another source is untouched.
        assert_eq!(
            l.work_window("other", u128::MAX).await.unwrap().len(),
            100,
            "{backend}"
        );
        // A window that fits what is kept is read; one that needs deleted work is refused, never
        // computed over less work than it asked for.
        assert_eq!(
            l.work_window("pool", 1).await.unwrap(),
            vec![("a".to_string(), 1)]
        );
        let err = l.work_window("pool", 2).await.unwrap_err();
        assert!(
            matches!(err, ledger::LedgerError::WorkPruned { below: 100, .. }),
            "{backend}: {err}"
        );
        // A young log (nothing pruned) still reads a window larger than itself.
        assert_eq!(l.work_window("other", 1_000).await.unwrap().len(), 100);
        l.close().await;
    }
}
