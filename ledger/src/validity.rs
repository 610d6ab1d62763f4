//! The validity rule: which entries count. A pure function of the ledger prefix.
//!
//! ```text
//!   slot bytes ─► slot framing ok? ──no──► every entry of the slot is void (MalformedSlot)
//!                      │yes
//!                      ▼  for each entry, in (seq, index) order:
//!   validate(&state, raw) ─► Accept ─► state.apply: roster, quorum, closed rounds, seen digests
//!                         └► Void(reason): the entry keeps its place, changes nothing
//! ```
//!
//! The checks, in order (the first failure is the reason):
//! 1. the bytes decode canonically ([`VoidReason::Malformed`]);
//! 2. the entry names this run ([`VoidReason::WrongRun`]);
//! 3. a Genesis is the very first entry (seq 0, index 0), and nothing else is
//!    ([`VoidReason::GenesisNotFirst`], [`VoidReason::NoGenesis`]);
//! 4. every signature verifies (ed25519 under ZIP-215, see [`crate::key`]) ([`VoidReason::BadSignature`]);
//! 5. in a run whose genesis sets a window of `w` rounds, the entry's round (if its kind has one)
//!    is at most `w` rounds before or after the open round ([`VoidReason::OutsideWindow`]);
//! 6. the same signed message by the same signers was not accepted before ([`VoidReason::Duplicate`]);
//! 7. the signers are members whose role allows the kind, in the right number
//!    (table below; RosterChange: at least `quorum` admins, from at least `org_quorum`
//!    organisations or from every organisation that has an admin if fewer do, at the current epoch);
//! 8. kind rules: no contribution to a closed round; close votes and attestations follow the
//!    round tally ([`crate::rounds`]: votes only for the open round, one per organisation;
//!    attestations only for the closed open round); a snapshot or an evaluation names a final round
//!    and its attested state (an evaluation once per signer and round); a verdict names an accepted contribution of its round;
//!    in a run whose genesis sets `once_per_round`, a contribution and a snapshot once per signer
//!    and round and a verdict once per validator and target ([`VoidReason::OncePerRound`]); roster changes keep
//!    at least `quorum` admins and `org_quorum` organisations; and no roster (genesis or change)
//!    admits a small-order key (under ZIP-215 it would verify every message, see
//!    [`key::is_weak`]). A Genesis must carry the run id derived from its body.
//!
//! ```text
//!   Genesis       signers: admins of its own roster (>= 1)
//!   Contribution  one signer, worker (once per round with `once_per_round`)
//!   Verdict       one signer, validator (once per target with `once_per_round`)
//!   CloseVote     one signer, any member (counts for its organisation)
//!   Attestation   one signer, any member (likewise)
//!   Snapshot      one signer, any member (the state must be the round's attested one; once per
//!                 signer and round with `once_per_round`)
//!   Evaluation    one signer, any member (likewise; one per signer and round)
//!   RosterChange  >= quorum signers, all admins
//! ```
//!
//! The signature checks of step 4 are the only costly part. [`Checked`] does them ahead of the rule,
//! one entry at a time ([`Checked::single`]) or a whole slot as one batch ([`Checked::batch`], what
//! `Reader` uses); both give the same per-entry result, so the verdicts do not depend on the path.
//!
//! No clock, no environment, no IO: two readers with the same prefix reach the same verdicts.
//!
//! **The window.** Step 5 (check 6 in docs/LEDGER.md, which counts the slot framing as check 1)
//! comes before the duplicate check, so once a round is more than `w`
//! rounds behind the open one, no later entry's verdict depends on anything recorded about it:
//! the state forgets those rounds' digests, contributions, blobs and evaluations
//! ([`LedgerState::forget_outside_window`]), and its size stays bounded by the window rather than
//! growing with the run. One rule follows from the forgetting and is part of the format: a verdict
//! that targets a blob names the round of the first accepted contribution that carried it, and
//! when that round leaves the window the blob is forgotten (a later contribution carrying the same
//! blob gives it a round anew only if it comes after the forgetting).

use std::collections::{BTreeMap, HashMap, HashSet};

use storage::BlobId;

use crate::entry::{Body, Change, Entry, Genesis, Kind, Member, Role, Target};
use crate::error::DecodeError;
use crate::id::{EntryPos, Round, RunId};
use crate::key::{self, PublicKey};
use crate::rounds::{RoundError, RoundTally};

