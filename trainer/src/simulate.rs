//! In-process simulation of a cairn run against the data-parallel AdamW baseline, on the same tokens.
//!
//! ```text
//!   round r:  global batch B_r = data.assignment(r, SIM_BATCH_KEY, n)           [n, T + 1]
//!     │
//!     ├─▶ Baseline: AdamW::step(model_b, B_r)     (what all-reduce data parallelism computes)
//!     │
//!     └─▶ Swarm:  B_r split into N contiguous shards (sizes differ by at most 1)
//!           for worker i = 0..N (in order):
//!             g_i = local_step(model_c, shard_i)                 gradients at the shared state
//!             demo_i.accumulate(g_i, decay, lr = 1)              m_i = decay*m_i + g_i
//!             u_i = demo_i.encode(header{round r, base = hash(state)})   DCT top-k, error feedback
//!             bytes_i = u_i.to_bytes();  u_i' = verify::decode(bytes_i, expected)   (the wire)
//!           verify::apply(state, r, [u_0' .. u_N-1'], hyper)     the consensus rule, bit-exact
//!           model_c.load_state(state)                            next round starts from it
//! ```
//!
//! The inner learning rate of the momentum is 1: with sign values the step size is the aggregation's
//! schedule alone (top-k selection, error feedback and the sign are all invariant to a common scale).

pub use tch::Device;
use tch::Tensor;
use verify::aggregate::direction;
use verify::wire::encoded_len;
use verify::{Header, Hyper, Layout, Round, RunId, State, StateHash, Update, WorkerKey, apply, decode};

use crate::data::Dataset;
use crate::demo::{DemoState, tensors_to_host};
use crate::error::TrainerError;
use crate::model::{Model, ModelConfig};
use crate::peers::Method;
use crate::step::{AdamW, AdamWConfig, StepConfig, StepStats, local_step};

/// The key whose data assignment is a simulation's global batch (no real worker has it).
pub const SIM_BATCH_KEY: WorkerKey = WorkerKey([0xba; 32]);

/// The run id the simulated workers sign their headers with.
pub const SIM_RUN: RunId = RunId([0x51; 32]);

/// The global batch of `round`: `sequences` train sequences, the same for baseline and swarm.
pub fn global_batch(data: &Dataset, round: Round, sequences: usize, device: Device) -> Result<Tensor, TrainerError> {
    data.batch(&data.assignment(round, &SIM_BATCH_KEY, sequences), device)
}

/// Splits `batch` (`[n, T + 1]`) into `workers` contiguous shards whose sizes differ by at most one
/// row, in order; every shard has at least one row.
pub fn shards(batch: &Tensor, workers: usize) -> Result<Vec<Tensor>, TrainerError> {
    let n = batch.size().first().copied().unwrap_or(0);
    let w = i64::try_from(workers).unwrap_or(i64::MAX);
    if w == 0 || n < w {
        return Err(TrainerError::InvalidConfig(format!("{n} sequences cannot be shared by {workers} workers")));
    }
    let mut out = Vec::with_capacity(workers);
    let mut start = 0;
    for i in 0..w {
        let rows = n / w + i64::from(i < n % w);
        out.push(batch.f_narrow(0, start, rows)?);
        start += rows;
    }
    Ok(out)
}

/// Simulated worker `i`'s key.
pub fn worker_key(i: usize) -> WorkerKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    k[31] = 0x57;
    WorkerKey(k)
}

/// Simulated worker `i`'s update of `round` on `base`: its momentum encoded into the wire format
/// (with error feedback), serialised and decoded as a receiver would; and its size in bytes.
pub fn simulated_update(
    demo: &mut DemoState,
    layout: &Layout,
    round: Round,
    base: StateHash,
    i: usize,
    compression: verify::Compression,
) -> Result<(Update, u64), TrainerError> {
    let header = Header { run: SIM_RUN, round, base, worker: worker_key(i), layout: layout.hash(), compression };
    let blob = demo.encode(&header, layout)?.to_bytes();
    Ok((decode(&blob, &header.expected(layout))?, blob.len() as u64))
}

/// Full-batch AdamW on its own copy of the model.
#[derive(Debug)]
pub struct Baseline {
    model: Model,
    opt: AdamW,
}

impl Baseline {
    /// The baseline starting from `state` on `device`.
    pub fn new(
        config: &ModelConfig,
        state: &State,
        adamw: AdamWConfig,
        device: Device,
    ) -> Result<Baseline, TrainerError> {
        let model = Model::from_state(config, state, device)?;
        let opt = AdamW::new(&model, adamw)?;
        Ok(Baseline { model, opt })
    }

