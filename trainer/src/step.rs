//! Local training steps: gradients over a round's tokens, and the AdamW baseline.
//!
//! ```text
//!   batch [N, T + 1]  (the round's sequences: N = sequences_for_tokens(tokens_per_round, T))
//!     │  split into micro-batches of `micro_batch` sequences (gradient accumulation: a slow machine
//!     ▼  and a fast one compute the same sum, in more or fewer passes)
//!   for each micro-batch m:  loss_m = mean CE over its targets;  backward(loss_m · |m| / N)
//!     │  ⇒ param.grad = ∇ (mean CE over all N·T targets)
//!     ▼
//!   total norm ‖g‖ over all tensors; if ‖g‖ > clip: g ← g · clip / (‖g‖ + 1e-6)
//!     │
//!     ├─▶ local_step: copies of the gradients in layout order ─▶ DeMo (trainer::demo::DemoState)
//!     └─▶ AdamW::step: tch's AdamW (decoupled weight decay; none on RMSNorm weights) updates in place
//! ```
//!
//! The returned loss is the mean over the batch before the update. A NaN or infinite loss or
//! gradient norm is an error ([`TrainerError::Diverged`]), never a silent update.

use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};
use verify::{Ratio, Round, Schedule};

use crate::error::TrainerError;
use crate::model::Model;

/// How a round's batch is processed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepConfig {
    /// Sequences per forward/backward pass (memory bound); the batch is split into such passes.
    pub micro_batch: usize,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub clip_norm: Option<f64>,
}

impl Default for StepConfig {
    /// Micro-batches of 8 sequences, clipping at 1.0.
    fn default() -> StepConfig {
        StepConfig { micro_batch: 8, clip_norm: Some(1.0) }
    }
}

/// What a local step produced.
#[derive(Debug)]
pub struct Gradients {
    /// One gradient per parameter, in the model's layout order, on the model's device (f32).
    pub grads: Vec<Tensor>,
    /// Mean cross-entropy (nats) over the batch's targets, before any update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens the gradients cover.
    pub tokens: u64,
}

/// Statistics of one optimiser step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy (nats) over the batch, before the update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Target tokens in the batch.
    pub tokens: u64,
    /// Learning rate used.
    pub lr: f64,
}

/// Rows of a batch `[N, T + 1]`, checked.
fn batch_rows(batch: &Tensor) -> Result<(i64, i64), TrainerError> {
    match batch.size()[..] {
        [n, len] if n >= 1 && len >= 2 => Ok((n, len - 1)),
        ref s => Err(TrainerError::InvalidConfig(format!("a batch is [sequences >= 1, T + 1 >= 2], got {s:?}"))),
    }
}

/// Leaves the clipped gradient of the batch's mean loss in every parameter's `.grad`; returns
/// (loss, norm before clipping).
fn accumulate(model: &Model, batch: &Tensor, config: &StepConfig) -> Result<(f64, f64), TrainerError> {
    let (n, _) = batch_rows(batch)?;
    if config.micro_batch == 0 {
        return Err(TrainerError::InvalidConfig("micro_batch must be at least 1".into()));
    }
    let micro = i64::try_from(config.micro_batch).unwrap_or(i64::MAX).min(n);
    for p in model.params() {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
    // The losses and norms stay on the device until all passes are queued: reading a value back
    // waits for the device, and one wait per step keeps a GPU busy.
    let mut losses = Vec::new();
    let mut start = 0;
    while start < n {
        let rows = micro.min(n - start);
        let loss = model.loss(&batch.f_narrow(0, start, rows)?)?;
        let weighted = loss.f_mul_scalar(rows as f64 / n as f64)?;
        weighted.f_backward()?;
        losses.push(weighted.f_detach()?.f_to_kind(Kind::Double)?);
        start += rows;
    }
    let loss = f64::try_from(Tensor::f_stack(&losses, 0)?.f_sum(Kind::Double)?)?;
    if !loss.is_finite() {
        return Err(TrainerError::Diverged { what: "loss" });
    }
    let norm = tch::no_grad(|| -> Result<f64, TrainerError> {
        let mut squares = Vec::new();
        for p in model.params() {
            let g = p.f_grad()?;
            if g.defined() {
                squares.push(g.f_norm()?.f_to_kind(Kind::Double)?.f_square()?);
            }
        }
        let norm = match squares.is_empty() {
            true => 0.0,
            false => f64::try_from(Tensor::f_stack(&squares, 0)?.f_sum(Kind::Double)?)?.sqrt(),
        };
        if !norm.is_finite() {
            return Err(TrainerError::Diverged { what: "gradient norm" });
        }
        if let Some(max) = config.clip_norm {
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                for p in model.params() {
                    let mut g = p.f_grad()?;
                    if g.defined() {
                        let _ = g.f_mul_scalar_(coef)?;
                    }
                }
            }
        }
        Ok(norm)
    })?;
    Ok((loss, norm))
}

