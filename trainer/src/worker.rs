//! The worker loop: catch up, train on the round's assignment, upload the update, append the signed
//! Contribution, take part in closing the round, follow the result, repeat.
//!
//! ```text
//!   join (snapshot + replay) ─▶ round r open, base = hash(state)
//!     ├─ no contribution of ours in r: assignment(seed, r, key) ─▶ forward/backward ─▶ momentum
//!     │    ─▶ DCT top-k encode ─▶ put blob ─▶ append Contribution(r, base, blob) ─▶ save momentum
//!     ├─ wait: sync; vote to close when close_ready, attest the result once it closed
//!     │        (Follower::take_part: one vote and one attestation per organisation)
//!     └─ round r final (a quorum of organisations attested it): state = verify's aggregation of
//!        the counted set ─▶ r + 1; the member whose attestation completed the quorum writes the
//!        snapshot every `snapshot_every` rounds
//! ```
//!
//! With overlapping rounds (`[rounds] overlap`, in the run's config), the worker does not idle
//! while round r closes: once it has contributed to r, it trains round r + 1 on a thread of its
//! own from the state it has (the one after r - 1) while this thread votes, attests and applies
//! r, then uploads and appends that contribution (base: the state after r - 1, which the round
//! rule accepts for r + 1 in such a run). Every contribution is still trained once, in round
//! order, on the newest state the worker had when it started.
//!
//! Crash safety: the momentum file is written after the Contribution is in the ledger, and a
//! restarted worker that finds its contribution for the open round does not train again. A worker
//! whose round closed before its contribution landed sees it void (late) and moves on. Every
//! update is computed from the state verify computed, never a locally drifted copy.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ledger::{Body, Contribution, Entry, Keypair};
use tch::Device;
use verify::replay::RoundReport;
use verify::{Header, NotCounted, Round, StateHash, WorkerKey};

use crate::TrainerError;
use crate::data::Dataset;
use crate::demo::DemoState;
use crate::follow::{Follower, RunInfo, TallyAction};
use crate::local::LocalSteps;
use crate::model::{Model, Precision};
use crate::pace::PollPace;
use crate::run_spec::TrainSpec;
use crate::score::milli_nats;
use crate::step::{AdamWConfig, StepConfig, local_step};
use crate::steps::{StepCounts, StepPolicy};
use crate::worker_state::{self, Restored, ResumePolicy};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Where the model trains.
    pub device: Device,
    /// Stop after contributing to this many rounds (`None`: until the run ends).
    pub rounds: Option<u64>,
    /// The momentum file (saved after every contribution).
    pub state_file: PathBuf,
    /// Pause between ledger polls while waiting and the ledger moves.
    pub poll: Duration,
    /// The longest pause while it does not: each poll that reads nothing doubles the pause up to
    /// this ([`crate::pace::PollPace`]).
    pub max_poll: Duration,
    /// The arithmetic of the local passes (f32, or bf16 matrix products on a GPU).
    pub precision: Precision,
    /// Leave each contribution for the organisation's gatherer (`cairn gather`, [`crate::gather`])
    /// and append it itself only if it is not in the ledger after this long (`None`: append it
    /// at once).
    pub gatherer_wait: Option<Duration>,
    /// Publishing and following the rounds' steps ([`crate::steps`]): a worker that follows them
    /// downloads one step a round instead of every counted update, and leaves attesting to the
    /// members that compute.
    pub steps: StepPolicy,
}

impl WorkerOptions {
    /// The pace of its ledger polls while it waits for a round's result.
    fn pace(&self) -> PollPace {
        PollPace::new(self.poll, self.max_poll)
    }
}

