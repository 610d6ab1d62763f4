//! A poisoned minority: how far hostile workers move the model, and what stops them (`cairn bench
//! poison` drives it; docs/BENCHMARKS.md, "Poisoned minority").
//!
//! ```text
//!   a run's config (the model, data, compression, step rule, validation rules; a built-in tiny
//!   synthetic run in the bench) ─▶ N workers, the last B byzantine
//!   for each attack (clean first), for each defence (aggregation alone, then validators):
//!     round r = 0 .. R, state S_r:
//!       honest worker:    train_direction (the worker's own code) ─▶ DemoState (error feedback)
//!                         ─▶ encode ─▶ blob
//!       byzantine worker: the same, with its direction replaced by the attack, then the honest
//!                         encoder (a member that signs whatever it likes still has to send bytes
//!                         the decoder accepts: its header binds the round and the base)
//!       every blob ─▶ verify::decode (what any receiver does)
//!       validators:       the copy check, then score (the validator's code) for every update
//!                         of the round, then
//!                         failed if score < ExclusionRules::threshold(the round's scores) (the
//!                         round rule's threshold: min_score, or a share of the median);
//!                         a worker below min_score itself in max_failures contributed rounds in
//!                         a row is excluded (the relative threshold rejects, never excludes)
//!       S_{r+1} = verify::apply(S_r, r, counted updates)   (median clipping where the run has it)
//!   held-out loss of S_R ─▶ ratio to the clean run under the same defence
//! ```
//!
//! Attacks (each byzantine worker runs its own DemoState, so error feedback applies to what it
//! sends): `sign-flip` (its honest direction negated), `scale-100` (x100), `noise` (Gaussian noise
//! with the honest direction's norm, tensor by tensor), `stale` (the first honest worker's
//! direction of the previous round: a copy of an honest update one round late, re-encoded under
//! the attacker's header, the only way it passes decoding), `zero` (nothing: all-zero momentum),
//! `silent` (no update at all: the control, the model the honest workers reach alone, since
//! every attack also withholds the attacker's share of honest data), `copy` (the first honest
//! worker's direction of this round under the attacker's header: it scores like the best work,
//! which pushes the validators' medians up against the honest updates that score lower).
//!
//! Honest workers' directions do not depend on the attack or the defence except through the
//! state, so the clean run (every worker honest) is the baseline measured in the same process; a
//! run is deterministic (seeded data, init and noise), so runs in separate processes compare too.

use std::str::FromStr;

use tch::{Device, Tensor};
use verify::{Header, Round, RunConfig, State, WorkerKey};

use crate::copies::{CopyCheck, copy_score};
use crate::data::Dataset;
use crate::demo::DemoState;
use crate::error::TrainerError;
use crate::local::LocalSteps;
use crate::model::{Model, init_state};
use crate::run_spec::TrainSpec;
use crate::score::{ScoreConfig, score};
use crate::step::{AdamWConfig, StepConfig, eval_loss};
use crate::validator::UNUSABLE_SCORE;
use crate::worker::train_direction;

/// What a byzantine worker sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// The honest direction negated.
    SignFlip,
    /// The honest direction times 100.
    Scale100,
    /// Gaussian noise with the honest direction's norm, tensor by tensor.
    Noise,
    /// The first honest worker's direction of the previous round.
    Stale,
    /// Nothing: an all-zero momentum.
    Zero,
    /// No update at all (the control: the model the honest workers reach alone).
    Silent,
    /// The first honest worker's direction of this round, re-encoded under the attacker's
    /// header: an update that scores like the best work, to push validators' medians up.
    Copy,
}

impl Attack {
    /// Every attack, in the order the bench reports them.
    pub const ALL: [Attack; 7] =
        [Attack::SignFlip, Attack::Scale100, Attack::Noise, Attack::Stale, Attack::Zero, Attack::Silent, Attack::Copy];

    /// The attack's name in figures (`sign_flip`, ...); [`FromStr`] takes it with `-` or `_`.
    pub fn name(self) -> &'static str {
        match self {
            Attack::SignFlip => "sign_flip",
            Attack::Scale100 => "scale_100",
            Attack::Noise => "noise",
            Attack::Stale => "stale",
            Attack::Zero => "zero",
            Attack::Silent => "silent",
            Attack::Copy => "copy",
        }
    }
}

/// An attack name [`Attack`]'s [`FromStr`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown attack {0:?}: sign-flip, scale-100, noise, stale, zero, silent or copy")]
pub struct UnknownAttack(pub String);

