//! DeMo on libtorch: the worker's momentum, its DCT top-k encoding into verify's wire format, error
//! feedback, and the dense libtorch aggregation of the DeMo reference (a benchmark baseline only).
//!
//! ```text
//!   grad ──▶ m = decay*m + lr*grad                                   (DemoState::accumulate, on the device)
//!              │
//!              ▼  per tensor: verify::chunk::Grid view [rows, cols] ─▶ chunks [gr, gc, cr, cc]
//!   Y = Dr · X · Dcᵀ                    bases from verify::dct::Basis, cached per size (Bases)
//!              │
//!              ▼  per chunk: stable sort of |Y| descending, keep `kept`, indices ascending
//!   (index, value) x kept ──copy to host──▶ quantise (sign | int8, two-bit + scale | bf16) ──▶ Update::new
//!              │
//!              ▼  error feedback (DemoState::encode)
//!   m = m - Drᵀ · S · Dc      S = the sent coefficients at their positions, zero elsewhere:
//!                             int8 / bf16 / two-bit: the dequantised values (what receivers decode);
//!                             sign: the full-precision coefficients (the receivers' ±1 carry no
//!                             magnitude, so the worker removes what it selected, as DeMo does)
//! ```
//!
//! Agreement with verify's reference encoder ([`verify::encode`]): the same chunk grid and basis bits;
//! the DCT runs in libtorch (matmul order, FMA, vector width differ), so coefficients differ in the last
//! bits. Ties are broken as verify does: |Y| is sorted with libtorch's *stable* sort, descending, so at
//! an exact tie the lower index comes first. Coefficients whose magnitudes differ by a rounding error
//! (near-ties) can still be ordered differently, so a few indices may differ on random data; on data
//! without near-ties both choose the same indices. Quantisation runs on the host on the few selected
//! values, with the same arithmetic as verify's encoder, so equal coefficients give equal bytes.
//!
//! [`reference_aggregate`] is not consensus: it reproduces the DeMo reference's decode (scatter_reduce
//! mean into dense coefficients, einsum inverse DCT, sign, decoupled weight decay, step) so that
//! `cairn bench aggregate` can compare verify's bit-exact aggregation with it.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};
use verify::chunk::Grid;
use verify::dct::Basis;
use verify::encode::TwoBitScale;
use verify::{Header, Hyper, Layout, Round, State, Transform, Update, ValueEncoding};

use crate::error::TrainerError;

/// DeMo momentum decay when a run or benchmark sets none. 0.9 trains better in `cairn bench train`,
/// but the validator's single-update scores of an honest worker are then noisy enough to exclude it
/// (docs/BENCHMARKS.md, "Defaults").
pub const DEFAULT_MOMENTUM_DECAY: f64 = 0.999;

/// DCT bases as tensors on one device: verify's portable basis, uploaded once per size.
#[derive(Debug)]
pub struct Bases {
    device: Device,
    by_size: HashMap<u16, Tensor>,
}

impl Bases {
    /// An empty cache for `device`.
    pub fn new(device: Device) -> Bases {
        Bases { device, by_size: HashMap::new() }
    }

    /// An empty cache on the CPU.
    pub fn cpu() -> Bases {
        Bases::new(Device::Cpu)
    }

    /// The device the bases live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Chunks `[.., cr, cc]` of `grid` in `transform`'s domain: the forward DCT of each, or as they are.
    pub(crate) fn forward(
        &mut self,
        chunks: &Tensor,
        grid: &Grid,
        transform: Transform,
    ) -> Result<Tensor, TrainerError> {
        match transform {
            Transform::Dct => forward(chunks, &self.get(grid.chunk_rows)?, &self.get(grid.chunk_cols)?),
            Transform::Identity => Ok(chunks.shallow_clone()),
        }
    }

    /// The inverse of [`Bases::forward`].
    pub(crate) fn inverse(&mut self, y: &Tensor, grid: &Grid, transform: Transform) -> Result<Tensor, TrainerError> {
        match transform {
            Transform::Dct => inverse(y, &self.get(grid.chunk_rows)?, &self.get(grid.chunk_cols)?),
            Transform::Identity => Ok(y.shallow_clone()),
        }
    }

    /// The `n x n` basis (row = frequency, column = sample), bit-identical to [`Basis::new`]`(n)`.
    pub fn get(&mut self, n: u16) -> Result<Tensor, TrainerError> {
        if let Some(t) = self.by_size.get(&n) {
            return Ok(t.shallow_clone());
        }
        let basis = Basis::new(n);
        let size = basis.len() as i64;
        let t = Tensor::f_from_slice(basis.matrix())?.f_reshape([size, size])?.f_to_device(self.device)?;
        self.by_size.insert(n, t.shallow_clone());
        Ok(t)
    }
}

