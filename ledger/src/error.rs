//! The ledger's error type, and the typed reasons a byte string is not canonical.

use storage::StoreError;

use crate::id::{RunId, Seq};

/// Why bytes are not a canonical encoding. Carried by [`LedgerError::Malformed`] and by
/// [`crate::VoidReason::Malformed`]; never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated in field `{field}`")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes remain after the last field.
    #[error("{count} trailing bytes")]
    TrailingBytes {
        /// How many.
        count: u64,
    },
    /// A length prefix is over its bound.
    #[error("field `{field}` is {len} long, over the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// A count or length is below its lower bound (an empty batch, no signature, ...).
    #[error("field `{field}` is {len}, under the minimum of {min}")]
    TooShort {
        /// The field.
        field: &'static str,
        /// Its value.
        len: u64,
        /// The bound.
        min: u64,
    },
    /// A version byte this implementation does not know.
    #[error("unknown {what} version {version}")]
    UnknownVersion {
        /// Which format.
        what: &'static str,
        /// The byte found.
        version: u8,
    },
    /// A tag (entry kind, role, change, target) that is not defined in this version.
    #[error("unknown {what} tag {tag}")]
    UnknownTag {
        /// Which enumeration.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A text field is not valid UTF-8.
    #[error("field `{field}` is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A list that must be strictly ascending (roster, signatures, metrics) is not.
    #[error("`{field}` is not strictly ascending (unsorted or duplicated)")]
    NotSorted {
        /// The list.
        field: &'static str,
    },
    /// A value is outside its allowed range (quorum of zero, ...).
    #[error("field `{field}` out of range: {reason}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why bytes are not a signed note, or not one the given keys signed (`crate::note`). Peer bytes
/// get one of these, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Over the size limit.
    #[error("the note is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not UTF-8.
    #[error("the note is not UTF-8")]
    NotUtf8,
    /// A control character other than newline.
    #[error("the note holds a control character at byte {offset}")]
    ControlCharacter {
        /// Where.
        offset: u64,
    },
    /// Not text, a blank line and signature lines.
    #[error("not a signed note: {reason}")]
    Malformed {
        /// What is missing or extra.
        reason: &'static str,
    },
    /// More signature lines than the limit.
    #[error("the note has {count} signature lines, over the limit of {limit}")]
    TooManySignatures {
        /// How many.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A signature line that is not `— <name> <base64>`.
    #[error("signature line {line}: {reason}")]
    BadSignatureLine {
        /// Which line of the signature block (from 1).
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A key name that is empty or holds a space or `+`.
    #[error("{name:?} is not a key name (empty, or a space or '+' in it)")]
    BadKeyName {
        /// The name.
        name: String,
    },
    /// A verifier key that is not `<name>+<hex key ID>+<base64(0x01 | key)>`.
    #[error("not an Ed25519 verifier key: {reason}")]
    BadVerifierKey {
        /// What is wrong.
        reason: &'static str,
    },
    /// Two different verifier keys with one name and key ID.
    #[error("two verifier keys are named {name} with key ID {id}")]
    AmbiguousVerifierKeys {
        /// The name.
        name: String,
        /// The key ID, hex.
        id: String,
    },
    /// A known key signed twice.
    #[error("{name} signed the note twice")]
    DuplicateSignature {
        /// The key name.
        name: String,
    },
    /// A known key's signature does not verify: the note is refused.
    #[error("the signature of {name} does not verify")]
    BadSignature {
        /// The key name.
        name: String,
    },
    /// No known key signed the note.
    #[error("no signature of a known key on the note")]
    NoKnownSignature,
    /// The text is not a cairn checkpoint: origin, size and root hash lines.
    #[error("not a cairn checkpoint: {reason}")]
    BadCheckpoint {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why a slot was found tampered with after a checkpoint covered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// The object is gone.
    Deleted,
    /// The object holds different bytes (overwritten, or swapped with another slot).
    Rewritten,
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tamper::Deleted => "deleted",
            Tamper::Rewritten => "rewritten",
        })
    }
}

