//! The auditor: everything `cairn audit` checks with read access to the bucket only, and the plan
//! `cairn gc` deletes by.
//!
//! ```text
//!   audit(store, options)
//!     1 ledger     genesis_run_id ─► Reader::replay (or from a witness): every slot read, every
//!                  entry through the validity rule (signatures, roles, rounds) ─► void entries listed
//!     2 checkpoint ledger/checkpoint: signed by a member, root == Merkle root of the slots it
//!                  covers (absent: reported, not a failure)
//!     3 re-read    Reader::audit: every slot read again; a deleted or rewritten slot is named
//!     4 replay     from genesis (or the newest usable snapshot): per final round, the round
//!                  rule's plan, every counted blob fetched (canonical key, then mirrors) and
//!                  re-hashed, aggregation, every claimed hash compared: the quorum's attested
//!                  result and Snapshots (binding ─► discrepancies), each organisation's
//!                  attestations (─► dissents, listed, not failures)
//!     5 snapshots  every Snapshot blob replayed past is fetched, re-hashed and hashed as a state;
//!                  one that is not the attested state is named with its publisher (a note: joiners
//!                  and --from-snapshot audits skip it)
//!   ─► AuditReport { ..., first_problem }   FAIL iff first_problem is Some
//! ```
//!
//! A problem is something that should not happen in an honest bucket: a discrepancy between an
//! attested and a computed state hash (a quorum of organisations attested a wrong state), a
//! rewritten or deleted slot, a bad checkpoint, a counted blob of which no copy can be read. Void
//! entries, contributions that do not count
//! and one organisation's dissenting attestation are the rules working: they are listed with their
//! reasons and the entries that caused them, never failures; so is a snapshot whose blob is not
//! the state it offers (any member can publish one; nobody starts from it).
//!
//! The garbage-collection plan ([`plan_gc`]) is derived from a passing audit: update blobs of
//! rounds up to the newest snapshot the audit confirmed may go; the Genesis blob and every
//! Snapshot blob never do.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt;
use ledger::{BlobId, Body, EntryPos, LedgerError, LoggedEntry, Reader, Validity, Witness};
use serde::Serialize;
use storage::{Store, StoreError};

use crate::config::RunConfig;
use crate::id::{Round, StateHash, WorkerKey};
use crate::replay::{
    Replay, ReplayReport, RunBlobs, Start, fetch_blobs, fetch_state, genesis_config, newest_usable_snapshot,
};
use crate::round::{NotCounted, RoundRule};

/// Blobs deleted at once by [`collect_garbage`].
pub const DELETE_CONCURRENCY: usize = 8;

/// Recomputes a run's initial state hash from its config (for cairn's runs: the model preset and
/// seed in the training spec, see trainer's `init_state`). `Ok(None)`: the config is not one this
/// rule knows (no participant that uses the rule would join such a run); `Err`: it is, and names
/// no start that can be computed, with why.
pub type InitialStateRule = dyn Fn(&RunConfig) -> Result<Option<StateHash>, String> + Send + Sync;

/// What to audit, and how.
#[derive(Clone, Default)]
pub struct AuditOptions {
    /// Replay from the newest usable snapshot (the round's attested state, in a readable blob),
    /// instead of from genesis (faster; and the only way once `cairn gc` deleted older update blobs).
    pub from_snapshot: bool,
    /// A witness kept from an earlier audit: the log must extend it, and a slot rewritten since is
    /// named.
    pub witness: Option<Witness>,
    /// Organisations whose members must have signed a tree head for it to count as the
    /// checkpoint; `None`: the run's org quorum (Genesis `org_quorum`).
    pub checkpoint_organisations: Option<u16>,
    /// When given, the genesis initial state must be the one this rule computes from the run
    /// config: a start nobody can recompute is a problem.
    pub initial_state: Option<std::sync::Arc<InitialStateRule>>,
}

impl std::fmt::Debug for AuditOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditOptions")
            .field("from_snapshot", &self.from_snapshot)
            .field("witness", &self.witness.as_ref().map(|w| w.checkpoint.checkpoint.size))
            .field("checkpoint_organisations", &self.checkpoint_organisations)
            .field("initial_state", &self.initial_state.is_some())
            .finish()
    }
}

/// Progress of an audit, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditProgress {
    /// The ledger was read (every slot, every entry through the validity rule).
    LedgerRead {
        /// Slots read.
        slots: u64,
        /// Entries in them.
        entries: u64,
    },
    /// The published checkpoint was checked (or found absent).
    CheckpointChecked,
    /// Every slot was read again and compared.
    SlotsReread {
        /// Slots compared.
        slots: u64,
    },
    /// The replay starts.
    ReplayStarted {
        /// The first round to replay.
        first: Round,
        /// Closed rounds to replay.
        rounds: u64,
    },
    /// One round was replayed.
    RoundReplayed {
        /// The round.
        round: Round,
        /// Rounds replayed so far.
        done: u64,
        /// Rounds to replay.
        total: u64,
    },
    /// One snapshot blob was checked.
    SnapshotChecked {
        /// Snapshots checked so far.
        done: u64,
        /// Snapshots to check.
        total: u64,
    },
}

