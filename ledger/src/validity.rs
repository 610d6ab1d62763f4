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
//! 4. every signature verifies (strict ed25519) ([`VoidReason::BadSignature`]);
//! 5. the signed message was not accepted before ([`VoidReason::Duplicate`]);
//! 6. the signers are members whose role allows the kind, in the right number
//!    (table below; RosterChange: at least `quorum` admins, at the current epoch);
//! 7. kind rules: no contribution to a closed round, one RoundClose per round, a verdict names an
//!    accepted contribution of its round, roster changes keep at least `quorum` admins.
//!
//! ```text
//!   Genesis       signers: admins of its own roster (>= 1)
//!   Contribution  one signer, worker
//!   Verdict       one signer, validator
//!   RoundClose    one signer, admin or validator
//!   Snapshot      one signer, admin or validator
//!   RosterChange  >= quorum signers, all admins
//! ```
//!
//! No clock, no environment, no IO: two readers with the same prefix reach the same verdicts.

use std::collections::{BTreeMap, HashMap, HashSet};

use storage::BlobId;

use crate::entry::{Body, Change, Entry, Genesis, Kind, Member, Role, Target};
use crate::error::DecodeError;
use crate::id::{EntryPos, Round, RunId, StateHash};
use crate::key::PublicKey;

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
    /// A second RoundClose for one round.
    #[error("round {0} was already closed")]
    AlreadyClosed(Round),
    /// A verdict for something that is not an accepted contribution of its round.
    #[error("verdict target is not an accepted contribution of round {0}")]
    UnknownTarget(Round),
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
    seen: HashSet<[u8; 32]>,
    closed: BTreeMap<Round, (EntryPos, StateHash)>,
    contributions: HashMap<EntryPos, Round>,
    contribution_blobs: HashMap<BlobId, Round>,
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
            closed: BTreeMap::new(),
            contributions: HashMap::new(),
            contribution_blobs: HashMap::new(),
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

    /// The accepted RoundClose of `round`: where it is and the state it claims.
    pub fn round_close(&self, round: Round) -> Option<(EntryPos, StateHash)> {
        self.closed.get(&round).copied()
    }

    fn admins(&self) -> usize {
        self.roster.values().filter(|m| m.role == Role::Admin).count()
    }

    /// Runs the validity rule on `raw` and, if it is accepted, applies it. Returns the verdict
    /// and the decoded entry (when it decodes, void or not).
    pub fn apply(&mut self, raw: RawEntry<'_>) -> (Validity, Option<Entry>) {
        let entry = match Entry::decode(raw.bytes) {
            Ok(e) => e,
            Err(e) => return (Validity::Void(VoidReason::Malformed(e)), None),
        };
        let message = entry.signed_message();
        let digest = *blake3::hash(&message).as_bytes();
        match check(self, raw.pos, &entry, &message, &digest) {
            Err(reason) => (Validity::Void(reason), Some(entry)),
            Ok(()) => {
                self.accept(raw.pos, &entry, digest);
                (Validity::Accept, Some(entry))
            }
        }
    }

    fn accept(&mut self, pos: EntryPos, entry: &Entry, digest: [u8; 32]) {
        self.seen.insert(digest);
        match &entry.body {
            Body::Genesis(g) => {
                self.roster = g.roster.iter().map(|m| (m.key, m.clone())).collect();
                self.quorum = g.quorum;
                self.genesis = Some(g.clone());
            }
            Body::Contribution(c) => {
                self.contributions.insert(pos, c.round);
                self.contribution_blobs.entry(c.blob).or_insert(c.round);
            }
            Body::RoundClose(rc) => {
                self.closed.insert(rc.round, (pos, rc.state));
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
            Body::Verdict(_) | Body::Snapshot(_) => {}
        }
    }
}

/// The validity rule: whether `raw` counts, given the prefix summarised by `state`.
pub fn validate(state: &LedgerState, raw: RawEntry<'_>) -> Validity {
    match Entry::decode(raw.bytes) {
        Err(e) => Validity::Void(VoidReason::Malformed(e)),
        Ok(entry) => {
            let message = entry.signed_message();
            match check(state, raw.pos, &entry, &message, blake3::hash(&message).as_bytes()) {
                Ok(()) => Validity::Accept,
                Err(reason) => Validity::Void(reason),
            }
        }
    }
}

