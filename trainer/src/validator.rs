//! The validator loop: follow the run, score every accepted contribution of the open round with
//! [`crate::score`], append a signed Verdict for each (several to a slot), and help close rounds
//! like any participant.
//!
//! ```text
//!   sync ─▶ round r open ─▶ for each accepted Contribution of r on the current base, not judged yet:
//!             fetch blob (size-limited, re-hashed) ─▶ decode against (run, r, base, worker)
//!               ├─ decodes: loss on the worker's assignment and on held-out data, before and after
//!               │           applying the update alone ─▶ Verdict(score in milli-nats)
//!               └─ does not decode (NaN, copied under another key, garbage): Verdict(UNUSABLE)
//!             verdicts go out in slots of up to VERDICTS_PER_SLOT, checked before and after
//!             each score: the oldest waits VERDICT_FLUSH_AFTER plus at most one read and
//!             score; all go out before the vote
//!         ─▶ vote and attest like any member (Follower::take_part)
//!         ─▶ a round became final: its state's held-out loss ─▶ Evaluation ─▶ repeat until the run's last round
//! ```
//!
//! With a scoring share (`cairn validate --score-orgs N`), each contribution is scored by `N` of
//! the run's validator organisations (never fewer than the organisation quorum), the same `N` for
//! every validator: those of lowest [`scoring_rank`] for its worker and round. A validator still
//! reads, decodes and copy-checks every contribution, and gives a verdict to any that is unusable
//! or a copy (both cost no forward pass); only the score of the others is shared out.
//!
//! A contribution fails when validators of a quorum of organisations scored it below the run's
//! threshold (`min_score`, or a share of the validator's own median score on the round) before the
//! round closed, and `max_failures` failed rounds in a row exclude the
//! worker: that rule is verify's, applied by everyone from the ledger alone. The validator only
//! writes the scores.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use ledger::{Body, EntryPos, Keypair, Target, Verdict};
use tch::Device;
use verify::wire::encoded_len;
use verify::{BlobSource, Expected};

use crate::TrainerError;
use crate::copies::{CopyCheck, copy_score};
use crate::evaluate::{HeldOut, append_evaluation, evaluate_latest, has_evaluated};
use crate::follow::{DROP_AFTER_FAILED_READS, Follower, TallyAction};
use crate::model::Model;
use crate::score::{ScoreConfig, score};
use crate::worker::{WorkerEvent, after_final};

/// The score a validator records for an update that does not decode for its claimed round, base
/// and worker, or holds non-finite values: far below any sensible `min_score`.
pub const UNUSABLE_SCORE: i64 = -1_000_000;

/// How a validator runs.
#[derive(Clone, Debug)]
pub struct ValidatorOptions {
    /// Where scoring runs.
    pub device: Device,
    /// Stop after this many rounds closed (`None`: until the run ends).
    pub rounds: Option<u64>,
    /// Pause between ledger polls while the ledger moves.
    pub poll: Duration,
    /// The longest pause while it does not ([`crate::pace::PollPace`]).
    pub max_poll: Duration,
    /// Whether to publish each round's step for followers (see [`crate::steps`]; a validator
    /// computes every round it attests, so publishing costs one upload of a step a round for its
    /// organisation). A validator never follows steps: it reads every update to score it.
    pub publish_steps: bool,
    /// Score each contribution in `n` validator organisations only, this one where it is among
    /// the `n` of lowest [`scoring_rank`] (`None`: score every contribution). Raised to the run's
    /// organisation quorum when below it, so that a contribution can still fail.
    pub score_orgs: Option<usize>,
}

