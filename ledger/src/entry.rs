//! Ledger entries: the signed envelope and the seven kinds of body, in their one canonical encoding.
//!
//! ```text
//!   entry     = version:u8 (=2) | kind:u8 | run_id:[32] | body_len:u32 | body
//!               | sig_count:u8 (1..=MAX_SIGNATURES) | (public_key:[32] | signature:[64]) * sig_count
//!   signed    = "cairn-entry/v2" | run_id | version | kind | body_len | body
//! ```
//!
//! Signatures are sorted by public key, strictly ascending (so no key signs twice), and each one
//! covers the same `signed` message. Integers are big-endian; every list has an explicit count
//! and a hard bound; no maps, no floats. The bodies, by kind:
//!
//! ```text
//!   1 Genesis       config:bytes32(<=MAX_CONFIG_BYTES) | member_count:u16 | member*  (sorted by key)
//!                   | quorum:u16 | org_quorum:u16 | initial_state:[32] | snapshot:[32] | snapshot_size:u64
//!                   | salt:[16] | [window:u32 (>= 1), present only when the run has a window]
//!                   | [once_per_round:u8 (= 1), present only when set, and then after a window]
//!       member      = key:[32] | organisation:str8(1..=MAX_ORG_BYTES) | role:u8 (1 admin, 2 worker, 3 validator)
//!       run id      = blake3 derive_key("cairn run id v2", genesis body)
//!   2 Contribution  round:u64 | base_state:[32] | assignment:bytes16(<=MAX_ASSIGNMENT_BYTES)
//!                   | blob:[32] | blob_size:u64 | metric_count:u8 | (name:str8 | value:i64)*  (sorted by name)
//!   3 Verdict       round:u64 | target_tag:u8 (1 entry: seq:u64 | index:u16, 2 blob: [32]) | score:i64
//!   4 CloseVote     round:u64 | seen:u64
//!   5 Snapshot      round:u64 | state:[32] | blob:[32] | blob_size:u64
//!   6 RosterChange  epoch:u64 | change_tag:u8 (1 add: member, 2 remove: key:[32], 3 quorum: u16)
//!   7 Attestation   round:u64 | state:[32] | dropped_count:u16 (<= MAX_DROPPED)
//!                   | (seq:u64 | index:u16) * dropped_count  (sorted, strictly ascending)
//!   8 Evaluation    round:u64 | state:[32] | sequences:u32 (1..=MAX_EVAL_SEQUENCES) | loss_milli:i64
//! ```
//!
//! The decoder refuses anything that would not re-encode to the same bytes: unknown version or
//! kind, short or trailing bytes, lengths over their bound, unsorted lists, invalid UTF-8.

use storage::BlobId;

use crate::error::{DecodeError, LedgerError, Result};
use crate::id::{EntryPos, Round, RunId, Seq, StateHash};
use crate::key::{ENTRY_DOMAIN, Keypair, PublicKey, Signature, verify};
use crate::wire::{Reader, Writer};

/// The entry format version this crate reads and writes (2: closes by a quorum of organisations).
pub const ENTRY_VERSION: u8 = 2;
/// Largest encoded entry, signatures included.
pub const MAX_ENTRY_BYTES: u32 = 256 * 1024;
/// Largest opaque run configuration in a Genesis entry.
pub const MAX_CONFIG_BYTES: u32 = 128 * 1024;
/// Most members in a roster.
pub const MAX_ROSTER_MEMBERS: u16 = 1024;
/// Longest organisation name, in UTF-8 bytes.
pub const MAX_ORG_BYTES: u8 = 64;
/// Most signatures on one entry.
pub const MAX_SIGNATURES: u8 = 64;
/// Longest data assignment in a Contribution.
pub const MAX_ASSIGNMENT_BYTES: u16 = 1024;
/// Most metrics in a Contribution.
pub const MAX_METRICS: u8 = 32;
/// Longest metric name, in UTF-8 bytes.
pub const MAX_METRIC_NAME_BYTES: u8 = 32;
/// Most contributions one Attestation may drop (the most a round can count).
pub const MAX_DROPPED: u16 = 4096;
/// Most held-out sequences an Evaluation may name.
pub const MAX_EVAL_SEQUENCES: u32 = 1 << 20;
/// The key-derivation context of a run id (see [`Genesis::run_id`]).
pub const RUN_ID_CONTEXT: &str = "cairn run id v2";

