//! The hash shapes mining uses, built on the compression kernel: streaming SHA-256 from a midstate,
//! `sha256d` of 64 bytes (a merkle node) and of 80 bytes (a header), single and two at a time.

use crate::kernel::{compress, compress2, words_from_bytes, State, Words, INITIAL_STATE};

/// The padding block that follows a 64-byte message (bit length 512).
const PAD_AFTER_64: Words = [0x8000_0000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 512];

/// Digest bytes (internal order) from a final state.
#[inline(always)]
pub fn state_to_digest(s: &State) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(s) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The big-endian words of a digest (what the next SHA-256 reads when it hashes the digest).
#[inline(always)]
pub fn digest_to_state(d: &[u8; 32]) -> State {
    let mut s = [0u32; 8];
    for (w, c) in s.iter_mut().zip(d.chunks_exact(4)) {
        *w = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    }
    s
}

/// The block that hashes a 32-byte digest (given as its words) with its padding.
#[inline(always)]
pub(crate) fn digest_block(s: &State) -> Words {
    [
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
        s[5],
        s[6],
        s[7],
        0x8000_0000,
        0,
        0,
        0,
        0,
        0,
        0,
        256,
    ]
}

/// SHA-256 of a 32-byte message given as the state words of the first hash: the outer half of sha256d.
#[inline(always)]
fn outer(s: &State) -> State {
    let mut o = INITIAL_STATE;
    compress(&mut o, &digest_block(s));
    o
}

/// A SHA-256 state after a whole number of 64-byte blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Midstate {
    /// Chaining state.
    pub state: State,
    /// Bytes hashed so far (a multiple of 64).
    pub len: u64,
}

impl Midstate {
    /// The state before any byte.
    pub const INITIAL: Midstate = Midstate {
        state: INITIAL_STATE,
        len: 0,
    };
}

/// Streaming SHA-256 with no allocation; can start from a [`Midstate`].
#[derive(Clone, Debug)]
pub struct Sha256 {
    state: State,
    buf: [u8; 64],
    buf_len: usize,
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl Sha256 {
    /// A fresh hasher.
    pub fn new() -> Sha256 {
        Sha256::from_midstate(Midstate::INITIAL)
    }

    /// Continues from a midstate.
    pub fn from_midstate(m: Midstate) -> Sha256 {
        Sha256 {
            state: m.state,
            buf: [0; 64],
            buf_len: 0,
            len: m.len,
        }
    }

    /// The midstate, if the bytes so far are a whole number of blocks.
    pub fn midstate(&self) -> Option<Midstate> {
        (self.buf_len == 0).then_some(Midstate {
            state: self.state,
            len: self.len,
        })
    }

    /// Bytes buffered after the last whole block.
    pub fn pending(&self) -> &[u8] {
        self.buf.get(..self.buf_len).unwrap_or(&[])
    }

    /// Adds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            let (head, rest) = data.split_at(take);
            if let Some(dst) = self.buf.get_mut(self.buf_len..self.buf_len + take) {
                dst.copy_from_slice(head);
            }
            self.buf_len += take;
            data = rest;
            if self.buf_len < 64 {
                return;
            }
            compress(&mut self.state, &words_from_bytes(&self.buf));
            self.buf_len = 0;
        }
        let mut chunks = data.chunks_exact(64);
        for c in &mut chunks {
            let mut b = [0u8; 64];
            b.copy_from_slice(c);
            compress(&mut self.state, &words_from_bytes(&b));
        }
        let rem = chunks.remainder();
        if let Some(dst) = self.buf.get_mut(..rem.len()) {
            dst.copy_from_slice(rem);
        }
        self.buf_len = rem.len();
    }

    /// Pads and returns the final state (as words).
    pub fn finalize_state(mut self) -> State {
        let bit_len = self.len.wrapping_mul(8);
        let mut block = [0u8; 64];
        let n = self.buf_len;
        block[..n].copy_from_slice(&self.buf[..n]);
        block[n] = 0x80;
        if n >= 56 {
            compress(&mut self.state, &words_from_bytes(&block));
            block = [0u8; 64];
        }
        block[56..].copy_from_slice(&bit_len.to_be_bytes());
        compress(&mut self.state, &words_from_bytes(&block));
        self.state
    }

    /// Pads and returns the digest.
    pub fn finalize(self) -> [u8; 32] {
        state_to_digest(&self.finalize_state())
    }

    /// Pads and returns `SHA-256(SHA-256(data))`.
    pub fn finalize_double(self) -> [u8; 32] {
        state_to_digest(&outer(&self.finalize_state()))
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize()
}

