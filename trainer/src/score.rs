//! Validator scoring: is one contribution honest work on its assigned data? (the Templar approach)
//!
//! ```text
//!   blob ──verify::decode(Expected)──▶ Update          (NaN/Inf, bad indices: typed rejection here)
//!                                        │ values finite? (checked again before any forward pass)
//!   state S ─────────────────────────────┤
//!                                        ▼
//!   S+ = verify::aggregate(S, round, [update], hyper)   the rule itself, with this one update
//!                                                       (one update: median clipping is a no-op;
//!                                                       linear rule: at lr / the active workers,
//!                                                       this update's share of the round's mean)
//!   S- = 2 S - S+                                       the same step taken the other way
//!   assigned = data.assignment(round, worker, n)        the same pure function the worker used
//!   eval     = data.eval_indices(m)                     held out: no worker trains on it
//!
//!   losses (mean CE, nats):  assigned_before = L(S, assigned)   assigned_after = L(S+, assigned)
//!                            assigned_against = L(S-, assigned)
//!                            eval_before     = L(S, eval)       eval_after     = L(S+, eval)
//!
//!   score = round(1000 * (assigned_against - assigned_after) / 2)   milli-nats, saturated to i64
//! ```
//!
//! The score is a central difference: how much lower the loss on the worker's assigned data is one
//! step along the update than one step against it, halved. It estimates the first-order gain
//! `-<grad L(S), S+ - S>` and is positive when the update points downhill on the data it was
//! supposed to train on. The plain difference `assigned_before - assigned_after` also carries the
//! second-order term, which is positive for any step: the aggregation's sign step moves every
//! parameter of a touched chunk by the full learning rate, so that term is large, and on the
//! unigram plateau it made honest updates score below zero (measured in the demo; see
//! docs/BENCHMARKS.md, "Validator scores"). Taking the step both ways cancels it.
//!
//! A sign-flipped (poisoned) update scores the negative of the honest one; random noise and a copy
//! of another worker's update (trained on other data) do not point downhill on this assignment
//! the way honest work does. The eval losses are reported alongside (a large assigned gain with no
//! eval gain means overfitting to the assignment) but do not enter the score.
//!
//! Decision threshold: the run's `verify::ExclusionRules::min_score` fails a contribution whose
//! score is below it. `min_score = 0` fails every update that points uphill on its assignment;
//! a positive value also fails updates that do not measurably help. The size of an honest gain
//! scales with the learning rate and shrinks as training goes on, so the run may also set
//! `min_pct_of_median`: a score below that share of the validator's median on the round fails too
//! (`ExclusionRules::threshold`), which fails updates that do nothing at any stage.
//! Losses are computed with libtorch: the score is a validator's judgement (recorded in a signed
//! Verdict), not consensus arithmetic, and may differ by a unit between machines.

use tch::Device;
use verify::{Expected, Hyper, State, Update, Values};

use crate::data::Dataset;
use crate::error::TrainerError;
use crate::model::Model;
use crate::step::eval_loss;

/// How much data a validator evaluates per contribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreConfig {
    /// Assigned sequences recomputed for the worker: the count the worker trained on
    /// (`data::sequences_for_tokens(tokens_per_round, seq_len)`), or fewer to save time (the
    /// assignment's first sequences).
    pub assigned_sequences: usize,
    /// Held-out sequences (the fixed eval set's first).
    pub eval_sequences: usize,
    /// Sequences per forward pass.
    pub micro_batch: usize,
    /// Under the linear step rule, how many updates the round's mean is expected to average over
    /// (the active workers): the update is scored at `lr / linear_share`, its share of the round's
    /// step. 1 scores it alone at the full rate; the sign rule ignores it (a sign step has no share).
    pub linear_share: u32,
    /// Also measure the held-out loss one step against the update ([`Score::eval_against`], for
    /// [`Score::specificity`]): one more forward pass, for research (`cairn bench poison`); the
    /// verdict does not use it.
    pub held_out_against: bool,
}

