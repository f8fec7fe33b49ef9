//! A minimal unsigned 256-bit integer: exactly the operations target and difficulty math needs.
//!
//! Little-endian limbs. Arithmetic is checked or explicitly wrapping; nothing here panics.

use core::cmp::Ordering;

/// An unsigned 256-bit integer (four little-endian `u64` limbs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct U256(pub(crate) [u64; 4]);

impl U256 {
    /// Zero.
    pub const ZERO: U256 = U256([0; 4]);
    /// One.
    pub const ONE: U256 = U256([1, 0, 0, 0]);
    /// 2^256 - 1.
    pub const MAX: U256 = U256([u64::MAX; 4]);

    /// From little-endian limbs.
    pub const fn from_limbs(limbs: [u64; 4]) -> U256 {
        U256(limbs)
    }

    /// From a `u128`.
    pub const fn from_u128(v: u128) -> U256 {
        U256([v as u64, (v >> 64) as u64, 0, 0])
    }

    /// Reads 32 little-endian bytes (how a SHA-256 digest is compared with a target).
    pub fn from_le_bytes(b: [u8; 32]) -> U256 {
        let mut l = [0u64; 4];
        for (i, chunk) in b.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            l[i] = u64::from_le_bytes(w);
        }
        U256(l)
    }

    /// Writes 32 little-endian bytes.
    pub fn to_le_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&self.0[i].to_le_bytes());
        }
        out
    }

    /// Reads 32 big-endian bytes (display order).
    pub fn from_be_bytes(mut b: [u8; 32]) -> U256 {
        b.reverse();
        U256::from_le_bytes(b)
    }

    /// Writes 32 big-endian bytes (display order).
    pub fn to_be_bytes(self) -> [u8; 32] {
        let mut b = self.to_le_bytes();
        b.reverse();
        b
    }

    /// Parses up to 64 hex digits, big-endian (as targets are printed).
    pub fn from_be_hex(s: &str) -> Option<U256> {
        if s.is_empty() || s.len() > 64 || !s.is_ascii() {
            return None;
        }
        let mut v = U256::ZERO;
        for c in s.chars() {
            let d = c.to_digit(16)?;
            v = v.checked_shl(4)?;
            v.0[0] |= u64::from(d);
        }
        Some(v)
    }

    /// 64 lower-case hex digits, big-endian.
    pub fn to_be_hex(self) -> String {
        self.to_be_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// True when zero.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 4]
    }

    /// Number of significant bits (0 for zero).
    pub fn bits(self) -> u32 {
        for i in (0..4).rev() {
            if self.0[i] != 0 {
                return 64 * i as u32 + (64 - self.0[i].leading_zeros());
            }
        }
        0
    }

    /// The low 128 bits.
    pub fn low_u128(self) -> u128 {
        u128::from(self.0[0]) | (u128::from(self.0[1]) << 64)
    }

    /// Shift left; `None` if a set bit would be shifted out.
    pub fn checked_shl(self, n: u32) -> Option<U256> {
        if n == 0 {
            return Some(self);
        }
        if n >= 256 {
            return if self.is_zero() { Some(self) } else { None };
        }
        if self.bits() + n > 256 {
            return None;
        }
        Some(self.wrapping_shl(n))
    }

    fn wrapping_shl(self, n: u32) -> U256 {
        if n >= 256 {
            return U256::ZERO;
        }
        let limbs = (n / 64) as usize;
        let bits = n % 64;
        let mut out = [0u64; 4];
        for i in (limbs..4).rev() {
            let src = i - limbs;
            out[i] = self.0[src] << bits;
            if bits != 0 && src > 0 {
                out[i] |= self.0[src - 1] >> (64 - bits);
            }
        }
        U256(out)
    }

    /// Logical shift right.
    pub fn shr_bits(self, n: u32) -> U256 {
        if n >= 256 {
            return U256::ZERO;
        }
        let limbs = (n / 64) as usize;
        let bits = n % 64;
        let mut out = [0u64; 4];
        for (i, o) in out.iter_mut().enumerate().take(4 - limbs) {
            let src = i + limbs;
            *o = self.0[src] >> bits;
            if bits != 0 && src + 1 < 4 {
                *o |= self.0[src + 1] << (64 - bits);
            }
        }
        U256(out)
    }

    /// Checked addition.
    pub fn checked_add(self, o: U256) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, limb) in out.iter_mut().enumerate() {
            let (s1, c1) = self.0[i].overflowing_add(o.0[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *limb = s2;
            carry = c1 || c2;
        }
        if carry {
            None
        } else {
            Some(U256(out))
        }
    }

    /// Checked subtraction.
    pub fn checked_sub(self, o: U256) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for (i, limb) in out.iter_mut().enumerate() {
            let (d1, b1) = self.0[i].overflowing_sub(o.0[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *limb = d2;
            borrow = b1 || b2;
        }
        if borrow {
            None
        } else {
            Some(U256(out))
        }
    }

    /// Checked multiplication by a `u128`.
    pub fn checked_mul_u128(self, m: u128) -> Option<U256> {
        let lo = self.checked_mul_u64(m as u64)?;
        let hi = self.checked_mul_u64((m >> 64) as u64)?.checked_shl(64)?;
        lo.checked_add(hi)
    }

    /// Checked multiplication by a `u64`.
    pub fn checked_mul_u64(self, m: u64) -> Option<U256> {
        let mut out = [0u64; 4];
        let mut carry: u128 = 0;
        for (i, limb) in out.iter_mut().enumerate() {
            let p = u128::from(self.0[i]) * u128::from(m) + carry;
            *limb = p as u64;
            carry = p >> 64;
        }
        if carry != 0 {
            None
        } else {
            Some(U256(out))
        }
    }

    /// Quotient and remainder; `None` when dividing by zero. Binary long division (not a hot path).
    pub fn div_rem(self, d: U256) -> Option<(U256, U256)> {
        if d.is_zero() {
            return None;
        }
        if self < d {
            return Some((U256::ZERO, self));
        }
        let shift = self.bits() - d.bits();
        let mut q = U256::ZERO;
        let mut r = self;
        let mut dd = d.wrapping_shl(shift);
        let mut i = shift as i32;
        while i >= 0 {
            if r >= dd {
                // `r >= dd` so this cannot underflow.
                r = r.checked_sub(dd).unwrap_or(U256::ZERO);
                let bit = i as u32;
                q.0[(bit / 64) as usize] |= 1u64 << (bit % 64);
            }
            dd = dd.shr_bits(1);
            i -= 1;
        }
        Some((q, r))
    }
}

impl Ord for U256 {
    fn cmp(&self, o: &Self) -> Ordering {
        for i in (0..4).rev() {
            match self.0[i].cmp(&o.0[i]) {
                Ordering::Equal => continue,
                other => return other,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for U256 {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl core::fmt::Debug for U256 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "0x{}", self.to_be_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn u(v: u128) -> U256 {
        U256::from_u128(v)
    }

    #[test]
    fn hex_round_trip_and_limits() {
        let x =
            U256::from_be_hex("00000000ffff0000000000000000000000000000000000000000000000000000").unwrap();
        assert_eq!(x.bits(), 224);
        assert_eq!(
            x.to_be_hex(),
            "00000000ffff0000000000000000000000000000000000000000000000000000"
        );
        assert!(U256::from_be_hex("").is_none());
        assert!(U256::from_be_hex(&"f".repeat(65)).is_none());
        assert!(U256::from_be_hex("xyz").is_none());
        assert!(U256::MAX.checked_add(U256::ONE).is_none());
        assert!(U256::ZERO.checked_sub(U256::ONE).is_none());
        assert!(U256::MAX.checked_mul_u64(2).is_none());
        assert!(U256::ONE.div_rem(U256::ZERO).is_none());
    }

    proptest! {
        #[test]
        fn matches_u128_arithmetic(a in any::<u64>(), b in 1u64.., s in 0u32..64) {
            let (a, b) = (u128::from(a), u128::from(b));
            prop_assert_eq!(u(a).checked_mul_u64(b as u64).unwrap(), u(a * b));
            let (q, r) = u(a * b + (a % b)).div_rem(u(b)).unwrap();
            prop_assert_eq!(q.low_u128(), a + (a % b) / b);
            prop_assert_eq!(r.low_u128(), (a % b) % b);
            prop_assert_eq!(u(a).checked_shl(s).unwrap().low_u128(), a << s);
            prop_assert_eq!(u(a << 40).shr_bits(s).low_u128(), (a << 40) >> s);
        }

        #[test]
        fn div_rem_reconstructs(x in any::<[u8; 32]>(), y in any::<[u8; 32]>()) {
            let x = U256::from_le_bytes(x);
            let y = U256::from_le_bytes(y).shr_bits(y[0] as u32);
            if !y.is_zero() {
                let (q, r) = x.div_rem(y).unwrap();
                prop_assert!(r < y);
                // q*y + r == x, checked through the 256-bit ops themselves on the small side:
                let back = mul_full(q, y).and_then(|p| p.checked_add(r));
                prop_assert_eq!(back, Some(x));
            }
        }
    }

    fn mul_full(a: U256, b: U256) -> Option<U256> {
        let mut acc = U256::ZERO;
        for i in 0..4 {
            let part = a.checked_mul_u64(b.0[i])?.checked_shl(64 * i as u32)?;
            acc = acc.checked_add(part)?;
        }
        Some(acc)
    }
}
