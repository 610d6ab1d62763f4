//! Rounds: when a round closes and when its result is final, decided by a quorum of organisations.
//!
//! ```text
//!   round r open ──CloseVote(r, seen) from q distinct organisations──▶ closed at the q-th vote
//!                    cut(r) = the largest `seen` among those q votes
//!   closed ───────Attestation(r, state, dropped): each organisation's latest one counts──▶
//!                    final at the first attestation that makes q organisations' latest agree
//!   final ────────▶ round r+1 open
//! ```
//!
//! `q` is the Genesis entry's organisation quorum. Votes are accepted only for the open round, one
//! per organisation; attestations only while the open round is closed, at most
//! [`MAX_ATTESTATIONS_PER_ORG`] per organisation and round. Because a round needs q organisations
//! at each step, fewer than q organisations can neither close a round nor make one final, and
//! because the cut is the largest `seen`, a round never closes before every slot that one of its
//! (honest) closers had read when its own deadline passed.
//!
//! This module is the one implementation of the tally: the validity rule
//! ([`crate::LedgerState`]) uses it to accept or void votes and attestations, and readers of
//! accepted entries (verify's round rule) rebuild the same tally with [`RoundTally::observe`].
//! Pure: no clock, no IO.

use std::collections::{BTreeMap, BTreeSet};

use crate::entry::{Attestation, CloseVote};
use crate::id::{EntryPos, Round, Seq, StateHash};

/// Attestations one organisation may write for one round (it may revise its attestation when
/// a blob it could not read becomes readable, or the other way round; this bounds the spam).
pub const MAX_ATTESTATIONS_PER_ORG: u32 = 8;

/// Where and how a round closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The vote that brought the voting organisations to the quorum.
    pub pos: EntryPos,
    /// Contributions in slots below this count for the round; later ones are late.
    pub cut: Seq,
}

/// A round's result, attested by a quorum of organisations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    /// The attestation that completed the quorum.
    pub pos: EntryPos,
    /// The state after the round.
    pub state: StateHash,
    /// Contributions left out because their blobs could not be read.
    pub dropped: Vec<EntryPos>,
}

/// Why a vote or an attestation does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoundError {
    /// A vote for a round other than the open one.
    #[error("round {round} is not open for votes (the open round is {open})")]
    NotOpen {
        /// The vote's round.
        round: Round,
        /// The open round.
        open: Round,
    },
    /// A vote for a round that already closed.
    #[error("round {0} is already closed")]
    AlreadyClosed(Round),
    /// The voter's organisation already voted in this round.
    #[error("organisation {org:?} already voted in round {round}")]
    AlreadyVoted {
        /// The round.
        round: Round,
        /// The organisation.
        org: String,
    },
    /// A vote that claims to have read slots at or after its own.
    #[error("a vote at slot {at} cannot have read up to slot {seen}")]
    SeenAhead {
        /// The vote's slot.
        at: Seq,
        /// Its claim.
        seen: Seq,
    },
    /// An attestation for a round that is not closed and awaiting its result.
    #[error("round {round} is not awaiting attestations (the open round is {open}, closed: {closed})")]
    NotAttestable {
        /// The attestation's round.
        round: Round,
        /// The open round.
        open: Round,
        /// Whether the open round is closed.
        closed: bool,
    },
    /// An attestation that drops something other than an accepted contribution of the round
    /// before its cut.
    #[error("attestation drops {0}, which is not an accepted contribution of the round before its cut")]
    BadDrop(EntryPos),
    /// The organisation wrote its maximum of attestations for this round.
    #[error("organisation {org:?} already wrote {MAX_ATTESTATIONS_PER_ORG} attestations for round {round}")]
    TooManyAttestations {
        /// The round.
        round: Round,
        /// The organisation.
        org: String,
    },
}

#[derive(Debug, Clone, Default)]
struct Voting {
    orgs: BTreeSet<String>,
    max_seen: Seq,
}

#[derive(Debug, Clone, Default)]
struct Attesting {
    /// Each organisation's latest attestation, and how many it wrote.
    latest: BTreeMap<String, ((StateHash, Vec<EntryPos>), u32)>,
}