impl Default for ScoreConfig {
    /// 16 assigned and 16 held-out sequences, 8 per pass, an update scored alone, no held-out
    /// step against it.
    fn default() -> ScoreConfig {
        ScoreConfig {
            assigned_sequences: 16,
            eval_sequences: 16,
            micro_batch: 8,
            linear_share: 1,
            held_out_against: false,
        }
    }
}

/// The rule a validator scores with: the run's, except that under the linear rule the rate of
/// `round` is divided by `share` (held constant: only this round is taken).
fn scoring_hyper(hyper: &Hyper, round: verify::Round, share: u32) -> Hyper {
    if hyper.step != verify::StepRule::Linear || share <= 1 {
        return *hyper;
    }
    const DEN: u64 = 1_000_000_000_000;
    let lr = hyper.schedule.lr_f64(round) / f64::from(share);
    let schedule = verify::Schedule::Constant { lr: verify::Ratio::new((lr * DEN as f64).round() as u64, DEN) };
    Hyper { schedule, ..*hyper }
}

/// One contribution's losses before and after applying it alone, and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// Mean cross-entropy (nats) on the worker's assigned data, current state.
    pub assigned_before: f64,
    /// The same data, after applying the update alone.
    pub assigned_after: f64,
    /// The same data, one step against the update (`2 S - S+`).
    pub assigned_against: f64,
    /// Mean cross-entropy (nats) on held-out data, current state.
    pub eval_before: f64,
    /// The same data, after applying the update alone.
    pub eval_after: f64,
    /// The same data, one step against the update (`2 S - S+`), when asked for
    /// ([`ScoreConfig::held_out_against`]).
    pub eval_against: Option<f64>,
    /// [`milli_nats`]`((assigned_against - assigned_after) / 2)`: the Verdict's score.
    pub score: i64,
}

impl Score {
    /// Improvement on held-out data in milli-nats (reported, not scored).
    pub fn eval_gain(&self) -> i64 {
        milli_nats(self.eval_before - self.eval_after)
    }

    /// The score's central difference taken on held-out data instead of the assignment:
    /// [`milli_nats`]`((eval_against - eval_after) / 2)`. Honest work is expected to gain more on
    /// the data it trained on than on data nobody trained on; an update that was not computed on
    /// its assignment (a copy of another worker's, noise, nothing) gains about the same on both.
    /// Reported, not scored (docs/BENCHMARKS.md, "Poisoned minority").
    pub fn eval_score(&self) -> Option<i64> {
        self.eval_against.map(|against| milli_nats((against - self.eval_after) / 2.0))
    }

    /// [`Score::score`] minus [`Score::eval_score`]: how much of the gain is specific to the
    /// worker's assignment.
    pub fn specificity(&self) -> Option<i64> {
        self.eval_score().map(|e| self.score.saturating_sub(e))
    }
}

/// A loss difference in nats as rounded milli-nats; saturates at the i64 range (a finite input
/// is required: callers check the losses first).
pub fn milli_nats(nats: f64) -> i64 {
    // `as` saturates out-of-range floats to i64::MIN / i64::MAX.
    (nats * 1000.0).round() as i64
}

/// Rejects an update with a non-finite value (decoders already do; this guards every other path).
fn check_finite(update: &Update, state: &State) -> Result<(), TrainerError> {
    for (t, tu) in update.tensors().iter().enumerate() {
        let kept = tu.kept().max(1) as usize;
        let finite = match tu.values() {
            Values::Sign(_) => true,
            Values::Int8 { scales, .. } | Values::TwoBit { scales, .. } => scales.iter().all(|s| s.is_finite()),
            Values::Bf16(_) => (0..tu.indices().len()).all(|e| tu.values().value(e / kept, e).is_finite()),
        };
        if !finite {
            let name = state.layout().tensors().get(t).map(|s| s.name.clone()).unwrap_or_default();
            return Err(TrainerError::NonFinite { name });
        }
    }
    Ok(())
}