/// Why an audit could not run at all (as opposed to a report that says FAIL).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The ledger could not be read (store unreachable, no genesis slot, ...).
    #[error("reading the ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The store failed outside the ledger.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One entry (or a whole slot) the validity rule voided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VoidEntry {
    /// `seq.index`, or `seq` for a slot that is not a batch.
    pub pos: String,
    /// The entry's kind (`contribution`, ...), `None` when it does not decode (or for a slot).
    pub kind: Option<String>,
    /// Its first signer, hex, when it decodes.
    pub signer: Option<String>,
    /// The signer's organisation, when a member.
    pub organisation: Option<String>,
    /// The reason's name (`bad_signature`, `round_closed`, ...).
    pub reason_kind: String,
    /// The reason, in words.
    pub reason: String,
}

/// A contribution that did not count in a replayed round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotCountedEntry {
    /// `seq.index`.
    pub pos: String,
    /// The worker, hex.
    pub worker: String,
    /// Its organisation (None: not a member).
    pub organisation: Option<String>,
    /// The reason's name (`stale_base`, `void`, `blob_corrupt`, ...).
    pub reason_kind: String,
    /// The reason, in words.
    pub reason: String,
}

/// One replayed round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoundSummary {
    /// The round.
    pub round: u64,
    /// The close vote that completed the quorum, `seq.index`.
    pub close: String,
    /// Contributions in slots below this counted.
    pub cut: u64,
    /// The state hash it started from.
    pub base: String,
    /// The state hash the replay computed for it.
    pub state: String,
    /// Contributions aggregated.
    pub counted: u64,
    /// The others, with reasons.
    pub not_counted: Vec<NotCountedEntry>,
    /// Fewer contributions counted than the run's minimum.
    pub under_minimum: bool,
}

/// Contributions of one organisation over the replayed rounds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OrganisationSummary {
    /// The organisation (None: signers that are not members).
    pub organisation: Option<String>,
    /// Contributions aggregated.
    pub counted: u64,
    /// Contributions not aggregated (void ones included).
    pub not_counted: u64,
    /// Of those, the ones the ledger's validity rule voided.
    pub void: u64,
}

/// Accepted entries and void entries of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindCounts {
    /// Accepted.
    pub accepted: u64,
    /// Void.
    pub void: u64,
}

/// Validators' verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerdictSummary {
    /// Accepted verdicts.
    pub accepted: u64,
    /// Of those, scores below their threshold (`min_score`, or the relative one: [`RoundRule::thresholds`]).
    pub failing: u64,
}

/// A worker excluded by the exclusion rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExclusionSummary {
    /// The worker, hex.
    pub worker: String,
    /// Its organisation, when known.
    pub organisation: Option<String>,
    /// The verdict that excluded it, `seq.index`.
    pub since: String,
}

/// A claimed state hash that differs from the computed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiscrepancySummary {
    /// The round whose resulting state is claimed.
    pub round: u64,
    /// The claiming entry, `seq.index`.
    pub pos: String,
    /// `genesis`, `final`, `snapshot` or `attestation`.
    pub kind: String,
    /// The claiming entry's signer, hex (for `final`: the attestation that completed the quorum).
    pub signer: Option<String>,
    /// Its organisation.
    pub organisation: Option<String>,
    /// The claimed hash.
    pub claimed: String,
    /// The computed hash.
    pub computed: String,
}

/// What the audit found about `ledger/checkpoint`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CheckpointStatus {
    /// No tree head signed by the required organisations yet (not a failure: nothing to check).
    Missing {
        /// Organisations required.
        required_organisations: u16,
    },
    /// Signed by members of the required organisations and consistent with the log.
    Verified {
        /// Slots covered.
        size: u64,
        /// Merkle root, hex.
        root: String,
        /// Member signers whose signature verifies, hex.
        signers: Vec<String>,
        /// Their organisations, sorted.
        organisations: Vec<String>,
        /// Organisations required.
        required_organisations: u16,
    },
    /// Unsigned, malformed, or not the root of the slots it covers: a failure.
    Bad {
        /// Why.
        problem: String,
    },
    /// Not checked (the ledger could not be read consistently).
    NotChecked,
}