/// Forward, backward and clipping over `batch` (`[N, T + 1]` token ids, any device), in
/// micro-batches; returns copies of the gradients for the DeMo encoder. The parameters are not
/// changed.
pub fn local_step(model: &Model, batch: &Tensor, config: &StepConfig) -> Result<Gradients, TrainerError> {
    let (n, t) = batch_rows(batch)?;
    let (loss, grad_norm) = accumulate(model, batch, config)?;
    let grads = tch::no_grad(|| {
        model
            .params()
            .iter()
            .map(|p| {
                let g = p.f_grad()?;
                Ok(if g.defined() { g.f_detach_copy()? } else { p.f_zeros_like()? })
            })
            .collect::<Result<Vec<_>, TrainerError>>()
    })?;
    Ok(Gradients { grads, loss, grad_norm, tokens: (n * t) as u64 })
}

/// Mean cross-entropy (nats) over `batch`'s targets, without gradients, `micro_batch` sequences at a
/// time.
pub fn eval_loss(model: &Model, batch: &Tensor, micro_batch: usize) -> Result<f64, TrainerError> {
    let (n, _) = batch_rows(batch)?;
    let micro = i64::try_from(micro_batch.max(1)).unwrap_or(i64::MAX).min(n);
    tch::no_grad(|| {
        let mut sum = 0.0;
        let mut start = 0;
        while start < n {
            let rows = micro.min(n - start);
            sum += f64::try_from(model.loss(&batch.f_narrow(0, start, rows)?)?)? * rows as f64;
            start += rows;
        }
        Ok(sum / n as f64)
    })
}

/// AdamW hyperparameters for the baseline (full-batch AdamW on the same tokens).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate of step `s`: the schedule's rate of round `s` (verify's rule, so a baseline and
    /// cairn's sign step can follow the same curve).
    pub schedule: Schedule,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Decoupled weight decay, applied to every tensor except RMSNorm weights.
    pub weight_decay: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Micro-batching and clipping.
    pub step: StepConfig,
}

impl Default for AdamWConfig {
    /// Constant lr 1e-3, betas (0.9, 0.95), weight decay 0.1, eps 1e-8, [`StepConfig::default`].
    fn default() -> AdamWConfig {
        AdamWConfig {
            schedule: Schedule::Constant { lr: Ratio::new(1, 1000) },
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.1,
            eps: 1e-8,
            step: StepConfig::default(),
        }
    }
}

/// tch's AdamW over a model's parameters.
#[derive(Debug)]
pub struct AdamW {
    opt: nn::Optimizer,
    config: AdamWConfig,
    steps: u64,
}

impl AdamW {
    /// An optimiser over `model`'s parameters (group 1, the RMSNorm weights, without weight decay).
    pub fn new(model: &Model, config: AdamWConfig) -> Result<AdamW, TrainerError> {
        let valid = config.schedule.validate().is_ok()
            && (0.0..1.0).contains(&config.beta1)
            && (0.0..1.0).contains(&config.beta2)
            && config.weight_decay >= 0.0
            && config.eps > 0.0;
        if !valid {
            return Err(TrainerError::InvalidConfig(format!("AdamW hyperparameters out of range: {config:?}")));
        }
        let adamw = nn::AdamW {
            beta1: config.beta1,
            beta2: config.beta2,
            wd: config.weight_decay,
            eps: config.eps,
            amsgrad: false,
        };
        let mut opt = adamw.build(model.var_store(), config.schedule.lr_f64(Round(0)))?;
        opt.set_weight_decay_group(1, 0.0);
        Ok(AdamW { opt, config, steps: 0 })
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One optimiser step on `batch` (`[N, T + 1]`): accumulate, clip, update the parameters, at
    /// the schedule's rate for the steps taken so far.
    pub fn step(&mut self, model: &Model, batch: &Tensor) -> Result<StepStats, TrainerError> {
        let lr = self.config.schedule.lr_f64(Round(self.steps));
        self.step_at(model, batch, lr)
    }

    /// One optimiser step at rate `lr` (whatever the schedule says).
    pub fn step_at(&mut self, model: &Model, batch: &Tensor, lr: f64) -> Result<StepStats, TrainerError> {
        let (n, t) = batch_rows(batch)?;
        let (loss, grad_norm) = accumulate(model, batch, &self.config.step)?;
        self.opt.set_lr(lr);
        self.opt.step();
        self.steps += 1;
        Ok(StepStats { loss, grad_norm, tokens: (n * t) as u64, lr })
    }
}

#[cfg(test)]
mod tests {
    use tch::Device;
    use verify::WorkerKey;

