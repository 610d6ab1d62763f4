//! The aggregation rule: one round's counted updates applied to the state, bit-exactly.
//!
//! ```text
//!   updates (ledger order) ──norms──▶ clip factors f_i (median clipping, or all 1)
//!        │
//!        ▼  per tensor, per chunk (chunks are independent: the only parallelism)
//!   for each coefficient j:  y_j = (Σ_i f_i * v_ij) / d_j       f64, i in the given order, over
//!                                                               the updates that selected j
//!        d_j = n_j, the updates that selected j          (step rule sign)
//!        d_j = N, every update of the round              (step rule linear)
//!   Y ──round to f32──▶ inverse DCT (dct module's canonical order) ──▶ x     (transform dct)
//!   Y ──round to f32──▶ placed at its entries, zero elsewhere ──▶ x          (transform identity)
//!        │
//!        ▼  per parameter
//!   s = sign(x) ∈ {-1, 0, +1}   (sign)      s = x   (linear)
//!   p = p * (1 - lr * wd)  then  p = p - lr * s                   f32, each op rounded on its own
//! ```
//!
//! The sign rule is DeMo's: only the direction survives, so the values' bits and the inverse DCT's
//! rounding rarely matter. The linear rule is SparseLoCo's outer step (the mean of what every worker
//! sent, zeros included, times the rate), taken in the DCT domain: each rounding of the inverse DCT
//! reaches the state, so the order of every sum is part of the rule (the dct module states it).
//!
//! - Norm of an update: sqrt of the f64 sum, in wire order, of its decoded values squared (the L2 norm
//!   of its dense coefficient vector, which the orthonormal DCT, like the identity, makes the L2 norm
//!   of the dense update).
//! - Median: the lower median ((n-1)/2-th smallest, f64 total order). An update whose norm exceeds it
//!   gets f_i = median / norm_i; every other update gets f_i = 1.
//! - `lr` comes from the [`Schedule`] rounded to f32; `wd` is the weight-decay ratio rounded to f32;
//!   `1 - lr * wd` is computed in f32.
//!
//! No clock, no environment, no thread-count dependence: each output element is computed by one
//! thread in a fixed order, so rayon's pool size cannot change a bit. The caller decides which updates
//! count (the ledger's round rule) and passes them in ledger sequence order.

use rayon::prelude::*;

use crate::chunk::Grid;
use crate::dct::Basis;
use crate::error::VerifyError;
use crate::id::Round;
use crate::schedule::{Ratio, Schedule};
use crate::state::{Layout, State};
use crate::wire::{Compression, MAX_CHUNK_SIZE, Transform, Update, ValueEncoding};

/// Most updates aggregated in one round.
pub const MAX_UPDATES_PER_ROUND: usize = 4096;

/// Robustness against scaled updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormClip {
    /// No clipping.
    Off,
    /// Scale every update whose norm exceeds the round's (lower) median norm down to it.
    Median,
}

/// What the aggregation does with the combined direction `x` (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StepRule {
    /// `p -= lr * sign(x)`, `x` from the mean over the updates that selected each coefficient.
    #[default]
    Sign,
    /// `p -= lr * x`, `x` from the mean over all the round's updates. Needs values with a magnitude
    /// (int8, bf16 or two-bit).
    Linear,
}

impl StepRule {
    /// The name used in configs and on the command line: `sign`, `linear`.
    pub fn name(self) -> &'static str {
        match self {
            StepRule::Sign => "sign",
            StepRule::Linear => "linear",
        }
    }

    /// From its [`StepRule::name`].
    pub fn from_name(name: &str) -> Option<StepRule> {
        [StepRule::Sign, StepRule::Linear].into_iter().find(|r| r.name() == name)
    }
}

/// The run's optimiser hyperparameters (fixed at genesis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hyper {
    /// Compression parameters every update must carry.
    pub compression: Compression,
    /// Learning rate per round.
    pub schedule: Schedule,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: Ratio,
    /// Norm clipping.
    pub clip: NormClip,
    /// Sign or linear step.
    pub step: StepRule,
}

impl Hyper {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), VerifyError> {
        if self.step == StepRule::Linear && self.compression.values == ValueEncoding::Sign {
            return Err(VerifyError::InvalidCompression(
                "the linear step rule needs values with a magnitude (int8, bf16 or two-bit), not sign".into(),
            ));
        }
        self.compression.validate()?;
        self.schedule.validate()?;
        self.weight_decay.validate()
    }
}