/// What a validator reports.
#[derive(Clone, Debug)]
pub enum ValidatorEvent {
    /// Joined the run at this open round.
    Joined {
        /// The round.
        round: u64,
    },
    /// Scored a contribution and appended the verdict.
    Judged {
        /// The round.
        round: u64,
        /// The contribution.
        pos: EntryPos,
        /// Its organisation, if a member.
        organisation: Option<String>,
        /// The score.
        score: i64,
        /// Why it is unusable, when it is.
        unusable: Option<String>,
    },
    /// Left a contribution's score to other organisations' validators (`score_orgs`): it decoded
    /// and is not a copy, and this organisation is not among its scorers.
    LeftToOthers {
        /// The round.
        round: u64,
        /// The contribution.
        pos: EntryPos,
    },
    /// What a worker event would say (closes and snapshots this validator wrote).
    Worker(WorkerEvent),
    /// Evaluated a final round's state on the held-out set and appended the Evaluation.
    Evaluated {
        /// The round.
        round: u64,
        /// The held-out loss, in nats.
        loss: f64,
    },
    /// A round ended and was applied.
    RoundApplied {
        /// The round.
        round: u64,
        /// Contributions counted.
        counted: usize,
    },
}

/// Runs the validator loop until the run's last round closes (or `options.rounds` rounds did).
pub async fn run_validator(
    store: storage::Store,
    key: &Keypair,
    options: &ValidatorOptions,
    events: &mut (dyn FnMut(ValidatorEvent) + Send),
) -> Result<u64, TrainerError> {
    let steps = crate::steps::StepPolicy { publish: options.publish_steps, follow: false, when_smaller: false };
    let mut follower = Follower::join_with(store, steps, Some(&key.public())).await?;
    follower.require_role(&key.public(), ledger::Role::Validator)?;
    follower.stage_as(&key.public())?;
    let info = follower.info().clone();
    let data = info.train.dataset().await?;
    let mut model = Model::from_state(&info.model, follower.state(), options.device)?;
    let score_config = info.train.score_config();
    let update_bytes = encoded_len(&info.config.layout, &info.config.hyper.compression);
    let held_out = HeldOut::new(&data, info.train.micro_batch, options.device)?;
    let start = follower.round().0;
    events(ValidatorEvent::Joined { round: start });
    let mut judged: HashSet<EntryPos> = HashSet::new();
    // Keyed at random: this validator's own, so no copier knows which entries its sketch samples.
    let mut copies = CopyCheck::new(std::collections::hash_map::RandomState::new());
    let mut unreadable: HashMap<EntryPos, u32> = HashMap::new();
    // Verdicts this key wrote before a restart count as judged.
    for e in follower.reader().by_signer(&key.public()) {
        if let Some(Body::Verdict(Verdict { target: Target::Entry(p), .. })) = e.entry.as_ref().map(|x| &x.body) {
            judged.insert(*p);
        }
    }
    let mut opened = (follower.round(), Instant::now());
    let mut verdicts = 0u64;
    let mut pending = PendingVerdicts::default();
    let mut pace = crate::pace::PollPace::new(options.poll, options.max_poll);
    loop {
        let reports = follower.sync().await?;
        for report in &reports {
            let counted: Vec<u64> = report.counted.iter().map(|c| copy_id(c.pos)).collect();
            copies.round_final(report.round, &counted);
            let mut forward = |e| events(ValidatorEvent::Worker(e));
            after_final(&mut follower, key, report, &mut forward).await?;
            events(ValidatorEvent::RoundApplied { round: report.round.0, counted: report.counted.len() });
        }
        // The held-out loss of the newest result (rounds that became final together share one).
        if !reports.is_empty()
            && let Some(evaluation) = evaluate_latest(&follower, &mut model, &held_out)?
            && !has_evaluated(&follower, &key.public(), evaluation.round)
        {
            let (round, loss) = (evaluation.round.0, evaluation.loss_milli as f64 / 1000.0);
            append_evaluation(&mut follower, key, evaluation).await?;
            events(ValidatorEvent::Evaluated { round, loss });
        }
        let round = follower.round();
        if info.train.is_past_end(round.0) || ran_enough(options.rounds, start, round.0) {
            break;
        }
        if opened.0 != round {
            opened = (round, Instant::now());
            // Contributions of rounds the follower forgot (behind the run's window) are never
            // asked about again: the validator's own memory stays bounded with the follower's.
            judged.retain(|p| follower.reader().entry_at(*p).is_some());
            unreadable.retain(|p, _| follower.reader().entry_at(*p).is_some());
        }
        // Accepted contributions of the open round, on its base (or, with overlapping rounds, the
        // one before), not judged yet.
        let scorers = Scorers::of(&follower, key, options.score_orgs);
        let base = ledger::StateHash(follower.state_hash().0);
        let behind = follower.rule().base_behind(round).map(|b| ledger::StateHash(b.0));
        let todo: Vec<(EntryPos, ledger::PublicKey, ledger::BlobId, Option<String>, ledger::StateHash)> = follower
            .reader()
            .by_round(ledger::Round(round.0))
            .filter(|e| !judged.contains(&e.pos))
            .filter_map(|e| match e.entry.as_ref().map(|x| (&x.body, x.signer())) {
                Some((Body::Contribution(c), signer))
                    if (c.base_state == base || Some(c.base_state) == behind) && c.blob_size == update_bytes =>
                {
                    Some((e.pos, signer, c.blob, e.organisation.clone(), c.base_state))
                }
                _ => None,
            })
            .collect();
        for (pos, signer, blob, organisation, trained_on) in todo {
            // Before the next read and score, which can take long: the oldest verdict waited
            // VERDICT_FLUSH_AFTER at most, plus one score.
            pending.flush_if_due(&mut follower, events).await?;
            let bytes = match follower.blobs().blob(blob, update_bytes).await {
                Ok(b) => b,
                // Not readable now: look again next time; after DROP_AFTER_FAILED_READS tries in a
                // row (what makes an attester drop it) it is unusable, so that voters waiting for
                // verdicts are not held up by a blob nobody can read.
                Err(fault) if unreadable.get(&pos).copied().unwrap_or(0) + 1 < DROP_AFTER_FAILED_READS => {
                    *unreadable.entry(pos).or_default() += 1;
                    tracing::debug!(%pos, ?fault, "contribution blob not readable yet");
                    continue;
                }
                Err(fault) => {
                    // Absent, corrupt or unreadable for good: score it as unusable.
                    judged.insert(pos);
                    verdicts += 1;
                    let score = UNUSABLE_SCORE;
                    let unusable = Some(format!("blob {blob} not readable: {fault:?}"));
                    let judged_event = ValidatorEvent::Judged { round: round.0, pos, organisation, score, unusable };
                    pending.push(verdict(&follower, key, round.0, pos, score)?, judged_event);
                    pending.flush_if_due(&mut follower, events).await?;
                    continue;
                }
            };
            let layout = &info.config.layout;
            let expected = Expected {
                run: verify::RunId(info.run_id.0),
                round,
                // The base it was trained on; it is scored on the round's base like every update.
                base: verify::StateHash(trained_on.0),
                worker: verify::WorkerKey(signer.0),
                layout,
                compression: info.config.hyper.compression,
            };
            // Under the linear rule an update is a share of the round's mean: score it at
            // lr / the active workers (all of them contribute in a healthy round).
            let linear_share = follower.close_facts().map_or(1, |f| f.active_workers.max(1));
            let score_config =
                ScoreConfig { linear_share: u32::try_from(linear_share).unwrap_or(u32::MAX), ..score_config };
            // A copy of another worker's update (this round's, or last round's counted one) fails
            // whatever it would score: it is not its sender's work.
            // An excluded worker's contribution never counts: neither judged as a copy nor kept
            // as an original.
            let worker = verify::WorkerKey(signer.0);
            let state = follower.state();
            let mine = scorers.includes_me(&info.run_id, round.0, &signer);
            let scored = verify::decode(&bytes, &expected).map_err(TrainerError::from).and_then(|update| {
                let copied = match follower.rule().excluded_in(&worker, round) {
                    Some(_) => None,
                    None => copies.check(round, copy_id(pos), worker, &update),
                };
                Ok(match copied {
                    Some(c) => Some((copy_score(&c, info.config.exclusion.min_score), Some(c.to_string()))),
                    None if !mine => None,
                    None => {
                        let s = tokio::task::block_in_place(|| {
                            score(&mut model, state, &update, &info.config.hyper, &data, &score_config)
                        })?;
                        Some((s.score, None))
                    }
                })
            });
            let (score, unusable) = match scored {
                Ok(Some(scored)) => scored,
                Ok(None) => {
                    judged.insert(pos);
                    events(ValidatorEvent::LeftToOthers { round: round.0, pos });
                    continue;
                }
                Err(e @ (TrainerError::Verify(_) | TrainerError::NonFinite { .. } | TrainerError::Diverged { .. })) => {
                    (UNUSABLE_SCORE, Some(e.to_string()))
                }
                Err(e) => return Err(e),
            };
            judged.insert(pos);
            verdicts += 1;
            let judged_event = ValidatorEvent::Judged { round: round.0, pos, organisation, score, unusable };
            pending.push(verdict(&follower, key, round.0, pos, score)?, judged_event);
            pending.flush_if_due(&mut follower, events).await?;
        }
        // Every verdict of this pass is in the log before this validator votes.
        pending.flush(&mut follower, events).await?;
        match follower.take_part(key, opened.1.elapsed()).await? {
            Some(TallyAction::Voted { round, seen }) => {
                events(ValidatorEvent::Worker(WorkerEvent::Voted { round, seen }));
                continue;
            }
            Some(TallyAction::Attested { round, state, dropped }) => {
                events(ValidatorEvent::Worker(WorkerEvent::Attested { round, state: state.to_string(), dropped }));
                continue;
            }
            Some(TallyAction::WaitingForBlobs { .. }) | None => {}
        }
        // The next pass starts with `sync`, the one read of the ledger per pass.
        tokio::time::sleep(pace.after(follower.take_read())).await;
    }
    Ok(verdicts)
}

