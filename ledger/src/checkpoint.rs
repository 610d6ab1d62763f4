//! Signed checkpoints (tree heads), cosigned by organisations, in the form of C2SP signed notes
//! (c2sp.org/tlog-checkpoint, c2sp.org/signed-note), and the reader's defence against rewritten
//! history.
//!
//! ```text
//!   note text = "cairn.run/" run_id hex "\n" size decimal "\n" base64(root) "\n"    (the origin,
//!               the tree size, the root hash: tlog-checkpoint's three lines, no extension line)
//!   key name  = "cairn.run/" run_id hex "/" first 16 hex digits of the member's key
//!   key ID    = SHA-256(key name | 0x0A | 0x01 | member key)[..4]
//!   signature = Ed25519 over the note text as it is            (RFC 8032; checked strictly)
//!   object    = version:u8 (=2) | run_id:[32] | size:u64 | root:[32]
//!               | sig_count:u16 (1..=MAX_CHECKPOINT_SIGNATURES) | (key:[32] | sig:[64]) * sig_count
//!               (sorted by key, strictly ascending)
//!
//!   ledger/checkpoints/{size:020}/{signer hex}   one member's signature over the first `size`
//!                                                slots (an object with sig_count = 1), create-only
//!
//!   member M, after round R became final        reader, at quorum q (default: the run's org quorum)
//!     size := slot of the entry that made R      list ledger/checkpoints/; by size, newest first:
//!             final, + 1 (the same for every       skip a size unless its key names span q orgs
//!             member that read the log)            read the objects: keep signatures that verify,
//!     put_if_absent(key(size, M),                  by current members, over this run and size
//!                   sign(note text))               q orgs signed one root ─► that is the checkpoint
//!                                                  (two roots each with q orgs ─► CheckpointMismatch)
//!                                                smaller than the last verified ─► Rollback
//!                                                catch up to its size (LogTooShort: slots deleted);
//!                                                root(first size slots) must equal its root
//!                                                ─► checkpoint_note: one signed note, a line per
//!                                                   cosigner, for any signed-note verifier
//! ```
//!
//! Nobody overwrites anybody's signature: each member writes its own key once, so signatures
//! over the same head add up without coordination, and a head counts only once members of a
//! quorum of organisations signed it. A single member, or a bucket writer, can store heads that
//! no quorum signed; readers skip them. A reader keeps the last checkpoint it verified; a light
//! client that does not read every slot checks a newer checkpoint against it with a consistency
//! proof ([`verify_extension`]). Every signature in an object is a signed-note signature over
//! the note text, so an object converts to a note and back with nothing lost
//! ([`SignedCheckpoint::to_note`], [`open_checkpoint_note`]).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use storage::{PutOutcome, StoreError};
use tracing::{debug, warn};

use crate::entry::{MAX_ROSTER_MEMBERS, Signed};
use crate::error::{DecodeError, LedgerError, NoteError, Result};
use crate::id::RunId;
use crate::key::{Keypair, PublicKey, Signature, verify_strict};
use crate::log::Reader;
use crate::merkle::{self, Hash};
use crate::note::{MAX_NOTE_SIGNATURES, Note, NoteSignature, VerifierKey, decode_base64, encode_base64};
use crate::wire::{Reader as WireReader, Writer};

/// Where members store their checkpoint signatures: `{prefix}{size:020}/{signer hex}`.
pub const CHECKPOINT_PREFIX: &str = "ledger/checkpoints/";
/// Most tree sizes beyond the end of the log (as read) whose signatures a reader fetches: such a
/// head, if a quorum signed it, is evidence that slots were deleted; past this many it is noise.
pub const MAX_HEADS_BEYOND_LOG: usize = 64;
/// The checkpoint format version (2: signatures are signed-note signatures over the note text).
pub const CHECKPOINT_VERSION: u8 = 2;
/// Most signatures on one checkpoint object (a witness file keeps every member's).
pub const MAX_CHECKPOINT_SIGNATURES: u16 = MAX_ROSTER_MEMBERS;
/// Size of a checkpoint object before its signatures.
const HEADER_BYTES: u64 = 1 + 32 + 8 + 32 + 2;
/// Largest checkpoint object.
pub const MAX_CHECKPOINT_BYTES: u64 = HEADER_BYTES + 96 * MAX_CHECKPOINT_SIGNATURES as u64;
/// Size of one member's signature object (one signature): the most a reader fetches per key.
pub const SIGNATURE_OBJECT_BYTES: u64 = HEADER_BYTES + 96;
/// What every checkpoint's origin line, and every member's key name, starts with.
pub const ORIGIN_PREFIX: &str = "cairn.run/";
/// Hex digits of the member's key in its key name (64 bits).
pub const KEY_NAME_HEX_DIGITS: usize = 16;

