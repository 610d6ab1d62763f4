//! Update wire format v1 to v4: the bytes a worker uploads (and whose blake3 its ledger entry
//! signs). Version 2 is version 1 plus per-tensor top-k overrides after the value encoding; version
//! 3 (a run whose transform is not the DCT) writes the override count even when it is 0, then the
//! transform; version 4 (a run whose indices are Elias-Fano coded, with either transform) is
//! version 3 plus the index coding. The compression decides the version, so each update has one
//! encoding.
//!
//! ```text
//!   offset size  field                      (all integers little-endian)
//!   0      8     magic "CAIRNUPD"
//!   8      2     version = 1 (DCT, no overrides), 2 (DCT, overrides), 3 (identity transform)
//!                          or 4 (Elias-Fano indices)
//!   10     32    run id
//!   42     8     round
//!   50     32    base state hash
//!   82     32    worker public key
//!   114    32    layout hash
//!   146    2     chunk size            1..=256
//!   148    2     top-k                 1..=4096
//!   150    1     value encoding        0 = sign, 1 = int8, 2 = bf16, 3 = two-bit
//!   v2, v3 and v4:
//!   151    1     override count n      1..=4 (v2), 0..=4 (v3, v4)
//!   152    6 n   overrides             u32 tensor index | u16 top-k; indices strictly ascending and
//!                                      below the tensor count, top-k 1..=4096 and not the run's top-k
//!   v3 and v4:
//!   +0     1     transform             v3: 1 = identity (the DCT is written as v1 or v2);
//!                                      v4: 0 = DCT, 1 = identity
//!   v4 only:
//!   +0     1     index coding          1 = Elias-Fano (fixed-width indices are written as v1 to v3)
//!   +0     4     tensor count          = tensors in the layout (at 151 in v1)
//!   +4           tensors, in layout order:
//!                  2 chunk_rows | 2 chunk_cols | 8 grid_rows | 8 grid_cols
//!                  chunks, row-major over the grid, each:
//!                    indices  v1 to v3: kept x 12 or 16 bits, LSB-first bit stream, zero-padded
//!                             to a byte; v4: one Elias-Fano block (the elias_fano module)
//!                    values   sign:  kept bits (1 = negative), LSB-first, zero-padded to a byte
//!                             int8:  f32 scale | kept x i8
//!                             bf16:  kept x u16 (bf16 bits)
//!                             two-bit: f32 scale | kept x 2-bit codes c, LSB-first, zero-padded
//!                                    to a byte; the value is (2c - 3) * scale
//!   kept = min(the tensor's top-k, chunk_rows * chunk_cols); indices strictly ascending within a
//!   chunk. A tensor's top-k is its override's, or the run's.
//! ```
//!
//! The encoding is canonical: every accepted byte string is the only encoding of its [`Update`]
//! (`decode(b).to_bytes() == b`), so a bit flip is either rejected or yields a different update.
//! docs/FORMAT.md is the normative description.

use crate::chunk::Grid;
use crate::elias_fano;
use crate::error::VerifyError;
use crate::id::{LayoutHash, Round, RunId, StateHash, WorkerKey};
use crate::state::Layout;

/// First 8 bytes of every update.
pub const MAGIC: [u8; 8] = *b"CAIRNUPD";
/// The format version of an update without top-k overrides.
pub const VERSION: u16 = 1;
/// The format version of an update with top-k overrides.
pub const VERSION_WITH_OVERRIDES: u16 = 2;
/// The format version of an update whose transform is not the DCT (with or without overrides).
pub const VERSION_WITH_TRANSFORM: u16 = 3;
/// The format version of an update whose indices are Elias-Fano coded (either transform, with or
/// without overrides).
pub const VERSION_WITH_INDEX_CODING: u16 = 4;
/// Bytes before the first tensor in a version 1 update ([`header_len`] in general).
pub const HEADER_BYTES: u64 = 155;
/// Most per-tensor top-k overrides a run may set.
pub const MAX_TOPK_OVERRIDES: usize = 4;
/// Bytes of a tensor's grid record.
pub const TENSOR_HEADER_BYTES: u64 = 20;
/// Largest update accepted (1 GiB).
pub const MAX_UPDATE_BYTES: u64 = 1 << 30;
/// Largest chunk size (a 256 x 256 chunk has 65536 coefficients: the most 16-bit indices address).
pub const MAX_CHUNK_SIZE: u16 = 256;
/// Largest top-k (all of a 64 x 64 chunk; a larger chunk keeps at most this many).
pub const MAX_TOPK: u16 = 4096;
/// Largest magnitude of a bf16 value.
pub const MAX_ABS_VALUE: f32 = 65536.0;
/// Largest int8 scale (`127 * MAX_INT8_SCALE < MAX_ABS_VALUE`).
pub const MAX_INT8_SCALE: f32 = 512.0;
/// Largest two-bit scale (`3 * MAX_TWO_BIT_SCALE < MAX_ABS_VALUE`).
pub const MAX_TWO_BIT_SCALE: f32 = 16384.0;