/// Domain of [`scoring_rank`].
const SCORING_CONTEXT: &str = "cairn scoring rank v1";

/// `organisation`'s rank for scoring `worker`'s contributions to `round` of `run`:
/// `blake3::derive_key("cairn scoring rank v1", run id (32 bytes) || round (u64 little-endian) ||
/// worker key (32 bytes) || organisation name (UTF-8))`, compared as bytes, then by name. With a
/// scoring share of `n`, the `n` validator organisations of lowest rank score the contribution
/// (docs/RUN.md, "Sharing the scoring"). Nothing in it is the worker's choice: its key is fixed in the
/// roster, and the run and round are the ledger's.
pub fn scoring_rank(run: &ledger::RunId, round: u64, worker: &ledger::PublicKey, organisation: &str) -> [u8; 32] {
    let mut material = Vec::with_capacity(72 + organisation.len());
    material.extend_from_slice(&run.0);
    material.extend_from_slice(&round.to_le_bytes());
    material.extend_from_slice(&worker.0);
    material.extend_from_slice(organisation.as_bytes());
    blake3::derive_key(SCORING_CONTEXT, &material)
}

/// Whether `organisation` is among the `n` of `organisations` (the run's validator organisations,
/// each once) of lowest [`scoring_rank`] for `worker` and `round`; every one is when `n` is at
/// least their number.
pub fn scores(
    (run, round, worker): (&ledger::RunId, u64, &ledger::PublicKey),
    organisation: &str,
    organisations: &BTreeSet<String>,
    n: usize,
) -> bool {
    let mine = (scoring_rank(run, round, worker, organisation), organisation);
    let lower = organisations
        .iter()
        .filter(|o| o.as_str() != organisation)
        .filter(|o| (scoring_rank(run, round, worker, o), o.as_str()) < mine)
        .count();
    lower < n
}