/// What a member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Changes the roster (with a quorum of admins); like every member, may close rounds and write snapshots.
    Admin,
    /// Trains and contributes.
    Worker,
    /// Scores contributions (and, like every member, may close rounds).
    Validator,
}

impl Role {
    fn tag(self) -> u8 {
        match self {
            Role::Admin => 1,
            Role::Worker => 2,
            Role::Validator => 3,
        }
    }

    /// The name used in configs and on the command line: `admin`, `worker`, `validator`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Worker => "worker",
            Role::Validator => "validator",
        }
    }

    /// From its [`Role::name`].
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Admin, Role::Worker, Role::Validator].into_iter().find(|r| r.name() == name)
    }

    fn from_tag(tag: u8) -> Result<Role, DecodeError> {
        match tag {
            1 => Ok(Role::Admin),
            2 => Ok(Role::Worker),
            3 => Ok(Role::Validator),
            tag => Err(DecodeError::UnknownTag { what: "role", tag }),
        }
    }
}

/// One roster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its key.
    pub key: PublicKey,
    /// The organisation it belongs to (1 to [`MAX_ORG_BYTES`] bytes of UTF-8).
    pub organisation: String,
    /// What it may do.
    pub role: Role,
}

/// The first entry of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    /// The run configuration, canonical bytes owned by verify/trainer; opaque here.
    pub config: Vec<u8>,
    /// The initial roster, sorted by key (see [`Genesis::new`]).
    pub roster: Vec<Member>,
    /// Admin signatures a RosterChange needs.
    pub quorum: u16,
    /// The run's quorum of organisations: how many distinct organisations must vote to close a
    /// round, attest its state, fail a contribution, or sign a checkpoint an audit relies on.
    pub org_quorum: u16,
    /// Hash of the initial model state.
    pub initial_state: StateHash,
    /// Snapshot blob of the initial state.
    pub snapshot: BlobId,
    /// Its size in bytes.
    pub snapshot_size: u64,
    /// Random bytes chosen when the run is created, so that two runs started from the same
    /// config, roster and state still get different run ids.
    pub salt: [u8; 16],
    /// The window of rounds, 0 for none: when it is `w`, an entry naming a round more than `w`
    /// rounds from the open round is void, so a participant may forget every round older than
    /// `w` rounds before the open one (see [`crate::validity`]). Encoded only when non-zero, so a
    /// genesis without one has the bytes it had before the field existed.
    pub window: u32,
    /// Check 9's limits of one accepted contribution, snapshot, and verdict per target, per signer
    /// and round ([`crate::validity::VoidReason::OncePerRound`]), which bound what a round holds.
    /// Only with a window (a genesis with it and no window does not decode). Encoded only when
    /// set, so windowed runs made before the limits existed keep their bytes and their verdicts.
    pub once_per_round: bool,
}

impl Genesis {
    /// A genesis body with the roster put in canonical order, an organisation quorum of 1, a
    /// zero salt and no window (set these fields for a real run).
    pub fn new(
        config: Vec<u8>,
        mut roster: Vec<Member>,
        quorum: u16,
        initial_state: StateHash,
        snapshot: BlobId,
        snapshot_size: u64,
    ) -> Genesis {
        roster.sort_by_key(|m| m.key);
        Genesis {
            config,
            roster,
            quorum,
            org_quorum: 1,
            initial_state,
            snapshot,
            snapshot_size,
            salt: [0; 16],
            window: 0,
            once_per_round: false,
        }
    }

    /// The run id: derived from the body, so it names exactly this genesis (its config, roster,
    /// quorums, initial state and salt). A Genesis entry signed for another id is void.
    pub fn run_id(&self) -> RunId {
        RunId(blake3::derive_key(RUN_ID_CONTEXT, &Body::Genesis(self.clone()).encode()))
    }

    /// The distinct organisations of the roster.
    pub fn organisations(&self) -> usize {
        let mut orgs: Vec<&str> = self.roster.iter().map(|m| m.organisation.as_str()).collect();
        orgs.sort_unstable();
        orgs.dedup();
        orgs.len()
    }
}

/// A worker's update for one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The round.
    pub round: Round,
    /// The state the update was computed from.
    pub base_state: StateHash,
    /// The data assignment it trained on (format owned by trainer).
    pub assignment: Vec<u8>,
    /// The update blob.
    pub blob: BlobId,
    /// Its size in bytes.
    pub blob_size: u64,
    /// Local metrics as integers (e.g. `loss_milli`), sorted by name, names unique.
    pub metrics: Vec<(String, i64)>,
}

