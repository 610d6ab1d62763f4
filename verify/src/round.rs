//! The round rule: which contributions count in each round, a pure function of the ledger prefix
//! (and of the state hash after the previous round, which aggregation computes).
//!
//! ```text
//!   entries (ledger order) ──RoundRule::new, then extend──▶ index: contributions by round, the
//!                                                           round tally (closes and cuts, attested
//!                                                           results: ledger::rounds), failing
//!                                                           verdicts by organisation, exclusions
//!   a follower of a long run, after each extend: rule.forget_before(open round - window) ──▶ drops
//!     what it holds for rounds behind the ledger's window (they can never change again)
//!   replay, round r = 0, 1, ... while r is final:
//!     rule.round(r, base = hash of the state after r-1) ──▶ RoundPlan
//!        every Contribution entry of round r, in ledger order, gets the first reason that applies:
//!          void by the ledger ............ Late (closed before it) | Void(reason)
//!          in a slot at or after the cut . Late
//!          worker excluded before r ...... Excluded
//!          worker already contributed .... Duplicate
//!          base_state != base ............ StaleBase
//!          blob size != the update size .. WrongSize
//!          failed by a quorum of orgs .... Rejected
//!          max_contributions reached ..... OverLimit
//!          dropped by the attestation .... Unavailable
//!          otherwise ..................... counted (replay then fetches and decodes its blob)
//! ```
//!
//! A contribution *fails* when validators of the run's quorum of distinct organisations wrote a
//! verdict below its threshold on it before the round closed: `min_score`, or with a relative
//! threshold also a share of the lower median of the scores the same validator gave in the round
//! before the close, one score per worker: its verdict on the worker's first contribution
//! ([`crate::ExclusionRules::threshold`], [`RoundRule::thresholds`]). For exclusion a
//! contribution fails only by verdicts below `min_score` itself: a worker is excluded from the
//! round after its `max_failures`-th consecutive failed round (its first contribution of each closed
//! round counts; one that did not fail resets the count; 0: never). Verdicts written after a
//! round's close change nothing. docs/FORMAT.md ("Round rule") is the normative text.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ledger::rounds::forget_rounds_before;
use ledger::{BlobId, Body, EntryPos, LoggedEntry, PublicKey, RoundTally, Seq, Target, Validity, VoidReason};

use crate::config::RunConfig;
use crate::error::VerifyError;
use crate::id::{Round, StateHash, WorkerKey};
use crate::wire::{MAX_UPDATE_BYTES, encoded_len};

/// One Contribution entry, as the round rule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Where it is in the ledger.
    pub pos: EntryPos,
    /// The round it is for.
    pub round: Round,
    /// Its signer.
    pub worker: WorkerKey,
    /// The signer's organisation when the entry was read (None: not a member).
    pub organisation: Option<String>,
    /// The state it claims to be computed from.
    pub base: StateHash,
    /// Its update blob.
    pub blob: BlobId,
    /// The blob's size as the entry declares it.
    pub blob_size: u64,
}

/// Why a contribution does not count. Every contribution the replay sees gets one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotCounted {
    /// It landed after the round's cut (or after its close, when the ledger voids it as
    /// `RoundClosed`).
    #[error("late: the round's cut is slot {cut}")]
    Late {
        /// The round's cut: contributions in slots below it count.
        cut: Seq,
    },
    /// The ledger's validity rule voided it for another reason.
    #[error("void entry: {0}")]
    Void(VoidReason),
    /// Its worker was excluded by validators' verdicts before this round.
    #[error("worker excluded since {since}")]
    Excluded {
        /// The verdict that completed the exclusion.
        since: EntryPos,
    },
    /// Its worker already contributed to this round.
    #[error("duplicate: the worker's contribution to this round is at {first}")]
    Duplicate {
        /// The worker's first contribution of the round.
        first: EntryPos,
    },
    /// Computed from another state than the one after the previous round.
    #[error("stale base {got}, the round's base is {expected}")]
    StaleBase {
        /// The round's base.
        expected: StateHash,
        /// The entry's.
        got: StateHash,
    },
    /// The entry declares a blob size other than the size of an update for this run.
    #[error("blob of {declared} bytes declared, an update is {expected}")]
    WrongSize {
        /// The entry's blob size.
        declared: u64,
        /// The size every update of this run has.
        expected: u64,
    },
    /// Validators of a quorum of organisations failed it before the round closed.
    #[error(
        "rejected by validators of {orgs} organisations (the verdict that completed the quorum: {verdict}, score {score})"
    )]
    Rejected {
        /// The failing verdict that completed the quorum.
        verdict: EntryPos,
        /// Its score.
        score: i64,
        /// Distinct organisations whose validators failed it.
        orgs: usize,
    },
    /// The round already had `max_contributions` counted contributions.
    #[error("over the limit of {max} contributions per round")]
    OverLimit {
        /// The limit.
        max: u32,
    },
    /// The round's attested result left it out: its blob could not be read by the organisations
    /// that attested the round.
    #[error("unavailable: the round's attested result dropped it (no copy of its blob could be read)")]
    Unavailable,
    /// The blob holds fewer or more bytes than the entry declares.
    #[error("blob corrupt: {0}")]
    BlobCorrupt(String),
    /// The blob does not decode as an update for this run, round, base and worker.
    #[error("undecodable update: {0}")]
    Undecodable(VerifyError),
}

/// What kind of entry claims a state hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimKind {
    /// The Genesis entry's initial state (before round 0).
    Genesis,
    /// The round's result, attested by a quorum of organisations (the attestation that completed
    /// the quorum is the claiming entry).
    Final,
    /// A Snapshot (the ledger accepts one only with the round's attested state).
    Snapshot,
    /// One organisation's attestation (its latest, or an earlier one it revised): a dissent when
    /// it differs from the computed state, never binding.
    Attestation,
}

impl ClaimKind {
    /// A lowercase name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            ClaimKind::Genesis => "genesis",
            ClaimKind::Final => "final",
            ClaimKind::Snapshot => "snapshot",
            ClaimKind::Attestation => "attestation",
        }
    }

    /// Whether a difference from the computed state is a failure of the run (a quorum or the
    /// genesis claimed a wrong state) rather than one organisation's dissent.
    pub fn is_binding(self) -> bool {
        !matches!(self, ClaimKind::Attestation)
    }
}

/// A state hash some accepted entry claims for the state after a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The entry.
    pub pos: EntryPos,
    /// Its kind.
    pub kind: ClaimKind,
    /// The claimed hash.
    pub state: StateHash,
}

/// The round rule's decision for one closed round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundPlan {
    /// The round.
    pub round: Round,
    /// The state hash it starts from.
    pub base: StateHash,
    /// The close vote that completed the quorum (for a prospective plan: where the round would
    /// close, the end of the ledger read so far).
    pub close: EntryPos,
    /// Contributions in slots below this count.
    pub cut: Seq,
    /// The contributions that count, in ledger order (their blobs still to be fetched and decoded).
    pub counted: Vec<Candidate>,
    /// The others, in ledger order, each with its reason.
    pub not_counted: Vec<(Candidate, NotCounted)>,
    /// Every hash claimed for the state after this round: the attested result first, then every
    /// accepted attestation and Snapshot, in ledger order. Empty for a round that is not final.
    pub claims: Vec<Claim>,
}

impl RoundPlan {
    /// The result a quorum of organisations attested for the round (its [`ClaimKind::Final`]
    /// claim); `None` for a round that is not final.
    pub fn attested(&self) -> Option<StateHash> {
        self.claims.iter().find(|c| c.kind == ClaimKind::Final).map(|c| c.state)
    }

    /// Moves the counted contributions at `dropped` to the not-counted ones as
    /// [`NotCounted::Unavailable`]: what an attesting organisation does with the contributions whose
    /// blobs it could not read. They keep their place under `max_contributions`, as in
    /// [`RoundRule::round`] once the round is final with these drops.
    pub fn drop_unavailable(&mut self, dropped: &[EntryPos]) {
        let (gone, kept): (Vec<Candidate>, Vec<Candidate>) =
            std::mem::take(&mut self.counted).into_iter().partition(|c| dropped.contains(&c.pos));
        self.counted = kept;
        self.not_counted.extend(gone.into_iter().map(|c| (c, NotCounted::Unavailable)));
        self.not_counted.sort_by_key(|(c, _)| c.pos);
    }
}