/// Double SHA-256 of `data` (internal byte order).
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize_double()
}

/// Appends SHA-256 padding for a message of `total_len` bytes whose unhashed tail is already in `buf`
/// (the bytes after the last whole block): afterwards `buf.len()` is a multiple of 64.
pub fn pad_tail(buf: &mut Vec<u8>, total_len: u64) {
    buf.push(0x80);
    while buf.len() % 64 != 56 {
        buf.push(0);
    }
    buf.extend_from_slice(&total_len.wrapping_mul(8).to_be_bytes());
}

/// `sha256d` of a message whose first blocks are summarised by `mid` and whose padded tail
/// (see [`pad_tail`]) is `blocks`. Trailing bytes short of a block are ignored; callers pad first.
pub fn sha256d_from_padded(mid: &Midstate, blocks: &[u8]) -> [u8; 32] {
    let mut s = mid.state;
    for c in blocks.chunks_exact(64) {
        let mut b = [0u8; 64];
        b.copy_from_slice(c);
        compress(&mut s, &words_from_bytes(&b));
    }
    state_to_digest(&outer(&s))
}

/// Two [`sha256d_from_padded`]s, interleaved where both still have blocks.
pub fn sha256d_from_padded_x2(ma: &Midstate, a: &[u8], mb: &Midstate, b: &[u8]) -> ([u8; 32], [u8; 32]) {
    let (mut sa, mut sb) = (ma.state, mb.state);
    let mut ca = a.chunks_exact(64);
    let mut cb = b.chunks_exact(64);
    loop {
        match (ca.next(), cb.next()) {
            (Some(x), Some(y)) => {
                let (mut bx, mut by) = ([0u8; 64], [0u8; 64]);
                bx.copy_from_slice(x);
                by.copy_from_slice(y);
                compress2(&mut sa, &words_from_bytes(&bx), &mut sb, &words_from_bytes(&by));
            }
            (Some(x), None) => {
                let mut bx = [0u8; 64];
                bx.copy_from_slice(x);
                compress(&mut sa, &words_from_bytes(&bx));
            }
            (None, Some(y)) => {
                let mut by = [0u8; 64];
                by.copy_from_slice(y);
                compress(&mut sb, &words_from_bytes(&by));
            }
            (None, None) => break,
        }
    }
    let (mut oa, mut ob) = (INITIAL_STATE, INITIAL_STATE);
    compress2(&mut oa, &digest_block(&sa), &mut ob, &digest_block(&sb));
    (state_to_digest(&oa), state_to_digest(&ob))
}

/// Folds a merkle branch onto a leaf: `root = sha256d(root ‖ b)` for each `b`.
pub fn merkle_fold(leaf: [u8; 32], branch: &[[u8; 32]]) -> [u8; 32] {
    branch.iter().fold(leaf, |acc, b| {
        let mut m = [0u8; 64];
        m[..32].copy_from_slice(&acc);
        m[32..].copy_from_slice(b);
        sha256d_64(&m)
    })
}