/// What a verdict scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The entry at this position.
    Entry(EntryPos),
    /// The contribution with this blob.
    Blob(BlobId),
}

/// A validator's score for a contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The round of the contribution.
    pub round: Round,
    /// The contribution.
    pub target: Target,
    /// The score (an integer; units owned by verify).
    pub score: i64,
}

/// One organisation's vote to close the open round: its author's clock says the round's deadline
/// passed, and it has read every slot below `seen`. The round closes at the vote that brings the
/// voting organisations to the run's quorum; its cut is the largest `seen` among those votes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseVote {
    /// The round (only the open round accepts votes).
    pub round: Round,
    /// The voter has read every slot below this one (at most the vote's own slot).
    pub seen: Seq,
}

/// One organisation's attestation of a closed round's result: applying the round's counted
/// contributions, less those in `dropped` (whose blobs its author could not read), gives `state`.
/// The round becomes final at the attestation that brings the organisations whose latest
/// attestations agree to the run's quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The round (closed, not yet final).
    pub round: Round,
    /// The state after the round.
    pub state: StateHash,
    /// Contributions of the round, before its cut, left out because no copy of their blob could
    /// be read; sorted, strictly ascending.
    pub dropped: Vec<EntryPos>,
}

/// The held-out loss of a final round's state: the mean next-token loss of the model at `state`
/// over the first `sequences` held-out sequences of the run's data, in milli-nats. Anyone with the
/// store can compute it again (`cairn eval`); the ledger only checks that it names a final round
/// and that round's attested state, once per signer and round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The round whose result was evaluated.
    pub round: Round,
    /// That result's state.
    pub state: StateHash,
    /// Held-out sequences evaluated (the first ones of the run's held-out set).
    pub sequences: u32,
    /// The mean loss, in milli-nats.
    pub loss_milli: i64,
}

/// A stored model state to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The round it is the state after.
    pub round: Round,
    /// Its state hash.
    pub state: StateHash,
    /// The blob.
    pub blob: BlobId,
    /// Its size in bytes.
    pub blob_size: u64,
}

/// One roster change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Adds a member.
    Add(Member),
    /// Removes a member.
    Remove(PublicKey),
    /// Sets the number of admin signatures a roster change needs.
    SetQuorum(u16),
}

/// A roster change, signed by a quorum of admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterChange {
    /// How many roster changes were accepted before this one; binds the signatures to one
    /// roster so that a change cannot be replayed later.
    pub epoch: u64,
    /// The change.
    pub change: Change,
}

/// The body of an entry, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// See [`Genesis`].
    Genesis(Genesis),
    /// See [`Contribution`].
    Contribution(Contribution),
    /// See [`Verdict`].
    Verdict(Verdict),
    /// See [`CloseVote`].
    CloseVote(CloseVote),
    /// See [`Snapshot`].
    Snapshot(Snapshot),
    /// See [`RosterChange`].
    RosterChange(RosterChange),
    /// See [`Attestation`].
    Attestation(Attestation),
    /// See [`Evaluation`].
    Evaluation(Evaluation),
}

/// The kind of an entry, as its tag byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Tag 1.
    Genesis,
    /// Tag 2.
    Contribution,
    /// Tag 3.
    Verdict,
    /// Tag 4.
    CloseVote,
    /// Tag 5.
    Snapshot,
    /// Tag 6.
    RosterChange,
    /// Tag 7.
    Attestation,
    /// Tag 8.
    Evaluation,
}

impl Kind {
    /// The tag byte.
    pub fn tag(self) -> u8 {
        match self {
            Kind::Genesis => 1,
            Kind::Contribution => 2,
            Kind::Verdict => 3,
            Kind::CloseVote => 4,
            Kind::Snapshot => 5,
            Kind::RosterChange => 6,
            Kind::Attestation => 7,
            Kind::Evaluation => 8,
        }
    }

    fn from_tag(tag: u8) -> Result<Kind, DecodeError> {
        Ok(match tag {
            1 => Kind::Genesis,
            2 => Kind::Contribution,
            3 => Kind::Verdict,
            4 => Kind::CloseVote,
            5 => Kind::Snapshot,
            6 => Kind::RosterChange,
            7 => Kind::Attestation,
            8 => Kind::Evaluation,
            tag => return Err(DecodeError::UnknownTag { what: "entry kind", tag }),
        })
    }