/// The origin line of run `run_id`'s checkpoints: `cairn.run/<run id hex>`. Run ids are derived
/// from the Genesis body, salt included, so no two runs share one.
pub fn origin(run_id: RunId) -> String {
    format!("{ORIGIN_PREFIX}{run_id}")
}

/// The signed-note key name of `member` in run `run_id`: `cairn.run/<run id hex>/<first 16 hex
/// digits of the key>`.
pub fn member_key_name(run_id: RunId, member: &PublicKey) -> String {
    format!("{}/{}", origin(run_id), &member.to_string()[..KEY_NAME_HEX_DIGITS])
}

/// The verifier key (vkey) of `member`'s checkpoint signatures in run `run_id`.
pub fn member_verifier_key(run_id: RunId, member: &PublicKey) -> VerifierKey {
    VerifierKey::named(member_key_name(run_id, member), *member)
}

/// A tree head: the first `size` slots of run `run_id` hash to `root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The run.
    pub run_id: RunId,
    /// Number of slots covered.
    pub size: u64,
    /// Merkle root over them.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text every signature covers: origin, size and base64 root, each ending in a
    /// newline.
    pub fn note_text(&self) -> String {
        format!("{}\n{}\n{}\n", origin(self.run_id), self.size, encode_base64(&self.root.0))
    }

    /// The checkpoint a note text states, refusing any other spelling than [`Checkpoint::note_text`]
    /// writes (and so any extension line).
    pub fn from_note_text(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |reason| NoteError::BadCheckpoint { reason };
        let body = text.strip_suffix('\n').ok_or(bad("the text does not end in a newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin_line, size_line, root_line] = lines.as_slice() else {
            return Err(bad("not three lines (origin, size, root hash)"));
        };
        let run_hex = origin_line.strip_prefix(ORIGIN_PREFIX).ok_or(bad("the origin is not cairn.run/<run id>"))?;
        if !is_lower_hex(run_hex, 64) {
            return Err(bad("the run id is not 64 lowercase hex digits"));
        }
        let run_id: RunId = run_hex.parse().map_err(|_| bad("the run id is not hex"))?;
        let digits = size_line.bytes().all(|b| b.is_ascii_digit());
        if size_line.is_empty() || !digits || (size_line.len() > 1 && size_line.starts_with('0')) {
            return Err(bad("the size is not a decimal number without leading zeros"));
        }
        let size = size_line.parse().map_err(|_| bad("the size is over 2^64 - 1"))?;
        let root = decode_base64(root_line).ok_or(bad("the root hash is not canonical base64"))?;
        let root = Hash(<[u8; 32]>::try_from(root).map_err(|_| bad("the root hash is not 32 bytes"))?);
        Ok(Checkpoint { run_id, size, root })
    }
}

/// A checkpoint with its member signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The tree head.
    pub checkpoint: Checkpoint,
    /// Signatures, sorted by key.
    pub signatures: Vec<Signed>,
}

impl SignedCheckpoint {
    /// `checkpoint` signed by `key` alone.
    pub fn sign(checkpoint: Checkpoint, key: &Keypair) -> SignedCheckpoint {
        let mut signed = SignedCheckpoint { checkpoint, signatures: Vec::new() };
        signed.cosign(key);
        signed
    }

    /// Adds `key`'s signature over the note text (no-op if it already signed, or if the list is
    /// full).
    pub fn cosign(&mut self, key: &Keypair) {
        let public = key.public();
        if self.signatures.iter().any(|s| s.key == public)
            || self.signatures.len() >= usize::from(MAX_CHECKPOINT_SIGNATURES)
        {
            return;
        }
        let signature = key.sign_message(self.checkpoint.note_text().as_bytes());
        self.signatures.push(Signed { key: public, signature });
        self.signatures.sort_by_key(|s| s.key);
    }

    /// The signers whose signature verifies over the note text ([`verify_strict`]).
    pub fn valid_signers(&self) -> Vec<PublicKey> {
        let text = self.checkpoint.note_text();
        self.signatures.iter().filter(|s| verify_strict(&s.key, text.as_bytes(), &s.signature)).map(|s| s.key).collect()
    }

