//! Dev chain integration tests: real blocks mined by brute force, real files, real signatures.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, Block, CompressedPublicKey, OutPoint, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Witness,
};
use devchain::{DevChain, SubmitOutcome};

const T: u32 = 30;
const START: u32 = 1_700_000_000;

struct Key {
    sk: SecretKey,
    pk: CompressedPublicKey,
}

fn key(n: u8) -> Key {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&[n; 32]).unwrap();
    let pk = CompressedPublicKey(sk.public_key(&secp));
    Key { sk, pk }
}

fn spk(k: &Key) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&k.pk.wpubkey_hash())
}

/// Mines `n` blocks spaced exactly T apart (so difficulty stays at the floor); returns the last time used.
fn mine_n(chain: &mut DevChain, n: u32, script: &ScriptBuf, mut now: u32) -> u32 {
    for _ in 0..n {
        now += T;
        let b = chain
            .generate_block(script, now, 1_000_000)
            .expect("found a block");
        chain.submit_block(b, now).unwrap();
    }
    now
}

fn sign_p2wpkh(tx: &mut Transaction, idx: usize, k: &Key, value: Amount) {
    let secp = Secp256k1::new();
    let script = spk(k);
    let sighash = SighashCache::new(&*tx)
        .p2wpkh_signature_hash(idx, &script, value, EcdsaSighashType::All)
        .unwrap();
    let sig = secp.sign_ecdsa(&Message::from_digest(sighash.to_byte_array()), &k.sk);
    let sig = bitcoin::ecdsa::Signature {
        signature: sig,
        sighash_type: EcdsaSighashType::All,
    };
    tx.input[idx].witness = Witness::p2wpkh(&sig, &k.pk.0);
}

fn spend(op: OutPoint, value: Amount, from: &Key, to: &ScriptBuf, fee: u64) -> Transaction {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: op,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: value - Amount::from_sat(fee),
            script_pubkey: to.clone(),
        }],
    };
    sign_p2wpkh(&mut tx, 0, from, value);
    tx
}

#[test]
fn mines_restarts_and_finds_chain_intact() {
    let dir = tempfile::tempdir().unwrap();
    let a = key(1);
    let (tip_hash, utxos) = {
        let mut chain = DevChain::open(dir.path(), T).unwrap();
        assert_eq!(chain.height(), 0);
        mine_n(&mut chain, 20, &spk(&a), START);
        assert_eq!(chain.height(), 20);
        // heights 1..16 carry OP_1..OP_16
        let cb = &chain.at_height(15).unwrap().block.txdata[0];
        assert_eq!(cb.input[0].script_sig.as_bytes()[0], 0x5f);
        (chain.tip().hash, chain.utxo_count())
    };
    let chain = DevChain::open(dir.path(), T).unwrap();
    assert_eq!(chain.height(), 20);
    assert_eq!(chain.tip().hash, tip_hash);
    assert_eq!(chain.utxo_count(), utxos);
    assert_eq!(chain.coins_for(&spk(&a)).len(), 20);
}

#[test]
fn spends_a_matured_coinbase_and_sees_it_mined() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(1), key(2));
    let mut chain = DevChain::open(dir.path(), T).unwrap();
    let mut now = mine_n(&mut chain, 1, &spk(&a), START);
    let (op, coin) = chain.coins_for(&spk(&a))[0].clone();
    // immature: refused with Core's reason
    let tx = spend(op, coin.out.value, &a, &spk(&b), 1_000);
    let err = chain.accept_transaction(tx.clone(), now, None).unwrap_err();
    assert_eq!(err.reason, "bad-txns-premature-spend-of-coinbase");
    now = mine_n(&mut chain, 99, &spk(&b), now);
    // a wrong signature is refused (signed by b for a's output)
    let forged = spend(op, coin.out.value, &b, &spk(&b), 1_000);
    let err = chain.accept_transaction(forged, now, None).unwrap_err();
    assert!(
        err.reason.contains("mandatory-script-verify-flag-failed"),
        "{}",
        err.reason
    );
    // a tampered amount breaks the signature
    let mut tampered = tx.clone();
    tampered.output[0].value = coin.out.value - Amount::from_sat(500);
    assert!(chain.accept_transaction(tampered, now, None).is_err());
    // the real one is accepted
    let txid = chain.accept_transaction(tx.clone(), now, None).unwrap();
    assert_eq!(chain.mempool().len(), 1);
    // a double spend of the same output conflicts
    let double = spend(op, coin.out.value, &a, &spk(&a), 2_000);
    assert_eq!(
        chain.accept_transaction(double, now, None).unwrap_err().reason,
        "txn-mempool-conflict"
    );
    // the template carries it and its fee
    let t = chain.template(now + T);
    assert_eq!(t.transactions.len(), 1);
    assert_eq!(
        t.coinbase_value.to_sat(),
        devchain::params::subsidy(101).to_sat() + 1_000
    );
    now = mine_n(&mut chain, 1, &spk(&a), now);
    assert_eq!(chain.find_tx(&txid), Some(101));
    assert!(chain.mempool().is_empty());
    assert_eq!(
        chain
            .coins_for(&spk(&b))
            .iter()
            .filter(|(_, c)| !c.coinbase)
            .count(),
        1
    );
    // resending it now: its outputs are in the UTXO set
    let again = chain.accept_transaction(tx, now, None).unwrap_err();
    assert_eq!(again.code, -27);
    // survives restart
    drop(chain);
    let chain = DevChain::open(dir.path(), T).unwrap();
    assert_eq!(chain.find_tx(&txid), Some(101));
}