    /// A lowercase name, for logs and exports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Genesis => "genesis",
            Kind::Contribution => "contribution",
            Kind::Verdict => "verdict",
            Kind::CloseVote => "close_vote",
            Kind::Snapshot => "snapshot",
            Kind::RosterChange => "roster_change",
            Kind::Attestation => "attestation",
            Kind::Evaluation => "evaluation",
        }
    }
}

impl Body {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Genesis(_) => Kind::Genesis,
            Body::Contribution(_) => Kind::Contribution,
            Body::Verdict(_) => Kind::Verdict,
            Body::CloseVote(_) => Kind::CloseVote,
            Body::Snapshot(_) => Kind::Snapshot,
            Body::RosterChange(_) => Kind::RosterChange,
            Body::Attestation(_) => Kind::Attestation,
            Body::Evaluation(_) => Kind::Evaluation,
        }
    }

    /// The round the entry belongs to, for kinds that have one.
    pub fn round(&self) -> Option<Round> {
        match self {
            Body::Contribution(c) => Some(c.round),
            Body::Verdict(v) => Some(v.round),
            Body::CloseVote(v) => Some(v.round),
            Body::Snapshot(s) => Some(s.round),
            Body::Attestation(a) => Some(a.round),
            Body::Evaluation(e) => Some(e.round),
            Body::Genesis(_) | Body::RosterChange(_) => None,
        }
    }

    /// The blob the entry references, for kinds that have one.
    pub fn blob(&self) -> Option<(BlobId, u64)> {
        match self {
            Body::Genesis(g) => Some((g.snapshot, g.snapshot_size)),
            Body::Contribution(c) => Some((c.blob, c.blob_size)),
            Body::Snapshot(s) => Some((s.blob, s.blob_size)),
            Body::Verdict(_)
            | Body::CloseVote(_)
            | Body::RosterChange(_)
            | Body::Attestation(_)
            | Body::Evaluation(_) => None,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Body::Genesis(g) => {
                w.bytes32(&g.config).u16(u16::try_from(g.roster.len()).unwrap_or(u16::MAX));
                for m in &g.roster {
                    encode_member(&mut w, m);
                }
                w.u16(g.quorum).u16(g.org_quorum).raw(&g.initial_state.0).raw(&g.snapshot.0).u64(g.snapshot_size);
                w.raw(&g.salt);
                if g.window != 0 || g.once_per_round {
                    w.u32(g.window);
                }
                if g.once_per_round {
                    w.u8(1);
                }
            }
            Body::Contribution(c) => {
                w.u64(c.round.0).raw(&c.base_state.0).bytes16(&c.assignment).raw(&c.blob.0).u64(c.blob_size);
                w.u8(u8::try_from(c.metrics.len()).unwrap_or(u8::MAX));
                for (name, value) in &c.metrics {
                    w.bytes8(name.as_bytes()).i64(*value);
                }
            }
            Body::Verdict(v) => {
                w.u64(v.round.0);
                match v.target {
                    Target::Entry(pos) => w.u8(1).u64(pos.seq.0).u16(pos.index),
                    Target::Blob(blob) => w.u8(2).raw(&blob.0),
                };
                w.i64(v.score);
            }
            Body::CloseVote(v) => {
                w.u64(v.round.0).u64(v.seen.0);
            }
            Body::Attestation(a) => {
                w.u64(a.round.0).raw(&a.state.0).u16(u16::try_from(a.dropped.len()).unwrap_or(u16::MAX));
                for p in &a.dropped {
                    w.u64(p.seq.0).u16(p.index);
                }
            }
            Body::Snapshot(s) => {
                w.u64(s.round.0).raw(&s.state.0).raw(&s.blob.0).u64(s.blob_size);
            }
            Body::Evaluation(e) => {
                w.u64(e.round.0).raw(&e.state.0).u32(e.sequences).i64(e.loss_milli);
            }
            Body::RosterChange(rc) => {
                w.u64(rc.epoch);
                match &rc.change {
                    Change::Add(m) => encode_member(w.u8(1), m),
                    Change::Remove(key) => {
                        w.u8(2).raw(&key.0);
                    }
                    Change::SetQuorum(q) => {
                        w.u8(3).u16(*q);
                    }
                }
            }
        }
        w.finish()
    }

    fn decode(kind: Kind, bytes: &[u8]) -> Result<Body, DecodeError> {
        let mut r = Reader::new(bytes);
        let body = match kind {
            Kind::Genesis => {
                let config = r.field("config").bytes32(MAX_CONFIG_BYTES.into())?.to_vec();
                let count = r.field("member count").u16()?;
                if count > MAX_ROSTER_MEMBERS {
                    return Err(DecodeError::TooLong {
                        field: "roster",
                        len: count.into(),
                        max: MAX_ROSTER_MEMBERS.into(),
                    });
                }
                let mut roster = Vec::with_capacity(count.into());
                for _ in 0..count {
                    roster.push(decode_member(&mut r)?);
                }
                if !roster.windows(2).all(|w| matches!(w, [a, b] if a.key < b.key)) {
                    return Err(DecodeError::NotSorted { field: "roster" });
                }
                let quorum = r.field("quorum").u16()?;
                let org_quorum = r.field("organisation quorum").u16()?;
                let initial_state = StateHash(r.field("initial state").array()?);
                let snapshot = BlobId(r.field("snapshot").array()?);
                let snapshot_size = r.field("snapshot size").u64()?;
                let salt = r.field("salt").array()?;
                // The window is the one optional field: absent means none, and a zero written
                // out would be a second encoding of "none".
                let window = match r.is_empty() {
                    true => 0,
                    false => match r.field("window").u32()? {
                        0 => {
                            return Err(DecodeError::OutOfRange {
                                field: "window",
                                reason: "zero is written by leaving it out",
                            });
                        }
                        w => w,
                    },
                };
                // Then the limits, only after a window (so "present" means exactly "set").
                let once_per_round = match r.is_empty() {
                    true => false,
                    false => match r.field("once per round").u8()? {
                        1 => true,
                        _ => {
                            return Err(DecodeError::OutOfRange {
                                field: "once per round",
                                reason: "1 when set; unset is written by leaving it out",
                            });
                        }
                    },
                };
                Body::Genesis(Genesis {
                    config,
                    roster,
                    quorum,
                    org_quorum,
                    initial_state,
                    snapshot,
                    snapshot_size,
                    salt,
                    window,
                    once_per_round,
                })
            }
            Kind::Contribution => {
                let round = Round(r.field("round").u64()?);
                let base_state = StateHash(r.field("base state").array()?);
                let assignment = r.field("assignment").bytes16(MAX_ASSIGNMENT_BYTES.into())?.to_vec();
                let blob = BlobId(r.field("blob").array()?);
                let blob_size = r.field("blob size").u64()?;
                let count = r.field("metric count").u8()?;
                if count > MAX_METRICS {
                    return Err(DecodeError::TooLong { field: "metrics", len: count.into(), max: MAX_METRICS.into() });
                }
                let mut metrics = Vec::with_capacity(count.into());
                for _ in 0..count {
                    let name = r.field("metric name").str8(MAX_METRIC_NAME_BYTES.into())?;
                    let value = r.field("metric value").i64()?;
                    metrics.push((name, value));
                }
                if !metrics.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)) {
                    return Err(DecodeError::NotSorted { field: "metrics" });
                }
                Body::Contribution(Contribution { round, base_state, assignment, blob, blob_size, metrics })
            }
            Kind::Verdict => {
                let round = Round(r.field("round").u64()?);
                let target = match r.field("target tag").u8()? {
                    1 => Target::Entry(EntryPos { seq: Seq(r.field("target seq").u64()?), index: r.u16()? }),
                    2 => Target::Blob(BlobId(r.field("target blob").array()?)),
                    tag => return Err(DecodeError::UnknownTag { what: "verdict target", tag }),
                };
                let score = r.field("score").i64()?;
                Body::Verdict(Verdict { round, target, score })
            }
            Kind::CloseVote => {
                let round = Round(r.field("round").u64()?);
                let seen = Seq(r.field("seen").u64()?);
                Body::CloseVote(CloseVote { round, seen })
            }
            Kind::Attestation => {
                let round = Round(r.field("round").u64()?);
                let state = StateHash(r.field("state").array()?);
                let count = r.field("dropped count").u16()?;
                if count > MAX_DROPPED {
                    return Err(DecodeError::TooLong { field: "dropped", len: count.into(), max: MAX_DROPPED.into() });
                }
                let mut dropped = Vec::with_capacity(count.into());
                for _ in 0..count {
                    dropped.push(EntryPos { seq: Seq(r.field("dropped seq").u64()?), index: r.u16()? });
                }
                if !dropped.windows(2).all(|w| matches!(w, [a, b] if a < b)) {
                    return Err(DecodeError::NotSorted { field: "dropped" });
                }
                Body::Attestation(Attestation { round, state, dropped })
            }
            Kind::Snapshot => {
                let round = Round(r.field("round").u64()?);
                let state = StateHash(r.field("state").array()?);
                let blob = BlobId(r.field("blob").array()?);
                let blob_size = r.field("blob size").u64()?;
                Body::Snapshot(Snapshot { round, state, blob, blob_size })
            }
            Kind::Evaluation => {
                let round = Round(r.field("round").u64()?);
                let state = StateHash(r.field("state").array()?);
                let sequences = r.field("sequences").u32()?;
                if sequences == 0 {
                    return Err(DecodeError::TooShort { field: "sequences", len: 0, min: 1 });
                }
                if sequences > MAX_EVAL_SEQUENCES {
                    return Err(DecodeError::TooLong {
                        field: "sequences",
                        len: sequences.into(),
                        max: MAX_EVAL_SEQUENCES.into(),
                    });
                }
                let loss_milli = r.field("loss").i64()?;
                Body::Evaluation(Evaluation { round, state, sequences, loss_milli })
            }
            Kind::RosterChange => {
                let epoch = r.field("epoch").u64()?;
                let change = match r.field("change tag").u8()? {
                    1 => Change::Add(decode_member(&mut r)?),
                    2 => Change::Remove(PublicKey(r.field("removed key").array()?)),
                    3 => Change::SetQuorum(r.field("quorum").u16()?),
                    tag => return Err(DecodeError::UnknownTag { what: "roster change", tag }),
                };
                Body::RosterChange(RosterChange { epoch, change })
            }
        };
        r.finish()?;
        Ok(body)
    }
}

