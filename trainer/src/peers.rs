//! Research peers of `cairn bench train`: published communication-efficient methods, trained on the
//! same tokens as cairn's consensus method and the AdamW baseline. **Not consensus**: nothing here
//! is replayed, hashed or audited; a run always aggregates with `verify::apply`.
//!
//! ```text
//!   every step s: the global batch, split into one shard per worker (simulate::shards)
//!
//!   DeMo (reference)   worker w: g = grad on its shard; m_w = β m_w + g
//!   DeMo (sign)          per tensor, per DCT chunk: Y = DCT(m_w), keep the top-k |Y|
//!                        error feedback: m_w -= IDCT(kept Y)            (full precision, both)
//!                        send (index, Y) as f32 (reference) or (index, sign Y) (sign)
//!                      all: per coefficient, the mean over the workers that sent it; IDCT;
//!                        p = p (1 - lr wd) - lr sign(·)
//!
//!   SparseLoCo (H)     worker w: one AdamW step on its shard with its own optimiser and copy;
//!                      every H steps: Δ_w = θ - θ_w;  e_w = β e_w + Δ_w
//!                        per chunk (no DCT; sparseloco-dct: of its DCT): keep the top-k |e_w|, 2-bit values
//!                        (±s, ±s/3, s = the chunk's largest kept |e|); e_w -= sent
//!                      all: θ = θ - α mean_w(sent);  θ_w = θ
//!                      (research: with an outer momentum β, the step is DiLoCo's below)
//!
//!   SparseLoCo, shared as SparseLoCo, but every worker sends the same random positions of each
//!   positions (H)      chunk (drawn from the synchronisation's number) and no indices
//!
//!   DiLoCo (H)         as SparseLoCo, but Δ_w is sent dense in f32 and the outer step is
//!                      Nesterov SGD: v = μ v + mean Δ;  θ = θ - α (mean Δ + μ v)
//! ```
//!
//! Bytes are counted the same way for every method ([`sparse_payload_bytes`]): per chunk, the kept
//! coefficients' indices packed at the chunk's index width (cairn's wire format) plus their values at
//! the method's width and any per-chunk scale, summed over tensors; a method that talks every H steps
//! divides by H. cairn's own method is counted by its real wire size (`verify::encoded_len`, which
//! adds a header of a few dozen bytes).

use tch::{Device, Kind, Tensor};
use verify::chunk::Grid;
use verify::wire::encoded_len;
use verify::{Compression, Hyper, Layout, Round, Schedule, State, Transform, ValueEncoding, apply};

use crate::demo::{Bases, DemoState, dense, dims, from_chunks, to_chunks, top_indices};
use crate::error::TrainerError;
use crate::local::LocalSteps;
use crate::model::{Model, ModelConfig};
use crate::simulate::{shards, simulated_update};
use crate::step::{AdamW, AdamWConfig, StepConfig, local_step};

/// Value width of a sparse upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerValues {
    /// 32-bit floats.
    F32,
    /// One sign bit.
    Sign,
    /// Two bits, with one f32 scale per chunk.
    TwoBit,
}

impl PeerValues {
    /// Bytes of `kept` values of one chunk.
    fn chunk_bytes(self, kept: u64) -> u64 {
        match self {
            PeerValues::F32 => 4 * kept,
            PeerValues::Sign => kept.div_ceil(8),
            PeerValues::TwoBit => (2 * kept).div_ceil(8) + 4,
        }
    }
}

/// Bytes of one upload of `topk` values per chunk of `grids` at positions every worker derives (no
/// indices): per chunk, the values and any scale.
pub fn shared_payload_bytes(grids: &[Grid], topk: u16, values: PeerValues) -> u64 {
    grids.iter().map(|g| g.chunks() * values.chunk_bytes(u64::from(g.kept(topk)))).sum()
}

/// Bytes of one upload that keeps `topk` coefficients per chunk of `grids`: per chunk, the indices
/// packed at the grid's index width (as cairn's wire format packs them) and the values.
pub fn sparse_payload_bytes(grids: &[Grid], topk: u16, values: PeerValues) -> u64 {
    grids
        .iter()
        .map(|g| {
            let kept = u64::from(g.kept(topk));
            g.chunks() * ((kept * u64::from(g.index_bits())).div_ceil(8) + values.chunk_bytes(kept))
        })
        .sum()
}

/// The top-k in 1..=4096 whose `bytes` is closest to `target` (the smaller k at a tie).
pub fn closest_topk(bytes: impl Fn(u16) -> f64, target: f64) -> u16 {
    (1..=4096u16).min_by(|&a, &b| (bytes(a) - target).abs().total_cmp(&(bytes(b) - target).abs())).unwrap_or(1)
}

/// The top-k whose payload on `grids`, divided by `every` steps, is closest to `target` bytes per
/// step.
pub fn topk_for_bytes(grids: &[Grid], values: PeerValues, every: u64, target: f64) -> u16 {
    closest_topk(|k| sparse_payload_bytes(grids, k, values) as f64 / every.max(1) as f64, target)
}

/// cairn's chunk grid of every tensor of `layout` at `chunk` (which must be a valid chunk size).
pub fn chunk_grids(layout: &Layout, chunk: u16) -> Result<Vec<Grid>, TrainerError> {
    let c = Compression::uniform(chunk, 1, ValueEncoding::Sign);
    c.validate_for(layout)?;
    Ok(c.grids(layout))
}