/// What the audit found about one accepted Snapshot entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotSummary {
    /// The entry, `seq.index`.
    pub pos: String,
    /// Its round.
    pub round: u64,
    /// The state it claims.
    pub state: String,
    /// Its blob, hex.
    pub blob: String,
    /// The blob's declared size.
    pub blob_size: u64,
    /// The state is the one the round's quorum attested (always, for an accepted Snapshot).
    pub attested: bool,
    /// `Some(true)`: the blob was fetched, re-hashed and parsed, and its state hashes to the claim;
    /// `Some(false)`: it does not (see the problems); `None`: not checked (before a
    /// `--from-snapshot` start).
    pub blob_ok: Option<bool>,
}

impl SnapshotSummary {
    /// Its position as numbers, for ordering (`seq.index`).
    fn pos_key(&self) -> (u64, u64) {
        let mut parts = self.pos.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }
}

/// Where the replay started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum StartPoint {
    /// The Genesis entry's initial state.
    Genesis,
    /// A Snapshot entry's state.
    Snapshot {
        /// The entry, `seq.index`.
        pos: String,
        /// Its round (the replay starts at the next one).
        round: u64,
    },
}

/// Everything an audit found. `first_problem` decides the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// The run, hex.
    pub run: String,
    /// Where the replay started.
    pub start: StartPoint,
    /// Slots read.
    pub slots: u64,
    /// Entries read (in batches; void slots that are not batches hold none).
    pub entries: u64,
    /// Accepted and void entries per kind.
    pub kinds: BTreeMap<String, KindCounts>,
    /// Void entries and void slots, by reason name.
    pub void_by_reason: BTreeMap<String, u64>,
    /// Every void entry and void slot, in log order.
    pub void_entries: Vec<VoidEntry>,
    /// The published checkpoint.
    pub checkpoint: CheckpointStatus,
    /// Whether the genesis initial state was recomputed from the run config and matched (`None`:
    /// not checked, see [`AuditOptions::initial_state`]).
    pub initial_state_recomputed: Option<bool>,
    /// The first round replayed.
    pub first_round: u64,
    /// The first round whose result is not final: the open round.
    pub open_round: u64,
    /// Rounds replayed.
    pub rounds_replayed: u64,
    /// Each replayed round.
    pub rounds: Vec<RoundSummary>,
    /// Contributions per organisation over the replayed rounds.
    pub organisations: Vec<OrganisationSummary>,
    /// Not-counted contributions by reason name, over the replayed rounds.
    pub not_counted_by_reason: BTreeMap<String, u64>,
    /// Verdicts.
    pub verdicts: VerdictSummary,
    /// Excluded workers.
    pub exclusions: Vec<ExclusionSummary>,
    /// Every binding claim (the quorum's attested result, a Snapshot, the genesis) that differs
    /// from the computed hash, in round order: each is a problem.
    pub discrepancies: Vec<DiscrepancySummary>,
    /// Attestations of single organisations that differ from the computed hash: listed with their
    /// authors, not problems (the quorum decided).
    pub dissents: Vec<DiscrepancySummary>,
    /// Accepted Snapshot entries.
    pub snapshots: Vec<SnapshotSummary>,
    /// Hash of the state after the last replayed round.
    pub state: String,
    /// Things worth knowing that are not problems (a snapshot skipped for an older start, ...).
    pub notes: Vec<String>,
    /// Every problem found, most fundamental first (ledger, checkpoint, replay, claims, snapshots).
    pub problems: Vec<String>,
    /// The first of them: `None` is a pass.
    pub first_problem: Option<String>,
    /// The checkpoint and leaves to keep for the next audit (see [`AuditOptions::witness`]), when
    /// a checkpoint was verified.
    #[serde(skip)]
    pub witness: Option<Witness>,
}

impl AuditReport {
    fn new(run: String) -> AuditReport {
        AuditReport {
            run,
            start: StartPoint::Genesis,
            slots: 0,
            entries: 0,
            kinds: BTreeMap::new(),
            void_by_reason: BTreeMap::new(),
            void_entries: Vec::new(),
            checkpoint: CheckpointStatus::NotChecked,
            initial_state_recomputed: None,
            first_round: 0,
            open_round: 0,
            rounds_replayed: 0,
            rounds: Vec::new(),
            organisations: Vec::new(),
            not_counted_by_reason: BTreeMap::new(),
            verdicts: VerdictSummary::default(),
            exclusions: Vec::new(),
            discrepancies: Vec::new(),
            dissents: Vec::new(),
            snapshots: Vec::new(),
            state: String::new(),
            notes: Vec::new(),
            problems: Vec::new(),
            first_problem: None,
            witness: None,
        }
    }

    /// Whether the audit passed (no problem found).
    pub fn passed(&self) -> bool {
        self.first_problem.is_none()
    }

    fn problem(&mut self, what: String) {
        tracing::warn!(problem = %what, "audit problem");
        self.problems.push(what);
    }

    fn done(mut self) -> AuditReport {
        self.first_problem = self.problems.first().cloned();
        self
    }
}