/// Why an entry does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoidReason {
    /// The slot object is not a slot (garbage, unknown version, oversized).
    #[error("the slot is not a valid batch: {0}")]
    MalformedSlot(DecodeError),
    /// The slot is the filler a participant wrote into a hole (see `slot::FILLER`).
    #[error("filler: a hole in the log, filled so that readers move on")]
    Filler,
    /// The entry bytes are not canonical.
    #[error("malformed entry: {0}")]
    Malformed(DecodeError),
    /// Signed for another run.
    #[error("entry for run {0}")]
    WrongRun(RunId),
    /// The log does not start with a valid Genesis, so nothing counts.
    #[error("no valid genesis at the start of the log")]
    NoGenesis,
    /// A Genesis that is not the first entry.
    #[error("genesis after the first entry")]
    GenesisNotFirst,
    /// A genesis whose roster or quorum cannot work.
    #[error("unusable genesis: {0}")]
    BadGenesis(&'static str),
    /// A signature does not verify.
    #[error("bad signature by {0}")]
    BadSignature(PublicKey),
    /// The same signed message was already accepted.
    #[error("duplicate of an accepted entry")]
    Duplicate,
    /// A signer is not in the roster.
    #[error("signer {0} is not a member")]
    UnknownSigner(PublicKey),
    /// A signer's role does not allow this kind.
    #[error("signer {key} is a {role:?}, which may not write {kind:?}")]
    WrongRole {
        /// The signer.
        key: PublicKey,
        /// Its role.
        role: Role,
        /// The entry's kind.
        kind: Kind,
    },
    /// The kind takes one signature and has several.
    #[error("{count} signatures on a single-signer entry")]
    TooManySigners {
        /// How many.
        count: usize,
    },
    /// Not enough admin signatures on a roster change.
    #[error("{have} admin signatures, quorum is {need}")]
    NoQuorum {
        /// Valid admin signatures.
        have: usize,
        /// The quorum.
        need: u16,
    },
    /// A roster change whose admins come from too few organisations: at least the organisation
    /// quorum, or every organisation that has an admin when fewer do.
    #[error("admin signatures from {have} organisations, {need} required")]
    NoOrganisationQuorum {
        /// Organisations of the valid admin signatures.
        have: usize,
        /// Required.
        need: usize,
    },
    /// A roster change for another roster epoch (replayed or out of date).
    #[error("roster change for epoch {found}, the roster is at epoch {expected}")]
    StaleEpoch {
        /// The current epoch.
        expected: u64,
        /// The entry's.
        found: u64,
    },
    /// A roster change that cannot apply (adding a member twice, removing a stranger, leaving
    /// fewer admins than the quorum, ...).
    #[error("roster change refused: {0}")]
    BadRosterChange(&'static str),
    /// A contribution to a round that already closed.
    #[error("round {0} is already closed")]
    RoundClosed(Round),
    /// A close vote or an attestation that the round tally refuses.
    #[error("{0}")]
    Rounds(RoundError),
    /// A snapshot of a round whose result is not final.
    #[error("names round {0}, which is not final")]
    NotFinal(Round),
    /// A snapshot or evaluation whose state is not the round's attested state.
    #[error("names round {0} with a state other than the attested one")]
    WrongState(Round),
    /// A second evaluation of one round by one signer.
    #[error("a second evaluation of round {0} by the same signer")]
    AlreadyEvaluated(Round),
    /// In a run whose genesis sets `once_per_round`: a second contribution or snapshot of one round
    /// by one signer, or a second verdict by one validator on one target.
    #[error(
        "a second {kind:?} of round {round} by the same signer (one per signer and round, per target for a verdict)"
    )]
    OncePerRound {
        /// The entry's kind.
        kind: Kind,
        /// Its round.
        round: Round,
    },
    /// A verdict for something that is not an accepted contribution of its round.
    #[error("verdict target is not an accepted contribution of round {0}")]
    UnknownTarget(Round),
    /// An entry naming a round outside the run's window around the open round.
    #[error("names round {round}, outside the window of {window} rounds around the open round {open}")]
    OutsideWindow {
        /// The entry's round.
        round: Round,
        /// The open round when it was read.
        open: Round,
        /// The run's window.
        window: u32,
    },
}

/// The result of the validity rule for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validity {
    /// The entry counts.
    Accept,
    /// The entry keeps its slot but counts for nothing.
    Void(VoidReason),
}

impl Validity {
    /// Whether the entry counts.
    pub fn is_accept(&self) -> bool {
        matches!(self, Validity::Accept)
    }
}

/// One entry as it sits in the log, not yet decoded.
#[derive(Debug, Clone, Copy)]
pub struct RawEntry<'a> {
    /// Where it is.
    pub pos: EntryPos,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// What the validity rule needs to know about the prefix before an entry.
#[derive(Debug, Clone)]
pub struct LedgerState {
    run_id: RunId,
    genesis: Option<Genesis>,
    roster: BTreeMap<PublicKey, Member>,
    quorum: u16,
    roster_epoch: u64,
    /// Digests of accepted entries without a round (genesis, roster changes).
    seen: HashSet<[u8; 32]>,
    /// Digests of accepted entries with a round, by round (a duplicate has its original's round).
    seen_in_round: BTreeMap<Round, HashSet<[u8; 32]>>,
    rounds: RoundTally,
    /// Accepted contributions, by round.
    contributions: BTreeMap<Round, HashSet<EntryPos>>,
    /// The round of each blob an accepted contribution carried: the first such contribution's.
    contribution_blobs: HashMap<BlobId, Round>,
    /// The blobs `contribution_blobs` gave each round, for forgetting them with it.
    blobs_of_round: BTreeMap<Round, Vec<BlobId>>,
    /// What signers did that they may do only once a round, by round (see [`Once`]).
    once: BTreeMap<Round, HashSet<Once>>,
}