/// Each validator's threshold on one round (see [`crate::ExclusionRules::threshold`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thresholds {
    min_score: i64,
    /// Validators with scores in the median set; any other validator's threshold is `min_score`.
    by_validator: BTreeMap<PublicKey, i64>,
}

impl Thresholds {
    /// `min_score` for every validator.
    fn absolute(min_score: i64) -> Thresholds {
        Thresholds { min_score, by_validator: BTreeMap::new() }
    }

    /// The score below which a verdict of `validator` fails its contribution.
    pub fn of(&self, validator: &PublicKey) -> i64 {
        self.by_validator.get(validator).copied().unwrap_or(self.min_score)
    }
}

/// An accepted verdict on one contribution.
#[derive(Clone, Debug)]
struct VerdictOn {
    pos: EntryPos,
    organisation: String,
    signer: PublicKey,
    score: i64,
}

#[derive(Clone, Debug)]
struct Indexed {
    candidate: Candidate,
    void: Option<VoidReason>,
}

/// The index the round rule runs on, built from the ledger's entries and extended as more are read.
#[derive(Clone, Debug)]
pub struct RoundRule {
    config: RunConfig,
    update_bytes: u64,
    genesis: Option<Claim>,
    tally: RoundTally,
    /// Every accepted attestation of each round, in ledger order.
    attestations: BTreeMap<Round, Vec<Claim>>,
    snapshots: BTreeMap<Round, Vec<Claim>>,
    contributions: BTreeMap<Round, Vec<Indexed>>,
    /// Per contribution, in ledger order, the accepted verdicts that may fail it: those below
    /// `min_score`, or every one under a relative threshold (which depends on the others; each
    /// validator's median is taken from these too).
    failing: HashMap<EntryPos, Vec<VerdictOn>>,
    /// The first round each excluded worker is excluded from, and the verdict that completed it.
    excluded: BTreeMap<WorkerKey, (Round, EntryPos)>,
    /// Accepted contributions by (round, blob), for verdicts that target a blob.
    by_blob: HashMap<(Round, BlobId), Vec<EntryPos>>,
    /// Per worker, its failed closed rounds in a row so far (see [`RoundRule::walk_exclusions`]).
    streaks: BTreeMap<WorkerKey, u32>,
    /// The last closed round the exclusion walk took in (closed rounds never change again).
    walked: Option<Round>,
    /// The last entry indexed.
    last: Option<EntryPos>,
    /// The position after the last entry.
    end: EntryPos,
    /// Rounds below this one are forgotten ([`RoundRule::forget_before`]).
    forgotten: Round,
    /// The run's window of rounds, from its genesis (0: none).
    window: u64,
}

impl RoundRule {
    /// Indexes `entries` (in ledger order, as `ledger::Reader::entries` gives them) under `config`.
    pub fn new(entries: &[LoggedEntry], config: &RunConfig) -> RoundRule {
        let mut rule = RoundRule::empty(config);
        rule.extend(entries);
        rule
    }

    /// An index of no entries.
    pub fn empty(config: &RunConfig) -> RoundRule {
        RoundRule {
            config: config.clone(),
            update_bytes: encoded_len(&config.layout, &config.hyper.compression),
            genesis: None,
            tally: RoundTally::new(1),
            attestations: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            contributions: BTreeMap::new(),
            failing: HashMap::new(),
            excluded: BTreeMap::new(),
            by_blob: HashMap::new(),
            streaks: BTreeMap::new(),
            walked: None,
            last: None,
            end: EntryPos { seq: Seq(0), index: 0 },
            forgotten: Round(0),
            window: 0,
        }
    }

    /// Takes in the entries of `entries` (ledger order) after the last one indexed, skipping those
    /// already indexed: a follower passes the reader's whole list after every poll and pays for
    /// the new entries only (and a binary search). `RoundRule::new(all)` and any sequence of
    /// `extend` calls over growing prefixes of `all` give the same index. Once rounds are
    /// forgotten ([`RoundRule::forget_before`]), most entries that name them are not indexed.
    pub fn extend(&mut self, entries: &[LoggedEntry]) {
        let from = self.last.map_or(0, |last| entries.partition_point(|e| e.pos <= last));
        let rules = self.config.exclusion;
        let relative = rules.min_pct_of_median != 0;
        for logged in &entries[from..] {
            self.last = Some(logged.pos);
            if let Some(next) = logged.pos.seq.next() {
                self.end = self.end.max(EntryPos { seq: next, index: 0 });
            }
            let Some(entry) = &logged.entry else { continue };
            let pos = logged.pos;
            let void = match &logged.validity {
                Validity::Accept => None,
                Validity::Void(reason) => Some(reason.clone()),
            };
            let org = logged.organisation.clone().unwrap_or_default();
            match &entry.body {
                Body::Contribution(c) => {
                    let candidate = Candidate {
                        pos,
                        round: Round(c.round.0),
                        worker: WorkerKey(entry.signer().0),
                        organisation: logged.organisation.clone(),
                        base: StateHash(c.base_state.0),
                        blob: c.blob,
                        blob_size: c.blob_size,
                    };
                    // A void contribution to a round beyond the window can never count; indexing it
                    // would let anyone who can write to the bucket grow every reader's index with
                    // rounds that never come (every reader skips it alike).
                    let beyond = void.is_some()
                        && self.window != 0
                        && candidate.round.0 > self.tally.open_round().0.saturating_add(self.window);
                    if candidate.round < self.forgotten || beyond {
                        continue;
                    }
                    if void.is_none() {
                        self.by_blob.entry((candidate.round, c.blob)).or_default().push(pos);
                    }
                    self.contributions.entry(candidate.round).or_default().push(Indexed { candidate, void });
                }
                _ if void.is_some() => {}
                Body::Genesis(g) => {
                    self.genesis = Some(Claim { pos, kind: ClaimKind::Genesis, state: StateHash(g.initial_state.0) });
                    self.tally = RoundTally::new(g.org_quorum);
                    self.window = u64::from(g.window);
                }
                Body::CloseVote(_) => self.tally.observe(pos, &org, &entry.body),
                Body::Attestation(a) => {
                    let claim = Claim { pos, kind: ClaimKind::Attestation, state: StateHash(a.state.0) };
                    if self.keeps_claims(Round(a.round.0)) {
                        self.attestations.entry(Round(a.round.0)).or_default().push(claim);
                    }
                    self.tally.observe(pos, &org, &entry.body);
                }
                Body::Snapshot(s) => {
                    let claim = Claim { pos, kind: ClaimKind::Snapshot, state: StateHash(s.state.0) };
                    if self.keeps_claims(Round(s.round.0)) {
                        self.snapshots.entry(Round(s.round.0)).or_default().push(claim);
                    }
                }
                // The validity rule accepts a verdict only on an accepted contribution of the round
                // it names: one on a forgotten round targets a forgotten contribution.
                Body::Verdict(v) if v.round.0 < self.forgotten.0 => {}
                Body::Verdict(v) if relative || v.score < rules.min_score => {
                    let round = Round(v.round.0);
                    let signer = entry.signer();
                    let targets = match v.target {
                        Target::Entry(p) => vec![p],
                        Target::Blob(b) => self.by_blob.get(&(round, b)).cloned().unwrap_or_default(),
                    };
                    for target in targets {
                        let on = VerdictOn { pos, organisation: org.clone(), signer, score: v.score };
                        self.failing.entry(target).or_default().push(on);
                    }
                }
                // An evaluation names a final state (the validity rule checks it) and decides nothing.
                Body::Verdict(_) | Body::RosterChange(_) | Body::Evaluation(_) => {}
            }
        }
        self.walk_exclusions();
    }

    /// The run config the rule applies.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The Genesis entry's claim for the initial state, if there is an accepted Genesis.
    pub fn genesis(&self) -> Option<Claim> {
        self.genesis
    }

    /// The round tally (closes, cuts, attested results), as the ledger's validity rule keeps it.
    pub fn tally(&self) -> &RoundTally {
        &self.tally
    }

