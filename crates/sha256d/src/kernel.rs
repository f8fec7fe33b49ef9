//! The SHA-256 compression function: SHA-NI (x86-64) and portable, chosen at run time.
//!
//! A message block is given as sixteen big-endian words already converted to `u32` (`[u32; 16]`), so
//! callers that already hold words (a digest being re-hashed, a precomputed padding block) skip the
//! byte shuffle. [`Block`] helpers convert from bytes.
#![allow(unsafe_code)] // CPU intrinsics; every block carries a SAFETY comment and is tested against the portable path.

use std::sync::OnceLock;

/// SHA-256 chaining state (eight words, A..H).
pub type State = [u32; 8];

/// A message block as sixteen big-endian words.
pub type Words = [u32; 16];

/// The SHA-256 initial state.
pub const INITIAL_STATE: State = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

pub(crate) const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// `W[t] + K[t]` for all 64 rounds of a fixed block, computed at compile time.
pub(crate) const fn prescheduled(block: &Words) -> [u32; 64] {
    let mut w = [0u32; 64];
    let mut t = 0;
    while t < 64 {
        w[t] = if t < 16 {
            block[t]
        } else {
            let a = w[t - 15];
            let b = w[t - 2];
            let s0 = a.rotate_right(7) ^ a.rotate_right(18) ^ (a >> 3);
            let s1 = b.rotate_right(17) ^ b.rotate_right(19) ^ (b >> 10);
            w[t - 16].wrapping_add(s0).wrapping_add(w[t - 7]).wrapping_add(s1)
        };
        t += 1;
    }
    let mut wk = [0u32; 64];
    let mut i = 0;
    while i < 64 {
        wk[i] = w[i].wrapping_add(K[i]);
        i += 1;
    }
    wk
}

/// The padding block after a 64-byte message, prescheduled.
pub(crate) const PAD64_WK: [u32; 64] =
    prescheduled(&[0x8000_0000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 512]);

/// The fixed words of a header's second block (after the nonce word W3): `W4..W15` plus `K`.
pub(crate) const TAIL80_WK: [u32; 64] =
    prescheduled(&[0, 0, 0, 0, 0x8000_0000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 640]);

/// The fixed words of the block that hashes a 32-byte digest: `W8..W15` plus `K`.
pub(crate) const DIGEST_PAD_WK: [u32; 64] =
    prescheduled(&[0, 0, 0, 0, 0, 0, 0, 0, 0x8000_0000, 0, 0, 0, 0, 0, 0, 256]);

/// Nonces the scan keeps in flight (four hide `sha256rnds2` latency best here: 2 → 18 MH/s, 3 → 26,
/// 4 → 31, 5-8 → 30; see BENCHMARKS.md).
pub const SCAN_WAYS: u32 = 4;

/// Nonce scan on SHA-NI (see [`crate::HeaderScan`]): hashes nonces `start .. start + count` of the
/// header whose first-block midstate is `mid` and whose second block starts with `w012`, and pushes
/// every nonce whose hash has its top 32 bits (as a 256-bit little-endian number) `<= top_max`.
/// `count` must be a multiple of [`SCAN_WAYS`]. `false` means: no SHA-NI, use the portable path.
#[inline]
pub(crate) fn fused_scan(
    mid: &State,
    w012: [u32; 3],
    start: u32,
    count: u32,
    top_max: u32,
    hits: &mut Vec<u32>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if has_sha_ni() {
        // SAFETY: the CPU supports sha, sse2, ssse3 and sse4.1 (checked by has_sha_ni).
        unsafe { x86::scan::<4>(mid, w012, start, count, top_max, hits) };
        return true;
    }
    let _ = (mid, w012, start, count, top_max, hits);
    false
}

/// Two `sha256d` of 64-byte messages with every compression interleaved and the state kept in
/// registers, when SHA-NI is present. `None` means: use the generic path.
#[inline]
pub(crate) fn fused_sha256d_64_x2(a: &[u8; 64], b: &[u8; 64]) -> Option<([u8; 32], [u8; 32])> {
    #[cfg(target_arch = "x86_64")]
    if has_sha_ni() {
        // SAFETY: the CPU supports sha, sse2, ssse3 and sse4.1 (checked by has_sha_ni).
        return Some(unsafe { x86::sha256d_64_x2(a, b) });
    }
    let _ = (a, b);
    None
}

