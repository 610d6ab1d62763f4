//! Reference encoder: dense tensors (a worker's momentum) to a sparse [`Update`], in pure Rust.
//!
//! ```text
//!   tensor ──chunk grid──▶ chunks ──forward DCT (or the identity)──▶ coefficients ──top-k──▶ (index, value) x kept
//!                                                                  │
//!        order: |value| descending (f32 total order), then lower index first; keep the first `kept`,
//!        send them by ascending index
//!                                                                  ▼
//!                                      values quantised: sign | int8 + scale | bf16 | two-bit + scale
//! ```
//!
//! The trainer encodes with libtorch on the GPU and builds its [`Update`] with [`Update::new`]; this
//! encoder is for tests, benchmarks and machines without libtorch. Both agree on indices except at
//! near-ties and on values within float tolerance. Error feedback (subtracting what was sent from the
//! momentum) is the worker's business: see [`crate::aggregate::direction`].

use rayon::prelude::*;

use crate::chunk::Grid;
use crate::dct::{self, Basis};
use crate::error::VerifyError;
use crate::state::State;
use crate::wire::{Header, MAX_ABS_VALUE, MAX_INT8_SCALE, MAX_TWO_BIT_SCALE, Transform, Update, ValueEncoding, Values};

/// Top-k of one chunk's coefficients: the `kept` positions, ascending, by |value| descending then index.
pub fn top_k(coefficients: &[f32], kept: usize) -> Vec<u16> {
    let mut order: Vec<u16> = (0..coefficients.len()).map(|i| i as u16).collect();
    let by_magnitude = |a: &u16, b: &u16| {
        let (x, y) = (coefficients[usize::from(*a)].abs(), coefficients[usize::from(*b)].abs());
        y.total_cmp(&x).then(a.cmp(b))
    };
    let kept = kept.min(order.len());
    if kept > 0 && kept < order.len() {
        order.select_nth_unstable_by(kept - 1, by_magnitude);
    }
    order.truncate(kept);
    order.sort_unstable();
    order
}

/// Encodes `momentum` (layout must match `header.layout`) into an update.
pub fn encode(momentum: &State, header: &Header) -> Result<Update, VerifyError> {
    let comp = header.compression;
    let layout = momentum.layout();
    comp.validate_for(layout)?;
    if header.layout != layout.hash() {
        return Err(VerifyError::LayoutMismatch("layout hash".into()));
    }
    let mut tensors = Vec::with_capacity(layout.tensors().len());
    for (t, (spec, data)) in layout.tensors().iter().zip(momentum.data()).enumerate() {
        if !data.iter().all(|v| v.is_finite()) {
            return Err(VerifyError::NonFiniteTensor { name: spec.name.clone() });
        }
        let grid = Grid::new(spec, comp.chunk_size);
        let chunks = encode_tensor(data, &grid, comp.topk_for(t), comp.transform);
        tensors.push(quantise(t as u32, comp.values, chunks)?);
    }
    Update::new(*header, layout, tensors)
}

/// Per chunk (row-major): kept indices ascending, and their coefficient values.
fn encode_tensor(data: &[f32], grid: &Grid, k: u16, transform: Transform) -> Vec<(Vec<u16>, Vec<f32>)> {
    let (cr, cc) = (usize::from(grid.chunk_rows), usize::from(grid.chunk_cols));
    let (rb, cb) = (Basis::new(grid.chunk_rows), Basis::new(grid.chunk_cols));
    let cols = grid.cols as usize;
    let kept = grid.kept(k) as usize;
    let band = cr * cols;
    data.par_chunks(band)
        .flat_map_iter(|rows| {
            let mut x = vec![0.0f32; cr * cc];
            let mut y = vec![0.0f32; cr * cc];
            let mut out = Vec::with_capacity(grid.grid_cols() as usize);
            for gx in 0..grid.grid_cols() as usize {
                for i in 0..cr {
                    let start = i * cols + gx * cc;
                    x[i * cc..(i + 1) * cc].copy_from_slice(&rows[start..start + cc]);
                }
                match transform {
                    Transform::Dct => dct::forward(&x, &rb, &cb, &mut y),
                    Transform::Identity => y.copy_from_slice(&x),
                }
                let idx = top_k(&y, kept);
                let vals = idx.iter().map(|&i| y[usize::from(i)]).collect();
                out.push((idx, vals));
            }
            out
        })
        .collect()
}

