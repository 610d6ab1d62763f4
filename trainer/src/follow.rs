//! A participant's view of a run: the ledger as read so far, and the consensus state computed from
//! it with verify's replay. Workers and validators both stand on it.
//!
//! ```text
//!   join:  genesis ─▶ TrainSpec ─▶ newest confirmed snapshot (or the genesis state)
//!                                   └─▶ replay every later closed round ─▶ state before round r
//!   sync:  poll the ledger ─▶ while round r has a RoundClose: apply it (verify) ─▶ r += 1
//!   close: round r's provisional plan (the counted set if a RoundClose landed at the ledger's end)
//!          ─▶ apply it to a copy ─▶ sign RoundClose(r, hash) ─▶ write it at exactly that slot,
//!          or, if another writer took the slot, sync and look again
//! ```
//!
//! The clock never enters here: when to close is [`close_ready`]'s answer to times the caller
//! measured. Claimed hashes are never trusted: a RoundClose whose hash differs from the computed
//! one is recorded as a discrepancy and the computed state goes on.

use std::time::Duration;

use bytes::Bytes;
use ledger::{Appender, Body, Entry, Keypair, LoggedEntry, Reader, Role, RoundClose, Snapshot, Target};
use storage::Store;
use verify::replay::{Discrepancy, RoundReport, fetch_blobs, replay_from_latest_snapshot};
use verify::{Replay, Round, RoundPlan, RoundRule, RunConfig, Start, State, StateHash, WorkerKey};

use crate::TrainerError;
use crate::model::ModelConfig;
use crate::run_spec::TrainSpec;

/// What a run is, from its Genesis entry.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The run's store (scoped to the run).
    pub store: Store,
    /// The run id.
    pub run_id: ledger::RunId,
    /// The consensus config.
    pub config: RunConfig,
    /// The training spec from the config's `extra` bytes.
    pub train: TrainSpec,
    /// The model shape.
    pub model: ModelConfig,
}

/// The ledger and the consensus state of one run, as one participant follows it.
#[derive(Debug)]
pub struct Follower {
    info: RunInfo,
    reader: Reader,
    /// The state before round `next`.
    state: State,
    hash: StateHash,
    next: Round,
    /// The round the follow started at (after the snapshot it started from, if any).
    joined_at: Round,
    /// Whether the start was a snapshot rather than the genesis state.
    from_snapshot: bool,
    discrepancies: Vec<Discrepancy>,
    /// Reports of rounds applied outside `sync` (our own closes), handed out by the next `sync`.
    pending: Vec<RoundReport>,
}

/// How a close attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseOutcome {
    /// Our RoundClose landed; the follower moved on to the next round.
    Closed {
        /// The state hash claimed (and computed).
        state: StateHash,
        /// Contributions counted.
        counted: usize,
    },
    /// Another entry took the slot first; sync and look again.
    Raced,
    /// The round was already closed.
    AlreadyClosed,
}

impl Follower {
    /// Joins the run in `store`: reads the whole ledger, starts from the newest snapshot whose
    /// round's RoundClose confirms it (the genesis state if none), and replays the rounds after it.
    pub async fn join(store: Store) -> Result<Follower, TrainerError> {
        let run_id = ledger::genesis_run_id(&store).await?;
        let reader = Reader::replay(store.clone(), run_id).await?;
        let (_, config, _) = verify::replay::genesis_config(reader.entries())?;
        let train = TrainSpec::from_extra(&config.extra)?;
        let model = train.model_config()?;
        if model.layout()? != config.layout {
            return Err(TrainerError::InvalidConfig(format!(
                "the genesis layout is not the layout of preset {}",
                train.preset
            )));
        }
        let replayed = replay_from_latest_snapshot(reader.entries(), &store).await?;
        let joined_at = replayed.report.first_round;
        let from_snapshot = joined_at.0 > 0;
        let next = replayed.report.next_round;
        let hash = replayed.state.hash();
        let info = RunInfo { store, run_id, config, train, model };
        tracing::info!(run = %run_id, round = next.0, from_snapshot, "joined the run");
        Ok(Follower {
            info,
            reader,
            state: replayed.state,
            hash,
            next,
            joined_at,
            from_snapshot,
            discrepancies: replayed.report.discrepancies,
            pending: Vec::new(),
        })
    }

