//! The pool wallet: one secp256k1 key, its P2WPKH output script, and batched payout transactions built
//! and signed from its coins. No I/O: the key file is read by [`crate::keyfile`], coins come from the
//! chain backend.
//!
//! A payout transaction pays every payee one output and sends the rest back to the wallet. The payees
//! bear the network fee in equal whole-satoshi shares: `share = ⌈fee / n⌉`, so the fee actually paid is
//! `n · share` (at most `n − 1` sat above the feerate's minimum) and every satoshi is accounted for:
//! `Σ inputs = Σ payee debits + change`, `Σ payee debits = Σ outputs to payees + fee`. A payee whose
//! output would be dust after its share is dropped from the batch with the reason; their balance stays.

use bitcoin::secp256k1::{self, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Address, Amount, CompressedPublicKey, Network, ScriptBuf, Sequence, Transaction,
    TxIn, TxOut, Witness,
};
use chain::SpendableCoin;

/// Why a payout transaction cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The key bytes are not a valid secp256k1 secret key.
    #[error("invalid wallet key: {0}")]
    Key(String),
    /// Nobody left to pay.
    #[error("no payee can be paid in this batch")]
    NoPayees,
    /// The wallet's spendable coins do not cover the payees' debits.
    #[error("wallet holds {have} sat spendable, the batch needs {need} sat")]
    InsufficientFunds {
        /// Spendable sat.
        have: u64,
        /// Needed sat.
        need: u64,
    },
    /// The change would be dust and no further coin can absorb it.
    #[error("change of {0} sat would be dust and no other coin is spendable")]
    DustChange(u64),
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
    /// An amount overflowed.
    #[error("amount overflow")]
    Overflow,
}

/// The pool wallet's key: a secret key (the pool signs), or only the public key (watch-only: an
/// external signer holds the secret, [`crate::psbt`]). `Debug` never prints the secret.
pub struct Wallet {
    secret: Option<SecretKey>,
    public: CompressedPublicKey,
    script: ScriptBuf,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("script", &self.script)
            .finish_non_exhaustive()
    }
}

impl Wallet {
    /// A wallet from 32 secret bytes.
    pub fn from_secret(bytes: &[u8; 32]) -> Result<Wallet, BuildError> {
        let secret = SecretKey::from_slice(bytes).map_err(|e| BuildError::Key(e.to_string()))?;
        let secp = Secp256k1::signing_only();
        let public = CompressedPublicKey(secp256k1::PublicKey::from_secret_key(&secp, &secret));
        let script = ScriptBuf::new_p2wpkh(&public.wpubkey_hash());
        Ok(Wallet {
            secret: Some(secret),
            public,
            script,
        })
    }

    /// A watch-only wallet: payouts are built unsigned for an external signer holding the secret.
    pub fn watch_only(public: CompressedPublicKey) -> Wallet {
        Wallet {
            secret: None,
            script: ScriptBuf::new_p2wpkh(&public.wpubkey_hash()),
            public,
        }
    }

    /// The secret bytes (for writing the key file); `None` for a watch-only wallet.
    pub fn secret_bytes(&self) -> Option<[u8; 32]> {
        self.secret.map(|s| s.secret_bytes())
    }

    /// Whether the pool holds the secret (and signs payouts itself).
    pub fn can_sign(&self) -> bool {
        self.secret.is_some()
    }

    /// The public key.
    pub fn public_key(&self) -> CompressedPublicKey {
        self.public
    }

    /// The wallet's output script (P2WPKH): what the pool's coinbase pays.
    pub fn script(&self) -> &ScriptBuf {
        &self.script
    }

    /// The wallet's address on `network`.
    pub fn address(&self, network: Network) -> Address {
        Address::p2wpkh(&self.public, network)
    }
}

/// One payee of a batch: the output script and the whole satoshis taken from their balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayTo {
    /// Output script.
    pub script: ScriptBuf,
    /// Whole satoshis debited (output + fee share).
    pub debit_sat: u64,
}

/// A built payout: signed by the wallet's key, or unsigned (empty witnesses) for a watch-only wallet.
#[derive(Debug, Clone)]
pub struct Built {
    /// The transaction (signed if the wallet can sign).
    pub tx: Transaction,
    /// The coins it spends, in input order.
    pub spent: Vec<SpendableCoin>,
    /// Network fee paid (sat) = `n · share`.
    pub fee_sat: u64,
    /// Per payee of the request (same order): `Some(output sat)` if paid in this batch.
    pub paid: Vec<Option<u64>>,
    /// Payees dropped from the batch (request index, reason).
    pub dropped: Vec<(usize, String)>,
}