/// An accepted entry of a kind a signer may write once per round: an evaluation in every run;
/// a contribution, a snapshot, and a verdict per target, in a run whose genesis sets
/// `once_per_round` (a windowed run, whose readers' memory must be bounded by the window: without
/// these limits one member could fill a round with as many accepted entries as it likes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Once {
    Evaluation(PublicKey),
    Contribution(PublicKey),
    Snapshot(PublicKey),
    Verdict(PublicKey, Target),
}

impl Once {
    /// The once-a-round key of `entry`, with its round, if its kind has one in this run.
    fn of(entry: &Entry, limited: bool) -> Option<(Round, Once)> {
        let signer = entry.signer();
        match &entry.body {
            Body::Evaluation(e) => Some((e.round, Once::Evaluation(signer))),
            Body::Contribution(c) if limited => Some((c.round, Once::Contribution(signer))),
            Body::Snapshot(s) if limited => Some((s.round, Once::Snapshot(signer))),
            Body::Verdict(v) if limited => Some((v.round, Once::Verdict(signer, v.target))),
            _ => None,
        }
    }
}

impl LedgerState {
    /// The state before the first entry of run `run_id`.
    pub fn new(run_id: RunId) -> LedgerState {
        LedgerState {
            run_id,
            genesis: None,
            roster: BTreeMap::new(),
            quorum: 0,
            roster_epoch: 0,
            seen: HashSet::new(),
            seen_in_round: BTreeMap::new(),
            rounds: RoundTally::new(1),
            contributions: BTreeMap::new(),
            contribution_blobs: HashMap::new(),
            blobs_of_round: BTreeMap::new(),
            once: BTreeMap::new(),
        }
    }

    /// The run.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// The accepted genesis, once there is one.
    pub fn genesis(&self) -> Option<&Genesis> {
        self.genesis.as_ref()
    }

    /// The current roster.
    pub fn roster(&self) -> &BTreeMap<PublicKey, Member> {
        &self.roster
    }

    /// The member with this key, if any.
    pub fn member(&self, key: &PublicKey) -> Option<&Member> {
        self.roster.get(key)
    }

    /// Admin signatures a roster change needs now.
    pub fn quorum(&self) -> u16 {
        self.quorum
    }

    /// How many roster changes have been accepted.
    pub fn roster_epoch(&self) -> u64 {
        self.roster_epoch
    }

    /// The run's window of rounds (0: none), from its genesis.
    pub fn window(&self) -> u32 {
        self.genesis.as_ref().map_or(0, |g| g.window)
    }

    /// Whether the run's genesis sets check 9's once-per-round limits.
    fn once_per_round(&self) -> bool {
        self.genesis.as_ref().is_some_and(|g| g.once_per_round)
    }

    /// The oldest round an entry may still name: `window` rounds before the open round (round 0
    /// when the run has no window).
    pub fn horizon(&self) -> Round {
        match self.window() {
            0 => Round(0),
            w => Round(self.rounds.open_round().0.saturating_sub(u64::from(w))),
        }
    }

    /// Whether an entry naming `round` is outside the window now.
    fn outside_window(&self, round: Round) -> bool {
        let w = u64::from(self.window());
        w != 0 && (round < self.horizon() || round.0 > self.rounds.open_round().0.saturating_add(w))
    }

    /// The round of `entry` if its signer already did what it does once a round there (see
    /// [`Once`]).
    fn done_once(&self, entry: &Entry) -> Option<Round> {
        let (round, once) = Once::of(entry, self.once_per_round())?;
        self.once.get(&round).is_some_and(|s| s.contains(&once)).then_some(round)
    }

    /// Whether an accepted entry with this digest (and so this round, if any) was seen.
    fn seen(&self, round: Option<Round>, digest: &[u8; 32]) -> bool {
        match round {
            None => self.seen.contains(digest),
            Some(r) => self.seen_in_round.get(&r).is_some_and(|s| s.contains(digest)),
        }
    }

    /// Forgets what the state holds about rounds before the horizon: no later entry may name them
    /// (step 5 comes before every check that reads them), so the verdicts do not change.
    pub fn forget_outside_window(&mut self) {
        if self.window() == 0 {
            return;
        }
        let horizon = self.horizon();
        self.seen_in_round = self.seen_in_round.split_off(&horizon);
        self.contributions = self.contributions.split_off(&horizon);
        self.once = self.once.split_off(&horizon);
        let kept = self.blobs_of_round.split_off(&horizon);
        for blob in std::mem::replace(&mut self.blobs_of_round, kept).into_values().flatten() {
            self.contribution_blobs.remove(&blob);
        }
    }

    /// Forgets the closes and results of rounds before `round` (at most the horizon), for a
    /// participant that forgets behind the window ([`crate::Reader::forget_before`]): the rule
    /// itself never reads them again (check 6 voids what names them). An auditor never calls it.
    pub(crate) fn forget_results_before(&mut self, round: Round) {
        self.rounds.forget_before(round.min(self.horizon()), None);
    }