/// What one tensor's encoding selected, still on the device: `[chunks, kept]` each.
struct Selected {
    /// Coefficient indices, ascending within a chunk (i64).
    indices: Tensor,
    /// What error feedback removes at those indices (f32): see the module docs.
    feedback: Tensor,
}

pub(crate) fn dims(grid: &Grid) -> (i64, i64, i64, i64) {
    (grid.grid_rows() as i64, grid.grid_cols() as i64, i64::from(grid.chunk_rows), i64::from(grid.chunk_cols))
}

/// `[rows, cols]` data (any shape with that many elements) as chunks `[grid_rows, grid_cols, chunk_rows, chunk_cols]`.
pub(crate) fn to_chunks(t: &Tensor, grid: &Grid) -> Result<Tensor, TrainerError> {
    let (gr, gc, cr, cc) = dims(grid);
    Ok(t.f_reshape([gr, cr, gc, cc])?.f_permute([0, 2, 1, 3])?)
}

/// The inverse of [`to_chunks`], back to `shape`.
pub(crate) fn from_chunks(chunks: &Tensor, shape: &[i64]) -> Result<Tensor, TrainerError> {
    Ok(chunks.f_permute([0, 2, 1, 3])?.f_contiguous()?.f_reshape(shape)?)
}

/// Forward 2-D DCT per chunk: `Y = Dr · X · Dcᵀ` on `[.., cr, cc]`.
pub(crate) fn forward(x: &Tensor, dr: &Tensor, dc: &Tensor) -> Result<Tensor, TrainerError> {
    Ok(dr.f_matmul(&x.f_matmul(&dc.f_transpose(0, 1)?)?)?)
}

/// Inverse 2-D DCT per chunk: `X = Drᵀ · Y · Dc` on `[.., cr, cc]`.
pub(crate) fn inverse(y: &Tensor, dr: &Tensor, dc: &Tensor) -> Result<Tensor, TrainerError> {
    Ok(dr.f_transpose(0, 1)?.f_matmul(&y.f_matmul(dc)?)?)
}

/// Per row of `y` (`[chunks, coefficients]`, finite), the `kept` positions of largest |value|, lower
/// index first at exact ties, returned ascending (`[chunks, kept]`, i64). The same rule as
/// [`verify::encode::top_k`], without sorting a whole row: `t`, the `kept`-th largest magnitude, comes
/// from a partial selection (`topk` returns input values, so comparisons with it are exact); every
/// position above `t` is kept, and of those equal to `t` the lowest-indexed ones fill the rest. A stable
/// sort of every row computed the same set and was a third of a CPU worker's round.
pub fn top_indices(y: &Tensor, kept: i64) -> Result<Tensor, TrainerError> {
    let chunks = y.size().first().copied().unwrap_or(0);
    let magnitude = y.f_abs()?;
    let (largest, _) = magnitude.f_topk(kept, -1, true, true)?;
    let t = largest.f_narrow(-1, kept - 1, 1)?;
    let above = magnitude.f_gt_tensor(&t)?;
    let at = magnitude.f_eq_tensor(&t)?;
    let room = above.f_sum_dim_intlist(-1, true, Kind::Int64)?.f_neg()?.f_add_scalar(kept)?;
    let tie_rank = at.f_cumsum(-1, Kind::Int64)?;
    let mask = above.f_logical_or(&at.f_logical_and(&tie_rank.f_le_tensor(&room)?)?)?;
    // nonzero lists positions in row-major order: by chunk, then ascending within it
    Ok(mask.f_nonzero()?.f_select(1, 1)?.f_reshape([chunks, kept])?)
}

/// Copies a tensor (any device, any shape) to a flat host vector.
fn to_host<T: tch::kind::Element + Copy>(t: &Tensor) -> Result<Vec<T>, TrainerError> {
    let flat = t.f_to_device(Device::Cpu)?.f_to_kind(T::KIND)?.f_contiguous()?.f_reshape([-1])?;
    Ok(Vec::<T>::try_from(&flat)?)
}

/// Checks `tensors` against `layout` (count and shapes) and returns them as f32.
fn checked(tensors: &[Tensor], layout: &Layout) -> Result<Vec<Tensor>, TrainerError> {
    let specs = layout.tensors();
    if tensors.len() != specs.len() {
        return Err(TrainerError::Shape {
            index: tensors.len().min(specs.len()),
            name: String::new(),
            problem: format!("{} tensors for a layout of {}", tensors.len(), specs.len()),
        });
    }
    tensors
        .iter()
        .zip(specs)
        .enumerate()
        .map(|(index, (t, spec))| {
            let want: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
            let got = t.size();
            if got != want {
                return Err(TrainerError::Shape {
                    index,
                    name: spec.name.clone(),
                    problem: format!("shape {got:?}, layout says {want:?}"),
                });
            }
            Ok(if t.kind() == Kind::Float { t.shallow_clone() } else { t.f_to_kind(Kind::Float)? })
        })
        .collect()
}