/// Most payees in one batch (a transaction of about 22 kvB, well inside Core's standard size).
pub const PAYEES_PER_TX_MAX: usize = 500;

/// Builds one batched payout from `coins` (spent oldest first) at `feerate_sat_per_vb`, signed if the
/// wallet holds its secret (else every witness is empty: the size was estimated with the largest
/// P2WPKH witness, so the feerate holds once an external signer signs it).
/// At most [`PAYEES_PER_TX_MAX`] payees: callers batch the rest in a later payout.
pub fn build_payout(
    wallet: &Wallet,
    coins: &[SpendableCoin],
    payees: &[PayTo],
    feerate_sat_per_vb: u64,
) -> Result<Built, BuildError> {
    let mut active: Vec<usize> = (0..payees.len().min(PAYEES_PER_TX_MAX)).collect();
    let mut dropped: Vec<(usize, String)> = (PAYEES_PER_TX_MAX..payees.len())
        .map(|i| (i, format!("more than {PAYEES_PER_TX_MAX} payees: next batch")))
        .collect();
    let have: u64 = coins.iter().map(|c| c.txout.value.to_sat()).sum();
    let change_dust = wallet.script.minimal_non_dust().to_sat();
    loop {
        if active.is_empty() {
            return Err(BuildError::NoPayees);
        }
        let need = active
            .iter()
            .filter_map(|&i| payees.get(i))
            .try_fold(0u64, |a, p| a.checked_add(p.debit_sat))
            .ok_or(BuildError::Overflow)?;
        // Coins, oldest first, until the debits are covered and the change is 0 or above dust.
        let mut used = Vec::new();
        let mut sum = 0u64;
        for c in coins {
            if sum >= need && (sum - need == 0 || sum - need >= change_dust) {
                break;
            }
            used.push(c);
            sum = sum
                .checked_add(c.txout.value.to_sat())
                .ok_or(BuildError::Overflow)?;
        }
        if sum < need {
            return Err(BuildError::InsufficientFunds { have, need });
        }
        let change = sum - need;
        if change > 0 && change < change_dust {
            return Err(BuildError::DustChange(change));
        }
        let mut tx = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: used
                .iter()
                .map(|c| TxIn {
                    previous_output: c.outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    // Largest P2WPKH witness (72-byte signature, 33-byte key) for the size estimate.
                    witness: Witness::from_slice(&[vec![0u8; 72], vec![0u8; 33]]),
                })
                .collect(),
            output: active
                .iter()
                .filter_map(|&i| payees.get(i))
                .map(|p| TxOut {
                    value: Amount::from_sat(p.debit_sat),
                    script_pubkey: p.script.clone(),
                })
                .collect(),
        };
        if change > 0 {
            tx.output.push(TxOut {
                value: Amount::from_sat(change),
                script_pubkey: wallet.script.clone(),
            });
        }
        let vsize = tx.weight().to_wu().div_ceil(4);
        let fee_min = vsize
            .checked_mul(feerate_sat_per_vb)
            .ok_or(BuildError::Overflow)?;
        let n = active.len() as u64;
        let share = fee_min.div_ceil(n).max(1);
        // Drop payees whose output would be dust after their share; rebuild without them.
        let mut keep = Vec::with_capacity(active.len());
        for &i in &active {
            let Some(p) = payees.get(i) else { continue };
            let dust = p.script.minimal_non_dust().to_sat();
            match p.debit_sat.checked_sub(share) {
                Some(out) if out >= dust => keep.push(i),
                _ => dropped.push((
                    i,
                    format!(
                        "{} sat minus the fee share of {share} sat is below the dust limit of {dust} sat",
                        p.debit_sat
                    ),
                )),
            }
        }
        if keep.len() != active.len() {
            active = keep;
            continue;
        }
        let mut paid = vec![None; payees.len()];
        for (k, &i) in active.iter().enumerate() {
            if let (Some(o), Some(p)) = (tx.output.get_mut(k), payees.get(i)) {
                let v = p.debit_sat - share;
                o.value = Amount::from_sat(v);
                if let Some(slot) = paid.get_mut(i) {
                    *slot = Some(v);
                }
            }
        }
        match &wallet.secret {
            Some(secret) => sign(secret, &wallet.public, &wallet.script, &mut tx, &used)?,
            None => tx.input.iter_mut().for_each(|i| i.witness = Witness::new()),
        }
        dropped.sort();
        return Ok(Built {
            tx,
            spent: used.into_iter().cloned().collect(),
            fee_sat: share * n,
            paid,
            dropped,
        });
    }
}