fn finite_loss(loss: f64) -> Result<f64, TrainerError> {
    if loss.is_finite() { Ok(loss) } else { Err(TrainerError::Diverged { what: "loss" }) }
}

/// Scores a decoded `update` against `state` (the round's base; the update was decoded with
/// `Expected::base` = the base its contribution names: `state.hash()`, or with overlapping rounds
/// possibly the state one round earlier). `model` is the validator's model for the run (its
/// parameters are overwritten: it ends holding the "after" state); `data` is the run's dataset, from
/// which the worker's assignment is recomputed from the update's round and worker key.
pub fn score(
    model: &mut Model,
    state: &State,
    update: &Update,
    hyper: &Hyper,
    data: &Dataset,
    config: &ScoreConfig,
) -> Result<Score, TrainerError> {
    check_finite(update, state)?;
    if config.assigned_sequences == 0 || config.eval_sequences == 0 {
        return Err(TrainerError::InvalidConfig("scoring needs assigned and eval sequences".into()));
    }
    let header = update.header();
    let hyper = scoring_hyper(hyper, header.round, config.linear_share);
    let after = verify::aggregate(state, header.round, std::slice::from_ref(update), &hyper)?;
    let device: Device = model.device();
    let assigned = data.batch(&data.assignment(header.round, &header.worker, config.assigned_sequences), device)?;
    let eval = data.batch(&data.eval_indices(config.eval_sequences), device)?;
    model.load_state(state)?;
    let assigned_before = finite_loss(eval_loss(model, &assigned, config.micro_batch)?)?;
    let eval_before = finite_loss(eval_loss(model, &eval, config.micro_batch)?)?;
    model.load_state(&reflected(state, &after)?)?;
    let assigned_against = finite_loss(eval_loss(model, &assigned, config.micro_batch)?)?;
    // Research only: a non-finite value here leaves the verdict's score as it was.
    let eval_against = match config.held_out_against {
        true => Some(eval_loss(model, &eval, config.micro_batch)?).filter(|l| l.is_finite()),
        false => None,
    };
    model.load_state(&after)?;
    let assigned_after = finite_loss(eval_loss(model, &assigned, config.micro_batch)?)?;
    let eval_after = finite_loss(eval_loss(model, &eval, config.micro_batch)?)?;
    let score = milli_nats((assigned_against - assigned_after) / 2.0);
    tracing::debug!(
        round = header.round.0,
        assigned_before,
        assigned_after,
        assigned_against,
        eval_before,
        eval_after,
        eval_against = eval_against.unwrap_or(f64::NAN),
        score,
        "scored contribution"
    );
    Ok(Score { assigned_before, assigned_after, assigned_against, eval_before, eval_after, eval_against, score })
}

/// `2 * state - after`, element by element (f32): the step from `state` to `after`, taken the other
/// way.
fn reflected(state: &State, after: &State) -> Result<State, TrainerError> {
    let data = state
        .data()
        .iter()
        .zip(after.data())
        .map(|(s, a)| s.iter().zip(a).map(|(&s, &a)| 2.0 * s - a).collect())
        .collect();
    Ok(State::from_parts(state.layout().clone(), data)?)
}

/// Decodes a contribution blob against `expected` (typed rejection of malformed, NaN or
/// out-of-range content) and scores it ([`score`]).
pub fn score_blob(
    bytes: &[u8],
    expected: &Expected<'_>,
    model: &mut Model,
    state: &State,
    hyper: &Hyper,
    data: &Dataset,
    config: &ScoreConfig,
) -> Result<Score, TrainerError> {
    let update = verify::decode(bytes, expected)?;
    score(model, state, &update, hyper, data, config)
}

