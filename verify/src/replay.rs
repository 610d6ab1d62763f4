//! Replay: recompute every final round from the ledger and check every state hash anyone claims.
//!
//! ```text
//!   entries ──Replay::new(start)──▶ config from Genesis, RoundRule index, start state checked
//!     loop, round r = start, start+1, ... while r is final (attested by a quorum of organisations):
//!       plan    = rule.round(r, hash(state))                       pure; the attested drops are
//!                                                                  not counted (Unavailable)
//!       blobs   = source.blob(c.blob, c.blob_size) per counted c    IO (the edge: `replay`),
//!                                                                  the canonical key, then mirrors
//!       Replay::apply(plan, blobs):                                 pure
//!         decode each with Expected{run, r, its base_state, worker = signer, layout, compression}
//!         an undecodable blob, or one shorter than declared: that contribution does not count
//!         aggregate::apply(state, r, decoded updates in ledger order, hyper)
//!         compare hash(state) with every claim for r (the attested result, Snapshots: binding;
//!         each organisation's attestations: dissent) → discrepancies
//!   ──finish──▶ (final State, ReplayReport)
//! ```
//!
//! Which contributions count never depends on whether a read succeeds: a counted blob that no copy
//! of can be read now (absent, corrupt, or unreadable: [`BlobFault`]) stops the replay with
//! [`VerifyError::BlobUnavailable`]. Only the organisations attesting a round decide, in the
//! ledger, to drop contributions whose blobs they could not read. No clock, no environment.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use bytes::Bytes;
use futures::StreamExt;
use ledger::{BlobId, Body, EntryPos, LoggedEntry};
use storage::{Store, StoreError};

use crate::aggregate::apply;
use crate::config::RunConfig;
use crate::error::VerifyError;
use crate::id::{Round, RunId, StateHash, WorkerKey};
use crate::round::{Candidate, Claim, ClaimKind, NotCounted, RoundPlan, RoundRule};
use crate::state::State;
use crate::step::{RoundStep, StepError};
use crate::wire::{Expected, Update, decode};

/// Blobs fetched at once while replaying a round.
pub const FETCH_CONCURRENCY: usize = 4;
/// Bytes of a snapshot file beyond `4 * parameters`, for its header (names, shapes, offsets).
pub const SNAPSHOT_HEADER_ALLOWANCE: u64 = 1 << 20;
/// Header bytes allowed per tensor beyond [`SNAPSHOT_HEADER_ALLOWANCE`].
pub const SNAPSHOT_HEADER_PER_TENSOR: u64 = 2048;

/// Why a blob did not come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobFault {
    /// Not in the store.
    Missing,
    /// Does not hash to its id, or is larger than the limit.
    Corrupt(String),
    /// Could not be read now; may work later.
    Unavailable(String),
}

/// Where replay gets blobs from: the run's store at the edge, a map in tests.
pub trait BlobSource {
    /// The blob with this id, at most `limit_bytes`, re-hashed.
    fn blob(&self, id: BlobId, limit_bytes: u64) -> impl Future<Output = Result<Bytes, BlobFault>> + Send;
}

fn fault(e: StoreError) -> BlobFault {
    match e {
        StoreError::NotFound { .. } => BlobFault::Missing,
        e @ (StoreError::HashMismatch { .. } | StoreError::TooLarge { .. }) => BlobFault::Corrupt(e.to_string()),
        e => BlobFault::Unavailable(e.to_string()),
    }
}

impl BlobSource for Store {
    async fn blob(&self, id: BlobId, limit_bytes: u64) -> Result<Bytes, BlobFault> {
        self.get_blob(id, limit_bytes).await.map_err(fault)
    }
}

/// An organisation's folder name in the bucket: the first 8 bytes of blake3 of its name, in hex.
pub fn organisation_folder(organisation: &str) -> String {
    blake3::hash(organisation.as_bytes()).to_hex()[..16].to_string()
}

/// The prefix under which members of `organisation` re-publish blobs they hold
/// (`mirrors/<organisation_folder>`).
pub fn mirror_prefix(organisation: &str) -> String {
    format!("mirrors/{}", organisation_folder(organisation))
}

