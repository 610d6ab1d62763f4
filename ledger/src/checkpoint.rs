//! Signed checkpoints (tree heads) and the reader's defence against rewritten history.
//!
//! ```text
//!   body     = version:u8 (=1) | run_id:[32] | size:u64 | root:[32]
//!   signed   = "cairn-checkpoint/v1" | body
//!   object   = body | sig_count:u8 (1..=MAX_CHECKPOINT_SIGNATURES) | (key:[32] | sig:[64]) * sig_count
//!              (sorted by key, strictly ascending)
//!
//!   ledger/checkpoint, replaced only by compare-and-swap:
//!
//!   member M publishes (size n, root r):     reader R checks:
//!     read current (c, version)                read current c
//!     c absent        ─► CAS(None, {n,r,M})     signatures: >= min valid member signatures
//!     c.size < n      ─► c must be a prefix      c.size >= trusted.size, else Rollback
//!                        of M's log; CAS new     catch up to c.size, root(first c.size) == c.root
//!     c.size == n     ─► same root: cosign,      else: re-read own slots (audit) to name the
//!                        CAS {n,r,sigs+M}         rewritten slot, or CheckpointMismatch
//!     c.size > n      ─► read on, retry          trusted := c
//! ```
//!
//! Cosignatures are plain signatures over the same body by other members: a checkpoint signed by
//! several organisations cannot be rewritten without all of them colluding. A reader keeps the
//! last checkpoint it verified; a light client that does not read every slot checks a newer
//! checkpoint against it with a consistency proof ([`verify_extension`]).

use bytes::Bytes;
use storage::{CasOutcome, StoreError};
use tracing::{debug, warn};

use crate::entry::Signed;
use crate::error::{DecodeError, LedgerError, Result};
use crate::id::RunId;
use crate::key::{CHECKPOINT_DOMAIN, Keypair, Signature, verify};
use crate::log::Reader;
use crate::merkle::{self, Hash};
use crate::wire::{Reader as WireReader, Writer};

/// The checkpoint object.
pub const CHECKPOINT_KEY: &str = "ledger/checkpoint";
/// The checkpoint format version.
pub const CHECKPOINT_VERSION: u8 = 1;
/// Most signatures on one checkpoint.
pub const MAX_CHECKPOINT_SIGNATURES: u8 = 64;
/// Largest checkpoint object.
pub const MAX_CHECKPOINT_BYTES: u64 = 73 + 1 + 96 * MAX_CHECKPOINT_SIGNATURES as u64;
/// Compare-and-swap attempts when publishing or cosigning.
pub const MAX_CHECKPOINT_ATTEMPTS: u32 = 32;

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

/// The stored checkpoint, as a publisher sees it.
enum Current {
    Absent,
    /// Not decodable, another run's, or signed by no member: replaced by the next publisher.
    Unusable(storage::Version),
    Valid(SignedCheckpoint, storage::Version),
}

impl Reader {
    async fn current_checkpoint(&self) -> Result<Current> {
        let obj = match self.store.get(CHECKPOINT_KEY, MAX_CHECKPOINT_BYTES).await {
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => return Ok(Current::Absent),
            Err(e) => return Err(e.into()),
        };
        match SignedCheckpoint::decode(&obj.bytes) {
            Ok(cp)
                if cp.checkpoint.run_id == self.run_id()
                    && cp.valid_signers().iter().any(|k| self.state.member(k).is_some()) =>
            {
                Ok(Current::Valid(cp, obj.version))
            }
            Ok(_) | Err(_) => {
                warn!("the stored checkpoint is unusable (malformed, another run's, or unsigned); replacing it");
                Ok(Current::Unusable(obj.version))
            }
        }
    }

    async fn read_checkpoint(&self) -> Result<Option<(SignedCheckpoint, storage::Version)>> {
        match self.store.get(CHECKPOINT_KEY, MAX_CHECKPOINT_BYTES).await {
            Ok(obj) => {
                let cp = SignedCheckpoint::decode(&obj.bytes)
                    .map_err(|reason| LedgerError::Malformed { what: "checkpoint", reason })?;
                if cp.checkpoint.run_id != self.run_id() {
                    return Err(LedgerError::WrongRun {
                        what: "checkpoint",
                        expected: self.run_id(),
                        found: cp.checkpoint.run_id,
                    });
                }
                Ok(Some((cp, obj.version)))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
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

    /// Reads `ledger/checkpoint` and verifies it: at least `min_signers` valid signatures by
    /// current members, not older than the last verified checkpoint, and consistent with the log
    /// as this reader read it. On success it becomes the trusted checkpoint.
    pub async fn check_checkpoint(&mut self, min_signers: usize) -> Result<Option<SignedCheckpoint>> {
        let Some((cp, _)) = self.read_checkpoint().await? else { return Ok(None) };
        let have = cp.valid_signers().iter().filter(|k| self.state.member(k).is_some()).count();
        if have < min_signers.max(1) {
            return Err(LedgerError::CheckpointUnsigned { size: cp.checkpoint.size, have, need: min_signers.max(1) });
        }
        if let Some(trusted) = self.trusted.as_ref().filter(|t| cp.checkpoint.size < t.checkpoint.size) {
            return Err(LedgerError::CheckpointRollback {
                trusted: trusted.checkpoint.size,
                found: cp.checkpoint.size,
            });
        }
        self.verify_against_log(&cp.checkpoint).await?;
        debug!(size = cp.checkpoint.size, signers = have, "checkpoint verified");
        self.trusted = Some(cp.clone());
        self.trusted_prefix_ok = true;
        Ok(Some(cp))
    }

    /// Signs a checkpoint over every slot read so far and stores it, cosigning the stored one
    /// when it is the same tree head and replacing it when it is a smaller prefix of ours.
    pub async fn publish_checkpoint(&mut self, key: &Keypair) -> Result<SignedCheckpoint> {
        for _ in 0..MAX_CHECKPOINT_ATTEMPTS {
            let ours =
                Checkpoint { run_id: self.run_id(), size: self.leaves.len() as u64, root: merkle::root(&self.leaves) };
            let (next, expected) = match self.current_checkpoint().await? {
                Current::Absent => (SignedCheckpoint::sign(ours, key), None),
                Current::Unusable(version) => (SignedCheckpoint::sign(ours, key), Some(version)),
                Current::Valid(cur, _) if cur.checkpoint.size > ours.size => {
                    // Someone saw more of the log: read on and try again.
                    self.catch_up_to(cur.checkpoint.size).await?;
                    continue;
                }
                Current::Valid(cur, version) => {
                    self.verify_against_log(&cur.checkpoint).await?;
                    if cur.checkpoint == ours {
                        let mut both = cur;
                        both.cosign(key);
                        (both, Some(version))
                    } else {
                        (SignedCheckpoint::sign(ours, key), Some(version))
                    }
                }
            };
            match self.store.compare_and_swap(CHECKPOINT_KEY, expected.as_ref(), Bytes::from(next.encode())).await? {
                CasOutcome::Swapped(_) => {
                    debug!(size = next.checkpoint.size, signers = next.signatures.len(), "checkpoint stored");
                    self.trusted = Some(next.clone());
                    self.trusted_prefix_ok = true;
                    return Ok(next);
                }
                CasOutcome::Conflict => continue,
            }
        }
        Err(LedgerError::Contended { attempts: MAX_CHECKPOINT_ATTEMPTS, last_seq: self.next_seq() })
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