    /// Where `round` closed, and its cut.
    pub fn close(&self, round: Round) -> Option<ledger::Close> {
        self.tally.close(ledger::Round(round.0))
    }

    /// `round`'s result as a quorum of organisations attested it, if it is final.
    pub fn final_result(&self, round: Round) -> Option<&ledger::Final> {
        self.tally.final_result(ledger::Round(round.0))
    }

    /// Every hash claimed for the state after a final `round`: its attested result, then every
    /// accepted attestation and Snapshot of the round, in ledger order.
    pub fn claims(&self, round: Round) -> Vec<Claim> {
        let Some(f) = self.final_result(round) else { return Vec::new() };
        let attested = Claim { pos: f.pos, kind: ClaimKind::Final, state: StateHash(f.state.0) };
        let mut others: Vec<Claim> = self
            .attestations
            .get(&round)
            .into_iter()
            .flatten()
            .filter(|c| c.pos != f.pos)
            .chain(self.snapshots.get(&round).into_iter().flatten())
            .copied()
            .collect();
        others.sort_by_key(|c| c.pos);
        std::iter::once(attested).chain(others).collect()
    }

    /// Excluded workers and the verdict that completed each exclusion.
    pub fn exclusions(&self) -> Vec<(WorkerKey, EntryPos)> {
        self.excluded.iter().map(|(w, (_, p))| (*w, *p)).collect()
    }

    /// Whether `worker` is excluded from `round` on (the verdict that completed the exclusion).
    pub fn excluded_in(&self, worker: &WorkerKey, round: Round) -> Option<EntryPos> {
        self.excluded.get(worker).filter(|(from, _)| *from <= round).map(|(_, pos)| *pos)
    }

    /// Contribution entries of `round` (accepted or not), in ledger order.
    pub fn candidates(&self, round: Round) -> impl Iterator<Item = &Candidate> {
        self.contributions.get(&round).into_iter().flatten().map(|i| &i.candidate)
    }

    /// The rule for a final `round`, which starts from the state with hash `base`: `None` while
    /// the round's result is not final.
    pub fn round(&self, round: Round, base: StateHash) -> Option<RoundPlan> {
        let f = self.final_result(round)?;
        let close = self.close(round)?;
        Some(self.plan(round, base, close.pos, close.cut, &f.dropped, self.claims(round)))
    }

    /// The rule for a closed `round` whose result is not final yet: what an organisation about to
    /// attest computes (it then drops what it cannot read). `None` unless the round is closed and
    /// not final.
    pub fn provisional(&self, round: Round, base: StateHash) -> Option<RoundPlan> {
        if self.final_result(round).is_some() {
            return None;
        }
        let close = self.close(round)?;
        Some(self.plan(round, base, close.pos, close.cut, &[], Vec::new()))
    }

    /// The rule for an open `round` as if it closed now with the cut at the end of the ledger read
    /// so far: what an honest member looks at before it votes to close. `None` once it closed.
    pub fn prospective(&self, round: Round, base: StateHash) -> Option<RoundPlan> {
        if self.close(round).is_some() {
            return None;
        }
        Some(self.plan(round, base, self.end, self.end.seq, &[], Vec::new()))
    }

    /// The position right after the last indexed entry (slot after the last one seen, index 0).
    pub fn end(&self) -> EntryPos {
        self.end
    }

    /// Drops what the rule holds for rounds below `horizon`: their contributions, the verdicts on
    /// them, their attestations and snapshots. A follower of a long run calls it after each
    /// [`RoundRule::extend`] with the open round less the ledger's window of rounds (or the round
    /// it has to replay next, if that is lower: nothing checks that), so that its memory is bounded
    /// by the rounds kept instead of growing with the ledger.
    ///
    /// Kept for good: the genesis claim, the round tally, the exclusions and failure streaks (one
    /// each per worker). Also kept: the claims (attestations and snapshots) of the round just
    /// below `horizon` and of the newest snapshot's round, so that a replay from a snapshot of the
    /// round before the first one kept ([`crate::replay::Replay::over`], which a joining
    /// follower starts with) still checks every claim on its start.
    ///
    /// Only rounds that can no longer change are forgotten: `horizon` is clamped to the open round
    /// (the first one whose result is not final: a closed round not final yet still has its
    /// provisional plan asked for) and to the first round with contributions the exclusion walk
    /// has not taken in. A horizon at or below an earlier one does nothing.
    ///
    /// After it, every answer about a round at or after the clamped horizon is the one a rule that
    /// never forgot would give, and so are [`RoundRule::exclusions`] and
    /// [`RoundRule::excluded_in`] for every round, and [`RoundRule::claims`] for the round before
    /// the horizon and for the newest snapshot's. Otherwise a forgotten round answers as one with
    /// no entries that never closed: no candidates, `min_score` thresholds, no close, no result and
    /// no claim (the tally forgets those rounds' closes and results too, so the rule's memory does
    /// not grow with the run).
    /// Entries read later that name a forgotten round are not indexed, bar what the tally
    /// counts (under the ledger's window they are void; this also relies on the validity rule
    /// voiding a verdict whose target is not a contribution of the round it names).
    pub fn forget_before(&mut self, horizon: Round) {
        let horizon = horizon.min(self.fixed_before());
        if horizon <= self.forgotten {
            return;
        }
        let kept = self.contributions.split_off(&horizon);
        for (round, gone) in std::mem::replace(&mut self.contributions, kept) {
            for Indexed { candidate, .. } in gone {
                self.failing.remove(&candidate.pos);
                self.by_blob.remove(&(round, candidate.blob));
            }
        }
        let newest_snapshot = self.snapshots.last_key_value().map(|(round, _)| *round);
        let claims_from = Round(horizon.0.saturating_sub(1));
        forget_rounds_before(&mut self.snapshots, claims_from, newest_snapshot);
        forget_rounds_before(&mut self.attestations, claims_from, newest_snapshot);
        // The tally's closes and results likewise: what `claims` reads for the rounds kept.
        // One round more: with overlapping rounds, the base one round behind is a result's state.
        let tally_keep = newest_snapshot.map(|r| ledger::Round(r.0));
        self.tally.forget_before(ledger::Round(claims_from.0.saturating_sub(1)), tally_keep);
        self.forgotten = horizon;
    }

    /// The first round that may still change: the open round, or an earlier one with contributions
    /// the exclusion walk has not taken in.
    fn fixed_before(&self) -> Round {
        let open = Round(self.tally.open_round().0);
        if self.config.exclusion.max_failures == 0 {
            return open;
        }
        let unwalked = match self.walked {
            None => self.contributions.keys().next(),
            Some(r) => self
                .contributions
                .range((std::ops::Bound::Excluded(r), std::ops::Bound::Unbounded))
                .next()
                .map(|(r, _)| r),
        };
        unwalked.map_or(open, |r| open.min(*r))
    }

    /// Whether the attestations and snapshots of `round` are kept: a round not forgotten, the one
    /// just before, or the newest snapshot's.
    fn keeps_claims(&self, round: Round) -> bool {
        round.0.saturating_add(1) >= self.forgotten.0
            || self.snapshots.last_key_value().is_some_and(|(newest, _)| *newest == round)
    }

    /// The failing verdict that brought a contribution's failing organisations to the quorum,
    /// among verdicts before `before` (with `thresholds` as of `before`), with the number of
    /// organisations.
    fn failed(&self, pos: EntryPos, before: EntryPos, thresholds: &Thresholds) -> Option<(EntryPos, i64, usize)> {
        let mut orgs = BTreeSet::new();
        for v in self.failing.get(&pos)?.iter().filter(|v| v.pos < before) {
            if v.score >= thresholds.of(&v.signer) {
                continue;
            }
            orgs.insert(v.organisation.as_str());
            if orgs.len() >= usize::from(self.tally.quorum()) {
                return Some((v.pos, v.score, orgs.len()));
            }
        }
        None
    }