    /// Reads what was appended since the last call and applies every round that closed. Returns
    /// the reports of the rounds applied since the last call (counted and not-counted
    /// contributions, with reasons), including rounds this follower closed itself.
    pub async fn sync(&mut self) -> Result<Vec<RoundReport>, TrainerError> {
        self.reader.poll().await?;
        if self.reader.state().round_close(ledger::Round(self.next.0)).is_none() {
            return Ok(std::mem::take(&mut self.pending));
        }
        let start = Start::Continue { next: self.next, state: self.state.clone() };
        let replayed = verify::replay(self.reader.entries(), start, &self.info.store).await?;
        for d in &replayed.report.discrepancies {
            tracing::warn!(round = d.round.0, pos = %d.pos, claimed = %d.claimed, computed = %d.computed,
                "a claimed state hash differs from the computed one; going on with the computed state");
        }
        self.discrepancies.extend(replayed.report.discrepancies.iter().copied());
        self.state = replayed.state;
        self.hash = self.state.hash();
        self.next = replayed.report.next_round;
        let mut reports = std::mem::take(&mut self.pending);
        reports.extend(replayed.report.rounds);
        Ok(reports)
    }

    /// Reads what was appended since the last call without applying rounds (see [`Follower::sync`]).
    pub async fn poll(&mut self) -> Result<u64, TrainerError> {
        Ok(self.reader.poll().await?)
    }

    /// Polls until something new arrives or `timeout` passes (whichever first).
    pub async fn wait(&mut self, timeout: Duration) -> Result<(), TrainerError> {
        let before = self.reader.next_seq();
        let step = Duration::from_millis(100).min(timeout);
        let mut waited = Duration::ZERO;
        while waited < timeout {
            tokio::time::sleep(step).await;
            waited += step;
            if self.reader.poll().await? > 0 || self.reader.next_seq() != before {
                break;
            }
        }
        Ok(())
    }

    /// The run.
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// The ledger reader.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The first round without a RoundClose: the round being worked on.
    pub fn round(&self) -> Round {
        self.next
    }

    /// The state before [`Follower::round`].
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Its hash: the base every contribution to the current round must name.
    pub fn state_hash(&self) -> StateHash {
        self.hash
    }

    /// The round this follower started replaying at, and whether that was after a snapshot.
    pub fn joined_at(&self) -> (Round, bool) {
        (self.joined_at, self.from_snapshot)
    }

    /// Claimed hashes that differed from the computed ones, since joining.
    pub fn discrepancies(&self) -> &[Discrepancy] {
        &self.discrepancies
    }

    /// The round rule over the ledger read so far.
    pub fn rule(&self) -> RoundRule {
        RoundRule::new(self.reader.entries(), &self.info.config)
    }

    /// The current round's counted set if it closed at the ledger's end.
    pub fn provisional(&self) -> Option<RoundPlan> {
        self.rule().provisional(self.next, self.hash)
    }

    /// Accepted entries of the current round signed by `key`.
    pub fn own_entries(&self, key: &ledger::PublicKey) -> impl Iterator<Item = &LoggedEntry> {
        let round = self.next.0;
        self.reader
            .by_signer(key)
            .filter(move |e| e.entry.as_ref().and_then(|x| x.body.round()).map(|r| r.0) == Some(round))
    }

    /// Checks that `key` is a member with `role` in the roster as read so far.
    pub fn require_role(&self, key: &ledger::PublicKey, role: Role) -> Result<(), TrainerError> {
        match self.reader.state().member(key) {
            Some(m) if m.role == role => Ok(()),
            Some(m) => Err(TrainerError::InvalidConfig(format!(
                "key {key} is a {:?} in this run's roster, not a {role:?}",
                m.role
            ))),
            None => Err(TrainerError::InvalidConfig(format!(
                "key {key} is not in this run's roster (ask an admin to add it)"
            ))),
        }
    }

    /// The verdict that excluded `worker`, if validators' verdicts excluded it.
    pub fn exclusion(&self, worker: &WorkerKey) -> Option<ledger::EntryPos> {
        self.rule().exclusions().into_iter().find(|(w, _)| w == worker).map(|(_, pos)| pos)
    }

    /// Whether `key` has an accepted contribution to the current round.
    pub fn has_contributed(&self, key: &ledger::PublicKey) -> bool {
        self.own_entries(key).any(|e| matches!(e.entry.as_ref().map(|x| &x.body), Some(Body::Contribution(_))))
    }

