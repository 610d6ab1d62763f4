//! Elias-Fano coding of one chunk's kept indices (update wire version 4; docs/FORMAT.md 4.2): k
//! strictly ascending indices below n in about k (2 + log2(n / k)) bits, where the fixed-width
//! coding spends k x 12 (or 16): 7.2 bits an index at k = 103 of 4096 (1000x on `tiny`).
//!
//! ```text
//!   L = the largest l >= 0 with k * 2^l <= n          (integers only; L = 0 when k = n)
//!   U = ceil(n / 2^L)                                 (buckets of 2^L consecutive indices)
//!   one LSB-first bit stream:
//!     lows    k x L bits: x_i mod 2^L, for i = 0 .. k-1
//!     highs   k + U - 1 bits: bit (x_i >> L) + i is 1 for every i, every other bit 0
//!   zero-padded to a whole byte: ceil((k L + k + U - 1) / 8) bytes, fixed by n and k
//! ```
//!
//! Decoding: the j-th set bit of the highs, at position p, gives `x_j = (p - j) << L | low_j`.
//! A block whose highs hold other than k set bits, or with a set padding bit, is refused; the
//! caller checks the range and strict order of the indices, so every accepted block is the only
//! encoding of its indices. Both directions take O(k + U) = O(k) steps (U < 2k + 1).

/// The low bits per index, `L`, for `k` of `n` (`1 <= k <= n`).
pub fn low_bits(n: u32, k: u32) -> u32 {
    let mut l = 0;
    while l < 16 && (u64::from(k) << (l + 1)) <= u64::from(n) {
        l += 1;
    }
    l
}

/// Bits of the highs, `k + U - 1`.
fn high_bits(n: u32, k: u32) -> u64 {
    let l = low_bits(n, k);
    let u = (u64::from(n) + (1u64 << l) - 1) >> l;
    u64::from(k) + u - 1
}

/// Bytes of one chunk's block of `k` indices below `n` (0 when `k` is 0).
pub fn block_bytes(n: u32, k: u32) -> u64 {
    if k == 0 {
        return 0;
    }
    (u64::from(k) * u64::from(low_bits(n, k)) + high_bits(n, k)).div_ceil(8)
}

/// ORs `value` into `block` at stream bit `pos` (LSB-first; `value` below 2^16).
fn or_bits(block: &mut [u8], pos: u64, value: u32) {
    let mut v = u64::from(value) << (pos % 8);
    let mut b = (pos / 8) as usize;
    while v != 0 {
        block[b] |= v as u8;
        v >>= 8;
        b += 1;
    }
}

/// The `bits` (at most 16) bits of `block` from stream bit `pos` (which is inside the block).
fn read_bits(block: &[u8], pos: u64, bits: u32) -> u32 {
    let mut w = 0u32;
    for (j, &byte) in block[(pos / 8) as usize..].iter().take(3).enumerate() {
        w |= u32::from(byte) << (8 * j);
    }
    (w >> (pos % 8)) & ((1u32 << bits) - 1)
}

/// Appends the block of `indices` (strictly ascending, each below `n`, at least one): exactly
/// [`block_bytes`]`(n, indices.len())` bytes.
pub fn encode(indices: &[u16], n: u32, out: &mut Vec<u8>) {
    let k = indices.len() as u32;
    if k == 0 {
        return;
    }
    let l = low_bits(n, k);
    let lows_end = u64::from(k) * u64::from(l);
    let start = out.len();
    out.resize(start + block_bytes(n, k) as usize, 0);
    let block = &mut out[start..];
    for (i, &x) in indices.iter().enumerate() {
        or_bits(block, i as u64 * u64::from(l), u32::from(x) & ((1u32 << l) - 1));
        let p = lows_end + (u64::from(x) >> l) + i as u64;
        block[(p / 8) as usize] |= 1 << (p % 8);
    }
}