/// What a worker reports as it goes (the CLI prints these).
#[derive(Clone, Debug)]
pub enum WorkerEvent {
    /// Joined the run at `round` (after a snapshot if `from_snapshot`).
    Joined {
        /// The first open round.
        round: u64,
        /// Whether the start was a snapshot.
        from_snapshot: bool,
        /// Whether saved momentum was resumed.
        resumed: bool,
        /// Why not, when it was not (no file, or a file of another round).
        fresh: Option<worker_state::FreshReason>,
    },
    /// Appended a contribution.
    Contributed {
        /// Its round.
        round: u64,
        /// Mean training loss on the assignment, before the update (nats).
        loss: f64,
        /// Update bytes uploaded.
        bytes: u64,
        /// Seconds spent training and encoding.
        train_secs: f64,
        /// Seconds spent uploading the update.
        upload_secs: f64,
        /// Tokens trained on.
        tokens: u64,
        /// Whether the organisation's gatherer appended it (else the worker did).
        gathered: bool,
    },
    /// Found its contribution for the open round already in the ledger (a restart).
    AlreadyContributed {
        /// The round.
        round: u64,
    },
    /// Voted to close a round (for its organisation).
    Voted {
        /// The round.
        round: u64,
        /// The slots it had read.
        seen: u64,
    },
    /// Attested a closed round's result (for its organisation).
    Attested {
        /// The round.
        round: u64,
        /// The state attested.
        state: String,
        /// Contributions dropped because their blobs could not be read.
        dropped: usize,
    },
    /// A round ended (closed by anyone) and was applied.
    RoundApplied {
        /// The round.
        round: u64,
        /// Contributions counted.
        counted: usize,
        /// Whether ours counted, and if not, why.
        ours: Option<Result<(), NotCounted>>,
        /// The state hash after it.
        state: String,
        /// Applied through a published step rather than from the updates (then `counted` is
        /// the round rule's set before decoding: [`verify::replay::RoundReport::from_step`]).
        from_step: bool,
    },
    /// Published the ledger as Parquet.
    Exported {
        /// Its key in the run's store.
        key: String,
    },
    /// Uploaded a snapshot.
    Snapshot {
        /// The round it is the state after.
        round: u64,
        /// Its size.
        bytes: u64,
    },
}

/// What a worker did.
#[derive(Clone, Debug, Default)]
pub struct WorkerSummary {
    /// Contributions appended.
    pub contributed: u64,
    /// Of the rounds applied, those that counted ours.
    pub counted: u64,
    /// The first open round when the worker stopped.
    pub next_round: u64,
    /// The state hash then.
    pub state: String,
    /// What following the rounds' steps did (when the worker followed them).
    pub steps: Option<StepCounts>,
}