    /// Rounds the state holds anything about (digests, contributions, once-a-round entries).
    pub fn rounds_held(&self) -> usize {
        let mut rounds: Vec<Round> =
            self.seen_in_round.keys().chain(self.contributions.keys()).chain(self.once.keys()).copied().collect();
        rounds.sort_unstable();
        rounds.dedup();
        rounds.len()
    }

    /// The round tally: the open round, closes and attested results.
    pub fn rounds(&self) -> &RoundTally {
        &self.rounds
    }

    /// The organisation of the member with this key, if any.
    pub fn organisation(&self, key: &PublicKey) -> Option<&str> {
        self.roster.get(key).map(|m| m.organisation.as_str())
    }

    fn organisations_without(&self, removed: &PublicKey) -> usize {
        let mut orgs: Vec<&str> =
            self.roster.values().filter(|m| m.key != *removed).map(|m| m.organisation.as_str()).collect();
        orgs.sort_unstable();
        orgs.dedup();
        orgs.len()
    }

    fn admins(&self) -> usize {
        self.roster.values().filter(|m| m.role == Role::Admin).count()
    }

    /// Runs the validity rule on `raw` and, if it is accepted, applies it. Returns the verdict
    /// and the decoded entry (when it decodes, void or not).
    pub fn apply(&mut self, raw: RawEntry<'_>) -> (Validity, Option<Entry>) {
        self.apply_checked(raw.pos, Checked::single(raw.bytes))
    }

    /// [`LedgerState::apply`] for an entry whose signatures were already checked (by
    /// [`Checked::single`] or [`Checked::batch`], which give the same result).
    pub fn apply_checked(&mut self, pos: EntryPos, checked: Result<Checked, DecodeError>) -> (Validity, Option<Entry>) {
        let checked = match checked {
            Ok(c) => c,
            Err(e) => return (Validity::Void(VoidReason::Malformed(e)), None),
        };
        let digest = checked.digest();
        match check(self, pos, &checked, &digest) {
            Err(reason) => (Validity::Void(reason), Some(checked.entry)),
            Ok(()) => {
                self.accept(pos, &checked.entry, digest);
                (Validity::Accept, Some(checked.entry))
            }
        }
    }

    fn accept(&mut self, pos: EntryPos, entry: &Entry, digest: [u8; 32]) {
        match entry.body.round() {
            None => self.seen.insert(digest),
            Some(r) => self.seen_in_round.entry(r).or_default().insert(digest),
        };
        match &entry.body {
            Body::Genesis(g) => {
                self.roster = g.roster.iter().map(|m| (m.key, m.clone())).collect();
                self.quorum = g.quorum;
                self.rounds = RoundTally::new(g.org_quorum);
                self.genesis = Some(g.clone());
            }
            Body::Contribution(c) => {
                self.contributions.entry(c.round).or_default().insert(pos);
                if let std::collections::hash_map::Entry::Vacant(v) = self.contribution_blobs.entry(c.blob) {
                    v.insert(c.round);
                    self.blobs_of_round.entry(c.round).or_default().push(c.blob);
                }
            }
            Body::CloseVote(v) => {
                let org = self.organisation(&entry.signer()).unwrap_or_default().to_string();
                self.rounds.vote(pos, &org, v);
            }
            Body::Attestation(a) => {
                let org = self.organisation(&entry.signer()).unwrap_or_default().to_string();
                // A final result opens the next round: the horizon may have moved.
                if self.rounds.attest(pos, &org, a).is_some() {
                    self.forget_outside_window();
                }
            }
            Body::RosterChange(rc) => {
                self.roster_epoch += 1;
                match &rc.change {
                    Change::Add(m) => {
                        self.roster.insert(m.key, m.clone());
                    }
                    Change::Remove(k) => {
                        self.roster.remove(k);
                    }
                    Change::SetQuorum(q) => self.quorum = *q,
                }
            }
            Body::Evaluation(_) | Body::Verdict(_) | Body::Snapshot(_) => {}
        }
        if let Some((round, once)) = Once::of(entry, self.once_per_round()) {
            self.once.entry(round).or_default().insert(once);
        }
    }
}

/// An entry decoded, with the result of its signature checks: what the rule needs once the
/// signature work (the only costly part, and the only part that batches) is done. Built only by
/// [`Checked::single`] and [`Checked::batch`], so the rule never sees a made-up result.
#[derive(Debug, Clone)]
pub struct Checked {
    entry: Entry,
    message: Vec<u8>,
    /// The signers whose signatures fail, in signature order.
    bad_signers: Vec<PublicKey>,
}

impl Checked {
    /// Decodes `bytes` and checks each signature on its own (ZIP-215).
    pub fn single(bytes: &[u8]) -> Result<Checked, DecodeError> {
        let entry = Entry::decode(bytes)?;
        let message = entry.signed_message();
        let bad_signers = entry.bad_signers_of(&message);
        Ok(Checked { entry, message, bad_signers })
    }