/// Encodes every tensor; returns the update and, per tensor, what error feedback removes.
fn encode_selected(
    tensors: &[Tensor],
    header: &Header,
    layout: &Layout,
    bases: &mut Bases,
    two_bit: TwoBitScale,
) -> Result<(Update, Vec<Selected>), TrainerError> {
    let comp = header.compression;
    comp.validate()?;
    let tensors = checked(tensors, layout)?;
    let mut parts = Vec::with_capacity(tensors.len());
    let mut selected = Vec::with_capacity(tensors.len());
    for (tensor, ((t, spec), grid)) in tensors.iter().zip(layout.tensors()).zip(comp.grids(layout)).enumerate() {
        let t = t.f_to_device(bases.device())?;
        if !bool::try_from(&t.f_isfinite()?.f_all()?)? {
            return Err(TrainerError::NonFinite { name: spec.name.clone() });
        }
        let (gr, gc, cr, cc) = dims(&grid);
        let y = bases.forward(&to_chunks(&t, &grid)?, &grid, comp.transform)?.f_reshape([gr * gc, cr * cc])?;
        let kept = grid.kept(comp.topk_for(tensor)) as usize;
        let indices = top_indices(&y, kept as i64)?;
        let values = y.f_gather(-1, &indices, false)?;
        let host_values: Vec<f32> = to_host(&values)?;
        // Indices are below chunk_rows * chunk_cols <= 65536: they fit a u16.
        let host_indices: Vec<u16> = to_host::<i64>(&indices)?.into_iter().map(|i| i as u16).collect();
        let chunks = host_indices.chunks(kept.max(1)).zip(host_values.chunks(kept.max(1)));
        let chunks = chunks.map(|(i, v)| (i.to_vec(), v.to_vec())).collect();
        let (host_indices, wire) = verify::encode::quantise_with(tensor as u32, comp.values, chunks, two_bit)?;
        // What a receiver decodes, entry by entry (for error feedback).
        let decoded: Vec<f32> = (0..host_values.len()).map(|e| wire.value(e / kept.max(1), e) as f32).collect();
        let feedback = match comp.values {
            ValueEncoding::Sign => values,
            ValueEncoding::Int8 | ValueEncoding::Bf16 | ValueEncoding::TwoBit => {
                Tensor::f_from_slice(&decoded)?.f_reshape([gr * gc, kept as i64])?.f_to_device(bases.device())?
            }
        };
        parts.push((host_indices, wire));
        selected.push(Selected { indices, feedback });
    }
    let update = Update::new(*header, layout, parts)?;
    Ok((update, selected))
}

/// Encodes `tensors` (one per layout tensor, layout order, any device, f32 or convertible) into an
/// update, with the chunk size, top-k and value encoding of `header.compression`. The DCT and top-k
/// run on the device of `bases`.
pub fn encode(tensors: &[Tensor], header: &Header, layout: &Layout, bases: &mut Bases) -> Result<Update, TrainerError> {
    tch::no_grad(|| Ok(encode_selected(tensors, header, layout, bases, TwoBitScale::Max)?.0))
}

/// Dense tensor of `shape` from sparse chunk coefficients: `values` at `indices` (`[chunks, n]` each),
/// combined by `reduce` ("sum" keeps them as they are when indices are distinct, "mean" averages
/// repeats), then the inverse transform per chunk.
pub(crate) fn dense(
    indices: &Tensor,
    values: &Tensor,
    reduce: &str,
    (grid, transform): (&Grid, Transform),
    shape: &[i64],
    bases: &mut Bases,
) -> Result<Tensor, TrainerError> {
    let (gr, gc, cr, cc) = dims(grid);
    let mut coefficients = Tensor::f_zeros([gr * gc, cr * cc], (Kind::Float, bases.device()))?;
    // `_scatter_reduce_` is torch's `scatter_reduce_` (tch's `scatter_reduce` maps to the old `scatter`,
    // which knows no "mean"); include_self = false: coefficients nobody selected stay 0.
    let _ = coefficients.f_internal_scatter_reduce_(-1, indices, values, reduce, false)?;
    let x = bases.inverse(&coefficients.f_reshape([gr, gc, cr, cc])?, grid, transform)?;
    from_chunks(&x, shape)
}

/// A worker's private DeMo state: one momentum tensor per parameter, on the parameters' device.
#[derive(Debug)]
pub struct DemoState {
    momentum: Vec<Tensor>,
    bases: Bases,
    two_bit: TwoBitScale,
}