/// L2 norm of an update's decoded values: f64 sum of squares in wire order, then IEEE sqrt.
pub fn update_norm(update: &Update) -> f64 {
    let mut sum = 0.0f64;
    for t in update.tensors() {
        let kept = t.kept() as usize;
        for e in 0..t.indices().len() {
            let v = t.values().value(e / kept, e);
            sum += v * v;
        }
    }
    sum.sqrt()
}

/// Per-update scale factors (see the module docs), in the updates' order.
pub fn clip_factors(updates: &[Update], clip: NormClip) -> Vec<f64> {
    match clip {
        NormClip::Off => vec![1.0; updates.len()],
        NormClip::Median => {
            let norms: Vec<f64> = updates.iter().map(update_norm).collect();
            let mut sorted = norms.clone();
            sorted.sort_by(f64::total_cmp);
            let Some(&median) = sorted.get(sorted.len().saturating_sub(1) / 2) else {
                return Vec::new();
            };
            norms.iter().map(|&n| if n > median { median / n } else { 1.0 }).collect()
        }
    }
}

/// Applies one round to a copy of `state`. See [`apply`].
pub fn aggregate(state: &State, round: Round, updates: &[Update], hyper: &Hyper) -> Result<State, VerifyError> {
    let mut next = state.clone();
    apply(&mut next, round, updates, hyper)?;
    Ok(next)
}

/// The round's rate (the schedule's, rounded to f32) and decay factor (`1 - lr * wd` in f32).
pub(crate) fn step_factors(round: Round, hyper: &Hyper) -> (f32, f32) {
    let lr = hyper.schedule.lr(round);
    let wd = hyper.weight_decay.to_f64() as f32;
    (lr, 1.0f32 - lr * wd)
}

/// One parameter's step: `(p * decay) - (lr * s)`, each operation rounded to f32 on its own (the
/// step module reproduces rounds with it).
#[inline]
pub(crate) fn decayed_step(p: f32, decay: f32, lr: f32, s: f32) -> f32 {
    let decayed = p * decay;
    decayed - lr * s
}

/// Applies one round in place: `updates` are the round's counted contributions, decoded against this
/// state, in ledger order. With no updates, only weight decay applies.
///
/// Checks that every update is for `round`, this layout and the run's compression, and that they all
/// share one base hash; it does not re-hash the state (that costs as much as the round itself): the
/// caller decodes them with `Expected::base` set to this state's hash.
pub fn apply(state: &mut State, round: Round, updates: &[Update], hyper: &Hyper) -> Result<(), VerifyError> {
    check(state.layout(), round, updates, hyper)?;
    let (lr, decay) = step_factors(round, hyper);
    let factors = clip_factors(updates, hyper.clip);
    let grids = hyper.compression.grids(state.layout());
    run(
        &grids,
        state.data_mut(),
        updates,
        &factors,
        (hyper.step, hyper.compression.transform),
        Mode::Apply { lr, decay },
    );
    Ok(())
}

/// The combined direction `x` before the step rule: per tensor, the inverse DCT of the (clipped) mean
/// coefficients (mean over the selecting updates for the sign rule, over all for the linear rule).
/// For validators and tests; with one update and `NormClip::Off` it is what that update transmits.
pub fn direction(
    layout: &Layout,
    round: Round,
    updates: &[Update],
    hyper: &Hyper,
) -> Result<Vec<Vec<f32>>, VerifyError> {
    check(layout, round, updates, hyper)?;
    let factors = clip_factors(updates, hyper.clip);
    let grids = hyper.compression.grids(layout);
    let mut out = State::zeros(layout.clone());
    run(&grids, out.data_mut(), updates, &factors, (hyper.step, hyper.compression.transform), Mode::Direction);
    Ok(out.data().to_vec())
}

