//! Orthonormal DCT-II on chunks, computed from a portable basis.
//!
//! ```text
//!   basis (n x n, row k = frequency, column i = sample), computed in f64 then rounded to f32:
//!     D[k][i] = s_k * cos(pi * m / (2n)),   m = ((2i + 1) * k) mod 4n
//!     s_0 = sqrt(1/n),  s_k = sqrt(2/n) for k > 0
//!   cos is the `libm` crate's (pure Rust, same bits everywhere); sqrt and / are IEEE-exact.
//!
//!   forward (chunk X is r x c, row-major):   Y = Dr · X · Dcᵀ
//!     T[i][v] = Σ_j X[i][j] * Dc[v][j]        (j ascending)
//!     Y[u][v] = Σ_i Dr[u][i] * T[i][v]        (i ascending)
//!   inverse:                                   X = Drᵀ · Y · Dc
//!     Z[u][j] = Σ_v Y[u][v] * Dc[v][j]        (v ascending)
//!     X[i][j] = Σ_u Dr[u][i] * Z[u][j]        (u ascending)
//! ```
//!
//! Every sum is a left fold in f32 starting from +0.0, each step `acc + (a * b)` rounded twice
//! (never fused: Rust does not contract `+=` of a product into an FMA, and this crate never calls `mul_add`). The inverse is the consensus path (aggregation); the forward is the reference encoder.

/// The orthonormal DCT-II matrix of one size.
#[derive(Clone, Debug, PartialEq)]
pub struct Basis {
    n: usize,
    matrix: Vec<f32>,
    transposed: Vec<f32>,
}

impl Basis {
    /// The basis of size `n` (`n >= 1`; chunk sizes are at most [`crate::wire::MAX_CHUNK_SIZE`]).
    pub fn new(n: u16) -> Basis {
        let n = usize::from(n.max(1));
        let nf = n as f64;
        let first = (1.0 / nf).sqrt();
        let rest = (2.0 / nf).sqrt();
        let mut matrix = Vec::with_capacity(n * n);
        for k in 0..n {
            let s = if k == 0 { first } else { rest };
            for i in 0..n {
                let m = ((2 * i + 1) * k) % (4 * n);
                let angle = (core::f64::consts::PI * m as f64) / (2.0 * nf);
                matrix.push((s * libm::cos(angle)) as f32);
            }
        }
        let transposed = (0..n * n).map(|p| matrix[(p % n) * n + p / n]).collect();
        Basis { n, matrix, transposed }
    }

    /// Size.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false (a basis has at least one row); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Row `k` (frequency k sampled at every position).
    pub fn row(&self, k: usize) -> &[f32] {
        &self.matrix[k * self.n..(k + 1) * self.n]
    }

    /// The whole matrix, row-major.
    pub fn matrix(&self) -> &[f32] {
        &self.matrix
    }