/// Runs the worker loop on the run in `store` until `options.rounds` contributions are made or the
/// run's last round closes.
pub async fn run_worker(
    store: storage::Store,
    key: &Keypair,
    options: &WorkerOptions,
    events: &mut (dyn FnMut(WorkerEvent) + Send),
) -> Result<WorkerSummary, TrainerError> {
    let mut follower = Follower::join_with(store, options.steps, Some(&key.public())).await?;
    follower.require_role(&key.public(), ledger::Role::Worker)?;
    follower.stage_as(&key.public())?;
    let me = WorkerKey(key.public().0);
    let info = follower.info().clone();
    let data = info.train.dataset().await?;
    let mut model = Model::from_state(&info.model, follower.state(), options.device)?.with_precision(options.precision);
    let mut model_hash = follower.state_hash();
    let (joined, from_snapshot) = (follower.round(), follower.joined_at().1);
    let layout = info.config.layout.clone();
    let run = verify::RunId(info.run_id.0);
    let mut demo =
        match worker_state::load(&options.state_file, run, &layout, joined, ResumePolicy::default(), options.device)? {
            Restored::Resumed { state, .. } => {
                events(WorkerEvent::Joined { round: joined.0, from_snapshot, resumed: true, fresh: None });
                state
            }
            Restored::Fresh { state, reason } => {
                events(WorkerEvent::Joined { round: joined.0, from_snapshot, resumed: false, fresh: Some(reason) });
                state
            }
        };
    let step = StepConfig {
        micro_batch: info.train.micro_batch,
        clip_norm: (info.train.clip_norm > 0.0).then_some(info.train.clip_norm),
    };
    // With local steps, a copy trained by an AdamW whose moments carry over from round to round.
    let mut local = match info.train.local_steps {
        0 | 1 => None,
        _ => {
            let inner = AdamWConfig { weight_decay: 0.0, step, ..AdamWConfig::default() };
            Some(
                LocalSteps::new(&info.model, follower.state(), inner, options.device)?
                    .with_precision(options.precision),
            )
        }
    };
    let mut summary = WorkerSummary::default();
    // How long the previous round's result took to arrive and to apply, reported with the next
    // contribution (the ledger has no clock; docs/DASHBOARD.md).
    let mut last_round_times: Option<(Duration, Duration)> = None;
    // When the last training ended: the time from there to the next one's start is the compute
    // idle (reported as `idle_ms`; with overlapping rounds it is what the overlap saves).
    let mut trained_until: Option<Instant> = None;
    // The round this loop last contributed to ahead of time (overlapping rounds).
    let mut ahead_of_time: Option<Round> = None;
    loop {
        for report in follower.sync().await? {
            applied(&report, &me, &mut summary, events);
        }
        let round = follower.round();
        if let Some(since) = follower.exclusion(&me) {
            return Err(TrainerError::Excluded { since: since.to_string() });
        }
        if info.train.is_past_end(round.0) || options.rounds.is_some_and(|n| summary.contributed >= n) {
            break;
        }
        if follower.has_contributed(&key.public()) {
            if ahead_of_time != Some(round) {
                events(WorkerEvent::AlreadyContributed { round: round.0 });
            }
        } else if !follower.is_closed() {
            sync_model(&mut model, &mut model_hash, &follower)?;
            let started = Instant::now();
            let idle = trained_until.map(|t| started.saturating_duration_since(t));
            let (bytes, loss) = tokio::task::block_in_place(|| {
                let local = local.as_mut();
                compute_update(&model, &mut demo, local, &data, &step, &follower, &me, info.train.momentum_decay)
            })?;
            trained_until = Some(Instant::now());
            let (train_time, waited) = (started.elapsed(), last_round_times.take());
            let base = follower.state_hash();
            let contributed = Contributed { round, base, bytes, loss, train_time, waited, idle };
            contribute(&mut follower, key, &info, options, &demo, contributed, events).await?;
            summary.contributed += 1;
        }
        // With overlapping rounds: the next round, trained while this one closes.
        let next = Round(round.0 + 1);
        let ahead = info.config.rounds.overlap
            && !info.train.is_past_end(next.0)
            && options.rounds.is_none_or(|n| summary.contributed < n)
            && !follower.has_contributed_to(&key.public(), next);
        let waiting = Instant::now();
        let ((reports, apply), trained) = if ahead {
            sync_model(&mut model, &mut model_hash, &follower)?;
            let base = follower.state_hash();
            let decay = info.train.momentum_decay;
            let started = Instant::now();
            let idle = trained_until.map(|t| started.saturating_duration_since(t));
            // The model moves to the training thread (its tensors may not be shared) and back. If
            // the round becomes final first, this thread waits for the training to end before it
            // takes part in the next round, as it would while training without overlap.
            let (waited, joined) = tokio::task::block_in_place(|| {
                std::thread::scope(|s| {
                    let (demo, local, data, info) = (&mut demo, local.as_mut(), &data, &info);
                    let job = s.spawn(move || {
                        let update =
                            compute_update_at(&model, demo, local, data, &step, info, (next, base), &me, decay);
                        (model, update.map(|u| (u, started.elapsed())))
                    });
                    let runtime = tokio::runtime::Handle::current();
                    let waited = runtime.block_on(wait_for_round(&mut follower, key, options.pace(), events));
                    (waited, job.join())
                })
            });
            let (back, trained) = joined
                .map_err(|_| TrainerError::InvalidConfig("the training thread of the next round panicked".into()))?;
            model = back;
            let trained = trained?;
            trained_until = Some(started + trained.1);
            (waited?, Some((trained, base, idle)))
        } else {
            (wait_for_round(&mut follower, key, options.pace(), events).await?, None)
        };
        let waited = waiting.elapsed().saturating_sub(apply);
        last_round_times = Some((waited, apply));
        for report in reports {
            applied(&report, &me, &mut summary, events);
        }
        if let Some((((bytes, loss), train_time), base, idle)) = trained {
            // Only for the round it was trained for, while it is open (a follower that applied
            // several rounds meanwhile drops it: the part it would have sent has left the
            // momentum, as a late contribution's has).
            if follower.round() == next && !follower.is_closed() {
                let waited = last_round_times.take();
                let contributed = Contributed { round: next, base, bytes, loss, train_time, waited, idle };
                contribute(&mut follower, key, &info, options, &demo, contributed, events).await?;
                summary.contributed += 1;
                ahead_of_time = Some(next);
            }
        }
    }
    summary.next_round = follower.round().0;
    summary.state = follower.state_hash().to_string();
    summary.steps = follower.step_policy().follow.then(|| follower.step_counts());
    Ok(summary)
}

