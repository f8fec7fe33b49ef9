//! Signature checks for the spends the dev chain supports.
//!
//! The dev chain verifies, with libsecp256k1 through rust-bitcoin:
//! * **P2WPKH** (BIP143 sighash, ECDSA, low-S not required, DER strict via rust-bitcoin's parser);
//! * **P2TR key path** (BIP341 sighash over all prevouts, Schnorr).
//!
//! Spends of any other output type (P2PKH, P2SH, P2WSH, tapscript paths, bare scripts) are refused with
//! a clear reason rather than accepted unchecked: the dev chain never takes a spend it did not verify.
//! Outputs of any type can still be *created* (a coinbase may pay a P2PKH address).

use bitcoin::secp256k1::{self, Secp256k1, VerifyOnly};
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::{ecdsa, taproot, PublicKey, Transaction, TxOut, XOnlyPublicKey};

/// Why an input's script check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScriptError(pub String);

/// Verifies input `index` of `tx`, spending `prevouts[index]` (all prevouts are needed for taproot).
pub fn verify_input(
    secp: &Secp256k1<VerifyOnly>,
    tx: &Transaction,
    index: usize,
    prevouts: &[TxOut],
) -> Result<(), ScriptError> {
    let err = |s: &str| Err(ScriptError(s.to_string()));
    let input = tx
        .input
        .get(index)
        .ok_or_else(|| ScriptError("input index out of range".into()))?;
    let spent = prevouts
        .get(index)
        .ok_or_else(|| ScriptError("missing prevout".into()))?;
    let spk = &spent.script_pubkey;
    if spk.is_p2wpkh() {
        if !input.script_sig.is_empty() {
            return err("witness-program scriptSig must be empty");
        }
        let (Some(sig), Some(pk), 2) = (input.witness.nth(0), input.witness.nth(1), input.witness.len())
        else {
            return err("P2WPKH witness must be exactly [signature, pubkey]");
        };
        let pk = PublicKey::from_slice(pk).map_err(|e| ScriptError(format!("bad pubkey: {e}")))?;
        if !pk.compressed {
            return err("P2WPKH requires a compressed pubkey");
        }
        let wpkh = pk
            .wpubkey_hash()
            .map_err(|e| ScriptError(format!("bad pubkey: {e}")))?;
        if bitcoin::ScriptBuf::new_p2wpkh(&wpkh) != *spk {
            return err("pubkey does not match the witness program");
        }
        let sig = ecdsa::Signature::from_slice(sig)
            .map_err(|e| ScriptError(format!("bad signature encoding: {e}")))?;
        let mut cache = SighashCache::new(tx);
        let sighash = cache
            .p2wpkh_signature_hash(index, spk, spent.value, sig.sighash_type)
            .map_err(|e| ScriptError(format!("sighash: {e}")))?;
        let msg = secp256k1::Message::from_digest(sighash.to_byte_array_compat());
        secp.verify_ecdsa(&msg, &sig.signature, &pk.inner)
            .map_err(|_| ScriptError("signature does not verify (P2WPKH)".into()))?;
        return Ok(());
    }
    if spk.is_p2tr() {
        if !input.script_sig.is_empty() {
            return err("witness-program scriptSig must be empty");
        }
        let items: Vec<&[u8]> = input.witness.iter().collect();
        let sig_bytes = match items.as_slice() {
            [s] => *s,
            [s, annex] if annex.first() == Some(&0x50) => *s,
            _ => return err("only taproot key-path spends are supported on the dev chain"),
        };
        let sig = taproot::Signature::from_slice(sig_bytes)
            .map_err(|e| ScriptError(format!("bad schnorr signature: {e}")))?;
        let key = XOnlyPublicKey::from_slice(spk.as_bytes().get(2..34).unwrap_or(&[]))
            .map_err(|e| ScriptError(format!("bad taproot output key: {e}")))?;
        let mut cache = SighashCache::new(tx);
        let sighash = cache
            .taproot_key_spend_signature_hash(index, &Prevouts::All(prevouts), sig.sighash_type)
            .map_err(|e| ScriptError(format!("sighash: {e}")))?;
        let msg = secp256k1::Message::from_digest(sighash.to_byte_array_compat());
        secp.verify_schnorr(&sig.signature, &msg, &key)
            .map_err(|_| ScriptError("signature does not verify (P2TR key path)".into()))?;
        return Ok(());
    }
    Err(ScriptError(format!(
        "spending this output type is not supported on the dev chain (only P2WPKH and P2TR key path are verified): {}",
        spk
    )))
}

/// Byte-array access for rust-bitcoin's sighash types.
trait ToBytes {
    fn to_byte_array_compat(self) -> [u8; 32];
}
impl ToBytes for bitcoin::SegwitV0Sighash {
    fn to_byte_array_compat(self) -> [u8; 32] {
        use bitcoin::hashes::Hash;
        self.to_byte_array()
    }
}
impl ToBytes for bitcoin::TapSighash {
    fn to_byte_array_compat(self) -> [u8; 32] {
        use bitcoin::hashes::Hash;
        self.to_byte_array()
    }
}