fn check(
    state: &LedgerState,
    pos: EntryPos,
    entry: &Entry,
    message: &[u8],
    digest: &[u8; 32],
) -> Result<(), VoidReason> {
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
    if let Some(bad) = entry.bad_signers_of(message).first() {
        return Err(VoidReason::BadSignature(*bad));
    }
    if state.seen.contains(digest) {
        return Err(VoidReason::Duplicate);
    }
    match &entry.body {
        Body::Genesis(g) => check_genesis(g, entry),
        Body::Contribution(c) => {
            single_signer(state, entry, &[Role::Worker])?;
            if state.closed.contains_key(&c.round) {
                return Err(VoidReason::RoundClosed(c.round));
            }
            Ok(())
        }
        Body::Verdict(v) => {
            single_signer(state, entry, &[Role::Validator])?;
            let round = match v.target {
                Target::Entry(p) => state.contributions.get(&p),
                Target::Blob(b) => state.contribution_blobs.get(&b),
            };
            if round != Some(&v.round) {
                return Err(VoidReason::UnknownTarget(v.round));
            }
            Ok(())
        }
        Body::RoundClose(rc) => {
            single_signer(state, entry, &[Role::Admin, Role::Validator])?;
            if state.closed.contains_key(&rc.round) {
                return Err(VoidReason::AlreadyClosed(rc.round));
            }
            Ok(())
        }
        Body::Snapshot(_) => single_signer(state, entry, &[Role::Admin, Role::Validator]),
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
            if rc.epoch != state.roster_epoch {
                return Err(VoidReason::StaleEpoch { expected: state.roster_epoch, found: rc.epoch });
            }
            let admins = state.admins();
            match &rc.change {
                Change::Add(m) if state.roster.contains_key(&m.key) => {
                    Err(VoidReason::BadRosterChange("already a member"))
                }
                Change::Add(_) if state.roster.len() >= usize::from(crate::entry::MAX_ROSTER_MEMBERS) => {
                    Err(VoidReason::BadRosterChange("roster is full"))
                }
                Change::Add(_) => Ok(()),
                Change::Remove(k) => match state.roster.get(k) {
                    None => Err(VoidReason::BadRosterChange("not a member")),
                    Some(m) if m.role == Role::Admin && admins <= usize::from(state.quorum.max(1)) => {
                        Err(VoidReason::BadRosterChange("would leave fewer admins than the quorum"))
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

fn check_genesis(g: &Genesis, entry: &Entry) -> Result<(), VoidReason> {
    let admins = g.roster.iter().filter(|m| m.role == Role::Admin).count();
    if admins == 0 {
        return Err(VoidReason::BadGenesis("no admin in the roster"));
    }
    if g.quorum == 0 || usize::from(g.quorum) > admins {
        return Err(VoidReason::BadGenesis("quorum must be between 1 and the number of admins"));
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

fn single_signer(state: &LedgerState, entry: &Entry, roles: &[Role]) -> Result<(), VoidReason> {
    let [signed] = entry.signatures.as_slice() else {
        return Err(VoidReason::TooManySigners { count: entry.signatures.len() });
    };
    let member = state.roster.get(&signed.key).ok_or(VoidReason::UnknownSigner(signed.key))?;
    if !roles.contains(&member.role) {
        return Err(VoidReason::WrongRole { key: signed.key, role: member.role, kind: entry.body.kind() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Body, Genesis, RoundClose};
    use crate::id::Seq;
    use crate::key::Keypair;

    fn at(seq: u64) -> EntryPos {
        EntryPos { seq: Seq(seq), index: 0 }
    }

    fn genesis(run: RunId, admin: &Keypair, quorum: u16) -> Vec<u8> {
        let roster = vec![Member { key: admin.public(), organisation: "a".into(), role: Role::Admin }];
        let g = Genesis::new(vec![], roster, quorum, StateHash([0; 32]), BlobId([0; 32]), 0);
        Entry::sign(run, Body::Genesis(g), &[admin]).unwrap().encode()
    }

    #[test]
    fn garbage_is_void_and_nothing_counts_before_genesis() {
        let run = RunId([1; 32]);
        let admin = Keypair::from_seed([1; 32]);
        let mut state = LedgerState::new(run);
        assert!(matches!(
            validate(&state, RawEntry { pos: at(0), bytes: b"junk" }),
            Validity::Void(VoidReason::Malformed(_))
        ));
        let close =
            Entry::sign(run, Body::RoundClose(RoundClose { round: Round(0), state: StateHash([0; 32]) }), &[&admin])
                .unwrap()
                .encode();
        assert_eq!(validate(&state, RawEntry { pos: at(0), bytes: &close }), Validity::Void(VoidReason::NoGenesis));
        let bad = genesis(run, &admin, 0);
        assert!(matches!(
            validate(&state, RawEntry { pos: at(0), bytes: &bad }),
            Validity::Void(VoidReason::BadGenesis(_))
        ));
        let good = genesis(run, &admin, 1);
        assert_eq!(
            validate(&state, RawEntry { pos: at(1), bytes: &good }),
            Validity::Void(VoidReason::GenesisNotFirst)
        );
        assert_eq!(state.apply(RawEntry { pos: at(0), bytes: &good }).0, Validity::Accept);
        assert_eq!(validate(&state, RawEntry { pos: at(1), bytes: &close }), Validity::Accept);
        assert_eq!(state.apply(RawEntry { pos: at(1), bytes: &close }).0, Validity::Accept);
        assert_eq!(validate(&state, RawEntry { pos: at(2), bytes: &close }), Validity::Void(VoidReason::Duplicate));
    }
}