/// Two [`merkle_fold`]s, interleaved level by level (fully in registers on SHA-NI when the branches have
/// the same length, which they do for shares of one job).
pub fn merkle_fold_x2(ra: [u8; 32], ba: &[[u8; 32]], rb: [u8; 32], bb: &[[u8; 32]]) -> ([u8; 32], [u8; 32]) {
    if let Some(r) = crate::kernel::fused_fold_x2(&ra, ba, &rb, bb) {
        return r;
    }
    let (mut x, mut y) = (ra, rb);
    let common = ba.len().min(bb.len());
    for (p, q) in ba.iter().zip(bb) {
        let (mut mx, mut my) = ([0u8; 64], [0u8; 64]);
        mx[..32].copy_from_slice(&x);
        mx[32..].copy_from_slice(p);
        my[..32].copy_from_slice(&y);
        my[32..].copy_from_slice(q);
        (x, y) = sha256d_64_x2(&mx, &my);
    }
    (
        merkle_fold(x, ba.get(common..).unwrap_or(&[])),
        merkle_fold(y, bb.get(common..).unwrap_or(&[])),
    )
}

/// Double SHA-256 of exactly 64 bytes: a merkle node `dSHA256(left ‖ right)`. Three compressions.
#[inline]
pub fn sha256d_64(msg: &[u8; 64]) -> [u8; 32] {
    let mut s = INITIAL_STATE;
    compress(&mut s, &words_from_bytes(msg));
    compress(&mut s, &PAD_AFTER_64);
    state_to_digest(&outer(&s))
}

/// Two independent [`sha256d_64`]s, interleaved.
#[inline]
pub fn sha256d_64_x2(a: &[u8; 64], b: &[u8; 64]) -> ([u8; 32], [u8; 32]) {
    if let Some(r) = crate::kernel::fused_sha256d_64_x2(a, b) {
        return r;
    }
    let (mut sa, mut sb) = (INITIAL_STATE, INITIAL_STATE);
    compress2(&mut sa, &words_from_bytes(a), &mut sb, &words_from_bytes(b));
    compress2(&mut sa, &PAD_AFTER_64, &mut sb, &PAD_AFTER_64);
    let (mut oa, mut ob) = (INITIAL_STATE, INITIAL_STATE);
    compress2(&mut oa, &digest_block(&sa), &mut ob, &digest_block(&sb));
    (state_to_digest(&oa), state_to_digest(&ob))
}

/// The second block of an 80-byte header: its last 16 bytes and the padding (bit length 640).
#[inline(always)]
fn header_tail_block(h: &[u8; 80]) -> Words {
    let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    tail_block([w(64), w(68), w(72)], w(76))
}

/// The second header block from its three fixed words and the nonce word (big-endian view).
#[inline(always)]
pub(crate) fn tail_block(w012: [u32; 3], nonce_word: u32) -> Words {
    [
        w012[0],
        w012[1],
        w012[2],
        nonce_word,
        0x8000_0000,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        640,
    ]
}

#[inline(always)]
fn header_head_block(h: &[u8; 80]) -> Words {
    let mut b = [0u8; 64];
    b.copy_from_slice(&h[..64]);
    words_from_bytes(&b)
}

/// Double SHA-256 of an 80-byte block header (internal byte order). Three compressions.
#[inline]
pub fn sha256d_80(h: &[u8; 80]) -> [u8; 32] {
    let mut s = INITIAL_STATE;
    compress(&mut s, &header_head_block(h));
    compress(&mut s, &header_tail_block(h));
    state_to_digest(&outer(&s))
}