/// Signs every input (all spend the wallet's P2WPKH script), SIGHASH_ALL.
fn sign(
    secret: &SecretKey,
    public: &CompressedPublicKey,
    script: &ScriptBuf,
    tx: &mut Transaction,
    coins: &[&SpendableCoin],
) -> Result<(), BuildError> {
    let secp = Secp256k1::signing_only();
    let mut cache = SighashCache::new(tx);
    for (i, c) in coins.iter().enumerate() {
        let sighash = cache
            .p2wpkh_signature_hash(i, script, c.txout.value, EcdsaSighashType::All)
            .map_err(|e| BuildError::Sign(e.to_string()))?;
        let msg = secp256k1::Message::from(sighash);
        let signature = secp.sign_ecdsa(&msg, secret);
        let sig = bitcoin::ecdsa::Signature {
            signature,
            sighash_type: EcdsaSighashType::All,
        };
        let w = cache
            .witness_mut(i)
            .ok_or_else(|| BuildError::Sign(format!("no input {i}")))?;
        *w = Witness::p2wpkh(&sig, &public.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;
    use bitcoin::hashes::Hash as _;
    use bitcoin::{OutPoint, Txid};
    use proptest::prelude::*;

    fn coin(i: u32, sat: u64, script: &ScriptBuf) -> SpendableCoin {
        SpendableCoin {
            outpoint: OutPoint {
                txid: Txid::from_byte_array([i as u8 + 1; 32]),
                vout: i,
            },
            txout: TxOut {
                value: Amount::from_sat(sat),
                script_pubkey: script.clone(),
            },
            height: i,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every satoshi is accounted for, the feerate is met, every payee pays exactly their share,
        /// and every signature verifies under the dev chain's script checks.
        #[test]
        fn batches_conserve_value_and_verify(
            coin_sats in proptest::collection::vec(1_000u64..2_000_000_000, 1..5),
            debits in proptest::collection::vec((0u8..2, 0u64..50_000_000), 1..20),
            feerate in 1u64..60,
        ) {
            let w = Wallet::from_secret(&[3; 32]).unwrap();
            let coins: Vec<SpendableCoin> =
                coin_sats.iter().enumerate().map(|(i, s)| coin(i as u32, *s, w.script())).collect();
            let payees: Vec<PayTo> = debits
                .iter()
                .enumerate()
                .map(|(i, (kind, d))| {
                    let other = Wallet::from_secret(&[i as u8 + 10; 32]).unwrap();
                    let script = if *kind == 0 {
                        other.script().clone()
                    } else {
                        let secp = Secp256k1::verification_only();
                        let (x, _) = other.public.0.x_only_public_key();
                        ScriptBuf::new_p2tr(&secp, x, None)
                    };
                    PayTo { script, debit_sat: *d }
                })
                .collect();
            match build_payout(&w, &coins, &payees, feerate) {
                Ok(b) => {
                    let n = b.paid.iter().flatten().count() as u64;
                    prop_assert!(n > 0);
                    let share = b.fee_sat / n;
                    prop_assert_eq!(share * n, b.fee_sat);
                    let ins: u64 = b.tx.input.iter().map(|i| {
                        coins.iter().find(|c| c.outpoint == i.previous_output).unwrap().txout.value.to_sat()
                    }).sum();
                    let outs: u64 = b.tx.output.iter().map(|o| o.value.to_sat()).sum();
                    prop_assert_eq!(ins, outs + b.fee_sat);
                    let vsize = b.tx.weight().to_wu().div_ceil(4);
                    prop_assert!(b.fee_sat >= vsize * feerate);
                    let debited: u64 = payees.iter().zip(&b.paid).filter(|(_, p)| p.is_some()).map(|(p, _)| p.debit_sat).sum();
                    let change: u64 = b.tx.output.iter().filter(|o| o.script_pubkey == *w.script()).map(|o| o.value.to_sat()).sum();
                    prop_assert_eq!(ins, debited + change);
                    for (i, p) in payees.iter().enumerate() {
                        match b.paid[i] {
                            Some(v) => {
                                prop_assert_eq!(v, p.debit_sat - share);
                                prop_assert!(v >= p.script.minimal_non_dust().to_sat());
                            }
                            None => prop_assert!(b.dropped.iter().any(|(j, _)| *j == i)),
                        }
                    }
                    let prevouts: Vec<TxOut> = b.tx.input.iter().map(|i| {
                        coins.iter().find(|c| c.outpoint == i.previous_output).unwrap().txout.clone()
                    }).collect();
                    let secp = Secp256k1::verification_only();
                    for i in 0..b.tx.input.len() {
                        prop_assert!(devchain::script::verify_input(&secp, &b.tx, i, &prevouts).is_ok());
                    }
                }
                Err(BuildError::InsufficientFunds { have, need }) => prop_assert!(have < need),
                Err(BuildError::NoPayees | BuildError::DustChange(_)) => {}
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