/// One method under test: trains on each step's global batch and exposes the shared model.
pub trait Method {
    /// One optimiser step on `batch` (the global batch; the method splits it between its workers).
    /// Returns the mean training loss of the step.
    fn step(&mut self, step: Round, batch: &Tensor) -> Result<f64, TrainerError>;
    /// The model holding the shared state, as a newcomer would get it now (for evaluation).
    fn model(&self) -> &Model;
    /// Bytes each worker uploads per optimiser step, on average.
    fn bytes_per_step(&self) -> f64;
}

fn zeros_like_layout(layout: &Layout, device: Device) -> Result<Vec<Tensor>, TrainerError> {
    layout
        .tensors()
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
            Ok(Tensor::f_zeros(shape.as_slice(), (Kind::Float, device))?)
        })
        .collect()
}

/// How a DeMo peer sends its values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DemoPeerConfig {
    /// Simulated workers.
    pub workers: usize,
    /// DCT chunk size (cairn's chunk grid).
    pub chunk: u16,
    /// Coefficients kept per chunk (any number up to the chunk's size).
    pub topk: u16,
    /// Values at full precision ([`PeerValues::F32`]) or their signs ([`PeerValues::Sign`]).
    pub values: PeerValues,
    /// Sign-step learning rate per step.
    pub schedule: Schedule,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Momentum decay β.
    pub momentum_decay: f64,
    /// Micro-batching and clipping of each worker's gradient.
    pub step: StepConfig,
}

/// DeMo as its reference implementation aggregates (module docs).
#[derive(Debug)]
pub struct DemoPeer {
    config: DemoPeerConfig,
    model: Model,
    grids: Vec<Grid>,
    momentum: Vec<Vec<Tensor>>,
    bases: Bases,
}

impl DemoPeer {
    /// Every worker at zero momentum, the shared model at `state`.
    pub fn new(
        model: &ModelConfig,
        state: &State,
        config: DemoPeerConfig,
        device: Device,
    ) -> Result<Self, TrainerError> {
        if config.workers == 0 || config.values == PeerValues::TwoBit {
            return Err(TrainerError::InvalidConfig(format!(
                "a DeMo peer needs workers >= 1 and f32 or sign values: {config:?}"
            )));
        }
        let grids = chunk_grids(state.layout(), config.chunk)?;
        let m = Model::from_state(model, state, device)?;
        let momentum =
            (0..config.workers).map(|_| zeros_like_layout(state.layout(), device)).collect::<Result<_, _>>()?;
        Ok(DemoPeer { grids, config, model: m, momentum, bases: Bases::new(device) })
    }
}

impl Method for DemoPeer {
    fn step(&mut self, step: Round, batch: &Tensor) -> Result<f64, TrainerError> {
        let shards = shards(batch, self.config.workers)?;
        let tensors = self.grids.len();
        let mut indices: Vec<Vec<Tensor>> = (0..tensors).map(|_| Vec::new()).collect();
        let mut values: Vec<Vec<Tensor>> = (0..tensors).map(|_| Vec::new()).collect();
        let mut loss = 0.0;
        for (w, shard) in shards.iter().enumerate() {
            let g = local_step(&self.model, shard, &self.config.step)?;
            loss += g.loss;
            tch::no_grad(|| -> Result<(), TrainerError> {
                for t in 0..tensors {
                    let (grid, topk) = (self.grids[t], self.config.topk);
                    let m = &mut self.momentum[w][t];
                    let _ = m.f_mul_scalar_(self.config.momentum_decay)?;
                    let _ = m.f_add_(&g.grads[t])?;
                    let (gr, gc, cr, cc) = dims(&grid);
                    let y = self.bases.forward(&to_chunks(m, &grid)?, &grid, Transform::Dct)?;
                    let y = y.f_reshape([gr * gc, cr * cc])?;
                    let i = top_indices(&y, i64::from(grid.kept(topk)))?;
                    let v = y.f_gather(-1, &i, false)?;
                    let sent = dense(&i, &v, "sum", (&grid, Transform::Dct), &m.size(), &mut self.bases)?;
                    let _ = m.f_sub_(&sent)?;
                    values[t].push(if self.config.values == PeerValues::Sign { v.f_sign()? } else { v });
                    indices[t].push(i);
                }
                Ok(())
            })?;
        }
        let lr = f64::from(self.config.schedule.lr(step));
        let decay = 1.0 - lr * self.config.weight_decay;
        tch::no_grad(|| -> Result<(), TrainerError> {
            for t in 0..tensors {
                let i = Tensor::f_cat(&indices[t], -1)?;
                let v = Tensor::f_cat(&values[t], -1)?;
                let mut p = self.model.params()[t].shallow_clone();
                let d = dense(&i, &v, "mean", (&self.grids[t], Transform::Dct), &p.size(), &mut self.bases)?;
                let _ = p.f_mul_scalar_(decay)?;
                let _ = p.f_sub_(&d.f_sign()?.f_mul_scalar(lr)?)?;
            }
            Ok(())
        })?;
        Ok(loss / shards.len() as f64)
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn bytes_per_step(&self) -> f64 {
        sparse_payload_bytes(&self.grids, self.config.topk, self.config.values) as f64
    }
}

/// What a local-steps peer sends every H steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outer {
    /// SparseLoCo: error feedback decayed by `ef_decay`, `topk` per chunk of `chunk`, 2-bit values,
    /// plain averaged outer step; `transform`: the top-k of each chunk's entries (SparseLoCo's
    /// identity) or of its DCT coefficients.
    /// With `shared`, every worker sends the same `topk` positions of each chunk, drawn at random
    /// from the synchronisation's number ([`shared_positions`]), and no indices: about 7x more
    /// values for the same bytes at 1000x (research: issue 17's shared-positions candidate).
    SparseLoco { chunk: u16, topk: u16, ef_decay: f64, transform: Transform, scale: TwoBitScale, shared: bool },
    /// DiLoCo: the dense f32 pseudo-gradient.
    Diloco,
}