/// Loads the follower's state into `model` unless it holds it already (`model_hash`).
fn sync_model(model: &mut Model, model_hash: &mut StateHash, follower: &Follower) -> Result<(), TrainerError> {
    if *model_hash != follower.state_hash() {
        model.load_state(follower.state())?;
        *model_hash = follower.state_hash();
    }
    Ok(())
}

/// An update trained and encoded, to upload and append.
struct Contributed {
    round: Round,
    /// The state it was trained from.
    base: StateHash,
    bytes: Bytes,
    loss: f64,
    train_time: Duration,
    /// The previous round's wait for its result and time to apply it, if measured.
    waited: Option<(Duration, Duration)>,
    /// From the end of this worker's previous training to the start of this one, if any.
    idle: Option<Duration>,
}

/// Uploads the update, appends its signed Contribution, then saves the momentum (after the entry
/// is in the ledger: see the crash-safety note at the top).
async fn contribute(
    follower: &mut Follower,
    key: &Keypair,
    info: &RunInfo,
    options: &WorkerOptions,
    demo: &DemoState,
    c: Contributed,
    events: &mut (dyn FnMut(WorkerEvent) + Send),
) -> Result<(), TrainerError> {
    let size = c.bytes.len() as u64;
    let uploading = Instant::now();
    let blob = info.store.put_blob(c.bytes).await?;
    crate::crashpoint::reached("worker:uploaded");
    let upload_time = uploading.elapsed();
    let tokens = (info.train.sequences_per_round() * info.train.seq_len) as u64;
    let mut metrics = vec![
        ("device".into(), device_code(options.device)),
        ("loss_milli".into(), milli_nats(c.loss)),
        ("tokens".into(), i64::try_from(tokens).unwrap_or(i64::MAX)),
        ("train_ms".into(), millis(c.train_time)),
        ("upload_ms".into(), millis(upload_time)),
    ];
    if let Some((wait, apply)) = c.waited {
        metrics.extend([("apply_ms".into(), millis(apply)), ("wait_ms".into(), millis(wait))]);
    }
    if let Some(idle) = c.idle {
        metrics.push(("idle_ms".into(), millis(idle)));
    }
    // Sorted by name, as the entry format requires.
    metrics.sort();
    let body = Body::Contribution(Contribution {
        round: ledger::Round(c.round.0),
        base_state: ledger::StateHash(c.base.0),
        assignment: assignment_bytes(c.round, info.train.sequences_per_round()),
        blob,
        blob_size: size,
        metrics,
    });
    let gathered =
        append_contribution(follower, key, options, Entry::sign(info.run_id, body, &[key])?, c.round).await?;
    let run = verify::RunId(info.run_id.0);
    worker_state::save(&options.state_file, demo, &info.config.layout, run, c.round)?;
    let (train_secs, upload_secs) = (c.train_time.as_secs_f64(), upload_time.as_secs_f64());
    events(WorkerEvent::Contributed {
        round: c.round.0,
        loss: c.loss,
        bytes: size,
        train_secs,
        upload_secs,
        tokens,
        gathered,
    });
    Ok(())
}