    /// Little-endian bytes of the matrix (what the pinned hash covers).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.matrix.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Forward 2-D DCT of an `r x c` chunk (`rows.len() == r`, `cols.len() == c`), into `out` (`r * c`).
pub fn forward(chunk: &[f32], rows: &Basis, cols: &Basis, out: &mut [f32]) {
    let (r, c) = (rows.n, cols.n);
    assert!(chunk.len() == r * c && out.len() == r * c, "chunk size does not match the bases");
    // T[i][v] accumulates over j in the outer loop, so the inner loop runs across v (vectorisable)
    // while each element still sums j in ascending order.
    let mut t = vec![0.0f32; r * c];
    for (x, ti) in chunk.chunks_exact(c).zip(t.chunks_exact_mut(c)) {
        for (j, xj) in x.iter().enumerate() {
            for (tv, d) in ti.iter_mut().zip(&cols.transposed[j * c..(j + 1) * c]) {
                *tv += xj * d;
            }
        }
    }
    out.fill(0.0);
    for (u, y) in out.chunks_exact_mut(c).enumerate() {
        for (a, ti) in rows.row(u).iter().zip(t.chunks_exact(c)) {
            for (yv, tv) in y.iter_mut().zip(ti) {
                *yv += a * tv;
            }
        }
    }
}

/// Inverse 2-D DCT of an `r x c` coefficient chunk, into `out` (`r * c`). Dense reference of the
/// canonical order; aggregation runs a sparse kernel that skips zero terms and gives the same values.
pub fn inverse(coefficients: &[f32], rows: &Basis, cols: &Basis, out: &mut [f32]) {
    let (r, c) = (rows.n, cols.n);
    assert!(coefficients.len() == r * c && out.len() == r * c, "chunk size does not match the bases");
    let mut z = vec![0.0f32; r * c];
    for (yu, zu) in coefficients.chunks_exact(c).zip(z.chunks_exact_mut(c)) {
        for (v, y) in yu.iter().enumerate() {
            for (zj, dj) in zu.iter_mut().zip(cols.row(v)) {
                *zj += y * dj;
            }
        }
    }
    out.fill(0.0);
    for (i, x) in out.chunks_exact_mut(c).enumerate() {
        for (u, zu) in z.chunks_exact(c).enumerate() {
            let a = rows.row(u)[i];
            for (xj, zj) in x.iter_mut().zip(zu) {
                *xj += a * zj;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// blake3 of the little-endian f32 bytes of the size-64 basis. If this fails, the basis changed on
    /// this platform or toolchain, and aggregation would no longer agree with other machines.
    const BASIS_64_BLAKE3: &str = "eaabc696d6eb69f9894f0d9f94768f518913215f3c78edde400ef3c6d54778ae";

    #[test]
    fn basis_64_is_pinned() {
        let b = Basis::new(64);
        assert_eq!(blake3::hash(&b.to_le_bytes()).to_hex().as_str(), BASIS_64_BLAKE3);
    }

    /// Entries of the basis as FORMAT.md §3.1 lists them, computed outside this crate (CPython's
    /// `math.cos`, the C library's, through the same f64 steps, then rounded to f32).
    #[test]
    fn basis_entries_match_an_independent_cosine() {
        let golden: [(u16, usize, usize, u32); 9] = [
            (64, 1, 0, 0x3e34_f6fe),
            (64, 1, 31, 0x3b8e_2871),
            (64, 17, 5, 0xbcb1_4504),
            (64, 63, 63, 0xbb8e_2871),
            (64, 32, 7, 0x3e00_0000),
            (8, 3, 2, 0xbefb_14be),
            (8, 7, 0, 0x3dc7_c5c2),
            (128, 100, 77, 0xbc96_4083),
            (12, 5, 11, 0xbea5_d446),
        ];
        for (n, k, i, bits) in golden {
            let got = Basis::new(n).row(k)[i].to_bits();
            assert_eq!(got, bits, "D[{k}][{i}] of size {n}: {got:#010x}, expected {bits:#010x}");
        }
    }

    #[test]
    fn basis_is_orthonormal() {
        for n in [1u16, 2, 7, 29, 64] {
            let b = Basis::new(n);
            let n = usize::from(n);
            for p in 0..n {
                for q in 0..n {
                    let dot: f64 = (0..n).map(|i| f64::from(b.row(p)[i]) * f64::from(b.row(q)[i])).sum();
                    let want = if p == q { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "n={n} p={p} q={q} dot={dot}");
                }
            }
        }
    }

    #[test]
    fn forward_then_inverse_round_trips() {
        for (r, c) in [(1u16, 64u16), (64, 64), (7, 29), (1, 1), (8, 3)] {
            let (rb, cb) = (Basis::new(r), Basis::new(c));
            let n = usize::from(r) * usize::from(c);
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 113) as f32 - 56.0) / 17.0).collect();
            let mut y = vec![0.0; n];
            let mut back = vec![0.0; n];
            forward(&x, &rb, &cb, &mut y);
            inverse(&y, &rb, &cb, &mut back);
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() < 1e-4, "{r}x{c}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn constant_chunk_has_only_dc() {
        let b = Basis::new(8);
        let x = vec![1.0f32; 64];
        let mut y = vec![0.0; 64];
        forward(&x, &b, &b, &mut y);
        assert!((y[0] - 8.0).abs() < 1e-5);
        assert!(y[1..].iter().all(|v| v.abs() < 1e-5));
    }
}