fn check(layout: &Layout, round: Round, updates: &[Update], hyper: &Hyper) -> Result<(), VerifyError> {
    hyper.validate()?;
    if updates.len() > MAX_UPDATES_PER_ROUND {
        return Err(VerifyError::TooManyUpdates { count: updates.len() as u64, max: MAX_UPDATES_PER_ROUND as u64 });
    }
    let layout_hash = layout.hash();
    let comp = hyper.compression;
    for u in updates {
        let h = u.header();
        if h.round != round {
            return Err(VerifyError::WrongRound { expected: round, got: h.round });
        }
        if h.layout != layout_hash {
            return Err(VerifyError::LayoutMismatch("layout hash".into()));
        }
        if h.compression.chunk_size != comp.chunk_size {
            return Err(VerifyError::WrongChunkSize { expected: comp.chunk_size, got: h.compression.chunk_size });
        }
        if h.compression.topk != comp.topk {
            return Err(VerifyError::WrongTopK { expected: comp.topk, got: h.compression.topk });
        }
        if h.compression.values != comp.values {
            return Err(VerifyError::WrongValueEncoding {
                expected: comp.values.code(),
                got: h.compression.values.code(),
            });
        }
        if h.compression.transform != comp.transform {
            return Err(VerifyError::WrongTransform {
                expected: comp.transform.code(),
                got: h.compression.transform.code(),
            });
        }
        if h.compression.overrides != comp.overrides {
            return Err(VerifyError::WrongTopkOverrides {
                expected: crate::wire::format_overrides(comp.overrides.as_slice()),
                got: crate::wire::format_overrides(h.compression.overrides.as_slice()),
            });
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Mode {
    Apply { lr: f32, decay: f32 },
    Direction,
}

/// One unit of parallel work: a band of `chunk_rows` rows of one tensor.
struct Band<'a> {
    tensor: usize,
    gy: usize,
    rows: &'a mut [f32],
}

fn run(
    grids: &[Grid],
    data: &mut [Vec<f32>],
    updates: &[Update],
    factors: &[f64],
    (rule, transform): (StepRule, Transform),
    mode: Mode,
) {
    let mut bases: Vec<Option<Basis>> = vec![None; usize::from(MAX_CHUNK_SIZE) + 1];
    for g in grids {
        for n in [g.chunk_rows, g.chunk_cols] {
            bases[usize::from(n)].get_or_insert_with(|| Basis::new(n));
        }
    }
    let mut bands = Vec::new();
    for (tensor, (g, d)) in grids.iter().zip(data.iter_mut()).enumerate() {
        let band = usize::from(g.chunk_rows) * g.cols as usize;
        for (gy, rows) in d.chunks_mut(band).enumerate() {
            bands.push(Band { tensor, gy, rows });
        }
    }
    // Scratch buffers are reused across the bands one rayon job handles; every value read from them
    // is written first within the same band, so reuse cannot leak between bands.
    bands.into_par_iter().for_each_init(Scratch::default, |s, b| {
        let g = &grids[b.tensor];
        let (Some(rb), Some(cb)) = (&bases[usize::from(g.chunk_rows)], &bases[usize::from(g.chunk_cols)]) else {
            unreachable!("bases for every grid were built above");
        };
        band(g, rb, cb, b, s, updates, factors, rule, transform, mode);
    });
}

/// Scratch buffers, reused across chunks and bands. Between chunks `sums` and `counts` are all zero.
#[derive(Default)]
struct Scratch {
    sums: Vec<f64>,
    counts: Vec<u32>,
    touched: Vec<u16>,
    live_rows: Vec<usize>,
    coef: Vec<f32>,
    z: Vec<f32>,
    x: Vec<f32>,
}

impl Scratch {
    /// Coefficient `j`'s mean under `rule` (its sum over the `updates` of the round), rounded to f32;
    /// clears its sum and count for the next chunk.
    fn take_mean(&mut self, j: usize, rule: StepRule, updates: usize) -> f32 {
        let divisor = match rule {
            StepRule::Sign => f64::from(self.counts[j]),
            StepRule::Linear => updates as f64,
        };
        let y = (self.sums[j] / divisor) as f32;
        self.sums[j] = 0.0;
        self.counts[j] = 0;
        y
    }
}

#[allow(clippy::too_many_arguments)]
fn band(
    g: &Grid,
    rb: &Basis,
    cb: &Basis,
    b: Band<'_>,
    s: &mut Scratch,
    updates: &[Update],
    factors: &[f64],
    rule: StepRule,
    transform: Transform,
    mode: Mode,
) {
    let (cr, cc) = (usize::from(g.chunk_rows), usize::from(g.chunk_cols));
    let cols = g.cols as usize;
    let grid_cols = g.grid_cols() as usize;
    let coefficients = cr * cc;
    if s.sums.len() < coefficients {
        s.sums.resize(coefficients, 0.0);
        s.counts.resize(coefficients, 0);
        s.z.resize(coefficients, 0.0);
    }
    // x holds the whole band's direction; the sign step then streams over the band once.
    s.x.resize(b.rows.len(), 0.0);
    for gx in 0..grid_cols {
        let chunk = b.gy * grid_cols + gx;
        // 1. mean of the selected coefficients, f64, updates in the given order
        s.touched.clear();
        for (u, f) in updates.iter().zip(factors) {
            let t = &u.tensors()[b.tensor];
            let kept = t.kept() as usize;
            for e in chunk * kept..(chunk + 1) * kept {
                let j = usize::from(t.indices()[e]);
                if s.counts[j] == 0 {
                    s.touched.push(j as u16);
                }
                s.sums[j] += t.values().value(chunk, e) * f;
                s.counts[j] += 1;
            }
        }
        s.touched.sort_unstable();
        match transform {
            Transform::Dct => {
                // 2. Z = Y · Dc over the rows that hold a coefficient (v ascending within a row)
                s.live_rows.clear();
                for t in 0..s.touched.len() {
                    let j = usize::from(s.touched[t]);
                    let (u, v) = (j / cc, j % cc);
                    let y = s.take_mean(j, rule, updates.len());
                    if s.live_rows.last() != Some(&u) {
                        s.live_rows.push(u);
                        s.z[(s.live_rows.len() - 1) * cc..s.live_rows.len() * cc].fill(0.0);
                    }
                    let slot = s.live_rows.len() - 1;
                    let z = &mut s.z[slot * cc..(slot + 1) * cc];
                    for (zj, d) in z.iter_mut().zip(cb.row(v)) {
                        *zj += y * *d;
                    }
                }
                // 3. X = Drᵀ · Z (u ascending), row by row, into the band buffer
                for i in 0..cr {
                    s.coef.clear();
                    s.coef.extend(s.live_rows.iter().map(|&u| rb.row(u)[i]));
                    let start = i * cols + gx * cc;
                    combine_rows(&s.z, cc, &s.coef, &mut s.x[start..start + cc]);
                }
            }
            Transform::Identity => {
                // 2-3. X = Y: the chunk is zero where no update selected an entry
                for i in 0..cr {
                    let start = i * cols + gx * cc;
                    s.x[start..start + cc].fill(0.0);
                }
                for t in 0..s.touched.len() {
                    let j = usize::from(s.touched[t]);
                    let y = s.take_mean(j, rule, updates.len());
                    s.x[(j / cc) * cols + gx * cc + j % cc] = y;
                }
            }
        }
    }
    // 4. step: sign or linear
    match (mode, rule) {
        (Mode::Apply { lr, decay }, StepRule::Sign) => {
            for (pj, &xj) in b.rows.iter_mut().zip(&s.x) {
                // +1.0, -1.0, or +0.0 for ±0.0
                let sign = f32::from(u8::from(xj > 0.0)) - f32::from(u8::from(xj < 0.0));
                *pj = decayed_step(*pj, decay, lr, sign);
            }
        }
        (Mode::Apply { lr, decay }, StepRule::Linear) => {
            for (pj, &xj) in b.rows.iter_mut().zip(&s.x) {
                *pj = decayed_step(*pj, decay, lr, xj);
            }
        }
        (Mode::Direction, _) => b.rows.copy_from_slice(&s.x[..b.rows.len()]),
    }
}

/// `x[j] = Σ_slot coef[slot] * z[slot][j]`, slots ascending, each sum a left fold from 0.0 in f32.
///
/// The hot loop of aggregation. On x86-64 CPUs with AVX2 it runs a copy compiled for AVX2: wider
/// vectors, the same IEEE multiply then add per lane (never an FMA: Rust does not contract, and
/// "avx2" does not enable "fma"), so the bits are the same as the portable path on any CPU.
fn combine_rows(z: &[f32], cc: usize, coef: &[f32], x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the running CPU supports AVX2, checked on the line above.
            unsafe { combine_rows_avx2(z, cc, coef, x) };
            return;
        }
    }
    combine_rows_blocked::<16>(z, cc, coef, x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn combine_rows_avx2(z: &[f32], cc: usize, coef: &[f32], x: &mut [f32]) {
    combine_rows_blocked::<64>(z, cc, coef, x);
}

/// Blocks of `W` columns keep the partial sums in registers; the per-element order is unchanged.
#[inline(always)]
fn combine_rows_blocked<const W: usize>(z: &[f32], cc: usize, coef: &[f32], x: &mut [f32]) {
    let mut j0 = 0;
    while j0 + W <= cc {
        let mut acc = [0.0f32; W];
        for (a, row) in coef.iter().zip(z.chunks_exact(cc)) {
            for (acc_k, z_k) in acc.iter_mut().zip(&row[j0..j0 + W]) {
                *acc_k += a * *z_k;
            }
        }
        x[j0..j0 + W].copy_from_slice(&acc);
        j0 += W;
    }
    for (j, xj) in x.iter_mut().enumerate().skip(j0) {
        let mut acc = 0.0f32;
        for (a, row) in coef.iter().zip(z.chunks_exact(cc)) {
            acc += a * row[j];
        }
        *xj = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dct;
    use crate::encode::encode;
    use crate::id::{RunId, StateHash, WorkerKey};
    use crate::state::TensorSpec;
    use crate::wire::{Header, ValueEncoding};

    fn layout() -> Layout {
        Layout::new(vec![
            TensorSpec { name: "w".into(), shape: vec![16, 24] },
            TensorSpec { name: "b".into(), shape: vec![10] },
        ])
        .unwrap()
    }

    fn momentum(layout: &Layout, seed: u32) -> State {
        let data = layout
            .tensors()
            .iter()
            .map(|t| {
                (0..t.elements() as u32)
                    .map(|i| {
                        ((i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 7) % 2001) as f32 / 1000.0 - 1.0
                    })
                    .collect()
            })
            .collect();
        State::from_parts(layout.clone(), data).unwrap()
    }

    fn hyper(values: ValueEncoding) -> Hyper {
        Hyper {
            compression: Compression::uniform(8, 5, values),
            schedule: Schedule::Constant { lr: Ratio::new(1, 100) },
            weight_decay: Ratio::new(1, 10),
            clip: NormClip::Median,
            step: crate::StepRule::Sign,
        }
    }

    fn update(layout: &Layout, seed: u32, h: &Hyper) -> Update {
        let header = Header {
            run: RunId([1; 32]),
            round: Round(3),
            base: StateHash([2; 32]),
            worker: WorkerKey([seed as u8; 32]),
            layout: layout.hash(),
            compression: h.compression,
        };
        encode(&momentum(layout, seed), &header).unwrap()
    }

    /// The sparse kernel gives the same values as the dense canonical inverse DCT of the mean coefficients.
    #[test]
    fn sparse_kernel_matches_dense_inverse() {
        let l = layout();
        let h = Hyper { clip: NormClip::Off, ..hyper(ValueEncoding::Bf16) };
        let ups: Vec<Update> = (0..3).map(|s| update(&l, s, &h)).collect();
        let dir = direction(&l, Round(3), &ups, &h).unwrap();
        let grids = h.compression.grids(&l);
        for (t, g) in grids.iter().enumerate() {
            let (cr, cc) = (usize::from(g.chunk_rows), usize::from(g.chunk_cols));
            let (rb, cb) = (Basis::new(g.chunk_rows), Basis::new(g.chunk_cols));
            for chunk in 0..g.chunks() as usize {
                let mut sums = vec![0.0f64; cr * cc];
                let mut counts = vec![0u32; cr * cc];
                for u in &ups {
                    let tu = &u.tensors()[t];
                    let k = tu.kept() as usize;
                    for e in chunk * k..(chunk + 1) * k {
                        let j = usize::from(tu.indices()[e]);
                        sums[j] += tu.values().value(chunk, e);
                        counts[j] += 1;
                    }
                }
                let y: Vec<f32> = sums
                    .iter()
                    .zip(&counts)
                    .map(|(s, &c)| if c > 0 { (s / f64::from(c)) as f32 } else { 0.0 })
                    .collect();
                let mut x = vec![0.0; cr * cc];
                dct::inverse(&y, &rb, &cb, &mut x);
                let (gy, gx) = (chunk / g.grid_cols() as usize, chunk % g.grid_cols() as usize);
                for i in 0..cr {
                    for j in 0..cc {
                        let got = dir[t][(gy * cr + i) * g.cols as usize + gx * cc + j];
                        assert_eq!(got, x[i * cc + j], "tensor {t} chunk {chunk} ({i},{j})");
                    }
                }
            }
        }
    }

    /// Every code path of the hot loop gives the same bits as the plainest possible loop.
    #[test]
    fn combine_rows_paths_agree_bit_for_bit() {
        for (cc, live) in [(64usize, 40usize), (48, 3), (29, 29), (7, 1), (64, 0), (100, 5)] {
            let z: Vec<f32> = (0..cc * live).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
            let coef: Vec<f32> = (0..live).map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0).collect();
            let mut plain = vec![0.0f32; cc];
            for (j, p) in plain.iter_mut().enumerate() {
                for (s, a) in coef.iter().enumerate() {
                    *p += a * z[s * cc + j];
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let mut x = vec![1.0f32; cc];
            combine_rows(&z, cc, &coef, &mut x);
            assert_eq!(bits(&x), bits(&plain), "dispatching path, cc={cc}");
            let mut x = vec![1.0f32; cc];
            combine_rows_blocked::<16>(&z, cc, &coef, &mut x);
            assert_eq!(bits(&x), bits(&plain), "portable path, cc={cc}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut x = vec![1.0f32; cc];
                // SAFETY: AVX2 support checked just above.
                unsafe { combine_rows_avx2(&z, cc, &coef, &mut x) };
                assert_eq!(bits(&x), bits(&plain), "avx2 path, cc={cc}");
            }
        }
    }

    #[test]
    fn median_clipping_scales_only_the_large() {
        let l = layout();
        let h = hyper(ValueEncoding::Bf16);
        let ups: Vec<Update> = (0..3).map(|s| update(&l, s, &h)).collect();
        let norms: Vec<f64> = ups.iter().map(update_norm).collect();
        let f = clip_factors(&ups, NormClip::Median);
        let mut sorted = norms.clone();
        sorted.sort_by(f64::total_cmp);
        for (n, f) in norms.iter().zip(&f) {
            if *n > sorted[1] {
                assert_eq!(*f, sorted[1] / n);
            } else {
                assert_eq!(*f, 1.0);
            }
        }
        assert_eq!(clip_factors(&ups, NormClip::Off), vec![1.0; 3]);
        // two updates: the lower median, so the larger one is scaled down to the smaller
        let (small, large) = if norms[0] < norms[1] { (0, 1) } else { (1, 0) };
        let f = clip_factors(&ups[..2], NormClip::Median);
        assert_eq!(f[small], 1.0);
        assert_eq!(f[large], norms[small] / norms[large]);
        assert!(f[large] < 1.0);
        // sign updates all have the same norm: nothing is clipped
        let hs = hyper(ValueEncoding::Sign);
        let ups: Vec<Update> = (0..4).map(|s| update(&l, s, &hs)).collect();
        assert_eq!(clip_factors(&ups, NormClip::Median), vec![1.0; 4]);
    }

    #[test]
    fn no_updates_only_decays() {
        let l = layout();
        let h = hyper(ValueEncoding::Sign);
        let s = momentum(&l, 9);
        let next = aggregate(&s, Round(0), &[], &h).unwrap();
        let decay = 1.0f32 - 0.01f32 * 0.1f32;
        for (a, b) in s.data().iter().flatten().zip(next.data().iter().flatten()) {
            assert_eq!(*b, *a * decay);
        }
    }

    #[test]
    fn mismatched_updates_are_rejected() {
        let l = layout();
        let h = hyper(ValueEncoding::Int8);
        let s = momentum(&l, 1);
        let ups = vec![update(&l, 1, &h)];
        assert!(matches!(aggregate(&s, Round(4), &ups, &h), Err(VerifyError::WrongRound { .. })));
        let other = Hyper { compression: Compression { topk: 4, ..h.compression }, ..h };
        assert!(matches!(aggregate(&s, Round(3), &ups, &other), Err(VerifyError::WrongTopK { .. })));
        let bad = Hyper { weight_decay: Ratio::new(1, 0), ..h };
        assert!(matches!(aggregate(&s, Round(3), &ups, &bad), Err(VerifyError::InvalidHyper(_))));
    }
}