/// How coefficient values travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueEncoding {
    /// 1 bit per value: the sign. Decodes to +1.0 or -1.0.
    Sign,
    /// One f32 scale per chunk and an i8 per value in -127..=127. Decodes to `q * scale`.
    Int8,
    /// bf16 per value.
    Bf16,
    /// One f32 scale per chunk and a 2-bit code `c` per value. Decodes to `(2c - 3) * scale`: the
    /// levels -3, -1, +1 and +3 times the scale.
    TwoBit,
}

impl ValueEncoding {
    /// Wire code.
    pub fn code(self) -> u8 {
        match self {
            ValueEncoding::Sign => 0,
            ValueEncoding::Int8 => 1,
            ValueEncoding::Bf16 => 2,
            ValueEncoding::TwoBit => 3,
        }
    }

    /// From a wire code.
    pub fn from_code(code: u8) -> Option<ValueEncoding> {
        match code {
            0 => Some(ValueEncoding::Sign),
            1 => Some(ValueEncoding::Int8),
            2 => Some(ValueEncoding::Bf16),
            3 => Some(ValueEncoding::TwoBit),
            _ => None,
        }
    }

    /// The name used in configs and on the command line: `sign`, `int8`, `bf16`, `two-bit`.
    pub fn name(self) -> &'static str {
        match self {
            ValueEncoding::Sign => "sign",
            ValueEncoding::Int8 => "int8",
            ValueEncoding::Bf16 => "bf16",
            ValueEncoding::TwoBit => "two-bit",
        }
    }

    /// From its [`ValueEncoding::name`].
    pub fn from_name(name: &str) -> Option<ValueEncoding> {
        [ValueEncoding::Sign, ValueEncoding::Int8, ValueEncoding::Bf16, ValueEncoding::TwoBit]
            .into_iter()
            .find(|v| v.name() == name)
    }

    fn block_bytes(self, kept: u64) -> u64 {
        match self {
            ValueEncoding::Sign => kept.div_ceil(8),
            ValueEncoding::Int8 => 4 + kept,
            ValueEncoding::Bf16 => 2 * kept,
            ValueEncoding::TwoBit => 4 + (2 * kept).div_ceil(8),
        }
    }
}

/// What a chunk's top-k is taken of: its DCT coefficients (DeMo's choice) or its entries as they
/// are (SparseLoCo's). With the identity, coefficient `(u, v)` of a chunk is its entry at row `u`,
/// column `v`, and the aggregation places the combined values without an inverse transform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Transform {
    /// The orthonormal DCT-II of each chunk (the dct module).
    #[default]
    Dct,
    /// No transform: the chunk's entries.
    Identity,
}

impl Transform {
    /// Wire and config code.
    pub fn code(self) -> u8 {
        match self {
            Transform::Dct => 0,
            Transform::Identity => 1,
        }
    }

    /// From a wire or config code.
    pub fn from_code(code: u8) -> Option<Transform> {
        [Transform::Dct, Transform::Identity].into_iter().find(|t| t.code() == code)
    }

    /// The name used in configs and on the command line: `dct`, `identity`.
    pub fn name(self) -> &'static str {
        match self {
            Transform::Dct => "dct",
            Transform::Identity => "identity",
        }
    }

    /// From its [`Transform::name`].
    pub fn from_name(name: &str) -> Option<Transform> {
        [Transform::Dct, Transform::Identity].into_iter().find(|t| t.name() == name)
    }
}

/// How each chunk's kept indices are written: fixed-width (12 bits, or 16 in chunks of more than
/// 4096 coefficients) or Elias-Fano coded (about `2 + log2(n / k)` bits each; [`crate::elias_fano`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IndexCoding {
    /// `kept` x 12 or 16 bits.
    #[default]
    Fixed,
    /// One Elias-Fano block per chunk.
    EliasFano,
}

impl IndexCoding {
    /// Wire and config code.
    pub fn code(self) -> u8 {
        match self {
            IndexCoding::Fixed => 0,
            IndexCoding::EliasFano => 1,
        }
    }

    /// From a wire or config code.
    pub fn from_code(code: u8) -> Option<IndexCoding> {
        [IndexCoding::Fixed, IndexCoding::EliasFano].into_iter().find(|c| c.code() == code)
    }

    /// The name used in configs and on the command line: `fixed`, `elias-fano`.
    pub fn name(self) -> &'static str {
        match self {
            IndexCoding::Fixed => "fixed",
            IndexCoding::EliasFano => "elias-fano",
        }
    }

    /// From its [`IndexCoding::name`].
    pub fn from_name(name: &str) -> Option<IndexCoding> {
        [IndexCoding::Fixed, IndexCoding::EliasFano].into_iter().find(|c| c.name() == name)
    }

    /// Bytes of one chunk's indices: `kept` of the `grid`'s coefficients.
    pub fn block_bytes(self, grid: &Grid, kept: u32) -> u64 {
        match self {
            IndexCoding::Fixed => (u64::from(kept) * u64::from(grid.index_bits())).div_ceil(8),
            IndexCoding::EliasFano => elias_fano::block_bytes(grid.coefficients(), kept),
        }
    }
}