/// Re-mines a modified block so that only the intended rule fails.
fn regrind(mut b: Block, target_ok: bool) -> Block {
    let target = b.header.target();
    for nonce in 0..u32::MAX {
        b.header.nonce = nonce;
        if target.is_met_by(b.block_hash()) == target_ok {
            return b;
        }
    }
    unreachable!()
}

fn fix_merkle(mut b: Block) -> Block {
    b.header.merkle_root = b.compute_merkle_root().unwrap();
    b
}

#[test]
fn bad_blocks_get_core_reasons_and_leave_the_chain_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let a = key(1);
    let mut chain = DevChain::open(dir.path(), T).unwrap();
    let now = mine_n(&mut chain, 3, &spk(&a), START);
    let good = chain.generate_block(&spk(&a), now + T, 1_000_000).unwrap();
    let tip = chain.tip().hash;
    let reason = |chain: &mut DevChain, b: Block, at: u32| match chain.submit_block(b, at) {
        Err(devchain::chain::SubmitError::Rejected(r)) => r.reason,
        other => panic!("expected a reject, got {other:?}"),
    };
    let mut cases: Vec<(&str, Block, u32)> = Vec::new();
    cases.push(("high-hash", regrind(good.clone(), false), now + T));
    let mut b = good.clone();
    b.header.merkle_root = bitcoin::TxMerkleNode::all_zeros();
    cases.push(("bad-txnmrklroot", regrind(b, true), now + T));
    // Core's rule: more than two hours ahead of the wall clock.
    let ahead = devchain::params::MAX_FUTURE_BLOCK_TIME_S;
    cases.push(("time-too-new", good.clone(), now + T - ahead - 1));
    let mut b = good.clone();
    b.header.time = chain.tip().median_time;
    cases.push(("time-too-old", regrind(b, true), now + T));
    let mut b = good.clone();
    b.header.bits = bitcoin::CompactTarget::from_consensus(0x207ffff0);
    cases.push(("bad-diffbits", regrind(b, true), now + T));
    let mut b = good.clone();
    b.txdata[0].output[0].value += Amount::from_sat(1);
    cases.push(("bad-cb-amount", regrind(fix_merkle(b), true), now + T));
    let mut b = good.clone();
    let mut sig = b.txdata[0].input[0].script_sig.to_bytes();
    sig[0] = 0x55; // OP_5 instead of OP_4
    b.txdata[0].input[0].script_sig = ScriptBuf::from_bytes(sig);
    cases.push(("bad-cb-height", regrind(fix_merkle(b), true), now + T));
    let mut b = good.clone();
    b.txdata[0].input[0].witness = Witness::new();
    cases.push(("bad-witness-nonce-size", regrind(b, true), now + T));
    let mut b = good.clone();
    b.txdata[0].input[0].witness = Witness::from_slice(&[[1u8; 32]]);
    cases.push(("bad-witness-merkle-match", regrind(b, true), now + T));
    let mut b = good.clone();
    b.txdata[0].output.pop(); // drop the commitment, keep the witness
    cases.push(("unexpected-witness", regrind(fix_merkle(b), true), now + T));
    let mut b = good.clone();
    b.header.prev_blockhash = bitcoin::BlockHash::all_zeros();
    cases.push(("prev-blk-not-found", regrind(b, true), now + T));
    let mut b = good.clone();
    b.header.version = bitcoin::block::Version::from_consensus(1);
    cases.push(("bad-version(0x00000001)", regrind(b, true), now + T));
    let mut b = good.clone();
    let cb = b.txdata[0].clone();
    b.txdata.push(cb);
    cases.push(("bad-txns-duplicate", regrind(fix_merkle(b), true), now + T));
    let mut b = good.clone();
    b.txdata.clear();
    cases.push(("bad-blk-length", b, now + T));
    for (want, block, at) in cases {
        assert_eq!(reason(&mut chain, block, at), want);
        assert_eq!(chain.tip().hash, tip, "chain changed after {want}");
        assert_eq!(chain.height(), 3);
    }
    // Ahead of the wall clock, but within Core's two hours: accepted (blocks found faster than one
    // a second push the median time past ahead of the clock).
    chain.submit_block(good.clone(), now + T - 60).unwrap();
    assert_eq!(reason(&mut chain, good, now + T), "duplicate");
    // and the file holds exactly the accepted blocks
    drop(chain);
    assert_eq!(DevChain::open(dir.path(), T).unwrap().height(), 4);
}

