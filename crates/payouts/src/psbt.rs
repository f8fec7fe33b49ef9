//! Payouts for an external signer (BIP174 PSBT), when the operator keeps the pool wallet's key out
//! of the pool process: the pool knows only the public key, builds each batch unsigned
//! ([`crate::wallet::build_payout`] with a watch-only wallet), records it and exports it as a PSBT;
//! a hardware wallet, Sparrow, HWI or `bitcoin-cli walletprocesspsbt` signs it; the signed PSBT is
//! imported ([`import`]) and the pool broadcasts it.
//!
//! Every input spends the wallet's P2WPKH script, so the txid is fixed before signing: the payout
//! is recorded under its final txid, and an import is accepted only for exactly the recorded
//! unsigned transaction, with a valid SIGHASH_ALL signature by the wallet's key on every input
//! (checked here against the recorded prevouts, not the imported file's). Nothing else in an
//! imported file is trusted.

use crate::wallet::{Built, Wallet};

use base64::Engine as _;
use bitcoin::bip32::{DerivationPath, Fingerprint};
use bitcoin::ecdsa::Signature;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{Message, Secp256k1};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Transaction, Witness};
use std::str::FromStr;

/// Largest PSBT file read (a 500-payee batch with its prevouts is well under it).
pub const PSBT_BYTES_MAX: usize = 1_000_000;

/// Why a PSBT cannot be exported or imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsbtError {
    /// Not a PSBT (neither binary nor base64), or too large.
    #[error("not a PSBT: {0}")]
    Parse(String),
    /// The file is for another transaction than the recorded payout.
    #[error("the PSBT is not the recorded payout {0}: its unsigned transaction differs")]
    Mismatch(String),
    /// An input has no signature by the wallet's key.
    #[error("input {0} is not signed by the pool wallet's key")]
    Unsigned(usize),
    /// An input's signature does not verify.
    #[error("input {0}: {1}")]
    BadSignature(usize, String),
    /// Building the PSBT failed.
    #[error("building the PSBT: {0}")]
    Build(String),
}

/// Where the wallet's key sits in the external signer's HD tree (so a hardware wallet knows which
/// key signs): `<8 hex fingerprint>/<path>`, e.g. `d34db33f/84h/0h/0h/0/0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrigin {
    /// Master key fingerprint.
    pub fingerprint: Fingerprint,
    /// Derivation path from the master key.
    pub path: DerivationPath,
}

impl FromStr for KeyOrigin {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyOrigin, String> {
        let (fpr, path) = s
            .split_once('/')
            .ok_or_else(|| format!("key origin {s:?}: expected <fingerprint>/<path>"))?;
        Ok(KeyOrigin {
            fingerprint: Fingerprint::from_str(fpr)
                .map_err(|e| format!("key origin fingerprint {fpr:?}: {e}"))?,
            path: DerivationPath::from_str(&format!("m/{path}"))
                .map_err(|e| format!("key origin path {path:?}: {e}"))?,
        })
    }
}

/// The PSBT of an unsigned batch: every input with its prevout (`witness_utxo`) and, if given, the
/// key's origin (`bip32_derivation`).
pub fn export(built: &Built, wallet: &Wallet, origin: Option<&KeyOrigin>) -> Result<Psbt, PsbtError> {
    let mut unsigned = built.tx.clone();
    for i in &mut unsigned.input {
        i.witness = Witness::new();
    }
    let mut psbt = Psbt::from_unsigned_tx(unsigned).map_err(|e| PsbtError::Build(e.to_string()))?;
    for (input, coin) in psbt.inputs.iter_mut().zip(&built.spent) {
        input.witness_utxo = Some(coin.txout.clone());
        input.sighash_type = Some(EcdsaSighashType::All.into());
        if let Some(o) = origin {
            input
                .bip32_derivation
                .insert(wallet.public_key().0, (o.fingerprint, o.path.clone()));
        }
    }
    Ok(psbt)
}