/// One tensor's top-k instead of the run's: the tensor by its position in layout order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TopkOverride {
    /// Position of the tensor in layout order.
    pub tensor: u32,
    /// Coefficients kept per chunk of that tensor.
    pub topk: u16,
}

/// The per-tensor top-k overrides of a run: at most [`MAX_TOPK_OVERRIDES`], tensors strictly
/// ascending (so equal lists are equal values). A fixed-size list, so [`Compression`] stays `Copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TopkOverrides {
    len: u8,
    entries: [TopkOverride; MAX_TOPK_OVERRIDES],
}

impl TopkOverrides {
    /// No overrides: every tensor uses the run's top-k.
    pub const NONE: TopkOverrides =
        TopkOverrides { len: 0, entries: [TopkOverride { tensor: 0, topk: 0 }; MAX_TOPK_OVERRIDES] };

    /// The overrides in `list`, which must hold at most [`MAX_TOPK_OVERRIDES`] with strictly
    /// ascending tensors.
    pub fn new(list: &[TopkOverride]) -> Result<TopkOverrides, VerifyError> {
        if list.len() > MAX_TOPK_OVERRIDES {
            return Err(VerifyError::InvalidCompression(format!(
                "{} top-k overrides, at most {MAX_TOPK_OVERRIDES}",
                list.len()
            )));
        }
        if list.windows(2).any(|w| w[0].tensor >= w[1].tensor) {
            return Err(VerifyError::InvalidCompression("top-k overrides must name tensors in ascending order".into()));
        }
        let mut out = TopkOverrides::NONE;
        out.entries[..list.len()].copy_from_slice(list);
        out.len = list.len() as u8;
        Ok(out)
    }

    /// The overrides, ascending by tensor.
    pub fn as_slice(&self) -> &[TopkOverride] {
        &self.entries[..usize::from(self.len)]
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The top-k of tensor `tensor` (layout order), if overridden.
    pub fn get(&self, tensor: usize) -> Option<u16> {
        self.as_slice().iter().find(|o| o.tensor as usize == tensor).map(|o| o.topk)
    }
}

/// Compression parameters of a run (fixed at genesis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Compression {
    /// Target chunk size (64 by default).
    pub chunk_size: u16,
    /// Coefficients kept per chunk.
    pub topk: u16,
    /// Value encoding.
    pub values: ValueEncoding,
    /// Tensors that keep another number of coefficients per chunk (for example the token
    /// embedding, whose chunks mix the rows of many tokens).
    pub overrides: TopkOverrides,
    /// What each chunk's top-k is taken of.
    pub transform: Transform,
    /// How each chunk's kept indices are written.
    pub indices: IndexCoding,
}

impl Compression {
    /// The same top-k for every tensor.
    pub fn uniform(chunk_size: u16, topk: u16, values: ValueEncoding) -> Compression {
        Compression {
            chunk_size,
            topk,
            values,
            overrides: TopkOverrides::NONE,
            transform: Transform::Dct,
            indices: IndexCoding::Fixed,
        }
    }

    /// Checks the limits: chunk size and every top-k in range, and no override that repeats the
    /// run's top-k (it would be a second encoding of the same compression).
    pub fn validate(&self) -> Result<(), VerifyError> {
        if !(1..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(VerifyError::InvalidCompression(format!("chunk size {}", self.chunk_size)));
        }
        if !(1..=MAX_TOPK).contains(&self.topk) {
            return Err(VerifyError::InvalidCompression(format!("top-k {}", self.topk)));
        }
        for o in self.overrides.as_slice() {
            if !(1..=MAX_TOPK).contains(&o.topk) || o.topk == self.topk {
                return Err(VerifyError::InvalidCompression(format!(
                    "top-k {} for tensor {} (1..={MAX_TOPK}, and not the run's {})",
                    o.topk, o.tensor, self.topk
                )));
            }
        }
        Ok(())
    }

    /// [`Compression::validate`], and every override names a tensor of `layout`.
    pub fn validate_for(&self, layout: &Layout) -> Result<(), VerifyError> {
        self.validate()?;
        let tensors = layout.tensors().len();
        match self.overrides.as_slice().iter().find(|o| o.tensor as usize >= tensors) {
            Some(o) => Err(VerifyError::InvalidCompression(format!(
                "top-k override for tensor {}, the layout has {tensors}",
                o.tensor
            ))),
            None => Ok(()),
        }
    }

    /// The top-k of tensor `tensor` (layout order): its override's, or the run's.
    pub fn topk_for(&self, tensor: usize) -> u16 {
        self.overrides.get(tensor).unwrap_or(self.topk)
    }