/// How a research SparseLoCo sets a chunk's two-bit scale `s` (levels ±s/3, ±s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoBitScale {
    /// `s` = the largest kept magnitude: nothing is clipped (SparseLoCo as published, and cairn's
    /// `two-bit` encoding).
    Max,
    /// `s` = 1.5 x the mean kept magnitude (levels ±mean/2, ±1.5 mean): larger values are clipped
    /// to ±s and error feedback keeps the rest. Research only: not a consensus encoding.
    Mean,
    /// `s` = 3 x the scale that minimises the squared error of the four levels over the chunk's
    /// kept values (verify's `TwoBitScale::LeastSquares`, in f32 on the tensor): larger values are
    /// clipped to ±s and error feedback keeps the rest. Research only.
    LeastSquares,
}

/// Per row of `v` (a chunk's kept values), 3 x the least-squares scale of levels ±u, ±3u: 8
/// passes of `u = sum |v| l / sum l^2`, `l` = 3 where `|v| >= 2u`, else 1, from `u = max |v| / 3`.
fn least_squares_scale(v: &Tensor) -> Result<Tensor, TrainerError> {
    let a = v.f_abs()?;
    let mut u = a.f_amax([-1].as_slice(), true)?.f_div_scalar(3.0)?;
    for _ in 0..8 {
        let outer = a.f_ge_tensor(&u.f_mul_scalar(2.0)?)?.to_kind(Kind::Float);
        let l = outer.f_mul_scalar(2.0)?.f_add_scalar(1.0)?;
        let num = a.f_mul(&l)?.f_sum_dim_intlist([-1].as_slice(), true, Kind::Float)?;
        let den = l.f_mul(&l)?.f_sum_dim_intlist([-1].as_slice(), true, Kind::Float)?;
        u = num.f_div(&den)?;
    }
    Ok(u.f_mul_scalar(3.0)?)
}

/// `kept` distinct positions in each chunk of `grid` (a `[chunks, kept]` i64 tensor), the same for
/// every worker: a partial Fisher-Yates shuffle per chunk driven by splitmix64 from `(sync, tensor,
/// chunk)`. Every worker derives them from the synchronisation's number alone.
pub fn shared_positions(grid: &Grid, kept: u32, (sync, tensor): (u64, u64)) -> Result<Tensor, TrainerError> {
    let (gr, gc, cr, cc) = dims(grid);
    let (chunks, n) = ((gr * gc) as u64, (cr * cc) as usize);
    let kept = (kept as usize).min(n);
    let mut out = Vec::with_capacity(chunks as usize * kept);
    let mut order: Vec<i64> = Vec::with_capacity(n);
    for c in 0..chunks {
        let mut state = sync.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tensor.rotate_left(21) ^ c.rotate_left(42);
        order.clear();
        order.extend(0..n as i64);
        for j in 0..kept {
            let r = splitmix64(&mut state);
            let pick = j + (r % (n - j) as u64) as usize;
            order.swap(j, pick);
        }
        out.extend_from_slice(&order[..kept]);
    }
    Ok(Tensor::from_slice(&out).f_reshape([chunks as i64, kept as i64])?)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A local-steps peer's configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocoConfig {
    /// Simulated workers.
    pub workers: usize,
    /// Local AdamW steps between synchronisations.
    pub h: u64,
    /// Steps in the whole run (the last one always synchronises).
    pub total_steps: u64,
    /// Each worker's inner AdamW.
    pub inner: AdamWConfig,
    /// Outer learning rate α.
    pub outer_lr: f64,
    /// Outer Nesterov momentum β (0: the plain averaged step): `v = β v + mean`, the step is
    /// `α (mean + β v)`, so a steady update moves `α / (1 - β)` times the mean (DiLoCo's outer
    /// optimiser; for SparseLoCo a research option).
    pub momentum: f64,
    /// What is sent and how the outer step uses it.
    pub outer: Outer,
}

/// SparseLoCo or DiLoCo (module docs).
#[derive(Debug)]
pub struct LocoPeer {
    config: LocoConfig,
    global: Model,
    workers: Vec<(Model, AdamW)>,
    grids: Vec<Grid>,
    error: Vec<Vec<Tensor>>,
    velocity: Vec<Tensor>,
    bases: Bases,
    syncs: u64,
    outer_schedule: Option<Schedule>,
}