/// Where members of `organisation` publish the step of each round they computed
/// (`steps/<organisation_folder>/<round, 20 digits>`; [`crate::step`], docs/FORMAT.md section 9).
/// Derived data, never consensus: a follower takes a step only when it reproduces the attested
/// result, and each organisation can write only its own folder.
pub fn step_key(organisation: &str, round: Round) -> String {
    format!("{}{:020}", step_prefix(organisation), round.0)
}

/// The folder of `organisation`'s steps (`steps/<organisation_folder>/`).
pub fn step_prefix(organisation: &str) -> String {
    format!("{STEPS_PREFIX}{}/", organisation_folder(organisation))
}

/// The prefix of every published step.
pub const STEPS_PREFIX: &str = "steps/";

/// Where members of `organisation` stage large uploads (`tmp/<organisation_folder>/`), so that a
/// bucket's IAM rules can keep other organisations from replacing a staged upload before its
/// create-only copy to `blobs/` (docs/SECURITY.md row 38). Not consensus: only the writer reads it.
pub fn staging_prefix(organisation: &str) -> String {
    format!("{}{}/", storage::STAGING_PREFIX, organisation_folder(organisation))
}

/// A run's blobs: the canonical key `blobs/<hex>`, then the copy each organisation of the roster may
/// have re-published under its [`mirror_prefix`]. Content addressing makes every copy as good as
/// the original: whatever is read is re-hashed.
#[derive(Clone, Debug)]
pub struct RunBlobs {
    store: Store,
    mirrors: Vec<String>,
}

impl RunBlobs {
    /// The blobs of the run in `store`, with the mirrors of these organisations.
    pub fn new<'a>(store: Store, organisations: impl IntoIterator<Item = &'a str>) -> RunBlobs {
        let mut mirrors: Vec<String> = organisations.into_iter().map(mirror_prefix).collect();
        mirrors.sort();
        mirrors.dedup();
        RunBlobs { store, mirrors }
    }

    /// The blobs of the run whose ledger `reader` reads, with the mirrors of its roster's
    /// organisations.
    pub fn of_reader(store: Store, reader: &ledger::Reader) -> RunBlobs {
        RunBlobs::new(store, reader.state().roster().values().map(|m| m.organisation.as_str()))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl BlobSource for RunBlobs {
    async fn blob(&self, id: BlobId, limit_bytes: u64) -> Result<Bytes, BlobFault> {
        let canonical = match self.store.get_blob(id, limit_bytes).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) => fault(e),
        };
        for prefix in &self.mirrors {
            if let Ok(bytes) = self.store.get_blob_under(prefix, id, limit_bytes).await {
                return Ok(bytes);
            }
        }
        Err(canonical)
    }
}

impl BlobSource for HashMap<BlobId, Bytes> {
    fn blob(&self, id: BlobId, limit_bytes: u64) -> impl Future<Output = Result<Bytes, BlobFault>> + Send {
        let found = self.get(&id).cloned();
        async move {
            let bytes = found.ok_or(BlobFault::Missing)?;
            if bytes.len() as u64 > limit_bytes {
                return Err(BlobFault::Corrupt(format!("{} bytes, over the limit of {limit_bytes}", bytes.len())));
            }
            if BlobId::of(&bytes) != id {
                return Err(BlobFault::Corrupt("hash mismatch".into()));
            }
            Ok(bytes)
        }
    }
}

/// Where a replay starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// From the initial state (before round 0); its hash must be the Genesis entry's.
    Genesis(State),
    /// From the accepted Snapshot entry at `pos`; `state` must hash to what it claims. Rounds
    /// after the snapshot's are replayed.
    Snapshot {
        /// The Snapshot entry.
        pos: EntryPos,
        /// The state it names (from its blob).
        state: State,
    },
    /// From a state the caller computed itself earlier (a worker following the ledger): `state` is
    /// the state before round `next`, taken as given.
    Continue {
        /// The first round to replay.
        next: Round,
        /// The state before it.
        state: State,
    },
}

/// A claimed hash that differs from the computed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discrepancy {
    /// The round whose resulting state is claimed (for a Genesis claim: the round before 0 does
    /// not exist, so it is reported as round 0 with kind Genesis).
    pub round: Round,
    /// The claiming entry.
    pub pos: EntryPos,
    /// Its kind.
    pub kind: ClaimKind,
    /// What it claims.
    pub claimed: StateHash,
    /// What replay computed.
    pub computed: StateHash,
}