    /// Each validator's threshold on `round`, counting entries positioned before `before`.
    ///
    /// A validator's median is taken over one score per worker not excluded from the round: for
    /// each such worker's first accepted contribution to the round, the validator's first
    /// accepted verdict on it. So a worker that sends the round many contributions (its later
    /// ones never count) adds one score, not many, to an honest validator's median; an excluded
    /// worker adds none; and only the validator's own verdicts move its threshold. Called for
    /// plans only, after the exclusion walk (which uses `min_score` alone).
    fn thresholds_before(&self, round: Round, before: EntryPos) -> Thresholds {
        let rules = self.config.exclusion;
        let mut by_validator = BTreeMap::new();
        if rules.min_pct_of_median != 0 {
            let mut workers = BTreeSet::new();
            let firsts = self
                .contributions
                .get(&round)
                .into_iter()
                .flatten()
                .filter(|i| {
                    let c = &i.candidate;
                    i.void.is_none()
                        && c.pos < before
                        && self.excluded_in(&c.worker, round).is_none()
                        && workers.insert(c.worker)
                })
                .map(|i| i.candidate.pos);
            // Under a relative threshold `failing` holds every accepted verdict, in ledger order.
            let mut median_scores: BTreeMap<PublicKey, Vec<i64>> = BTreeMap::new();
            for target in firsts {
                let mut scored = BTreeSet::new();
                for v in self.failing.get(&target).into_iter().flatten() {
                    if v.pos < before && scored.insert(v.signer) {
                        median_scores.entry(v.signer).or_default().push(v.score);
                    }
                }
            }
            by_validator = median_scores.into_iter().map(|(k, scores)| (k, rules.threshold(&scores))).collect();
        }
        Thresholds { min_score: rules.min_score, by_validator }
    }

    /// Each validator's threshold on `round` as of the round's close, or, for a round still open,
    /// as of the end of the ledger read so far: what the audit counts failing verdicts against.
    pub fn thresholds(&self, round: Round) -> Thresholds {
        let before = self.close(round).map_or(self.end, |c| c.pos);
        self.thresholds_before(round, before)
    }

    /// Walks the closed rounds not walked yet, in order, and finds, per worker, the round from
    /// which it is excluded: after `max_failures` consecutive closed rounds in which its first
    /// contribution failed. A closed round's part is fixed (contributions after its close are void,
    /// verdicts after it change nothing) and rounds close in order, so each is walked once.
    fn walk_exclusions(&mut self) {
        let max = self.config.exclusion.max_failures;
        if max == 0 {
            return;
        }
        let mut streaks = std::mem::take(&mut self.streaks);
        let mut excluded = std::mem::take(&mut self.excluded);
        let unwalked = match self.walked {
            None => self.contributions.range(..),
            Some(r) => self.contributions.range((std::ops::Bound::Excluded(r), std::ops::Bound::Unbounded)),
        };
        for (round, contributions) in unwalked {
            // A round not closed yet: neither is any later one.
            let Some(close) = self.close(*round) else { break };
            // Only `min_score` excludes: the relative threshold rejects an update but never counts
            // toward exclusion, so workers that push a validator's median up cannot get honest
            // workers excluded for good (docs/SECURITY.md, row 42).
            let thresholds = Thresholds::absolute(self.config.exclusion.min_score);
            let mut seen = BTreeSet::new();
            for Indexed { candidate: c, void } in contributions {
                if void.is_some() || c.pos > close.pos || !seen.insert(c.worker) || excluded.contains_key(&c.worker) {
                    continue;
                }
                match self.failed(c.pos, close.pos, &thresholds) {
                    Some((verdict, _, _)) => {
                        let n = streaks.entry(c.worker).or_default();
                        *n += 1;
                        if *n >= max {
                            excluded.insert(c.worker, (Round(round.0.saturating_add(1)), verdict));
                        }
                    }
                    None => {
                        streaks.insert(c.worker, 0);
                    }
                }
            }
            self.walked = Some(*round);
        }
        self.streaks = streaks;
        self.excluded = excluded;
    }

    fn plan(
        &self,
        round: Round,
        base: StateHash,
        close: EntryPos,
        cut: Seq,
        dropped: &[EntryPos],
        claims: Vec<Claim>,
    ) -> RoundPlan {
        let max = self.config.rounds.max_contributions;
        let mut first: BTreeMap<WorkerKey, EntryPos> = BTreeMap::new();
        let mut counted = Vec::new();
        let mut not_counted = Vec::new();
        // Counted plus dropped: a dropped contribution keeps its place under max_contributions, so
        // the attested set is exactly the provisional one the attesters fetched, less the drops.
        let mut taken = 0usize;
        let thresholds = self.thresholds_before(round, close);
        let bases = (base, self.base_behind(round));
        for Indexed { candidate: c, void } in self.contributions.get(&round).into_iter().flatten() {
            let reason = match void {
                Some(VoidReason::RoundClosed(_)) => Some(NotCounted::Late { cut }),
                Some(reason) => Some(NotCounted::Void(reason.clone())),
                None if c.pos.seq >= cut || c.pos > close => Some(NotCounted::Late { cut }),
                None => self.accepted_reason(c, bases, (close, &thresholds), &mut first, taken, max),
            };
            if reason.is_none() {
                taken += 1;
            }
            let reason = reason.or_else(|| dropped.contains(&c.pos).then_some(NotCounted::Unavailable));
            match reason {
                Some(reason) => not_counted.push((c.clone(), reason)),
                None => counted.push(c.clone()),
            }
        }
        RoundPlan { round, base, close, cut, counted, not_counted, claims }
    }

    /// With overlapping rounds, the other base a contribution to `round` may have: the state after
    /// `round - 2` as attested (the genesis state for round 1; none for round 0). `None` without
    /// overlap.
    pub fn base_behind(&self, round: Round) -> Option<StateHash> {
        if !self.config.rounds.overlap {
            return None;
        }
        match round.0 {
            0 => None,
            1 => self.genesis.map(|g| g.state),
            r => self.final_result(Round(r - 2)).map(|f| StateHash(f.state.0)),
        }
    }