/// A ledger failure, typed by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The object store failed (after its own retries).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bytes we were asked to trust (a checkpoint, a key file, our own entry) are not canonical.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it is not canonical.
        reason: DecodeError,
    },
    /// A value is over a hard limit, so it cannot be encoded (too many entries in a batch, ...).
    #[error("{what} is {size}, over the limit of {limit}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size or count.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The slot is already taken by other bytes (a run that already has a genesis).
    #[error("slot {0} is already taken")]
    SlotTaken(Seq),
    /// Appending gave up after losing the race for this many slots in a row.
    #[error("append gave up after {attempts} attempts (last tried slot {last_seq}): the log is too contended")]
    Contended {
        /// Attempts made.
        attempts: u32,
        /// The last slot tried.
        last_seq: Seq,
    },
    /// Appending gave up while a write to `seq` may have landed (its reply was lost and the
    /// slot could not be read back). Replay to find out; a re-appended duplicate would be void.
    #[error("append gave up ({cause}); it may have landed at slot {seq}")]
    AppendUncertain {
        /// The slot.
        seq: Seq,
        /// The store's last error, in words (what the operator must fix).
        cause: String,
    },
    /// A signed note (a checkpoint in its outside form) is refused.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// A signature does not verify.
    #[error("bad signature on {what}")]
    BadSignature {
        /// What was signed.
        what: &'static str,
    },
    /// Something signed for another run.
    #[error("{what} belongs to run {found}, not {expected}")]
    WrongRun {
        /// What.
        what: &'static str,
        /// The run we are reading.
        expected: RunId,
        /// The run it names.
        found: RunId,
    },
    /// This member's checkpoint signature key at this size holds someone else's bytes (only a
    /// bucket writer can put them there); the member's signature for this size is lost, the next
    /// checkpoint is not affected.
    #[error("the checkpoint signature key for size {size} holds bytes this member did not write")]
    CheckpointKeyTaken {
        /// The tree size.
        size: u64,
    },
    /// The log in the store does not hash to a checkpoint's root: history was rewritten or forked.
    /// (When the reader can tell which slot changed, it reports [`LedgerError::Tampered`] instead.)
    #[error("the log's first {size} slots do not hash to the checkpoint root: rewritten or forked history")]
    CheckpointMismatch {
        /// The checkpoint's tree size.
        size: u64,
    },
    /// A newer checkpoint is smaller than the one already verified (a rollback).
    #[error("checkpoint of size {found} is older than the verified checkpoint of size {trusted}")]
    CheckpointRollback {
        /// The verified size.
        trusted: u64,
        /// The size offered.
        found: u64,
    },
    /// A consistency or inclusion proof does not verify.
    #[error("{what} proof does not verify")]
    BadProof {
        /// Which proof.
        what: &'static str,
    },
    /// A slot the reader already verified was deleted or rewritten.
    #[error("slot {seq} was {how} after the reader verified it (checkpoint size {checkpoint_size})")]
    Tampered {
        /// The slot.
        seq: Seq,
        /// What happened to it.
        how: Tamper,
        /// The size of the checkpoint the reader holds (0: none yet, only its own reading).
        checkpoint_size: u64,
    },
    /// The log has no slots past this point yet, or the checkpoint covers more slots than exist.
    #[error("the log ends at slot {head}, but {needed} slots are needed")]
    LogTooShort {
        /// The first missing slot.
        head: Seq,
        /// How many slots were needed.
        needed: u64,
    },
    /// Reading or writing a local file (a key file).
    #[error("{operation} `{path}`: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An export of slots this reader no longer holds in full ([`crate::Reader::forget_before`]).
    #[error("slots {from}..{to} are not all held by this reader (it forgot below slot {kept_from})")]
    NotHeld {
        /// The first slot asked for.
        from: u64,
        /// The end of the range asked for.
        to: u64,
        /// The reader holds every entry from this slot on.
        kept_from: u64,
    },
    /// Writing a Parquet export failed (feature `parquet`).
    #[cfg(feature = "parquet")]
    #[error("parquet export: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Building the Arrow columns of an export failed (feature `parquet`).
    #[cfg(feature = "parquet")]
    #[error("arrow columns of the export: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result alias for the ledger crate.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