/// A validator's share of the scoring in the current pass: its organisation, the run's validator
/// organisations and how many score each contribution (`None`: it scores all).
struct Scorers {
    share: Option<(String, BTreeSet<String>, usize)>,
}

impl Scorers {
    fn of(follower: &Follower, key: &Keypair, score_orgs: Option<usize>) -> Scorers {
        let roster = follower.reader().state().roster();
        let me = key.public();
        let share = score_orgs.and_then(|n| {
            let mine = roster.values().find(|m| m.key == me)?.organisation.clone();
            let organisations: BTreeSet<String> =
                roster.values().filter(|m| m.role == ledger::Role::Validator).map(|m| m.organisation.clone()).collect();
            Some((mine, organisations, n.max(usize::from(follower.info().org_quorum))))
        });
        Scorers { share }
    }

    fn includes_me(&self, run: &ledger::RunId, round: u64, worker: &ledger::PublicKey) -> bool {
        match &self.share {
            None => true,
            Some((mine, organisations, n)) => scores((run, round, worker), mine, organisations, *n),
        }
    }
}

/// Whether `rounds` rounds (`ValidatorOptions::rounds`) closed since the validator joined at round
/// `start`. `start` comes from the ledger (a snapshot can put it anywhere up to `u64::MAX`), so no sum.
fn ran_enough(rounds: Option<u64>, start: u64, round: u64) -> bool {
    rounds.is_some_and(|n| round.saturating_sub(start) >= n)
}