    /// [`Checked::single`] for each of `raws`, with every signature of every entry checked as one
    /// batch ([`key::verify_batch`]: when the batch fails, each signature is checked on its own).
    /// The result equals `raws.map(Checked::single)`.
    pub fn batch(raws: &[&[u8]]) -> Vec<Result<Checked, DecodeError>> {
        let decoded: Vec<Result<(Entry, Vec<u8>), DecodeError>> = raws
            .iter()
            .map(|bytes| {
                let entry = Entry::decode(bytes)?;
                let message = entry.signed_message();
                Ok((entry, message))
            })
            .collect();
        let items: Vec<key::SignedItem<'_>> = decoded
            .iter()
            .flatten()
            .flat_map(|(entry, message)| {
                entry.signatures.iter().map(move |s| key::SignedItem { key: &s.key, message, signature: &s.signature })
            })
            .collect();
        let mut ok = key::verify_batch(key::ENTRY_DOMAIN, &items).into_iter();
        drop(items);
        decoded
            .into_iter()
            .map(|d| {
                let (entry, message) = d?;
                // `ok` holds one result per signature, in the order queued above.
                let bad_signers =
                    entry.signatures.iter().filter(|_| !ok.next().unwrap_or(false)).map(|s| s.key).collect();
                Ok(Checked { entry, message, bad_signers })
            })
            .collect()
    }

    /// The decoded entry.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// What the duplicate check compares: blake3 of the signed message followed by the signers'
    /// keys in signature order. Re-signing the same body does not make a new entry, but two
    /// members who write the same body (two organisations attesting the same state, two
    /// validators giving the same score) each make their own.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.message);
        for s in &self.entry.signatures {
            h.update(&s.key.0);
        }
        *h.finalize().as_bytes()
    }
}

/// The validity rule: whether `raw` counts, given the prefix summarised by `state`.
pub fn validate(state: &LedgerState, raw: RawEntry<'_>) -> Validity {
    validate_checked(state, raw.pos, &Checked::single(raw.bytes))
}

/// [`validate`] for an entry whose signatures were already checked.
pub fn validate_checked(state: &LedgerState, pos: EntryPos, checked: &Result<Checked, DecodeError>) -> Validity {
    match checked {
        Err(e) => Validity::Void(VoidReason::Malformed(e.clone())),
        Ok(c) => match check(state, pos, c, &c.digest()) {
            Ok(()) => Validity::Accept,
            Err(reason) => Validity::Void(reason),
        },
    }
}

/// `round` is final and `claimed` is its attested state.
fn final_state(state: &LedgerState, round: Round, claimed: &crate::id::StateHash) -> Result<(), VoidReason> {
    match state.rounds.final_result(round) {
        None => Err(VoidReason::NotFinal(round)),
        Some(f) if f.state != *claimed => Err(VoidReason::WrongState(round)),
        Some(_) => Ok(()),
    }
}