    /// One AdamW step on the whole global batch.
    pub fn step(&mut self, batch: &Tensor) -> Result<StepStats, TrainerError> {
        self.opt.step(&self.model, batch)
    }

    /// The model (for evaluation).
    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// How the swarm trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwarmConfig {
    /// Simulated workers (at least 1).
    pub workers: usize,
    /// The run's aggregation hyperparameters (compression, sign-step schedule, weight decay, clipping).
    pub hyper: Hyper,
    /// DeMo momentum decay.
    pub momentum_decay: f64,
    /// Micro-batching and gradient clipping of each worker's local step.
    pub step: StepConfig,
}

/// What one swarm round did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundStats {
    /// Mean over workers of their shard's loss, before the update.
    pub loss: f64,
    /// Bytes each worker uploaded (the serialised update; equal for every worker).
    pub bytes_per_worker: u64,
    /// Hash of the state after the round.
    pub state: StateHash,
}

/// Research knobs of `cairn bench train` that leave the consensus rule (none are consensus: a real
/// run always uses `verify::apply`). The default is the real rule with no diagnostics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Experiment {
    /// Replace `sign(X)` of the aggregation by the linear step `lr * X / rms(X)` per tensor (same
    /// RMS step size as the sign, but small directions stay small).
    pub linear: bool,
    /// Layout indices of tensors that bypass DeMo: they take a dense signum step, `lr * sign(m)`,
    /// `m = 0.9 m + mean of the workers' gradients` (the workers still encode them; it is discarded).
    pub dense: Vec<usize>,
    /// Collect [`Diagnostics`] every round (costs one extra aggregation pass and host copies).
    pub diagnostics: bool,
}

/// Sums over rounds of per-round measurements; see [`Swarm::take_diagnostics`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnostics {
    /// Rounds summed.
    pub rounds: u64,
    /// cos(applied step, -mean gradient of the workers), all tensors.
    pub cos_step_grad: f64,
    /// cos(sign(mean gradient), mean gradient): what a dense sign step of the same gradient achieves.
    pub cos_signgrad_grad: f64,
    /// Fraction of elements whose aggregated direction X is exactly 0 (they do not move).
    pub zero_fraction: f64,
    /// cos(applied step, -mean gradient) restricted to `lm_head.weight` and `model.embed_tokens.weight`.
    pub cos_step_grad_vocab: f64,
    /// cos(applied step, -mean gradient) over the other tensors.
    pub cos_step_grad_rest: f64,
}

/// Mean pairwise cosine between the rows `rows` of `model.embed_tokens.weight` in `state` (1: every
/// token looks the same to the first RMSNorm; near 0 at init). `None` without that tensor or with
/// fewer than two valid rows.
pub fn embedding_coherence(state: &State, rows: &[usize]) -> Option<f64> {
    let t = state.layout().position(crate::model::EMBEDDING)?;
    let spec = &state.layout().tensors()[t];
    let (n_rows, dim) = (*spec.shape.first()? as usize, *spec.shape.get(1)? as usize);
    let data = &state.data()[t];
    let mut sum = vec![0.0f64; dim];
    let mut n = 0usize;
    for &r in rows.iter().filter(|&&r| r < n_rows) {
        let row = &data[r * dim..(r + 1) * dim];
        let norm = dot(row, row).sqrt();
        if norm > 0.0 {
            sum.iter_mut().zip(row).for_each(|(s, &x)| *s += f64::from(x) / norm);
            n += 1;
        }
    }
    if n < 2 {
        return None;
    }
    let total: f64 = sum.iter().map(|x| x * x).sum();
    Some((total - n as f64) / (n * (n - 1)) as f64)
}

/// N simulated workers sharing one verify state; see the module docs.
#[derive(Debug)]
pub struct Swarm {
    config: SwarmConfig,
    model: Model,
    state: State,
    demo: Vec<DemoState>,
    experiment: Experiment,
    dense_momentum: Vec<Vec<f32>>,
    diagnostics: Diagnostics,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// cos between the concatenations of `a[t]` and `b[t]` over the tensors `t` that `keep` accepts.
fn cosine(a: &[Vec<f32>], b: &[Vec<f32>], keep: impl Fn(usize) -> bool) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (t, (x, y)) in a.iter().zip(b).enumerate() {
        if keep(t) {
            ab += dot(x, y);
            aa += dot(x, x);
            bb += dot(y, y);
        }
    }
    if aa > 0.0 && bb > 0.0 { ab / (aa.sqrt() * bb.sqrt()) } else { 0.0 }
}