impl DemoState {
    /// Zero momentum for every tensor of `layout`, on `device`.
    pub fn new(layout: &Layout, device: Device) -> Result<DemoState, TrainerError> {
        let momentum = layout
            .tensors()
            .iter()
            .map(|s| {
                let shape: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
                Tensor::f_zeros(shape.as_slice(), (Kind::Float, device))
            })
            .collect::<Result<_, _>>()?;
        Ok(DemoState { momentum, bases: Bases::new(device), two_bit: TwoBitScale::Max })
    }

    /// How this worker picks its two-bit scales (default [`TwoBitScale::Max`], the reference
    /// encoder's); not part of consensus: any scale decodes. `cairn bench train --two-bit-scale`
    /// measures the other.
    pub fn with_two_bit_scale(mut self, rule: TwoBitScale) -> DemoState {
        self.two_bit = rule;
        self
    }

    /// The momentum tensors, layout order.
    pub fn momentum(&self) -> &[Tensor] {
        &self.momentum
    }

    /// `m = decay * m + lr * grad` for every tensor (`grads` in layout order, shapes as the layout's).
    pub fn accumulate(&mut self, grads: &[Tensor], layout: &Layout, decay: f64, lr: f64) -> Result<(), TrainerError> {
        let grads = checked(grads, layout)?;
        tch::no_grad(|| {
            for (m, g) in self.momentum.iter_mut().zip(&grads) {
                let g = g.f_to_device(m.device())?.f_mul_scalar(lr)?;
                let _ = m.f_mul_scalar_(decay)?;
                let _ = m.f_add_(&g)?;
            }
            Ok(())
        })
    }

    /// Encodes the momentum into an update (see [`encode`]) and applies error feedback: removes what
    /// was sent (module docs) from the momentum.
    pub fn encode(&mut self, header: &Header, layout: &Layout) -> Result<Update, TrainerError> {
        tch::no_grad(|| {
            let (update, selected) = encode_selected(&self.momentum, header, layout, &mut self.bases, self.two_bit)?;
            let grids = header.compression.grids(layout);
            for ((m, s), grid) in self.momentum.iter_mut().zip(&selected).zip(&grids) {
                let domain = (grid, header.compression.transform);
                let sent = dense(&s.indices, &s.feedback, "sum", domain, &m.size(), &mut self.bases)?;
                let _ = m.f_sub_(&sent)?;
            }
            Ok(update)
        })
    }
}

/// A state's tensors as libtorch tensors on `device` (layout order, the layout's shapes).
pub fn tensors_from_state(state: &State, device: Device) -> Result<Vec<Tensor>, TrainerError> {
    state
        .layout()
        .tensors()
        .iter()
        .zip(state.data())
        .map(|(spec, data)| {
            let shape: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
            Ok(Tensor::f_from_slice(data)?.f_reshape(shape.as_slice())?.f_to_device(device)?)
        })
        .collect()
}

/// Tensors (any device) copied to host vectors of f32, row-major.
pub fn tensors_to_host(tensors: &[Tensor]) -> Result<Vec<Vec<f32>>, TrainerError> {
    tensors.iter().map(to_host).collect()
}

/// Host-side tensors of one parameter tensor for [`reference_aggregate`]: every update's indices and
/// (clipped) values concatenated along the last dimension, `[chunks, updates * kept]`, as the DeMo
/// reference receives them from its all-gather.
pub struct Gathered {
    /// i64 indices.
    pub indices: Tensor,
    /// f32 values.
    pub values: Tensor,
}

/// Lays out decoded `updates` as DeMo's gathered index/value tensors, one [`Gathered`] per layout
/// tensor, on `device`. Values are the decoded values times verify's clip factors, rounded to f32.
pub fn gather_updates(
    updates: &[Update],
    layout: &Layout,
    hyper: &Hyper,
    device: Device,
) -> Result<Vec<Gathered>, TrainerError> {
    let factors = verify::aggregate::clip_factors(updates, hyper.clip);
    let grids = hyper.compression.grids(layout);
    let n = updates.len();
    let mut out = Vec::with_capacity(grids.len());
    for (t, grid) in grids.iter().enumerate() {
        let kept = grid.kept(hyper.compression.topk_for(t)) as usize;
        let chunks = grid.chunks() as usize;
        let width = n * kept;
        let mut idx = vec![0i64; chunks * width];
        let mut val = vec![0f32; chunks * width];
        for (u, (update, f)) in updates.iter().zip(&factors).enumerate() {
            let tu = update.tensors().get(t).ok_or_else(|| TrainerError::Shape {
                index: t,
                name: layout.tensors()[t].name.clone(),
                problem: "missing from an update".into(),
            })?;
            for c in 0..chunks {
                for e in 0..kept {
                    let src = c * kept + e;
                    let dst = c * width + u * kept + e;
                    idx[dst] = i64::from(tu.indices()[src]);
                    val[dst] = (tu.values().value(c, src) * f) as f32;
                }
            }
        }
        let shape = [chunks as i64, width as i64];
        out.push(Gathered {
            indices: Tensor::f_from_slice(&idx)?.f_reshape(shape)?.f_to_device(device)?,
            values: Tensor::f_from_slice(&val)?.f_reshape(shape)?.f_to_device(device)?,
        });
    }
    Ok(out)
}