/// How an encoder picks a chunk's two-bit scale (the decoder takes any: FORMAT.md 4.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TwoBitScale {
    /// The largest kept magnitude over 3: no value is clipped (the reference encoder's choice, the
    /// golden vectors' and `cairn worker`'s).
    #[default]
    Max,
    /// The smaller of the largest kept magnitude and 1.5 x the mean one, over 3: the inner levels
    /// sit at half the mean magnitude, and values past the outer level are clipped to it (the
    /// worker's error feedback keeps the rest). A research option (`cairn bench train
    /// --two-bit-scale mean`, docs/BENCHMARKS.md): its single-seed results are mixed.
    ClippedMean,
    /// The scale that minimises the squared error of the four levels over the chunk's kept values
    /// (Lloyd's iteration with the levels' ratio fixed, from [`TwoBitScale::Max`]'s scale, 8 passes
    /// in f64): values past the outer level are clipped to it (the worker's error feedback keeps the
    /// rest). A research option (`cairn bench train --two-bit-scale lsq`): no better than
    /// [`TwoBitScale::Max`] at 250x or 1000x (docs/BENCHMARKS.md, "The outer rate").
    LeastSquares,
}

/// [`quantise_with`] with the reference encoder's two-bit scale ([`TwoBitScale::Max`]).
pub fn quantise(
    tensor: u32,
    encoding: ValueEncoding,
    chunks: Vec<(Vec<u16>, Vec<f32>)>,
) -> Result<(Vec<u16>, Values), VerifyError> {
    quantise_with(tensor, encoding, chunks, TwoBitScale::Max)
}

/// Quantises one tensor's selected coefficients, chunk by chunk (`(indices, values)` per chunk, in
/// chunk order), into wire values: the one implementation of the value encodings, shared by this
/// reference encoder and the trainer's libtorch encoder. Rejects non-finite values and values the
/// decoder would refuse. `tensor` only labels errors.
pub fn quantise_with(
    tensor: u32,
    encoding: ValueEncoding,
    chunks: Vec<(Vec<u16>, Vec<f32>)>,
    two_bit: TwoBitScale,
) -> Result<(Vec<u16>, Values), VerifyError> {
    let n: usize = chunks.iter().map(|c| c.0.len()).sum();
    let mut indices = Vec::with_capacity(n);
    let mut values = match encoding {
        ValueEncoding::Sign => Values::Sign(Vec::with_capacity(n)),
        ValueEncoding::Int8 => Values::Int8 { scales: Vec::with_capacity(chunks.len()), q: Vec::with_capacity(n) },
        ValueEncoding::Bf16 => Values::Bf16(Vec::with_capacity(n)),
        ValueEncoding::TwoBit => Values::TwoBit { scales: Vec::with_capacity(chunks.len()), q: Vec::with_capacity(n) },
    };
    for (c, (idx, vals)) in chunks.into_iter().enumerate() {
        let chunk = c as u64;
        if !vals.iter().all(|v| v.is_finite()) {
            return Err(VerifyError::NonFiniteValue { tensor, chunk });
        }
        indices.extend_from_slice(&idx);
        match &mut values {
            Values::Sign(s) => s.extend(vals.iter().map(|&v| v < 0.0)),
            Values::Int8 { scales, q } => {
                let scale =
                    chunk_scale(&vals, 127.0, MAX_INT8_SCALE).ok_or(VerifyError::ValueOutOfBounds { tensor, chunk })?;
                scales.push(scale);
                q.extend(
                    vals.iter().map(|&v| if scale > 0.0 { (v / scale).round().clamp(-127.0, 127.0) as i8 } else { 0 }),
                );
            }
            Values::TwoBit { scales, q } => {
                // levels -3, -1, +1, +3 times scale = max|v| / 3; each value to the nearest level
                // (code c = round((v / scale + 3) / 2), clamped to 0..=3)
                let scale = match two_bit {
                    TwoBitScale::Max => chunk_scale(&vals, 3.0, MAX_TWO_BIT_SCALE),
                    TwoBitScale::ClippedMean => clipped_mean_scale(&vals, MAX_TWO_BIT_SCALE),
                    TwoBitScale::LeastSquares => least_squares_scale(&vals, MAX_TWO_BIT_SCALE),
                }
                .ok_or(VerifyError::ValueOutOfBounds { tensor, chunk })?;
                scales.push(scale);
                q.extend(vals.iter().map(|&v| match scale > 0.0 {
                    true => ((v / scale + 3.0) / 2.0).round().clamp(0.0, 3.0) as u8,
                    false => 0,
                }));
            }
            Values::Bf16(b) => {
                for &v in &vals {
                    let h = half::bf16::from_f32(v);
                    if h.to_f32().abs() > MAX_ABS_VALUE {
                        return Err(VerifyError::ValueOutOfBounds { tensor, chunk });
                    }
                    b.push(h.to_bits());
                }
            }
        }
    }
    Ok((indices, values))
}

