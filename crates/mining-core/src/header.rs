//! The 80-byte header from Stratum fields (stratum-v1.md §5, §7).
//!
//! Offsets: version 0, prevhash 4 (header order), merkle root 36, ntime 68, nbits 72, nonce 76; every
//! integer little-endian. Stratum's prevhash is header order with each 4-byte word byte-reversed.

/// Why submitted version bits are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("version bits {bits:08x} outside the negotiated mask {mask:08x}")]
pub struct VersionBitsError {
    /// Submitted bits.
    pub bits: u32,
    /// Negotiated mask.
    pub mask: u32,
}

/// BIP310: `nVersion = (job & !mask) | (bits & mask)`, refusing bits outside the mask.
///
/// The pool never sends a job with bits inside the mask set, so this agrees with every deployed
/// client's formula (OR, XOR) (stratum-v1.md §5).
#[inline]
pub fn roll_version(job_version: u32, bits: u32, mask: u32) -> Result<u32, VersionBitsError> {
    if bits & !mask != 0 {
        return Err(VersionBitsError { bits, mask });
    }
    Ok((job_version & !mask) | (bits & mask))
}

/// Header-order prevhash from the Stratum (word-swapped) form.
pub fn prevhash_from_stratum(s: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(s.chunks_exact(4)) {
        o.copy_from_slice(&[w[3], w[2], w[1], w[0]]);
    }
    out
}

/// Stratum (word-swapped) prevhash from header order. (The swap is its own inverse.)
pub fn prevhash_to_stratum(h: &[u8; 32]) -> [u8; 32] {
    prevhash_from_stratum(h)
}

/// The 80-byte header.
#[inline]
pub fn build_header(
    version: u32,
    prevhash: &[u8; 32],
    merkle_root: &[u8; 32],
    ntime: u32,
    nbits: u32,
    nonce: u32,
) -> [u8; 80] {
    let mut h = [0u8; 80];
    h[0..4].copy_from_slice(&version.to_le_bytes());
    h[4..36].copy_from_slice(prevhash);
    h[36..68].copy_from_slice(merkle_root);
    h[68..72].copy_from_slice(&ntime.to_le_bytes());
    h[72..76].copy_from_slice(&nbits.to_le_bytes());
    h[76..80].copy_from_slice(&nonce.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::block::{Header, Version};
    use bitcoin::hashes::Hash;
    use bitcoin::{BlockHash, CompactTarget, TxMerkleNode};
    use proptest::prelude::*;

    #[test]
    fn version_rolling_rules() {
        assert_eq!(
            roll_version(0x2000_0000, 0x0000_e000, 0x1fff_e000),
            Ok(0x2000_e000)
        );
        assert!(roll_version(0x2000_0000, 0x0000_0001, 0x1fff_e000).is_err());
        assert_eq!(roll_version(0x2000_0004, 0, 0x1fff_e000), Ok(0x2000_0004));
    }

    #[test]
    fn prevhash_swap_example() {
        // stratum-v1.md §7.2, block 900000 as parent
        let display = "000000000000000000010538edbfd2d5b809a33dd83f284aeea41c6d0d96968a";
        let notify = "0d96968aeea41c6dd83f284ab809a33dedbfd2d5000105380000000000000000";
        let mut header_order: [u8; 32] = hexarr(display);
        header_order.reverse();
        assert_eq!(prevhash_to_stratum(&header_order), hexarr(notify));
        assert_eq!(prevhash_from_stratum(&hexarr(notify)), header_order);
    }

    fn hexarr(s: &str) -> [u8; 32] {
        use bitcoin::hex::FromHex;
        <[u8; 32]>::from_hex(s).unwrap()
    }

    proptest! {
        /// A header built from Stratum fields and the same header built by rust-bitcoin hash the same.
        #[test]
        fn same_as_rust_bitcoin(version in any::<i32>(), prev in any::<[u8; 32]>(), root in any::<[u8; 32]>(),
                                time in any::<u32>(), bits in any::<u32>(), nonce in any::<u32>(),
                                vbits in any::<u32>()) {
            let mask = 0x1fff_e000;
            let rolled = roll_version(version as u32 & !mask, vbits & mask, mask).unwrap();
            let ours = build_header(rolled, &prevhash_from_stratum(&prevhash_to_stratum(&prev)), &root, time, bits, nonce);
            let theirs = Header {
                version: Version::from_consensus(rolled as i32),
                prev_blockhash: BlockHash::from_byte_array(prev),
                merkle_root: TxMerkleNode::from_byte_array(root),
                time,
                bits: CompactTarget::from_consensus(bits),
                nonce,
            };
            prop_assert_eq!(&ours[..], &bitcoin::consensus::serialize(&theirs)[..]);
            prop_assert_eq!(sha256d::sha256d_80(&ours), theirs.block_hash().to_byte_array());
        }
    }
}
