//! Signed checkpoints (tree heads), cosigned by organisations, and the reader's defence against
//! rewritten history.
//!
//! ```text
//!   body     = version:u8 (=1) | run_id:[32] | size:u64 | root:[32]
//!   signed   = "cairn-checkpoint/v1" | body
//!   object   = body | sig_count:u8 (1..=MAX_CHECKPOINT_SIGNATURES) | (key:[32] | sig:[64]) * sig_count
//!              (sorted by key, strictly ascending)
//!
//!   ledger/checkpoints/{size:020}/{signer hex}   one member's signature over the first `size`
//!                                                slots (an object with sig_count = 1), create-only
//!
//!   member M, after round R became final        reader, at quorum q (default: the run's org quorum)
//!     size := slot of the entry that made R      list ledger/checkpoints/; by size, newest first:
//!             final, + 1 (the same for every       skip a size unless its key names span q orgs
//!             member that read the log)            read the objects: keep signatures that verify,
//!     put_if_absent(key(size, M),                  by current members, over this run and size
//!                   sign(run, size, root))         q orgs signed one root ─► that is the checkpoint
//!                                                  (two roots each with q orgs ─► CheckpointMismatch)
//!                                                smaller than the last verified ─► Rollback
//!                                                catch up to its size (LogTooShort: slots deleted);
//!                                                root(first size slots) must equal its root
//! ```
//!
//! Nobody overwrites anybody's signature: each member writes its own key once, so signatures
//! over the same head add up without coordination, and a head counts only once members of a
//! quorum of organisations signed it. A single member, or a bucket writer, can store heads that
//! no quorum signed; readers skip them. A reader keeps the last checkpoint it verified; a light
//! client that does not read every slot checks a newer checkpoint against it with a consistency
//! proof ([`verify_extension`]).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use storage::{PutOutcome, StoreError};
use tracing::{debug, warn};

use crate::entry::Signed;
use crate::error::{DecodeError, LedgerError, Result};
use crate::id::RunId;
use crate::key::{CHECKPOINT_DOMAIN, Keypair, PublicKey, Signature, verify};
use crate::log::Reader;
use crate::merkle::{self, Hash};
use crate::wire::{Reader as WireReader, Writer};

/// Where members store their checkpoint signatures: `{prefix}{size:020}/{signer hex}`.
pub const CHECKPOINT_PREFIX: &str = "ledger/checkpoints/";
/// Most tree sizes beyond the end of the log (as read) whose signatures a reader fetches: such a
/// head, if a quorum signed it, is evidence that slots were deleted; past this many it is noise.
pub const MAX_HEADS_BEYOND_LOG: usize = 64;
/// The checkpoint format version.
pub const CHECKPOINT_VERSION: u8 = 1;
/// Most signatures on one checkpoint.
pub const MAX_CHECKPOINT_SIGNATURES: u8 = 64;
/// Largest checkpoint object.
pub const MAX_CHECKPOINT_BYTES: u64 = 73 + 1 + 96 * MAX_CHECKPOINT_SIGNATURES as u64;

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
    /// The canonical body every signature covers (after the domain tag).
    pub fn body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(CHECKPOINT_VERSION).raw(&self.run_id.0).u64(self.size).raw(&self.root.0);
        w.finish()
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

    /// Adds `key`'s signature (no-op if it already signed, or if the list is full).
    pub fn cosign(&mut self, key: &Keypair) {
        let public = key.public();
        if self.signatures.iter().any(|s| s.key == public)
            || self.signatures.len() >= usize::from(MAX_CHECKPOINT_SIGNATURES)
        {
            return;
        }
        let signature = key.sign(CHECKPOINT_DOMAIN, &self.checkpoint.body());
        self.signatures.push(Signed { key: public, signature });
        self.signatures.sort_by_key(|s| s.key);
    }

    /// The signers whose signature verifies.
    pub fn valid_signers(&self) -> Vec<crate::key::PublicKey> {
        let body = self.checkpoint.body();
        self.signatures
            .iter()
            .filter(|s| verify(&s.key, CHECKPOINT_DOMAIN, &body, &s.signature))
            .map(|s| s.key)
            .collect()
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(&self.checkpoint.body()).u8(self.signatures.len() as u8);
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
        let count = r.field("signature count").u8()?;
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
            let key = crate::key::PublicKey(r.field("signer").array()?);
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
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if size.len() != 20
        || !size.bytes().all(|b| b.is_ascii_digit())
        || signer.len() != 64
        || !signer.bytes().all(lower_hex)
    {
        return None;
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(signer, &mut key).ok()?;
    Some((size.parse().ok()?, PublicKey(key)))
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
            root: self.root_at(size).ok_or(LedgerError::LogTooShort { head: self.next_seq(), needed: size })?,
        };
        let signed = SignedCheckpoint::sign(ours, key);
        let object_key = checkpoint_key(size, &key.public());
        match self.store.put_if_absent(&object_key, Bytes::from(signed.encode())).await? {
            PutOutcome::Created(_) => debug!(size, "checkpoint signature stored"),
            PutOutcome::AlreadyExists => {
                // Ours from an earlier call, or someone else's bytes at our key.
                let held = self.store.get(&object_key, MAX_CHECKPOINT_BYTES).await?;
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
            let bytes = match self.store.get(&checkpoint_key(size, signer), MAX_CHECKPOINT_BYTES).await {
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
        let log_len = self.leaves.len() as u64;
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

    /// Reads until at least `size` slots are read; a trusted checkpoint that covers more slots
    /// than exist means some were deleted.
    async fn catch_up_to(&mut self, size: u64) -> Result<()> {
        if (self.leaves.len() as u64) < size {
            self.poll().await?;
        }
        if (self.leaves.len() as u64) < size {
            return Err(LedgerError::LogTooShort { head: self.next_seq(), needed: size });
        }
        Ok(())
    }

    /// Verifies `cp` against this reader's own reading of the log; on a mismatch, re-reads the
    /// slots to name the one that changed.
    async fn verify_against_log(&mut self, cp: &Checkpoint) -> Result<()> {
        self.catch_up_to(cp.size).await?;
        if self.root_at(cp.size) == Some(cp.root) {
            return Ok(());
        }
        // Either the slots changed under us (named by the audit) or the checkpoint was signed
        // over a history this reader never saw.
        self.audit().await?;
        Err(LedgerError::CheckpointMismatch { size: cp.size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_binds_run_and_domain() {
        let (a, b) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
        let cp = Checkpoint { run_id: RunId([5; 32]), size: 7, root: Hash([9; 32]) };
        let mut signed = SignedCheckpoint::sign(cp, &a);
        signed.cosign(&b);
        signed.cosign(&a);
        assert_eq!(signed.signatures.len(), 2);
        let bytes = signed.encode();
        assert_eq!(SignedCheckpoint::decode(&bytes).unwrap(), signed);
        assert_eq!(signed.valid_signers().len(), 2);
        let mut other_run = signed.clone();
        other_run.checkpoint.run_id = RunId([6; 32]);
        assert!(other_run.valid_signers().is_empty());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(SignedCheckpoint::decode(&trailing).is_err());
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