impl Swarm {
    /// The swarm starting from `state` on `device`, every worker with zero momentum.
    pub fn new(model: &ModelConfig, state: State, config: SwarmConfig, device: Device) -> Result<Swarm, TrainerError> {
        config.hyper.validate()?;
        if config.workers == 0 || !(0.0..=1.0).contains(&config.momentum_decay) {
            return Err(TrainerError::InvalidConfig(format!(
                "swarm needs workers >= 1 and decay in [0, 1]: {config:?}"
            )));
        }
        let m = Model::from_state(model, &state, device)?;
        let demo = (0..config.workers).map(|_| DemoState::new(m.layout(), device)).collect::<Result<_, _>>()?;
        Ok(Swarm {
            config,
            model: m,
            state,
            demo,
            experiment: Experiment::default(),
            dense_momentum: Vec::new(),
            diagnostics: Diagnostics::default(),
        })
    }

    /// Sets the research knobs (not consensus; see [`Experiment`]).
    pub fn set_experiment(&mut self, experiment: Experiment) {
        self.dense_momentum = self.state.layout().tensors().iter().map(|t| vec![0.0; t.elements() as usize]).collect();
        self.experiment = experiment;
    }

    /// The diagnostics summed since the last call, and resets them.
    pub fn take_diagnostics(&mut self) -> Diagnostics {
        std::mem::take(&mut self.diagnostics)
    }

    /// Bytes of one worker's update for this layout and compression.
    pub fn update_bytes(&self) -> u64 {
        encoded_len(self.state.layout(), &self.config.hyper.compression)
    }

    /// One round on `batch` (the global batch, split between the workers).
    pub fn round(&mut self, round: Round, batch: &Tensor) -> Result<RoundStats, TrainerError> {
        let shards = shards(batch, self.config.workers)?;
        let layout: Layout = self.state.layout().clone();
        let base = self.state.hash();
        let mut updates: Vec<Update> = Vec::with_capacity(shards.len());
        let mut loss = 0.0;
        let mut bytes = 0u64;
        let exp = self.experiment.clone();
        let need_grads = exp.diagnostics || !exp.dense.is_empty();
        let mut grad_sum: Vec<Vec<f32>> = Vec::new();
        for (i, (shard, demo)) in shards.iter().zip(&mut self.demo).enumerate() {
            let g = local_step(&self.model, shard, &self.config.step)?;
            loss += g.loss;
            if need_grads {
                let host = tensors_to_host(&g.grads)?;
                if grad_sum.is_empty() {
                    grad_sum = host;
                } else {
                    for (s, h) in grad_sum.iter_mut().zip(&host) {
                        s.iter_mut().zip(h).for_each(|(s, h)| *s += h);
                    }
                }
            }
            demo.accumulate(&g.grads, &layout, self.config.momentum_decay, 1.0)?;
            let (update, size) = simulated_update(demo, &layout, round, base, i, self.config.hyper.compression)?;
            bytes = size;
            updates.push(update);
        }
        let before: Vec<Vec<f32>> = if need_grads { self.state.data().to_vec() } else { Vec::new() };
        let hyper = &self.config.hyper;
        let lr = hyper.schedule.lr(round);
        let decay = 1.0f32 - lr * (hyper.weight_decay.to_f64() as f32);
        let dir = if exp.linear || exp.diagnostics { Some(direction(&layout, round, &updates, hyper)?) } else { None };
        match (&dir, exp.linear) {
            (Some(dir), true) => {
                for (p, x) in self.state.data_mut().iter_mut().zip(dir) {
                    let rms = (dot(x, x) / x.len().max(1) as f64).sqrt();
                    let scale = if rms > 0.0 { f64::from(lr) / rms } else { 0.0 };
                    p.iter_mut().zip(x).for_each(|(p, &x)| *p = *p * decay - (f64::from(x) * scale) as f32);
                }
            }
            _ => apply(&mut self.state, round, &updates, hyper)?,
        }
        let n = shards.len() as f32;
        for &t in &exp.dense {
            let m = &mut self.dense_momentum[t];
            let p = &mut self.state.data_mut()[t];
            for (((m, p), &b), &g) in m.iter_mut().zip(p.iter_mut()).zip(&before[t]).zip(&grad_sum[t]) {
                *m = 0.9 * *m + g / n;
                let s = if *m > 0.0 {
                    1.0
                } else if *m < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                *p = b * decay - lr * s;
            }
        }
        if exp.diagnostics {
            let vocab = |t: usize| crate::model::is_vocab(&layout.tensors()[t].name);
            let step: Vec<Vec<f32>> = self
                .state
                .data()
                .iter()
                .zip(&before)
                .map(|(a, b)| a.iter().zip(b).map(|(a, b)| b - a).collect())
                .collect();
            let signs: Vec<Vec<f32>> = grad_sum.iter().map(|g| g.iter().map(|&x| x.signum()).collect()).collect();
            let d = &mut self.diagnostics;
            d.rounds += 1;
            d.cos_step_grad += cosine(&step, &grad_sum, |_| true);
            d.cos_step_grad_vocab += cosine(&step, &grad_sum, vocab);
            d.cos_step_grad_rest += cosine(&step, &grad_sum, |t| !vocab(t));
            d.cos_signgrad_grad += cosine(&signs, &grad_sum, |_| true);
            if let Some(dir) = &dir {
                let total: usize = dir.iter().map(Vec::len).sum();
                let zeros: usize = dir.iter().map(|x| x.iter().filter(|&&x| x == 0.0).count()).sum();
                d.zero_fraction += zeros as f64 / total.max(1) as f64;
            }
        }
        self.model.load_state(&self.state)?;
        Ok(RoundStats { loss: loss / shards.len() as f64, bytes_per_worker: bytes, state: self.state.hash() })
    }