/// Two `sha256d` of 80-byte headers, fused as [`fused_sha256d_64_x2`].
#[inline]
pub(crate) fn fused_sha256d_80_x2(a: &[u8; 80], b: &[u8; 80]) -> Option<([u8; 32], [u8; 32])> {
    #[cfg(target_arch = "x86_64")]
    if has_sha_ni() {
        // SAFETY: the CPU supports sha, sse2, ssse3 and sse4.1 (checked by has_sha_ni).
        return Some(unsafe { x86::sha256d_80_x2(a, b) });
    }
    let _ = (a, b);
    None
}

/// Folds two merkle branches of equal length onto two leaves, every level interleaved and the digests
/// kept in registers. `None` means: use the generic path (no SHA-NI, or different lengths).
#[inline]
pub(crate) fn fused_fold_x2(
    ra: &[u8; 32],
    ba: &[[u8; 32]],
    rb: &[u8; 32],
    bb: &[[u8; 32]],
) -> Option<([u8; 32], [u8; 32])> {
    #[cfg(target_arch = "x86_64")]
    if has_sha_ni() && ba.len() == bb.len() {
        // SAFETY: the CPU supports sha, sse2, ssse3 and sse4.1 (checked by has_sha_ni).
        return Some(unsafe { x86::fold_x2(ra, ba, rb, bb) });
    }
    let _ = (ra, ba, rb, bb);
    None
}

