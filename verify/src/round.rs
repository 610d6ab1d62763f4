//! The round rule: which contributions count in each round, a pure function of the ledger prefix
//! (and of the state hash after the previous round, which aggregation computes).
//!
//! ```text
//!   entries (ledger order) ──RoundRule::new──▶ index: contributions by round, first RoundClose per
//!                                              round, failing verdicts, exclusions, hash claims
//!   replay, round r = 0, 1, ...:
//!     rule.round(r, base = hash of the state after r-1) ──▶ RoundPlan
//!        every Contribution entry of round r, in ledger order, gets the first reason that applies:
//!          void by the ledger ............ Late (closed before it) | Void(reason)
//!          after the round's close ....... Late
//!          worker excluded before it ..... Excluded
//!          worker already contributed .... Duplicate
//!          base_state != base ............ StaleBase
//!          blob size != the update size .. WrongSize
//!          failing verdict before close .. Rejected
//!          max_contributions reached ..... OverLimit
//!          otherwise ..................... counted (replay then fetches and decodes its blob)
//! ```
//!
//! Exclusion: a contribution *fails* when an accepted Verdict on it has a score below
//! `min_score`; a worker is excluded from the position of the verdict that gives it its
//! `max_failures`-th failed contribution (0: never), and none of its later contributions count.
//! Only the prefix up to a round's close decides that round. docs/FORMAT.md ("Round rule") is the
//! normative text.

use std::collections::{BTreeMap, HashMap};

use ledger::{BlobId, Body, EntryPos, LoggedEntry, Seq, Target, Validity, VoidReason};

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
    /// Its round was closed before it (the ledger voids it as `RoundClosed`).
    #[error("late: the round closed at {close}")]
    Late {
        /// The round's RoundClose.
        close: EntryPos,
    },
    /// The ledger's validity rule voided it for another reason.
    #[error("void entry: {0}")]
    Void(VoidReason),
    /// Its worker was excluded by validators' verdicts before it.
    #[error("worker excluded since {since}")]
    Excluded {
        /// The verdict that excluded the worker.
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
    /// A validator failed it before the round closed.
    #[error("rejected by verdict {verdict} (score {score})")]
    Rejected {
        /// The first failing verdict.
        verdict: EntryPos,
        /// Its score.
        score: i64,
    },
    /// The round already had `max_contributions` counted contributions.
    #[error("over the limit of {max} contributions per round")]
    OverLimit {
        /// The limit.
        max: u32,
    },
    /// The blob is not in the store.
    #[error("blob missing")]
    BlobMissing,
    /// The blob does not hash to its id, or is not the size the entry declares.
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
    /// A RoundClose.
    RoundClose,
    /// A Snapshot.
    Snapshot,
}

impl ClaimKind {
    /// A lowercase name, for reports (the ledger's kind names).
    pub fn name(self) -> &'static str {
        match self {
            ClaimKind::Genesis => "genesis",
            ClaimKind::RoundClose => "round_close",
            ClaimKind::Snapshot => "snapshot",
        }
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
    /// The round's first accepted RoundClose.
    pub close: EntryPos,
    /// The contributions that count, in ledger order (their blobs still to be fetched and decoded).
    pub counted: Vec<Candidate>,
    /// The others, in ledger order, each with its reason.
    pub not_counted: Vec<(Candidate, NotCounted)>,
    /// Every hash claimed for the state after this round (the RoundClose first, then Snapshots, in
    /// ledger order).
    pub claims: Vec<Claim>,
}

#[derive(Clone, Debug)]
struct Indexed {
    candidate: Candidate,
    void: Option<VoidReason>,
}

/// The index the round rule runs on, built once from the ledger's entries.
#[derive(Clone, Debug)]
pub struct RoundRule {
    config: RunConfig,
    update_bytes: u64,
    genesis: Option<Claim>,
    closes: BTreeMap<Round, Claim>,
    snapshots: BTreeMap<Round, Vec<Claim>>,
    contributions: BTreeMap<Round, Vec<Indexed>>,
    /// First failing verdict (position, score) per contribution.
    failing: HashMap<EntryPos, (EntryPos, i64)>,
    /// Verdict position that excluded each excluded worker.
    excluded: BTreeMap<WorkerKey, EntryPos>,
    /// The position after the last entry.
    end: EntryPos,
}

