//! How a tensor is cut into DCT chunks.
//!
//! ```text
//!   shape            2-D view [rows, cols]
//!   []               [1, 1]
//!   [n]              [1, n]                      1-D chunks (chunk_rows = 1)
//!   [r, c]           [r, c]
//!   [a, b, ..., z]   [a*b*..., z]                leading dims flattened
//!
//!   chunk_rows = largest divisor of rows not above the chunk size (1 for 1-D tensors)
//!   chunk_cols = largest divisor of cols not above the chunk size
//!
//!   +---------+---------+---------+
//!   | chunk 0 | chunk 1 | chunk 2 |   chunks numbered row-major over the grid
//!   +---------+---------+---------+   (grid_rows = rows / chunk_rows, grid_cols = cols / chunk_cols);
//!   | chunk 3 | chunk 4 | chunk 5 |   inside a chunk, coefficient (u, v) has index u * chunk_cols + v
//!   +---------+---------+---------+
//! ```

use crate::state::TensorSpec;

/// Largest divisor of `n` that is at most `max` (1 when `max` is 0 or `n` is 0).
pub fn largest_divisor_at_most(n: u64, max: u64) -> u64 {
    let mut d = max.min(n);
    while d > 1 {
        if n.is_multiple_of(d) {
            return d;
        }
        d -= 1;
    }
    1
}

/// The chunk grid of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Rows of the 2-D view.
    pub rows: u64,
    /// Columns of the 2-D view.
    pub cols: u64,
    /// Rows of one chunk.
    pub chunk_rows: u16,
    /// Columns of one chunk.
    pub chunk_cols: u16,
}

impl Grid {
    /// The grid of `spec` at `chunk_size` (at most [`crate::wire::MAX_CHUNK_SIZE`]).
    pub fn new(spec: &TensorSpec, chunk_size: u16) -> Grid {
        let (rows, cols, one_d) = match spec.shape.as_slice() {
            [] => (1, 1, true),
            [n] => (1, *n, true),
            [lead @ .., last] => (lead.iter().product(), *last, false),
        };
        let max = u64::from(chunk_size);
        let chunk_rows = if one_d { 1 } else { largest_divisor_at_most(rows, max) };
        let chunk_cols = largest_divisor_at_most(cols, max);
        // Both are at most chunk_size, a u16.
        Grid { rows, cols, chunk_rows: chunk_rows as u16, chunk_cols: chunk_cols as u16 }
    }

    /// Chunks along the rows.
    pub fn grid_rows(&self) -> u64 {
        self.rows / u64::from(self.chunk_rows)
    }

    /// Chunks along the columns.
    pub fn grid_cols(&self) -> u64 {
        self.cols / u64::from(self.chunk_cols)
    }

    /// Number of chunks.
    pub fn chunks(&self) -> u64 {
        self.grid_rows() * self.grid_cols()
    }

    /// Coefficients in one chunk.
    pub fn coefficients(&self) -> u32 {
        u32::from(self.chunk_rows) * u32::from(self.chunk_cols)
    }

    /// Coefficients kept per chunk: `min(k, coefficients)`.
    pub fn kept(&self, k: u16) -> u32 {
        u32::from(k).min(self.coefficients())
    }

    /// Bits per packed index: 12 when the chunk has at most 4096 coefficients, 16 otherwise.
    pub fn index_bits(&self) -> u32 {
        if self.coefficients() <= 4096 { 12 } else { 16 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(shape: &[u64], c: u16) -> Grid {
        Grid::new(&TensorSpec { name: "t".into(), shape: shape.to_vec() }, c)
    }

    #[test]
    fn divisors() {
        assert_eq!(largest_divisor_at_most(768, 64), 64);
        assert_eq!(largest_divisor_at_most(50257, 64), 29);
        assert_eq!(largest_divisor_at_most(7, 64), 7);
        assert_eq!(largest_divisor_at_most(97, 64), 1);
        assert_eq!(largest_divisor_at_most(100, 64), 50);
    }

    #[test]
    fn grids() {
        let g = grid(&[768, 3072], 64);
        assert_eq!((g.chunk_rows, g.chunk_cols, g.chunks(), g.index_bits()), (64, 64, 12 * 48, 12));
        let g = grid(&[768], 64);
        assert_eq!((g.rows, g.chunk_rows, g.chunk_cols, g.chunks()), (1, 1, 64, 12));
        let g = grid(&[4, 3, 5, 6], 8);
        assert_eq!((g.rows, g.cols, g.chunk_rows, g.chunk_cols), (60, 6, 6, 6));
        let g = grid(&[], 64);
        assert_eq!((g.chunks(), g.coefficients(), g.kept(4)), (1, 1, 1));
        let g = grid(&[128, 128], 128);
        assert_eq!(g.index_bits(), 16);
    }
}