impl FromStr for Attack {
    type Err = UnknownAttack;

    fn from_str(s: &str) -> Result<Attack, UnknownAttack> {
        let name = s.replace('-', "_");
        Attack::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| UnknownAttack(s.to_string()))
    }
}

/// The simulation's defence: what decides which updates count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defence {
    /// Every update that decodes counts (the aggregation's clipping is the only defence).
    Aggregation,
    /// Validators score every update; failed ones do not count; repeat failures exclude.
    Validators,
}

impl Defence {
    /// The defence's name in figures.
    pub fn name(self) -> &'static str {
        match self {
            Defence::Aggregation => "aggregation",
            Defence::Validators => "validators",
        }
    }
}

/// One run's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct PoisonOutcome {
    /// Mean cross-entropy (nats) on the held-out sequences after the last round.
    pub loss: f64,
    /// Honest contributions the validators failed.
    pub honest_failed: u64,
    /// Hostile contributions the validators failed.
    pub byzantine_failed: u64,
    /// Hostile contributions that counted.
    pub byzantine_counted: u64,
    /// The round in which the last hostile worker was excluded, if all were.
    pub excluded_by: Option<u64>,
    /// Honest workers excluded (by scores below `min_score` in `max_failures` rounds in a row).
    pub honest_excluded: u64,
    /// The validators' scores of honest updates (empty without validators).
    pub honest_scores: ScoreStats,
    /// The validators' scores of hostile updates.
    pub hostile_scores: ScoreStats,
    /// Research: how much each honest update agrees with the closest other update (this round's
    /// earlier ones and last round's counted ones, other workers'), see [`agreement`].
    pub honest_agreement: AgreementStats,
    /// The same for hostile updates.
    pub hostile_agreement: AgreementStats,
    /// Honest updates the validators' copy check failed ([`crate::copies`]).
    pub honest_copies: u64,
    /// Hostile updates it failed.
    pub hostile_copies: u64,
}

/// Research figures: per update, its highest [`agreement`] with another worker's update sent
/// earlier in the round or counted in the round before.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AgreementStats {
    /// Updates measured.
    pub updates: u64,
    /// Sum of their highest agreements.
    pub sum: f64,
    /// The lowest and highest of them.
    pub min: f64,
    /// See `min`.
    pub max: f64,
}

impl AgreementStats {
    fn add(&mut self, a: f64) {
        if self.updates == 0 {
            (self.min, self.max) = (a, a);
        }
        self.updates += 1;
        self.sum += a;
        self.min = self.min.min(a);
        self.max = self.max.max(a);
    }

    /// Mean, lowest and highest; `None` when nothing was measured.
    pub fn summary(&self) -> Option<(f64, f64, f64)> {
        (self.updates > 0).then(|| (self.sum / self.updates as f64, self.min, self.max))
    }
}

/// The share of `a`'s kept entries that `b` keeps too, at the same index of the same chunk and
/// with the same sign, over every tensor (0 to 1; 0 when nothing compares). Two workers'
/// honest updates share some large coordinates; a copy of one, re-encoded, shares nearly all.
pub fn agreement(a: &verify::Update, b: &verify::Update) -> f64 {
    let (mut same, mut total) = (0u64, 0u64);
    for (ta, tb) in a.tensors().iter().zip(b.tensors()) {
        let k = ta.kept() as usize;
        if k == 0 || tb.kept() as usize != k || ta.indices().len() != tb.indices().len() {
            continue;
        }
        for (c, (ca, cb)) in ta.indices().chunks(k).zip(tb.indices().chunks(k)).enumerate() {
            let (mut i, mut j) = (0, 0);
            while i < k && j < k {
                match ca[i].cmp(&cb[j]) {
                    std::cmp::Ordering::Less => i += 1,
                    std::cmp::Ordering::Greater => j += 1,
                    std::cmp::Ordering::Equal => {
                        let negative = |t: &verify::wire::TensorUpdate, e: usize| t.values().value(c, c * k + e) < 0.0;
                        same += u64::from(negative(ta, i) == negative(tb, j));
                        i += 1;
                        j += 1;
                    }
                }
            }
            total += k as u64;
        }
    }
    if total == 0 { 0.0 } else { same as f64 / total as f64 }
}

/// What validators' scores looked like for a set of updates: the score (on the worker's own
/// assignment) and its specificity (the score minus the same measure on held-out data;
/// [`crate::score::Score::specificity`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScoreStats {
    /// Updates scored.
    pub scored: u64,
    /// Sum of their scores (milli-nats).
    pub score_sum: i64,
    /// Sum of their specificities (milli-nats).
    pub specificity_sum: i64,
    /// Updates whose specificity was above zero.
    pub specific: u64,
}