/// The copy check's name for a contribution: its ledger position.
fn copy_id(pos: EntryPos) -> u64 {
    (pos.seq.0 << 16) | u64::from(pos.index)
}

/// Verdicts a validator writes in one ledger slot, at most: one slot per verdict would take
/// validators times workers slots a round (10,000 at 1,000 workers and 10 validators), each a race
/// for the log's head (docs/SCALE.md).
pub const VERDICTS_PER_SLOT: usize = 64;
/// The longest a scored verdict waits for others to share its slot.
pub const VERDICT_FLUSH_AFTER: Duration = Duration::from_secs(2);

fn verdict(
    follower: &Follower,
    key: &Keypair,
    round: u64,
    pos: EntryPos,
    score: i64,
) -> Result<ledger::Entry, TrainerError> {
    let body = Body::Verdict(Verdict { round: ledger::Round(round), target: Target::Entry(pos), score });
    Ok(ledger::Entry::sign(follower.info().run_id, body, &[key])?)
}

/// Whether `pending` verdicts, the oldest scored `waited` ago, should be appended now, with at
/// most `per_slot` to a slot (`cairn validate`: [`VERDICTS_PER_SLOT`]; `cairn bench scale`
/// simulates others).
pub fn flush_due(pending: usize, waited: Option<Duration>, per_slot: usize) -> bool {
    pending >= per_slot || waited.is_some_and(|w| w >= VERDICT_FLUSH_AFTER)
}

/// Verdicts scored and not yet appended, with the events that report them once they are.
#[derive(Default)]
struct PendingVerdicts {
    entries: Vec<ledger::Entry>,
    events: Vec<ValidatorEvent>,
    since: Option<Instant>,
}

impl PendingVerdicts {
    fn push(&mut self, entry: ledger::Entry, event: ValidatorEvent) {
        self.since.get_or_insert_with(Instant::now);
        self.entries.push(entry);
        self.events.push(event);
    }

    /// Appends when the slot is full or the oldest verdict waited long enough.
    async fn flush_if_due(
        &mut self,
        follower: &mut Follower,
        events: &mut (dyn FnMut(ValidatorEvent) + Send),
    ) -> Result<(), TrainerError> {
        if flush_due(self.entries.len(), self.since.map(|t| t.elapsed()), VERDICTS_PER_SLOT) {
            self.flush(follower, events).await?;
        }
        Ok(())
    }

    /// Appends every pending verdict as one slot, then reports them.
    async fn flush(
        &mut self,
        follower: &mut Follower,
        events: &mut (dyn FnMut(ValidatorEvent) + Send),
    ) -> Result<(), TrainerError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        follower.append_batch(&self.entries).await?;
        self.entries.clear();
        self.since = None;
        for event in self.events.drain(..) {
            events(event);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn organisations(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("org-{i}")).collect()
    }

