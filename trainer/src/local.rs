//! Local steps: a worker takes several AdamW steps on its own copy between two rounds, and its
//! update encodes the pseudo-gradient (how far it moved) instead of one gradient.
//!
//! ```text
//!   round r, consensus state θ (the follower's, bit-exact)
//!     local copy θ_w = θ;  the round's assigned sequences split into H parts in order
//!     for each part:  one AdamW step on θ_w at  inner_lr · lr(r) / peak   (the run's schedule shape)
//!                     or at its own schedule's rate (train.inner_min_lr: TrainSpec::inner_schedule)
//!     Δ = θ - θ_w                    ─▶ DeMo momentum  m = β m + Δ  ─▶ encode as any update
//! ```
//!
//! Nothing here is consensus: the aggregation, wire format and round rule are the same whether a
//! worker took one step or H. With the linear step rule (docs/FORMAT.md 5.3) the round applies the
//! mean of the workers' encoded Δ at the run's rate (about 1): SparseLoCo's outer step. The inner optimiser's moments live in memory and carry over from
//! round to round; a restarted worker starts them at zero (its DeMo momentum is saved as always).
//! `cairn bench train --peers cairn-local` measures the same procedure with one part per step
//! ([`crate::peers::LocalSwarm`]).

use tch::{Device, Tensor};
use verify::State;

use crate::error::TrainerError;
use crate::model::{Model, ModelConfig};
use crate::step::{AdamW, AdamWConfig};

/// A worker's local copy and its inner AdamW.
#[derive(Debug)]
pub struct LocalSteps {
    model: Model,
    opt: AdamW,
}

impl LocalSteps {
    /// A copy of `state` on `device` with a fresh AdamW (`inner`: its betas, decay, clipping and
    /// micro-batching; the rate is given at each step).
    pub fn new(config: &ModelConfig, state: &State, inner: AdamWConfig, device: Device) -> Result<Self, TrainerError> {
        let model = Model::from_state(config, state, device)?;
        let opt = AdamW::new(&model, inner)?;
        Ok(LocalSteps { model, opt })
    }

    /// The local passes' arithmetic (f32, or bf16 matrix products on a GPU).
    pub fn with_precision(mut self, precision: crate::model::Precision) -> LocalSteps {
        self.model = self.model.with_precision(precision);
        self
    }

    /// Sets the local copy to `global`'s parameters (the consensus state, on any device).
    pub fn reset(&mut self, global: &Model) -> Result<(), TrainerError> {
        tch::no_grad(|| {
            for (l, g) in self.model.params().iter().zip(global.params()) {
                l.shallow_clone().f_copy_(g)?;
            }
            Ok(())
        })
    }

    /// One AdamW step on `batch` at rate `lr`; the mean loss before it.
    pub fn step(&mut self, batch: &Tensor, lr: f64) -> Result<f64, TrainerError> {
        Ok(self.opt.step_at(&self.model, batch, lr)?.loss)
    }

    /// The pseudo-gradient `global - local`, layout order.
    pub fn delta(&self, global: &Model) -> Result<Vec<Tensor>, TrainerError> {
        tch::no_grad(|| global.params().iter().zip(self.model.params()).map(|(g, l)| Ok(g.f_sub(l)?)).collect())
    }

    /// The local copy.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// `global` trained `parts.len()` local steps from its parameters, one per part, at `lr`: the
/// pseudo-gradient and the mean loss. `local` is reset to `global` first.
pub fn pseudo_gradient(
    local: &mut LocalSteps,
    global: &Model,
    parts: &[Tensor],
    lr: f64,
) -> Result<(Vec<Tensor>, f64), TrainerError> {
    local.reset(global)?;
    let mut loss = 0.0;
    for part in parts {
        loss += local.step(part, lr)?;
    }
    Ok((local.delta(global)?, loss / parts.len().max(1) as f64))
}

#[cfg(test)]
mod tests {
    use verify::Round;

    use super::*;
    use crate::data::{Dataset, MarkovSpec};
    use crate::model::{Preset, init_state};
    use crate::step::{StepConfig, local_step};

    #[test]
    fn one_local_step_moves_each_weight_by_the_rate_against_its_gradient_and_reset_returns_home() {
        crate::set_torch_threads(1);
        let config = ModelConfig { layers: 1, ..ModelConfig::preset(Preset::Tiny) };
        let state = init_state(&config, 2).unwrap();
        let global = Model::from_state(&config, &state, Device::Cpu).unwrap();
        let data = Dataset::synthetic(MarkovSpec::default(), 2, 32, 8).unwrap();
        let batch = data.batch(&data.assignment(Round(0), &verify::WorkerKey([1; 32]), 8), Device::Cpu).unwrap();
        let step = StepConfig { micro_batch: 8, clip_norm: None };
        let inner = AdamWConfig { weight_decay: 0.0, step, ..AdamWConfig::default() };
        let mut local = LocalSteps::new(&config, &state, inner, Device::Cpu).unwrap();
        let lr = 1e-3;
        let (delta, loss) = pseudo_gradient(&mut local, &global, std::slice::from_ref(&batch), lr).unwrap();
        let g = local_step(&global, &batch, &step).unwrap();
        assert!((loss - g.loss).abs() < 1e-6, "the loss before the step: {loss} vs {}", g.loss);
        // AdamW's first step (bias-corrected) is lr * g / (|g| + eps): lr * sign(g) wherever |g| >> eps.
        let (mut checked, mut off) = (0usize, 0usize);
        for (d, g) in delta.iter().zip(&g.grads) {
            let d: Vec<f32> = Vec::try_from(d.reshape([-1])).unwrap();
            let g: Vec<f32> = Vec::try_from(g.reshape([-1])).unwrap();
            for (d, g) in d.iter().zip(&g) {
                if g.abs() > 1e-5 {
                    checked += 1;
                    if (f64::from(*d) - lr * f64::from(g.signum())).abs() > 1e-6 {
                        off += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000 && off == 0, "{off} of {checked} weights moved otherwise");
        // The global model did not move; reset brings the copy back to it.
        assert_eq!(global.to_state().unwrap().hash(), state.hash());
        local.reset(&global).unwrap();
        assert_eq!(local.model().to_state().unwrap().hash(), state.hash());
    }
}