impl LocoPeer {
    /// Every worker's copy at `state`, fresh optimisers, zero error feedback and momentum.
    pub fn new(model: &ModelConfig, state: &State, config: LocoConfig, device: Device) -> Result<Self, TrainerError> {
        let momentum_ok = (0.0..1.0).contains(&config.momentum);
        if config.workers == 0 || config.h == 0 || config.outer_lr.is_nan() || config.outer_lr <= 0.0 || !momentum_ok {
            return Err(TrainerError::InvalidConfig(format!(
                "a local-steps peer needs workers, H >= 1, α > 0 and 0 <= β < 1: {config:?}"
            )));
        }
        let global = Model::from_state(model, state, device)?;
        let workers = (0..config.workers)
            .map(|_| {
                let m = Model::from_state(model, state, device)?;
                let opt = AdamW::new(&m, config.inner)?;
                Ok((m, opt))
            })
            .collect::<Result<_, TrainerError>>()?;
        let grids = match config.outer {
            Outer::SparseLoco { chunk, .. } => chunk_grids(state.layout(), chunk)?,
            Outer::Diloco => Vec::new(),
        };
        let error = match config.outer {
            Outer::SparseLoco { .. } => {
                (0..config.workers).map(|_| zeros_like_layout(state.layout(), device)).collect::<Result<_, _>>()?
            }
            Outer::Diloco => Vec::new(),
        };
        let velocity = match config.momentum > 0.0 {
            true => zeros_like_layout(state.layout(), device)?,
            false => Vec::new(),
        };
        Ok(LocoPeer {
            config,
            global,
            workers,
            grids,
            error,
            velocity,
            bases: Bases::new(device),
            syncs: 0,
            outer_schedule: None,
        })
    }

    /// Research: the outer rate follows `schedule` (indexed by the step) instead of `outer_lr`.
    pub fn with_outer_schedule(mut self, schedule: Schedule) -> LocoPeer {
        self.outer_schedule = Some(schedule);
        self
    }

    /// SparseLoCo's compression of one worker's accumulator tensor `e` (in place: what is sent is
    /// removed); returns what is sent, dense. With `bases`, in the DCT domain.
    fn compress(
        e: &mut Tensor,
        domain: (&Grid, Transform),
        (topk, scale): (u16, TwoBitScale),
        bases: &mut Bases,
        positions: Option<&Tensor>,
    ) -> Result<Tensor, TrainerError> {
        let (grid, transform) = domain;
        let (gr, gc, cr, cc) = dims(grid);
        let x = bases.forward(&to_chunks(e, grid)?, grid, transform)?.f_reshape([gr * gc, cr * cc])?;
        let i = match positions {
            Some(shared) => shared.shallow_clone(),
            None => top_indices(&x, i64::from(grid.kept(topk)))?,
        };
        let v = x.f_gather(-1, &i, false)?;
        // 2 bits: levels s * {-1, -1/3, 1/3, 1}, s = the chunk's largest kept magnitude (or 1.5 x
        // the mean one, or 3 x the least-squares scale).
        let s = match scale {
            TwoBitScale::Max => v.f_abs()?.f_amax([-1].as_slice(), true)?,
            TwoBitScale::Mean => v.f_abs()?.f_mean_dim([-1].as_slice(), true, Kind::Float)?.f_mul_scalar(1.5)?,
            TwoBitScale::LeastSquares => least_squares_scale(&v)?,
        };
        let unit = v.f_div(&s.f_clamp_min(1e-30)?)?;
        let code = unit.f_add_scalar(1.0)?.f_mul_scalar(1.5)?.f_round()?.f_clamp(0.0, 3.0)?;
        let q = code.f_mul_scalar(2.0 / 3.0)?.f_sub_scalar(1.0)?.f_mul(&s)?;
        let mut coefficients = Tensor::f_zeros([gr * gc, cr * cc], (Kind::Float, e.device()))?;
        let _ = coefficients.f_scatter_(-1, &i, &q)?;
        let coefficients = bases.inverse(&coefficients.f_reshape([gr, gc, cr, cc])?, grid, transform)?;
        let sent = from_chunks(&coefficients, &e.size())?;
        let _ = e.f_sub_(&sent)?;
        Ok(sent)
    }

    fn synchronise(&mut self, at: Round) -> Result<(), TrainerError> {
        let n = self.workers.len() as f64;
        let outer_lr = self.outer_schedule.map_or(self.config.outer_lr, |s| s.lr_f64(at));
        self.syncs += 1;
        tch::no_grad(|| -> Result<(), TrainerError> {
            for t in 0..self.global.params().len() {
                let mut theta = self.global.params()[t].shallow_clone();
                let mut mean = theta.f_zeros_like()?;
                let positions = match self.config.outer {
                    Outer::SparseLoco { topk, shared: true, .. } => {
                        let grid = &self.grids[t];
                        Some(shared_positions(grid, grid.kept(topk), (self.syncs, t as u64))?.to(theta.device()))
                    }
                    _ => None,
                };
                for (w, (model, _)) in self.workers.iter().enumerate() {
                    let delta = theta.f_sub(&model.params()[t])?;
                    let sent = match self.config.outer {
                        Outer::SparseLoco { topk, ef_decay, transform, scale, .. } => {
                            let e = &mut self.error[w][t];
                            let _ = e.f_mul_scalar_(ef_decay)?;
                            let _ = e.f_add_(&delta)?;
                            let domain = (&self.grids[t], transform);
                            Self::compress(e, domain, (topk, scale), &mut self.bases, positions.as_ref())?
                        }
                        Outer::Diloco => delta,
                    };
                    let _ = mean.f_add_(&sent)?;
                }
                let _ = mean.f_div_scalar_(n)?;
                let step = match self.velocity.get_mut(t) {
                    None => mean,
                    Some(v) => {
                        let momentum = self.config.momentum;
                        let _ = v.f_mul_scalar_(momentum)?;
                        let _ = v.f_add_(&mean)?;
                        mean.f_add(&v.f_mul_scalar(momentum)?)?
                    }
                };
                let _ = theta.f_sub_(&step.f_mul_scalar(outer_lr)?)?;
                for (model, _) in &self.workers {
                    model.params()[t].shallow_clone().f_copy_(&theta)?;
                }
            }
            Ok(())
        })
    }
}