    /// The facts [`close_ready`] decides on, for the current round.
    pub fn close_facts(&self) -> Option<CloseFacts> {
        let rule = self.rule();
        let plan = rule.provisional(self.next, self.hash)?;
        let excluded: Vec<WorkerKey> = rule.exclusions().into_iter().map(|(w, _)| w).collect();
        let roster = self.reader.state().roster();
        let active_workers: Vec<WorkerKey> = roster
            .values()
            .filter(|m| m.role == Role::Worker)
            .map(|m| WorkerKey(m.key.0))
            .filter(|w| !excluded.contains(w))
            .collect();
        let contributed = active_workers.iter().filter(|w| rule.candidates(self.next).any(|c| c.worker == **w)).count();
        let has_validators = roster.values().any(|m| m.role == Role::Validator);
        let judged = self.judged_positions();
        let unjudged = plan.counted.iter().filter(|c| !judged.contains(&c.pos)).count();
        Some(CloseFacts {
            counted: plan.counted.len(),
            active_workers: active_workers.len(),
            contributed,
            has_validators,
            unjudged,
        })
    }

    /// Positions of current-round contributions that have an accepted verdict.
    fn judged_positions(&self) -> Vec<ledger::EntryPos> {
        self.reader
            .by_round(ledger::Round(self.next.0))
            .filter_map(|e| match e.entry.as_ref().map(|x| &x.body) {
                Some(Body::Verdict(v)) => match v.target {
                    Target::Entry(p) => Some(p),
                    Target::Blob(_) => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Tries to close the current round with `key`: computes the round as if its RoundClose were
    /// the next slot, and writes the RoundClose there and only there.
    pub async fn close_round(&mut self, key: &Keypair) -> Result<CloseOutcome, TrainerError> {
        let Some(plan) = self.provisional() else { return Ok(CloseOutcome::AlreadyClosed) };
        let blobs = fetch_blobs(&self.info.store, &plan).await;
        let mut replay =
            Replay::new(self.reader.entries(), Start::Continue { next: self.next, state: self.state.clone() })?;
        let counted = plan.counted.len();
        let seq = plan.close.seq;
        replay.apply(plan, blobs)?;
        let after = replay.finish();
        let hash = after.state.hash();
        let close =
            Body::RoundClose(RoundClose { round: ledger::Round(self.next.0), state: ledger::StateHash(hash.0) });
        let entry = Entry::sign(self.info.run_id, close, &[key])?;
        if !ledger::append_at(&self.info.store, seq, &[entry]).await? {
            return Ok(CloseOutcome::Raced);
        }
        tracing::info!(round = self.next.0, counted, state = %hash, "closed the round");
        // The plan we applied is the real one now: take its state, then read our own slot.
        self.pending.extend(after.report.rounds);
        self.state = after.state;
        self.hash = hash;
        // A snapshot near u64::MAX can start a follower at the last round there is.
        self.next = Round(self.next.0.saturating_add(1));
        self.reader.poll().await?;
        Ok(CloseOutcome::Closed { state: hash, counted })
    }

    /// Uploads the current state (the state after round `round() - 1`) and appends a Snapshot
    /// entry for it. Returns the blob's size.
    pub async fn write_snapshot(&mut self, key: &Keypair) -> Result<u64, TrainerError> {
        let Some(round) = self.next.0.checked_sub(1) else {
            return Err(TrainerError::InvalidConfig("no round closed yet: nothing to snapshot".into()));
        };
        let bytes = Bytes::from(self.state.to_safetensors()?);
        let size = bytes.len() as u64;
        let blob = self.info.store.put_blob(bytes).await?;
        let body = Body::Snapshot(Snapshot {
            round: ledger::Round(round),
            state: ledger::StateHash(self.hash.0),
            blob,
            blob_size: size,
        });
        self.append(Entry::sign(self.info.run_id, body, &[key])?).await?;
        tracing::info!(round, size, "snapshot written");
        Ok(size)
    }

    /// Appends `entry` after everything this follower has read (never past a hole it did not see).
    pub async fn append(&mut self, entry: Entry) -> Result<ledger::Seq, TrainerError> {
        let mut appender = Appender::starting_at(self.info.store.clone(), self.reader.next_seq());
        Ok(appender.append(&[entry]).await?)
    }

    /// Writes the ledger as read so far as Parquet at `exports/{slots:020}.parquet` (derived data for
    /// DuckDB or pandas users; never authoritative). Returns the key.
    pub async fn publish_export(&self) -> Result<String, TrainerError> {
        Ok(ledger::export::write_to_store(&self.reader, &self.info.store).await?.0)
    }

    /// Signs and publishes a checkpoint over the slots read so far (cosigning an equal one).
    pub async fn publish_checkpoint(&mut self, key: &Keypair) -> Result<(), TrainerError> {
        self.reader.publish_checkpoint(key).await?;
        Ok(())
    }
}

/// What the close decision looks at, for one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseFacts {
    /// Contributions that would count if the round closed now.
    pub counted: usize,
    /// Workers in the roster that are not excluded.
    pub active_workers: usize,
    /// Of them, how many have a contribution entry for the round (counted or not).
    pub contributed: usize,
    /// Whether the roster has validators (then a closer waits for their verdicts).
    pub has_validators: bool,
    /// Counted contributions without a verdict yet.
    pub unjudged: usize,
}

/// Whether an honest participant closes the round now. `open_for` is how long this participant
/// has seen the round open (its own clock; consensus never sees it). A round closes once it has
/// `min_contributions` and either every active worker contributed or the deadline passed, and,
/// when the roster has validators, every counted contribution was judged or the verdict wait
/// after the deadline passed too.
pub fn close_ready(facts: &CloseFacts, config: &RunConfig, train: &TrainSpec, open_for: Duration) -> bool {
    let deadline = Duration::from_secs(train.deadline_secs);
    // Both come from the Genesis entry: a sum past Duration's range means "never".
    let verdict_deadline = deadline.saturating_add(Duration::from_secs(train.verdict_wait_secs));
    let enough = facts.counted >= config.rounds.min_contributions.max(1) as usize;
    let everyone = facts.contributed >= facts.active_workers;
    let judged = !facts.has_validators || facts.unjudged == 0 || open_for >= verdict_deadline;
    enough && (everyone || open_for >= deadline) && judged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_spec::RunSpec;

    #[test]
    fn close_waits_for_the_minimum_the_workers_or_the_deadline_and_the_verdicts() {
        let parts = RunSpec::parse(RunSpec::EXAMPLE).unwrap().genesis_parts(crate::model::BYTE_VOCAB).unwrap();
        let (config, train) = (parts.config, parts.train);
        let facts = CloseFacts { counted: 2, active_workers: 3, contributed: 2, has_validators: true, unjudged: 0 };
        let secs = Duration::from_secs;
        assert!(!close_ready(&facts, &config, &train, secs(1)), "a worker is missing and the deadline is ahead");
        assert!(close_ready(&facts, &config, &train, secs(train.deadline_secs)));
        let all = CloseFacts { contributed: 3, counted: 3, ..facts };
        assert!(close_ready(&all, &config, &train, secs(0)));
        let unjudged = CloseFacts { unjudged: 1, ..all };
        assert!(!close_ready(&unjudged, &config, &train, secs(train.deadline_secs)));
        assert!(close_ready(&unjudged, &config, &train, secs(train.deadline_secs + train.verdict_wait_secs)));
        let none = CloseFacts { counted: 0, contributed: 3, ..facts };
        assert!(!close_ready(&none, &config, &train, secs(1_000_000)), "never closes an empty round");
    }

    /// The deadlines come from the Genesis entry's training spec: a sum past `Duration`'s range
    /// used to panic (overflow when adding durations) instead of meaning "never".
    #[test]
    fn close_ready_survives_deadlines_at_the_top_of_the_range() {
        let parts = RunSpec::parse(RunSpec::EXAMPLE).unwrap().genesis_parts(crate::model::BYTE_VOCAB).unwrap();
        let mut train = parts.train;
        train.deadline_secs = u64::MAX;
        train.verdict_wait_secs = u64::MAX;
        let facts = CloseFacts { counted: 2, active_workers: 2, contributed: 2, has_validators: true, unjudged: 1 };
        assert!(!close_ready(&facts, &parts.config, &train, Duration::from_secs(1_000_000)));
        assert!(close_ready(&facts, &parts.config, &train, Duration::MAX));
        let judged = CloseFacts { unjudged: 0, ..facts };
        assert!(close_ready(&judged, &parts.config, &train, Duration::ZERO));
    }
}
