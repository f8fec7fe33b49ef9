//! The coinbase transaction, split around the extranonce (stratum-v1.md §13).
//!
//! `coinb1 = version ‖ 01 ‖ null prevout ‖ varint(scriptSig len) ‖ BIP34 height ‖ aux`,
//! then `EN1 ‖ EN2`, then `coinb2 = tag ‖ sequence ‖ outputs ‖ locktime`. The transaction is built and
//! serialized by rust-bitcoin; we only locate the extranonce placeholder in its serialization.

use bitcoin::hashes::Hash;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxOut, Witness, Wtxid,
};
use units::Sats;

/// Smallest and largest coinbase scriptSig Core accepts ("bad-cb-length").
pub const SCRIPT_SIG_LEN_MIN: usize = 2;
/// See [`SCRIPT_SIG_LEN_MIN`].
pub const SCRIPT_SIG_LEN_MAX: usize = 100;

/// Why a coinbase cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoinbaseError {
    /// scriptSig outside 2..=100 bytes.
    #[error("coinbase scriptSig would be {0} bytes; Core accepts 2..=100 (bad-cb-length): shorten the tag or extranonce")]
    ScriptSigLength(usize),
    /// Outputs pay more than the template allows.
    #[error("coinbase outputs pay {paid} sat but only {available} sat are available")]
    Overpays {
        /// Sum of outputs.
        paid: u64,
        /// coinbasevalue.
        available: u64,
    },
    /// No payout output.
    #[error("coinbase needs at least one payout output")]
    NoOutputs,
}

/// What goes into a coinbase.
#[derive(Clone, Debug)]
pub struct CoinbaseSpec<'a> {
    /// Height of the block being built (BIP34).
    pub height: u32,
    /// Bytes after the height push and before the extranonce (GBT coinbaseaux).
    pub aux: &'a [u8],
    /// Bytes after the extranonce (pool tag).
    pub tag: &'a [u8],
    /// Total extranonce bytes (EN1 + EN2).
    pub extranonce_len: usize,
    /// Payout outputs, in order.
    pub outputs: Vec<TxOut>,
    /// Value available (subsidy + fees).
    pub coinbase_value: Sats,
    /// The witness commitment scriptPubKey (`6a24aa21a9ed…`), appended as the last output when present.
    pub witness_commitment: Option<ScriptBuf>,
}

/// A coinbase split for Stratum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoinbaseSplit {
    /// Bytes before EN1.
    pub coinb1: Vec<u8>,
    /// Bytes after EN2.
    pub coinb2: Vec<u8>,
}

/// The BIP34 height push as Core writes it: `CScript() << height` (OP_1..OP_16 for 1..16).
pub fn bip34_height_script(height: u32) -> ScriptBuf {
    Builder::new().push_int(i64::from(height)).into_script()
}

/// Builds the coinbase and splits it around the extranonce placeholder.
pub fn split(spec: &CoinbaseSpec<'_>) -> Result<CoinbaseSplit, CoinbaseError> {
    if spec.outputs.is_empty() {
        return Err(CoinbaseError::NoOutputs);
    }
    let paid: u64 = spec
        .outputs
        .iter()
        .map(|o| o.value.to_sat())
        .fold(0u64, u64::saturating_add);
    if paid > spec.coinbase_value.to_sat() {
        return Err(CoinbaseError::Overpays {
            paid,
            available: spec.coinbase_value.to_sat(),
        });
    }
    let height = bip34_height_script(spec.height);
    let prefix_len = height.len() + spec.aux.len();
    let script_len = prefix_len + spec.extranonce_len + spec.tag.len();
    if !(SCRIPT_SIG_LEN_MIN..=SCRIPT_SIG_LEN_MAX).contains(&script_len) {
        return Err(CoinbaseError::ScriptSigLength(script_len));
    }
    let mut sig = height.into_bytes();
    sig.extend_from_slice(spec.aux);
    sig.extend(std::iter::repeat_n(0u8, spec.extranonce_len));
    sig.extend_from_slice(spec.tag);
    let mut outputs = spec.outputs.clone();
    if let Some(c) = &spec.witness_commitment {
        outputs.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: c.clone(),
        });
    }
    let tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(sig),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: outputs,
    };
    // Non-witness serialization (the witness is empty).
    let bytes = bitcoin::consensus::serialize(&tx);
    // version(4) + input count(1) + prevout(36) + varint(script_len) (1 byte: script_len <= 100)
    let at = 4 + 1 + 36 + 1 + prefix_len;
    let end = at + spec.extranonce_len;
    let (coinb1, rest) = bytes.split_at(at.min(bytes.len()));
    let coinb2 = rest.get(end - at..).unwrap_or(&[]);
    Ok(CoinbaseSplit {
        coinb1: coinb1.to_vec(),
        coinb2: coinb2.to_vec(),
    })
}

