//! cairn's ledger: an append-only log of signed entries in a shared bucket, with one total order
//! decided by put-if-absent, one validity rule every reader applies, and Merkle checkpoints that
//! make a rewritten history evident.
//!
//! ```text
//!   Entry (entry)  ─sign(key)─►  slot object (slot) ─Appender::append (log)─►  ledger/seq/{N:020}
//!                                                                                 │
//!   Reader (log) ◄── poll / wait_for_new ─────────────────────────────────────────┘
//!     ├─ validity::LedgerState::apply   Accept | Void(reason), pure
//!     ├─ rounds::RoundTally             closes and attested results, by a quorum of organisations
//!     ├─ merkle leaves, one per slot    inclusion / consistency proofs
//!     ├─ checkpoint: publish, cosign, check; audit names a rewritten slot; as a signed note (note)
//!     └─ export (feature `parquet`): what it read, as a Parquet file
//! ```
//!
//! The store handed in is already scoped to one run (`<run>/`); the ledger only knows the keys
//! under `ledger/`. The format is specified in docs/LEDGER.md.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod entry;
mod error;
#[cfg(feature = "parquet")]
pub mod export;
pub mod id;
pub mod key;
pub mod log;
pub mod merkle;
pub mod note;
pub mod rounds;
pub mod slot;
pub mod validity;
mod wire;

pub use checkpoint::{Checkpoint, SignedCheckpoint, Witness, verify_extension};
pub use entry::{
    Attestation, Body, Change, CloseVote, Contribution, Entry, Evaluation, Genesis, Kind, Member, Role, RosterChange,
    Snapshot, Target, Verdict,
};
pub use error::{DecodeError, LedgerError, NoteError, Result, Tamper};
pub use id::{EntryPos, Round, RunId, Seq, StateHash};
pub use key::{Keypair, PublicKey, Signature, read_key_file, write_key_file};
pub use log::{Appender, LoggedEntry, Reader, SlotRecord, find_head, genesis_run_id, seq_key, write_genesis};
pub use merkle::Hash;
pub use rounds::{Close, Final, RoundError, RoundTally};
pub use storage::BlobId;
pub use validity::{Checked, LedgerState, RawEntry, Validity, VoidReason, validate, validate_checked};