/// One replayed round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundReport {
    /// The round.
    pub round: Round,
    /// The close vote that completed the quorum.
    pub close: EntryPos,
    /// Contributions in slots below this counted.
    pub cut: ledger::Seq,
    /// The state hash it started from.
    pub base: StateHash,
    /// The state hash it ended with.
    pub state: StateHash,
    /// The contributions aggregated, in ledger order.
    pub counted: Vec<Candidate>,
    /// The contributions not aggregated, in ledger order, with reasons.
    pub not_counted: Vec<(Candidate, NotCounted)>,
    /// Fewer contributions were aggregated than the run's `min_contributions` (the round still
    /// applies: its closers saw enough when they voted, and some did not count in the end).
    pub under_minimum: bool,
    /// Applied through a published step ([`Replay::apply_step`]) rather than from the updates: no
    /// blob was read, so `counted` is the round rule's set before decoding (a counted blob that
    /// does not decode, which replay from the updates reports as not counted, is listed counted).
    pub from_step: bool,
}

/// Counted and not counted contributions of one organisation, over the replayed rounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrgCounts {
    /// Aggregated.
    pub counted: u64,
    /// Not aggregated.
    pub not_counted: u64,
}

/// What a replay found: the input of `cairn audit`'s report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// The run.
    pub run: RunId,
    /// The first round replayed.
    pub first_round: Round,
    /// The first round not replayed (not final yet): the open round.
    pub next_round: Round,
    /// Each replayed round.
    pub rounds: Vec<RoundReport>,
    /// Contributions per organisation (None: signer not a member).
    pub organisations: BTreeMap<Option<String>, OrgCounts>,
    /// Excluded workers and the verdict that excluded each (whole ledger).
    pub exclusions: Vec<(WorkerKey, EntryPos)>,
    /// Every claim that differs from the computed hash, in round order (binding claims and
    /// dissenting attestations alike; [`ClaimKind::is_binding`] tells them apart).
    pub discrepancies: Vec<Discrepancy>,
    /// Hash of the final state.
    pub state: StateHash,
}

impl ReplayReport {
    /// The first binding discrepancy (a quorum, a snapshot or the genesis claimed a state replay
    /// does not give): lowest round, then ledger position.
    pub fn first_discrepancy(&self) -> Option<&Discrepancy> {
        self.discrepancies.iter().filter(|d| d.kind.is_binding()).min_by_key(|d| (d.round, d.pos))
    }

    /// Attestations whose state differs from the computed one: organisations that dissented (an
    /// honest one when it could not read a blob the quorum read; a faulty or hostile one otherwise).
    pub fn dissents(&self) -> impl Iterator<Item = &Discrepancy> {
        self.discrepancies.iter().filter(|d| !d.kind.is_binding())
    }
}

/// The result of a replay.
#[derive(Clone, Debug)]
pub struct Replayed {
    /// The state after the last closed round.
    pub state: State,
    /// What happened.
    pub report: ReplayReport,
}

/// A replay in progress: the pure core. [`replay`] drives it with a [`BlobSource`]. It owns the
/// round rule's index ([`Replay::new`]) or borrows one a follower keeps up to date
/// ([`Replay::continuing`]).
#[derive(Debug)]
pub struct Replay<'r> {
    run: RunId,
    rule: Cow<'r, RoundRule>,
    state: State,
    hash: StateHash,
    next: Option<Round>,
    report: ReplayReport,
}

/// The run id and decoded config of the accepted Genesis at the start of `entries`.
pub fn genesis_config(entries: &[LoggedEntry]) -> Result<(RunId, RunConfig, ledger::Genesis), VerifyError> {
    let first = entries.first().filter(|e| e.validity.is_accept()).and_then(|e| e.entry.as_ref());
    match first {
        Some(ledger::Entry { run_id, body: Body::Genesis(g), .. }) => {
            Ok((RunId(run_id.0), RunConfig::decode(&g.config)?, g.clone()))
        }
        _ => Err(VerifyError::NoGenesis),
    }
}