/// Converts 64 bytes into big-endian words.
#[inline(always)]
pub fn words_from_bytes(b: &[u8; 64]) -> Words {
    let mut w = [0u32; 16];
    for (i, c) in b.chunks_exact(4).enumerate() {
        w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

/// Whether this CPU has the SHA extensions (checked once).
pub fn has_sha_ni() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("CLOUDMINE_FORCE_PORTABLE_SHA").is_some() {
                return false;
            }
            std::is_x86_feature_detected!("sha")
                && std::is_x86_feature_detected!("sse2")
                && std::is_x86_feature_detected!("ssse3")
                && std::is_x86_feature_detected!("sse4.1")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Compresses one block into `state`.
#[inline]
pub fn compress(state: &mut State, block: &Words) {
    #[cfg(target_arch = "x86_64")]
    if has_sha_ni() {
        // SAFETY: the CPU supports sha, sse2, ssse3 and sse4.1 (checked by has_sha_ni).
        unsafe { x86::compress1(state, block) };
        return;
    }
    portable::compress(state, block);
}

/// Compresses two independent blocks into two states, interleaved on SHA-NI.
#[inline]
pub fn compress2(s0: &mut State, b0: &Words, s1: &mut State, b1: &Words) {
    #[cfg(target_arch = "x86_64")]
    if has_sha_ni() {
        // SAFETY: the CPU supports sha, sse2, ssse3 and sse4.1 (checked by has_sha_ni).
        unsafe { x86::compress2(s0, b0, s1, b1) };
        return;
    }
    portable::compress(s0, b0);
    portable::compress(s1, b1);
}

/// The portable path, also the reference the fast path is tested against.
pub mod portable {
    use super::{State, Words, K};

    /// Compresses one block (FIPS 180-4 §6.2.2).
    pub fn compress(state: &mut State, block: &Words) {
        let mut w = [0u32; 64];
        w[..16].copy_from_slice(block);
        for t in 16..64 {
            let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
            let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16].wrapping_add(s0).wrapping_add(w[t - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for t in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[t])
                .wrapping_add(w[t]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{State, Words, K};
    use core::arch::x86_64::*;

    /// Packs A..H into the (ABEF, CDGH) register pair `sha256rnds2` works on.
    #[inline(always)]
    unsafe fn load_state(s: &State) -> (__m128i, __m128i) {
        let tmp = _mm_loadu_si128(s.as_ptr().cast()); // DCBA
        let st1 = _mm_loadu_si128(s.as_ptr().add(4).cast()); // HGFE
        let tmp = _mm_shuffle_epi32(tmp, 0xB1); // CDAB
        let st1 = _mm_shuffle_epi32(st1, 0x1B); // EFGH
        let st0 = _mm_alignr_epi8(tmp, st1, 8); // ABEF
        let st1 = _mm_blend_epi16(st1, tmp, 0xF0); // CDGH
        (st0, st1)
    }

    #[inline(always)]
    unsafe fn store_state(s: &mut State, st0: __m128i, st1: __m128i) {
        let tmp = _mm_shuffle_epi32(st0, 0x1B); // FEBA
        let st1 = _mm_shuffle_epi32(st1, 0xB1); // DCHG
        let st0 = _mm_blend_epi16(tmp, st1, 0xF0); // DCBA
        let st1 = _mm_alignr_epi8(st1, tmp, 8); // ABEF -> HGFE
        _mm_storeu_si128(s.as_mut_ptr().cast(), st0);
        _mm_storeu_si128(s.as_mut_ptr().add(4).cast(), st1);
    }

    #[inline(always)]
    unsafe fn k(i: usize) -> __m128i {
        _mm_loadu_si128(K.as_ptr().add(4 * i).cast())
    }

    /// Next schedule group: W[i] from W[i-4], W[i-3], W[i-2], W[i-1].
    #[inline(always)]
    unsafe fn schedule(w4: __m128i, w3: __m128i, w2: __m128i, w1: __m128i) -> __m128i {
        let t = _mm_add_epi32(_mm_sha256msg1_epu32(w4, w3), _mm_alignr_epi8(w1, w2, 4));
        _mm_sha256msg2_epu32(t, w1)
    }

    /// Four rounds with message group `w` (already scheduled) and constants group `i`.
    #[inline(always)]
    unsafe fn rounds4(st0: &mut __m128i, st1: &mut __m128i, w: __m128i, i: usize) {
        let m = _mm_add_epi32(w, k(i));
        *st1 = _mm_sha256rnds2_epu32(*st1, *st0, m);
        let m = _mm_shuffle_epi32(m, 0x0E);
        *st0 = _mm_sha256rnds2_epu32(*st0, *st1, m);
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress1(state: &mut State, block: &Words) {
        let (st0, st1) = load_state(state);
        let (mut a0, mut a1) = (st0, st1);
        let mut w = load_words(block);
        for i in 0..16 {
            if i >= 4 {
                w[i % 4] = schedule(w[i % 4], w[(i + 1) % 4], w[(i + 2) % 4], w[(i + 3) % 4]);
            }
            rounds4(&mut a0, &mut a1, w[i % 4], i);
        }
        store_state(state, _mm_add_epi32(a0, st0), _mm_add_epi32(a1, st1));
    }

    /// Byte-swaps each 32-bit lane (bytes <-> big-endian words).
    #[inline(always)]
    unsafe fn bswap_mask() -> __m128i {
        _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203)
    }

    #[inline(always)]
    unsafe fn load_be(p: *const u8) -> __m128i {
        _mm_shuffle_epi8(_mm_loadu_si128(p.cast()), bswap_mask())
    }

    /// The first 64 bytes at `p` as four vectors of big-endian words.
    #[inline(always)]
    unsafe fn load_block_be(p: *const u8) -> [__m128i; 4] {
        [
            load_be(p),
            load_be(p.add(16)),
            load_be(p.add(32)),
            load_be(p.add(48)),
        ]
    }

    /// A `[u32; 16]` block (words already in native order) as four vectors.
    #[inline(always)]
    unsafe fn load_words(w: &Words) -> [__m128i; 4] {
        let p = w.as_ptr();
        [
            _mm_loadu_si128(p.cast()),
            _mm_loadu_si128(p.add(4).cast()),
            _mm_loadu_si128(p.add(8).cast()),
            _mm_loadu_si128(p.add(12).cast()),
        ]
    }

    /// The IV as (ABEF, CDGH).
    #[inline(always)]
    unsafe fn iv() -> (__m128i, __m128i) {
        load_state(&super::INITIAL_STATE)
    }

    /// (ABEF, CDGH) -> (ABCD, EFGH) as message words (A in lane 0).
    #[inline(always)]
    unsafe fn to_words(st0: __m128i, st1: __m128i) -> (__m128i, __m128i) {
        let tmp = _mm_shuffle_epi32(st0, 0x1B); // FEBA
        let st1 = _mm_shuffle_epi32(st1, 0xB1); // DCHG
        let dcba = _mm_blend_epi16(tmp, st1, 0xF0);
        let hgfe = _mm_alignr_epi8(st1, tmp, 8);
        (dcba, hgfe)
    }

    /// One full block for two streams from registers; feeds forward.
    #[inline(always)]
    unsafe fn block_x2(
        a: (__m128i, __m128i),
        mut wa: [__m128i; 4],
        b: (__m128i, __m128i),
        mut wb: [__m128i; 4],
    ) -> ((__m128i, __m128i), (__m128i, __m128i)) {
        let (mut a0, mut a1) = a;
        let (mut b0, mut b1) = b;
        for i in 0..16 {
            if i >= 4 {
                wa[i % 4] = schedule(wa[i % 4], wa[(i + 1) % 4], wa[(i + 2) % 4], wa[(i + 3) % 4]);
                wb[i % 4] = schedule(wb[i % 4], wb[(i + 1) % 4], wb[(i + 2) % 4], wb[(i + 3) % 4]);
            }
            let ma = _mm_add_epi32(wa[i % 4], k(i));
            let mb = _mm_add_epi32(wb[i % 4], k(i));
            a1 = _mm_sha256rnds2_epu32(a1, a0, ma);
            b1 = _mm_sha256rnds2_epu32(b1, b0, mb);
            let ma = _mm_shuffle_epi32(ma, 0x0E);
            let mb = _mm_shuffle_epi32(mb, 0x0E);
            a0 = _mm_sha256rnds2_epu32(a0, a1, ma);
            b0 = _mm_sha256rnds2_epu32(b0, b1, mb);
        }
        (
            (_mm_add_epi32(a0, a.0), _mm_add_epi32(a1, a.1)),
            (_mm_add_epi32(b0, b.0), _mm_add_epi32(b1, b.1)),
        )
    }

    /// A prescheduled (constant) block for two streams; feeds forward.
    #[inline(always)]
    unsafe fn const_block_x2(
        a: (__m128i, __m128i),
        b: (__m128i, __m128i),
        wk: &[u32; 64],
    ) -> ((__m128i, __m128i), (__m128i, __m128i)) {
        let (mut a0, mut a1) = a;
        let (mut b0, mut b1) = b;
        for i in 0..16 {
            let m = _mm_loadu_si128(wk.as_ptr().add(4 * i).cast());
            a1 = _mm_sha256rnds2_epu32(a1, a0, m);
            b1 = _mm_sha256rnds2_epu32(b1, b0, m);
            let m = _mm_shuffle_epi32(m, 0x0E);
            a0 = _mm_sha256rnds2_epu32(a0, a1, m);
            b0 = _mm_sha256rnds2_epu32(b0, b1, m);
        }
        (
            (_mm_add_epi32(a0, a.0), _mm_add_epi32(a1, a.1)),
            (_mm_add_epi32(b0, b.0), _mm_add_epi32(b1, b.1)),
        )
    }

    /// The outer SHA-256 of two 32-byte digests held as states, and the digests' bytes.
    #[inline(always)]
    unsafe fn outer_x2(a: (__m128i, __m128i), b: (__m128i, __m128i)) -> ([u8; 32], [u8; 32]) {
        let pad0 = _mm_set_epi32(0, 0, 0, 0x8000_0000u32 as i32);
        let pad1 = _mm_set_epi32(256, 0, 0, 0);
        let (a_lo, a_hi) = to_words(a.0, a.1);
        let (b_lo, b_hi) = to_words(b.0, b.1);
        let (oa, ob) = block_x2(iv(), [a_lo, a_hi, pad0, pad1], iv(), [b_lo, b_hi, pad0, pad1]);
        (digest(oa), digest(ob))
    }

    #[inline(always)]
    unsafe fn digest(s: (__m128i, __m128i)) -> [u8; 32] {
        let (lo, hi) = to_words(s.0, s.1);
        let mut out = [0u8; 32];
        _mm_storeu_si128(out.as_mut_ptr().cast(), _mm_shuffle_epi8(lo, bswap_mask()));
        _mm_storeu_si128(
            out.as_mut_ptr().add(16).cast(),
            _mm_shuffle_epi8(hi, bswap_mask()),
        );
        out
    }

    /// Stores digest words (A in lane 0) as bytes.
    #[inline(always)]
    unsafe fn words_to_bytes(w: (__m128i, __m128i)) -> [u8; 32] {
        let mut out = [0u8; 32];
        _mm_storeu_si128(out.as_mut_ptr().cast(), _mm_shuffle_epi8(w.0, bswap_mask()));
        _mm_storeu_si128(
            out.as_mut_ptr().add(16).cast(),
            _mm_shuffle_epi8(w.1, bswap_mask()),
        );
        out
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn fold_x2(
        ra: &[u8; 32],
        ba: &[[u8; 32]],
        rb: &[u8; 32],
        bb: &[[u8; 32]],
    ) -> ([u8; 32], [u8; 32]) {
        let pad0 = _mm_set_epi32(0, 0, 0, 0x8000_0000u32 as i32);
        let pad1 = _mm_set_epi32(256, 0, 0, 0);
        let mut a = (load_be(ra.as_ptr()), load_be(ra.as_ptr().add(16)));
        let mut b = (load_be(rb.as_ptr()), load_be(rb.as_ptr().add(16)));
        for (x, y) in ba.iter().zip(bb) {
            let wa = [a.0, a.1, load_be(x.as_ptr()), load_be(x.as_ptr().add(16))];
            let wb = [b.0, b.1, load_be(y.as_ptr()), load_be(y.as_ptr().add(16))];
            let (sa, sb) = block_x2(iv(), wa, iv(), wb);
            let (sa, sb) = const_block_x2(sa, sb, &super::PAD64_WK);
            let (a_lo, a_hi) = to_words(sa.0, sa.1);
            let (b_lo, b_hi) = to_words(sb.0, sb.1);
            let (oa, ob) = block_x2(iv(), [a_lo, a_hi, pad0, pad1], iv(), [b_lo, b_hi, pad0, pad1]);
            a = to_words(oa.0, oa.1);
            b = to_words(ob.0, ob.1);
        }
        (words_to_bytes(a), words_to_bytes(b))
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn sha256d_64_x2(a: &[u8; 64], b: &[u8; 64]) -> ([u8; 32], [u8; 32]) {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (sa, sb) = block_x2(iv(), load_block_be(pa), iv(), load_block_be(pb));
        let (sa, sb) = const_block_x2(sa, sb, &super::PAD64_WK);
        outer_x2(sa, sb)
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn sha256d_80_x2(a: &[u8; 80], b: &[u8; 80]) -> ([u8; 32], [u8; 32]) {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (sa, sb) = block_x2(iv(), load_block_be(pa), iv(), load_block_be(pb));
        let pad0 = _mm_set_epi32(0, 0, 0, 0x8000_0000u32 as i32);
        let zero = _mm_setzero_si128();
        let len = _mm_set_epi32(640, 0, 0, 0);
        let (sa, sb) = block_x2(
            sa,
            [load_be(pa.add(64)), pad0, zero, len],
            sb,
            [load_be(pb.add(64)), pad0, zero, len],
        );
        outer_x2(sa, sb)
    }

    #[inline(always)]
    unsafe fn wk(t: &[u32; 64], group: usize) -> __m128i {
        _mm_loadu_si128(t.as_ptr().add(4 * group).cast())
    }

    /// The nonce scan, `N` nonces in flight. Per nonce: 31 `sha256rnds2` for the inner hash (rounds 0-1
    /// are shared by every nonce and done once) and 31 for the outer (rounds 62-63 cannot change
    /// digest word 7, which is `IV7 + f` after round 61); constant schedule words are precomputed.
    #[allow(clippy::needless_range_loop)] // lockstep over N streams reads best with one index
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn scan<const N: usize>(
        mid: &State,
        w012: [u32; 3],
        start: u32,
        count: u32,
        top_max: u32,
        hits: &mut Vec<u32>,
    ) {
        let (mid0, mid1) = load_state(mid);
        let wbase = _mm_set_epi32(0, w012[2] as i32, w012[1] as i32, w012[0] as i32);
        // Rounds 0-1 do not depend on the nonce.
        let m01 = _mm_add_epi32(wbase, k(0));
        let p_abef = _mm_sha256rnds2_epu32(mid1, mid0, m01);
        let p_cdgh = mid0;
        let tail = &super::TAIL80_WK;
        let dpad = &super::DIGEST_PAD_WK;
        let w1c = _mm_set_epi32(0, 0, 0, 0x8000_0000u32 as i32);
        let w2c = _mm_setzero_si128();
        let w3c = _mm_set_epi32(640, 0, 0, 0);
        let o2c = _mm_set_epi32(0, 0, 0, 0x8000_0000u32 as i32);
        let o3c = _mm_set_epi32(256, 0, 0, 0);
        let (iv0, iv1) = iv();
        let iv7 = super::INITIAL_STATE[7];
        let mut off = 0u32;
        while off < count {
            let base = start.wrapping_add(off);
            // ---- inner: second header block ----
            let mut a0 = [_mm_setzero_si128(); N];
            let mut a1 = [_mm_setzero_si128(); N];
            let mut w = [[_mm_setzero_si128(); 4]; N];
            for j in 0..N {
                let nonce = base.wrapping_add(j as u32);
                let w0 = _mm_insert_epi32(wbase, nonce.swap_bytes() as i32, 3);
                let m = _mm_shuffle_epi32(_mm_add_epi32(w0, k(0)), 0x0E);
                a0[j] = _mm_sha256rnds2_epu32(p_cdgh, p_abef, m);
                a1[j] = p_abef;
                w[j] = [w0, w1c, w2c, w3c];
            }
            for g in 1..4 {
                let m = wk(tail, g);
                let mh = _mm_shuffle_epi32(m, 0x0E);
                for j in 0..N {
                    a1[j] = _mm_sha256rnds2_epu32(a1[j], a0[j], m);
                }
                for j in 0..N {
                    a0[j] = _mm_sha256rnds2_epu32(a0[j], a1[j], mh);
                }
            }
            for g in 4..16 {
                for j in 0..N {
                    let x = &mut w[j];
                    x[g % 4] = schedule(x[g % 4], x[(g + 1) % 4], x[(g + 2) % 4], x[(g + 3) % 4]);
                }
                let mut m = [_mm_setzero_si128(); N];
                for j in 0..N {
                    m[j] = _mm_add_epi32(w[j][g % 4], k(g));
                    a1[j] = _mm_sha256rnds2_epu32(a1[j], a0[j], m[j]);
                }
                for j in 0..N {
                    a0[j] = _mm_sha256rnds2_epu32(a0[j], a1[j], _mm_shuffle_epi32(m[j], 0x0E));
                }
            }
            // ---- outer: SHA-256 of the 32-byte digest ----
            for j in 0..N {
                let (lo, hi) = to_words(_mm_add_epi32(a0[j], mid0), _mm_add_epi32(a1[j], mid1));
                w[j] = [lo, hi, o2c, o3c];
                a0[j] = iv0;
                a1[j] = iv1;
            }
            for g in 0..16 {
                if g >= 4 {
                    for j in 0..N {
                        let x = &mut w[j];
                        x[g % 4] = schedule(x[g % 4], x[(g + 1) % 4], x[(g + 2) % 4], x[(g + 3) % 4]);
                    }
                }
                let mut m = [_mm_setzero_si128(); N];
                for j in 0..N {
                    m[j] = if g == 2 || g == 3 {
                        wk(dpad, g)
                    } else {
                        _mm_add_epi32(w[j][g % 4], k(g))
                    };
                    a1[j] = _mm_sha256rnds2_epu32(a1[j], a0[j], m[j]);
                }
                if g < 15 {
                    for j in 0..N {
                        a0[j] = _mm_sha256rnds2_epu32(a0[j], a1[j], _mm_shuffle_epi32(m[j], 0x0E));
                    }
                }
            }
            // a1 = (A, B, E, F) after round 61; lane 0 is F = H after round 63.
            for j in 0..N {
                let h7 = (_mm_cvtsi128_si32(a1[j]) as u32).wrapping_add(iv7);
                if h7.swap_bytes() <= top_max {
                    hits.push(base.wrapping_add(j as u32));
                }
            }
            off = off.wrapping_add(N as u32);
        }
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn compress2(sa: &mut State, ba: &Words, sb: &mut State, bb: &Words) {
        let (a, b) = block_x2(load_state(sa), load_words(ba), load_state(sb), load_words(bb));
        store_state(sa, a.0, a.1);
        store_state(sb, b.0, b.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fast_matches_portable(st in any::<[u32; 8]>(), a in any::<[u32; 16]>(), st2 in any::<[u32; 8]>(), b in any::<[u32; 16]>()) {
            let mut p = st;
            portable::compress(&mut p, &a);
            let mut f = st;
            compress(&mut f, &a);
            prop_assert_eq!(p, f);
            let mut p2 = st2;
            portable::compress(&mut p2, &b);
            let (mut x, mut y) = (st, st2);
            compress2(&mut x, &a, &mut y, &b);
            prop_assert_eq!(x, p);
            prop_assert_eq!(y, p2);
        }
    }

    #[test]
    fn reports_detection() {
        // Not an assertion on the CPU: just make sure detection runs and is stable.
        assert_eq!(has_sha_ni(), has_sha_ni());
        eprintln!("sha-ni: {}", has_sha_ni());
    }
}