impl ScoreStats {
    fn add(&mut self, s: &crate::score::Score) {
        // Scored with `held_out_against`; an update whose held-out loss was not finite counts as 0.
        let specificity = s.specificity().unwrap_or(0);
        self.scored += 1;
        self.score_sum = self.score_sum.saturating_add(s.score);
        self.specificity_sum = self.specificity_sum.saturating_add(specificity);
        self.specific += u64::from(specificity > 0);
    }

    /// Mean score, mean specificity and the share with a positive specificity (percent); `None`
    /// when nothing was scored.
    pub fn means(&self) -> Option<(f64, f64, f64)> {
        (self.scored > 0).then(|| {
            let n = self.scored as f64;
            (self.score_sum as f64 / n, self.specificity_sum as f64 / n, 100.0 * self.specific as f64 / n)
        })
    }
}

/// A simulated run with a hostile minority; see the module docs.
#[derive(Debug)]
pub struct PoisonSim {
    config: RunConfig,
    train: TrainSpec,
    data: Dataset,
    initial: State,
    step: StepConfig,
    eval: Tensor,
    workers: usize,
    byzantine: usize,
    rounds: u64,
}

fn key(i: usize) -> WorkerKey {
    crate::simulate::worker_key(i)
}

impl PoisonSim {
    /// `workers` workers of the run (`config`, `train`) on `data`, the last `byzantine` hostile,
    /// for `rounds` rounds; the loss is measured on `eval_sequences` held-out sequences.
    pub fn new(
        config: RunConfig,
        train: TrainSpec,
        data: Dataset,
        workers: usize,
        byzantine: usize,
        rounds: u64,
        eval_sequences: usize,
    ) -> Result<PoisonSim, TrainerError> {
        if workers == 0 || byzantine >= workers || eval_sequences == 0 {
            return Err(TrainerError::InvalidConfig(format!(
                "a poisoned run needs fewer byzantine workers than workers and held-out sequences \
                 (got {byzantine} of {workers}, {eval_sequences} sequences)"
            )));
        }
        let initial = init_state(&train.model_config()?, train.seed)?;
        let step = StepConfig {
            micro_batch: train.micro_batch,
            clip_norm: (train.clip_norm > 0.0).then_some(train.clip_norm),
        };
        let eval = data.batch(&data.eval_indices(eval_sequences), Device::Cpu)?;
        Ok(PoisonSim { config, train, data, initial, step, eval, workers, byzantine, rounds })
    }

    /// The run's config.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The run's training spec.
    pub fn train(&self) -> &TrainSpec {
        &self.train
    }

    fn honest(&self) -> usize {
        self.workers - self.byzantine
    }