impl<'r> Replay<'r> {
    /// Prepares a replay of `entries` (ledger order, as `ledger::Reader::entries` gives them) from
    /// `start`, checking the start state against the ledger.
    pub fn new(entries: &[LoggedEntry], start: Start) -> Result<Replay<'static>, VerifyError> {
        let (run, config, _) = genesis_config(entries)?;
        let rule = RoundRule::new(entries, &config);
        Replay::with_rule(entries, run, Cow::Owned(rule), start, None)
    }

    /// [`Replay::new`] over `rule`, an index of `entries` the caller already holds (a joiner
    /// keeps it to follow the run): the ledger is not indexed a second time.
    pub fn over(rule: &'r RoundRule, entries: &[LoggedEntry], start: Start) -> Result<Replay<'r>, VerifyError> {
        let (run, _, _) = genesis_config(entries)?;
        Replay::with_rule(entries, run, Cow::Borrowed(rule), start, None)
    }

    /// Prepares a replay of run `run` from round `next` with `state` over `rule`, an index of the
    /// ledger a follower keeps ([`RoundRule::extend`]): no pass over the whole ledger, so
    /// following a long run costs what the new entries cost.
    /// `hash` is the caller's hash of `state` (a follower keeps it; hashing a large state takes
    /// seconds).
    pub fn continuing(
        rule: &'r RoundRule,
        run: RunId,
        next: Round,
        (state, hash): (State, StateHash),
    ) -> Result<Replay<'r>, VerifyError> {
        Replay::with_rule(&[], run, Cow::Borrowed(rule), Start::Continue { next, state }, Some(hash))
    }

    fn with_rule(
        entries: &[LoggedEntry],
        run: RunId,
        rule: Cow<'r, RoundRule>,
        start: Start,
        known_hash: Option<StateHash>,
    ) -> Result<Replay<'r>, VerifyError> {
        let (state, first, claims) = match start {
            Start::Genesis(state) => {
                let claim = rule.genesis().ok_or(VerifyError::NoGenesis)?;
                (state, Some(Round(0)), vec![(claim, true)])
            }
            Start::Snapshot { pos, state } => {
                let found = entries.iter().find(|e| e.pos == pos && e.validity.is_accept());
                let Some(Body::Snapshot(s)) = found.and_then(|e| e.entry.as_ref()).map(|e| &e.body) else {
                    return Err(VerifyError::NoSnapshot(pos.to_string()));
                };
                let own = Claim { pos, kind: ClaimKind::Snapshot, state: StateHash(s.state.0) };
                let round = Round(s.round.0);
                // The attested result binds the snapshot's state too; the attestations are dissent.
                let others =
                    rule.claims(round).into_iter().filter(|c| c.pos != pos).map(|c| (c, c.kind == ClaimKind::Final));
                (state, round.0.checked_add(1).map(Round), std::iter::once((own, true)).chain(others).collect())
            }
            Start::Continue { next, state } => (state, Some(next), Vec::new()),
        };
        if state.layout() != &rule.config().layout {
            return Err(VerifyError::StartLayout);
        }
        let hash = known_hash.unwrap_or_else(|| state.hash());
        let mut discrepancies = Vec::new();
        for (claim, binding) in claims {
            if claim.state != hash {
                if binding {
                    return Err(VerifyError::StartMismatch { claimed: claim.state, actual: hash });
                }
                let round = first.map_or(Round(u64::MAX), |r| Round(r.0.saturating_sub(1)));
                discrepancies.push(Discrepancy {
                    round,
                    pos: claim.pos,
                    kind: claim.kind,
                    claimed: claim.state,
                    computed: hash,
                });
            }
        }
        let first_round = first.unwrap_or(Round(u64::MAX));
        let report = ReplayReport {
            run,
            first_round,
            next_round: first_round,
            rounds: Vec::new(),
            organisations: BTreeMap::new(),
            exclusions: rule.exclusions(),
            discrepancies,
            state: hash,
        };
        Ok(Replay { run, rule, state, hash, next: first, report })
    }

    /// The run config (from the Genesis entry).
    pub fn config(&self) -> &RunConfig {
        self.rule.config()
    }

    /// The round rule's index.
    pub fn rule(&self) -> &RoundRule {
        &self.rule
    }

    /// The current state (after the rounds applied so far).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The next round's plan, or `None` when it is not final (the replay is done).
    pub fn next_plan(&self) -> Option<RoundPlan> {
        self.rule.round(self.next?, self.hash)
    }

    /// The plan of the next round, closed but not final (see [`RoundRule::provisional`]): an
    /// organisation applies it, less what it could not read, to learn the state it attests.
    /// `None` unless the next round is closed and not final.
    pub fn provisional_plan(&self) -> Option<RoundPlan> {
        self.rule.provisional(self.next?, self.hash)
    }

    /// Applies `plan` (from [`Replay::next_plan`] or [`Replay::provisional_plan`]) with the blobs of its counted contributions,
    /// one per `plan.counted`, in order.
    pub fn apply(&mut self, plan: RoundPlan, blobs: Vec<Result<Bytes, BlobFault>>) -> Result<(), VerifyError> {
        if Some(plan.round) != self.next || plan.base != self.hash || blobs.len() != plan.counted.len() {
            return Err(VerifyError::PlanMismatch);
        }
        let config = self.rule.config();
        let mut updates: Vec<Update> = Vec::with_capacity(plan.counted.len());
        let mut counted = Vec::with_capacity(plan.counted.len());
        let mut not_counted = plan.not_counted;
        for (c, blob) in plan.counted.into_iter().zip(blobs) {
            let expected = Expected {
                run: self.run,
                round: plan.round,
                // The round's base, or with overlapping rounds the one before (the plan checked
                // which); the update applies to the round's base either way.
                base: c.base,
                worker: c.worker,
                layout: &config.layout,
                compression: config.hyper.compression,
            };
            let outcome = match blob {
                Err(BlobFault::Unavailable(reason)) => {
                    return Err(VerifyError::BlobUnavailable { blob: c.blob.to_string(), reason });
                }
                Err(BlobFault::Missing) => {
                    return Err(VerifyError::BlobUnavailable { blob: c.blob.to_string(), reason: "absent".into() });
                }
                Err(BlobFault::Corrupt(why)) => {
                    return Err(VerifyError::BlobUnavailable { blob: c.blob.to_string(), reason: why });
                }
                Ok(bytes) if bytes.len() as u64 != c.blob_size => {
                    Err(NotCounted::BlobCorrupt(format!("{} bytes, the entry declares {}", bytes.len(), c.blob_size)))
                }
                Ok(bytes) => decode(&bytes, &expected).map_err(NotCounted::Undecodable),
            };
            match outcome {
                Ok(update) => {
                    updates.push(update);
                    counted.push(c);
                }
                Err(reason) => not_counted.push((c, reason)),
            }
        }
        not_counted.sort_by_key(|(c, _)| c.pos);
        apply(&mut self.state, plan.round, &updates, &config.hyper)?;
        let hash = self.state.hash();
        self.record(RoundPlan { counted, not_counted, ..plan }, hash, false);
        Ok(())
    }

    /// Applies `plan`, a final round's, through `step` instead of its updates: the step must start
    /// from the current state, lead to the result a quorum of organisations attested for the
    /// round, and reproduce that hash when applied (a follower's shortcut: it takes the quorum's
    /// result as given, as a joiner takes an attested snapshot; the audit replays the updates).
    pub fn apply_step(&mut self, plan: RoundPlan, step: &RoundStep) -> Result<(), VerifyError> {
        if Some(plan.round) != self.next || plan.base != self.hash {
            return Err(VerifyError::PlanMismatch);
        }
        let attested = plan.attested().ok_or(StepError::NotFinal(plan.round.0))?;
        if step.result != attested {
            return Err(StepError::NotTheAttested { step: step.result, attested }.into());
        }
        self.state = step.apply_hashed(&self.state, self.hash, plan.round, &self.rule.config().hyper)?;
        // Applying checked that the state now hashes to the step's result.
        self.record(plan, step.result, true);
        Ok(())
    }

    /// Records the round just applied to the state (`plan` with what counted in the end; `hash`
    /// the state's hash now): its claims checked against that hash, its report, and the replay
    /// moved to the next round.
    fn record(&mut self, plan: RoundPlan, hash: StateHash, from_step: bool) {
        let config = self.rule.config();
        let RoundPlan { round, base, close, cut, counted, not_counted, claims } = plan;
        for claim in &claims {
            if claim.state != hash {
                self.report.discrepancies.push(Discrepancy {
                    round,
                    pos: claim.pos,
                    kind: claim.kind,
                    claimed: claim.state,
                    computed: hash,
                });
            }
        }
        for c in &counted {
            self.report.organisations.entry(c.organisation.clone()).or_default().counted += 1;
        }
        for (c, _) in &not_counted {
            self.report.organisations.entry(c.organisation.clone()).or_default().not_counted += 1;
        }
        let under_minimum = (counted.len() as u64) < u64::from(config.rounds.min_contributions);
        self.report.rounds.push(RoundReport {
            round,
            close,
            cut,
            base,
            state: hash,
            counted,
            not_counted,
            under_minimum,
            from_step,
        });
        self.hash = hash;
        self.report.state = hash;
        self.next = round.0.checked_add(1).map(Round);
        self.report.next_round = self.next.unwrap_or(round);
    }

    /// The final state and the report.
    pub fn finish(self) -> Replayed {
        Replayed { state: self.state, report: self.report }
    }
}

