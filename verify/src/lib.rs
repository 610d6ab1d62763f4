//! cairn's reproducible core: the update wire format and its decoder, the reference DeMo encoder,
//! the bit-exact aggregation rule and model-state hashing.
//!
//! ```text
//!   worker:   momentum ──encode──▶ Update ──to_bytes──▶ blob (hash signed in the ledger)
//!   everyone: blob ──decode(Expected)──▶ Update ─┐
//!             State ──────────────────────────────┴─aggregate(round, updates in ledger order)──▶ State'
//!             State'.hash() == the StateHash every honest participant computes, byte for byte
//!   auditor:  ledger entries ──RoundRule──▶ counted per round ──replay(blobs)──▶ states, claims checked
//! ```
//!
//! Modules: [`state`] (tensors, [`StateHash`], safetensors), [`chunk`] (chunk grids), [`dct`]
//! (portable DCT-II), [`elias_fano`] (the index coding of wire v4), [`wire`] (formats v1 to v4 and the decoder), [`mod@encode`] (reference encoder),
//! [`schedule`] (learning rate), [`mod@aggregate`] (the rule), [`config`] (the run config in the
//! Genesis entry), [`round`] (which contributions count), [`mod@replay`] (recompute every round and
//! check every claimed hash), [`mod@audit`] (what `cairn audit` checks, and the `cairn gc` plan).
//! Never links libtorch; no clock, no env in the core (replay's and the audit's store IO sits
//! behind [`BlobSource`] and at the audit's edge).
#![deny(missing_docs)]

pub mod aggregate;
pub mod audit;
pub mod chunk;
pub mod config;
pub mod dct;
pub mod elias_fano;
pub mod encode;
mod error;
pub mod id;
pub mod replay;
pub mod round;
pub mod schedule;
pub mod state;
pub mod step;
pub mod wire;

pub use aggregate::{Hyper, NormClip, StepRule, aggregate, apply};
pub use config::{ExclusionRules, RoundRules, RunConfig};
pub use encode::encode;
pub use error::{ConfigError, VerifyError};
pub use id::{LayoutHash, Round, RunId, StateHash, WorkerKey};
pub use replay::{BlobFault, BlobSource, Replay, ReplayReport, Replayed, RunBlobs, Start, replay};
pub use round::{Candidate, NotCounted, RoundPlan, RoundRule, Thresholds};
pub use schedule::{Ratio, Schedule};
pub use state::{Layout, State, TensorSpec};
pub use wire::{
    Compression, Expected, Header, IndexCoding, TopkOverride, TopkOverrides, Transform, Update, ValueEncoding, Values,
    decode,
};