fn encode_member(w: &mut Writer, m: &Member) {
    w.raw(&m.key.0).bytes8(m.organisation.as_bytes()).u8(m.role.tag());
}

fn decode_member(r: &mut Reader<'_>) -> Result<Member, DecodeError> {
    let key = PublicKey(r.field("member key").array()?);
    let organisation = r.field("organisation").str8(MAX_ORG_BYTES.into())?;
    if organisation.is_empty() {
        return Err(DecodeError::TooShort { field: "organisation", len: 0, min: 1 });
    }
    let role = Role::from_tag(r.field("role").u8()?)?;
    Ok(Member { key, organisation, role })
}

/// One signature on an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// The signer.
    pub key: PublicKey,
    /// Its signature over the entry's signed message.
    pub signature: Signature,
}

/// A signed entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The run it belongs to.
    pub run_id: RunId,
    /// What it says.
    pub body: Body,
    /// Who signed it, sorted by key.
    pub signatures: Vec<Signed>,
}

impl Entry {
    /// Signs `body` for `run_id` with every key in `signers` (one for most kinds, a quorum of
    /// admins for a RosterChange), checking the result against the decoder's rules so that we
    /// never write an entry that readers would find malformed.
    pub fn sign(run_id: RunId, body: Body, signers: &[&Keypair]) -> Result<Entry> {
        let message = signed_message(run_id, body.kind(), &body.encode());
        let mut signatures: Vec<Signed> =
            signers.iter().map(|k| Signed { key: k.public(), signature: k.sign(ENTRY_DOMAIN, &message) }).collect();
        signatures.sort_by_key(|s| s.key);
        let entry = Entry { run_id, body, signatures };
        let bytes = entry.encode();
        match Entry::decode(&bytes) {
            Ok(back) if back == entry => Ok(entry),
            Ok(_) => Err(LedgerError::Malformed {
                what: "entry to sign",
                reason: DecodeError::OutOfRange { field: "entry", reason: "does not survive a round trip" },
            }),
            Err(reason) => Err(LedgerError::Malformed { what: "entry to sign", reason }),
        }
    }