/// Fetches the blobs of `plan`'s counted contributions (a few at a time, results in order).
pub async fn fetch_blobs<S: BlobSource>(source: &S, plan: &RoundPlan) -> Vec<Result<Bytes, BlobFault>> {
    futures::stream::iter(plan.counted.iter().map(|c| source.blob(c.blob, c.blob_size)))
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await
}

/// Replays every closed round of `entries` from `start`, fetching blobs from `source`.
pub async fn replay<S: BlobSource>(entries: &[LoggedEntry], start: Start, source: &S) -> Result<Replayed, VerifyError> {
    run_to_end(Replay::new(entries, start)?, source).await
}

/// Applies every final round from where `replay` stands, fetching blobs from `source`.
pub async fn run_to_end<S: BlobSource>(mut replay: Replay<'_>, source: &S) -> Result<Replayed, VerifyError> {
    while let Some(plan) = replay.next_plan() {
        let blobs = fetch_blobs(source, &plan).await;
        replay.apply(plan, blobs)?;
    }
    Ok(replay.finish())
}

/// Fetches and parses a state blob (the Genesis or a Snapshot entry's), at most the size a state
/// of `config`'s layout can take, and checks its layout. The caller's [`Start`] then checks its hash.
pub async fn fetch_state<S: BlobSource>(
    source: &S,
    config: &RunConfig,
    blob: BlobId,
    declared_size: u64,
) -> Result<State, VerifyError> {
    let layout = &config.layout;
    let max = layout
        .elements()
        .saturating_mul(4)
        .saturating_add(SNAPSHOT_HEADER_ALLOWANCE)
        .saturating_add((layout.tensors().len() as u64).saturating_mul(SNAPSHOT_HEADER_PER_TENSOR));
    if declared_size > max {
        return Err(VerifyError::Safetensors(format!("snapshot of {declared_size} bytes, over the limit of {max}")));
    }
    let bytes = source.blob(blob, declared_size).await.map_err(|fault| match fault {
        BlobFault::Unavailable(reason) => VerifyError::BlobUnavailable { blob: blob.to_string(), reason },
        BlobFault::Missing => VerifyError::Safetensors(format!("snapshot blob {blob} is missing")),
        BlobFault::Corrupt(why) => VerifyError::Safetensors(format!("snapshot blob {blob}: {why}")),
    })?;
    let state = State::from_safetensors(&bytes)?;
    if state.layout() != layout {
        return Err(VerifyError::StartLayout);
    }
    Ok(state)
}