/// `min(max |v|, 1.5 mean |v|) / 3` (the mean summed in f64), or `None` above `max`.
fn clipped_mean_scale(vals: &[f32], max: f32) -> Option<f32> {
    let largest = largest_magnitude(vals);
    let mean = vals.iter().map(|v| f64::from(v.abs())).sum::<f64>() / vals.len().max(1) as f64;
    let scale = largest.min((1.5 * mean) as f32) / 3.0;
    (scale <= max).then_some(scale)
}

/// The two-bit scale `s` (levels ±s, ±3s) minimising `sum (|v| - level(|v|))^2`, where each value
/// takes its nearest level (±s below 2s, ±3s from it): Lloyd's iteration on `s` alone, whose update
/// is `s = sum |v| l / sum l^2` over the levels `l` in {1, 3} the values took, 8 passes from
/// `max |v| / 3`; `None` above `max`.
fn least_squares_scale(vals: &[f32], max: f32) -> Option<f32> {
    let mut s = f64::from(largest_magnitude(vals)) / 3.0;
    for _ in 0..8 {
        if s <= 0.0 {
            break;
        }
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for v in vals {
            let a = f64::from(v.abs());
            let l = if a >= 2.0 * s { 3.0 } else { 1.0 };
            num += a * l;
            den += l * l;
        }
        s = num / den;
    }
    let scale = s as f32;
    (scale <= max).then_some(scale)
}

/// A chunk's scale: its largest magnitude over `top` (the largest level: int8 127, two-bit 3), or
/// `None` above `max` (what the decoder would refuse).
fn chunk_scale(vals: &[f32], top: f32, max: f32) -> Option<f32> {
    let scale = largest_magnitude(vals) / top;
    (scale <= max).then_some(scale)
}