    #[test]
    fn each_contribution_is_scored_by_exactly_n_organisations_and_the_share_is_even() {
        let orgs = organisations(10);
        let run = ledger::RunId([7; 32]);
        let mut per_org: HashMap<&str, usize> = HashMap::new();
        let contributions = 2000;
        for c in 0..contributions {
            let worker = ledger::PublicKey(*blake3::hash(&(c as u64).to_le_bytes()).as_bytes());
            let round = c as u64 % 5;
            let chosen: Vec<&str> =
                orgs.iter().map(String::as_str).filter(|o| scores((&run, round, &worker), o, &orgs, 4)).collect();
            assert_eq!(chosen.len(), 4, "contribution {c}");
            // n = 3 picks a subset of n = 4's: validators with different shares still cover
            let three = orgs.iter().filter(|o| scores((&run, round, &worker), o, &orgs, 3)).count();
            assert_eq!(three, 3);
            assert!(
                orgs.iter()
                    .filter(|o| scores((&run, round, &worker), o, &orgs, 3))
                    .all(|o| chosen.contains(&o.as_str()))
            );
            for o in chosen {
                *per_org.entry(o).or_default() += 1;
            }
        }
        // each organisation's share is binomial(2000, 0.4): mean 800, sd about 22
        for (o, n) in &per_org {
            assert!((700..=900).contains(n), "{o} scores {n} of {contributions}");
        }
        assert_eq!(per_org.len(), 10);
    }

    #[test]
    fn a_share_at_or_above_the_organisations_scores_everything() {
        let orgs = organisations(3);
        let (run, worker) = (ledger::RunId([1; 32]), ledger::PublicKey([2; 32]));
        for n in [3, 4, usize::MAX] {
            assert!(orgs.iter().all(|o| scores((&run, 9, &worker), o, &orgs, n)));
        }
        assert!(orgs.iter().all(|o| !scores((&run, 9, &worker), o, &orgs, 0)));
    }

    #[test]
    fn the_scorers_change_with_the_round_and_the_worker() {
        let orgs = organisations(10);
        let run = ledger::RunId([3; 32]);
        let pick = |round: u64, worker: u8| -> Vec<String> {
            orgs.iter()
                .filter(|o| scores((&run, round, &ledger::PublicKey([worker; 32])), o, &orgs, 2))
                .cloned()
                .collect()
        };
        // 45 pairs of 10: a fixed pair would recur in every round, a hash-drawn one rarely
        let same_across_rounds = (1..50).filter(|&r| pick(r, 1) == pick(0, 1)).count();
        assert!(same_across_rounds < 8, "{same_across_rounds} of 49 rounds kept the same scorers");
        let same_across_workers = (2..50).filter(|&w| pick(0, w) == pick(0, 1)).count();
        assert!(same_across_workers < 8, "{same_across_workers} of 48 workers had the same scorers");
    }

    #[test]
    fn the_scoring_rank_is_blake3_derive_key_over_the_documented_bytes() {
        // the bytes docs/RUN.md lists, assembled here independently of scoring_rank
        let (run, worker) = (ledger::RunId([0xab; 32]), ledger::PublicKey([0xcd; 32]));
        let mut bytes = vec![0xab; 32];
        bytes.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0xcd; 32]);
        bytes.extend_from_slice(b"org-a");
        let mut h = blake3::Hasher::new_derive_key("cairn scoring rank v1");
        h.update(&bytes);
        assert_eq!(scoring_rank(&run, 5, &worker, "org-a"), *h.finalize().as_bytes());
    }

    #[test]
    fn verdicts_go_out_when_a_slot_is_full_or_the_oldest_waited_two_seconds() {
        let most = VERDICTS_PER_SLOT;
        assert!(!flush_due(0, None, most));
        assert!(!flush_due(most - 1, Some(Duration::from_millis(1999)), most));
        assert!(flush_due(most, Some(Duration::ZERO), most));
        assert!(flush_due(1, Some(Duration::from_secs(2)), most));
        assert!(flush_due(1, Some(Duration::ZERO), 1));
        // a slot holds them all
        assert!(VERDICTS_PER_SLOT <= usize::from(ledger::slot::MAX_BATCH_ENTRIES));
    }

    #[test]
    fn the_round_limit_counts_from_the_join_round_without_overflow() {
        assert!(!ran_enough(None, 0, u64::MAX));
        assert!(!ran_enough(Some(2), 3, 4));
        assert!(ran_enough(Some(2), 3, 5));
        assert!(!ran_enough(Some(1), u64::MAX, u64::MAX), "joined at the last round there is");
        assert!(!ran_enough(Some(u64::MAX), 5, 6));
        assert!(ran_enough(Some(0), u64::MAX, u64::MAX));
    }
}