fn check(state: &LedgerState, pos: EntryPos, checked: &Checked, digest: &[u8; 32]) -> Result<(), VoidReason> {
    let entry = &checked.entry;
    if entry.run_id != state.run_id {
        return Err(VoidReason::WrongRun(entry.run_id));
    }
    let kind = entry.body.kind();
    let first = pos.seq.0 == 0 && pos.index == 0;
    match (&entry.body, state.genesis.is_some()) {
        (Body::Genesis(_), true) => return Err(VoidReason::GenesisNotFirst),
        (Body::Genesis(_), false) if !first => return Err(VoidReason::GenesisNotFirst),
        (Body::Genesis(_), false) => {}
        (_, false) => return Err(VoidReason::NoGenesis),
        (_, true) => {}
    }
    if let Some(bad) = checked.bad_signers.first() {
        return Err(VoidReason::BadSignature(*bad));
    }
    if let Some(round) = entry.body.round().filter(|r| state.outside_window(*r)) {
        return Err(VoidReason::OutsideWindow { round, open: state.rounds.open_round(), window: state.window() });
    }
    if state.seen(entry.body.round(), digest) {
        return Err(VoidReason::Duplicate);
    }
    match &entry.body {
        Body::Genesis(g) => check_genesis(g, entry),
        Body::Contribution(c) => {
            single_signer(state, entry, &[Role::Worker])?;
            if state.rounds.close(c.round).is_some() || c.round < state.rounds.open_round() {
                return Err(VoidReason::RoundClosed(c.round));
            }
            once_per_round(state, entry)
        }
        Body::Verdict(v) => {
            single_signer(state, entry, &[Role::Validator])?;
            let known = match v.target {
                Target::Entry(p) => state.contributions.get(&v.round).is_some_and(|c| c.contains(&p)),
                Target::Blob(b) => state.contribution_blobs.get(&b) == Some(&v.round),
            };
            if !known {
                return Err(VoidReason::UnknownTarget(v.round));
            }
            once_per_round(state, entry)
        }
        Body::CloseVote(v) => {
            let member = single_signer(state, entry, ANY_MEMBER)?;
            state.rounds.check_vote(pos, &member.organisation, v).map_err(VoidReason::Rounds)
        }
        Body::Attestation(a) => {
            let member = single_signer(state, entry, ANY_MEMBER)?;
            let is_contribution = |p| state.contributions.get(&a.round).is_some_and(|c| c.contains(&p));
            state.rounds.check_attestation(&member.organisation, a, is_contribution).map_err(VoidReason::Rounds)
        }
        Body::Snapshot(snapshot) => {
            single_signer(state, entry, ANY_MEMBER)?;
            final_state(state, snapshot.round, &snapshot.state)?;
            once_per_round(state, entry)
        }
        Body::Evaluation(e) => {
            single_signer(state, entry, ANY_MEMBER)?;
            final_state(state, e.round, &e.state)?;
            if state.done_once(entry).is_some() {
                return Err(VoidReason::AlreadyEvaluated(e.round));
            }
            Ok(())
        }
        Body::RosterChange(rc) => {
            for s in &entry.signatures {
                let member = state.roster.get(&s.key).ok_or(VoidReason::UnknownSigner(s.key))?;
                if member.role != Role::Admin {
                    return Err(VoidReason::WrongRole { key: s.key, role: member.role, kind });
                }
            }
            if entry.signatures.len() < usize::from(state.quorum) {
                return Err(VoidReason::NoQuorum { have: entry.signatures.len(), need: state.quorum });
            }
            // Admin keys alone are not enough: one organisation holding `quorum` admin keys must
            // not change the roster (and so the organisations that make up every quorum) alone.
            let admin_orgs = |keys: &mut dyn Iterator<Item = &PublicKey>| -> usize {
                let mut orgs: Vec<&str> =
                    keys.filter_map(|k| state.roster.get(k)).map(|m| m.organisation.as_str()).collect();
                orgs.sort_unstable();
                orgs.dedup();
                orgs.len()
            };
            let have = admin_orgs(&mut entry.signatures.iter().map(|s| &s.key));
            let need = usize::from(state.rounds.quorum())
                .min(admin_orgs(&mut state.roster.values().filter(|m| m.role == Role::Admin).map(|m| &m.key)));
            if have < need {
                return Err(VoidReason::NoOrganisationQuorum { have, need });
            }
            if rc.epoch != state.roster_epoch {
                return Err(VoidReason::StaleEpoch { expected: state.roster_epoch, found: rc.epoch });
            }
            let admins = state.admins();
            match &rc.change {
                Change::Add(m) if state.roster.contains_key(&m.key) => {
                    Err(VoidReason::BadRosterChange("already a member"))
                }
                Change::Add(m) if key::is_weak(&m.key) => Err(VoidReason::BadRosterChange("small-order key")),
                Change::Add(_) if state.roster.len() >= usize::from(crate::entry::MAX_ROSTER_MEMBERS) => {
                    Err(VoidReason::BadRosterChange("roster is full"))
                }
                Change::Add(_) => Ok(()),
                Change::Remove(k) => match state.roster.get(k) {
                    None => Err(VoidReason::BadRosterChange("not a member")),
                    Some(m) if m.role == Role::Admin && admins <= usize::from(state.quorum.max(1)) => {
                        Err(VoidReason::BadRosterChange("would leave fewer admins than the quorum"))
                    }
                    Some(_) if state.organisations_without(k) < usize::from(state.rounds.quorum()) => {
                        Err(VoidReason::BadRosterChange("would leave fewer organisations than the organisation quorum"))
                    }
                    Some(_) => Ok(()),
                },
                Change::SetQuorum(q) if *q == 0 || usize::from(*q) > admins => {
                    Err(VoidReason::BadRosterChange("quorum must be between 1 and the number of admins"))
                }
                Change::SetQuorum(_) => Ok(()),
            }
        }
    }
}

/// Check 9's limit of one contribution, snapshot, or verdict per target, per signer and round, in
/// a run whose genesis sets `once_per_round`.
fn once_per_round(state: &LedgerState, entry: &Entry) -> Result<(), VoidReason> {
    match state.done_once(entry) {
        Some(round) => Err(VoidReason::OncePerRound { kind: entry.body.kind(), round }),
        None => Ok(()),
    }
}