/// Drops what `map` holds for rounds before `round`, bar `keep`'s (the one way every per-round
/// index forgets behind a window).
pub fn forget_rounds_before<R: Ord + Copy, T>(map: &mut BTreeMap<R, T>, round: R, keep: Option<R>) {
    let mut kept = map.split_off(&round);
    if let Some(k) = keep
        && let Some(held) = map.remove(&k)
    {
        kept.insert(k, held);
    }
    *map = kept;
}

/// The tally of votes and attestations over the accepted entries seen so far.
#[derive(Debug, Clone)]
pub struct RoundTally {
    quorum: u16,
    open: Round,
    voting: Voting,
    attesting: Attesting,
    closes: BTreeMap<Round, Close>,
    finals: BTreeMap<Round, Final>,
}

impl RoundTally {
    /// An empty tally for a run whose organisation quorum is `quorum` (the Genesis entry's).
    pub fn new(quorum: u16) -> RoundTally {
        RoundTally {
            quorum: quorum.max(1),
            open: Round(0),
            voting: Voting::default(),
            attesting: Attesting::default(),
            closes: BTreeMap::new(),
            finals: BTreeMap::new(),
        }
    }

    /// The organisation quorum.
    pub fn quorum(&self) -> u16 {
        self.quorum
    }

    /// The open round: the first round whose result is not final yet.
    pub fn open_round(&self) -> Round {
        self.open
    }

    /// Where `round` closed, if it did.
    pub fn close(&self, round: Round) -> Option<Close> {
        self.closes.get(&round).copied()
    }

    /// `round`'s attested result, if it is final.
    pub fn final_result(&self, round: Round) -> Option<&Final> {
        self.finals.get(&round)
    }

    /// Forgets the closes and results of rounds before `round`, bar `keep`'s: what a participant
    /// that forgets behind a window no longer asks about. The tally's own decisions look only at
    /// the open round, so they do not change; [`RoundTally::close`] and
    /// [`RoundTally::final_result`] of a forgotten round answer `None`.
    pub fn forget_before(&mut self, round: Round, keep: Option<Round>) {
        forget_rounds_before(&mut self.closes, round, keep);
        forget_rounds_before(&mut self.finals, round, keep);
    }

    /// Every final round's result, in round order.
    pub fn finals(&self) -> impl Iterator<Item = (Round, &Final)> {
        self.finals.iter().map(|(r, f)| (*r, f))
    }

    /// Organisations that voted in the open round so far.
    pub fn voters(&self) -> impl Iterator<Item = &str> {
        self.voting.orgs.iter().map(String::as_str)
    }

    /// The latest attestation of each organisation for the open round (closed, not final).
    pub fn attestations(&self) -> impl Iterator<Item = (&str, &StateHash, &[EntryPos])> {
        self.attesting.latest.iter().map(|(org, ((state, dropped), _))| (org.as_str(), state, dropped.as_slice()))
    }

    /// Whether a vote by a member of `org` at `pos` would count.
    pub fn check_vote(&self, pos: EntryPos, org: &str, vote: &CloseVote) -> Result<(), RoundError> {
        if vote.round != self.open {
            return Err(RoundError::NotOpen { round: vote.round, open: self.open });
        }
        if self.closes.contains_key(&vote.round) {
            return Err(RoundError::AlreadyClosed(vote.round));
        }
        if vote.seen > pos.seq {
            return Err(RoundError::SeenAhead { at: pos.seq, seen: vote.seen });
        }
        if self.voting.orgs.contains(org) {
            return Err(RoundError::AlreadyVoted { round: vote.round, org: org.to_string() });
        }
        Ok(())
    }