/// Appends `entry`, this worker's contribution to `round`. With a gatherer wait it first leaves
/// the entry in its organisation's pending folder for the gatherer, and appends it itself only if
/// it is not in the ledger when the wait ends, when a close vote for the round appears (its
/// deadline passed), or when the pending write fails: a silent or hostile gatherer delays a
/// contribution by the wait at most, and never past the first close vote. Returns whether the
/// gatherer appended it.
async fn append_contribution(
    follower: &mut Follower,
    key: &Keypair,
    options: &WorkerOptions,
    entry: Entry,
    round: Round,
) -> Result<bool, TrainerError> {
    let me = key.public();
    let organisation = follower.reader().state().organisation(&me).map(str::to_string);
    let (Some(wait), Some(organisation)) = (options.gatherer_wait, organisation) else {
        follower.append(entry).await?;
        return Ok(false);
    };
    let pending = crate::gather::pending_key(&organisation, ledger::Round(round.0), &me);
    let store = follower.info().store.clone();
    match store.put(&pending, Bytes::from(entry.encode())).await {
        Ok(_) => {
            crate::crashpoint::reached("worker:pending");
            let until = Instant::now() + wait;
            loop {
                follower.poll().await?;
                if follower.has_contributed_to(&me, round) {
                    return Ok(true);
                }
                // A close vote means a member's clock passed the deadline: no more waiting.
                let rounds = follower.reader().state().rounds();
                let closing = rounds.close(ledger::Round(round.0)).is_some()
                    || (rounds.open_round().0 == round.0 && rounds.voters().next().is_some());
                let left = until.saturating_duration_since(Instant::now());
                if closing || left.is_zero() {
                    break;
                }
                tokio::time::sleep(options.poll.min(left)).await;
            }
            tracing::warn!(round = round.0, "the gatherer did not append the contribution in time; appending it");
        }
        Err(e) => {
            tracing::warn!(round = round.0, error = %e, "could not leave the contribution for the gatherer; appending it")
        }
    }
    follower.append(entry).await?;
    // The gatherer skips a worker whose contribution is in the ledger; this only saves it a read.
    if let Err(e) = store.delete(&pending).await {
        tracing::debug!(key = pending, error = %e, "could not delete the pending contribution");
    }
    Ok(false)
}

/// Milliseconds, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The `device` metric of a contribution: 0 CPU, 1 CUDA, 2 MPS, 3 anything else (docs/FORMAT.md).
fn device_code(device: Device) -> i64 {
    match device {
        Device::Cpu => 0,
        Device::Cuda(_) => 1,
        Device::Mps => 2,
        _ => 3,
    }
}

/// Trains `me`'s assignment for the follower's open round from its state (which `model` must
/// hold), feeds the momentum and encodes the update; returns the blob bytes and the training loss.
/// With `local` (the run's `train.local_steps` > 1), the assignment is split into that many parts
/// in order, `local` takes one AdamW step on each from the state, and the momentum takes the
/// pseudo-gradient ([`crate::local`]); without, one gradient of the whole assignment.
#[allow(clippy::too_many_arguments)]
pub fn compute_update(
    model: &Model,
    demo: &mut DemoState,
    local: Option<&mut LocalSteps>,
    data: &Dataset,
    step: &StepConfig,
    follower: &Follower,
    me: &WorkerKey,
    decay: f64,
) -> Result<(Bytes, f64), TrainerError> {
    let at = (follower.round(), follower.state_hash());
    compute_update_at(model, demo, local, data, step, follower.info(), at, me, decay)
}

/// [`compute_update`] for `round`, from the state with hash `base` that `model` holds (with
/// overlapping rounds, the round after the open one, from the open round's base).
#[allow(clippy::too_many_arguments)]
pub fn compute_update_at(
    model: &Model,
    demo: &mut DemoState,
    local: Option<&mut LocalSteps>,
    data: &Dataset,
    step: &StepConfig,
    info: &RunInfo,
    (round, base): (Round, StateHash),
    me: &WorkerKey,
    decay: f64,
) -> Result<(Bytes, f64), TrainerError> {
    let layout = &info.config.layout;
    let (direction, loss) = train_direction(model, local, data, step, &info.train, &info.config.hyper, round, me)?;
    demo.accumulate(&direction, layout, decay, 1.0)?;
    let header = Header {
        run: verify::RunId(info.run_id.0),
        round,
        base,
        worker: *me,
        layout: layout.hash(),
        compression: info.config.hyper.compression,
    };
    let update = demo.encode(&header, layout)?;
    Ok((Bytes::from(update.to_bytes()), loss))
}

/// What worker `me` trains in `round` from the state `model` holds, before DeMo: one gradient of
/// its whole assignment, or with `local` (the run's `train.local_steps` > 1) the pseudo-gradient of
/// that many AdamW steps, one per part of the assignment in order ([`crate::local`]). Returns the
/// direction (layout order) and the mean training loss.
#[allow(clippy::too_many_arguments)]
pub fn train_direction(
    model: &Model,
    local: Option<&mut LocalSteps>,
    data: &Dataset,
    step: &StepConfig,
    train: &TrainSpec,
    hyper: &verify::Hyper,
    round: Round,
    me: &WorkerKey,
) -> Result<(Vec<tch::Tensor>, f64), TrainerError> {
    let indices = data.assignment(round, me, train.sequences_per_round());
    let batch = data.batch(&indices, model.device())?;
    match local {
        None => {
            let g = local_step(model, &batch, step)?;
            Ok((g.grads, g.loss))
        }
        Some(local) => {
            let parts = crate::simulate::shards(&batch, train.local_steps as usize)?;
            let lr = train.inner_rate(&hyper.schedule, round);
            crate::local::pseudo_gradient(local, model, &parts, lr)
        }
    }
}

