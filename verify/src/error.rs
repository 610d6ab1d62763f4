//! The crate's one error type: every rejection a caller can act on.
//!
//! Decoder rejections carry the position (tensor index in layout order, chunk index in row-major grid
//! order) so a validator's verdict can say exactly what was wrong with a contribution.

use crate::id::{Round, StateHash};

/// Everything `verify` can reject. Bad peer input always lands here, never in a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    // --- update wire format ---
    /// The update is larger than [`crate::wire::MAX_UPDATE_BYTES`].
    #[error("update is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Length of the offered bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The first 8 bytes are not [`crate::wire::MAGIC`].
    #[error("not a cairn update (bad magic)")]
    BadMagic,
    /// The format version is not one this decoder reads.
    #[error("unsupported update format version {0}")]
    UnsupportedVersion(u16),
    /// The update was made for another run.
    #[error("update belongs to another run")]
    WrongRun,
    /// The update was made for another round.
    #[error("update is for round {got}, expected round {expected}")]
    WrongRound {
        /// Round the caller expects.
        expected: Round,
        /// Round in the update.
        got: Round,
    },
    /// The update was computed from another model state (stale or forked base).
    #[error("update was computed from another base state")]
    WrongBase,
    /// The update names a worker other than the one that signed the contribution.
    #[error("update names another worker")]
    WrongWorker,
    /// The tensor layout (names and shapes) differs from the model's, or a tensor's chunk grid does.
    #[error("layout mismatch: {0}")]
    LayoutMismatch(String),
    /// The chunk size differs from the run's.
    #[error("chunk size {got}, expected {expected}")]
    WrongChunkSize {
        /// The run's chunk size.
        expected: u16,
        /// The update's.
        got: u16,
    },
    /// The top-k differs from the run's.
    #[error("top-k {got}, expected {expected}")]
    WrongTopK {
        /// The run's k.
        expected: u16,
        /// The update's.
        got: u16,
    },
    /// The per-tensor top-k overrides differ from the run's (`tensor:topk,...`, or `none`).
    #[error("top-k overrides {got}, expected {expected}")]
    WrongTopkOverrides {
        /// The run's overrides.
        expected: String,
        /// The update's.
        got: String,
    },
    /// The value encoding differs from the run's, or is not a known code.
    #[error("value encoding code {got}, expected {expected}")]
    WrongValueEncoding {
        /// The run's encoding code.
        expected: u8,
        /// The update's code.
        got: u8,
    },
    /// The transform differs from the run's, or is not a known code (or is the DCT's code in a
    /// version 3 update, which only the identity uses).
    #[error("transform code {got}, expected {expected}")]
    WrongTransform {
        /// The run's transform code.
        expected: u8,
        /// The update's code.
        got: u8,
    },
    /// The index coding differs from the run's, or is not a known code.
    #[error("index coding code {got}, expected {expected}")]
    WrongIndexCoding {
        /// The run's index coding code.
        expected: u8,
        /// The update's code.
        got: u8,
    },
    /// Compression parameters outside the protocol's limits (in a config, or in an update).
    #[error("invalid compression parameters: {0}")]
    InvalidCompression(String),
    /// The bytes end before the update does.
    #[error("update truncated: {needed} bytes needed, {got} present")]
    Truncated {
        /// Bytes the update needs.
        needed: u64,
        /// Bytes present.
        got: u64,
    },
    /// Bytes follow the end of the update.
    #[error("{extra} trailing bytes after the update")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// A coefficient index is not below the chunk's coefficient count.
    #[error("tensor {tensor} chunk {chunk}: index {index} out of range")]
    IndexOutOfRange {
        /// Tensor position in layout order.
        tensor: u32,
        /// Chunk position in row-major grid order.
        chunk: u64,
        /// The offending index.
        index: u16,
    },
    /// The same coefficient index appears twice in one chunk.
    #[error("tensor {tensor} chunk {chunk}: index {index} repeated")]
    DuplicateIndex {
        /// Tensor position in layout order.
        tensor: u32,
        /// Chunk position in row-major grid order.
        chunk: u64,
        /// The repeated index.
        index: u16,
    },
    /// Indices within a chunk are not in strictly ascending order (the canonical order).
    #[error("tensor {tensor} chunk {chunk}: indices not ascending")]
    IndexOrder {
        /// Tensor position in layout order.
        tensor: u32,
        /// Chunk position in row-major grid order.
        chunk: u64,
    },
    /// An Elias-Fano index block whose high part holds other than `kept` set bits.
    #[error("tensor {tensor} chunk {chunk}: malformed Elias-Fano index block")]
    MalformedIndices {
        /// Tensor position in layout order.
        tensor: u32,
        /// Chunk position in row-major grid order.
        chunk: u64,
    },
    /// Padding bits at the end of a packed block are not zero.
    #[error("tensor {tensor} chunk {chunk}: non-zero padding bits")]
    NonZeroPadding {
        /// Tensor position in layout order.
        tensor: u32,
        /// Chunk position in row-major grid order.
        chunk: u64,
    },
    /// A value or scale is NaN or infinite.
    #[error("tensor {tensor} chunk {chunk}: non-finite value")]
    NonFiniteValue {
        /// Tensor position in layout order.
        tensor: u32,
        /// Chunk position in row-major grid order.
        chunk: u64,
    },
    /// A value or scale is outside the protocol's bounds.
    #[error("tensor {tensor} chunk {chunk}: value out of bounds")]
    ValueOutOfBounds {
        /// Tensor position in layout order.
        tensor: u32,
        /// Chunk position in row-major grid order.
        chunk: u64,
    },
    /// A chunk carries a number of coefficients other than `min(k, coefficients per chunk)`.
    #[error("tensor {tensor}: {got} coefficients given, expected {expected}")]
    WrongCoefficientCount {
        /// Tensor position in layout order.
        tensor: u32,
        /// Expected count (all chunks together).
        expected: u64,
        /// Count given.
        got: u64,
    },

    // --- model state ---
    /// A tensor layout is not acceptable (empty dim, duplicate or bad name, rank or size over limits).
    #[error("invalid layout: {0}")]
    InvalidLayout(String),
    /// A tensor's data length does not match its shape.
    #[error("tensor {name}: {got} values for a shape of {expected}")]
    DataLength {
        /// Tensor name.
        name: String,
        /// Element count of the shape.
        expected: u64,
        /// Values given.
        got: u64,
    },
    /// A safetensors file could not be parsed.
    #[error("malformed safetensors file: {0}")]
    Safetensors(String),
    /// A safetensors tensor is not f32.
    #[error("tensor {name} has dtype {dtype}, only F32 is accepted")]
    NotF32 {
        /// Tensor name.
        name: String,
        /// Its dtype, as safetensors names it.
        dtype: String,
    },
    /// A model state or encoder input holds NaN or infinity.
    #[error("tensor {name} holds a non-finite value")]
    NonFiniteTensor {
        /// Tensor name.
        name: String,
    },

    // --- aggregation ---
    /// More updates than [`crate::aggregate::MAX_UPDATES_PER_ROUND`].
    #[error("{count} updates in one round, over the limit of {max}")]
    TooManyUpdates {
        /// Updates given.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A hyperparameter is outside its domain (zero denominator, weight decay over 1, ...).
    #[error("invalid hyperparameters: {0}")]
    InvalidHyper(String),

    // --- run config ---
    /// The run config bytes (in the Genesis entry) are not a valid canonical [`crate::config::RunConfig`].
    #[error("run config: {0}")]
    Config(#[from] ConfigError),

    // --- replay ---
    /// The entries do not start with an accepted Genesis entry.
    #[error("the ledger has no accepted genesis")]
    NoGenesis,
    /// The state a replay starts from does not have the hash the ledger records for it.
    #[error("start state hashes to {actual}, the ledger claims {claimed}")]
    StartMismatch {
        /// What the Genesis or Snapshot entry claims.
        claimed: StateHash,
        /// The hash of the state given.
        actual: StateHash,
    },
    /// The start state's layout is not the run's.
    #[error("start state has another layout than the run config's")]
    StartLayout,
    /// No accepted Snapshot entry at the position the replay was asked to start from.
    #[error("no accepted snapshot entry at {0}")]
    NoSnapshot(String),
    /// [`crate::replay::Replay::apply`] was given a plan other than the next one, or not one blob per
    /// counted contribution (a caller bug, not peer input).
    #[error("replay plan or blobs do not match the replay's next round")]
    PlanMismatch,
    /// A published round step that cannot stand for the round (see [`crate::step`]).
    #[error("round step: {0}")]
    Step(#[from] crate::step::StepError),
    /// A blob could not be read for a reason that may pass (network, permissions): the replay stops
    /// rather than compute a state that depends on the weather. Retry later.
    #[error("blob {blob} unavailable: {reason}")]
    BlobUnavailable {
        /// The blob, hex.
        blob: String,
        /// What the store said.
        reason: String,
    },
}

/// Why run config bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The first 8 bytes are not [`crate::config::CONFIG_MAGIC`].
    #[error("not a cairn run config (bad magic)")]
    BadMagic,
    /// A config version this crate does not read.
    #[error("unsupported run config version {0}")]
    UnsupportedVersion(u16),
    /// The bytes end inside a field.
    #[error("truncated in {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes follow the last field.
    #[error("{extra} trailing bytes")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// A length or count over its limit.
    #[error("{field} of {len}, over the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length or count.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A tag byte with no meaning.
    #[error("unknown {field} tag {tag}")]
    UnknownTag {
        /// The field.
        field: &'static str,
        /// The tag.
        tag: u8,
    },
    /// Well-formed but not the one canonical encoding (unsorted tensors, invalid UTF-8, ...).
    #[error("not canonical: {0}")]
    NotCanonical(&'static str),
    /// A value outside its domain (max contributions 0, min above max, ...).
    #[error("invalid: {0}")]
    Invalid(String),
}