/// A name for an enum value from its `Debug` form: `BadSignature(..)` → `bad_signature`.
fn variant_name(debug: &str) -> String {
    let name = debug.split(['(', ' ', '{']).next().unwrap_or("");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The name of a reason a contribution did not count (`stale_base`, `void`, ...).
pub fn not_counted_kind(reason: &NotCounted) -> String {
    variant_name(&format!("{reason:?}"))
}

/// Whether a ledger error means the bucket's history changed (a finding), rather than that it
/// could not be read now (an error).
fn is_finding(e: &LedgerError) -> bool {
    matches!(
        e,
        LedgerError::Tampered { .. }
            | LedgerError::CheckpointMismatch { .. }
            | LedgerError::CheckpointRollback { .. }
            | LedgerError::LogTooShort { .. }
            | LedgerError::Malformed { .. }
            | LedgerError::WrongRun { .. }
            | LedgerError::BadProof { .. }
    )
}

/// What the ledger pass leaves for the later passes.
struct LedgerPass {
    entries: Vec<LoggedEntry>,
}

/// Audits the run in `store` (scoped to one run): see the module documentation. Returns a report
/// whenever the ledger could be read; `Err` only when the audit could not run (store unreachable,
/// no genesis slot).
pub async fn audit(
    store: &Store,
    options: &AuditOptions,
    progress: &mut (dyn FnMut(AuditProgress) + Send),
) -> Result<AuditReport, AuditError> {
    Ok(audit_with_entries(store, options, progress).await?.0)
}

async fn audit_with_entries(
    store: &Store,
    options: &AuditOptions,
    progress: &mut (dyn FnMut(AuditProgress) + Send),
) -> Result<(AuditReport, Vec<LoggedEntry>), AuditError> {
    let run_id = ledger::genesis_run_id(store).await?;
    let mut report = AuditReport::new(run_id.to_string());
    let Some(pass) = read_ledger(store, run_id, options, &mut report, progress).await? else {
        return Ok((report.done(), Vec::new()));
    };
    let entries = pass.entries;
    let config = match genesis_config(&entries) {
        Ok((_, config, genesis)) => {
            if let Some(rule) = &options.initial_state {
                let claimed = StateHash(genesis.initial_state.0);
                let matched = match rule(&config) {
                    Ok(None) => {
                        report.notes.push(
                            "genesis: the config is not a training spec this auditor knows; its initial state \
                             was not recomputed"
                                .into(),
                        );
                        None
                    }
                    Ok(Some(computed)) if computed == claimed => Some(true),
                    Ok(Some(computed)) => {
                        report.problem(format!(
                            "genesis: its initial state {} is not the one its config gives ({}): a planted start",
                            claimed.to_hex(),
                            computed.to_hex()
                        ));
                        Some(false)
                    }
                    Err(why) => {
                        report.problem(format!("genesis: its initial state cannot be recomputed: {why}"));
                        Some(false)
                    }
                };
                report.initial_state_recomputed = matched;
            }
            config
        }
        Err(e) => {
            report.problem(format!("genesis: {e}"));
            return Ok((report.done(), entries));
        }
    };
    let rule = RoundRule::new(&entries, &config);
    count_entries(&entries, &rule, &mut report);
    replay_rounds(store, &entries, &rule, options, &mut report, progress).await;
    check_snapshots(store, &entries, &rule, &mut report, progress).await;
    Ok((report.done(), entries))
}

/// Steps 1 to 3: the log, the checkpoint, the re-read. `None` when the log itself is a finding
/// (rewritten under a witness) and nothing further can be checked.
async fn read_ledger(
    store: &Store,
    run_id: ledger::RunId,
    options: &AuditOptions,
    report: &mut AuditReport,
    progress: &mut (dyn FnMut(AuditProgress) + Send),
) -> Result<Option<LedgerPass>, AuditError> {
    let read = match &options.witness {
        Some(w) => Reader::replay_from_witness(store.clone(), run_id, w.clone()).await,
        None => Reader::replay(store.clone(), run_id).await,
    };
    let mut reader = match read {
        Ok(reader) => reader,
        Err(e) if is_finding(&e) => {
            report.problem(format!("ledger: {e}"));
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    progress(AuditProgress::LedgerRead { slots: reader.slots().len() as u64, entries: reader.entries().len() as u64 });

    let required = reader.checkpoint_quorum(options.checkpoint_organisations);
    report.checkpoint = match reader.check_checkpoint(required).await {
        Ok(None) => CheckpointStatus::Missing { required_organisations: required },
        Ok(Some(cp)) => {
            let signers: Vec<ledger::PublicKey> =
                cp.valid_signers().into_iter().filter(|k| reader.state().member(k).is_some()).collect();
            let organisations: std::collections::BTreeSet<String> =
                signers.iter().filter_map(|k| reader.state().organisation(k)).map(str::to_owned).collect();
            CheckpointStatus::Verified {
                size: cp.checkpoint.size,
                root: hex_of(&cp.checkpoint.root.0),
                signers: signers.iter().map(|k| k.to_string()).collect(),
                organisations: organisations.into_iter().collect(),
                required_organisations: required,
            }
        }
        Err(e) if is_finding(&e) => {
            report.problem(format!("checkpoint: {e}"));
            CheckpointStatus::Bad { problem: e.to_string() }
        }
        Err(e) => return Err(e.into()),
    };
    progress(AuditProgress::CheckpointChecked);

    match reader.audit().await {
        Ok(()) => {}
        Err(e) if is_finding(&e) => report.problem(format!("ledger: {e}")),
        Err(e) => return Err(e.into()),
    }
    progress(AuditProgress::SlotsReread { slots: reader.slots().len() as u64 });

    report.slots = reader.slots().len() as u64;
    report.entries = reader.entries().len() as u64;
    report.witness = reader.witness();
    for slot in reader.slots() {
        if let Some(reason) = &slot.void {
            let kind = variant_name(&format!("{reason:?}"));
            *report.void_by_reason.entry(kind.clone()).or_default() += 1;
            report.void_entries.push(VoidEntry {
                pos: slot.seq.to_string(),
                kind: None,
                signer: None,
                organisation: None,
                reason_kind: kind,
                reason: reason.to_string(),
            });
        }
        for logged in reader.entries().get(slot.entries.clone()).into_iter().flatten() {
            let Validity::Void(reason) = &logged.validity else { continue };
            let kind = variant_name(&format!("{reason:?}"));
            *report.void_by_reason.entry(kind.clone()).or_default() += 1;
            report.void_entries.push(VoidEntry {
                pos: logged.pos.to_string(),
                kind: logged.entry.as_ref().map(|e| e.body.kind().name().to_string()),
                signer: logged.entry.as_ref().map(|e| e.signer().to_string()),
                organisation: logged.organisation.clone(),
                reason_kind: kind,
                reason: reason.to_string(),
            });
        }
    }
    Ok(Some(LedgerPass { entries: reader.entries().to_vec() }))
}

fn hex_of(bytes: &[u8; 32]) -> String {
    StateHash(*bytes).to_hex()
}

/// Entries per kind and verdicts.
fn count_entries(entries: &[LoggedEntry], rule: &RoundRule, report: &mut AuditReport) {
    let mut thresholds = std::collections::HashMap::new();
    for logged in entries {
        let Some(entry) = &logged.entry else {
            report.kinds.entry("undecodable".into()).or_default().void += 1;
            continue;
        };
        let counts = report.kinds.entry(entry.body.kind().name().into()).or_default();
        if logged.validity.is_accept() {
            counts.accepted += 1;
            if let Body::Verdict(v) = &entry.body {
                report.verdicts.accepted += 1;
                let round = Round(v.round.0);
                let thresholds = thresholds.entry(round).or_insert_with(|| rule.thresholds(round));
                if v.score < thresholds.of(&entry.signer()) {
                    report.verdicts.failing += 1;
                }
            }
        } else {
            counts.void += 1;
        }
    }
}

/// The run's blobs with the mirrors of every organisation the log names.
fn run_blobs(store: &Store, entries: &[LoggedEntry]) -> RunBlobs {
    let organisations = organisations_by_key(entries);
    RunBlobs::new(store.clone(), organisations.values().map(String::as_str))
}

/// Step 4: every final round from the start point, with per-round progress.
async fn replay_rounds(
    store: &Store,
    entries: &[LoggedEntry],
    rule: &RoundRule,
    options: &AuditOptions,
    report: &mut AuditReport,
    progress: &mut (dyn FnMut(AuditProgress) + Send),
) {
    let config = rule.config();
    let blobs = run_blobs(store, entries);
    let snapshot = if options.from_snapshot {
        match newest_usable_snapshot(entries, &blobs).await {
            Ok((usable, skipped)) => {
                for s in skipped {
                    report.notes.push(format!(
                        "snapshot at {} (round {}) skipped for an older start: {}",
                        s.snapshot.pos, s.snapshot.round, s.reason
                    ));
                }
                usable
            }
            Err(e) => {
                report.problem(format!("snapshots: {e}"));
                return;
            }
        }
    } else {
        None
    };
    let start = match snapshot {
        Some((snapshot, state)) => {
            report.start = StartPoint::Snapshot { pos: snapshot.pos.to_string(), round: snapshot.round.0 };
            Ok(Start::Snapshot { pos: snapshot.pos, state })
        }
        None => match genesis_config(entries) {
            Ok((_, _, genesis)) => {
                fetch_state(&blobs, config, genesis.snapshot, genesis.snapshot_size).await.map(Start::Genesis)
            }
            Err(e) => Err(e),
        },
    };
    let what = match &report.start {
        StartPoint::Genesis => "genesis state".to_string(),
        StartPoint::Snapshot { pos, .. } => format!("snapshot at {pos}"),
    };
    let mut replay = match start.and_then(|start| Replay::new(entries, start)) {
        Ok(replay) => replay,
        Err(e) => {
            report.problem(format!("replay start ({what}): {e}"));
            return;
        }
    };
    let first = replay.next_plan().map_or_else(|| replay_first_round(&report.start), |p| p.round);
    let mut total = 0u64;
    while rule.final_result(Round(first.0.saturating_add(total))).is_some() && total < u64::MAX {
        total += 1;
    }
    progress(AuditProgress::ReplayStarted { first, rounds: total });
    let mut done = 0u64;
    while let Some(plan) = replay.next_plan() {
        let round = plan.round;
        let fetched = fetch_blobs(&blobs, &plan).await;
        if let Err(e) = replay.apply(plan, fetched) {
            report.problem(format!("round {round}: {e}"));
            break;
        }
        done += 1;
        progress(AuditProgress::RoundReplayed { round, done, total });
    }
    let replayed = replay.finish();
    summarise_replay(&replayed.report, entries, report);
}

fn replay_first_round(start: &StartPoint) -> Round {
    match start {
        StartPoint::Genesis => Round(0),
        StartPoint::Snapshot { round, .. } => Round(round.saturating_add(1)),
    }
}

/// Copies a replay's findings into the report, discrepancies as problems.
fn summarise_replay(replay: &ReplayReport, entries: &[LoggedEntry], report: &mut AuditReport) {
    report.first_round = replay.first_round.0;
    report.open_round = replay.next_round.0;
    report.rounds_replayed = replay.rounds.len() as u64;
    report.state = replay.state.to_hex();
    let mut organisations: BTreeMap<Option<String>, OrganisationSummary> = BTreeMap::new();
    for r in &replay.rounds {
        for c in &r.counted {
            organisations.entry(c.organisation.clone()).or_default().counted += 1;
        }
        let mut not_counted = Vec::with_capacity(r.not_counted.len());
        for (c, why) in &r.not_counted {
            let org = organisations.entry(c.organisation.clone()).or_default();
            org.not_counted += 1;
            if matches!(why, NotCounted::Void(_) | NotCounted::Late { .. }) {
                org.void += 1;
            }
            let kind = not_counted_kind(why);
            *report.not_counted_by_reason.entry(kind.clone()).or_default() += 1;
            not_counted.push(NotCountedEntry {
                pos: c.pos.to_string(),
                worker: c.worker.to_hex(),
                organisation: c.organisation.clone(),
                reason_kind: kind,
                reason: why.to_string(),
            });
        }
        report.rounds.push(RoundSummary {
            round: r.round.0,
            close: r.close.to_string(),
            cut: r.cut.0,
            base: r.base.to_hex(),
            state: r.state.to_hex(),
            counted: r.counted.len() as u64,
            not_counted,
            under_minimum: r.under_minimum,
        });
    }
    report.organisations =
        organisations.into_iter().map(|(organisation, s)| OrganisationSummary { organisation, ..s }).collect();

    let organisation_of = organisations_by_key(entries);
    report.exclusions = replay
        .exclusions
        .iter()
        .map(|(worker, since)| ExclusionSummary {
            worker: worker.to_hex(),
            organisation: organisation_of.get(worker).cloned(),
            since: since.to_string(),
        })
        .collect();

    let mut discrepancies: Vec<_> = replay.discrepancies.clone();
    discrepancies.sort_by_key(|d| (d.round, d.pos));
    let signer_of = |pos: EntryPos| {
        entries
            .iter()
            .find(|e| e.pos == pos)
            .map(|e| (e.entry.as_ref().map(|x| x.signer().to_string()), e.organisation.clone()))
            .unwrap_or_default()
    };
    for d in &discrepancies {
        let (signer, organisation) = signer_of(d.pos);
        let summary = DiscrepancySummary {
            round: d.round.0,
            pos: d.pos.to_string(),
            kind: d.kind.name().to_string(),
            signer: signer.clone(),
            organisation: organisation.clone(),
            claimed: d.claimed.to_hex(),
            computed: d.computed.to_hex(),
        };
        if !d.kind.is_binding() {
            report.dissents.push(summary);
            continue;
        }
        report.problem(format!(
            "round {}: the {} at {} (signed by {}, organisation {}) claims state {}, the replay computed {}",
            d.round,
            d.kind.name(),
            d.pos,
            signer.as_deref().unwrap_or("?"),
            organisation.as_deref().unwrap_or("?"),
            d.claimed,
            d.computed
        ));
        report.discrepancies.push(summary);
    }
}

/// The organisation of every signer the log names.
fn organisations_by_key(entries: &[LoggedEntry]) -> HashMap<WorkerKey, String> {
    let mut out = HashMap::new();
    for logged in entries {
        let Some(entry) = &logged.entry else { continue };
        if let Body::Genesis(g) = &entry.body {
            for m in &g.roster {
                out.insert(WorkerKey(m.key.0), m.organisation.clone());
            }
        }
        if let Some(org) = &logged.organisation {
            out.entry(WorkerKey(entry.signer().0)).or_insert_with(|| org.clone());
        }
    }
    out
}

/// Step 5: every accepted Snapshot entry at or after the start is fetched and hashed as a state.
async fn check_snapshots(
    store: &Store,
    entries: &[LoggedEntry],
    rule: &RoundRule,
    report: &mut AuditReport,
    progress: &mut (dyn FnMut(AuditProgress) + Send),
) {
    let config = rule.config();
    let blobs = run_blobs(store, entries);
    let (start_pos, start_round) = match &report.start {
        StartPoint::Genesis => (None, None),
        StartPoint::Snapshot { pos, round } => (Some(pos.clone()), Some(*round)),
    };
    let snapshots: Vec<(EntryPos, &ledger::Snapshot)> = entries
        .iter()
        .filter(|e| e.validity.is_accept())
        .filter_map(|e| match e.entry.as_ref().map(|x| &x.body) {
            Some(Body::Snapshot(s)) => Some((e.pos, s)),
            _ => None,
        })
        .collect();
    let total = snapshots.iter().filter(|(_, s)| start_round.is_none_or(|r| s.round.0 >= r)).count() as u64;
    let mut done = 0u64;
    for (pos, s) in snapshots {
        let mut summary = SnapshotSummary {
            pos: pos.to_string(),
            round: s.round.0,
            state: hex_of(&s.state.0),
            blob: s.blob.to_string(),
            blob_size: s.blob_size,
            attested: rule.final_result(Round(s.round.0)).map(|f| f.state.0) == Some(s.state.0),
            blob_ok: None,
        };
        if start_round.is_some_and(|r| s.round.0 < r) {
            report.snapshots.push(summary);
            continue;
        }
        if start_pos.as_deref() == Some(summary.pos.as_str()) {
            // The replay started from it: fetched, re-hashed and checked against its claim there.
            summary.blob_ok = Some(!report.problems.iter().any(|p| p.starts_with("replay start")));
        } else {
            // A snapshot is an offer of the attested state; a bad blob is its publisher's fault,
            // skipped by joiners and by --from-snapshot audits, and named here, not a failure of
            // the run.
            let by = entries
                .iter()
                .find(|e| e.pos == pos)
                .map(|e| {
                    let signer = e.entry.as_ref().map(|x| x.signer().to_string()).unwrap_or_default();
                    format!("{signer} ({})", e.organisation.as_deref().unwrap_or("not a member"))
                })
                .unwrap_or_default();
            match fetch_state(&blobs, config, s.blob, s.blob_size).await {
                Ok(state) if state.hash().0 == s.state.0 => summary.blob_ok = Some(true),
                Ok(state) => {
                    summary.blob_ok = Some(false);
                    report.notes.push(format!(
                        "snapshot at {pos} (round {}) by {by}: its blob holds state {}, not the attested {}; joiners skip it",
                        s.round,
                        state.hash(),
                        summary.state
                    ));
                }
                Err(e) => {
                    summary.blob_ok = Some(false);
                    report.notes.push(format!("snapshot at {pos} (round {}) by {by}: {e}; joiners skip it", s.round));
                }
            }
        }
        done += 1;
        progress(AuditProgress::SnapshotChecked { done, total });
        report.snapshots.push(summary);
    }
}

/// One blob `cairn gc` may delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcBlob {
    /// The blob.
    pub blob: BlobId,
    /// Its size as the contribution entry declares it.
    pub declared_size: u64,
    /// The latest round of a contribution naming it.
    pub round: u64,
}

/// What `cairn gc` may delete, derived from a passing audit.
#[derive(Clone, Debug)]
pub struct GcPlan {
    /// The audit it rests on.
    pub audit: AuditReport,
    /// Why nothing may be deleted (a failed audit, no confirmed snapshot), if so.
    pub refused: Option<String>,
    /// The snapshot behind which blobs may go: (entry `seq.index`, round).
    pub snapshot: Option<(String, u64)>,
    /// Update blobs of contributions in rounds up to the snapshot's, sorted by id.
    pub blobs: Vec<GcBlob>,
    /// Blobs the log names that are kept (genesis, snapshots, later contributions).
    pub protected: u64,
}

impl GcPlan {
    /// The declared bytes of the blobs to delete.
    pub fn declared_bytes(&self) -> u64 {
        self.blobs.iter().fold(0u64, |sum, b| sum.saturating_add(b.declared_size))
    }
}

/// The pure part of garbage collection: given the log and a passing audit, the update blobs that
/// may be deleted. A blob may go when every entry naming it is a Contribution of a round up to
/// the newest snapshot whose blob the audit checked (the newest usable one, as joiners and
/// `--from-snapshot` audits choose it). The Genesis blob and every Snapshot blob (accepted or
/// void) are never deleted.
pub fn gc_plan_from(entries: &[LoggedEntry], audit: AuditReport) -> GcPlan {
    let mut plan = GcPlan { audit, refused: None, snapshot: None, blobs: Vec::new(), protected: 0 };
    if let Some(problem) = &plan.audit.first_problem {
        plan.refused = Some(format!("the audit fails: {problem}"));
        return plan;
    }
    let confirmed = plan
        .audit
        .snapshots
        .iter()
        .filter(|s| s.attested && s.blob_ok == Some(true) && s.round < plan.audit.open_round)
        .max_by_key(|s| (s.round, s.pos_key()));
    let Some(snapshot) = confirmed else {
        plan.refused = Some("no snapshot confirmed by the audit: nothing may be deleted".into());
        return plan;
    };
    let boundary = snapshot.round;
    plan.snapshot = Some((snapshot.pos.clone(), boundary));
    let mut protected: BTreeSet<BlobId> = BTreeSet::new();
    let mut candidates: BTreeMap<BlobId, GcBlob> = BTreeMap::new();
    for logged in entries {
        let Some(entry) = &logged.entry else { continue };
        match &entry.body {
            Body::Contribution(c) if c.round.0 <= boundary => {
                let blob = candidates.entry(c.blob).or_insert(GcBlob {
                    blob: c.blob,
                    declared_size: c.blob_size,
                    round: c.round.0,
                });
                blob.round = blob.round.max(c.round.0);
                blob.declared_size = blob.declared_size.max(c.blob_size);
            }
            body => {
                if let Some((blob, _)) = body.blob() {
                    protected.insert(blob);
                }
            }
        }
    }
    plan.protected = protected.len() as u64;
    plan.blobs = candidates.into_values().filter(|b| !protected.contains(&b.blob)).collect();
    plan
}

/// Audits the run (see [`audit`]; `options.from_snapshot` after an earlier gc) and plans what
/// `cairn gc` may delete ([`gc_plan_from`]). Deletes nothing.
pub async fn plan_gc(
    store: &Store,
    options: &AuditOptions,
    progress: &mut (dyn FnMut(AuditProgress) + Send),
) -> Result<GcPlan, AuditError> {
    let (report, entries) = audit_with_entries(store, options, progress).await?;
    Ok(gc_plan_from(&entries, report))
}

/// What [`collect_garbage`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcDone {
    /// Blobs deleted (and copies of them re-published under `mirrors/`).
    pub deleted: u64,
    /// Their bytes, as the store reported them before deletion.
    pub bytes: u64,
    /// Blobs already absent.
    pub absent: u64,
}

/// Deletes the blobs of `plan` (nothing when it was refused), a few at a time; `progress` gets
/// the number done after each.
pub async fn collect_garbage(
    store: &Store,
    plan: &GcPlan,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<GcDone, AuditError> {
    let mut done = GcDone::default();
    if plan.refused.is_some() {
        return Ok(done);
    }
    let mut deletions = std::pin::pin!(
        futures::stream::iter(plan.blobs.iter().map(|b| {
            let store = store.clone();
            let key = b.blob.key();
            async move {
                let size = store.head(&key).await?.map(|info| info.size);
                if size.is_some() {
                    store.delete(&key).await?;
                }
                Ok::<_, StoreError>(size)
            }
        }))
        .buffer_unordered(DELETE_CONCURRENCY)
    );
    let mut count = 0u64;
    while let Some(result) = deletions.next().await {
        match result? {
            Some(size) => {
                done.deleted += 1;
                done.bytes = done.bytes.saturating_add(size);
            }
            None => done.absent += 1,
        }
        count += 1;
        progress(count);
    }
    // Copies that organisations re-published (`mirrors/<org>/blobs/<hex>`) go with the original.
    let planned: BTreeSet<String> = plan.blobs.iter().map(|b| b.blob.key()).collect();
    for info in store.list("mirrors", None).await? {
        let copy_of = info.key.split_once("/blobs/").map(|(_, hex)| format!("blobs/{hex}"));
        if copy_of.is_some_and(|k| planned.contains(&k)) {
            store.delete(&info.key).await?;
            done.deleted += 1;
            done.bytes = done.bytes.saturating_add(info.size);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_are_snake_case() {
        assert_eq!(variant_name("BadSignature(PublicKey(ab))"), "bad_signature");
        assert_eq!(variant_name("Late { close: 1.0 }"), "late");
        assert_eq!(variant_name("Filler"), "filler");
        assert_eq!(not_counted_kind(&NotCounted::Unavailable), "unavailable");
        assert_eq!(not_counted_kind(&NotCounted::OverLimit { max: 3 }), "over_limit");
    }
}
