//! SHA-256 and double SHA-256 for mining, at the speed the CPU allows.
//!
//! Everything here works on the compression function directly: no allocation, no per-hash padding
//! logic on hot paths, precomputed midstates and precomputed message schedules where the message is
//! fixed. On x86-64 CPUs with the SHA extensions (SHA-NI) the kernel uses `sha256rnds2`, detected once
//! at run time; two independent messages can be compressed interleaved ([`compress2`]), which hides
//! the instruction's latency and roughly doubles throughput. Everywhere else a portable implementation
//! runs; tests check both paths against each other and against rust-bitcoin's `bitcoin_hashes`.
//!
//! The only `unsafe` in the workspace lives in [`kernel`] (CPU intrinsics).

pub mod kernel;
mod scan;
mod shapes;

pub use kernel::{compress, compress2, has_sha_ni, State, INITIAL_STATE};
pub use scan::{target_top_word, HeaderScan, SCAN_STEP};
pub use shapes::{
    digest_to_state, merkle_fold, merkle_fold_x2, pad_tail, sha256, sha256d, sha256d_64, sha256d_64_x2,
    sha256d_80, sha256d_80_x2, sha256d_from_padded, sha256d_from_padded_x2, state_to_digest, Midstate,
    Sha256,
};