/// Reads `k` indices below `n` from `block` (exactly [`block_bytes`]`(n, k)` bytes) into `out`;
/// false if the highs hold other than `k` set bits or a padding bit is set. The indices' range and
/// order are the caller's to check.
pub fn decode(block: &[u8], n: u32, k: u32, out: &mut Vec<u16>) -> bool {
    if block.len() as u64 != block_bytes(n, k) {
        return false;
    }
    if k == 0 {
        return true;
    }
    let l = low_bits(n, k);
    let lows_end = u64::from(k) * u64::from(l);
    let end = lows_end + high_bits(n, k);
    let start = out.len();
    out.extend((0..u64::from(k)).map(|i| read_bits(block, i * u64::from(l), l) as u16));
    let first = (lows_end / 8) as usize;
    let mut j = 0u32;
    for (b, &byte) in block.iter().enumerate().skip(first) {
        let mut ones = if b == first { byte & (0xFF << (lows_end % 8)) } else { byte };
        while ones != 0 {
            let q = b as u64 * 8 + u64::from(ones.trailing_zeros());
            ones &= ones - 1;
            // A one past the highs is a padding bit; a (k+1)-th one is one too many.
            if q >= end || j == k {
                return false;
            }
            // The j-th one sits at least j bits into the highs. (q - lows_end - j) << L | low is
            // below 2^16: U 2^L is the least multiple of 2^L at or above n <= 2^16.
            let high = (q - lows_end - u64::from(j)) << l;
            let slot = &mut out[start + j as usize];
            let Ok(x) = u16::try_from(high | u64::from(*slot)) else { return false };
            *slot = x;
            j += 1;
        }
    }
    j == k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_formula() {
        // n = 4096, k = 103: L = 5 (103 x 32 = 3296 <= 4096 < 6592), U = 128:
        // 103 x 5 + 103 + 127 = 745 bits -> 94 bytes, against 155 at 12 bits an index.
        assert_eq!(low_bits(4096, 103), 5);
        assert_eq!(block_bytes(4096, 103), 94);
        // k = n: L = 0, U = n, 2n - 1 bits.
        assert_eq!(low_bits(64, 64), 0);
        assert_eq!(block_bytes(64, 64), 16);
        // k = 1 of 65536: L = 16, U = 1: 16 + 1 bits -> 3 bytes.
        assert_eq!(low_bits(65536, 1), 16);
        assert_eq!(block_bytes(65536, 1), 3);
    }

    #[test]
    fn a_worked_block() {
        // n = 16, k = 3, indices 1, 6, 7: L = 2 (3 x 4 <= 16 < 24), U = 4.
        // lows 01, 10, 11; highs 0, 1, 1 -> bits 0, 2, 3 of 6 (k + U - 1).
        // stream in order: 1 0 | 0 1 | 1 1 | 1 0 1 1 0 0 (then 4 padding bits), bit i of a byte
        // weighing 2^i: byte 0 = 0b0111_1001, byte 1 = 0b0000_0011
        let mut out = Vec::new();
        encode(&[1, 6, 7], 16, &mut out);
        assert_eq!(out, [0b0111_1001, 0b0000_0011]);
        let mut back = Vec::new();
        assert!(decode(&out, 16, 3, &mut back));
        assert_eq!(back, [1, 6, 7]);
    }

    #[test]
    fn round_trips_and_refuses_extra_ones_and_padding() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for n in [1u32, 2, 7, 64, 4096, 4095, 16384, 65536] {
            for k in [1u32, 2, 3, 17, 64, 256] {
                if k > n {
                    continue;
                }
                // k distinct indices below n, ascending (a seeded partial shuffle).
                let mut all: Vec<u32> = (0..n).collect();
                for i in 0..k as usize {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let j = i + (seed >> 33) as usize % (n as usize - i);
                    all.swap(i, j);
                }
                let mut idx: Vec<u16> = all[..k as usize].iter().map(|&x| x as u16).collect();
                idx.sort_unstable();
                let mut block = Vec::new();
                encode(&idx, n, &mut block);
                assert_eq!(block.len() as u64, block_bytes(n, k), "n {n} k {k}");
                let mut back = Vec::new();
                assert!(decode(&block, n, k, &mut back), "n {n} k {k}");
                assert_eq!(back, idx);
                // One more set bit anywhere that is now 0 is refused or changes the indices.
                for bit in 0..block.len() * 8 {
                    if block[bit / 8] >> (bit % 8) & 1 == 1 {
                        continue;
                    }
                    let mut b = block.clone();
                    b[bit / 8] |= 1 << (bit % 8);
                    let mut back = Vec::new();
                    if decode(&b, n, k, &mut back) {
                        assert_ne!(back, idx, "n {n} k {k} bit {bit}");
                    }
                }
            }
        }
    }
}