    /// Runs from the initial state with the hostile workers sending `attack` (`None`: the clean
    /// run, every worker honest) under `defence`.
    pub fn run(&self, attack: Option<Attack>, defence: Defence) -> Result<PoisonOutcome, TrainerError> {
        let model_config = self.train.model_config()?;
        let layout = &self.config.layout;
        let hyper = &self.config.hyper;
        let rules = self.config.exclusion;
        let mut state = self.initial.clone();
        let mut model = Model::from_state(&model_config, &state, Device::Cpu)?;
        let mut scorer = Model::from_state(&model_config, &state, Device::Cpu)?;
        let mut demo: Vec<DemoState> =
            (0..self.workers).map(|_| DemoState::new(layout, Device::Cpu)).collect::<Result<_, _>>()?;
        let mut local: Vec<Option<LocalSteps>> = (0..self.workers)
            .map(|_| match self.train.local_steps {
                0 | 1 => Ok(None),
                _ => {
                    let inner = AdamWConfig { weight_decay: 0.0, step: self.step, ..AdamWConfig::default() };
                    LocalSteps::new(&model_config, &state, inner, Device::Cpu).map(Some)
                }
            })
            .collect::<Result<_, _>>()?;
        let mut failures_in_a_row = vec![0u32; self.workers];
        let mut excluded = vec![false; self.workers];
        let mut out = PoisonOutcome {
            loss: 0.0,
            honest_failed: 0,
            byzantine_failed: 0,
            byzantine_counted: 0,
            excluded_by: None,
            honest_excluded: 0,
            honest_scores: ScoreStats::default(),
            hostile_scores: ScoreStats::default(),
            honest_agreement: AgreementStats::default(),
            hostile_agreement: AgreementStats::default(),
            honest_copies: 0,
            hostile_copies: 0,
        };
        // The validator's copy check, keyed with a fixed key so that runs repeat (a validator
        // process keys its own at random).
        let mut copies = CopyCheck::new(std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default());
        let mut previous_counted: Vec<(usize, verify::Update)> = Vec::new();
        let mut previous_first_honest: Option<Vec<Tensor>> = None;
        let share = u32::try_from(self.workers).unwrap_or(u32::MAX);
        let score_config = ScoreConfig { linear_share: share, held_out_against: true, ..self.train.score_config() };
        tch::manual_seed(i64::try_from(self.train.seed).unwrap_or(0));
        for r in 0..self.rounds {
            let round = Round(r);
            let base = state.hash();
            // Every update of the round first, with its score: under a relative threshold a
            // verdict's fate depends on the validator's other scores in the round.
            let mut sent = Vec::new();
            let mut first_honest: Option<Vec<Tensor>> = None;
            for i in 0..self.workers {
                if excluded[i] {
                    continue;
                }
                if attack == Some(Attack::Silent) && i >= self.honest() {
                    continue;
                }
                let me = key(i);
                let (direction, _) =
                    train_direction(&model, local[i].as_mut(), &self.data, &self.step, &self.train, hyper, round, &me)?;
                let hostile = attack.filter(|_| i >= self.honest());
                let (direction, weight) = match hostile {
                    Some(a) => attacked(a, direction, previous_first_honest.as_deref(), first_honest.as_deref())?,
                    None => (direction, 1.0),
                };
                let hostile = hostile.is_some();
                if i == 0 {
                    first_honest = Some(direction.iter().map(Tensor::copy).collect());
                }
                demo[i].accumulate(&direction, layout, self.train.momentum_decay, weight)?;
                let header = Header {
                    run: verify::RunId([0x5e; 32]),
                    round,
                    base,
                    worker: me,
                    layout: layout.hash(),
                    compression: hyper.compression,
                };
                let blob = demo[i].encode(&header, layout)?.to_bytes();
                let expected = header.expected(layout);
                let Ok(update) = verify::decode(&blob, &expected) else {
                    // Not counted by anyone; the honest encoder never gets here.
                    continue;
                };
                let closest = sent
                    .iter()
                    .map(|(j, _, u, _): &(usize, bool, verify::Update, Option<i64>)| (*j, u))
                    .chain(previous_counted.iter().map(|(j, u)| (*j, u)))
                    .filter(|(j, _)| *j != i)
                    .map(|(_, u)| agreement(&update, u))
                    .fold(0.0f64, f64::max);
                if hostile {
                    out.hostile_agreement.add(closest)
                } else {
                    out.honest_agreement.add(closest)
                }
                let copied = match defence {
                    Defence::Validators => copies.check(round, i as u64, me, &update),
                    Defence::Aggregation => None,
                };
                if copied.is_some() {
                    if hostile { out.hostile_copies += 1 } else { out.honest_copies += 1 }
                }
                let score = match (defence, copied) {
                    // A copy scores as `cairn validate` scores it.
                    (Defence::Validators, Some(c)) => Some(copy_score(&c, rules.min_score)),
                    (Defence::Aggregation, _) => None,
                    (Defence::Validators, None) => {
                        let scored = score(&mut scorer, &state, &update, hyper, &self.data, &score_config);
                        if let Ok(s) = &scored {
                            if hostile { out.hostile_scores.add(s) } else { out.honest_scores.add(s) }
                        }
                        // what the validator writes for an update it cannot score
                        Some(scored.map_or(UNUSABLE_SCORE, |s| s.score))
                    }
                };
                sent.push((i, hostile, update, score));
            }
            // One validator: its scores on the round are the round's scores.
            let scores: Vec<i64> = sent.iter().filter_map(|(_, _, _, score)| *score).collect();
            let threshold = rules.threshold(&scores);
            let (mut counted, mut counted_workers) = (Vec::new(), Vec::new());
            for (i, hostile, update, score) in sent {
                if let Some(score) = score {
                    // Only a score below min_score counts toward exclusion (the round rule's
                    // walk); one below the relative threshold alone is rejected and resets the run.
                    if score < rules.min_score {
                        failures_in_a_row[i] += 1;
                        if rules.max_failures > 0 && failures_in_a_row[i] >= rules.max_failures {
                            excluded[i] = true;
                            if hostile {
                                out.excluded_by = Some(r);
                            } else {
                                out.honest_excluded += 1;
                            }
                        }
                    } else {
                        failures_in_a_row[i] = 0;
                    }
                    if score < threshold {
                        if hostile {
                            out.byzantine_failed += 1
                        } else {
                            out.honest_failed += 1
                        }
                        continue;
                    }
                }
                if hostile {
                    out.byzantine_counted += 1;
                }
                counted.push(update);
                counted_workers.push(i);
            }
            previous_first_honest = first_honest;
            if !counted.is_empty() {
                verify::apply(&mut state, round, &counted, hyper)?;
            }
            let counted_ids: Vec<u64> = counted_workers.iter().map(|i| *i as u64).collect();
            copies.round_final(round, &counted_ids);
            previous_counted = counted_workers.into_iter().zip(counted).collect();
            model.load_state(&state)?;
        }
        out.loss = eval_loss(&model, &self.eval, 16)?;
        if attack.is_none() || excluded[self.honest()..].iter().any(|e| !e) {
            out.excluded_by = None;
        }
        Ok(out)
    }
}