/// Replays `entries` from genesis: fetches the Genesis entry's initial state from `source`, then
/// every closed round. What `cairn audit` runs.
pub async fn replay_from_genesis<S: BlobSource>(entries: &[LoggedEntry], source: &S) -> Result<Replayed, VerifyError> {
    replay(entries, genesis_start(entries, source).await?, source).await
}

/// The start at the genesis state, read from `source` and checked against the Genesis entry.
async fn genesis_start<S: BlobSource>(entries: &[LoggedEntry], source: &S) -> Result<Start, VerifyError> {
    let (_, config, genesis) = genesis_config(entries)?;
    Ok(Start::Genesis(fetch_state(source, &config, genesis.snapshot, genesis.snapshot_size).await?))
}

/// A Snapshot entry a replay may start from: accepted, so its round is final and its state is the
/// round's attested one (the ledger's validity rule checks both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The entry.
    pub pos: EntryPos,
    /// The round it is the state after.
    pub round: Round,
    /// The state it names.
    pub state: StateHash,
    /// Its blob.
    pub blob: BlobId,
    /// The blob's declared size.
    pub blob_size: u64,
}

/// Every accepted Snapshot entry, newest first: highest round first, then the latest in the
/// ledger. The one order in which joiners, `cairn audit --from-snapshot` and `cairn gc` look for
/// a starting point.
pub fn snapshots_newest_first(entries: &[LoggedEntry]) -> Vec<SnapshotEntry> {
    let mut found: Vec<SnapshotEntry> = entries
        .iter()
        .filter(|e| e.validity.is_accept())
        .filter_map(|e| match e.entry.as_ref().map(|x| &x.body) {
            Some(Body::Snapshot(s)) => Some(SnapshotEntry {
                pos: e.pos,
                round: Round(s.round.0),
                state: StateHash(s.state.0),
                blob: s.blob,
                blob_size: s.blob_size,
            }),
            _ => None,
        })
        .collect();
    found.sort_by_key(|s| std::cmp::Reverse((s.round, s.pos)));
    found
}

