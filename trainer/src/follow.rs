//! A participant's view of a run: the ledger as read so far, and the consensus state computed from
//! it with verify's replay. Workers and validators both stand on it.
//!
//! ```text
//!   join:   genesis ─▶ TrainSpec ─▶ newest usable snapshot (attested state, readable blob; older
//!                                   ones, then the genesis state, when it is not)
//!                                   └─▶ replay every later final round ─▶ state before round r
//!   sync:   poll the ledger ─▶ while round r is final: apply it (verify) ─▶ r += 1
//!   vote:   round r open, close_ready (own clock) and our organisation has not voted
//!           ─▶ CloseVote(r, seen = the slots read so far)
//!   attest: round r closed, not final ─▶ its provisional plan, every counted blob fetched
//!           (canonical, then mirrors); one that fails DROP_AFTER_FAILED_READS reads in a row
//!           is dropped ─▶ apply the rest to a copy ─▶ Attestation(r, state, dropped), unless our
//!           organisation's latest attestation already says that; a blob another organisation
//!           dropped but we read is re-published under our organisation's mirror prefix
//! ```
//!
//! The clock never enters here: when to vote is [`close_ready`]'s answer to times the caller
//! measured. A round's result is what a quorum of organisations attested; replay recomputes it,
//! and an attested hash that differs from the computed one is recorded as a discrepancy.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use ledger::{
    Appender, Attestation, BlobId, Body, CloseVote, Entry, EntryPos, Keypair, LoggedEntry, PublicKey, Reader, Role,
    Snapshot, Target,
};
use storage::Store;
use verify::replay::{Discrepancy, RoundReport, RunBlobs, SkippedSnapshot, fetch_blobs, latest_start, mirror_prefix};
use verify::{BlobSource, Replay, Round, RoundRule, RunConfig, State, StateHash, WorkerKey};

use crate::TrainerError;
use crate::model::ModelConfig;
use crate::run_spec::TrainSpec;
use crate::steps::{StepCounts, StepPolicy, Steps, apply_final_rounds};

/// Failed reads in a row (one per attestation attempt, at the caller's poll pace, each after
/// the storage layer's own retries) after which an attesting participant drops a contribution
/// whose blob it cannot read.
pub const DROP_AFTER_FAILED_READS: u32 = 3;

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
    /// The run's organisation quorum.
    pub org_quorum: u16,
}

/// A round this participant computed to attest it: reused when the round becomes final with the
/// same result.
#[derive(Debug)]
struct Computed {
    round: Round,
    /// The provisional plan's counted contributions it was computed from (before any drop).
    counted: Vec<EntryPos>,
    state: State,
    hash: StateHash,
    dropped: Vec<EntryPos>,
    report: RoundReport,
}

/// The ledger and the consensus state of one run, as one participant follows it.
#[derive(Debug)]
pub struct Follower {
    info: RunInfo,
    reader: Reader,
    /// The round rule's index over everything `reader` read, extended after every poll.
    rule: RoundRule,
    blobs: RunBlobs,
    /// The state before round `next`.
    state: State,
    hash: StateHash,
    next: Round,
    /// The round the follow started at (after the snapshot it started from, if any).
    joined_at: Round,
    /// Whether the start was a snapshot rather than the genesis state.
    from_snapshot: bool,
    /// Newer snapshots that could not be used when joining.
    skipped: Vec<SkippedSnapshot>,
    discrepancies: Vec<Discrepancy>,
    /// Failed reads in a row, per blob, while attesting.
    unreadable: HashMap<BlobId, u32>,
    computed: Option<Computed>,
    /// What this follower last wrote for the tally: never the same vote or attestation twice (a
    /// void one is not retried, so a refused entry cannot turn into a flood).
    last_vote: Option<Round>,
    last_attestation: Option<(Round, StateHash, Vec<EntryPos>)>,
    /// Slots read since [`Follower::take_read`] was last asked.
    read_since_taken: u64,
    /// Blobs of the round that other organisations dropped and this member re-published.
    republished: (Round, HashSet<EntryPos>),
    /// Publishing and following the rounds' steps.
    steps: Steps,
}