    /// The model holding the current state (for evaluation).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The current consensus state.
    pub fn state(&self) -> &State {
        &self.state
    }
}

/// The baseline as a [`Method`]: what all-reduce data parallelism uploads is the dense f32 gradient.
impl Method for Baseline {
    fn step(&mut self, _step: Round, batch: &Tensor) -> Result<f64, TrainerError> {
        Ok(Baseline::step(self, batch)?.loss)
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn bytes_per_step(&self) -> f64 {
        (4 * self.model.parameter_count()) as f64
    }
}

/// cairn's consensus method as a [`Method`]: one round per step, the real wire size.
impl Method for Swarm {
    fn step(&mut self, step: Round, batch: &Tensor) -> Result<f64, TrainerError> {
        Ok(self.round(step, batch)?.loss)
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn bytes_per_step(&self) -> f64 {
        self.update_bytes() as f64
    }
}

#[cfg(test)]
mod tests {
    use verify::{Compression, NormClip, Ratio, Schedule, ValueEncoding};

    use super::*;
    use crate::data::MarkovSpec;
    use crate::model::{Preset, init_state};
    use crate::step::eval_loss;

    #[test]
    fn shards_cover_the_batch_in_order() {
        let batch = Tensor::arange(7 * 3, (tch::Kind::Int64, Device::Cpu)).reshape([7, 3]);
        let s = shards(&batch, 3).unwrap();
        assert_eq!(s.iter().map(|t| t.size()[0]).collect::<Vec<_>>(), vec![3, 2, 2]);
        assert!(Tensor::cat(&s, 0).equal(&batch));
        assert!(shards(&batch, 8).is_err());
        assert!(shards(&batch, 0).is_err());
    }

    #[test]
    fn swarm_rounds_are_deterministic_and_lower_the_loss() {
        crate::set_torch_threads(1);
        let config = ModelConfig { layers: 2, ..ModelConfig::preset(Preset::Tiny) };
        let data = Dataset::synthetic(MarkovSpec::default(), 3, 32, 16).unwrap();
        let eval = data.batch(&data.eval_indices(16), Device::Cpu).unwrap();
        let swarm_config = SwarmConfig {
            workers: 2,
            hyper: Hyper {
                compression: Compression::uniform(64, 4, ValueEncoding::Sign),
                schedule: Schedule::Constant { lr: Ratio::new(3, 1000) },
                weight_decay: Ratio::new(0, 1),
                clip: NormClip::Off,
                step: verify::StepRule::Sign,
            },
            momentum_decay: 0.9,
            step: StepConfig { micro_batch: 8, clip_norm: Some(1.0) },
        };
        let run = || {
            let mut swarm = Swarm::new(&config, init_state(&config, 3).unwrap(), swarm_config, Device::Cpu).unwrap();
            let before = eval_loss(swarm.model(), &eval, 16).unwrap();
            let mut last = None;
            for r in 0..12 {
                let batch = global_batch(&data, Round(r), 8, Device::Cpu).unwrap();
                let stats = swarm.round(Round(r), &batch).unwrap();
                assert_eq!(stats.bytes_per_worker, swarm.update_bytes());
                last = Some(stats.state);
            }
            (before, eval_loss(swarm.model(), &eval, 16).unwrap(), last.unwrap())
        };
        let (before, after, hash) = run();
        assert!(after < before, "swarm eval loss {before} -> {after}");
        // Same seed, same tokens: the same consensus state, bit for bit.
        assert_eq!(run().2, hash);
    }
}