impl RoundRule {
    /// Indexes `entries` (in ledger order, as `ledger::Reader::entries` gives them) under `config`.
    pub fn new(entries: &[LoggedEntry], config: &RunConfig) -> RoundRule {
        let ex = config.exclusion;
        let mut rule = RoundRule {
            config: config.clone(),
            update_bytes: encoded_len(&config.layout, &config.hyper.compression),
            genesis: None,
            closes: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            contributions: BTreeMap::new(),
            failing: HashMap::new(),
            excluded: BTreeMap::new(),
            end: EntryPos { seq: Seq(0), index: 0 },
        };
        // Accepted contributions by position and by (round, blob), for verdict targets.
        let mut by_pos: HashMap<EntryPos, WorkerKey> = HashMap::new();
        let mut by_blob: HashMap<(Round, BlobId), Vec<EntryPos>> = HashMap::new();
        let mut failures: BTreeMap<WorkerKey, u32> = BTreeMap::new();
        for logged in entries {
            if let Some(next) = logged.pos.seq.next() {
                rule.end = rule.end.max(EntryPos { seq: next, index: 0 });
            }
            let Some(entry) = &logged.entry else { continue };
            let pos = logged.pos;
            let void = match &logged.validity {
                Validity::Accept => None,
                Validity::Void(reason) => Some(reason.clone()),
            };
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
                    if void.is_none() {
                        by_pos.insert(pos, candidate.worker);
                        by_blob.entry((candidate.round, c.blob)).or_default().push(pos);
                    }
                    rule.contributions.entry(candidate.round).or_default().push(Indexed { candidate, void });
                }
                _ if void.is_some() => {}
                Body::Genesis(g) => {
                    rule.genesis = Some(Claim { pos, kind: ClaimKind::Genesis, state: StateHash(g.initial_state.0) });
                }
                Body::RoundClose(rc) => {
                    let claim = Claim { pos, kind: ClaimKind::RoundClose, state: StateHash(rc.state.0) };
                    rule.closes.entry(Round(rc.round.0)).or_insert(claim);
                }
                Body::Snapshot(s) => {
                    let claim = Claim { pos, kind: ClaimKind::Snapshot, state: StateHash(s.state.0) };
                    rule.snapshots.entry(Round(s.round.0)).or_default().push(claim);
                }
                Body::Verdict(v) if v.score < ex.min_score => {
                    let targets = match v.target {
                        Target::Entry(p) => vec![p],
                        Target::Blob(b) => by_blob.get(&(Round(v.round.0), b)).cloned().unwrap_or_default(),
                    };
                    for target in targets {
                        let Some(&worker) = by_pos.get(&target) else { continue };
                        if rule.failing.contains_key(&target) {
                            continue;
                        }
                        rule.failing.insert(target, (pos, v.score));
                        let n = failures.entry(worker).or_default();
                        *n += 1;
                        if ex.max_failures > 0 && *n == ex.max_failures {
                            rule.excluded.entry(worker).or_insert(pos);
                        }
                    }
                }
                Body::Verdict(_) | Body::RosterChange(_) => {}
            }
        }
        rule
    }

    /// The run config the rule applies.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The Genesis entry's claim for the initial state, if there is an accepted Genesis.
    pub fn genesis(&self) -> Option<Claim> {
        self.genesis
    }

    /// The first accepted RoundClose of `round`.
    pub fn close(&self, round: Round) -> Option<Claim> {
        self.closes.get(&round).copied()
    }

    /// Every hash claimed for the state after `round`: its RoundClose, then its Snapshots.
    pub fn claims(&self, round: Round) -> Vec<Claim> {
        self.close(round).into_iter().chain(self.snapshots.get(&round).into_iter().flatten().copied()).collect()
    }

    /// Excluded workers and the verdict that excluded each.
    pub fn exclusions(&self) -> Vec<(WorkerKey, EntryPos)> {
        self.excluded.iter().map(|(w, p)| (*w, *p)).collect()
    }

    /// The first failing verdict on the contribution at `pos` (anywhere in the ledger), if any.
    pub fn failing_verdict(&self, pos: EntryPos) -> Option<(EntryPos, i64)> {
        self.failing.get(&pos).copied()
    }

    /// Contribution entries of `round` (accepted or not), in ledger order.
    pub fn candidates(&self, round: Round) -> impl Iterator<Item = &Candidate> {
        self.contributions.get(&round).into_iter().flatten().map(|i| &i.candidate)
    }

    /// The rule for `round`, which starts from the state with hash `base`: `None` while the round
    /// has no accepted RoundClose.
    pub fn round(&self, round: Round, base: StateHash) -> Option<RoundPlan> {
        let close = self.close(round)?;
        Some(self.round_closed_at(round, base, close.pos, self.claims(round)))
    }

    /// The rule for an open `round` as if its RoundClose were the next entry after the indexed ones
    /// (at [`RoundRule::end`]): what a participant about to close the round computes, to claim the
    /// resulting hash. If its RoundClose then lands at exactly that position (an append at slot
    /// `end.seq`), the real plan is this one. `None` if the round is already closed.
    pub fn provisional(&self, round: Round, base: StateHash) -> Option<RoundPlan> {
        match self.close(round) {
            Some(_) => None,
            None => Some(self.round_closed_at(round, base, self.end, Vec::new())),
        }
    }

    /// The position right after the last indexed entry (slot after the last one seen, index 0).
    pub fn end(&self) -> EntryPos {
        self.end
    }

    fn round_closed_at(&self, round: Round, base: StateHash, close: EntryPos, claims: Vec<Claim>) -> RoundPlan {
        let max = self.config.rounds.max_contributions;
        let mut first: BTreeMap<WorkerKey, EntryPos> = BTreeMap::new();
        let mut counted = Vec::new();
        let mut not_counted = Vec::new();
        for Indexed { candidate: c, void } in self.contributions.get(&round).into_iter().flatten() {
            let reason = match void {
                Some(VoidReason::RoundClosed(_)) => Some(NotCounted::Late { close }),
                Some(reason) => Some(NotCounted::Void(reason.clone())),
                None if c.pos > close => Some(NotCounted::Late { close }),
                None => self.accepted_reason(c, base, close, &mut first, counted.len(), max),
            };
            match reason {
                Some(reason) => not_counted.push((c.clone(), reason)),
                None => counted.push(c.clone()),
            }
        }
        RoundPlan { round, base, close, counted, not_counted, claims }
    }

    fn accepted_reason(
        &self,
        c: &Candidate,
        base: StateHash,
        close: EntryPos,
        first: &mut BTreeMap<WorkerKey, EntryPos>,
        counted: usize,
        max: u32,
    ) -> Option<NotCounted> {
        if let Some(&since) = self.excluded.get(&c.worker)
            && since < c.pos
        {
            return Some(NotCounted::Excluded { since });
        }
        if let Some(&earlier) = first.get(&c.worker) {
            return Some(NotCounted::Duplicate { first: earlier });
        }
        first.insert(c.worker, c.pos);
        if c.base != base {
            return Some(NotCounted::StaleBase { expected: base, got: c.base });
        }
        if c.blob_size != self.update_bytes || self.update_bytes > MAX_UPDATE_BYTES {
            return Some(NotCounted::WrongSize { declared: c.blob_size, expected: self.update_bytes });
        }
        if let Some((verdict, score)) = self.failing.get(&c.pos).copied()
            && verdict < close
        {
            return Some(NotCounted::Rejected { verdict, score });
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
    use ledger::{Contribution, Entry, Genesis, Keypair, Member, Role, RoundClose, Verdict};

    use super::*;
    use crate::aggregate::{Hyper, NormClip};
    use crate::config::{ExclusionRules, RoundRules};
    use crate::schedule::{Ratio, Schedule};
    use crate::state::{Layout, TensorSpec};
    use crate::wire::{Compression, ValueEncoding};

    const RUN: ledger::RunId = ledger::RunId([3; 32]);

    fn config() -> RunConfig {
        RunConfig {
            layout: Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![4, 4] }]).unwrap(),
            hyper: Hyper {
                compression: Compression::uniform(4, 2, ValueEncoding::Sign),
                schedule: Schedule::Constant { lr: Ratio::new(1, 10) },
                weight_decay: Ratio::new(0, 1),
                clip: NormClip::Off,
            },
            rounds: RoundRules { min_contributions: 1, max_contributions: 4 },
            exclusion: ExclusionRules { min_score: 0, max_failures: 1 },
            extra: Vec::new(),
        }
    }

    fn logged(seq: u64, entry: Entry, validity: Validity) -> LoggedEntry {
        let pos = EntryPos { seq: Seq(seq), index: 0 };
        LoggedEntry { pos, bytes: Bytes::from(entry.encode()), entry: Some(entry), validity, organisation: None }
    }

    fn contribution(worker: &Keypair, round: u64, blob: BlobId) -> Entry {
        let size = encoded_len(&config().layout, &config().hyper.compression);
        let body = Body::Contribution(Contribution {
            round: ledger::Round(round),
            base_state: ledger::StateHash([7; 32]),
            assignment: Vec::new(),
            blob,
            blob_size: size,
            metrics: Vec::new(),
        });
        Entry::sign(RUN, body, &[worker]).unwrap()
    }

    #[test]
    fn a_blob_verdict_rejects_and_excludes_and_ledger_voids_keep_their_reason() {
        let admin = Keypair::from_seed([1; 32]);
        let worker = Keypair::from_seed([2; 32]);
        let validator = Keypair::from_seed([3; 32]);
        let roster = vec![Member { key: admin.public(), organisation: "a".into(), role: Role::Admin }];
        let genesis =
            Genesis::new(config().encode().unwrap(), roster, 1, ledger::StateHash([7; 32]), BlobId([0; 32]), 0);
        let blob = BlobId([9; 32]);
        let verdict = Body::Verdict(Verdict { round: ledger::Round(0), target: Target::Blob(blob), score: -1 });
        let close = |round| {
            Entry::sign(
                RUN,
                Body::RoundClose(RoundClose { round: ledger::Round(round), state: ledger::StateHash([7; 32]) }),
                &[&validator],
            )
            .unwrap()
        };
        let entries = vec![
            logged(0, Entry::sign(RUN, Body::Genesis(genesis), &[&admin]).unwrap(), Validity::Accept),
            logged(1, contribution(&worker, 0, blob), Validity::Accept),
            logged(2, Entry::sign(RUN, verdict, &[&validator]).unwrap(), Validity::Accept),
            logged(3, close(0), Validity::Accept),
            logged(
                4,
                contribution(&worker, 0, BlobId([8; 32])),
                Validity::Void(VoidReason::RoundClosed(ledger::Round(0))),
            ),
            logged(5, contribution(&worker, 1, blob), Validity::Accept),
            logged(6, contribution(&worker, 1, BlobId([6; 32])), Validity::Void(VoidReason::Duplicate)),
            logged(7, close(1), Validity::Accept),
        ];
        let rule = RoundRule::new(&entries, &config());
        let at = |seq| EntryPos { seq: Seq(seq), index: 0 };
        assert_eq!(rule.exclusions(), [(WorkerKey(worker.public().0), at(2))]);
        let base = StateHash([7; 32]);
        let r0 = rule.round(Round(0), base).unwrap();
        assert!(r0.counted.is_empty());
        let reasons: Vec<_> = r0.not_counted.iter().map(|(c, r)| (c.pos, r.clone())).collect();
        assert_eq!(
            reasons,
            [(at(1), NotCounted::Rejected { verdict: at(2), score: -1 }), (at(4), NotCounted::Late { close: at(3) })]
        );
        let r1 = rule.round(Round(1), base).unwrap();
        let reasons: Vec<_> = r1.not_counted.iter().map(|(c, r)| (c.pos, r.clone())).collect();
        assert_eq!(
            reasons,
            [(at(5), NotCounted::Excluded { since: at(2) }), (at(6), NotCounted::Void(VoidReason::Duplicate))]
        );
        assert_eq!(r1.claims.len(), 1);
        assert!(rule.round(Round(2), base).is_none());
        assert!(rule.provisional(Round(1), base).is_none());
        assert_eq!(rule.end(), at(8));
        let open = rule.provisional(Round(2), base).unwrap();
        assert_eq!((open.close, open.counted.len(), open.claims.len()), (at(8), 0, 0));
    }
}