/// What [`Follower::take_part`] did for the open round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TallyAction {
    /// Appended a close vote.
    Voted {
        /// The round.
        round: u64,
        /// The slots it had read.
        seen: u64,
    },
    /// Appended an attestation of the round's result.
    Attested {
        /// The round.
        round: u64,
        /// The state attested.
        state: StateHash,
        /// Contributions dropped because their blobs could not be read.
        dropped: usize,
    },
    /// Could not read some counted blobs yet; will try again.
    WaitingForBlobs {
        /// The round.
        round: u64,
        /// Blobs not read.
        missing: usize,
    },
}

impl Follower {
    /// Joins the run in `store`: reads the whole ledger, starts from the newest usable snapshot
    /// (the genesis state if none), and replays the rounds after it from their updates.
    pub async fn join(store: Store) -> Result<Follower, TrainerError> {
        Follower::join_with(store, StepPolicy::default(), None).await
    }

    /// [`Follower::join`] for `member` (its organisation's folder is where it publishes steps
    /// and the first it reads them from), publishing and following the rounds' steps as `steps`
    /// says ([`crate::steps`]): the rounds after the snapshot too are then taken through steps
    /// where they pass.
    pub async fn join_with(
        store: Store,
        steps: StepPolicy,
        member: Option<&PublicKey>,
    ) -> Result<Follower, TrainerError> {
        let run_id = ledger::genesis_run_id(&store).await?;
        let reader = Reader::replay(store.clone(), run_id).await?;
        let (_, config, genesis) = verify::replay::genesis_config(reader.entries())?;
        let train = TrainSpec::from_extra(&config.extra)?;
        crate::run_spec::refuse_unclipped_linear(&config.hyper)?;
        let model = train.model_config()?;
        let start = crate::run_spec::initial_state_of(&config, &train)?;
        if start.0 != genesis.initial_state.0 {
            return Err(TrainerError::InvalidConfig(format!(
                "the genesis initial state {} is not the one preset {} with seed {} gives ({start}): \
                 refusing a start nobody can recompute",
                verify::StateHash(genesis.initial_state.0),
                train.preset,
                train.seed
            )));
        }
        let blobs = RunBlobs::of_reader(store.clone(), &reader);
        let rule = RoundRule::new(reader.entries(), &config);
        let organisation = member.and_then(|m| reader.state().organisation(m)).map(str::to_string);
        let mut steps = Steps::new(steps, organisation, &config.hyper);
        if steps.policy().follow {
            let computing = validator_organisations(&reader);
            if computing < usize::from(genesis.org_quorum) {
                tracing::warn!(
                    validator_organisations = computing,
                    org_quorum = genesis.org_quorum,
                    "following steps: fewer organisations have validators than the quorum, so each round waits for \
                     followers to attest after twice its deadline and verdict wait (or for workers that do not follow)"
                );
            }
        }
        let (start, skipped) = latest_start(reader.entries(), &blobs).await?;
        let replay = Replay::over(&rule, reader.entries(), start)?;
        let replayed = apply_final_rounds(replay, &blobs, &reader, &mut steps).await?;
        for s in &skipped {
            tracing::warn!(pos = %s.snapshot.pos, round = s.snapshot.round.0, reason = %s.reason,
                "skipped a snapshot for an older start");
        }
        let joined_at = replayed.report.first_round;
        let from_snapshot = joined_at.0 > 0;
        let next = replayed.report.next_round;
        let hash = replayed.state.hash();
        let info = RunInfo { store, run_id, config, train, model, org_quorum: genesis.org_quorum };
        tracing::info!(run = %run_id, round = next.0, from_snapshot, "joined the run");
        Ok(Follower {
            info,
            reader,
            rule,
            blobs,
            state: replayed.state,
            hash,
            next,
            joined_at,
            from_snapshot,
            skipped,
            discrepancies: replayed.report.discrepancies,
            unreadable: HashMap::new(),
            computed: None,
            last_vote: None,
            last_attestation: None,
            read_since_taken: 0,
            republished: (Round(0), HashSet::new()),
            steps,
        })
    }

