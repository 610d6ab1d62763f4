//! Held-out evaluations of final rounds: the mean next-token loss of a round's state over the
//! first [`EVAL_SEQUENCES`] held-out sequences of the run's data ([`Dataset::eval_indices`]),
//! signed into the ledger as an `Evaluation` entry (docs/LEDGER.md). Validators write one for
//! each round they see become final; `cairn eval` writes one for the newest final round, or only
//! prints it (anyone can recompute the curve).
//!
//! The loss is computed in f32 by libtorch: two machines agree to a few parts in a million, not
//! bit for bit, which is why an evaluation decides nothing in the round rule.

use ledger::{Body, Entry, Evaluation, Keypair};
use tch::{Device, Tensor};

use crate::TrainerError;
use crate::data::Dataset;
use crate::follow::Follower;
use crate::model::Model;
use crate::score::milli_nats;
use crate::step::eval_loss;

/// Held-out sequences an evaluation covers (fewer when the held-out set is smaller).
pub const EVAL_SEQUENCES: usize = 64;

/// The fixed held-out batch of a run: its first [`EVAL_SEQUENCES`] held-out sequences.
pub struct HeldOut {
    batch: Tensor,
    sequences: u32,
    micro_batch: usize,
}

impl HeldOut {
    /// The run's held-out batch, on `device`.
    pub fn new(data: &Dataset, micro_batch: usize, device: Device) -> Result<HeldOut, TrainerError> {
        let indices = data.eval_indices(EVAL_SEQUENCES);
        if indices.is_empty() {
            return Err(TrainerError::InvalidConfig("the run's data has no held-out sequences to evaluate".into()));
        }
        let sequences = u32::try_from(indices.len()).unwrap_or(u32::MAX);
        Ok(HeldOut { batch: data.batch(&indices, device)?, sequences, micro_batch })
    }

    /// Held-out sequences in the batch.
    pub fn sequences(&self) -> u32 {
        self.sequences
    }

    /// The loss of `model` (in nats).
    pub fn loss(&self, model: &Model) -> Result<f64, TrainerError> {
        eval_loss(model, &self.batch, self.micro_batch)
    }
}

/// The evaluation of the follower's state, which must be the result of its newest final round;
/// `None` before any round is final. `model` is loaded with the state.
pub fn evaluate_latest(
    follower: &Follower,
    model: &mut Model,
    held_out: &HeldOut,
) -> Result<Option<Evaluation>, TrainerError> {
    let Some(round) = follower.round().0.checked_sub(1) else { return Ok(None) };
    model.load_state(follower.state())?;
    let loss = held_out.loss(model)?;
    Ok(Some(Evaluation {
        round: ledger::Round(round),
        state: ledger::StateHash(follower.state_hash().0),
        sequences: held_out.sequences(),
        loss_milli: milli_nats(loss),
    }))
}

/// Whether `key` already has an accepted evaluation of `round` in the ledger.
pub fn has_evaluated(follower: &Follower, key: &ledger::PublicKey, round: ledger::Round) -> bool {
    follower.reader().by_signer(key).any(|e| {
        e.validity.is_accept()
            && matches!(e.entry.as_ref().map(|x| &x.body), Some(Body::Evaluation(ev)) if ev.round == round)
    })
}

/// Signs and appends `evaluation`.
pub async fn append_evaluation(
    follower: &mut Follower,
    key: &Keypair,
    evaluation: Evaluation,
) -> Result<ledger::Seq, TrainerError> {
    let run = follower.info().run_id;
    follower.append(Entry::sign(run, Body::Evaluation(evaluation), &[key])?).await
}