/// The Contribution's assignment field: the round and the sequence count (the indices themselves
/// are a function of the run seed, the round and the worker key, which anyone recomputes).
pub fn assignment_bytes(round: Round, sequences: usize) -> Vec<u8> {
    let mut out = round.0.to_le_bytes().to_vec();
    out.extend_from_slice(&(sequences as u64).to_le_bytes());
    out
}

/// Follows the ledger until the current round is final, voting and attesting as an honest member
/// does ([`Follower::take_part`]). Returns the reports of the rounds applied meanwhile.
pub(crate) async fn wait_for_round(
    follower: &mut Follower,
    key: &Keypair,
    mut pace: PollPace,
    events: &mut (dyn FnMut(WorkerEvent) + Send),
) -> Result<(Vec<RoundReport>, Duration), TrainerError> {
    let round = follower.round();
    let opened = Instant::now();
    let mut reports = Vec::new();
    let mut apply = Duration::ZERO;
    while follower.round() == round {
        match follower.take_part(key, opened.elapsed()).await? {
            Some(TallyAction::Voted { round, seen }) => events(WorkerEvent::Voted { round, seen }),
            Some(TallyAction::Attested { round, state, dropped }) => {
                events(WorkerEvent::Attested { round, state: state.to_string(), dropped })
            }
            Some(TallyAction::WaitingForBlobs { .. }) | None => {}
        }
        // The one read of the ledger per pass: `sync` polls.
        let syncing = Instant::now();
        let synced = follower.sync().await?;
        if !synced.is_empty() {
            apply += syncing.elapsed();
        }
        for report in synced {
            after_final(follower, key, &report, events).await?;
            reports.push(report);
        }
        if follower.round() == round {
            tokio::time::sleep(pace.after(follower.take_read())).await;
        }
    }
    Ok((reports, apply))
}

/// After a round became final, on a snapshot round (every `snapshot_every`) and only when the
/// follower's state is that round's: the member whose attestation completed the quorum writes the
/// snapshot and the part of the Parquet export since the previous snapshot round (derived from the
/// log as read); every member signs the checkpoint that ends with that attestation, so it gathers
/// a quorum of organisations.
pub async fn after_final(
    follower: &mut Follower,
    key: &Keypair,
    report: &RoundReport,
    events: &mut (dyn FnMut(WorkerEvent) + Send),
) -> Result<(), TrainerError> {
    let every = follower.info().train.snapshot_every;
    let round = report.round;
    if every == 0 || !(round.0 + 1).is_multiple_of(every) || follower.round().0 != round.0.saturating_add(1) {
        return Ok(());
    }
    if follower.finalised_by(round) == Some(key.public()) {
        let bytes = follower.write_snapshot(key).await?;
        events(WorkerEvent::Snapshot { round: round.0, bytes });
        match follower.publish_export(round).await {
            Ok(key) => events(WorkerEvent::Exported { key }),
            Err(e) => tracing::warn!(
                error = %e,
                "could not publish this part of the Parquet export (`cairn export --publish` writes the whole log)"
            ),
        }
    }
    if let Err(e) = follower.publish_checkpoint(key, round).await {
        tracing::warn!(error = %e, "could not sign the checkpoint; the next snapshot round will try again");
    }
    Ok(())
}

fn applied(
    report: &RoundReport,
    me: &WorkerKey,
    summary: &mut WorkerSummary,
    events: &mut (dyn FnMut(WorkerEvent) + Send),
) {
    let ours = if report.counted.iter().any(|c| c.worker == *me) {
        summary.counted += 1;
        Some(Ok(()))
    } else {
        report.not_counted.iter().find(|(c, _)| c.worker == *me).map(|(_, why)| Err(why.clone()))
    };
    events(WorkerEvent::RoundApplied {
        round: report.round.0,
        counted: report.counted.len(),
        ours,
        state: report.state.to_string(),
        from_step: report.from_step,
    });
}