    /// The checkpoint as a signed note: its text, then one line per signature, named by
    /// [`member_key_name`], in key order (the order of the key names). Signatures are not
    /// checked here. More than [`MAX_NOTE_SIGNATURES`] is refused: [`Reader::checkpoint_note`]
    /// chooses which to keep.
    pub fn to_note(&self) -> Result<Note, NoteError> {
        if self.signatures.len() > MAX_NOTE_SIGNATURES {
            let count = self.signatures.len() as u64;
            return Err(NoteError::TooManySignatures { count, limit: MAX_NOTE_SIGNATURES as u64 });
        }
        let run_id = self.checkpoint.run_id;
        let lines =
            self.signatures.iter().map(|s| NoteSignature::of(&member_verifier_key(run_id, &s.key), &s.signature));
        Note::new(&self.checkpoint.note_text(), lines.collect())
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.signatures.len() <= usize::from(MAX_CHECKPOINT_SIGNATURES), "too many checkpoint signatures");
        let cp = &self.checkpoint;
        let mut w = Writer::new();
        w.u8(CHECKPOINT_VERSION).raw(&cp.run_id.0).u64(cp.size).raw(&cp.root.0).u16(self.signatures.len() as u16);
        for s in &self.signatures {
            w.raw(&s.key.0).raw(&s.signature.0);
        }
        w.finish()
    }

    /// Decodes canonical bytes (signatures parsed, not verified).
    pub fn decode(bytes: &[u8]) -> Result<SignedCheckpoint, DecodeError> {
        let mut r = WireReader::new(bytes);
        let version = r.field("checkpoint version").u8()?;
        if version != CHECKPOINT_VERSION {
            return Err(DecodeError::UnknownVersion { what: "checkpoint", version });
        }
        let run_id = RunId(r.field("run id").array()?);
        let size = r.field("size").u64()?;
        let root = Hash(r.field("root").array()?);
        let count = r.field("signature count").u16()?;
        if count == 0 {
            return Err(DecodeError::TooShort { field: "checkpoint signatures", len: 0, min: 1 });
        }
        if count > MAX_CHECKPOINT_SIGNATURES {
            return Err(DecodeError::TooLong {
                field: "checkpoint signatures",
                len: count.into(),
                max: MAX_CHECKPOINT_SIGNATURES.into(),
            });
        }
        let mut signatures = Vec::with_capacity(count.into());
        for _ in 0..count {
            let key = PublicKey(r.field("signer").array()?);
            let signature = Signature(r.field("signature").array()?);
            signatures.push(Signed { key, signature });
        }
        if !signatures.windows(2).all(|w| matches!(w, [a, b] if a.key < b.key)) {
            return Err(DecodeError::NotSorted { field: "checkpoint signatures" });
        }
        r.finish()?;
        Ok(SignedCheckpoint { checkpoint: Checkpoint { run_id, size, root }, signatures })
    }
}

/// Checks a checkpoint note against verifier keys, as an outside client would: the note verifies
/// ([`Note::verify`]: unknown keys ignored, a known key's bad signature refuses it) and its text
/// is a cairn checkpoint. Returns the checkpoint and the known keys that signed it, in line order;
/// how many of them make a quorum (cairn's rule: members of `q` organisations) is the caller's
/// policy.
pub fn open_checkpoint_note(
    bytes: &[u8],
    verifiers: &[VerifierKey],
) -> Result<(Checkpoint, Vec<VerifierKey>), NoteError> {
    let note = Note::parse(bytes)?;
    let checkpoint = Checkpoint::from_note_text(&note.text)?;
    let signers = note.verify(verifiers)?.into_iter().cloned().collect();
    Ok((checkpoint, signers))
}

/// The witness format version.
pub const WITNESS_VERSION: u8 = 1;

/// What a reader keeps between runs (e.g. in a local file): the last checkpoint it verified and
/// the leaf hashes of the slots that checkpoint covers. With it, a later replay names the first
/// slot rewritten since, not only that the root differs.
///
/// ```text
///   witness = version:u8 (=1) | checkpoint:bytes32 (a checkpoint object) | leaf_count:u64 | leaf:[32] * leaf_count
/// ```
///
/// `leaf_count` equals the checkpoint's size and the leaves hash to its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// The checkpoint.
    pub checkpoint: SignedCheckpoint,
    /// The leaf hashes of its slots.
    pub leaves: Vec<Hash>,
}