#[test]
fn difficulty_rises_when_blocks_come_fast() {
    let dir = tempfile::tempdir().unwrap();
    let a = key(3);
    let mut chain = DevChain::open(dir.path(), T).unwrap();
    let mut now = START;
    let limit = chain.next_bits();
    assert_eq!(limit, 0x207fffff);
    // blocks one second apart: each makes the target about 2^-0.48 smaller
    for _ in 0..12 {
        now += 1;
        let b = chain.generate_block(&spk(&a), now, 10_000_000).unwrap();
        let SubmitOutcome { .. } = chain.submit_block(b, now).unwrap();
    }
    let t_now = units::Target::from_compact(chain.next_bits()).unwrap();
    assert!(
        t_now
            < units::Target::REGTEST_POW_LIMIT
                .to_u256()
                .shr_bits(4)
                .into_target()
    );
    // every accepted block carried exactly the bits the rule demanded (re-checked on reopen)
    drop(chain);
    assert_eq!(DevChain::open(dir.path(), T).unwrap().height(), 12);
}

trait IntoTarget {
    fn into_target(self) -> units::Target;
}
impl IntoTarget for units::U256 {
    fn into_target(self) -> units::Target {
        units::Target::from_u256(self)
    }
}

#[test]
fn damaged_files_give_clear_errors() {
    let a = key(1);
    let dir = tempfile::tempdir().unwrap();
    {
        let mut chain = DevChain::open(dir.path(), T).unwrap();
        mine_n(&mut chain, 5, &spk(&a), START);
    }
    let path = dir.path().join("blocks.dat");
    let good = std::fs::read(&path).unwrap();

    // torn tail: a crash mid-append before the acknowledgement -> set aside, loud, earlier blocks kept
    std::fs::write(&path, &good[..good.len() - 7]).unwrap();
    let chain = DevChain::open(dir.path(), T).unwrap();
    assert_eq!(chain.height(), 4);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("blocks.dat.torn-"))
        .collect();
    assert_eq!(aside.len(), 1);
    drop(chain);

    // a flipped byte inside a record: an error naming the file, offset and record
    let mut bad = good.clone();
    bad[200] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let err = DevChain::open(dir.path(), T).unwrap_err().to_string();
    assert!(
        err.contains("blocks.dat") && err.contains("corrupt at byte offset"),
        "{err}"
    );

    // garbage where a record should start
    let mut bad = good.clone();
    bad[0] = b'X';
    std::fs::write(&path, &bad).unwrap();
    let err = DevChain::open(dir.path(), T).unwrap_err().to_string();
    assert!(err.contains("bad record magic"), "{err}");

    // a damaged parameters file
    std::fs::write(&path, &good).unwrap();
    std::fs::write(dir.path().join("devchain.json"), b"{not json").unwrap();
    let err = DevChain::open(dir.path(), T).unwrap_err().to_string();
    assert!(err.contains("devchain.json"), "{err}");

    // a bad interval flag
    let err = DevChain::open(tempfile::tempdir().unwrap().path(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--dev-block-interval"), "{err}");
}

#[test]
fn interval_change_applies_from_next_block_and_old_blocks_still_validate() {
    let dir = tempfile::tempdir().unwrap();
    let a = key(4);
    let now = {
        let mut chain = DevChain::open(dir.path(), T).unwrap();
        mine_n(&mut chain, 3, &spk(&a), START)
    };
    let mut chain = DevChain::open(dir.path(), 10).unwrap();
    assert_eq!(chain.params().interval_at(3), 30);
    assert_eq!(chain.params().interval_at(4), 10);
    let b = chain.generate_block(&spk(&a), now + 10, 1_000_000).unwrap();
    chain.submit_block(b, now + 10).unwrap();
    drop(chain);
    assert_eq!(DevChain::open(dir.path(), 10).unwrap().height(), 4);
}

#[test]
fn invalidate_block_disconnects_and_returns_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(5), key(6));
    let mut chain = DevChain::open(dir.path(), T).unwrap();
    let mut now = mine_n(&mut chain, 101, &spk(&a), START);
    let (op, coin) = chain.coins_for(&spk(&a))[0].clone();
    let txid = chain
        .accept_transaction(spend(op, coin.out.value, &a, &spk(&b), 500), now, None)
        .unwrap();
    now = mine_n(&mut chain, 2, &spk(&a), now);
    let h102 = chain.hash_at(102).unwrap();
    assert_eq!(chain.find_tx(&txid), Some(102));
    assert_eq!(chain.invalidate_block(&h102, now).unwrap(), 101);
    assert!(chain.mempool().contains(&txid));
    assert!(chain.coin(&op).is_some());
    drop(chain);
    let chain = DevChain::open(dir.path(), T).unwrap();
    assert_eq!(chain.height(), 101);
}