impl Method for LocoPeer {
    fn step(&mut self, step: Round, batch: &Tensor) -> Result<f64, TrainerError> {
        let shards = shards(batch, self.workers.len())?;
        let mut loss = 0.0;
        for ((model, opt), shard) in self.workers.iter_mut().zip(&shards) {
            loss += opt.step(model, shard)?.loss;
        }
        let done = step.0 + 1;
        if done.is_multiple_of(self.config.h) || done == self.config.total_steps {
            self.synchronise(step)?;
        }
        Ok(loss / shards.len() as f64)
    }

    fn model(&self) -> &Model {
        &self.global
    }

    fn bytes_per_step(&self) -> f64 {
        let payload = match self.config.outer {
            Outer::SparseLoco { topk, shared: true, .. } => shared_payload_bytes(&self.grids, topk, PeerValues::TwoBit),
            Outer::SparseLoco { topk, .. } => sparse_payload_bytes(&self.grids, topk, PeerValues::TwoBit),
            Outer::Diloco => 4 * self.global.parameter_count(),
        };
        payload as f64 / self.config.h as f64
    }
}

/// cairn's consensus aggregation fed by local steps ([`crate::local`]): every worker takes AdamW
/// steps on its own copy, and every H steps it folds its pseudo-gradient `θ - θ_w` into its DeMo
/// momentum, encodes it in cairn's wire format (DCT top-k, sign values, error feedback) and
/// `verify::apply` takes the sign step, exactly as a run's round does (a run with
/// `train.local_steps = H` splits each round's assignment into H parts instead).
#[derive(Debug)]
pub struct LocalSwarm {
    h: u64,
    total_steps: u64,
    inner: Schedule,
    hyper: Hyper,
    momentum_decay: f64,
    /// Research: the error-feedback decay of each step, in place of `momentum_decay`.
    decay_schedule: Option<Schedule>,
    state: State,
    global: Model,
    workers: Vec<(LocalSteps, DemoState)>,
}

impl LocalSwarm {
    /// `workers` copies at `state`, each with a fresh AdamW (`inner`) and zero momentum; every `h`
    /// steps (and at `total_steps`) one round of `hyper` (its schedule indexed by the step).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &ModelConfig,
        state: &State,
        workers: usize,
        h: u64,
        total_steps: u64,
        inner: AdamWConfig,
        hyper: Hyper,
        momentum_decay: f64,
        device: Device,
    ) -> Result<Self, TrainerError> {
        hyper.validate()?;
        hyper.compression.validate_for(state.layout())?;
        if workers == 0 || h == 0 {
            return Err(TrainerError::InvalidConfig(format!(
                "local swarm needs workers and H >= 1, got {workers}, {h}"
            )));
        }
        let global = Model::from_state(model, state, device)?;
        let workers = (0..workers)
            .map(|_| Ok((LocalSteps::new(model, state, inner, device)?, DemoState::new(state.layout(), device)?)))
            .collect::<Result<_, TrainerError>>()?;
        let inner = inner.schedule;
        Ok(LocalSwarm {
            h,
            total_steps,
            inner,
            hyper,
            momentum_decay,
            decay_schedule: None,
            state: state.clone(),
            global,
            workers,
        })
    }

    /// Every worker picks its two-bit scales by `rule` (default: what `cairn worker` uses).
    pub fn with_two_bit_scale(mut self, rule: verify::encode::TwoBitScale) -> LocalSwarm {
        self.workers = self.workers.into_iter().map(|(local, demo)| (local, demo.with_two_bit_scale(rule))).collect();
        self
    }

    /// Research: the error-feedback decay follows `schedule` (indexed by the step) instead of the
    /// constructor's constant; a worker-side choice that no consensus rule reads.
    pub fn with_decay_schedule(mut self, schedule: Schedule) -> LocalSwarm {
        self.decay_schedule = Some(schedule);
        self
    }

    fn synchronise(&mut self, round: Round) -> Result<(), TrainerError> {
        let layout = self.state.layout().clone();
        let decay = self.decay_schedule.map_or(self.momentum_decay, |s| s.lr_f64(round));
        let base = self.state.hash();
        let mut updates = Vec::with_capacity(self.workers.len());
        for (i, (local, demo)) in self.workers.iter_mut().enumerate() {
            demo.accumulate(&local.delta(&self.global)?, &layout, decay, 1.0)?;
            updates.push(simulated_update(demo, &layout, round, base, i, self.hyper.compression)?.0);
        }
        apply(&mut self.state, round, &updates, &self.hyper)?;
        self.global.load_state(&self.state)?;
        for (local, _) in &mut self.workers {
            local.reset(&self.global)?;
        }
        Ok(())
    }
}

impl Method for LocalSwarm {
    fn step(&mut self, step: Round, batch: &Tensor) -> Result<f64, TrainerError> {
        let shards = shards(batch, self.workers.len())?;
        let lr = self.inner.lr_f64(step);
        let mut loss = 0.0;
        for ((local, _), shard) in self.workers.iter_mut().zip(&shards) {
            loss += local.step(shard, lr)?;
        }
        let done = step.0 + 1;
        if done.is_multiple_of(self.h) || done == self.total_steps {
            self.synchronise(step)?;
        }
        Ok(loss / shards.len() as f64)
    }