impl Witness {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(WITNESS_VERSION).bytes32(&self.checkpoint.encode()).u64(self.leaves.len() as u64);
        for leaf in &self.leaves {
            w.raw(&leaf.0);
        }
        w.finish()
    }

    /// Decodes a witness, checking that its leaves hash to its checkpoint's root.
    pub fn decode(bytes: &[u8]) -> Result<Witness, DecodeError> {
        let mut r = WireReader::new(bytes);
        let version = r.field("witness version").u8()?;
        if version != WITNESS_VERSION {
            return Err(DecodeError::UnknownVersion { what: "witness", version });
        }
        let checkpoint = SignedCheckpoint::decode(r.field("checkpoint").bytes32(MAX_CHECKPOINT_BYTES)?)?;
        let count = r.field("leaf count").u64()?;
        if count != checkpoint.checkpoint.size {
            return Err(DecodeError::OutOfRange { field: "leaf count", reason: "differs from the checkpoint size" });
        }
        let len = count.checked_mul(32).and_then(|n| usize::try_from(n).ok());
        let raw = r.field("leaves").take(len.ok_or(DecodeError::Truncated { field: "leaves" })?)?;
        let leaves: Vec<Hash> =
            raw.chunks_exact(32).map(|c| Hash(<[u8; 32]>::try_from(c).unwrap_or_default())).collect();
        r.finish()?;
        if merkle::root(&leaves) != checkpoint.checkpoint.root {
            return Err(DecodeError::OutOfRange { field: "leaves", reason: "do not hash to the checkpoint root" });
        }
        Ok(Witness { checkpoint, leaves })
    }
}

/// Checks that `newer` extends `trusted`, given a consistency proof between them: for a client
/// that does not read every slot. Refuses a smaller checkpoint ([`LedgerError::CheckpointRollback`])
/// and a fork ([`LedgerError::BadProof`]).
pub fn verify_extension(trusted: &Checkpoint, newer: &Checkpoint, proof: &[Hash]) -> Result<()> {
    if newer.run_id != trusted.run_id {
        return Err(LedgerError::WrongRun { what: "checkpoint", expected: trusted.run_id, found: newer.run_id });
    }
    if newer.size < trusted.size {
        return Err(LedgerError::CheckpointRollback { trusted: trusted.size, found: newer.size });
    }
    if !merkle::verify_consistency(trusted.size, &trusted.root, newer.size, &newer.root, proof) {
        return Err(LedgerError::BadProof { what: "consistency" });
    }
    Ok(())
}

/// The key of `signer`'s signature over the tree head of the first `size` slots.
pub fn checkpoint_key(size: u64, signer: &PublicKey) -> String {
    format!("{CHECKPOINT_PREFIX}{size:020}/{signer}")
}