    /// Adds `key`'s signature to an entry others signed already (a RosterChange collects a quorum
    /// of admins one at a time, each on their own machine). Signing twice changes nothing.
    pub fn cosign(&mut self, key: &Keypair) -> Result<()> {
        if self.signatures.iter().any(|s| s.key == key.public()) {
            return Ok(());
        }
        let mine = Entry::sign(self.run_id, self.body.clone(), &[key])?.signatures;
        let mut signatures = self.signatures.clone();
        signatures.extend(mine);
        signatures.sort_by_key(|s| s.key);
        let entry = Entry { run_id: self.run_id, body: self.body.clone(), signatures };
        match Entry::decode(&entry.encode()) {
            Ok(back) if back == entry => {
                *self = entry;
                Ok(())
            }
            Ok(_) => Err(LedgerError::Malformed {
                what: "cosigned entry",
                reason: DecodeError::OutOfRange { field: "entry", reason: "does not survive a round trip" },
            }),
            Err(reason) => Err(LedgerError::Malformed { what: "cosigned entry", reason }),
        }
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let body = self.body.encode();
        let mut w = Writer::new();
        w.u8(ENTRY_VERSION).u8(self.body.kind().tag()).raw(&self.run_id.0).bytes32(&body);
        w.u8(u8::try_from(self.signatures.len()).unwrap_or(u8::MAX));
        for s in &self.signatures {
            w.raw(&s.key.0).raw(&s.signature.0);
        }
        w.finish()
    }