    fn model(&self) -> &Model {
        &self.global
    }

    fn bytes_per_step(&self) -> f64 {
        encoded_len(self.state.layout(), &self.hyper.compression) as f64 / self.h as f64
    }
}

#[cfg(test)]
mod tests {
    use verify::{Ratio, TensorSpec};

    use super::*;
    use crate::data::{Dataset, MarkovSpec};
    use crate::model::{Preset, init_state};
    use crate::simulate::global_batch;
    use crate::step::eval_loss;

    #[test]
    fn payload_bytes_follow_the_wire_widths() {
        // A 128 x 192 tensor in 64 x 64 chunks: 6 chunks of 4096 coefficients, 12-bit indices.
        let layout = Layout::new(vec![TensorSpec { name: "a".into(), shape: vec![128, 192] }]).unwrap();
        let grids = Compression::uniform(64, 3, ValueEncoding::Sign).grids(&layout);
        assert_eq!(grids[0].chunks(), 6);
        assert_eq!(grids[0].index_bits(), 12);
        // 3 indices x 12 bits = 36 bits -> 5 bytes; values: f32 12 bytes, sign 1 byte, 2-bit 1 + 4 bytes.
        assert_eq!(sparse_payload_bytes(&grids, 3, PeerValues::F32), 6 * (5 + 12));
        assert_eq!(sparse_payload_bytes(&grids, 3, PeerValues::Sign), 6 * (5 + 1));
        assert_eq!(sparse_payload_bytes(&grids, 3, PeerValues::TwoBit), 6 * (5 + 5));
        // f32 at k = 6: 6 * (ceil(72 / 8) + 24) = 198 bytes, so that target gives k = 6.
        assert_eq!(topk_for_bytes(&grids, PeerValues::F32, 1, 198.0), 6);
        // Talking every 4 steps buys 4x the payload per message.
        assert_eq!(topk_for_bytes(&grids, PeerValues::F32, 4, 198.0 / 4.0), 6);
        // Shared positions: no indices, 2-bit values: ceil(6 / 8) + 4 = 5 bytes a chunk.
        assert_eq!(shared_payload_bytes(&grids, 3, PeerValues::TwoBit), 6 * 5);
    }