/// Two independent [`sha256d_80`]s, interleaved.
#[inline]
pub fn sha256d_80_x2(a: &[u8; 80], b: &[u8; 80]) -> ([u8; 32], [u8; 32]) {
    if let Some(r) = crate::kernel::fused_sha256d_80_x2(a, b) {
        return r;
    }
    let (mut sa, mut sb) = (INITIAL_STATE, INITIAL_STATE);
    compress2(&mut sa, &header_head_block(a), &mut sb, &header_head_block(b));
    compress2(&mut sa, &header_tail_block(a), &mut sb, &header_tail_block(b));
    let (mut oa, mut ob) = (INITIAL_STATE, INITIAL_STATE);
    compress2(&mut oa, &digest_block(&sa), &mut ob, &digest_block(&sb));
    (state_to_digest(&oa), state_to_digest(&ob))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::{sha256 as bh, sha256d as bhd, Hash};
    use proptest::prelude::*;

    #[test]
    fn fips_vectors() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    proptest! {
        #[test]
        fn streaming_matches_bitcoin_hashes(data in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300) {
            let split = split.min(data.len());
            let mut h = Sha256::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            prop_assert_eq!(h.finalize(), bh::Hash::hash(&data).to_byte_array());
            prop_assert_eq!(sha256d(&data), bhd::Hash::hash(&data).to_byte_array());
        }

        #[test]
        fn fixed_shapes_match(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), c in any::<[u8; 32]>(), tail in any::<[u8; 16]>()) {
            let mut m1 = [0u8; 64];
            m1[..32].copy_from_slice(&a);
            m1[32..].copy_from_slice(&b);
            let mut m2 = [0u8; 64];
            m2[..32].copy_from_slice(&c);
            m2[32..].copy_from_slice(&a);
            prop_assert_eq!(sha256d_64(&m1), sha256d(&m1));
            let (x, y) = sha256d_64_x2(&m1, &m2);
            prop_assert_eq!(x, sha256d(&m1));
            prop_assert_eq!(y, sha256d(&m2));
            let mut h1 = [0u8; 80];
            h1[..64].copy_from_slice(&m1);
            h1[64..].copy_from_slice(&tail);
            let mut h2 = [0u8; 80];
            h2[..64].copy_from_slice(&m2);
            h2[64..].copy_from_slice(&tail);
            prop_assert_eq!(sha256d_80(&h1), sha256d(&h1));
            let (x, y) = sha256d_80_x2(&h1, &h2);
            prop_assert_eq!(x, sha256d(&h1));
            prop_assert_eq!(y, sha256d(&h2));
        }

        #[test]
        fn merkle_folds_agree(ra in any::<[u8; 32]>(), rb in any::<[u8; 32]>(),
                              ba in proptest::collection::vec(any::<[u8; 32]>(), 0..14),
                              bb in proptest::collection::vec(any::<[u8; 32]>(), 0..14)) {
            let plain = |mut r: [u8; 32], br: &[[u8; 32]]| {
                for b in br {
                    let mut m = r.to_vec();
                    m.extend_from_slice(b);
                    r = sha256d(&m);
                }
                r
            };
            prop_assert_eq!(merkle_fold(ra, &ba), plain(ra, &ba));
            prop_assert_eq!(merkle_fold_x2(ra, &ba, rb, &bb), (plain(ra, &ba), plain(rb, &bb)));
            // equal lengths take the fused path
            let n = ba.len().min(bb.len());
            prop_assert_eq!(merkle_fold_x2(ra, &ba[..n], rb, &bb[..n]), (plain(ra, &ba[..n]), plain(rb, &bb[..n])));
        }

        #[test]
        fn padded_paths(a in proptest::collection::vec(any::<u8>(), 0..300), b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut pa = a.clone();
            pad_tail(&mut pa, a.len() as u64);
            let mut pb = b.clone();
            pad_tail(&mut pb, b.len() as u64);
            prop_assert_eq!(sha256d_from_padded(&Midstate::INITIAL, &pa), sha256d(&a));
            let (x, y) = sha256d_from_padded_x2(&Midstate::INITIAL, &pa, &Midstate::INITIAL, &pb);
            prop_assert_eq!(x, sha256d(&a));
            prop_assert_eq!(y, sha256d(&b));
        }

        #[test]
        fn midstate_resume(prefix in proptest::collection::vec(any::<u8>(), 0..4), rest in proptest::collection::vec(any::<u8>(), 0..200)) {
            let blocks = prefix.len() * 64;
            let data: Vec<u8> = (0..blocks).map(|i| i as u8).chain(rest.iter().copied()).collect();
            let mut h = Sha256::new();
            h.update(&data[..blocks]);
            let mid = h.midstate().unwrap();
            let mut h2 = Sha256::from_midstate(mid);
            h2.update(&rest);
            prop_assert_eq!(h2.finalize_double(), sha256d(&data));
        }
    }
}