    /// Whether an attestation by a member of `org` would count. `is_contribution(p)` says whether
    /// `p` is an accepted contribution of the attestation's round.
    pub fn check_attestation(
        &self,
        org: &str,
        attestation: &Attestation,
        is_contribution: impl Fn(EntryPos) -> bool,
    ) -> Result<(), RoundError> {
        let close = match self.closes.get(&attestation.round) {
            Some(c) if attestation.round == self.open => *c,
            _ => {
                return Err(RoundError::NotAttestable {
                    round: attestation.round,
                    open: self.open,
                    closed: self.closes.contains_key(&self.open),
                });
            }
        };
        if let Some(bad) = attestation.dropped.iter().find(|p| p.seq >= close.cut || !is_contribution(**p)) {
            return Err(RoundError::BadDrop(*bad));
        }
        if self.attesting.latest.get(org).is_some_and(|(_, n)| *n >= MAX_ATTESTATIONS_PER_ORG) {
            return Err(RoundError::TooManyAttestations { round: attestation.round, org: org.to_string() });
        }
        Ok(())
    }

    /// Counts an accepted vote (one that [`RoundTally::check_vote`] passed). Returns the close
    /// if this vote closed the round.
    pub fn vote(&mut self, pos: EntryPos, org: &str, vote: &CloseVote) -> Option<Close> {
        self.voting.orgs.insert(org.to_string());
        self.voting.max_seen = self.voting.max_seen.max(vote.seen);
        if self.voting.orgs.len() < usize::from(self.quorum) {
            return None;
        }
        let close = Close { pos, cut: self.voting.max_seen };
        self.closes.insert(vote.round, close);
        self.voting = Voting::default();
        Some(close)
    }

    /// Counts an accepted attestation (one that [`RoundTally::check_attestation`] passed). Returns
    /// the result if this attestation made the round final.
    pub fn attest(&mut self, pos: EntryPos, org: &str, attestation: &Attestation) -> Option<&Final> {
        let claim = (attestation.state, attestation.dropped.clone());
        let slot = self.attesting.latest.entry(org.to_string()).or_insert_with(|| (claim.clone(), 0));
        slot.0 = claim.clone();
        slot.1 += 1;
        let agreeing = self.attesting.latest.values().filter(|(c, _)| *c == claim).count();
        if agreeing < usize::from(self.quorum) {
            return None;
        }
        let round = attestation.round;
        self.finals.insert(round, Final { pos, state: claim.0, dropped: claim.1 });
        self.attesting = Attesting::default();
        self.open = Round(round.0.saturating_add(1));
        self.finals.get(&round)
    }