    /// The update format version this compression is written in.
    pub fn version(&self) -> u16 {
        match (self.indices, self.transform, self.overrides.is_empty()) {
            (IndexCoding::EliasFano, _, _) => VERSION_WITH_INDEX_CODING,
            (IndexCoding::Fixed, Transform::Identity, _) => VERSION_WITH_TRANSFORM,
            (IndexCoding::Fixed, Transform::Dct, true) => VERSION,
            (IndexCoding::Fixed, Transform::Dct, false) => VERSION_WITH_OVERRIDES,
        }
    }

    /// Appends the overrides as the wire format and the run config write them: u8 count, then
    /// u32 tensor | u16 top-k each; nothing at all when there are none and `always` is false.
    pub fn write_overrides(&self, out: &mut Vec<u8>, always: bool) {
        if self.overrides.is_empty() && !always {
            return;
        }
        out.push(self.overrides.len);
        for o in self.overrides.as_slice() {
            out.extend_from_slice(&o.tensor.to_le_bytes());
            out.extend_from_slice(&o.topk.to_le_bytes());
        }
    }

    /// Grid of every tensor of `layout`, in layout order.
    pub fn grids(&self, layout: &Layout) -> Vec<Grid> {
        layout.tensors().iter().map(|t| Grid::new(t, self.chunk_size)).collect()
    }
}

/// Everything in an update before the tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The run.
    pub run: RunId,
    /// The round this update is for.
    pub round: Round,
    /// Hash of the state the worker trained from.
    pub base: StateHash,
    /// The worker's public key.
    pub worker: WorkerKey,
    /// Hash of the model layout.
    pub layout: LayoutHash,
    /// Compression parameters.
    pub compression: Compression,
}

impl Header {
    /// What a decoder expects of the update this header starts, given the model `layout` (whose
    /// hash should be `self.layout`): the encoder's side of a round trip.
    pub fn expected<'a>(&self, layout: &'a Layout) -> Expected<'a> {
        Expected {
            run: self.run,
            round: self.round,
            base: self.base,
            worker: self.worker,
            layout,
            compression: self.compression,
        }
    }
}

/// What the decoder checks an update against: the caller's view of the run, round and model.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The run.
    pub run: RunId,
    /// The round being aggregated.
    pub round: Round,
    /// Hash of the current state.
    pub base: StateHash,
    /// The key that signed the contribution entry referencing this blob.
    pub worker: WorkerKey,
    /// The model layout.
    pub layout: &'a Layout,
    /// The run's compression parameters.
    pub compression: Compression,
}

/// Coefficient values of one tensor, all chunks concatenated (chunk `c` owns entries `c*kept..(c+1)*kept`).
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// Signs: `true` is negative.
    Sign(Vec<bool>),
    /// int8 with one scale per chunk.
    Int8 {
        /// One per chunk.
        scales: Vec<f32>,
        /// One per entry, in -127..=127.
        q: Vec<i8>,
    },
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
    /// Two-bit codes with one scale per chunk.
    TwoBit {
        /// One per chunk.
        scales: Vec<f32>,
        /// One per entry, in 0..=3.
        q: Vec<u8>,
    },
}

impl Values {
    fn encoding(&self) -> ValueEncoding {
        match self {
            Values::Sign(_) => ValueEncoding::Sign,
            Values::Int8 { .. } => ValueEncoding::Int8,
            Values::Bf16(_) => ValueEncoding::Bf16,
            Values::TwoBit { .. } => ValueEncoding::TwoBit,
        }
    }

    fn len(&self) -> usize {
        match self {
            Values::Sign(v) => v.len(),
            Values::Int8 { q, .. } => q.len(),
            Values::Bf16(v) => v.len(),
            Values::TwoBit { q, .. } => q.len(),
        }
    }

    /// Value of entry `entry` (global position) in chunk `chunk`, exactly, as f64.
    /// int8 and two-bit products are exact in f64 (8-bit times 24-bit significand).
    pub fn value(&self, chunk: usize, entry: usize) -> f64 {
        match self {
            Values::Sign(v) => {
                if v[entry] {
                    -1.0
                } else {
                    1.0
                }
            }
            Values::Int8 { scales, q } => f64::from(q[entry]) * f64::from(scales[chunk]),
            Values::Bf16(v) => f64::from(half::bf16::from_bits(v[entry]).to_f32()),
            Values::TwoBit { scales, q } => (2.0 * f64::from(q[entry]) - 3.0) * f64::from(scales[chunk]),
        }
    }
}

/// One tensor's sparse coefficients.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorUpdate {
    grid: Grid,
    kept: u32,
    indices: Vec<u16>,
    values: Values,
}

impl TensorUpdate {
    /// The chunk grid.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Entries per chunk.
    pub fn kept(&self) -> u32 {
        self.kept
    }

    /// All indices, chunk after chunk, ascending within a chunk.
    pub fn indices(&self) -> &[u16] {
        &self.indices
    }

    /// All values.
    pub fn values(&self) -> &Values {
        &self.values
    }
}