    #[test]
    fn shared_positions_are_distinct_in_range_and_depend_on_the_synchronisation_alone() {
        let layout = Layout::new(vec![TensorSpec { name: "a".into(), shape: vec![128, 192] }]).unwrap();
        let grid = Compression::uniform(64, 1, ValueEncoding::Sign).grids(&layout).remove(0);
        let rows = |t: &Tensor| -> Vec<Vec<i64>> {
            (0..t.size()[0]).map(|r| Vec::<i64>::try_from(t.get(r)).unwrap()).collect()
        };
        let a = rows(&shared_positions(&grid, 100, (7, 0)).unwrap());
        assert_eq!(a.len(), 6);
        for row in &a {
            let mut sorted = row.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 100, "positions repeat within a chunk");
            assert!(sorted.iter().all(|&i| (0..4096).contains(&i)));
        }
        assert_ne!(a[0], a[1], "chunks draw their own positions");
        // Every worker derives the same positions; the next synchronisation and another tensor differ.
        assert_eq!(a, rows(&shared_positions(&grid, 100, (7, 0)).unwrap()));
        assert_ne!(a, rows(&shared_positions(&grid, 100, (8, 0)).unwrap()));
        assert_ne!(a, rows(&shared_positions(&grid, 100, (7, 1)).unwrap()));
        // Asking for every position gives a permutation of the chunk.
        let all = rows(&shared_positions(&grid, 5000, (1, 0)).unwrap());
        let mut p = all[0].clone();
        p.sort_unstable();
        assert_eq!(p, (0..4096).collect::<Vec<i64>>());
    }

    #[test]
    fn the_tensor_least_squares_scale_is_verifys() {
        // |v| = 1, 1, 1, 10 (verify's test: scale 2.75, so the outer level 8.25) and 1, 2, 3, 4 (1.2, 3.6).
        let v = Tensor::from_slice(&[1.0f32, -1.0, 1.0, 10.0, 1.0, 2.0, -3.0, 4.0]).reshape([2, 4]);
        let s = Vec::<f32>::try_from(least_squares_scale(&v).unwrap().reshape([-1])).unwrap();
        assert!((s[0] - 8.25).abs() < 1e-5 && (s[1] - 3.6).abs() < 1e-5, "{s:?}");
    }

    #[test]
    fn sparseloco_compression_keeps_the_top_k_at_two_bits_and_feeds_back_the_rest() {
        let layout = Layout::new(vec![TensorSpec { name: "a".into(), shape: vec![1, 8] }]).unwrap();
        let grid = Compression::uniform(64, 2, ValueEncoding::Sign).grids(&layout)[0];
        let mut e = Tensor::from_slice(&[0.1f32, -0.9, 0.05, 0.6, 0.0, 0.2, -0.1, 0.3]).reshape([1, 8]);
        let sent =
            LocoPeer::compress(&mut e, (&grid, Transform::Identity), (2, TwoBitScale::Max), &mut Bases::cpu(), None)
                .unwrap();
        // Kept: -0.9 and 0.6; s = 0.9; -0.9 -> -1 * s; 0.6/0.9 = 0.667 -> code round(2.5) = 2 -> +s/3.
        let sent: Vec<f32> = Vec::try_from(sent.reshape([-1])).unwrap();
        let want = [0.0, -0.9, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0];
        for (a, b) in sent.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{sent:?}");
        }
        let rest: Vec<f32> = Vec::try_from(e.reshape([-1])).unwrap();
        let want = [0.1, 0.0, 0.05, 0.3, 0.0, 0.2, -0.1, 0.3];
        for (a, b) in rest.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{rest:?}");
        }
    }

    #[test]
    fn the_mean_scale_clips_the_largest_kept_value_and_feeds_the_excess_back() {
        let layout = Layout::new(vec![TensorSpec { name: "a".into(), shape: vec![1, 4] }]).unwrap();
        let grid = Compression::uniform(64, 4, ValueEncoding::Sign).grids(&layout)[0];
        let mut e = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 10.0]).reshape([1, 4]);
        let sent =
            LocoPeer::compress(&mut e, (&grid, Transform::Identity), (4, TwoBitScale::Mean), &mut Bases::cpu(), None)
                .unwrap();
        // mean |v| = 13 / 4 = 3.25, s = 4.875; 1 / s = 0.205 -> code round(1.808) = 2 -> +s/3 = 1.625;
        // 10 -> code 3 -> +s = 4.875, the other 5.125 stays behind.
        let sent: Vec<f32> = Vec::try_from(sent.reshape([-1])).unwrap();
        let rest: Vec<f32> = Vec::try_from(e.reshape([-1])).unwrap();
        for (got, want) in
            sent.iter().zip([1.625, 1.625, 1.625, 4.875]).chain(rest.iter().zip([-0.625, -0.625, -0.625, 5.125]))
        {
            assert!((got - want).abs() < 1e-5, "sent {sent:?}, rest {rest:?}");
        }
    }

    #[test]
    fn sparseloco_in_the_dct_domain_sends_a_whole_basis_function_with_one_coefficient() {
        // e = 0.5 x the DCT basis function of frequency 3 along an 8-long row: one coefficient.
        let layout = Layout::new(vec![TensorSpec { name: "a".into(), shape: vec![1, 8] }]).unwrap();
        let grid = Compression::uniform(64, 1, ValueEncoding::Sign).grids(&layout)[0];
        let basis = verify::dct::Basis::new(8);
        let row: Vec<f32> = basis.row(3).iter().map(|d| 0.5 * d).collect();
        let mut e = Tensor::from_slice(&row).reshape([1, 8]);
        let mut bases = Bases::cpu();
        let sent =
            LocoPeer::compress(&mut e, (&grid, Transform::Dct), (1, TwoBitScale::Max), &mut bases, None).unwrap();
        let sent: Vec<f32> = Vec::try_from(sent.reshape([-1])).unwrap();
        for (a, b) in sent.iter().zip(&row) {
            assert!((a - b).abs() < 1e-6, "{sent:?} vs {row:?}");
        }
        let rest: Vec<f32> = Vec::try_from(e.reshape([-1])).unwrap();
        assert!(rest.iter().all(|r| r.abs() < 1e-6), "{rest:?}");
        // In the entries' domain one kept entry leaves the other seven behind.
        let mut e = Tensor::from_slice(&row).reshape([1, 8]);
        let _ =
            LocoPeer::compress(&mut e, (&grid, Transform::Identity), (1, TwoBitScale::Max), &mut Bases::cpu(), None)
                .unwrap();
        let rest: Vec<f32> = Vec::try_from(e.reshape([-1])).unwrap();
        assert_eq!(rest.iter().filter(|r| r.abs() > 1e-3).count(), 7, "{rest:?}");
    }

    #[test]
    fn every_peer_lowers_the_loss_on_the_synthetic_corpus() {
        crate::set_torch_threads(1);
        let config = ModelConfig { layers: 2, ..ModelConfig::preset(Preset::Tiny) };
        let data = Dataset::synthetic(MarkovSpec::default(), 5, 32, 16).unwrap();
        let eval = data.batch(&data.eval_indices(16), Device::Cpu).unwrap();
        let state = init_state(&config, 5).unwrap();
        let step = StepConfig { micro_batch: 8, clip_norm: Some(1.0) };
        let steps = 12;
        let schedule = Schedule::Constant { lr: Ratio::new(3, 1000) };
        let inner = AdamWConfig { schedule, step, ..AdamWConfig::default() };
        let demo = |values| DemoPeerConfig {
            workers: 2,
            chunk: 64,
            topk: 8,
            values,
            schedule,
            weight_decay: 0.0,
            momentum_decay: 0.9,
            step,
        };
        let loco =
            |outer| LocoConfig { workers: 2, h: 4, total_steps: steps, inner, outer_lr: 1.0, momentum: 0.0, outer };
        let mut methods: Vec<(&str, Box<dyn Method>)> = vec![
            ("demo-ref", Box::new(DemoPeer::new(&config, &state, demo(PeerValues::F32), Device::Cpu).unwrap())),
            ("demo-sign", Box::new(DemoPeer::new(&config, &state, demo(PeerValues::Sign), Device::Cpu).unwrap())),
            (
                "sparseloco",
                Box::new(
                    LocoPeer::new(
                        &config,
                        &state,
                        loco(Outer::SparseLoco {
                            chunk: 64,
                            topk: 64,
                            ef_decay: 0.95,
                            transform: Transform::Identity,
                            scale: TwoBitScale::Max,
                            shared: false,
                        }),
                        Device::Cpu,
                    )
                    .unwrap(),
                ),
            ),
            (
                "diloco",
                Box::new(
                    LocoPeer::new(&config, &state, LocoConfig { momentum: 0.9, ..loco(Outer::Diloco) }, Device::Cpu)
                        .unwrap(),
                ),
            ),
        ];
        for (name, method) in &mut methods {
            let before = eval_loss(method.model(), &eval, 16).unwrap();
            for s in 0..steps {
                let batch = global_batch(&data, Round(s), 8, Device::Cpu).unwrap();
                let loss = method.step(Round(s), &batch).unwrap();
                assert!(loss.is_finite());
            }
            let after = eval_loss(method.model(), &eval, 16).unwrap();
            assert!(after < before - 0.1, "{name}: eval loss {before} -> {after}");
        }
        // DiLoCo sends the whole model in f32 every H = 4 steps.
        let diloco = &methods[3].1;
        assert_eq!(diloco.bytes_per_step(), (4 * diloco.model().parameter_count()) as f64 / 4.0);
    }

    /// cairn's consensus path with local steps (identity transform, two-bit values, the linear
    /// rule at rate 1, error feedback) is SparseLoCo's algorithm: fed the same batches, the two
    /// hold the same parameters to within float rounding after every round, at every top-k. So a
    /// difference between them in `cairn bench train` comes from what each keeps at equal bytes
    /// (cairn's Elias-Fano indices fit more coefficients), nothing else. The same holds when the
    /// outer rate rises (cairn's consensus schedule, SparseLoCo's research outer schedule).
    #[test]
    fn cairn_with_local_steps_is_sparseloco_at_the_same_top_k() {
        crate::set_torch_threads(1);
        let config = ModelConfig { layers: 2, ..ModelConfig::preset(Preset::Tiny) };
        let data = Dataset::synthetic(MarkovSpec::default(), 5, 32, 64).unwrap();
        let state = init_state(&config, 5).unwrap();
        let step = StepConfig { micro_batch: 8, clip_norm: Some(1.0) };
        let steps = 8;
        let inner_schedule = Schedule::Constant { lr: Ratio::new(6, 1000) };
        let inner = AdamWConfig { schedule: inner_schedule, step, weight_decay: 0.0, ..AdamWConfig::default() };
        // 1 for the first round (synchronised at step 3), then up to 2 at step 8: 1.75 at step 7.
        let rising = Schedule::WarmupStableDecay {
            peak: Ratio::new(1, 1),
            min: Ratio::new(2, 1),
            warmup_rounds: 0,
            decay_start: 4,
            total_rounds: 8,
        };
        assert_eq!((rising.lr_f64(Round(3)), rising.lr_f64(Round(7))), (1.0, 1.75));
        for (topk, outer_schedule) in [(10u16, None), (249, None), (10, Some(rising))] {
            let outer = Outer::SparseLoco {
                chunk: 64,
                topk,
                ef_decay: 0.95,
                transform: Transform::Identity,
                scale: TwoBitScale::Max,
                shared: false,
            };
            let loco = LocoConfig { workers: 2, h: 4, total_steps: steps, inner, outer_lr: 1.0, momentum: 0.0, outer };
            let mut sparseloco = LocoPeer::new(&config, &state, loco, Device::Cpu).unwrap();
            if let Some(schedule) = outer_schedule {
                sparseloco = sparseloco.with_outer_schedule(schedule);
            }
            let mut compression = verify::Compression::uniform(64, topk, ValueEncoding::TwoBit);
            compression.transform = Transform::Identity;
            compression.indices = verify::IndexCoding::EliasFano;
            let hyper = verify::Hyper {
                compression,
                schedule: outer_schedule.unwrap_or(Schedule::Constant { lr: Ratio::new(1, 1) }),
                weight_decay: Ratio::new(0, 1),
                clip: verify::NormClip::Off,
                step: verify::StepRule::Linear,
            };
            let mut cairn = LocalSwarm::new(&config, &state, 2, 4, steps, inner, hyper, 0.95, Device::Cpu)
                .unwrap()
                .with_two_bit_scale(verify::encode::TwoBitScale::Max);
            for s in 0..steps {
                let batch = global_batch(&data, Round(s), 8, Device::Cpu).unwrap();
                sparseloco.step(Round(s), &batch).unwrap();
                cairn.step(Round(s), &batch).unwrap();
                let (mut worst, mut moved) = (0f64, 0f64);
                let start = Model::from_state(&config, &state, Device::Cpu).unwrap();
                for ((a, b), p0) in sparseloco.model().params().iter().zip(cairn.model().params()).zip(start.params()) {
                    worst = worst.max(f64::try_from(a.f_sub(b).unwrap().abs().max()).unwrap());
                    moved = moved.max(f64::try_from(a.f_sub(p0).unwrap().abs().max()).unwrap());
                }
                assert!(worst <= 1e-6, "top-k {topk}, step {s}: the two differ by {worst}");
                if (s + 1) % 4 == 0 {
                    assert!(moved > 1e-3, "top-k {topk}, step {s}: a round moved the model ({moved})");
                }
            }
        }
    }
}