/// The dev chain's minimum-difficulty allowance (testnet's rule): a block stamped more than 2·T
/// after its parent may carry the minimum bits, and so may the blocks after it one by one; one
/// stamped sooner after a regular parent may not; the retarget pauses over allowance blocks; all of
/// it holds again after a restart (every stored block is re-checked).
#[test]
fn minimum_difficulty_allowance_after_two_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let mut chain = DevChain::open(dir.path(), T).unwrap();
    let script = spk(&key(3));
    let limit = 0x207f_ffff;
    // Harden: blocks 1 s apart make each about half a bit harder.
    let mut now = START;
    for _ in 0..24 {
        now += 1;
        let b = chain.generate_block(&script, now, u32::MAX).unwrap();
        chain.submit_block(b, now).unwrap();
    }
    let regular = chain.next_bits();
    assert_ne!(regular, limit, "the chain got harder");
    // A minimum-difficulty block stamped exactly 2·T after its parent: refused.
    let parent = chain.tip().block.header.time;
    let mut t = chain.template(parent + 2 * T);
    t.cur_time = parent + 2 * T;
    t.bits = limit;
    t.target = units::Target::REGTEST_POW_LIMIT;
    let early = devchain::chain::mine_template(&t, &script, 1_000_000).unwrap();
    let err = chain.submit_block(early, now + 10_000).unwrap_err();
    assert!(err.to_string().contains("bad-diffbits"), "{err}");
    // generate_block_quick stamps 2·T + 1 after the parent at the minimum bits: accepted, and the
    // next regular block needs what the chain needed before it.
    for i in 0..5u32 {
        let b = chain.generate_block_quick(&script, now, 1_000_000).unwrap();
        assert_eq!(b.header.bits.to_consensus(), limit);
        // the first one just over 2·T after its parent, the rest one second apart
        assert_eq!(b.header.time, parent + 2 * T + 1 + i);
        chain.submit_block(b, now).unwrap();
        assert_eq!(
            chain.next_bits(),
            regular,
            "the retarget pauses over allowance blocks"
        );
    }
    // No further ahead of the clock than MAX_FUTURE_BLOCK_TIME_S: nothing to stamp, None.
    let far = chain.tip().block.header.time - devchain::params::MAX_FUTURE_BLOCK_TIME_S;
    assert!(chain.generate_block_quick(&script, far, 1_000_000).is_none());
    let height = chain.height();
    drop(chain);
    let chain = DevChain::open(dir.path(), T).unwrap();
    assert_eq!(chain.height(), height);
    assert_eq!(chain.next_bits(), regular);
}