/// A decoded, validated update. Only [`decode`] and [`Update::new`] make one, so its indices are in range
/// and its values finite and bounded.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    header: Header,
    tensors: Vec<TensorUpdate>,
}

/// Bytes before the first tensor of an update at `compression`.
pub fn header_len(compression: &Compression) -> u64 {
    let n = compression.overrides.as_slice().len() as u64;
    match compression.version() {
        VERSION => HEADER_BYTES,
        VERSION_WITH_OVERRIDES => HEADER_BYTES + 1 + 6 * n,
        VERSION_WITH_TRANSFORM => HEADER_BYTES + 1 + 6 * n + 1,
        _ => HEADER_BYTES + 1 + 6 * n + 2,
    }
}

/// Encoded size of an update for `layout` at `compression` (the decoder demands exactly this many bytes).
pub fn encoded_len(layout: &Layout, compression: &Compression) -> u64 {
    let mut n = header_len(compression);
    for (t, g) in compression.grids(layout).into_iter().enumerate() {
        let kept = u64::from(g.kept(compression.topk_for(t)));
        let per_chunk = compression.indices.block_bytes(&g, kept as u32) + compression.values.block_bytes(kept);
        n = n.saturating_add(TENSOR_HEADER_BYTES).saturating_add(g.chunks().saturating_mul(per_chunk));
    }
    n
}

impl Update {
    /// Builds an update from per-tensor indices and values (layout order), with every check the decoder makes.
    /// This is how an encoder outside this crate (the trainer's tch encoder) produces one.
    pub fn new(header: Header, layout: &Layout, tensors: Vec<(Vec<u16>, Values)>) -> Result<Update, VerifyError> {
        header.compression.validate_for(layout)?;
        if header.layout != layout.hash() {
            return Err(VerifyError::LayoutMismatch("layout hash".into()));
        }
        if tensors.len() != layout.tensors().len() {
            return Err(VerifyError::LayoutMismatch(format!(
                "{} tensors for a layout of {}",
                tensors.len(),
                layout.tensors().len()
            )));
        }
        let len = encoded_len(layout, &header.compression);
        if len > MAX_UPDATE_BYTES {
            return Err(VerifyError::TooLarge { len, max: MAX_UPDATE_BYTES });
        }
        let comp = header.compression;
        let mut out = Vec::with_capacity(tensors.len());
        for (t, (grid, (indices, values))) in comp.grids(layout).into_iter().zip(tensors).enumerate() {
            let kept = grid.kept(comp.topk_for(t));
            let t = t as u32;
            if values.encoding() != comp.values {
                return Err(VerifyError::WrongValueEncoding {
                    expected: comp.values.code(),
                    got: values.encoding().code(),
                });
            }
            let expected = grid.chunks() * u64::from(kept);
            for got in [indices.len() as u64, values.len() as u64] {
                if got != expected {
                    return Err(VerifyError::WrongCoefficientCount { tensor: t, expected, got });
                }
            }
            if let Values::Int8 { scales, .. } | Values::TwoBit { scales, .. } = &values
                && scales.len() as u64 != grid.chunks()
            {
                return Err(VerifyError::WrongCoefficientCount {
                    tensor: t,
                    expected: grid.chunks(),
                    got: scales.len() as u64,
                });
            }
            let tu = TensorUpdate { grid, kept, indices, values };
            for c in 0..grid.chunks() {
                check_chunk(&tu, t, c)?;
            }
            out.push(tu);
        }
        Ok(Update { header, tensors: out })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Per-tensor coefficients, layout order.
    pub fn tensors(&self) -> &[TensorUpdate] {
        &self.tensors
    }

    /// The canonical bytes (what gets uploaded and hashed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let h = &self.header;
        let comp = h.compression;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&comp.version().to_le_bytes());
        out.extend_from_slice(&h.run.0);
        out.extend_from_slice(&h.round.0.to_le_bytes());
        out.extend_from_slice(&h.base.0);
        out.extend_from_slice(&h.worker.0);
        out.extend_from_slice(&h.layout.0);
        out.extend_from_slice(&comp.chunk_size.to_le_bytes());
        out.extend_from_slice(&comp.topk.to_le_bytes());
        out.push(comp.values.code());
        let v3 = comp.version() >= VERSION_WITH_TRANSFORM;
        comp.write_overrides(&mut out, v3);
        if v3 {
            out.push(comp.transform.code());
        }
        if comp.version() == VERSION_WITH_INDEX_CODING {
            out.push(comp.indices.code());
        }
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        assert_eq!(out.len() as u64, header_len(&comp));
        for t in &self.tensors {
            let g = t.grid;
            out.extend_from_slice(&g.chunk_rows.to_le_bytes());
            out.extend_from_slice(&g.chunk_cols.to_le_bytes());
            out.extend_from_slice(&g.grid_rows().to_le_bytes());
            out.extend_from_slice(&g.grid_cols().to_le_bytes());
            let kept = t.kept as usize;
            let bits = g.index_bits();
            for c in 0..g.chunks() as usize {
                let r = c * kept..(c + 1) * kept;
                match comp.indices {
                    IndexCoding::Fixed => pack(t.indices[r.clone()].iter().copied(), bits, &mut out),
                    IndexCoding::EliasFano => elias_fano::encode(&t.indices[r.clone()], g.coefficients(), &mut out),
                }
                match &t.values {
                    Values::Sign(s) => pack(s[r].iter().map(|&neg| u16::from(neg)), 1, &mut out),
                    Values::Int8 { scales, q } => {
                        out.extend_from_slice(&scales[c].to_le_bytes());
                        out.extend(q[r].iter().map(|&v| v as u8));
                    }
                    Values::Bf16(v) => {
                        for b in &v[r] {
                            out.extend_from_slice(&b.to_le_bytes());
                        }
                    }
                    Values::TwoBit { scales, q } => {
                        out.extend_from_slice(&scales[c].to_le_bytes());
                        pack(q[r].iter().map(|&v| u16::from(v)), 2, &mut out);
                    }
                }
            }
        }
        out
    }
}