/// The direction a byzantine worker feeds its momentum, and the weight it feeds it with; `stale`
/// and `current` are the first honest worker's directions of the previous round and of this one.
fn attacked(
    attack: Attack,
    honest: Vec<Tensor>,
    stale: Option<&[Tensor]>,
    current: Option<&[Tensor]>,
) -> Result<(Vec<Tensor>, f64), TrainerError> {
    Ok(match attack {
        Attack::SignFlip => (honest, -1.0),
        Attack::Scale100 => (honest, 100.0),
        Attack::Zero | Attack::Silent => (honest, 0.0),
        Attack::Copy => match current {
            Some(c) => (c.iter().map(Tensor::copy).collect(), 1.0),
            None => (honest, 1.0),
        },
        Attack::Stale => match stale {
            Some(s) => (s.iter().map(Tensor::copy).collect(), 1.0),
            // Round 0 has no earlier update: the attacker sends nothing of use.
            None => (honest, 0.0),
        },
        Attack::Noise => {
            let noise = honest
                .iter()
                .map(|g| {
                    let n = g.f_randn_like()?;
                    let scale =
                        g.f_norm()?.f_double_value(&[])? / n.f_norm()?.f_double_value(&[])?.max(f64::MIN_POSITIVE);
                    n.f_mul_scalar(scale)
                })
                .collect::<Result<Vec<_>, _>>()?;
            (noise, 1.0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::MarkovSpec;
    use crate::run_spec::RunSpec;

    /// `workers` on `tiny` and the synthetic corpus (short rounds), the last `byzantine` hostile; a
    /// worker is excluded after 2 failed rounds in a row.
    fn sim(workers: usize, byzantine: usize, rounds: u64) -> PoisonSim {
        sim_with(workers, byzantine, rounds, 0)
    }

    /// [`sim`] with a relative threshold of `min_pct_of_median` percent.
    fn sim_with(workers: usize, byzantine: usize, rounds: u64, min_pct_of_median: u8) -> PoisonSim {
        let spec = RunSpec::parse(&format!(
            "[run]\npreset = \"tiny\"\nseed = 3\n[data]\nsource = \"synthetic\"\nseq_len = 32\n\
             [train]\ntokens_per_round = 256\n[validation]\nmax_failures = 2\n\
             min_pct_of_median = {min_pct_of_median}\n\
             [roster]\nquorum = 1\n[[roster.member]]\n\
             key = \"0000000000000000000000000000000000000000000000000000000000000001\"\n\
             organisation = \"sim\"\nrole = \"admin\"\n[[roster.member]]\n\
             key = \"0000000000000000000000000000000000000000000000000000000000000002\"\n\
             organisation = \"sim\"\nrole = \"worker\"\n",
        ))
        .unwrap();
        let parts = spec.genesis_parts(crate::model::BYTE_VOCAB).unwrap();
        let data = Dataset::synthetic(MarkovSpec::default(), parts.train.seed, parts.train.seq_len, 32).unwrap();
        PoisonSim::new(parts.config, parts.train, data, workers, byzantine, rounds, 16).unwrap()
    }

    #[test]
    fn validators_fail_and_exclude_sign_flippers_that_the_aggregation_alone_counts() {
        tch::set_num_threads(1);
        let sim = sim(4, 1, 4);
        let open = sim.run(Some(Attack::SignFlip), Defence::Aggregation).unwrap();
        // Sign values all have one norm: median clipping cannot tell the flipped update apart.
        assert_eq!(open.byzantine_counted, 4, "{open:?}");
        let guarded = sim.run(Some(Attack::SignFlip), Defence::Validators).unwrap();
        // A flipped update scores the negative of an honest one: failed in rounds 0 and 1, then
        // excluded (max_failures = 2), never counted; no honest update failed.
        assert_eq!((guarded.byzantine_counted, guarded.byzantine_failed), (0, 2), "{guarded:?}");
        assert_eq!(guarded.excluded_by, Some(1));
        assert_eq!(guarded.honest_failed, 0);
        let clean = sim.run(None, Defence::Validators).unwrap();
        assert!(guarded.loss < open.loss, "validators {guarded:?}, aggregation alone {open:?}, clean {clean:?}");
        assert_eq!(clean.excluded_by, None);
    }

    /// An all-zero update scores about 0, mostly above the default `min_score` of -20, and
    /// counts; a relative threshold of 25% of the round's median rejects it every round (a
    /// relative failure never excludes), without failing honest work.
    #[test]
    fn a_relative_threshold_rejects_a_zero_sender_every_round_that_min_score_lets_through() {
        tch::set_num_threads(1);
        let open = sim(4, 1, 5).run(Some(Attack::Zero), Defence::Validators).unwrap();
        let guarded = sim_with(4, 1, 5, 25).run(Some(Attack::Zero), Defence::Validators).unwrap();
        // Without it the zero sender is never excluded and counts in some rounds.
        assert!(open.byzantine_counted > 0 && open.excluded_by.is_none(), "{open:?}");
        // With it: failed in every round (scores above -20 on average), never counted.
        assert_eq!((guarded.byzantine_counted, guarded.byzantine_failed), (0, 5), "{guarded:?}");
        assert!(guarded.hostile_scores.means().is_some_and(|(score, _, _)| score > -20.0), "{guarded:?}");
        assert_eq!((guarded.honest_failed, guarded.honest_excluded), (0, 0), "{guarded:?}");
        assert!(guarded.loss < open.loss, "{guarded:?} {open:?}");
    }

    /// A copy of the last round's counted update (stale) or of this round's first honest one scores
    /// like work. The validators' copy check fails a stale one below `min_score`, so two in a row
    /// exclude its sender; this round's copy scores exactly `min_score` (which of the two is the
    /// copy cannot be told), so the relative threshold rejects it every round and nobody is
    /// excluded. No honest update is taken for a copy.
    #[test]
    fn the_copy_check_fails_stale_senders_and_rejects_copies_without_excluding() {
        tch::set_num_threads(1);
        // The stale sender has nothing to copy in round 0 (it sends a zero update, which counts
        // without a relative threshold); from round 1 on it sends worker 0's update of the round
        // before, which is the same update as that counted one.
        let stale = sim(4, 1, 5).run(Some(Attack::Stale), Defence::Validators).unwrap();
        assert_eq!((stale.hostile_copies, stale.honest_copies), (2, 0), "{stale:?}");
        assert_eq!((stale.excluded_by, stale.byzantine_counted), (Some(2), 1), "{stale:?}");
        assert!(stale.hostile_agreement.max > 0.99 && stale.honest_agreement.max < 0.8, "{stale:?}");
        let copy = sim_with(4, 1, 5, 25).run(Some(Attack::Copy), Defence::Validators).unwrap();
        assert_eq!((copy.hostile_copies, copy.honest_copies), (5, 0), "{copy:?}");
        assert_eq!((copy.excluded_by, copy.byzantine_counted, copy.byzantine_failed), (None, 0, 5), "{copy:?}");
        // Without the relative threshold the same copy scores min_score and counts.
        let unguarded = sim(4, 1, 5).run(Some(Attack::Copy), Defence::Validators).unwrap();
        assert_eq!((unguarded.hostile_copies, unguarded.byzantine_counted), (5, 5), "{unguarded:?}");
    }

    #[test]
    fn attack_names_parse_with_dashes_or_underscores_and_others_are_refused() {
        let spec = "tiny";
        assert!(spec.parse::<Attack>().is_err());
        assert_eq!("sign-flip".parse::<Attack>().unwrap(), Attack::SignFlip);
        assert_eq!("scale_100".parse::<Attack>().unwrap(), Attack::Scale100);
        for a in Attack::ALL {
            assert_eq!(a.name().parse::<Attack>().unwrap(), a);
        }
    }
}