/// Base64 text of a PSBT (what `bitcoin-cli walletprocesspsbt` and HWI take).
pub fn to_base64(psbt: &Psbt) -> String {
    bytes_to_base64(&psbt.serialize())
}

/// Base64 text of a serialized PSBT.
pub fn bytes_to_base64(serialized: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(serialized)
}

/// Reads a PSBT from a file's bytes: binary (BIP174 file format) or base64 text.
pub fn parse(bytes: &[u8]) -> Result<Psbt, PsbtError> {
    if bytes.len() > PSBT_BYTES_MAX {
        return Err(PsbtError::Parse(format!(
            "{} bytes, more than PSBT_BYTES_MAX ({PSBT_BYTES_MAX})",
            bytes.len()
        )));
    }
    if bytes.starts_with(b"psbt\xff") {
        return Psbt::deserialize(bytes).map_err(|e| PsbtError::Parse(e.to_string()));
    }
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|e| PsbtError::Parse(format!("neither binary nor base64: {e}")))?;
    Psbt::deserialize(&raw).map_err(|e| PsbtError::Parse(e.to_string()))
}

/// The signed transaction from an externally signed PSBT of the `recorded` one: each input's
/// witness is its finalized witness or `[signature, pubkey]` from a partial signature, by the key
/// the recorded prevout's P2WPKH script commits to, and each signature must verify (SIGHASH_ALL,
/// the recorded prevout's value).
pub fn import(signed: &Psbt, recorded: &Psbt) -> Result<Transaction, PsbtError> {
    if signed.unsigned_tx != recorded.unsigned_tx {
        return Err(PsbtError::Mismatch(
            recorded.unsigned_tx.compute_txid().to_string(),
        ));
    }
    let mut tx = recorded.unsigned_tx.clone();
    let secp = Secp256k1::verification_only();
    let mut witnesses = Vec::with_capacity(tx.input.len());
    {
        let mut cache = SighashCache::new(&tx);
        for (i, (theirs, ours)) in signed.inputs.iter().zip(&recorded.inputs).enumerate() {
            let prevout = ours
                .witness_utxo
                .as_ref()
                .ok_or_else(|| PsbtError::Build(format!("recorded input {i} has no prevout")))?;
            // The key is the one whose hash the recorded prevout's P2WPKH script commits to.
            let owns = |pk: &bitcoin::PublicKey| {
                bitcoin::CompressedPublicKey::try_from(*pk)
                    .is_ok_and(|c| bitcoin::ScriptBuf::new_p2wpkh(&c.wpubkey_hash()) == prevout.script_pubkey)
            };
            let (pk, sig) = match &theirs.final_script_witness {
                Some(w) => {
                    let (Some(s), Some(key), 2) = (w.nth(0), w.nth(1), w.len()) else {
                        return Err(PsbtError::BadSignature(i, "not a P2WPKH witness".into()));
                    };
                    let pk = bitcoin::PublicKey::from_slice(key)
                        .map_err(|e| PsbtError::BadSignature(i, e.to_string()))?;
                    if !owns(&pk) {
                        return Err(PsbtError::BadSignature(
                            i,
                            "witness key is not the wallet's".into(),
                        ));
                    }
                    let sig =
                        Signature::from_slice(s).map_err(|e| PsbtError::BadSignature(i, e.to_string()))?;
                    (pk, sig)
                }
                None => match theirs.partial_sigs.iter().find(|(pk, _)| owns(pk)) {
                    Some((pk, s)) => (*pk, *s),
                    None => return Err(PsbtError::Unsigned(i)),
                },
            };
            if sig.sighash_type != EcdsaSighashType::All {
                return Err(PsbtError::BadSignature(
                    i,
                    format!("sighash {} (only ALL)", sig.sighash_type),
                ));
            }
            let sighash = cache
                .p2wpkh_signature_hash(i, &prevout.script_pubkey, prevout.value, EcdsaSighashType::All)
                .map_err(|e| PsbtError::BadSignature(i, e.to_string()))?;
            secp.verify_ecdsa(&Message::from(sighash), &sig.signature, &pk.inner)
                .map_err(|e| PsbtError::BadSignature(i, e.to_string()))?;
            witnesses.push(Witness::p2wpkh(&sig, &pk.inner));
        }
    }
    if witnesses.len() != tx.input.len() {
        return Err(PsbtError::Mismatch(tx.compute_txid().to_string()));
    }
    for (input, w) in tx.input.iter_mut().zip(witnesses) {
        input.witness = w;
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;
    use crate::wallet::{build_payout, PayTo};
    use bitcoin::hashes::Hash as _;
    use bitcoin::{Amount, OutPoint, TxOut, Txid};

    #[test]
    fn export_sign_import_round_trip_and_refusals() {
        let secret = [7u8; 32];
        let full = Wallet::from_secret(&secret).unwrap();
        let watch = Wallet::watch_only(full.public_key());
        assert!(!watch.can_sign() && full.can_sign());
        let coins: Vec<chain::SpendableCoin> = (0..2u8)
            .map(|i| chain::SpendableCoin {
                outpoint: OutPoint {
                    txid: Txid::from_byte_array([i + 1; 32]),
                    vout: 0,
                },
                txout: TxOut {
                    value: Amount::from_sat(1_000_000),
                    script_pubkey: watch.script().clone(),
                },
                height: u32::from(i),
            })
            .collect();
        let payee = Wallet::from_secret(&[8; 32]).unwrap();
        let payees = [PayTo {
            script: payee.script().clone(),
            debit_sat: 1_500_000,
        }];
        let built = build_payout(&watch, &coins, &payees, 2).unwrap();
        assert!(built.tx.input.iter().all(|i| i.witness.is_empty()), "unsigned");
        let signed_here = build_payout(&full, &coins, &payees, 2).unwrap();
        assert_eq!(
            built.tx.compute_txid(),
            signed_here.tx.compute_txid(),
            "the txid does not depend on the signatures"
        );
        let origin: KeyOrigin = "d34db33f/84h/1h/0h/0/0".parse().unwrap();
        let recorded = export(&built, &watch, Some(&origin)).unwrap();
        assert_eq!(recorded.inputs[0].bip32_derivation.len(), 1);
        let text = to_base64(&recorded);
        assert_eq!(parse(text.as_bytes()).unwrap(), recorded);
        assert_eq!(parse(&recorded.serialize()).unwrap(), recorded);
        assert!(parse(b"garbage").is_err());
        // Unsigned: refused.
        assert_eq!(import(&recorded, &recorded), Err(PsbtError::Unsigned(0)));
        let mut signed = recorded.clone();
        test_support::sign_psbt_p2wpkh(&mut signed, &secret);
        let tx = import(&signed, &recorded).unwrap();
        assert_eq!(tx.compute_txid(), built.tx.compute_txid());
        let prevouts: Vec<TxOut> = coins.iter().map(|c| c.txout.clone()).collect();
        let secp = Secp256k1::verification_only();
        for i in 0..tx.input.len() {
            assert!(devchain::script::verify_input(&secp, &tx, i, &prevouts).is_ok());
        }
        // Signed by another key, or for another transaction: refused.
        let mut wrong = recorded.clone();
        test_support::sign_psbt_p2wpkh(&mut wrong, &[9; 32]);
        assert_eq!(import(&wrong, &recorded), Err(PsbtError::Unsigned(0)));
        let mut other = signed.clone();
        other.unsigned_tx.output[0].value = Amount::from_sat(1);
        assert!(matches!(import(&other, &recorded), Err(PsbtError::Mismatch(_))));
        // A signature over other data is refused.
        let mut forged = signed.clone();
        let pk = bitcoin::PublicKey::new(watch.public_key().0);
        let s0 = *signed.inputs[0].partial_sigs.get(&pk).unwrap();
        forged.inputs[1].partial_sigs.insert(pk, s0);
        assert!(matches!(
            import(&forged, &recorded),
            Err(PsbtError::BadSignature(1, _))
        ));
    }
}