    /// Decodes canonical bytes; signatures are parsed but not verified (see [`Entry::bad_signers`]).
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        if bytes.len() as u64 > u64::from(MAX_ENTRY_BYTES) {
            return Err(DecodeError::TooLong { field: "entry", len: bytes.len() as u64, max: MAX_ENTRY_BYTES.into() });
        }
        let mut r = Reader::new(bytes);
        let version = r.field("version").u8()?;
        if version != ENTRY_VERSION {
            return Err(DecodeError::UnknownVersion { what: "entry", version });
        }
        let kind = Kind::from_tag(r.field("kind").u8()?)?;
        let run_id = RunId(r.field("run id").array()?);
        let body = Body::decode(kind, r.field("body").bytes32(MAX_ENTRY_BYTES.into())?)?;
        let count = r.field("signature count").u8()?;
        if count == 0 {
            return Err(DecodeError::TooShort { field: "signatures", len: 0, min: 1 });
        }
        if count > MAX_SIGNATURES {
            return Err(DecodeError::TooLong { field: "signatures", len: count.into(), max: MAX_SIGNATURES.into() });
        }
        let mut signatures = Vec::with_capacity(count.into());
        for _ in 0..count {
            let key = PublicKey(r.field("signer").array()?);
            let signature = Signature(r.field("signature").array()?);
            signatures.push(Signed { key, signature });
        }
        if !signatures.windows(2).all(|w| matches!(w, [a, b] if a.key < b.key)) {
            return Err(DecodeError::NotSorted { field: "signatures" });
        }
        r.finish()?;
        Ok(Entry { run_id, body, signatures })
    }

    /// The message every signature on this entry covers (after the domain tag).
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(self.run_id, self.body.kind(), &self.body.encode())
    }

    /// The signers whose signature does not verify (empty when all do).
    pub fn bad_signers(&self) -> Vec<PublicKey> {
        self.bad_signers_of(&self.signed_message())
    }

    /// [`Entry::bad_signers`], given the signed message already computed.
    pub(crate) fn bad_signers_of(&self, message: &[u8]) -> Vec<PublicKey> {
        self.signatures.iter().filter(|s| !verify(&s.key, ENTRY_DOMAIN, message, &s.signature)).map(|s| s.key).collect()
    }

    /// The first signer (the only one for every kind but RosterChange and Genesis).
    pub fn signer(&self) -> PublicKey {
        // decode and sign both guarantee at least one signature; a hand-built empty list
        // yields the all-zero key, which is in no roster.
        self.signatures.first().map_or(PublicKey([0; 32]), |s| s.key)
    }
}

