//! cairn's reproducible core: the update wire format and its decoder, the reference DeMo encoder,
//! the bit-exact aggregation rule and model-state hashing.
//!
//! ```text
//!   worker:   momentum ──encode──▶ Update ──to_bytes──▶ blob (hash signed in the ledger)
//!   everyone: blob ──decode(Expected)──▶ Update ─┐
//!             State ──────────────────────────────┴─aggregate(round, updates in ledger order)──▶ State'
//!             State'.hash() == the StateHash every honest participant computes, byte for byte
//! ```
//!
//! Modules: [`state`] (tensors, [`StateHash`], safetensors), [`chunk`] (chunk grids), [`dct`]
//! (portable DCT-II), [`wire`] (format v1 and decoder), [`mod@encode`] (reference encoder),
//! [`schedule`] (learning rate), [`mod@aggregate`] (the rule). Never links libtorch; no clock, no env.
#![deny(missing_docs)]

pub mod aggregate;
pub mod chunk;
pub mod dct;
pub mod encode;
mod error;
pub mod id;
pub mod schedule;
pub mod state;
pub mod wire;

pub use aggregate::{Hyper, NormClip, aggregate, apply};
pub use encode::encode;
pub use error::VerifyError;
pub use id::{LayoutHash, Round, RunId, StateHash, WorkerKey};
pub use schedule::{Ratio, Schedule};
pub use state::{Layout, State, TensorSpec};
pub use wire::{Compression, Expected, Header, Update, ValueEncoding, Values, decode};