/// Appends `values`, `bits` each, as an LSB-first bit stream zero-padded to a whole byte.
fn pack(values: impl Iterator<Item = u16>, bits: u32, out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut n = 0u32;
    for v in values {
        acc |= u64::from(v) << n;
        n += bits;
        while n >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            n -= 8;
        }
    }
    if n > 0 {
        out.push(acc as u8);
    }
}

/// Reads `count` values of `bits` each from `block` (exactly `ceil(count*bits/8)` bytes) into `out`;
/// returns false if a padding bit is set.
fn unpack(block: &[u8], count: usize, bits: u32, out: &mut Vec<u16>) -> bool {
    let mask = (1u64 << bits) - 1;
    let mut acc: u64 = 0;
    let mut n = 0u32;
    let mut bytes = block.iter();
    for _ in 0..count {
        while n < bits {
            // The block length was computed for `count` values, so the iterator does not run dry here.
            acc |= u64::from(bytes.next().copied().unwrap_or(0)) << n;
            n += 8;
        }
        out.push((acc & mask) as u16);
        acc >>= bits;
        n -= bits;
    }
    acc == 0 && bytes.next().is_none()
}

/// The checks on one chunk's contents, shared by [`decode`] and [`Update::new`].
fn check_chunk(t: &TensorUpdate, tensor: u32, chunk: u64) -> Result<(), VerifyError> {
    let kept = t.kept as usize;
    let c = chunk as usize;
    let coefficients = t.grid.coefficients();
    let r = c * kept..(c + 1) * kept;
    let mut prev: Option<u16> = None;
    for &index in &t.indices[r.clone()] {
        if u32::from(index) >= coefficients {
            return Err(VerifyError::IndexOutOfRange { tensor, chunk, index });
        }
        if let Some(p) = prev {
            if index == p {
                return Err(VerifyError::DuplicateIndex { tensor, chunk, index });
            }
            if index < p {
                return Err(VerifyError::IndexOrder { tensor, chunk });
            }
        }
        prev = Some(index);
    }
    match &t.values {
        Values::Sign(_) => {}
        Values::Int8 { scales, q } => {
            let s = scales[c];
            if !s.is_finite() {
                return Err(VerifyError::NonFiniteValue { tensor, chunk });
            }
            if s.is_sign_negative() || s > MAX_INT8_SCALE || q[r].contains(&i8::MIN) {
                return Err(VerifyError::ValueOutOfBounds { tensor, chunk });
            }
        }
        Values::TwoBit { scales, q } => {
            let s = scales[c];
            if !s.is_finite() {
                return Err(VerifyError::NonFiniteValue { tensor, chunk });
            }
            if s.is_sign_negative() || s > MAX_TWO_BIT_SCALE || q[r].iter().any(|&c| c > 3) {
                return Err(VerifyError::ValueOutOfBounds { tensor, chunk });
            }
        }
        Values::Bf16(v) => {
            for &b in &v[r] {
                let x = half::bf16::from_bits(b).to_f32();
                if !x.is_finite() {
                    return Err(VerifyError::NonFiniteValue { tensor, chunk });
                }
                if x.abs() > MAX_ABS_VALUE {
                    return Err(VerifyError::ValueOutOfBounds { tensor, chunk });
                }
            }
        }
    }
    Ok(())
}