/// The DeMo reference's aggregation on libtorch, dense: per tensor, scatter_reduce "mean" of the
/// gathered coefficients into a zero coefficient tensor, einsum inverse DCT, sign, then
/// `p = p * (1 - lr * wd) - lr * sign` with verify's f32 learning rate and decay. Not bit-exact and not
/// consensus: the baseline of `cairn bench aggregate`. `params` are in layout order (any device).
pub fn reference_aggregate(
    params: &mut [Tensor],
    gathered: &[Gathered],
    layout: &Layout,
    round: Round,
    hyper: &Hyper,
    bases: &mut Bases,
) -> Result<(), TrainerError> {
    hyper.validate()?;
    if params.len() != layout.tensors().len() || gathered.len() != params.len() {
        return Err(TrainerError::Shape {
            index: params.len().min(gathered.len()),
            name: String::new(),
            problem: format!(
                "{} parameters and {} gathered tensors for a layout of {}",
                params.len(),
                gathered.len(),
                layout.tensors().len()
            ),
        });
    }
    let lr = hyper.schedule.lr(round);
    let decay = 1.0f32 - lr * (hyper.weight_decay.to_f64() as f32);
    let grids = hyper.compression.grids(layout);
    tch::no_grad(|| {
        for ((p, g), grid) in params.iter_mut().zip(gathered).zip(&grids) {
            let (gr, gc, cr, cc) = dims(grid);
            let mut coefficients = Tensor::f_zeros([gr * gc, cr * cc], (Kind::Float, p.device()))?;
            let _ = coefficients.f_internal_scatter_reduce_(-1, &g.indices, &g.values, "mean", false)?;
            let (dr, dc) = (bases.get(grid.chunk_rows)?, bases.get(grid.chunk_cols)?);
            let x = Tensor::f_einsum(
                "abuv,ui,vj->abij",
                &[coefficients.f_reshape([gr, gc, cr, cc])?, dr, dc],
                None::<&[i64]>,
            )?;
            let step = from_chunks(&x, &p.size())?.f_sign()?.f_mul_scalar(f64::from(lr))?;
            let _ = p.f_mul_scalar_(f64::from(decay))?;
            let _ = p.f_sub_(&step)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use verify::aggregate::direction;
    use verify::{Compression, NormClip, Ratio, RunId, Schedule, StateHash, TensorSpec, Values, WorkerKey, decode};

    use super::*;

    fn layout() -> Layout {
        Layout::new(vec![
            TensorSpec { name: "a.weight".into(), shape: vec![128, 192] },
            TensorSpec { name: "b.weight".into(), shape: vec![58, 96] },
            TensorSpec { name: "c.bias".into(), shape: vec![300] },
            TensorSpec { name: "d.conv".into(), shape: vec![4, 3, 5, 6] },
            TensorSpec { name: "e.scalar".into(), shape: vec![] },
            TensorSpec { name: "f.prime".into(), shape: vec![7, 97] },
        ])
        .unwrap()
    }

    /// splitmix64-driven uniform values in [-1, 1).
    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn random_state(layout: &Layout, seed: u64) -> State {
        let data =
            layout.tensors().iter().enumerate().map(|(i, t)| random(t.elements() as usize, seed * 1000 + i as u64));
        State::from_parts(layout.clone(), data.collect()).unwrap()
    }

    fn tensors(state: &State) -> Vec<Tensor> {
        tensors_from_state(state, Device::Cpu).unwrap()
    }

    fn host(t: &Tensor) -> Vec<f32> {
        to_host(t).unwrap()
    }

    /// Top-k 8, with "b.weight" (tensor 1) at 24: every test also covers per-tensor top-k.
    fn header(layout: &Layout, values: ValueEncoding, worker: u8) -> Header {
        let overrides = verify::TopkOverrides::new(&[verify::TopkOverride { tensor: 1, topk: 24 }]).unwrap();
        Header {
            run: RunId([7; 32]),
            round: Round(5),
            base: StateHash([9; 32]),
            worker: WorkerKey([worker; 32]),
            layout: layout.hash(),
            compression: Compression { overrides, ..Compression::uniform(64, 8, values) },
        }
    }

    fn hyper(comp: Compression, clip: NormClip) -> Hyper {
        Hyper {
            compression: comp,
            schedule: Schedule::Constant { lr: Ratio::new(1, 100) },
            weight_decay: Ratio::new(1, 10),
            clip,
            step: verify::StepRule::Sign,
        }
    }

    const ENCODINGS: [ValueEncoding; 3] = [ValueEncoding::Sign, ValueEncoding::Int8, ValueEncoding::Bf16];

    /// Compares the two encoders' outputs: returns (equal indices, total indices) and checks the values
    /// of every chunk whose indices agree.
    fn compare(ours: &Update, theirs: &Update) -> (usize, usize) {
        let (mut equal, mut total) = (0, 0);
        for (t, (a, b)) in ours.tensors().iter().zip(theirs.tensors()).enumerate() {
            let kept = a.kept() as usize;
            for c in 0..a.grid().chunks() as usize {
                let r = c * kept..(c + 1) * kept;
                let (ia, ib) = (&a.indices()[r.clone()], &b.indices()[r.clone()]);
                equal += ia.iter().zip(ib).filter(|(x, y)| x == y).count();
                total += kept;
                if ia != ib {
                    continue;
                }
                for e in r {
                    let (va, vb) = (a.values().value(c, e), b.values().value(c, e));
                    let tol = match a.values() {
                        Values::Sign(_) => 0.0,
                        // one quantisation step of the larger scale, plus rounding
                        Values::Int8 { scales, .. } => f64::from(scales[c]) * 1.01 + 1e-6,
                        // one level apart (2 x the scale), plus rounding
                        Values::TwoBit { scales, .. } => f64::from(scales[c]) * 2.02 + 1e-6,
                        // one bf16 ulp (2^-7 relative)
                        Values::Bf16(_) => va.abs().max(vb.abs()) / 128.0 + 1e-6,
                    };
                    assert!((va - vb).abs() <= tol, "tensor {t} chunk {c} entry {e}: {va} vs {vb}");
                }
            }
        }
        (equal, total)
    }

    #[test]
    fn top_indices_breaks_ties_by_lower_index() {
        tch::set_num_threads(1);
        let y = [1.0f32, -3.0, 3.0, 0.5, -3.0, 2.0];
        let t = Tensor::from_slice(&y).reshape([1, 6]);
        for kept in 1..=6 {
            let ours: Vec<u16> =
                to_host::<i64>(&top_indices(&t, kept).unwrap()).unwrap().into_iter().map(|i| i as u16).collect();
            assert_eq!(ours, verify::encode::top_k(&y, kept as usize), "kept {kept}");
        }
        // a long run of exact ties (the stable sort must keep index order across its internal blocks)
        let flat: Vec<f32> = (0..4096).map(|i| if i % 3 == 0 { -0.5 } else { 0.5 }).collect();
        let t = Tensor::from_slice(&flat).reshape([2, 2048]);
        let got: Vec<i64> = to_host(&top_indices(&t, 16).unwrap()).unwrap();
        let want: Vec<i64> = (0..16).chain(0..16).collect();
        assert_eq!(got, want);
        // magnitudes from a few levels, signs mixed: ties at, above and below the boundary in every row
        let rows = 64;
        let n = 256;
        let mut x = 0x9e37_79b9u32;
        let levels: Vec<f32> = (0..rows * n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let level = (x % 7) as f32 * 0.25;
                if x & 0x100 == 0 { level } else { -level }
            })
            .collect();
        let t = Tensor::from_slice(&levels).reshape([rows as i64, n as i64]);
        for kept in [1, 2, 4, 37, 255, 256] {
            let got: Vec<i64> = to_host(&top_indices(&t, kept).unwrap()).unwrap();
            for (r, row) in levels.chunks(n).enumerate() {
                let want: Vec<i64> = verify::encode::top_k(row, kept as usize).into_iter().map(i64::from).collect();
                assert_eq!(got[r * kept as usize..(r + 1) * kept as usize], want[..], "kept {kept} row {r}");
            }
        }
    }

    #[test]
    fn matches_reference_encoder_on_random_data() {
        tch::set_num_threads(1);
        let l = layout();
        let state = random_state(&l, 1);
        let ts = tensors(&state);
        let mut bases = Bases::new(Device::Cpu);
        for values in ENCODINGS {
            let h = header(&l, values, 1);
            let ours = encode(&ts, &h, &l, &mut bases).unwrap();
            let theirs = verify::encode(&state, &h).unwrap();
            let (equal, total) = compare(&ours, &theirs);
            assert!(equal * 100 >= total * 99, "{values:?}: {equal} of {total} indices equal");
        }
    }

    /// Data built from chosen coefficients: per chunk, `kept` of them with magnitudes 2 + j/4 (j < kept),
    /// the rest below 1. No near-ties at the top-k boundary, and none among the kept either.
    #[test]
    fn matches_reference_encoder_exactly_without_near_ties() {
        tch::set_num_threads(1);
        let l = layout();
        let comp = header(&l, ValueEncoding::Sign, 0).compression;
        let mut data = Vec::new();
        for (t, (spec, grid)) in l.tensors().iter().zip(comp.grids(&l)).enumerate() {
            let (cr, cc) = (usize::from(grid.chunk_rows), usize::from(grid.chunk_cols));
            let (rb, cb) = (Basis::new(grid.chunk_rows), Basis::new(grid.chunk_cols));
            let kept = grid.kept(comp.topk_for(t)) as usize;
            let cols = grid.cols as usize;
            let mut x = vec![0.0f32; spec.elements() as usize];
            let noise = random(x.len(), 77 + t as u64);
            for c in 0..grid.chunks() as usize {
                let n = cr * cc;
                let mut y: Vec<f32> = noise[c * n..(c + 1) * n].iter().map(|v| v * 0.9).collect();
                // spread the big ones over the chunk with a stride coprime to most sizes
                for j in 0..kept {
                    let pos = (j * 37 + c * 11) % n;
                    let sign = if (j + c) % 2 == 0 { 1.0 } else { -1.0 };
                    y[pos] = sign * (2.0 + j as f32 / 4.0);
                }
                let mut chunk = vec![0.0f32; n];
                verify::dct::inverse(&y, &rb, &cb, &mut chunk);
                let (gy, gx) = (c / grid.grid_cols() as usize, c % grid.grid_cols() as usize);
                for i in 0..cr {
                    let start = (gy * cr + i) * cols + gx * cc;
                    x[start..start + cc].copy_from_slice(&chunk[i * cc..(i + 1) * cc]);
                }
            }
            data.push(x);
        }
        let state = State::from_parts(l.clone(), data).unwrap();
        let ts = tensors(&state);
        let mut bases = Bases::new(Device::Cpu);
        for values in ENCODINGS {
            let h = header(&l, values, 2);
            let ours = encode(&ts, &h, &l, &mut bases).unwrap();
            let theirs = verify::encode(&state, &h).unwrap();
            let (equal, total) = compare(&ours, &theirs);
            assert_eq!(equal, total, "{values:?}");
        }
    }

    #[test]
    fn round_trips_through_the_verify_decoder() {
        tch::set_num_threads(1);
        let l = layout();
        let ts = tensors(&random_state(&l, 3));
        let mut bases = Bases::new(Device::Cpu);
        for values in ENCODINGS {
            for indices in [verify::IndexCoding::Fixed, verify::IndexCoding::EliasFano] {
                let mut h = header(&l, values, 3);
                h.compression.indices = indices;
                let update = encode(&ts, &h, &l, &mut bases).unwrap();
                let bytes = update.to_bytes();
                assert_eq!(bytes.len() as u64, verify::wire::encoded_len(&l, &h.compression));
                let back = decode(&bytes, &h.expected(&l)).unwrap();
                assert_eq!(back, update, "{values:?} {indices:?}");
                assert_eq!(back.to_bytes(), bytes);
            }
        }
    }

    #[test]
    fn error_feedback_leaves_momentum_minus_what_was_sent() {
        tch::set_num_threads(1);
        let l = layout();
        let grads = tensors(&random_state(&l, 4));
        for values in [ValueEncoding::Int8, ValueEncoding::Bf16] {
            let mut demo = DemoState::new(&l, Device::Cpu).unwrap();
            demo.accumulate(&grads, &l, 0.9, 0.5).unwrap();
            let before: Vec<Vec<f32>> = demo.momentum().iter().map(host).collect();
            let h = header(&l, values, 4);
            let update = demo.encode(&h, &l).unwrap();
            // verify's own decode of what was sent, as a dense tensor (one update, no clipping)
            let sent = direction(&l, h.round, &[update], &hyper(h.compression, NormClip::Off)).unwrap();
            for (t, (b, s)) in before.iter().zip(&sent).enumerate() {
                let after = host(&demo.momentum()[t]);
                let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (i, ((b, a), s)) in b.iter().zip(&after).zip(s).enumerate() {
                    assert!((b - s - a).abs() <= 1e-5 * scale, "{values:?} tensor {t} [{i}]: {b} - {s} != {a}");
                }
            }
        }
        // sign: the full-precision coefficients at the sent positions are removed, so they become ~0
        let mut demo = DemoState::new(&l, Device::Cpu).unwrap();
        demo.accumulate(&grads, &l, 0.9, 0.5).unwrap();
        let h = header(&l, ValueEncoding::Sign, 5);
        let update = demo.encode(&h, &l).unwrap();
        let mut bases = Bases::new(Device::Cpu);
        for ((m, tu), grid) in demo.momentum().iter().zip(update.tensors()).zip(h.compression.grids(&l)) {
            let (gr, gc, cr, cc) = dims(&grid);
            let (dr, dc) = (bases.get(grid.chunk_rows).unwrap(), bases.get(grid.chunk_cols).unwrap());
            let y = host(&forward(&to_chunks(m, &grid).unwrap(), &dr, &dc).unwrap().reshape([gr * gc, cr * cc]));
            let kept = tu.kept() as usize;
            let n = (cr * cc) as usize;
            for (e, &j) in tu.indices().iter().enumerate() {
                let v = y[(e / kept) * n + usize::from(j)];
                assert!(v.abs() < 1e-4, "coefficient {j} of chunk {} still {v}", e / kept);
            }
        }
    }

    #[test]
    fn accumulate_is_decay_times_momentum_plus_lr_times_grad() {
        tch::set_num_threads(1);
        let l = layout();
        let (g1, g2) = (random_state(&l, 6), random_state(&l, 7));
        let mut demo = DemoState::new(&l, Device::Cpu).unwrap();
        demo.accumulate(&tensors(&g1), &l, 0.5, 2.0).unwrap();
        demo.accumulate(&tensors(&g2), &l, 0.5, 2.0).unwrap();
        for (t, m) in demo.momentum().iter().enumerate() {
            let got = host(m);
            for ((m, a), b) in got.iter().zip(g1.tensor(t)).zip(g2.tensor(t)) {
                let want = 0.5 * (2.0 * a) + 2.0 * b;
                assert!((m - want).abs() <= 1e-6 * want.abs().max(1.0), "{m} vs {want}");
            }
        }
    }

    #[test]
    fn rejects_wrong_shapes_and_non_finite_values() {
        tch::set_num_threads(1);
        let l = layout();
        let mut ts = tensors(&random_state(&l, 8));
        let h = header(&l, ValueEncoding::Sign, 8);
        let mut bases = Bases::new(Device::Cpu);
        let short = encode(&ts[1..], &h, &l, &mut bases);
        assert!(matches!(short, Err(TrainerError::Shape { .. })), "{short:?}");
        let saved = ts[1].shallow_clone();
        ts[1] = saved.reshape([96, 58]);
        let wrong = encode(&ts, &h, &l, &mut bases);
        assert!(matches!(wrong, Err(TrainerError::Shape { index: 1, .. })), "{wrong:?}");
        ts[1] = saved.copy();
        let _ = ts[1].get(3).get(5).fill_(f64::NAN);
        let nan = encode(&ts, &h, &l, &mut bases);
        assert!(matches!(&nan, Err(TrainerError::NonFinite { name }) if name == "b.weight"), "{nan:?}");
    }

    /// The libtorch baseline computes the same step as verify's bit-exact rule, up to the sign of
    /// directions within rounding of zero.
    #[test]
    fn reference_aggregate_agrees_with_verify() {
        tch::set_num_threads(1);
        let l = layout();
        for values in ENCODINGS {
            let h0 = header(&l, values, 0);
            let hy = hyper(h0.compression, NormClip::Median);
            let updates: Vec<Update> = (0..5u8)
                .map(|w| verify::encode(&random_state(&l, 20 + u64::from(w)), &header(&l, values, w)).unwrap())
                .collect();
            let state = random_state(&l, 9);
            let exact = verify::aggregate(&state, h0.round, &updates, &hy).unwrap();
            let dir = direction(&l, h0.round, &updates, &hy).unwrap();
            let mut params = tensors(&state);
            let mut bases = Bases::new(Device::Cpu);
            let gathered = gather_updates(&updates, &l, &hy, Device::Cpu).unwrap();
            reference_aggregate(&mut params, &gathered, &l, h0.round, &hy, &mut bases).unwrap();
            let (mut same, mut total) = (0usize, 0usize);
            for (t, p) in params.iter().enumerate() {
                let got = host(p);
                let scale = dir[t].iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for ((a, b), d) in got.iter().zip(exact.tensor(t)).zip(&dir[t]) {
                    total += 1;
                    if a == b {
                        same += 1;
                    } else {
                        assert!(d.abs() <= 1e-5 * scale, "{values:?}: {a} vs {b} where the direction is {d}");
                    }
                }
            }
            assert!(same * 100 >= total * 99, "{values:?}: {same} of {total} equal");
        }
    }
}