/// `(size, signer)` from a key under [`CHECKPOINT_PREFIX`]; `None` for any other name.
pub fn parse_checkpoint_key(key: &str) -> Option<(u64, PublicKey)> {
    let rest = key.strip_prefix(CHECKPOINT_PREFIX)?;
    let (size, signer) = rest.split_once('/')?;
    // One spelling per key: 20 digits, and the signer in lowercase hex, as written.
    if size.len() != 20 || !size.bytes().all(|b| b.is_ascii_digit()) || !is_lower_hex(signer, 64) {
        return None;
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(signer, &mut key).ok()?;
    Some((size.parse().ok()?, PublicKey(key)))
}

/// Whether `s` is `len` lowercase hex digits (the one spelling cairn writes keys and ids in).
fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The cosignatures found for one tree size: per root, the valid member signatures over it and
/// their organisations.
type HeadsAtSize = BTreeMap<Hash, (Vec<Signed>, BTreeSet<String>)>;

impl Reader {
    /// Signs the tree head of the first `size` slots as this reader read them and stores the
    /// signature at its own key (create-only). Every honest member that read the same slots signs
    /// the same head, so the signatures add up without any coordination. Returns every valid member
    /// signature found over that head so far.
    pub async fn publish_checkpoint(&mut self, key: &Keypair, size: u64) -> Result<SignedCheckpoint> {
        self.catch_up_to(size).await?;
        let ours = Checkpoint {
            run_id: self.run_id(),
            size,
            root: self.root_at(size).ok_or(LedgerError::NotHeld {
                from: 0,
                to: size,
                kept_from: self.leaves_from().0,
            })?,
        };
        let signed = SignedCheckpoint::sign(ours, key);
        let object_key = checkpoint_key(size, &key.public());
        match self.store.put_if_absent(&object_key, Bytes::from(signed.encode())).await? {
            PutOutcome::Created(_) => debug!(size, "checkpoint signature stored"),
            PutOutcome::AlreadyExists => {
                // Ours from an earlier call, or someone else's bytes at our key.
                let held = self.store.get(&object_key, SIGNATURE_OBJECT_BYTES).await?;
                let same = SignedCheckpoint::decode(&held.bytes)
                    .is_ok_and(|cp| cp.checkpoint == ours && cp.valid_signers() == vec![key.public()]);
                if !same {
                    return Err(LedgerError::CheckpointKeyTaken { size });
                }
            }
        }
        let heads = self.heads_at(size).await?;
        let (signatures, _) = heads.get(&ours.root).cloned().unwrap_or_default();
        Ok(SignedCheckpoint { checkpoint: ours, signatures })
    }

    /// Reads the signatures current members stored for tree size `size`, keeping those that verify.
    async fn heads_at(&self, size: u64) -> Result<HeadsAtSize> {
        let listed = self.store.list(&format!("{CHECKPOINT_PREFIX}{size:020}"), None).await?;
        let signers: Vec<PublicKey> = listed
            .iter()
            .filter_map(|info| parse_checkpoint_key(&info.key))
            .filter(|(s, _)| *s == size)
            .map(|(_, signer)| signer)
            .collect();
        self.read_heads(size, &signers).await
    }

    /// Reads the signature objects of `signers` at `size`; those of non-members, and objects that
    /// are not their signer's valid signature over this run and size, are skipped.
    async fn read_heads(&self, size: u64, signers: &[PublicKey]) -> Result<HeadsAtSize> {
        let mut roots = HeadsAtSize::new();
        for signer in signers {
            let Some(member) = self.state.member(signer) else { continue };
            let bytes = match self.store.get(&checkpoint_key(size, signer), SIGNATURE_OBJECT_BYTES).await {
                Ok(obj) => obj.bytes,
                Err(StoreError::NotFound { .. } | StoreError::TooLarge { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let Ok(cp) = SignedCheckpoint::decode(&bytes) else {
                warn!(size, %signer, "a checkpoint signature object does not decode; ignored");
                continue;
            };
            if cp.checkpoint.run_id != self.run_id()
                || cp.checkpoint.size != size
                || cp.valid_signers() != vec![*signer]
            {
                warn!(size, %signer, "a checkpoint signature object is not its signer's over this size; ignored");
                continue;
            }
            let entry = roots.entry(cp.checkpoint.root).or_default();
            entry.0.extend(cp.signatures);
            entry.1.insert(member.organisation.clone());
        }
        for (signatures, _) in roots.values_mut() {
            signatures.sort_by_key(|s| s.key);
        }
        Ok(roots)
    }

    /// How many organisations' members must sign a head for it to count: `requested` (a reader's
    /// choice, e.g. `cairn audit --checkpoint-organisations`), else the run's organisation quorum;
    /// at least 1.
    pub fn checkpoint_quorum(&self, requested: Option<u16>) -> u16 {
        requested.or_else(|| self.state.genesis().map(|g| g.org_quorum)).unwrap_or(1).max(1)
    }

    /// The newest tree head signed by current members of at least `min_organisations`
    /// organisations, verified against this reader's own reading of the log: it must cover slots
    /// that exist and hash to its root, and it must not be older than the last one this reader
    /// verified. Heads with fewer organisations' signatures are proposals and are skipped. On
    /// success it becomes the trusted checkpoint. `Ok(None)`: no head has the quorum yet.
    pub async fn check_checkpoint(&mut self, min_organisations: u16) -> Result<Option<SignedCheckpoint>> {
        let need = usize::from(min_organisations.max(1));
        let mut by_size: BTreeMap<u64, Vec<PublicKey>> = BTreeMap::new();
        for info in self.store.list(CHECKPOINT_PREFIX.trim_end_matches('/'), None).await? {
            if let Some((size, signer)) = parse_checkpoint_key(&info.key)
                && self.state.member(&signer).is_some()
            {
                by_size.entry(size).or_default().push(signer);
            }
        }
        let log_len = self.next_seq().0;
        let mut beyond_log = 0usize;
        let mut found = None;
        for (&size, signers) in by_size.iter().rev() {
            // The names alone must span a quorum of organisations before anything is fetched.
            let named: BTreeSet<&str> = signers.iter().filter_map(|k| self.state.organisation(k)).collect();
            if named.len() < need {
                continue;
            }
            if size > log_len {
                beyond_log += 1;
                if beyond_log > MAX_HEADS_BEYOND_LOG {
                    warn!(size, "too many signed tree heads beyond the log; the rest are not read");
                    continue;
                }
            }
            let heads = self.read_heads(size, signers).await?;
            let quorate: Vec<(&Hash, &Vec<Signed>)> =
                heads.iter().filter(|(_, (_, orgs))| orgs.len() >= need).map(|(r, (s, _))| (r, s)).collect();
            match quorate.as_slice() {
                [] => debug!(size, "a tree head without a quorum of organisations' signatures; skipped"),
                [(root, signatures)] => {
                    let checkpoint = Checkpoint { run_id: self.run_id(), size, root: **root };
                    found = Some(SignedCheckpoint { checkpoint, signatures: (*signatures).clone() });
                    break;
                }
                // Two histories, each signed by a quorum: some organisation signed both.
                _ => return Err(LedgerError::CheckpointMismatch { size }),
            }
        }
        let Some(cp) = found else {
            if let Some(trusted) = &self.trusted {
                // The head this reader verified before is gone (its signatures deleted).
                return Err(LedgerError::CheckpointRollback { trusted: trusted.checkpoint.size, found: 0 });
            }
            return Ok(None);
        };
        if let Some(trusted) = self.trusted.as_ref().filter(|t| cp.checkpoint.size < t.checkpoint.size) {
            return Err(LedgerError::CheckpointRollback {
                trusted: trusted.checkpoint.size,
                found: cp.checkpoint.size,
            });
        }
        self.verify_against_log(&cp.checkpoint).await?;
        debug!(size = cp.checkpoint.size, signers = cp.signatures.len(), "checkpoint verified");
        self.trusted = Some(cp.clone());
        self.trusted_prefix_ok = true;
        Ok(Some(cp))
    }

    /// `cp` (a checkpoint this reader verified) as one signed note for outside verifiers. When
    /// more than [`MAX_NOTE_SIGNATURES`] members signed it, the note keeps one signature of each
    /// organisation first (its member with the smallest key), then others in key order, so it
    /// shows as many organisations as a note can hold.
    pub fn checkpoint_note(&self, cp: &SignedCheckpoint) -> Result<Note> {
        let mut organisations = BTreeSet::new();
        let mut keep = BTreeSet::new();
        for s in &cp.signatures {
            if keep.len() < MAX_NOTE_SIGNATURES && organisations.insert(self.state.organisation(&s.key)) {
                keep.insert(s.key);
            }
        }
        for s in &cp.signatures {
            if keep.len() >= MAX_NOTE_SIGNATURES {
                break;
            }
            keep.insert(s.key);
        }
        let signatures = cp.signatures.iter().filter(|s| keep.contains(&s.key)).cloned().collect();
        Ok(SignedCheckpoint { checkpoint: cp.checkpoint, signatures }.to_note()?)
    }

    /// Reads until at least `size` slots are read; a trusted checkpoint that covers more slots
    /// than exist means some were deleted.
    async fn catch_up_to(&mut self, size: u64) -> Result<()> {
        if self.next_seq().0 < size {
            self.poll().await?;
        }
        if self.next_seq().0 < size {
            return Err(LedgerError::LogTooShort { head: self.next_seq(), needed: size });
        }
        Ok(())
    }

    /// Verifies `cp` against this reader's own reading of the log; on a mismatch, re-reads the
    /// slots to name the one that changed.
    async fn verify_against_log(&mut self, cp: &Checkpoint) -> Result<()> {
        self.catch_up_to(cp.size).await?;
        match self.root_at(cp.size) {
            Some(root) if root == cp.root => return Ok(()),
            Some(_) => {}
            None => return Err(LedgerError::NotHeld { from: 0, to: cp.size, kept_from: self.leaves_from().0 }),
        }
        // Either the slots changed under us (named by the audit) or the checkpoint was signed
        // over a history this reader never saw.
        self.audit().await?;
        Err(LedgerError::CheckpointMismatch { size: cp.size })
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    /// The golden checkpoint of infra/spec-check/: two members (seeds 1 and 2) over run `05..05`,
    /// size 7, root `09..09`. `infra/spec-check/signed_note.py` (RFC 8032 and hashlib, no cairn
    /// code) verifies these same files, and derives the key IDs on its own.
    const GOLDEN_NOTE: &str = include_str!("../../infra/spec-check/checkpoint.note");
    const GOLDEN_VKEYS: &str = include_str!("../../infra/spec-check/checkpoint.vkeys");

    fn golden() -> (SignedCheckpoint, [Keypair; 2]) {
        let keys = [Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32])];
        let cp = Checkpoint { run_id: RunId([5; 32]), size: 7, root: Hash([9; 32]) };
        let mut signed = SignedCheckpoint::sign(cp, &keys[0]);
        signed.cosign(&keys[1]);
        (signed, keys)
    }

    fn golden_vkeys() -> Vec<VerifierKey> {
        GOLDEN_VKEYS.lines().map(|l| VerifierKey::parse(l).unwrap()).collect()
    }

    #[test]
    fn the_note_text_key_names_key_ids_and_signatures_are_the_golden_ones() {
        let (signed, keys) = golden();
        let run = "05".repeat(32);
        assert_eq!(signed.checkpoint.note_text(), format!("cairn.run/{run}\n7\n{}=\n", "CQkJ".repeat(10) + "CQk"));
        assert_eq!(
            member_key_name(signed.checkpoint.run_id, &keys[0].public()),
            format!("cairn.run/{run}/8a88e3dd7409f195")
        );
        let vkeys: Vec<String> =
            keys.iter().map(|k| member_verifier_key(RunId([5; 32]), &k.public()).to_string()).collect();
        assert_eq!(vkeys.join("\n") + "\n", GOLDEN_VKEYS);
        // Key IDs by hand: the first 4 bytes of SHA-256(name | 0x0A | 0x01 | key).
        let name = member_key_name(RunId([5; 32]), &keys[0].public());
        let digest = sha2::Sha256::digest([name.as_bytes(), b"\n\x01", &keys[0].public().0].concat());
        assert_eq!(hex::encode(&digest[..4]), "0190fa68");
        assert!(GOLDEN_VKEYS.starts_with(&format!("{name}+0190fa68+")));
        assert_eq!(signed.to_note().unwrap().encode(), GOLDEN_NOTE);
        let (cp, signers) = open_checkpoint_note(GOLDEN_NOTE.as_bytes(), &golden_vkeys()).unwrap();
        assert_eq!(cp, signed.checkpoint);
        assert_eq!(signers.len(), 2);
    }

    #[test]
    fn checkpoint_round_trips_and_binds_run_and_text() {
        let (mut signed, [a, b]) = golden();
        signed.cosign(&b);
        signed.cosign(&a);
        assert_eq!(signed.signatures.len(), 2);
        let bytes = signed.encode();
        assert_eq!(SignedCheckpoint::decode(&bytes).unwrap(), signed);
        assert_eq!(signed.valid_signers().len(), 2);
        for s in &signed.signatures {
            assert!(verify_strict(&s.key, signed.checkpoint.note_text().as_bytes(), &s.signature));
        }
        for change in [
            |c: &mut Checkpoint| c.run_id = RunId([6; 32]),
            |c: &mut Checkpoint| c.size += 1,
            |c: &mut Checkpoint| c.root.0[31] ^= 1,
        ] {
            let mut other = signed.clone();
            change(&mut other.checkpoint);
            assert!(other.valid_signers().is_empty());
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(SignedCheckpoint::decode(&trailing).is_err());
        // Version 1 objects (binary body under a domain tag) are no longer read.
        let mut v1 = bytes.clone();
        v1[0] = 1;
        assert_eq!(SignedCheckpoint::decode(&v1), Err(DecodeError::UnknownVersion { what: "checkpoint", version: 1 }));
        // More signatures than fit a u8: the count is a u16 since version 2.
        let many: Vec<Keypair> = (0..300u16)
            .map(|i| {
                Keypair::from_seed([
                    i as u8,
                    (i >> 8) as u8,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                    7,
                ])
            })
            .collect();
        let mut big = SignedCheckpoint::sign(signed.checkpoint, &many[0]);
        for k in &many[1..] {
            big.cosign(k);
        }
        assert_eq!(SignedCheckpoint::decode(&big.encode()).unwrap(), big);
        assert!(matches!(big.to_note(), Err(NoteError::TooManySignatures { count: 300, .. })));
    }

    #[test]
    fn note_texts_have_one_spelling() {
        let (signed, _) = golden();
        let text = signed.checkpoint.note_text();
        assert_eq!(Checkpoint::from_note_text(&text).unwrap(), signed.checkpoint);
        for size in [0, 1, u64::MAX] {
            let cp = Checkpoint { size, ..signed.checkpoint };
            assert_eq!(Checkpoint::from_note_text(&cp.note_text()).unwrap(), cp);
        }
        let run = "05".repeat(32);
        let root = signed.checkpoint.note_text().lines().nth(2).unwrap().to_string();
        let bad = [
            format!("cairn.run/{run}\n7\n{root}"),              // no final newline
            format!("cairn.run/{run}\n7\n{root}\nextension\n"), // an extension line
            format!("cairn.run/{run}\n007\n{root}\n"),          // leading zeros
            format!("cairn.run/{run}\n+7\n{root}\n"),
            format!("cairn.run/{run}\n18446744073709551616\n{root}\n"), // 2^64
            format!("cairn.run/{}\n7\n{root}\n", "AB".repeat(32)),
            format!("cairn.run/{}\n7\n{root}\n", &run[2..]),
            format!("example.com/{run}\n7\n{root}\n"),
            format!("cairn.run/{run}\n7\n{}\n", root.trim_end_matches('=')), // unpadded
            format!("cairn.run/{run}\n7\n{}\n", encode_base64(&[9; 31])),
            format!("cairn.run/{run}\n\n{root}\n"),
        ];
        for text in bad {
            assert!(matches!(Checkpoint::from_note_text(&text), Err(NoteError::BadCheckpoint { .. })), "{text:?}");
        }
    }

    /// A checkpoint note against its members' vkeys, tampered with in every line.
    #[test]
    fn tampered_checkpoint_notes_are_refused() {
        let vkeys = golden_vkeys();
        let open = |note: &str| open_checkpoint_note(note.as_bytes(), &vkeys).map(|(cp, s)| (cp.size, s.len()));
        assert_eq!(open(GOLDEN_NOTE), Ok((7, 2)));
        // Size or root altered: every known signature fails.
        assert!(matches!(open(&GOLDEN_NOTE.replacen("\n7\n", "\n8\n", 1)), Err(NoteError::BadSignature { .. })));
        let root_line = GOLDEN_NOTE.lines().nth(2).unwrap();
        let other_root = encode_base64(&[8; 32]);
        assert!(matches!(open(&GOLDEN_NOTE.replacen(root_line, &other_root, 1)), Err(NoteError::BadSignature { .. })));
        // A wrong key ID: that line belongs to no known key and is ignored.
        let lines: Vec<&str> = GOLDEN_NOTE.lines().collect();
        let first_sig = lines[4];
        let (prefix, sig64) = first_sig.rsplit_once(' ').unwrap();
        let mut raw = decode_base64(sig64).unwrap();
        raw[0] ^= 1;
        let wrong_id = format!("{prefix} {}", encode_base64(&raw));
        assert_eq!(open(&GOLDEN_NOTE.replacen(first_sig, &wrong_id, 1)), Ok((7, 1)));
        // A signature moved to the other member's name.
        let other_name = lines[5].rsplit_once(' ').unwrap().0;
        let moved = format!("{other_name} {sig64}");
        assert_eq!(open(&GOLDEN_NOTE.replacen(first_sig, &moved, 1)), Ok((7, 1)));
        // Missing or extra lines.
        assert!(open(&GOLDEN_NOTE.replacen(&format!("{root_line}\n"), "", 1)).is_err());
        assert!(open(&GOLDEN_NOTE.replacen(&format!("{root_line}\n"), &format!("{root_line}\nextra\n"), 1)).is_err());
        assert!(open(&GOLDEN_NOTE.replacen(&format!("\n\n{}", lines[4]), &format!("\n{}", lines[4]), 1)).is_err());
        assert!(matches!(
            open(&format!("{GOLDEN_NOTE}\u{2014} junk\n")),
            Err(NoteError::BadSignatureLine { line: 3, .. })
        ));
        // Oversized.
        let huge =
            GOLDEN_NOTE.replacen("cairn.run/", &format!("cairn.run/{}", "0".repeat(crate::note::MAX_NOTE_BYTES)), 1);
        assert!(matches!(open(&huge), Err(NoteError::TooLarge { .. })));
        // Signed by nobody known.
        assert_eq!(open_checkpoint_note(GOLDEN_NOTE.as_bytes(), &[]).unwrap_err(), NoteError::NoKnownSignature);
        // Signed, but not a checkpoint.
        let k = Keypair::from_seed([1; 32]);
        let name = member_key_name(RunId([5; 32]), &k.public());
        let plain = Note::new("hello\n", vec![NoteSignature::sign(&name, &k, "hello\n").unwrap()]).unwrap();
        let err = open_checkpoint_note(plain.encode().as_bytes(), &vkeys).unwrap_err();
        assert!(matches!(err, NoteError::BadCheckpoint { .. }), "{err}");
    }

    #[test]
    fn extension_refuses_rollback_and_fork() {
        let leaves: Vec<Hash> = (0..9u8).map(|i| merkle::leaf_hash(&[i])).collect();
        let run_id = RunId([1; 32]);
        let old = Checkpoint { run_id, size: 5, root: merkle::root(&leaves[..5]) };
        let new = Checkpoint { run_id, size: 9, root: merkle::root(&leaves) };
        let proof = merkle::consistency_proof(5, &leaves);
        verify_extension(&old, &new, &proof).unwrap();
        assert!(matches!(verify_extension(&new, &old, &[]), Err(LedgerError::CheckpointRollback { .. })));
        let mut forked = leaves.clone();
        forked[2] = merkle::leaf_hash(b"x");
        let fork = Checkpoint { run_id, size: 9, root: merkle::root(&forked) };
        assert!(matches!(verify_extension(&old, &fork, &proof), Err(LedgerError::BadProof { .. })));
    }
}