/// A cursor that reports truncation instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], VerifyError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(VerifyError::Truncated {
            needed: (self.pos as u64).saturating_add(n as u64),
            got: self.bytes.len() as u64,
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], VerifyError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, VerifyError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, VerifyError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, VerifyError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// Decodes and checks an update against what the caller expects. Every failure is a typed rejection;
/// no input makes it panic.
pub fn decode(bytes: &[u8], expected: &Expected<'_>) -> Result<Update, VerifyError> {
    let len = bytes.len() as u64;
    if len > MAX_UPDATE_BYTES {
        return Err(VerifyError::TooLarge { len, max: MAX_UPDATE_BYTES });
    }
    expected.compression.validate_for(expected.layout)?;
    let mut r = Reader { bytes, pos: 0 };
    if r.array::<8>()? != MAGIC {
        return Err(VerifyError::BadMagic);
    }
    let version = r.u16()?;
    if !(VERSION..=VERSION_WITH_INDEX_CODING).contains(&version) {
        return Err(VerifyError::UnsupportedVersion(version));
    }
    let run = RunId(r.array()?);
    if run != expected.run {
        return Err(VerifyError::WrongRun);
    }
    let round = Round(r.u64()?);
    if round != expected.round {
        return Err(VerifyError::WrongRound { expected: expected.round, got: round });
    }
    let base = StateHash(r.array()?);
    if base != expected.base {
        return Err(VerifyError::WrongBase);
    }
    let worker = WorkerKey(r.array()?);
    if worker != expected.worker {
        return Err(VerifyError::WrongWorker);
    }
    let layout = LayoutHash(r.array()?);
    if layout != expected.layout.hash() {
        return Err(VerifyError::LayoutMismatch("layout hash".into()));
    }
    let comp = expected.compression;
    let chunk_size = r.u16()?;
    if chunk_size != comp.chunk_size {
        return Err(VerifyError::WrongChunkSize { expected: comp.chunk_size, got: chunk_size });
    }
    let topk = r.u16()?;
    if topk != comp.topk {
        return Err(VerifyError::WrongTopK { expected: comp.topk, got: topk });
    }
    let code = r.array::<1>()?[0];
    if code != comp.values.code() {
        return Err(VerifyError::WrongValueEncoding { expected: comp.values.code(), got: code });
    }
    let mut overrides = Vec::new();
    if version != VERSION {
        let n = r.array::<1>()?[0];
        let least = u8::from(version == VERSION_WITH_OVERRIDES);
        if n < least || usize::from(n) > MAX_TOPK_OVERRIDES {
            return Err(VerifyError::InvalidCompression(format!("{n} top-k overrides in a version {version} update")));
        }
        for _ in 0..n {
            overrides.push(TopkOverride { tensor: r.u32()?, topk: r.u16()? });
        }
    }
    if overrides.as_slice() != comp.overrides.as_slice() {
        return Err(VerifyError::WrongTopkOverrides {
            expected: format_overrides(comp.overrides.as_slice()),
            got: format_overrides(&overrides),
        });
    }
    let transform = match version {
        VERSION_WITH_TRANSFORM => {
            let code = r.array::<1>()?[0];
            match Transform::from_code(code) {
                Some(Transform::Identity) => Transform::Identity,
                // The DCT is written as version 1 or 2: a second encoding would break canonicity.
                Some(Transform::Dct) => {
                    return Err(VerifyError::InvalidCompression(
                        "the DCT transform in a version 3 update (it is written as version 1 or 2)".into(),
                    ));
                }
                None => return Err(VerifyError::WrongTransform { expected: comp.transform.code(), got: code }),
            }
        }
        VERSION_WITH_INDEX_CODING => {
            let code = r.array::<1>()?[0];
            Transform::from_code(code)
                .ok_or(VerifyError::WrongTransform { expected: comp.transform.code(), got: code })?
        }
        _ => Transform::Dct,
    };
    if transform != comp.transform {
        return Err(VerifyError::WrongTransform { expected: comp.transform.code(), got: transform.code() });
    }
    let indices = match version {
        VERSION_WITH_INDEX_CODING => {
            let code = r.array::<1>()?[0];
            match IndexCoding::from_code(code) {
                Some(IndexCoding::EliasFano) => IndexCoding::EliasFano,
                // Fixed-width indices are written as version 1 to 3: a second encoding would break canonicity.
                Some(IndexCoding::Fixed) => {
                    return Err(VerifyError::InvalidCompression(
                        "fixed-width indices in a version 4 update (they are written as version 1 to 3)".into(),
                    ));
                }
                None => return Err(VerifyError::WrongIndexCoding { expected: comp.indices.code(), got: code }),
            }
        }
        _ => IndexCoding::Fixed,
    };
    if indices != comp.indices {
        return Err(VerifyError::WrongIndexCoding { expected: comp.indices.code(), got: indices.code() });
    }
    let count = r.u32()?;
    let tensors = expected.layout.tensors().len();
    if count as usize != tensors {
        return Err(VerifyError::LayoutMismatch(format!("{count} tensors for a layout of {tensors}")));
    }
    let total = encoded_len(expected.layout, &comp);
    if len < total {
        return Err(VerifyError::Truncated { needed: total, got: len });
    }
    if len > total {
        return Err(VerifyError::TrailingBytes { extra: len - total });
    }

    let header = Header { run, round, base, worker, layout, compression: comp };
    let mut out = Vec::with_capacity(tensors);
    for (t, grid) in comp.grids(expected.layout).into_iter().enumerate() {
        let kept = grid.kept(comp.topk_for(t));
        let t = t as u32;
        let (chunk_rows, chunk_cols, grid_rows, grid_cols) = (r.u16()?, r.u16()?, r.u64()?, r.u64()?);
        if (chunk_rows, chunk_cols, grid_rows, grid_cols)
            != (grid.chunk_rows, grid.chunk_cols, grid.grid_rows(), grid.grid_cols())
        {
            return Err(VerifyError::LayoutMismatch(format!("chunk grid of tensor {t}")));
        }
        let k = kept as usize;
        // The exact-length check above bounds every count below by the input length.
        let chunks = grid.chunks() as usize;
        let bits = grid.index_bits();
        let index_bytes = comp.indices.block_bytes(&grid, kept) as usize;
        let mut indices = Vec::with_capacity(chunks * k);
        let mut values = match comp.values {
            ValueEncoding::Sign => Values::Sign(Vec::with_capacity(chunks * k)),
            ValueEncoding::Int8 => {
                Values::Int8 { scales: Vec::with_capacity(chunks), q: Vec::with_capacity(chunks * k) }
            }
            ValueEncoding::Bf16 => Values::Bf16(Vec::with_capacity(chunks * k)),
            ValueEncoding::TwoBit => {
                Values::TwoBit { scales: Vec::with_capacity(chunks), q: Vec::with_capacity(chunks * k) }
            }
        };
        let mut codes = Vec::with_capacity(k);
        for c in 0..chunks {
            let block = r.take(index_bytes)?;
            match comp.indices {
                IndexCoding::Fixed => {
                    if !unpack(block, k, bits, &mut indices) {
                        return Err(VerifyError::NonZeroPadding { tensor: t, chunk: c as u64 });
                    }
                }
                IndexCoding::EliasFano => {
                    if !elias_fano::decode(block, grid.coefficients(), kept, &mut indices) {
                        return Err(VerifyError::MalformedIndices { tensor: t, chunk: c as u64 });
                    }
                }
            }
            match &mut values {
                Values::Sign(v) => {
                    codes.clear();
                    if !unpack(r.take(k.div_ceil(8))?, k, 1, &mut codes) {
                        return Err(VerifyError::NonZeroPadding { tensor: t, chunk: c as u64 });
                    }
                    v.extend(codes.iter().map(|&s| s == 1));
                }
                Values::Int8 { scales, q } => {
                    scales.push(f32::from_le_bytes(r.array()?));
                    q.extend(r.take(k)?.iter().map(|&b| b as i8));
                }
                Values::Bf16(v) => {
                    v.extend(r.take(2 * k)?.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])));
                }
                Values::TwoBit { scales, q } => {
                    scales.push(f32::from_le_bytes(r.array()?));
                    codes.clear();
                    if !unpack(r.take((2 * k).div_ceil(8))?, k, 2, &mut codes) {
                        return Err(VerifyError::NonZeroPadding { tensor: t, chunk: c as u64 });
                    }
                    q.extend(codes.iter().map(|&v| v as u8));
                }
            }
        }
        let tu = TensorUpdate { grid, kept, indices, values };
        for c in 0..chunks {
            check_chunk(&tu, t, c as u64)?;
        }
        out.push(tu);
    }
    if r.pos != bytes.len() {
        return Err(VerifyError::TrailingBytes { extra: (bytes.len() - r.pos) as u64 });
    }
    Ok(Update { header, tensors: out })
}