    /// Reads what was appended since the last call and applies every round whose result is now
    /// final. Returns the reports of the rounds applied (counted and not-counted contributions,
    /// with reasons).
    pub async fn sync(&mut self) -> Result<Vec<RoundReport>, TrainerError> {
        self.poll_ledger().await?;
        let mut reports = Vec::new();
        loop {
            let Some(result) = self.reader.state().rounds().final_result(ledger::Round(self.next.0)).cloned() else {
                return Ok(reports);
            };
            if let Some(c) = self.computed.take()
                && c.round == self.next
                && c.hash.0 == result.state.0
                && c.dropped == result.dropped
            {
                // What we attested is what the quorum attested: no need to compute it again.
                self.state = c.state;
                self.hash = c.hash;
                self.next = Round(self.next.0.saturating_add(1));
                reports.push(c.report);
                continue;
            }
            let replay =
                Replay::continuing(&self.rule, self.verify_run_id(), self.next, (self.state.clone(), self.hash))?;
            let replayed = apply_final_rounds(replay, &self.blobs, &self.reader, &mut self.steps).await?;
            if replayed.report.rounds.is_empty() {
                // The tally says the round is final and the round rule has no plan for it: going
                // round the loop again would spin for ever.
                return Err(TrainerError::InvalidConfig(format!(
                    "round {} is final in the ledger's tally but the round rule has no plan for it",
                    self.next.0
                )));
            }
            for d in replayed.report.discrepancies.iter().filter(|d| d.kind.is_binding()) {
                tracing::warn!(round = d.round.0, pos = %d.pos, claimed = %d.claimed, computed = %d.computed,
                    "an attested state hash differs from the computed one; going on with the computed state");
            }
            self.discrepancies.extend(replayed.report.discrepancies.iter().copied());
            self.state = replayed.state;
            self.hash = replayed.report.state;
            self.next = replayed.report.next_round;
            reports.extend(replayed.report.rounds);
        }
    }

    /// Reads what was appended since the last call without applying rounds (see [`Follower::sync`]).
    pub async fn poll(&mut self) -> Result<u64, TrainerError> {
        self.poll_ledger().await
    }

    /// From now on, stage large uploads (snapshots) in the folder of `key`'s organisation
    /// ([`verify::replay::staging_prefix`]); a key outside the roster keeps the default.
    pub fn stage_as(&mut self, key: &PublicKey) -> Result<(), TrainerError> {
        if let Some(org) = self.reader.state().organisation(key) {
            self.info.store = self.info.store.staging_in(&verify::replay::staging_prefix(org))?;
        }
        Ok(())
    }

    /// Slots read from the ledger since the last call (by every poll: a sync's, an append's), and
    /// starts counting again: what [`crate::pace::PollPace`] paces the next poll by.
    pub fn take_read(&mut self) -> u64 {
        std::mem::take(&mut self.read_since_taken)
    }

    /// What publishing and following the rounds' steps did since joining.
    pub fn step_counts(&self) -> StepCounts {
        self.steps.counts()
    }

    /// The step policy in force (off in a run whose rounds are not steps).
    pub fn step_policy(&self) -> StepPolicy {
        self.steps.policy()
    }

    /// The run.
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    /// The ledger reader.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The run's blobs (canonical keys and mirrors).
    pub fn blobs(&self) -> &RunBlobs {
        &self.blobs
    }

    /// The first round whose result is not final: the round being worked on.
    pub fn round(&self) -> Round {
        self.next
    }