#[cfg(test)]
mod tests {
    use verify::{Compression, Header, NormClip, Ratio, Round, RunId, Schedule, ValueEncoding, VerifyError, WorkerKey};

    use super::*;
    use crate::data::MarkovSpec;
    use crate::demo::{Bases, DemoState, tensors_from_state};
    use crate::model::{ModelConfig, Preset};
    use crate::step::{StepConfig, local_step};

    fn hyper() -> Hyper {
        Hyper {
            compression: Compression::uniform(64, 32, ValueEncoding::Int8),
            schedule: Schedule::Constant { lr: Ratio::new(1, 1000) },
            weight_decay: Ratio::new(1, 10),
            clip: NormClip::Median,
            step: verify::StepRule::Sign,
        }
    }

    #[test]
    fn a_linear_rule_update_is_scored_at_its_share_of_the_round() {
        let h = Hyper { step: verify::StepRule::Linear, weight_decay: Ratio::new(0, 1), ..hyper() };
        let r = Round(3);
        // the rate divided by the share, held for this round; the sign rule and a share of 1 unchanged
        assert_eq!(scoring_hyper(&h, r, 4).schedule.lr_f64(r), 0.001 / 4.0);
        assert_eq!(scoring_hyper(&h, r, 1), h);
        assert_eq!(scoring_hyper(&hyper(), r, 4), hyper());
    }

    /// The same update with every value negated.
    fn flipped(u: &Update, state: &State) -> Update {
        let parts = u
            .tensors()
            .iter()
            .map(|t| {
                let values = match t.values() {
                    Values::Sign(v) => Values::Sign(v.iter().map(|n| !n).collect()),
                    Values::Int8 { scales, q } => {
                        Values::Int8 { scales: scales.clone(), q: q.iter().map(|x| -x).collect() }
                    }
                    Values::Bf16(v) => Values::Bf16(v.iter().map(|b| b ^ 0x8000).collect()),
                    // code c is level 2c - 3; 3 - c is its negation
                    Values::TwoBit { scales, q } => {
                        Values::TwoBit { scales: scales.clone(), q: q.iter().map(|c| 3 - c).collect() }
                    }
                };
                (t.indices().to_vec(), values)
            })
            .collect();
        Update::new(*u.header(), state.layout(), parts).unwrap()
    }

    /// splitmix64-driven uniform values in [-1, 1), one vector per layout tensor.
    fn noise(state: &State, seed: u64) -> State {
        let mut x = seed;
        let data = state
            .layout()
            .tensors()
            .iter()
            .map(|t| {
                (0..t.elements())
                    .map(|_| {
                        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                        let mut z = x;
                        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                        z ^= z >> 31;
                        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                    })
                    .collect()
            })
            .collect();
        State::from_parts(state.layout().clone(), data).unwrap()
    }