/// The BIP141 witness commitment script for a block whose non-coinbase transactions have these wtxids
/// (reserved value 32 zero bytes): `6a 24 aa21a9ed ‖ dSHA256(witness_root ‖ 0^32)`.
pub fn witness_commitment_script(wtxids: impl IntoIterator<Item = Wtxid>) -> ScriptBuf {
    let leaves = std::iter::once(Wtxid::all_zeros())
        .chain(wtxids)
        .map(|w| w.to_raw_hash());
    let root = bitcoin::merkle_tree::calculate_root(leaves)
        .map(|h| h.to_byte_array())
        .unwrap_or([0u8; 32]);
    let mut pre = [0u8; 64];
    pre[..32].copy_from_slice(&root);
    let commitment = sha256d::sha256d(&pre);
    let mut data = vec![0xaa, 0x21, 0xa9, 0xed];
    data.extend_from_slice(&commitment);
    let push = PushBytesBuf::try_from(data).unwrap_or_default();
    Builder::new()
        .push_opcode(bitcoin::opcodes::all::OP_RETURN)
        .push_slice(push)
        .into_script()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hex::{DisplayHex, FromHex};

    #[test]
    fn bip34_examples() {
        // stratum-v1.md §13
        for (h, hex) in [
            (1u32, "51"),
            (15, "5f"),
            (16, "60"),
            (17, "0111"),
            (127, "017f"),
            (128, "028000"),
            (256, "020001"),
            (32768, "03008000"),
            (900000, "03a0bb0d"),
        ] {
            assert_eq!(
                bip34_height_script(h).as_bytes().to_lower_hex_string(),
                hex,
                "height {h}"
            );
        }
    }

    #[test]
    fn empty_block_commitment_matches_vector() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/data/vectors.json")).unwrap();
        let want = v["constants"]["empty_block_witness_commitment_script"]
            .as_str()
            .unwrap();
        assert_eq!(
            witness_commitment_script([]).as_bytes().to_lower_hex_string(),
            want
        );
    }

    #[test]
    fn split_round_trips_through_rust_bitcoin() {
        let spk =
            ScriptBuf::from_bytes(Vec::from_hex("0014751e76e8199196d454941c45d1b3a323f1433bd6").unwrap());
        let spec = CoinbaseSpec {
            height: 15,
            aux: b"",
            tag: b"/cloudmine/",
            extranonce_len: 8,
            outputs: vec![TxOut {
                value: Amount::from_sat(5_000_000_000),
                script_pubkey: spk,
            }],
            coinbase_value: Sats::new(5_000_000_000).unwrap(),
            witness_commitment: Some(witness_commitment_script([])),
        };
        let s = split(&spec).unwrap();
        let mut full = s.coinb1.clone();
        full.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        full.extend_from_slice(&s.coinb2);
        let tx: Transaction = bitcoin::consensus::deserialize(&full).unwrap();
        assert!(tx.is_coinbase());
        let sig = tx.input[0].script_sig.as_bytes();
        assert_eq!(sig[0], 0x5f, "height 15 is OP_15");
        assert_eq!(&sig[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(tx.output.len(), 2);
        assert!(tx.output[1]
            .script_pubkey
            .as_bytes()
            .starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]));

        let mut too_long = spec.clone();
        too_long.tag = &[0u8; 95];
        assert_eq!(split(&too_long), Err(CoinbaseError::ScriptSigLength(104)));
        let mut over = spec;
        over.coinbase_value = Sats::new(1).unwrap();
        assert!(matches!(split(&over), Err(CoinbaseError::Overpays { .. })));
    }
}