    /// Whether the current round closed (it then awaits its attested result; contributions to it
    /// are late).
    pub fn is_closed(&self) -> bool {
        self.reader.state().rounds().close(ledger::Round(self.next.0)).is_some()
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

    /// Newer snapshots that could not be used when joining, with reasons.
    pub fn skipped_snapshots(&self) -> &[SkippedSnapshot] {
        &self.skipped
    }

    /// Claimed hashes that differed from the computed ones, since joining (dissenting
    /// attestations included; see [`verify::round::ClaimKind::is_binding`]).
    pub fn discrepancies(&self) -> &[Discrepancy] {
        &self.discrepancies
    }

    /// The round rule over the ledger read so far.
    pub fn rule(&self) -> &RoundRule {
        &self.rule
    }

    /// Reads what was appended since the last poll and indexes it for the round rule: the cost
    /// of the new slots, whatever the ledger's length. A failed poll keeps what it read, indexed.
    async fn poll_ledger(&mut self) -> Result<u64, TrainerError> {
        let read = self.reader.poll().await;
        self.read_since_taken = self.read_since_taken.saturating_add(*read.as_ref().unwrap_or(&0));
        self.rule.extend(self.reader.entries());
        // Rounds behind the window and behind this follower's own progress are done with: no
        // entry may name them again, and this follower has applied them. (No window: no-op.)
        // Slots of the export part still to publish stay (see `export_from`).
        let horizon = ledger::Round(self.next.0).min(self.reader.state().horizon());
        let keep_from = self.export_from(self.next.0.saturating_sub(1));
        self.reader.forget_before(horizon, keep_from);
        self.rule.forget_before(Round(horizon.0));
        Ok(read?)
    }

    /// The slot after the entry that made `round` final, if it is.
    fn end_of(&self, round: u64) -> Option<ledger::Seq> {
        let result = self.reader.state().rounds().final_result(ledger::Round(round))?;
        Some(result.pos.seq.next().unwrap_or(result.pos.seq))
    }

    /// The first slot of the export part that ends with the result of snapshot round `round`: the
    /// slot after the result of the snapshot round before it, or 0 for the first. For any other
    /// round, the start of the part that the next snapshot round will publish. (No snapshots: no
    /// part, the end of time.) Every member computes the same parts from the ledger.
    fn export_from(&self, round: u64) -> ledger::Seq {
        let every = self.info.train.snapshot_every;
        if every == 0 {
            return ledger::Seq(u64::MAX);
        }
        match (round / every * every).checked_sub(1) {
            None => ledger::Seq(0),
            Some(previous) => self.end_of(previous).unwrap_or(ledger::Seq(0)),
        }
    }

    fn verify_run_id(&self) -> verify::RunId {
        verify::RunId(self.info.run_id.0)
    }

    /// Accepted entries of the current round signed by `key`.
    pub fn own_entries(&self, key: &ledger::PublicKey) -> impl Iterator<Item = &LoggedEntry> {
        // The round's entries, not the signer's: those grow with the run, these do not.
        self.reader
            .by_round(ledger::Round(self.next.0))
            .filter(move |e| e.entry.as_ref().is_some_and(|x| x.signatures.iter().any(|s| s.key == *key)))
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

    /// The verdict that completed `worker`'s exclusion, if validators of a quorum of organisations
    /// failed enough of its contributions in a row.
    pub fn exclusion(&self, worker: &WorkerKey) -> Option<ledger::EntryPos> {
        self.rule().exclusions().into_iter().find(|(w, _)| w == worker).map(|(_, pos)| pos)
    }

    /// Whether `key` has an accepted contribution to the current round.
    pub fn has_contributed(&self, key: &ledger::PublicKey) -> bool {
        self.has_contributed_to(key, self.next)
    }

    /// Whether `key` has an accepted contribution to `round` (the current one, or with overlapping
    /// rounds the next).
    pub fn has_contributed_to(&self, key: &ledger::PublicKey, round: Round) -> bool {
        crate::gather::has_contribution(&self.reader, key, ledger::Round(round.0))
    }

    /// The member whose attestation made `round` final, if it is.
    pub fn finalised_by(&self, round: Round) -> Option<ledger::PublicKey> {
        let result = self.reader.state().rounds().final_result(ledger::Round(round.0))?;
        self.reader.entry_at(result.pos).and_then(|e| e.entry.as_ref()).map(|e| e.signer())
    }

    /// The facts [`close_ready`] decides on, for the current round while it is open.
    pub fn close_facts(&self) -> Option<CloseFacts> {
        let rule = self.rule();
        let plan = rule.prospective(self.next, self.hash)?;
        let roster = self.reader.state().roster();
        let active_workers: Vec<WorkerKey> = roster
            .values()
            .filter(|m| m.role == Role::Worker)
            .map(|m| WorkerKey(m.key.0))
            .filter(|w| rule.excluded_in(w, self.next).is_none())
            .collect();
        let contributed = active_workers.iter().filter(|w| rule.candidates(self.next).any(|c| c.worker == **w)).count();
        let needed = validator_organisations(&self.reader).min(usize::from(self.info.org_quorum));
        let judged = self.judging_organisations();
        let unjudged = plan.counted.iter().filter(|c| judged.get(&c.pos).map_or(0, HashSet::len) < needed).count();
        Some(CloseFacts {
            counted: plan.counted.len(),
            active_workers: active_workers.len(),
            contributed,
            has_validators: needed > 0,
            unjudged,
        })
    }

    /// Per current-round contribution, the organisations of the validators that judged it.
    fn judging_organisations(&self) -> HashMap<EntryPos, HashSet<String>> {
        let mut out: HashMap<EntryPos, HashSet<String>> = HashMap::new();
        for e in self.reader.by_round(ledger::Round(self.next.0)) {
            if let Some(Body::Verdict(v)) = e.entry.as_ref().map(|x| &x.body)
                && let Target::Entry(p) = v.target
            {
                out.entry(p).or_default().insert(e.organisation.clone().unwrap_or_default());
            }
        }
        out
    }

    /// What an honest member does for the round tally, given how long it has seen the current
    /// round open (its own clock): votes to close it when [`close_ready`] says so and its
    /// organisation has not voted yet; once it closed, attests its result. At most one entry per
    /// call.
    pub async fn take_part(&mut self, key: &Keypair, open_for: Duration) -> Result<Option<TallyAction>, TrainerError> {
        let Some(org) = self.reader.state().organisation(&key.public()).map(str::to_string) else {
            return Err(TrainerError::InvalidConfig(format!("key {} is not in this run's roster", key.public())));
        };
        let tally = self.reader.state().rounds();
        if tally.open_round().0 != self.next.0 {
            return Ok(None); // not synced up to the open round yet
        }
        if tally.close(ledger::Round(self.next.0)).is_none() {
            if tally.voters().any(|o| o == org) || self.last_vote == Some(self.next) {
                return Ok(None);
            }
            let ready =
                self.close_facts().is_some_and(|f| close_ready(&f, &self.info.config, &self.info.train, open_for));
            if !ready {
                return Ok(None);
            }
            let seen = self.reader.next_seq();
            let vote = Body::CloseVote(CloseVote { round: ledger::Round(self.next.0), seen });
            self.last_vote = Some(self.next);
            self.append(Entry::sign(self.info.run_id, vote, &[key])?).await?;
            tracing::info!(round = self.next.0, seen = seen.0, "voted to close the round");
            return Ok(Some(TallyAction::Voted { round: self.next.0, seen: seen.0 }));
        }
        let train = &self.info.train;
        let (deadline, verdict_wait) =
            (Duration::from_secs(train.deadline_secs), Duration::from_secs(train.verdict_wait_secs));
        if !self.steps.may_attest(open_for, deadline, verdict_wait) {
            return Ok(None);
        }
        self.attest(key, &org).await
    }

    async fn attest(&mut self, key: &Keypair, org: &str) -> Result<Option<TallyAction>, TrainerError> {
        let Some(plan) = self.rule.provisional(self.next, self.hash) else { return Ok(None) };
        let round = self.next.0;
        // A closed round's provisional plan does not change: what this member computed for it
        // stands until the round is final, unless it dropped blobs it could not read (those are
        // read again, and the attestation revised if they come back).
        let counted: Vec<EntryPos> = plan.counted.iter().map(|c| c.pos).collect();
        let known = self
            .computed
            .as_ref()
            .is_some_and(|c| c.round == self.next && c.dropped.is_empty() && c.counted == counted);
        if known {
            // Another organisation may have dropped a blob since: it needs our copy to agree.
            self.republish_dropped(&plan, org, None).await?;
        } else if let Some(waiting) = self.compute_round(plan, org).await? {
            return Ok(Some(waiting));
        }
        let Some(c) = self.computed.as_ref() else { return Ok(None) };
        let (hash, dropped) = (c.hash, c.dropped.clone());
        let mine =
            self.rule.tally().attestations().any(|(o, s, d)| o == org && s.0 == hash.0 && d == dropped.as_slice());
        let count = dropped.len();
        let attempt = (self.next, hash, dropped.clone());
        if mine || self.last_attestation.as_ref() == Some(&attempt) {
            return Ok(None);
        }
        // Fetching and computing took a while: another member of our organisation may have
        // attested the same, or the round may have become final meanwhile.
        self.poll_ledger().await?;
        let tally = self.reader.state().rounds();
        let same = tally.attestations().any(|(o, s, d)| o == org && s.0 == hash.0 && d == dropped.as_slice());
        if same || tally.open_round().0 != self.next.0 {
            return Ok(None);
        }
        self.last_attestation = Some(attempt);
        let body =
            Body::Attestation(Attestation { round: ledger::Round(round), state: ledger::StateHash(hash.0), dropped });
        self.append(Entry::sign(self.info.run_id, body, &[key])?).await?;
        tracing::info!(round, state = %hash, dropped = count, "attested the round's result");
        Ok(Some(TallyAction::Attested { round, state: hash, dropped: count }))
    }

    /// Re-publishes under our organisation's mirror the counted blobs of `plan` that another
    /// organisation's attestation dropped and we can read (from `fetched`, one per counted
    /// contribution, else read now), once each: so that it can read them and revise.
    async fn republish_dropped(
        &mut self,
        plan: &verify::RoundPlan,
        org: &str,
        fetched: Option<&[Result<Bytes, verify::BlobFault>]>,
    ) -> Result<(), TrainerError> {
        let others_dropped: HashSet<EntryPos> = self
            .rule
            .tally()
            .attestations()
            .filter(|(o, _, _)| *o != org)
            .flat_map(|(_, _, d)| d.iter().copied())
            .collect();
        if self.republished.0 != self.next {
            self.republished = (self.next, HashSet::new());
        }
        for (i, c) in plan.counted.iter().enumerate() {
            if !others_dropped.contains(&c.pos) || self.republished.1.contains(&c.pos) {
                continue;
            }
            let bytes = match fetched.and_then(|f| f.get(i)) {
                Some(Ok(bytes)) => bytes.clone(),
                Some(Err(_)) => continue,
                None => match self.blobs.blob(c.blob, c.blob_size).await {
                    Ok(bytes) => bytes,
                    Err(_) => continue,
                },
            };
            self.info.store.put_blob_under(&mirror_prefix(org), bytes).await?;
            self.republished.1.insert(c.pos);
            tracing::info!(blob = %c.blob, round = self.next.0, "re-published a blob another organisation could not read");
        }
        Ok(())
    }

    /// Fetches the counted blobs of `plan` (the current round's provisional plan), drops those
    /// that failed [`DROP_AFTER_FAILED_READS`] reads in a row, re-publishes what other
    /// organisations dropped and this member read, applies the rest to a copy of the state and
    /// keeps the result in `self.computed` (publishing its step where the policy says so). Returns
    /// the waiting action while some blobs are still being retried.
    async fn compute_round(
        &mut self,
        mut plan: verify::RoundPlan,
        org: &str,
    ) -> Result<Option<TallyAction>, TrainerError> {
        let round = self.next.0;
        let counted: Vec<EntryPos> = plan.counted.iter().map(|c| c.pos).collect();
        let fetched = fetch_blobs(&self.blobs, &plan).await;
        let mut dropped = Vec::new();
        let mut waiting = 0;
        for (c, blob) in plan.counted.iter().zip(&fetched) {
            if blob.is_ok() {
                self.unreadable.remove(&c.blob);
                continue;
            }
            let failures = self.unreadable.entry(c.blob).or_default();
            *failures += 1;
            if *failures >= DROP_AFTER_FAILED_READS {
                dropped.push(c.pos);
            } else {
                waiting += 1;
            }
        }
        if waiting > 0 {
            return Ok(Some(TallyAction::WaitingForBlobs { round, missing: waiting }));
        }
        self.republish_dropped(&plan, org, Some(&fetched)).await?;
        let kept: Vec<Result<Bytes, verify::BlobFault>> =
            plan.counted.iter().zip(fetched).filter(|(c, _)| !dropped.contains(&c.pos)).map(|(_, blob)| blob).collect();
        plan.drop_unavailable(&dropped);
        let mut replay =
            Replay::continuing(&self.rule, self.verify_run_id(), self.next, (self.state.clone(), self.hash))?;
        replay.apply(plan, kept)?;
        let after = replay.finish();
        let hash = after.report.state;
        let Some(report) = after.report.rounds.into_iter().next() else {
            return Err(TrainerError::InvalidConfig("replaying the round to attest gave no report".into()));
        };
        // The step first, so that followers find it once an attestation makes the round final.
        let hyper = &self.info.config.hyper;
        self.steps.publish(&self.info.store, self.next, (&self.state, self.hash), (&after.state, hash), hyper).await;
        self.computed = Some(Computed { round: self.next, counted, state: after.state, hash, dropped, report });
        Ok(None)
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
        crate::crashpoint::reached("snapshot:uploaded");
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

    /// Appends `entry` after everything this follower has read (never past a hole it did not see),
    /// then reads on (so the entry is in the follower's view).
    pub async fn append(&mut self, entry: Entry) -> Result<ledger::Seq, TrainerError> {
        self.append_batch(&[entry]).await
    }

    /// Appends `entries` (1 to [`ledger::slot::MAX_BATCH_ENTRIES`]) as one slot, then reads the
    /// log: one slot for many entries, where a validator has many verdicts to write.
    pub async fn append_batch(&mut self, entries: &[Entry]) -> Result<ledger::Seq, TrainerError> {
        let mut appender = Appender::starting_at(self.info.store.clone(), self.reader.next_seq());
        let kind = entries.first().map_or("empty", |e| e.body.kind().name());
        let seq = appender.append(entries).await?;
        crate::crashpoint::reached(&format!("append:{kind}"));
        self.poll_ledger().await?;
        Ok(seq)
    }

    /// Writes the part of the ledger that ends with the result of snapshot round `round` as
    /// Parquet at `exports/{from:020}-{to:020}.parquet`: the slots since the previous snapshot
    /// round's result (derived data for DuckDB or pandas users; never authoritative). Returns the
    /// key.
    ///
    /// A part the finaliser of an earlier snapshot round did not publish (it crashed, or took in
    /// two rounds at once) would leave a gap: this part then starts where the last part present
    /// ends, as far back as this follower still holds the log.
    pub async fn publish_export(&self, round: Round) -> Result<String, TrainerError> {
        let to = self.end_of(round.0).ok_or_else(|| {
            TrainerError::InvalidConfig(format!("round {} is not final: no export part ends with it", round.0))
        })?;
        let mut from = self.export_from(round.0).0;
        let present = ledger::export::parts_present(&self.info.store).await?;
        let last_end = present.iter().map(|(_, end)| *end).filter(|end| *end <= from).max().unwrap_or(0);
        if last_end < from {
            from = last_end.max(self.reader.complete_from().0);
        }
        Ok(ledger::export::write_part_to_store(&self.reader, &self.info.store, from, to.0).await?.0)
    }

    /// Signs the tree head that ends with the entry which made `round` final (every member that
    /// read the log signs the same head, so the signatures add up to a quorum) and stores the
    /// signature. Returns how many signatures that head has so far. Nothing when the round is
    /// not final in this follower's reading.
    pub async fn publish_checkpoint(&mut self, key: &Keypair, round: Round) -> Result<Option<usize>, TrainerError> {
        let Some(result) = self.reader.state().rounds().final_result(ledger::Round(round.0)) else { return Ok(None) };
        let size = result.pos.seq.0 + 1;
        let signed = self.reader.publish_checkpoint(key, size).await?;
        Ok(Some(signed.signatures.len()))
    }
}

/// How many organisations of the roster `reader` read have a validator.
fn validator_organisations(reader: &Reader) -> usize {
    let roster = reader.state().roster();
    roster.values().filter(|m| m.role == Role::Validator).map(|m| m.organisation.as_str()).collect::<HashSet<_>>().len()
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
    /// Whether the roster has validators (then a voter waits for their verdicts).
    pub has_validators: bool,
    /// Counted contributions not yet judged by validators of enough organisations.
    pub unjudged: usize,
}

/// Whether an honest participant votes to close the round now. `open_for` is how long this
/// participant has seen the round open (its own clock; consensus never sees it). It votes once the
/// round has `min_contributions` and either every active worker contributed or the deadline
/// passed, and, when the roster has validators, every counted contribution was judged by
/// validators of as many organisations as can fail it (the quorum, or every validator
/// organisation when there are fewer) or the verdict wait after the deadline passed too.
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
