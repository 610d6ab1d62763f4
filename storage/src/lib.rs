//! cairn's storage layer: the only code that talks to object stores.
//!
//! It knows keys, bytes, versions and content hashes; nothing of ledgers or tensors. Everything
//! above it (the ledger's put-if-absent sequencing, checkpoints, contribution blobs, snapshots)
//! is built from the handful of operations on [`Store`].
#![deny(missing_docs)]

pub mod admin;
mod blob;
pub mod conformance;
mod error;
pub mod fault;
mod local_cas;
mod retry;
pub mod stats;
mod store;
#[cfg(feature = "test-support")]
pub mod testing;

pub use blob::{BlobId, PART_BYTES, PARTS_IN_FLIGHT, SINGLE_PUT_MAX_BYTES, STAGING_PREFIX};
pub use error::{Result, StoreError};
pub use retry::RetryPolicy;
pub use store::{Backend, CasOutcome, Object, ObjectInfo, OpenOptions, PutOutcome, Store, Version, open, open_with};