/// The largest `|v|` of `vals` (0 for none).
fn largest_magnitude(vals: &[f32]) -> f32 {
    vals.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_breaks_ties_by_lower_index() {
        let y = [1.0, -3.0, 3.0, 0.5, -3.0, 2.0];
        assert_eq!(top_k(&y, 2), vec![1, 2]);
        assert_eq!(top_k(&y, 3), vec![1, 2, 4]);
        assert_eq!(top_k(&y, 4), vec![1, 2, 4, 5]);
        assert_eq!(top_k(&y, 10), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(top_k(&[0.0, -0.0, 0.0], 2), vec![0, 1]);
    }

    #[test]
    fn the_clipped_mean_scale_puts_the_inner_levels_at_half_the_mean_magnitude() {
        // |v| = 1, 1, 1, 10: mean 3.25, 1.5 x mean = 4.875 < 10, scale = 1.625; levels ±1.625 and
        // ±4.875. 1 / 1.625 = 0.62 -> code round(1.81) = 2 (+1.625); 10 -> clamped to code 3.
        let chunks = vec![(vec![0, 1, 2, 3], vec![1.0f32, -1.0, 1.0, 10.0])];
        let (_, values) = quantise_with(0, ValueEncoding::TwoBit, chunks, TwoBitScale::ClippedMean).unwrap();
        let Values::TwoBit { scales, q } = &values else { panic!("{values:?}") };
        assert_eq!(scales, &[1.625f32]);
        assert_eq!(q, &[2, 1, 2, 3]);
        // All equal: 1.5 x mean exceeds the largest, so the scale is the largest over 3, as Max.
        let chunks = vec![(vec![0, 1], vec![0.9f32, -0.9])];
        let (_, values) = quantise_with(0, ValueEncoding::TwoBit, chunks, TwoBitScale::ClippedMean).unwrap();
        let Values::TwoBit { scales, .. } = &values else { panic!("{values:?}") };
        assert_eq!(scales, &[0.9f32 / 3.0]);
    }

    #[test]
    fn the_least_squares_scale_is_the_fixed_point_of_lloyds_update() {
        // |v| = 1, 1, 1, 10: from s = 10 / 3 the three 1s take level s and 10 takes 3s (10 >= 2s),
        // so s = (1 + 1 + 1 + 3 x 10) / (1 + 1 + 1 + 9) = 2.75, where the assignment is unchanged.
        // Squared error 4 x 1.75^2 = 12.25, against 3 x (10/3 - 1)^2 = 16.33 for the max scale.
        let chunks = vec![(vec![0, 1, 2, 3], vec![1.0f32, -1.0, 1.0, 10.0])];
        let (_, values) = quantise_with(0, ValueEncoding::TwoBit, chunks, TwoBitScale::LeastSquares).unwrap();
        let Values::TwoBit { scales, q } = &values else { panic!("{values:?}") };
        assert_eq!(scales, &[2.75f32]);
        // 1 / 2.75 -> code round(1.68) = 2; -1 -> 1; 10 / 2.75 = 3.64 -> code 3 (clipped to 8.25)
        assert_eq!(q, &[2, 1, 2, 3]);
        // |v| = 1, 2, 3, 4: from s = 4 / 3, 3 and 4 reach 2s = 2.67, so s = (1 + 2 + 9 + 12) / 20 = 1.2;
        // at 2s = 2.4 the assignment holds.
        let chunks = vec![(vec![0, 1, 2, 3], vec![1.0f32, 2.0, -3.0, 4.0])];
        let (_, values) = quantise_with(0, ValueEncoding::TwoBit, chunks, TwoBitScale::LeastSquares).unwrap();
        let Values::TwoBit { scales, .. } = &values else { panic!("{values:?}") };
        assert_eq!(scales, &[1.2f32]);
        // An all-zero chunk keeps scale 0.
        let chunks = vec![(vec![0, 1], vec![0.0f32, -0.0])];
        let (_, values) = quantise_with(0, ValueEncoding::TwoBit, chunks, TwoBitScale::LeastSquares).unwrap();
        let Values::TwoBit { scales, .. } = &values else { panic!("{values:?}") };
        assert_eq!(scales, &[0.0f32]);
    }

    #[test]
    fn two_bit_values_go_to_the_nearest_of_four_levels() {
        // scale = 0.9 / 3 = 0.3; levels -0.9, -0.3, 0.3, 0.9
        let chunks = vec![(vec![0, 1, 2, 3, 4], vec![-0.9f32, 0.9, 0.5, -0.1, 0.65])];
        let (_, values) = quantise(0, ValueEncoding::TwoBit, chunks).unwrap();
        let Values::TwoBit { scales, q } = &values else { panic!("{values:?}") };
        assert_eq!(scales, &[0.9f32 / 3.0]);
        // 0.5 / 0.3 = 1.67 -> nearest level +1 (code 2); -0.1 -> -1 (code 1); 0.65 -> +3 (code 3)
        assert_eq!(q, &[0, 3, 2, 1, 3]);
        let s = f64::from(0.9f32 / 3.0);
        let decoded: Vec<f64> = (0..5).map(|e| values.value(0, e)).collect();
        assert_eq!(decoded, vec![-3.0 * s, 3.0 * s, s, -s, 3.0 * s]);
    }
}