/// `tensor:topk,...` for error messages (`none` for an empty list).
pub(crate) fn format_overrides(list: &[TopkOverride]) -> String {
    match list.is_empty() {
        true => "none".into(),
        false => list.iter().map(|o| format!("{}:{}", o.tensor, o.topk)).collect::<Vec<_>>().join(","),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_12_and_16_bits() {
        for bits in [1u32, 12, 16] {
            let max = if bits == 16 { u16::MAX } else { (1u16 << bits) - 1 };
            for count in 0..9usize {
                let vals: Vec<u16> = (0..count).map(|i| (i as u16).wrapping_mul(2749) & max).collect();
                let mut buf = Vec::new();
                pack(vals.iter().copied(), bits, &mut buf);
                assert_eq!(buf.len(), (count * bits as usize).div_ceil(8));
                let mut back = Vec::new();
                assert!(unpack(&buf, count, bits, &mut back));
                assert_eq!(back, vals);
            }
        }
        // 12 bits: 0xABC then 0x123 -> bytes BC 3A 12
        let mut buf = Vec::new();
        pack([0xABC, 0x123].into_iter(), 12, &mut buf);
        assert_eq!(buf, [0xBC, 0x3A, 0x12]);
        // a set padding bit is caught
        let mut back = Vec::new();
        assert!(!unpack(&[0xBC, 0x3A, 0x12, 0x00], 2, 12, &mut back));
        back.clear();
        assert!(!unpack(&[0xBC, 0xFA], 1, 12, &mut back));
    }
}