    use super::*;
    use crate::data::{Dataset, MarkovSpec};
    use crate::model::{ModelConfig, Preset};

    #[test]
    fn accumulation_matches_one_pass_and_clipping_bounds_the_norm() {
        crate::set_torch_threads(1);
        let config = ModelConfig { layers: 2, ..ModelConfig::preset(Preset::Tiny) };
        let model = Model::new(&config, 1, Device::Cpu).unwrap();
        let data = Dataset::synthetic(MarkovSpec::default(), 1, 32, 4).unwrap();
        let batch = data.batch(&data.assignment(Round(0), &WorkerKey([3; 32]), 6), Device::Cpu).unwrap();
        let one = local_step(&model, &batch, &StepConfig { micro_batch: 6, clip_norm: None }).unwrap();
        let split = local_step(&model, &batch, &StepConfig { micro_batch: 4, clip_norm: None }).unwrap();
        assert_eq!(one.tokens, 6 * 32);
        assert_eq!(one.grads.len(), model.layout().tensors().len());
        assert!((one.loss - split.loss).abs() < 1e-5, "{} vs {}", one.loss, split.loss);
        for (a, b) in one.grads.iter().zip(&split.grads) {
            assert_eq!(a.size(), b.size());
            assert!(a.allclose(b, 1e-4, 1e-6, false));
        }
        let clip = one.grad_norm / 4.0;
        let clipped = local_step(&model, &batch, &StepConfig { micro_batch: 3, clip_norm: Some(clip) }).unwrap();
        let norm: f64 = clipped.grads.iter().map(|g| f64::try_from(g.norm()).unwrap().powi(2)).sum::<f64>().sqrt();
        assert!((norm - clip).abs() < 1e-4 * clip, "clipped norm {norm}, want {clip}");
        assert!((clipped.grad_norm - one.grad_norm).abs() < 1e-4 * one.grad_norm);
        // The returned gradients are copies: later steps (which zero and clip `.grad`) leave them alone.
        let kept: f64 = one.grads.iter().map(|g| f64::try_from(g.norm()).unwrap().powi(2)).sum::<f64>().sqrt();
        assert!((kept - one.grad_norm).abs() < 1e-4 * one.grad_norm, "{kept} vs {}", one.grad_norm);
        // The parameters did not move.
        assert_eq!(model.to_state().unwrap().hash(), crate::model::init_state(&config, 1).unwrap().hash());
    }

    #[test]
    fn adamw_on_synthetic_corpus_drives_eval_loss_towards_the_floor() {
        crate::set_torch_threads(1);
        let config = ModelConfig::preset(Preset::Tiny);
        let model = Model::new(&config, 0, Device::Cpu).unwrap();
        let data = Dataset::synthetic(MarkovSpec::default(), 0, 64, 32).unwrap();
        let floor = data.loss_floor_nats().unwrap();
        let eval = data.batch(&data.eval_indices(32), Device::Cpu).unwrap();
        let before = eval_loss(&model, &eval, 16).unwrap();
        let mut opt = AdamW::new(
            &model,
            AdamWConfig {
                schedule: Schedule::WarmupCosine {
                    peak: Ratio::new(3, 1000),
                    min: Ratio::new(3, 1000),
                    warmup_rounds: 5,
                    total_rounds: STEPS,
                },
                step: StepConfig { micro_batch: 16, clip_norm: Some(1.0) },
                ..AdamWConfig::default()
            },
        )
        .unwrap();
        let worker = WorkerKey([7; 32]);
        for round in 0..STEPS {
            let batch = data.batch(&data.assignment(Round(round), &worker, 16), Device::Cpu).unwrap();
            opt.step(&model, &batch).unwrap();
        }
        let after = eval_loss(&model, &eval, 16).unwrap();
        eprintln!("eval loss {before:.4} -> {after:.4} after {STEPS} steps; floor {floor:.4}");
        assert!(after < 0.6 * before, "eval loss {before} -> {after}");
        assert!(after - floor < 0.5 * (before - floor), "eval loss {after}, floor {floor}");
    }

    const STEPS: u64 = 40;
}