fn signed_message(run_id: RunId, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(&run_id.0).u8(ENTRY_VERSION).u8(kind.tag()).bytes32(body);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(seed: u8, role: Role) -> (Keypair, Member) {
        let k = Keypair::from_seed([seed; 32]);
        let m = Member { key: k.public(), organisation: format!("org{seed}"), role };
        (k, m)
    }

    #[test]
    fn genesis_round_trips_and_keeps_roster_sorted() {
        let (admin, a) = member(1, Role::Admin);
        let (_, w) = member(2, Role::Worker);
        let g = Genesis::new(b"cfg".to_vec(), vec![w, a], 1, StateHash([3; 32]), BlobId([4; 32]), 9);
        let e = Entry::sign(RunId([9; 32]), Body::Genesis(g), &[&admin]).unwrap();
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes).unwrap(), e);
        assert!(e.bad_signers().is_empty());
    }

    #[test]
    fn cosigning_one_at_a_time_equals_signing_together() {
        let (a, _) = member(1, Role::Admin);
        let (b, _) = member(2, Role::Admin);
        let (_, newcomer) = member(3, Role::Worker);
        let body = Body::RosterChange(RosterChange { epoch: 0, change: Change::Add(newcomer) });
        let together = Entry::sign(RunId([9; 32]), body.clone(), &[&a, &b]).unwrap();
        for (first, second) in [(&a, &b), (&b, &a)] {
            let mut e = Entry::sign(RunId([9; 32]), body.clone(), &[first]).unwrap();
            e.cosign(second).unwrap();
            e.cosign(second).unwrap();
            assert_eq!(e, together);
            assert!(e.bad_signers().is_empty());
        }
    }

    #[test]
    fn unsorted_metrics_cannot_be_signed() {
        let k = Keypair::from_seed([1; 32]);
        let c = Contribution {
            round: Round(1),
            base_state: StateHash([0; 32]),
            assignment: vec![],
            blob: BlobId([0; 32]),
            blob_size: 0,
            metrics: vec![("z".into(), 1), ("a".into(), 2)],
        };
        let err = Entry::sign(RunId([0; 32]), Body::Contribution(c), &[&k]).unwrap_err();
        assert!(matches!(err, LedgerError::Malformed { reason: DecodeError::NotSorted { field: "metrics" }, .. }));
    }

    #[test]
    fn unknown_kind_and_version_are_refused() {
        let k = Keypair::from_seed([1; 32]);
        let e =
            Entry::sign(RunId([0; 32]), Body::CloseVote(CloseVote { round: Round(3), seen: Seq(7) }), &[&k]).unwrap();
        let mut bytes = e.encode();
        bytes[1] = 99;
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::UnknownTag { what: "entry kind", tag: 99 }));
        bytes[1] = 4;
        bytes[0] = 1;
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::UnknownVersion { what: "entry", version: 1 }));
    }

    #[test]
    fn attestations_round_trip_and_refuse_unsorted_drops() {
        let k = Keypair::from_seed([1; 32]);
        let at = |seq, index| EntryPos { seq: Seq(seq), index };
        let body = |dropped| Body::Attestation(Attestation { round: Round(2), state: StateHash([5; 32]), dropped });
        let e = Entry::sign(RunId([0; 32]), body(vec![at(3, 0), at(3, 1), at(9, 0)]), &[&k]).unwrap();
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        let err = Entry::sign(RunId([0; 32]), body(vec![at(9, 0), at(3, 0)]), &[&k]).unwrap_err();
        assert!(matches!(err, LedgerError::Malformed { reason: DecodeError::NotSorted { field: "dropped" }, .. }));
        let err = Entry::sign(RunId([0; 32]), body(vec![at(3, 0), at(3, 0)]), &[&k]).unwrap_err();
        assert!(matches!(err, LedgerError::Malformed { reason: DecodeError::NotSorted { field: "dropped" }, .. }));
    }

    #[test]
    fn the_run_id_is_derived_from_the_whole_genesis_body() {
        let (_, a) = member(1, Role::Admin);
        let g = Genesis::new(b"cfg".to_vec(), vec![a], 1, StateHash([3; 32]), BlobId([4; 32]), 9);
        // blake3's derive_key over the body's canonical bytes, written out here by hand.
        let mut body = Vec::new();
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(b"cfg");
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&g.roster[0].key.0);
        body.push(4);
        body.extend_from_slice(b"org1");
        body.push(1);
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&[3; 32]);
        body.extend_from_slice(&[4; 32]);
        body.extend_from_slice(&9u64.to_be_bytes());
        body.extend_from_slice(&[0; 16]);
        assert_eq!(g.run_id(), RunId(blake3::derive_key("cairn run id v2", &body)));
        let salted = Genesis { salt: [1; 16], ..g.clone() };
        let two_orgs = Genesis { org_quorum: 2, ..g.clone() };
        assert_ne!(salted.run_id(), g.run_id());
        assert_ne!(two_orgs.run_id(), g.run_id());
    }
}