    /// Rebuilds the tally from an accepted entry, as a reader of the validity rule's verdicts
    /// does: votes and attestations are counted, anything else is ignored. Only entries the
    /// validity rule accepted may be passed.
    pub fn observe(&mut self, pos: EntryPos, org: &str, body: &crate::Body) {
        match body {
            crate::Body::CloseVote(v) => {
                self.vote(pos, org, v);
            }
            crate::Body::Attestation(a) => {
                self.attest(pos, org, a);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> EntryPos {
        EntryPos { seq: Seq(seq), index: 0 }
    }

    fn vote(round: u64, seen: u64) -> CloseVote {
        CloseVote { round: Round(round), seen: Seq(seen) }
    }

    fn attestation(round: u64, state: u8, dropped: Vec<EntryPos>) -> Attestation {
        Attestation { round: Round(round), state: StateHash([state; 32]), dropped }
    }

    #[test]
    fn forgetting_old_rounds_keeps_the_open_rounds_decisions_and_the_kept_results() {
        let mut forgetting = RoundTally::new(1);
        let mut full = RoundTally::new(1);
        let state = |r: u64| StateHash([r as u8; 32]);
        for r in 0..20u64 {
            for (i, tally) in [&mut forgetting, &mut full].into_iter().enumerate() {
                let round = Round(r);
                let at = |k: u64| EntryPos { seq: Seq(10 * r + k), index: 0 };
                tally.vote(at(1), "a", &CloseVote { round, seen: at(1).seq });
                let attestation = Attestation { round, state: state(r), dropped: vec![] };
                assert!(tally.attest(at(2), "a", &attestation).is_some());
                if i == 0 {
                    // Keep the last 3 rounds and round 4 (say, the newest snapshot's).
                    tally.forget_before(Round(r.saturating_sub(2)), Some(Round(4)));
                }
            }
            assert_eq!(forgetting.open_round(), full.open_round());
        }
        let held: Vec<u64> = forgetting.finals().map(|(r, _)| r.0).collect();
        assert_eq!(held, vec![4, 17, 18, 19]);
        for r in [4, 17, 18, 19] {
            assert_eq!(forgetting.final_result(Round(r)), full.final_result(Round(r)));
            assert_eq!(forgetting.close(Round(r)), full.close(Round(r)));
        }
        assert_eq!(forgetting.final_result(Round(16)), None);
        assert_eq!(forgetting.close(Round(3)), None);
    }

    #[test]
    fn a_round_closes_at_the_quorum_th_organisation_with_the_largest_seen_as_cut() {
        let mut t = RoundTally::new(2);
        assert_eq!(t.check_vote(at(5), "a", &vote(0, 4)), Ok(()));
        assert_eq!(t.vote(at(5), "a", &vote(0, 5)), None);
        assert_eq!(
            t.check_vote(at(6), "a", &vote(0, 6)),
            Err(RoundError::AlreadyVoted { round: Round(0), org: "a".into() })
        );
        assert_eq!(t.check_vote(at(6), "b", &vote(0, 7)), Err(RoundError::SeenAhead { at: Seq(6), seen: Seq(7) }));
        assert_eq!(t.check_vote(at(6), "b", &vote(1, 3)), Err(RoundError::NotOpen { round: Round(1), open: Round(0) }));
        // b read less than a: the cut is still a's 5.
        assert_eq!(t.vote(at(6), "b", &vote(0, 2)), Some(Close { pos: at(6), cut: Seq(5) }));
        assert_eq!(t.check_vote(at(7), "c", &vote(0, 7)), Err(RoundError::AlreadyClosed(Round(0))));
        assert_eq!(t.open_round(), Round(0), "closed, not final");
    }

    #[test]
    fn a_round_is_final_when_the_latest_attestations_of_a_quorum_agree() {
        let mut t = RoundTally::new(2);
        let early = attestation(0, 1, vec![]);
        let any = |_| true;
        assert!(matches!(t.check_attestation("a", &early, any), Err(RoundError::NotAttestable { .. })));
        t.vote(at(3), "a", &vote(0, 3));
        t.vote(at(4), "b", &vote(0, 4));
        // Dropping a contribution at or after the cut (4), or a non-contribution, is refused.
        let late_drop = attestation(0, 1, vec![at(4)]);
        assert_eq!(t.check_attestation("a", &late_drop, any), Err(RoundError::BadDrop(at(4))));
        let stranger = attestation(0, 1, vec![at(2)]);
        assert_eq!(t.check_attestation("a", &stranger, |p| p == at(1)), Err(RoundError::BadDrop(at(2))));
        // a drops 1, b does not: no agreement. a revises (the blob became readable): final.
        assert!(t.attest(at(5), "a", &attestation(0, 1, vec![at(1)])).is_none());
        assert!(t.attest(at(6), "b", &attestation(0, 2, vec![])).is_none());
        let done = t.attest(at(7), "a", &attestation(0, 2, vec![])).cloned();
        assert_eq!(done, Some(Final { pos: at(7), state: StateHash([2; 32]), dropped: vec![] }));
        assert_eq!(t.open_round(), Round(1));
        assert!(t.final_result(Round(0)).is_some());
        assert_eq!(t.check_vote(at(8), "a", &vote(1, 8)), Ok(()));
    }

    #[test]
    fn one_organisation_cannot_close_or_finalise_alone_and_its_attestations_are_bounded() {
        let mut t = RoundTally::new(2);
        t.vote(at(1), "a", &vote(0, 1));
        assert!(t.close(Round(0)).is_none());
        t.vote(at(2), "b", &vote(0, 2));
        for i in 0..MAX_ATTESTATIONS_PER_ORG {
            assert_eq!(t.check_attestation("a", &attestation(0, i as u8, vec![]), |_| true), Ok(()));
            assert!(t.attest(at(3 + u64::from(i)), "a", &attestation(0, i as u8, vec![])).is_none());
        }
        assert_eq!(
            t.check_attestation("a", &attestation(0, 0, vec![]), |_| true),
            Err(RoundError::TooManyAttestations { round: Round(0), org: "a".into() })
        );
        assert_eq!(t.open_round(), Round(0));
    }
}