/// A snapshot that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedSnapshot {
    /// The snapshot.
    pub snapshot: SnapshotEntry,
    /// Why: its blob could not be read, or does not hold the attested state.
    pub reason: String,
}

/// The newest snapshot whose blob can be read and holds the state the round's quorum attested, with
/// the state; the newer ones that could not be used, with reasons. `None`: no usable snapshot.
pub async fn newest_usable_snapshot<S: BlobSource>(
    entries: &[LoggedEntry],
    source: &S,
) -> Result<(Option<(SnapshotEntry, State)>, Vec<SkippedSnapshot>), VerifyError> {
    let (_, config, _) = genesis_config(entries)?;
    let mut skipped = Vec::new();
    for snapshot in snapshots_newest_first(entries) {
        let reason = match fetch_state(source, &config, snapshot.blob, snapshot.blob_size).await {
            Ok(state) if state.hash() == snapshot.state => return Ok((Some((snapshot, state)), skipped)),
            Ok(state) => format!("its blob holds state {}, not the attested {}", state.hash(), snapshot.state),
            Err(e) => e.to_string(),
        };
        skipped.push(SkippedSnapshot { snapshot, reason });
    }
    Ok((None, skipped))
}

/// Replays `entries` from the newest usable snapshot ([`newest_usable_snapshot`]; from genesis if
/// there is none): what a worker's catch-up and `cairn audit --from-snapshot` run. A snapshot
/// that is missing, unreadable or holds another state is skipped for an older one, so no single
/// member or bucket writer can stop joins by publishing a bad snapshot. Also returns the skipped
/// snapshots. (A follower starts at [`latest_start`] itself and applies the rounds its own way.)
pub async fn replay_from_latest_snapshot<S: BlobSource>(
    entries: &[LoggedEntry],
    source: &S,
) -> Result<(Replayed, Vec<SkippedSnapshot>), VerifyError> {
    let (start, skipped) = latest_start(entries, source).await?;
    Ok((replay(entries, start, source).await?, skipped))
}

/// Where a joiner starts: the newest usable snapshot ([`newest_usable_snapshot`]), else the
/// genesis state; with the newer snapshots skipped and why.
pub async fn latest_start<S: BlobSource>(
    entries: &[LoggedEntry],
    source: &S,
) -> Result<(Start, Vec<SkippedSnapshot>), VerifyError> {
    let (usable, skipped) = newest_usable_snapshot(entries, source).await?;
    let start = match usable {
        None => genesis_start(entries, source).await?,
        Some((snapshot, state)) => Start::Snapshot { pos: snapshot.pos, state },
    };
    Ok((start, skipped))
}