fn check_genesis(g: &Genesis, entry: &Entry) -> Result<(), VoidReason> {
    let admins = g.roster.iter().filter(|m| m.role == Role::Admin).count();
    if admins == 0 {
        return Err(VoidReason::BadGenesis("no admin in the roster"));
    }
    if g.quorum == 0 || usize::from(g.quorum) > admins {
        return Err(VoidReason::BadGenesis("quorum must be between 1 and the number of admins"));
    }
    if g.org_quorum == 0 || usize::from(g.org_quorum) > g.organisations() {
        return Err(VoidReason::BadGenesis("organisation quorum must be between 1 and the number of organisations"));
    }
    if entry.run_id != g.run_id() {
        return Err(VoidReason::BadGenesis("the run id is not the one derived from the genesis body"));
    }
    if g.roster.iter().any(|m| key::is_weak(&m.key)) {
        return Err(VoidReason::BadGenesis("a roster key is small-order"));
    }
    for s in &entry.signatures {
        match g.roster.iter().find(|m| m.key == s.key) {
            None => return Err(VoidReason::UnknownSigner(s.key)),
            Some(m) if m.role != Role::Admin => {
                return Err(VoidReason::WrongRole { key: s.key, role: m.role, kind: Kind::Genesis });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Roles allowed to write votes, attestations and snapshots: every member, since each counts for
/// its organisation and is checked against the round tally.
const ANY_MEMBER: &[Role] = &[Role::Admin, Role::Worker, Role::Validator];

fn single_signer<'a>(state: &'a LedgerState, entry: &Entry, roles: &[Role]) -> Result<&'a Member, VoidReason> {
    let [signed] = entry.signatures.as_slice() else {
        return Err(VoidReason::TooManySigners { count: entry.signatures.len() });
    };
    let member = state.roster.get(&signed.key).ok_or(VoidReason::UnknownSigner(signed.key))?;
    if !roles.contains(&member.role) {
        return Err(VoidReason::WrongRole { key: signed.key, role: member.role, kind: entry.body.kind() });
    }
    Ok(member)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Body, CloseVote, Genesis};
    use crate::id::Seq;
    use crate::id::StateHash;
    use crate::key::Keypair;

    fn at(seq: u64) -> EntryPos {
        EntryPos { seq: Seq(seq), index: 0 }
    }

    /// A one-admin genesis and the run id derived from it.
    fn genesis(admin: &Keypair, quorum: u16) -> (RunId, Vec<u8>) {
        let roster = vec![Member { key: admin.public(), organisation: "a".into(), role: Role::Admin }];
        let g = Genesis::new(vec![], roster, quorum, StateHash([0; 32]), BlobId([0; 32]), 0);
        let run = g.run_id();
        (run, Entry::sign(run, Body::Genesis(g), &[admin]).unwrap().encode())
    }

    #[test]
    fn garbage_is_void_and_nothing_counts_before_genesis() {
        let admin = Keypair::from_seed([1; 32]);
        let (run, good) = genesis(&admin, 1);
        let mut state = LedgerState::new(run);
        assert!(matches!(
            validate(&state, RawEntry { pos: at(0), bytes: b"junk" }),
            Validity::Void(VoidReason::Malformed(_))
        ));
        let close =
            Entry::sign(run, Body::CloseVote(CloseVote { round: Round(0), seen: Seq(1) }), &[&admin]).unwrap().encode();
        assert_eq!(validate(&state, RawEntry { pos: at(0), bytes: &close }), Validity::Void(VoidReason::NoGenesis));
        // A zero quorum, and a genesis signed for a run id that is not derived from its body.
        let (other_run, bad) = genesis(&admin, 0);
        assert!(matches!(
            validate(&LedgerState::new(other_run), RawEntry { pos: at(0), bytes: &bad }),
            Validity::Void(VoidReason::BadGenesis(_))
        ));
        let roster = vec![Member { key: admin.public(), organisation: "a".into(), role: Role::Admin }];
        let g = Genesis::new(vec![], roster, 1, StateHash([0; 32]), BlobId([0; 32]), 0);
        let chosen = Entry::sign(RunId([1; 32]), Body::Genesis(g), &[&admin]).unwrap().encode();
        assert_eq!(
            validate(&LedgerState::new(RunId([1; 32])), RawEntry { pos: at(0), bytes: &chosen }),
            Validity::Void(VoidReason::BadGenesis("the run id is not the one derived from the genesis body"))
        );
        assert_eq!(
            validate(&state, RawEntry { pos: at(1), bytes: &good }),
            Validity::Void(VoidReason::GenesisNotFirst)
        );
        assert_eq!(state.apply(RawEntry { pos: at(0), bytes: &good }).0, Validity::Accept);
        assert_eq!(validate(&state, RawEntry { pos: at(1), bytes: &close }), Validity::Accept);
        assert_eq!(state.apply(RawEntry { pos: at(1), bytes: &close }).0, Validity::Accept);
        assert_eq!(validate(&state, RawEntry { pos: at(2), bytes: &close }), Validity::Void(VoidReason::Duplicate));
    }

    fn contribution(run: RunId, worker: &Keypair, round: u64) -> Vec<u8> {
        let c = crate::entry::Contribution {
            round: Round(round),
            base_state: StateHash([0; 32]),
            assignment: vec![],
            blob: BlobId([round as u8; 32]),
            blob_size: 1,
            metrics: vec![],
        };
        Entry::sign(run, Body::Contribution(c), &[worker]).unwrap().encode()
    }

    /// The verdicts of a slot, with its signatures checked one by one, and as one batch.
    fn both_paths(state: &LedgerState, slot: &[Vec<u8>]) -> (Vec<Validity>, Vec<Validity>) {
        let (mut single, mut batch) = (state.clone(), state.clone());
        let raws: Vec<&[u8]> = slot.iter().map(Vec::as_slice).collect();
        let checked = Checked::batch(&raws);
        let mut by_single = vec![];
        let mut by_batch = vec![];
        for (index, (raw, checked)) in raws.iter().zip(checked).enumerate() {
            let pos = EntryPos { seq: Seq(1), index: index as u16 };
            assert_eq!(
                checked.as_ref().map(|c| &c.bad_signers).ok(),
                Checked::single(raw).as_ref().map(|c| &c.bad_signers).ok()
            );
            assert_eq!(validate_checked(&batch, pos, &checked), validate(&batch, RawEntry { pos, bytes: raw }));
            by_single.push(single.apply(RawEntry { pos, bytes: raw }).0);
            by_batch.push(batch.apply_checked(pos, checked).0);
        }
        (by_single, by_batch)
    }

    #[test]
    fn a_batch_with_one_bad_signature_voids_only_that_entry_as_single_checks_do() {
        let admin = Keypair::from_seed([1; 32]);
        let worker = Keypair::from_seed([2; 32]);
        let stranger = Keypair::from_seed([3; 32]);
        let roster = vec![
            Member { key: admin.public(), organisation: "a".into(), role: Role::Admin },
            Member { key: worker.public(), organisation: "a".into(), role: Role::Worker },
        ];
        let g = Genesis::new(vec![], roster, 1, StateHash([0; 32]), BlobId([0; 32]), 0);
        let run = g.run_id();
        let mut state = LedgerState::new(run);
        let g = Entry::sign(run, Body::Genesis(g), &[&admin]).unwrap().encode();
        assert_eq!(state.apply(RawEntry { pos: at(0), bytes: &g }).0, Validity::Accept);

        let good: Vec<Vec<u8>> = (0..8).map(|r| contribution(run, &worker, r)).collect();
        let (single, batch) = both_paths(&state, &good);
        assert_eq!(single, batch);
        assert!(single.iter().all(Validity::is_accept));

        // The last 64 bytes of a one-signature entry are its signature: R, then S.
        let corruptions: [fn(&mut Vec<u8>); 3] = [
            |e| {
                let n = e.len();
                e[n - 64] ^= 1; // R
            },
            |e| {
                let n = e.len();
                e[n - 20] ^= 1; // S
            },
            |e| {
                let n = e.len();
                e[n - 1] = 0xff; // S >= l: not canonical
            },
        ];
        for bad in 0..good.len() {
            for corrupt in corruptions {
                let mut slot = good.clone();
                corrupt(&mut slot[bad]);
                // Garbage, a stranger and a duplicate ride along, to be void for their own reasons.
                slot.push(b"junk".to_vec());
                slot.push(contribution(run, &stranger, 99));
                slot.push(good[0].clone());
                let (single, batch) = both_paths(&state, &slot);
                assert_eq!(single, batch, "bad signature at {bad}");
                for (i, v) in single.iter().enumerate().take(good.len()) {
                    if i == bad {
                        assert_eq!(*v, Validity::Void(VoidReason::BadSignature(worker.public())));
                    } else {
                        assert_eq!(*v, Validity::Accept, "entry {i}");
                    }
                }
                assert!(matches!(single[good.len()], Validity::Void(VoidReason::Malformed(_))));
                assert_eq!(single[good.len() + 1], Validity::Void(VoidReason::UnknownSigner(stranger.public())));
                let dup = if bad == 0 { Validity::Accept } else { Validity::Void(VoidReason::Duplicate) };
                assert_eq!(single[good.len() + 2], dup);
            }
        }
    }

    /// A small-order key would "sign" everything under ZIP-215: no roster may hold one.
    #[test]
    fn small_order_keys_cannot_join_a_roster() {
        let admin = Keypair::from_seed([1; 32]);
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = Member { key: PublicKey(identity), organisation: "w".into(), role: Role::Worker };
        let mut roster = vec![Member { key: admin.public(), organisation: "a".into(), role: Role::Admin }];
        roster.push(weak.clone());
        let g = Genesis::new(vec![], roster, 1, StateHash([0; 32]), BlobId([0; 32]), 0);
        let weak_run = g.run_id();
        let g = Entry::sign(weak_run, Body::Genesis(g), &[&admin]).unwrap().encode();
        let state = LedgerState::new(weak_run);
        assert_eq!(
            validate(&state, RawEntry { pos: at(0), bytes: &g }),
            Validity::Void(VoidReason::BadGenesis("a roster key is small-order"))
        );
        let (run, good) = genesis(&admin, 1);
        let mut state = LedgerState::new(run);
        assert_eq!(state.apply(RawEntry { pos: at(0), bytes: &good }).0, Validity::Accept);
        let add = crate::entry::RosterChange { epoch: 0, change: Change::Add(weak) };
        let add = Entry::sign(run, Body::RosterChange(add), &[&admin]).unwrap().encode();
        assert_eq!(
            validate(&state, RawEntry { pos: at(1), bytes: &add }),
            Validity::Void(VoidReason::BadRosterChange("small-order key"))
        );
    }
}