    fn accepted_reason(
        &self,
        c: &Candidate,
        (base, behind): (StateHash, Option<StateHash>),
        (close, thresholds): (EntryPos, &Thresholds),
        first: &mut BTreeMap<WorkerKey, EntryPos>,
        counted: usize,
        max: u32,
    ) -> Option<NotCounted> {
        if let Some(since) = self.excluded_in(&c.worker, c.round) {
            return Some(NotCounted::Excluded { since });
        }
        if let Some(&earlier) = first.get(&c.worker) {
            return Some(NotCounted::Duplicate { first: earlier });
        }
        first.insert(c.worker, c.pos);
        if c.base != base && Some(c.base) != behind {
            return Some(NotCounted::StaleBase { expected: base, got: c.base });
        }
        if c.blob_size != self.update_bytes || self.update_bytes > MAX_UPDATE_BYTES {
            return Some(NotCounted::WrongSize { declared: c.blob_size, expected: self.update_bytes });
        }
        if let Some((verdict, score, orgs)) = self.failed(c.pos, close, thresholds) {
            return Some(NotCounted::Rejected { verdict, score, orgs });
        }
        if counted >= max as usize {
            return Some(NotCounted::OverLimit { max });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ledger::{Attestation, CloseVote, Contribution, Entry, Genesis, Keypair, Member, Role, Snapshot, Verdict};

    use super::*;
    use crate::aggregate::{Hyper, NormClip};
    use crate::config::{ExclusionRules, RoundRules};
    use crate::schedule::{Ratio, Schedule};
    use crate::state::{Layout, TensorSpec};
    use crate::wire::{Compression, ValueEncoding};

    fn config(max_contributions: u32, max_failures: u32) -> RunConfig {
        RunConfig {
            layout: Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![4, 4] }]).unwrap(),
            hyper: Hyper {
                compression: Compression::uniform(4, 2, ValueEncoding::Sign),
                schedule: Schedule::Constant { lr: Ratio::new(1, 10) },
                weight_decay: Ratio::new(0, 1),
                clip: NormClip::Off,
                step: crate::StepRule::Sign,
            },
            rounds: RoundRules { min_contributions: 1, max_contributions, overlap: false },
            exclusion: ExclusionRules::absolute(0, max_failures),
            extra: Vec::new(),
        }
    }

    /// Builds ledger entries as a reader would hand them over: every entry is accepted (the tests
    /// below only write valid ones), one per slot, with the signer's organisation.
    struct Log {
        run: ledger::RunId,
        entries: Vec<LoggedEntry>,
        orgs: BTreeMap<ledger::PublicKey, String>,
    }

    impl Log {
        fn new(members: &[(&Keypair, &str, Role)], org_quorum: u16) -> Log {
            Log::with_window(members, org_quorum, 0)
        }

        fn with_window(members: &[(&Keypair, &str, Role)], org_quorum: u16, window: u32) -> Log {
            let roster: Vec<Member> = members
                .iter()
                .map(|(k, org, role)| Member { key: k.public(), organisation: org.to_string(), role: *role })
                .collect();
            let g =
                Genesis::new(config(4, 2).encode().unwrap(), roster, 1, ledger::StateHash([7; 32]), BlobId([0; 32]), 0);
            let g = Genesis { org_quorum, window, ..g };
            let run = g.run_id();
            let orgs = members.iter().map(|(k, org, _)| (k.public(), org.to_string())).collect();
            let mut log = Log { run, entries: Vec::new(), orgs };
            log.push(Body::Genesis(g), members[0].0);
            log
        }

        fn push(&mut self, body: Body, key: &Keypair) -> EntryPos {
            let entry = Entry::sign(self.run, body, &[key]).unwrap();
            let pos = EntryPos { seq: Seq(self.entries.len() as u64), index: 0 };
            self.entries.push(LoggedEntry {
                pos,
                bytes: Bytes::from(entry.encode()),
                organisation: self.orgs.get(&entry.signer()).cloned(),
                entry: Some(entry),
                validity: Validity::Accept,
            });
            pos
        }

        fn contribute(&mut self, worker: &Keypair, round: u64, blob: u8, config: &RunConfig) -> EntryPos {
            self.contribute_on(worker, round, blob, 7, config)
        }

        /// A contribution trained on the state whose hash is 32 bytes `base`.
        fn contribute_on(&mut self, worker: &Keypair, round: u64, blob: u8, base: u8, config: &RunConfig) -> EntryPos {
            let body = Body::Contribution(Contribution {
                round: ledger::Round(round),
                base_state: ledger::StateHash([base; 32]),
                assignment: Vec::new(),
                blob: BlobId([blob; 32]),
                blob_size: encoded_len(&config.layout, &config.hyper.compression),
                metrics: Vec::new(),
            });
            self.push(body, worker)
        }

        fn fail(&mut self, validator: &Keypair, round: u64, target: EntryPos) {
            self.verdict(validator, round, target, -5);
        }

        fn verdict(&mut self, validator: &Keypair, round: u64, target: EntryPos, score: i64) {
            let v = Verdict { round: ledger::Round(round), target: Target::Entry(target), score };
            self.push(Body::Verdict(v), validator);
        }

        fn close(&mut self, voters: &[&Keypair], round: u64) {
            for v in voters {
                let seen = Seq(self.entries.len() as u64);
                self.push(Body::CloseVote(CloseVote { round: ledger::Round(round), seen }), v);
            }
        }

        fn finalise(&mut self, attesters: &[&Keypair], round: u64, dropped: Vec<EntryPos>) {
            for a in attesters {
                self.attest(a, round, 7, dropped.clone());
            }
        }

        fn attest(&mut self, attester: &Keypair, round: u64, state: u8, dropped: Vec<EntryPos>) {
            let state = ledger::StateHash([state; 32]);
            self.push(Body::Attestation(Attestation { round: ledger::Round(round), state, dropped }), attester);
        }

        /// Marks the last entry void, as the validity rule would.
        fn void_last(&mut self, reason: VoidReason) {
            if let Some(last) = self.entries.last_mut() {
                last.validity = Validity::Void(reason);
            }
        }
    }

    /// An admin, four workers and two validators, from fixed seeds 1 to 7.
    fn seven_keys() -> Vec<Keypair> {
        (1..=7).map(|i| Keypair::from_seed([i; 32])).collect()
    }

    /// [`seven_keys`] in two organisations: the admin, the first two workers and the first
    /// validator in `a`, the rest in `b`.
    fn two_organisations(keys: &[Keypair]) -> [(&Keypair, &'static str, Role); 7] {
        let orgs = ["a", "a", "a", "b", "b", "a", "b"];
        let roles =
            [Role::Admin, Role::Worker, Role::Worker, Role::Worker, Role::Worker, Role::Validator, Role::Validator];
        std::array::from_fn(|i| (&keys[i], orgs[i], roles[i]))
    }

    fn reasons(plan: &RoundPlan) -> Vec<(EntryPos, NotCounted)> {
        plan.not_counted.iter().map(|(c, r)| (c.pos, r.clone())).collect()
    }

    #[test]
    fn failing_needs_validators_of_a_quorum_of_organisations_before_the_close() {
        let keys: Vec<Keypair> = (1..=6).map(|i| Keypair::from_seed([i; 32])).collect();
        let [admin, w1, w2, va, vb, vb2] = [&keys[0], &keys[1], &keys[2], &keys[3], &keys[4], &keys[5]];
        let members = [
            (admin, "a", Role::Admin),
            (w1, "a", Role::Worker),
            (w2, "b", Role::Worker),
            (va, "a", Role::Validator),
            (vb, "b", Role::Validator),
            (vb2, "b", Role::Validator),
        ];
        let cfg = config(4, 2);
        let mut log = Log::new(&members, 2);
        let c1 = log.contribute(w1, 0, 1, &cfg);
        let c2 = log.contribute(w2, 0, 2, &cfg);
        // Two validators of one organisation fail c1: not a quorum of organisations.
        log.fail(vb, 0, c1);
        log.fail(vb2, 0, c1);
        // Validators of both organisations fail c2.
        log.fail(va, 0, c2);
        log.fail(vb, 0, c2);
        log.close(&[w1, w2], 0);
        // A verdict after the close changes nothing.
        log.fail(va, 0, c1);
        log.finalise(&[w1, w2], 0, vec![]);
        let rule = RoundRule::new(&log.entries, &cfg);
        let plan = rule.round(Round(0), StateHash([7; 32])).unwrap();
        assert_eq!(plan.counted.iter().map(|c| c.pos).collect::<Vec<_>>(), [c1]);
        assert!(matches!(reasons(&plan)[..], [(p, NotCounted::Rejected { orgs: 2, .. })] if p == c2));
    }

    #[test]
    fn the_cut_the_drops_and_exclusion_after_consecutive_failed_rounds() {
        let keys: Vec<Keypair> = (1..=5).map(|i| Keypair::from_seed([i; 32])).collect();
        let [admin, w1, w2, w3, va] = [&keys[0], &keys[1], &keys[2], &keys[3], &keys[4]];
        let members =
            [(admin, "a", Role::Admin), (w1, "a", Role::Worker), (w2, "b", Role::Worker), (w3, "b", Role::Worker)];
        let mut members = members.to_vec();
        members.push((va, "a", Role::Validator));
        let cfg = config(1, 2);
        let mut log = Log::new(&members, 1);
        let base = StateHash([7; 32]);

        // Round 0: w1 fails, w2 is dropped (it keeps its place under max_contributions = 1, so w3
        // is over the limit), and a contribution after the cut is late.
        let r0_w1 = log.contribute(w1, 0, 10, &cfg);
        let r0_w2 = log.contribute(w2, 0, 11, &cfg);
        let r0_w3 = log.contribute(w3, 0, 12, &cfg);
        log.fail(va, 0, r0_w1);
        log.close(&[w2], 0);
        let late = log.contribute(w1, 0, 13, &cfg); // void (round closed) in a real log; here: after the cut
        log.finalise(&[w2], 0, vec![r0_w2]);
        let rule = RoundRule::new(&log.entries, &cfg);
        let plan = rule.round(Round(0), base).unwrap();
        let got = reasons(&plan);
        assert!(matches!(got[0], (p, NotCounted::Rejected { orgs: 1, .. }) if p == r0_w1));
        assert_eq!(got[1], (r0_w2, NotCounted::Unavailable));
        assert_eq!(got[2], (r0_w3, NotCounted::OverLimit { max: 1 }));
        assert_eq!(got[3], (late, NotCounted::Late { cut: plan.cut }));
        assert!(plan.counted.is_empty());
        // The attested result is the binding claim, listed first.
        assert_eq!(plan.claims[0].kind, ClaimKind::Final);

        // Round 1: w1 fails again: two failed rounds in a row exclude it from round 2 on.
        let r1_w1 = log.contribute(w1, 1, 20, &cfg);
        log.fail(va, 1, r1_w1);
        log.close(&[w2], 1);
        log.finalise(&[w2], 1, vec![]);
        let r2_w1 = log.contribute(w1, 2, 30, &cfg);
        log.close(&[w2], 2);
        let rule = RoundRule::new(&log.entries, &cfg);
        assert!(rule.excluded_in(&WorkerKey(w1.public().0), Round(1)).is_none());
        assert!(rule.excluded_in(&WorkerKey(w1.public().0), Round(2)).is_some());
        assert!(rule.round(Round(2), base).is_none(), "closed, not final");
        let provisional = rule.provisional(Round(2), base).unwrap();
        assert!(matches!(reasons(&provisional)[..], [(p, NotCounted::Excluded { .. })] if p == r2_w1));
        assert!(rule.prospective(Round(2), base).is_none(), "already closed");
        assert!(rule.prospective(Round(3), base).is_some());
    }

    /// With overlapping rounds a contribution to round r counts on the round's base or on the state
    /// after r - 2 as attested (the genesis state for round 1), never on an older one; without
    /// overlap, only on the round's base.
    #[test]
    fn overlapping_rounds_count_a_contribution_one_round_behind() {
        let keys: Vec<Keypair> = (1..=4).map(|i| Keypair::from_seed([i; 32])).collect();
        let [admin, w1, w2, w3] = [&keys[0], &keys[1], &keys[2], &keys[3]];
        let members =
            [(admin, "a", Role::Admin), (w1, "a", Role::Worker), (w2, "a", Role::Worker), (w3, "a", Role::Worker)];
        for overlap in [false, true] {
            let mut cfg = config(8, 0);
            cfg.rounds.overlap = overlap;
            let mut log = Log::new(&members, 1);
            // States: genesis 7, after round 0: 10, after round 1: 11, after round 2: 12.
            let (genesis, after) = (7u8, |r: u64| 10 + r as u8);
            let mut expected: Vec<(u64, Vec<EntryPos>, Vec<EntryPos>)> = Vec::new();
            for r in 0..3u64 {
                let base = if r == 0 { genesis } else { after(r - 1) };
                let behind = match r {
                    0 => None,
                    1 => Some(genesis),
                    _ => Some(after(r - 2)),
                };
                let on_base = log.contribute_on(w1, r, 10 * r as u8 + 1, base, &cfg);
                // One round behind (none exists for round 0: a made-up hash there).
                let one_behind = log.contribute_on(w2, r, 10 * r as u8 + 2, behind.unwrap_or(99), &cfg);
                // Two rounds behind (round 2, on the genesis state), or a made-up hash: never.
                let older = log.contribute_on(w3, r, 10 * r as u8 + 3, if r == 2 { genesis } else { 98 }, &cfg);
                let (mut counted, mut stale) = (vec![on_base], vec![older]);
                match (overlap, behind) {
                    (true, Some(_)) => counted.push(one_behind),
                    _ => stale.insert(0, one_behind),
                }
                expected.push((r, counted, stale));
                log.close(&[admin], r);
                log.attest(admin, r, after(r), vec![]);
            }
            let rule = RoundRule::new(&log.entries, &cfg);
            for (r, counted, stale) in expected {
                let base = StateHash([if r == 0 { genesis } else { after(r - 1) }; 32]);
                let plan = rule.round(Round(r), base).unwrap();
                assert_eq!(
                    plan.counted.iter().map(|c| c.pos).collect::<Vec<_>>(),
                    counted,
                    "overlap {overlap}, round {r}"
                );
                let got: Vec<EntryPos> = reasons(&plan)
                    .into_iter()
                    .map(|(p, why)| {
                        assert!(matches!(why, NotCounted::StaleBase { expected, .. } if expected == base), "{why:?}");
                        p
                    })
                    .collect();
                assert_eq!(got, stale, "overlap {overlap}, round {r}");
            }
        }
    }

    #[test]
    fn a_passing_round_resets_the_failure_count() {
        let keys: Vec<Keypair> = (1..=3).map(|i| Keypair::from_seed([i; 32])).collect();
        let [admin, w1, va] = [&keys[0], &keys[1], &keys[2]];
        let members = [(admin, "a", Role::Admin), (w1, "a", Role::Worker), (va, "a", Role::Validator)];
        let cfg = config(4, 2);
        let mut log = Log::new(&members, 1);
        for (round, fails) in [(0, true), (1, false), (2, true), (3, false)] {
            let c = log.contribute(w1, round, round as u8, &cfg);
            if fails {
                log.fail(va, round, c);
            }
            log.close(&[admin], round);
            log.finalise(&[admin], round, vec![]);
        }
        let rule = RoundRule::new(&log.entries, &cfg);
        assert!(rule.exclusions().is_empty(), "no two failed rounds in a row");
    }

    /// Under `min_pct_of_median = 25` a verdict fails below a quarter of its own validator's lower
    /// median on the round, taken over one score per worker and counted before the close. Neither
    /// a hostile validator's inflated scores, nor a worker's many duplicate contributions, nor
    /// verdicts after the close move an honest validator's threshold, and a median that is not
    /// positive leaves only `min_score`.
    #[test]
    fn a_relative_threshold_fails_what_scores_far_below_its_validators_median() {
        let keys = seven_keys();
        let [admin, w1, w2, w3, w4, va, vb] = [&keys[0], &keys[1], &keys[2], &keys[3], &keys[4], &keys[5], &keys[6]];
        let members = two_organisations(&keys);
        let mut cfg = config(8, 0);
        cfg.exclusion = ExclusionRules { min_score: -20, max_failures: 0, min_pct_of_median: 25 };
        let base = StateHash([7; 32]);
        let mut log = Log::new(&members, 1);
        // Round 0: va scores w1, w2 and w4 100, 80 and 3 before the close: lower median 80,
        // threshold 80 * 25 / 100 = 20, so only the 3 fails (it passes min_score = -20).
        let c: Vec<EntryPos> =
            [w1, w2, w3, w4].iter().enumerate().map(|(i, w)| log.contribute(w, 0, i as u8, &cfg)).collect();
        for (target, score) in [(c[0], 100), (c[1], 80), (c[3], 3)] {
            log.verdict(va, 0, target, score);
        }
        // w1 sends five more contributions (duplicates) that va scores 1,000,000: in the median
        // they would make it 1,000,000 and fail every other verdict of va.
        for blob in 20..25 {
            let dup = log.contribute(w1, 0, blob, &cfg);
            log.verdict(va, 0, dup, 1_000_000);
        }
        // vb (another organisation) writes three verdicts of 1,000,000 on each: pooled with va's,
        // the lower median would be 1,000,000.
        for target in &c {
            for _ in 0..3 {
                log.verdict(vb, 0, *target, 1_000_000);
            }
        }
        log.close(&[admin], 0);
        // After the close, va scores w3 -1,000,000: counted, va's median would be 3 and the
        // threshold 0, which the 3 passes.
        log.verdict(va, 0, c[2], -1_000_000);
        log.finalise(&[admin], 0, vec![]);
        let rule = RoundRule::new(&log.entries, &cfg);
        let plan = rule.round(Round(0), base).unwrap();
        assert_eq!(plan.counted.iter().map(|x| x.pos).collect::<Vec<_>>(), c[..3]);
        let rejected: Vec<_> =
            reasons(&plan).into_iter().filter(|(_, r)| matches!(r, NotCounted::Rejected { .. })).collect();
        assert!(matches!(rejected[..], [(p, NotCounted::Rejected { score: 3, orgs: 1, .. })] if p == c[3]));
        assert_eq!(rule.thresholds(Round(0)).of(&va.public()), 20);
        assert_eq!(rule.thresholds(Round(0)).of(&vb.public()), 250_000);
        assert_eq!(rule.thresholds(Round(0)).of(&admin.public()), -20, "no verdicts: min_score");
        // Without the relative threshold nothing fails: 3 is above min_score.
        let absolute = RunConfig { exclusion: ExclusionRules::absolute(-20, 0), ..cfg.clone() };
        let plan = RoundRule::new(&log.entries, &absolute).round(Round(0), base).unwrap();
        assert_eq!(plan.counted.len(), 4);

        // Round 1: va's scores -10, -5, 0, 2: lower median -5, not positive, so only min_score
        // applies and nothing fails (a share of a negative median would fail the -10).
        let c: Vec<EntryPos> =
            [w1, w2, w3, w4].iter().enumerate().map(|(i, w)| log.contribute(w, 1, 10 + i as u8, &cfg)).collect();
        for (target, score) in c.iter().zip([-10, -5, 0, 2]) {
            log.verdict(va, 1, *target, score);
        }
        log.close(&[admin], 1);
        log.finalise(&[admin], 1, vec![]);
        let rule = RoundRule::new(&log.entries, &cfg);
        assert_eq!(rule.round(Round(1), base).unwrap().counted.len(), 4);
        assert_eq!(rule.thresholds(Round(1)).of(&va.public()), -20);

        // Extended entry by entry, the index decides the same.
        let mut extended = RoundRule::empty(&cfg);
        for k in 0..=log.entries.len() {
            extended.extend(&log.entries[..k]);
            let at_once = RoundRule::new(&log.entries[..k], &cfg);
            for r in [Round(0), Round(1)] {
                assert_eq!(extended.round(r, base), at_once.round(r, base), "after {k} entries");
                assert_eq!(extended.prospective(r, base), at_once.prospective(r, base), "after {k} entries");
                assert_eq!(extended.thresholds(r), at_once.thresholds(r), "after {k} entries");
            }
        }
    }

    /// A relative failure rejects the update but never counts toward exclusion: w4, far below
    /// the median in rounds 0, 1 and 2, is rejected each time and never excluded (and its run of
    /// failures is reset), while w3, below `min_score` in rounds 0 and 1, is excluded from round
    /// 2 on; from then its scores leave the validator's median.
    #[test]
    fn only_min_score_failures_exclude_and_excluded_workers_leave_the_median() {
        let keys: Vec<Keypair> = (1..=6).map(|i| Keypair::from_seed([i; 32])).collect();
        let [admin, w1, w2, w3, w4, va] = [&keys[0], &keys[1], &keys[2], &keys[3], &keys[4], &keys[5]];
        let members = [
            (admin, "a", Role::Admin),
            (w1, "a", Role::Worker),
            (w2, "a", Role::Worker),
            (w3, "a", Role::Worker),
            (w4, "a", Role::Worker),
            (va, "a", Role::Validator),
        ];
        let mut cfg = config(8, 2);
        cfg.exclusion = ExclusionRules { min_score: -20, max_failures: 2, min_pct_of_median: 25 };
        let base = StateHash([7; 32]);
        let mut log = Log::new(&members, 1);
        let mut rejected = Vec::new();
        for round in 0..3u64 {
            let c: Vec<EntryPos> = [w1, w2, w3, w4]
                .iter()
                .enumerate()
                .map(|(i, w)| log.contribute(w, round, (10 * round) as u8 + i as u8, &cfg))
                .collect();
            // w1 100, w2 80, w3 -50 (below min_score), w4 3 (below 25% of the median only)
            for (target, score) in c.iter().zip([100, 80, -50, 3]) {
                log.verdict(va, round, *target, score);
            }
            log.close(&[admin], round);
            log.finalise(&[admin], round, vec![]);
            rejected.push(c);
        }
        let rule = RoundRule::new(&log.entries, &cfg);
        let w3_key = WorkerKey(w3.public().0);
        let w4_key = WorkerKey(w4.public().0);
        assert!(rule.excluded_in(&w3_key, Round(1)).is_none());
        assert!(rule.excluded_in(&w3_key, Round(2)).is_some(), "two min_score failures in a row");
        assert!(rule.excluded_in(&w4_key, Round(3)).is_none(), "relative failures never exclude");
        // Rounds 0 and 1: lower median of 100, 80, -50, 3 is 3: threshold max(-20, 0) = 0, so w4's
        // 3 passes there; only w3 is rejected.
        for (r, c) in rejected.iter().enumerate().take(2) {
            let plan = rule.round(Round(r as u64), base).unwrap();
            let got = reasons(&plan);
            assert_eq!(got.len(), 1, "round {r}: {got:?}");
            assert!(matches!(got[0], (p, NotCounted::Rejected { score: -50, .. }) if p == c[2]));
        }
        // Round 2: w3 is excluded, so the median is over 100, 80 and 3: 80, threshold 20, and
        // w4's 3 is rejected.
        let plan = rule.round(Round(2), base).unwrap();
        let got = reasons(&plan);
        assert!(matches!(got[0], (p, NotCounted::Excluded { .. }) if p == rejected[2][2]), "{got:?}");
        assert!(matches!(got[1], (p, NotCounted::Rejected { score: 3, .. }) if p == rejected[2][3]), "{got:?}");
        assert_eq!(rule.thresholds(Round(2)).of(&va.public()), 20);
    }

    /// Void contributions to rounds beyond the window (what anyone who can write to the bucket
    /// can put in a slot, in any number) are not indexed, so they cannot grow a reader's index
    /// with rounds that never come; within the window they are, as before.
    #[test]
    fn void_contributions_beyond_the_window_are_not_indexed() {
        let keys = seven_keys();
        let members = two_organisations(&keys);
        let w1 = &keys[1];
        let cfg = config(8, 0);
        for (window, indexed) in [(2u32, false), (0, true)] {
            let mut log = Log::with_window(&members, 1, window);
            for far in [3u64, 1_000, u64::MAX] {
                log.contribute(w1, far, 9, &cfg);
                log.void_last(VoidReason::BadSignature(w1.public()));
            }
            log.contribute(w1, 2, 9, &cfg);
            log.void_last(VoidReason::BadSignature(w1.public()));
            let rule = RoundRule::new(&log.entries, &cfg);
            // Round 2 is inside the window of the open round 0; 3 and beyond are not.
            assert_eq!(rule.candidates(Round(2)).count(), 1);
            for far in [3u64, 1_000, u64::MAX] {
                assert_eq!(rule.candidates(Round(far)).count(), usize::from(indexed), "window {window}, round {far}");
            }
            assert_eq!(rounds_held(&rule), if indexed { 4 } else { 1 });
        }
    }

    /// Distinct rounds the rule's per-round maps hold anything for.
    fn rounds_held(rule: &RoundRule) -> usize {
        let rounds: BTreeSet<Round> = (rule.contributions.keys().chain(rule.attestations.keys()))
            .chain(rule.snapshots.keys())
            .copied()
            .chain(rule.by_blob.keys().map(|(round, _)| *round))
            .chain(rule.tally.finals().map(|(round, _)| Round(round.0)))
            .collect();
        rounds.len()
    }

    /// Verdicts held on contributions the rule does not hold (what forgetting must not leave).
    fn stray_verdicts(rule: &RoundRule) -> usize {
        let held: BTreeSet<EntryPos> = rule.contributions.values().flatten().map(|i| i.candidate.pos).collect();
        rule.failing.iter().filter(|(target, _)| !held.contains(target)).map(|(_, on)| on.len()).sum()
    }

    /// Many rounds of every kind of entry the rule indexes. Each round r: w1, w2 and w3 contribute,
    /// w4 contributed to it during round r - 1, w2 sometimes twice; va and vb score them (vb's
    /// score on w1 targets its blob); a min_score failure by both organisations of w3 in rounds 2
    /// and 3 (excluded from round 4 on) and of w1 in round 7 (reset in 8), one of w2 by one
    /// organisation only in round 6; w4's scores fail only a relative threshold; a verdict after
    /// the close, a contribution after it (void), a dissenting attestation in some rounds, a
    /// drop in round 5; snapshots of rounds 5, 7 (written a round late) and rounds - 2; round 9
    /// has no contribution at all; and in round 11, a verdict on a contribution of round 2 and a
    /// (void) contribution to round 1.
    fn long_log(cfg: &RunConfig, rounds: u64) -> (Vec<LoggedEntry>, Vec<WorkerKey>) {
        let keys = seven_keys();
        let [admin, w1, w2, w3, w4, va, vb] = [&keys[0], &keys[1], &keys[2], &keys[3], &keys[4], &keys[5], &keys[6]];
        let members = two_organisations(&keys);
        let workers = [w1, w2, w3, w4].map(|w| WorkerKey(w.public().0)).to_vec();
        let empty = 9;
        let mut log = Log::new(&members, 2);
        let mut early = Some(log.contribute(w4, 0, 250, cfg));
        let mut old = None;
        for r in 0..rounds {
            let blob = |i: u64| (r * 8 + i) as u8;
            let next_early = (r + 1 != empty && r != empty).then(|| log.contribute(w4, r + 1, blob(5), cfg));
            let w4_early = std::mem::replace(&mut early, next_early);
            let mut firsts = Vec::new();
            if r != empty {
                let c = [w1, w2, w3].map(|w| log.contribute(w, r, blob(firsts.len() as u64), cfg));
                firsts = c.to_vec();
                if r % 3 == 0 {
                    let dup = log.contribute(w2, r, blob(4), cfg);
                    log.verdict(va, r, dup, 1_000_000);
                }
                log.verdict(va, r, c[0], 100);
                let on_blob =
                    Verdict { round: ledger::Round(r), target: Target::Blob(BlobId([blob(0); 32])), score: 90 };
                log.push(Body::Verdict(on_blob), vb);
                log.verdict(va, r, c[1], 80);
                log.verdict(vb, r, c[1], 70);
                log.verdict(va, r, c[2], 60);
                log.verdict(vb, r, c[2], 50);
                match r {
                    2 | 3 => {
                        log.verdict(va, r, c[2], -50);
                        log.verdict(vb, r, c[2], -50);
                    }
                    6 => log.verdict(va, r, c[1], -50),
                    7 => {
                        log.verdict(vb, r, c[0], -50);
                        log.verdict(va, r, c[0], -50);
                    }
                    _ => {}
                }
                if let Some(c4) = w4_early {
                    log.verdict(va, r, c4, 3);
                    log.verdict(vb, r, c4, 2);
                }
                if r == 2 {
                    old = Some(c[0]);
                }
            }
            if r == 11 {
                if let Some(old) = old {
                    log.verdict(va, 2, old, -50);
                }
                log.contribute(w2, 1, blob(6), cfg);
                log.void_last(VoidReason::RoundClosed(ledger::Round(1)));
            }
            log.close(&[admin, w3], r);
            if let Some(c1) = firsts.first() {
                log.verdict(vb, r, *c1, -50);
                log.verdict(va, r, *c1, -50);
            }
            log.contribute(w1, r, blob(7), cfg);
            log.void_last(VoidReason::RoundClosed(ledger::Round(r)));
            if r % 4 == 1 {
                log.attest(w3, r, 9, vec![]);
            }
            let dropped = if r == 5 { firsts[1..2].to_vec() } else { Vec::new() };
            log.finalise(&[admin, w3], r, dropped);
            for snapshot in [5, 7, rounds - 2].into_iter().filter(|s| *s == r || (*s == 7 && r == 8)) {
                let s = Snapshot {
                    round: ledger::Round(snapshot),
                    state: ledger::StateHash([7; 32]),
                    blob: BlobId([1; 32]),
                    blob_size: 1,
                };
                log.push(Body::Snapshot(s), w1);
            }
        }
        (log.entries, workers)
    }

    /// Everything `forgetting` answers about rounds from `from` on (and about exclusions, for every
    /// round) is what `fresh`, which never forgot, answers.
    fn assert_same_from(forgetting: &RoundRule, fresh: &RoundRule, from: Round, workers: &[WorkerKey], at: &str) {
        let base = StateHash([7; 32]);
        assert_eq!(forgetting.end(), fresh.end(), "{at}");
        assert_eq!(forgetting.genesis(), fresh.genesis(), "{at}");
        assert_eq!(forgetting.exclusions(), fresh.exclusions(), "{at}");
        let open = fresh.tally().open_round().0;
        for r in (0..=open + 2).map(Round) {
            for w in workers {
                assert_eq!(forgetting.excluded_in(w, r), fresh.excluded_in(w, r), "{at}, round {r}");
            }
            if r.0 + 1 >= from.0 {
                assert_eq!(forgetting.claims(r), fresh.claims(r), "{at}, round {r}");
            }
            if r < from {
                continue;
            }
            assert_eq!(forgetting.close(r), fresh.close(r), "{at}, round {r}");
            assert_eq!(forgetting.final_result(r), fresh.final_result(r), "{at}, round {r}");
            let candidates = forgetting.candidates(r).collect::<Vec<_>>();
            assert_eq!(candidates, fresh.candidates(r).collect::<Vec<_>>(), "{at}, round {r}");
            assert_eq!(forgetting.round(r, base), fresh.round(r, base), "{at}, round {r}");
            assert_eq!(forgetting.provisional(r, base), fresh.provisional(r, base), "{at}, round {r}");
            assert_eq!(forgetting.prospective(r, base), fresh.prospective(r, base), "{at}, round {r}");
            assert_eq!(forgetting.thresholds(r), fresh.thresholds(r), "{at}, round {r}");
        }
        // What a replay from the newest snapshot checks its start against.
        if let Some((&newest, _)) = fresh.snapshots.last_key_value() {
            assert_eq!(forgetting.claims(newest), fresh.claims(newest), "{at}, newest snapshot (round {newest})");
        }
    }

    /// A follower that forgets the rounds behind a window of W rounds after every extend answers
    /// every question about the rounds it keeps as a rule built afresh over the same prefix, and
    /// holds W + 5 rounds at most (the window, the open round and the next, the claims of the
    /// round before the window, the result before that, and the newest snapshot's); asked to
    /// forget everything, it keeps
    /// the open round and later ones.
    #[test]
    fn forgetting_rounds_behind_a_window_changes_no_answer_about_the_rounds_kept() {
        let rounds = 14;
        for (min_pct_of_median, max_failures) in [(0, 2), (25, 2), (25, 0)] {
            let mut cfg = config(3, max_failures);
            cfg.exclusion = ExclusionRules { min_score: -20, max_failures, min_pct_of_median };
            let (entries, workers) = long_log(&cfg, rounds);
            // (window, rule); no window: forget all it may.
            let mut forgetting: Vec<(Option<u64>, RoundRule)> =
                [Some(1), Some(3), None].into_iter().map(|w| (w, RoundRule::empty(&cfg))).collect();
            for k in 0..=entries.len() {
                let fresh = RoundRule::new(&entries[..k], &cfg);
                let open = fresh.tally().open_round().0;
                for (window, rule) in &mut forgetting {
                    rule.extend(&entries[..k]);
                    let horizon = window.map_or(Round(u64::MAX), |w| Round(open.saturating_sub(w)));
                    rule.forget_before(horizon);
                    let from = horizon.min(Round(open));
                    assert_eq!(rule.forgotten, from, "clamped to the open round");
                    let at = format!(
                        "median pct {min_pct_of_median}, max failures {max_failures}, window {window:?}, after {k} entries"
                    );
                    assert_same_from(rule, &fresh, from, &workers, &at);
                    let held = rounds_held(rule);
                    // The window, the open round and the next, the claims of the round before the
                    // window, the tally's result two rounds before it (a base one round behind,
                    // with overlapping rounds) and the newest snapshot's.
                    assert!(held <= window.unwrap_or(0) as usize + 5, "{at}: {held} rounds held");
                    assert_eq!(stray_verdicts(rule), 0, "{at}");
                    assert!(rule.contributions.range(..from).next().is_none(), "{at}");
                }
            }
            let fresh = RoundRule::new(&entries, &cfg);
            assert!(rounds_held(&fresh) > 3 + 4, "the log is longer than any window");
            assert!(stray_verdicts(&fresh) == 0 && fresh.contributions.contains_key(&Round(1)));
            let w3 = workers[2];
            assert_eq!(fresh.excluded_in(&w3, Round(4)).is_some(), max_failures != 0, "w3 is excluded");
            let plan = fresh.round(Round(rounds - 1), StateHash([7; 32])).unwrap();
            let rejected = reasons(&plan).iter().filter(|(_, r)| matches!(r, NotCounted::Rejected { .. })).count();
            assert_eq!(rejected, usize::from(min_pct_of_median != 0), "w4 fails only the relative threshold");
        }
    }
}