    #[test]
    fn honest_update_beats_sign_flip_and_noise_and_nan_is_rejected() {
        crate::set_torch_threads(1);
        let config = ModelConfig { layers: 2, ..ModelConfig::preset(Preset::Tiny) };
        let mut model = Model::new(&config, 3, Device::Cpu).unwrap();
        let state = model.to_state().unwrap();
        let layout = state.layout().clone();
        let data = Dataset::synthetic(MarkovSpec::default(), 3, 32, 16).unwrap();
        let sc = ScoreConfig {
            assigned_sequences: 8,
            eval_sequences: 8,
            micro_batch: 8,
            linear_share: 1,
            held_out_against: true,
        };
        let hy = hyper();
        let header = Header {
            run: RunId([1; 32]),
            round: Round(0),
            base: state.hash(),
            worker: WorkerKey([4; 32]),
            layout: layout.hash(),
            compression: hy.compression,
        };
        // The worker: gradients on its assignment (the validator recomputes the same indices),
        // momentum, DeMo encoding.
        let batch = data.batch(&data.assignment(header.round, &header.worker, sc.assigned_sequences), Device::Cpu);
        let grads = local_step(&model, &batch.unwrap(), &StepConfig::default()).unwrap();
        let mut demo = DemoState::new(&layout, Device::Cpu).unwrap();
        demo.accumulate(&grads.grads, &layout, 0.9, 1.0).unwrap();
        let honest = demo.encode(&header, &layout).unwrap();

        let sign_flip = flipped(&honest, &state);
        let random = tensors_from_state(&noise(&state, 11), Device::Cpu).unwrap();
        let random = crate::demo::encode(&random, &header, &layout, &mut Bases::cpu()).unwrap();
        let s_honest = score(&mut model, &state, &honest, &hy, &data, &sc).unwrap();
        let s_flip = score(&mut model, &state, &sign_flip, &hy, &data, &sc).unwrap();
        let s_noise = score(&mut model, &state, &random, &hy, &data, &sc).unwrap();
        eprintln!("honest {s_honest:?}\nflip {s_flip:?}\nnoise {s_noise:?}");
        assert_eq!(s_honest.assigned_before, s_flip.assigned_before);
        assert!(s_honest.score > 0, "{s_honest:?}");
        assert!(s_honest.score > s_flip.score, "{s_honest:?} vs {s_flip:?}");
        assert!(s_honest.score > s_noise.score, "{s_honest:?} vs {s_noise:?}");
        assert!(s_flip.score < 0, "{s_flip:?}");
        assert_eq!(s_honest.score, milli_nats((s_honest.assigned_against - s_honest.assigned_after) / 2.0));
        // Stepping against the honest update is stepping along the flipped one (the weight decay of
        // this config makes the two differ in the last bits only).
        assert!((s_flip.assigned_after - s_honest.assigned_against).abs() < 1e-3, "{s_honest:?} vs {s_flip:?}");
        // The same holds on held-out data, so the held-out central difference changes sign with
        // the update, and the specificity is what the assignment gains beyond it.
        assert!((s_flip.eval_after - s_honest.eval_against.unwrap()).abs() < 1e-3, "{s_honest:?} vs {s_flip:?}");
        let (e_honest, e_flip) = (s_honest.eval_score().unwrap(), s_flip.eval_score().unwrap());
        assert_eq!(e_honest, milli_nats((s_honest.eval_against.unwrap() - s_honest.eval_after) / 2.0));
        assert!((e_honest + e_flip).abs() <= 2, "{s_honest:?} vs {s_flip:?}");
        assert_eq!(s_honest.specificity(), Some(s_honest.score - e_honest));

        // The blob path scores the same, and a NaN scale in the blob is rejected before any loss.
        let expected = header.expected(&layout);
        let bytes = honest.to_bytes();
        assert_eq!(score_blob(&bytes, &expected, &mut model, &state, &hy, &data, &sc).unwrap(), s_honest);
        let Values::Int8 { scales, .. } = honest.tensors()[0].values() else { panic!("int8 values expected") };
        let first_chunk = verify::wire::HEADER_BYTES as usize + verify::wire::TENSOR_HEADER_BYTES as usize;
        let at = first_chunk
            + bytes[first_chunk..].windows(4).position(|w| w == scales[0].to_le_bytes()).expect("scale in the blob");
        let mut nan = bytes.clone();
        nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let got = score_blob(&nan, &expected, &mut model, &state, &hy, &data, &sc);
        assert!(
            matches!(got, Err(TrainerError::Verify(VerifyError::NonFiniteValue { tensor: 0, chunk: 0 }))),
            "{got:?}"
        );
    }

    #[test]
    fn milli_nats_rounds_and_saturates() {
        assert_eq!(milli_nats(0.0123), 12);
        assert_eq!(milli_nats(-0.0126), -13);
        assert_eq!(milli_nats(1e300), i64::MAX);
        assert_eq!(milli_nats(-1e300), i64::MIN);
    }
}
