//! Merkle branches as Stratum sends them, and folding a branch into a root.
//!
//! The branch is the list of siblings of leaf 0 (the coinbase) on the path up the txid tree, in
//! internal byte order: `root = dSHA256(root ‖ branch[i])` for each `i`, nothing reversed
//! (stratum-v1.md §7.1). Property-tested against rust-bitcoin's full-tree computation.

use sha256d::sha256d_64;

/// `dSHA256(left ‖ right)`.
#[inline]
pub fn parent(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut m = [0u8; 64];
    m[..32].copy_from_slice(left);
    m[32..].copy_from_slice(right);
    sha256d_64(&m)
}

/// Folds a branch onto a leaf (the coinbase txid): the merkle root.
pub fn fold(leaf: [u8; 32], branch: &[[u8; 32]]) -> [u8; 32] {
    sha256d::merkle_fold(leaf, branch)
}

/// The branch for leaf 0 given the other transactions' txids (internal order, block order, coinbase excluded).
pub fn branch_from_txids(txids: &[[u8; 32]]) -> Vec<[u8; 32]> {
    // level holds [leaf0 placeholder, txid_1, ..., txid_n]; index 0 is always "our" path
    let mut level: Vec<Option<[u8; 32]>> = Vec::with_capacity(txids.len() + 1);
    level.push(None);
    level.extend(txids.iter().copied().map(Some));
    let mut branch = Vec::new();
    while level.len() > 1 {
        if let Some(Some(sib)) = level.get(1) {
            branch.push(*sib);
        }
        if level.len() % 2 == 1 {
            let last = level.last().copied().flatten();
            level.push(last);
        }
        let mut next = Vec::with_capacity(level.len() / 2);
        next.push(None);
        for pair in level.chunks_exact(2).skip(1) {
            if let [Some(a), Some(b)] = pair {
                next.push(Some(parent(a, b)));
            }
        }
        level = next;
    }
    branch
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::TxMerkleNode;
    use proptest::prelude::*;

    proptest! {
        /// The branch folded onto the coinbase equals the full tree computed by rust-bitcoin.
        #[test]
        fn branch_equals_full_tree(leaves in proptest::collection::vec(any::<[u8; 32]>(), 1..70)) {
            let coinbase = leaves[0];
            let branch = branch_from_txids(&leaves[1..]);
            let ours = fold(coinbase, &branch);
            let theirs = bitcoin::merkle_tree::calculate_root(
                leaves.iter().map(|l| TxMerkleNode::from_byte_array(*l))
            ).unwrap();
            prop_assert_eq!(ours, theirs.to_byte_array());
            // log2 length
            let expect_len = if leaves.len() == 1 { 0 } else { (usize::BITS - (leaves.len() - 1).leading_zeros()) as usize };
            prop_assert_eq!(branch.len(), expect_len);
        }
    }
}
