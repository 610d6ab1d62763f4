//! Model state: named f32 tensors in canonical order, their hash, and safetensors load/save.
//!
//! ```text
//!   Layout  = [(name, shape)]  sorted by name (byte order), names unique
//!   State   = Layout + one Vec<f32> per tensor (row-major)
//!
//!   LayoutHash = blake3::derive_key("cairn layout v1",  layout_bytes)
//!   StateHash  = blake3::derive_key("cairn state v1",   layout_bytes || data_bytes)
//!
//!   layout_bytes = u32 count || for each tensor: u32 name_len || name (UTF-8) || u32 rank || u64 dims[rank]
//!   data_bytes   = for each tensor in layout order: its values as little-endian f32 (raw bits)
//! ```
//!
//! All integers little-endian. Safetensors files are written with no `__metadata__`, tensors sorted by
//! name, so equal states give equal files; loading accepts only finite F32 tensors.

use std::collections::HashSet;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::VerifyError;
use crate::id::{LayoutHash, StateHash};

/// Longest tensor name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Highest tensor rank.
pub const MAX_RANK: usize = 8;
/// Most tensors in one model.
pub const MAX_TENSORS: usize = 1 << 16;
/// Most elements in one tensor (2^36, 256 GiB of f32).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 36;

const LAYOUT_CONTEXT: &str = "cairn layout v1";
const STATE_CONTEXT: &str = "cairn state v1";
/// Values hashed per segment by [`State::hash`] (16 MiB of bytes): the memory it borrows, and
/// enough for blake3 to spread over every core.
pub const HASH_SEGMENT_VALUES: usize = 1 << 22;

/// One tensor's name and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name, e.g. `layers.0.attn.q.weight`.
    pub name: String,
    /// Shape, outermost dimension first (row-major). Rank 0 is a scalar.
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// Number of elements (product of the dims; 1 for a scalar).
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// Tensor names and shapes in canonical order (sorted by name), validated against the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    tensors: Vec<TensorSpec>,
}

impl Layout {
    /// Validates and sorts. Rejects empty or over-long names, duplicates, zero dims, rank or size over limits.
    pub fn new(mut tensors: Vec<TensorSpec>) -> Result<Layout, VerifyError> {
        if tensors.len() > MAX_TENSORS {
            return Err(VerifyError::InvalidLayout(format!("{} tensors, limit {MAX_TENSORS}", tensors.len())));
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut seen = HashSet::new();
        for t in &tensors {
            if t.name.is_empty() || t.name.len() > MAX_NAME_BYTES {
                return Err(VerifyError::InvalidLayout(format!("tensor name of {} bytes", t.name.len())));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(VerifyError::InvalidLayout(format!("duplicate tensor {}", t.name)));
            }
            if t.shape.len() > MAX_RANK {
                return Err(VerifyError::InvalidLayout(format!("tensor {} has rank {}", t.name, t.shape.len())));
            }
            let mut n: u64 = 1;
            for &d in &t.shape {
                if d == 0 {
                    return Err(VerifyError::InvalidLayout(format!("tensor {} has an empty dimension", t.name)));
                }
                n = n.checked_mul(d).filter(|&n| n <= MAX_TENSOR_ELEMENTS).ok_or_else(|| {
                    VerifyError::InvalidLayout(format!("tensor {} over {MAX_TENSOR_ELEMENTS} elements", t.name))
                })?;
            }
        }
        Ok(Layout { tensors })
    }

    /// The tensors, in canonical order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Total number of parameters.
    pub fn elements(&self) -> u64 {
        self.tensors.iter().map(TensorSpec::elements).sum()
    }

    /// Position of a tensor by name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.tensors.binary_search_by(|t| t.name.as_str().cmp(name)).ok()
    }

    fn write_canonical(&self, h: &mut blake3::Hasher) {
        // Layout::new bounds the count, name lengths and ranks far below u32::MAX.
        h.update(&(self.tensors.len() as u32).to_le_bytes());
        for t in &self.tensors {
            h.update(&(t.name.len() as u32).to_le_bytes());
            h.update(t.name.as_bytes());
            h.update(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                h.update(&d.to_le_bytes());
            }
        }
    }

    /// Domain-separated blake3 of the canonical layout encoding (see the module docs).
    pub fn hash(&self) -> LayoutHash {
        let mut h = blake3::Hasher::new_derive_key(LAYOUT_CONTEXT);
        self.write_canonical(&mut h);
        LayoutHash(*h.finalize().as_bytes())
    }
}

/// A model state: a [`Layout`] and the values of every tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    layout: Layout,
    data: Vec<Vec<f32>>,
}

impl State {
    /// Builds a state from named tensors in any order. Checks the layout, data lengths and finiteness.
    pub fn new(tensors: Vec<(TensorSpec, Vec<f32>)>) -> Result<State, VerifyError> {
        let mut tensors = tensors;
        tensors.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let (specs, data): (Vec<_>, Vec<_>) = tensors.into_iter().unzip();
        let layout = Layout::new(specs)?;
        State::from_parts(layout, data)
    }

    /// Builds a state from a layout and data in the layout's order.
    pub fn from_parts(layout: Layout, data: Vec<Vec<f32>>) -> Result<State, VerifyError> {
        if data.len() != layout.tensors.len() {
            return Err(VerifyError::InvalidLayout(format!(
                "{} data vectors for {} tensors",
                data.len(),
                layout.tensors.len()
            )));
        }
        for (spec, d) in layout.tensors.iter().zip(&data) {
            if d.len() as u64 != spec.elements() {
                return Err(VerifyError::DataLength {
                    name: spec.name.clone(),
                    expected: spec.elements(),
                    got: d.len() as u64,
                });
            }
            if !d.iter().all(|v| v.is_finite()) {
                return Err(VerifyError::NonFiniteTensor { name: spec.name.clone() });
            }
        }
        Ok(State { layout, data })
    }

    /// A state of zeros.
    pub fn zeros(layout: Layout) -> State {
        // Layout::new caps every tensor at MAX_TENSOR_ELEMENTS, so the cast cannot truncate on 64-bit targets.
        let data = layout.tensors.iter().map(|t| vec![0.0f32; t.elements() as usize]).collect();
        State { layout, data }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Values of tensor `i` (layout order).
    pub fn tensor(&self, i: usize) -> &[f32] {
        &self.data[i]
    }

    /// Values of a tensor by name.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.layout.position(name).map(|i| self.data[i].as_slice())
    }

    /// All tensors' values, in layout order.
    pub fn data(&self) -> &[Vec<f32>] {
        &self.data
    }

    /// Mutable values, in layout order (lengths are fixed by the layout; keep values finite).
    pub fn data_mut(&mut self) -> &mut [Vec<f32>] {
        &mut self.data
    }

    /// Domain-separated blake3 over the layout and the raw little-endian f32 bytes (see the module docs).
    ///
    /// The bytes go in in segments of [`HASH_SEGMENT_VALUES`] values, each converted and hashed on
    /// every core (blake3 is a tree hash: how its input is split between calls and threads does
    /// not change the result). At `1b` a state is 3.9 GB; one core took seconds.
    pub fn hash(&self) -> StateHash {
        self.hash_in_segments(HASH_SEGMENT_VALUES)
    }

    fn hash_in_segments(&self, segment: usize) -> StateHash {
        use rayon::prelude::*;
        let mut h = blake3::Hasher::new_derive_key(STATE_CONTEXT);
        self.layout.write_canonical(&mut h);
        let mut buf = vec![0u8; 4 * segment.min(self.data.iter().map(Vec::len).max().unwrap_or(0))];
        for d in &self.data {
            for values in d.chunks(segment.max(1)) {
                let bytes = &mut buf[..4 * values.len()];
                bytes.par_chunks_mut(4 * 4096).zip(values.par_chunks(4096)).for_each(|(dst, src)| {
                    for (b, v) in dst.chunks_exact_mut(4).zip(src) {
                        b.copy_from_slice(&v.to_le_bytes());
                    }
                });
                h.update_rayon(bytes);
            }
        }
        StateHash(*h.finalize().as_bytes())
    }

    /// Safetensors bytes: no metadata, tensors sorted by name, F32 little-endian. Equal states give equal bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, VerifyError> {
        let bytes: Vec<Vec<u8>> =
            self.data.iter().map(|d| d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).collect();
        let mut views = Vec::with_capacity(self.data.len());
        for (spec, b) in self.layout.tensors.iter().zip(&bytes) {
            let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
            let view = TensorView::new(Dtype::F32, shape, b).map_err(|e| VerifyError::Safetensors(e.to_string()))?;
            views.push((spec.name.as_str(), view));
        }
        safetensors::serialize(views, None).map_err(|e| VerifyError::Safetensors(e.to_string()))
    }

    /// Parses safetensors bytes. Rejects malformed files, non-F32 tensors, non-finite values and layouts over limits.
    /// A `__metadata__` block, if present, is ignored (it is not part of the state).
    pub fn from_safetensors(bytes: &[u8]) -> Result<State, VerifyError> {
        check_header_numbers(bytes)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| VerifyError::Safetensors(e.to_string()))?;
        let mut tensors = Vec::new();
        for (name, view) in st.iter() {
            if view.dtype() != Dtype::F32 {
                return Err(VerifyError::NotF32 { name: name.to_string(), dtype: view.dtype().to_string() });
            }
            let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.push((TensorSpec { name: name.to_string(), shape }, values));
        }
        State::new(tensors)
    }
}

/// Refuses a safetensors header that holds a number (a dimension or a data offset) larger than the
/// whole file. No file [`State::from_safetensors`] accepts has one (every tensor is F32 with no
/// empty dimension, so each dimension and offset is at most the data length), and data offsets
/// near `usize::MAX` make the safetensors crate overflow while checking the file's length (a
/// panic in debug builds). Numbers inside JSON strings (names, metadata) are skipped. A header
/// that is not there or not whole is left to the safetensors crate to report.
fn check_header_numbers(bytes: &[u8]) -> Result<(), VerifyError> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else { return Ok(()) };
    let Some(header) = usize::try_from(u64::from_le_bytes(*len)).ok().and_then(|n| rest.get(..n)) else {
        return Ok(());
    };
    let limit = bytes.len() as u64;
    let (mut in_string, mut escaped, mut number) = (false, false, None::<u64>);
    // A trailing space ends a number at the very end of the header.
    for &b in header.iter().chain(b" ") {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if b.is_ascii_digit() {
            number = Some(number.unwrap_or(0).saturating_mul(10).saturating_add(u64::from(b - b'0')));
            continue;
        }
        if let Some(n) = number.take()
            && n > limit
        {
            return Err(VerifyError::Safetensors(format!(
                "the header holds the number {n}, larger than the {limit}-byte file"
            )));
        }
        in_string = b == b'"';
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[u64]) -> TensorSpec {
        TensorSpec { name: name.into(), shape: shape.to_vec() }
    }

    /// The hash as the module's documentation defines it, one value at a time on one thread.
    fn reference_hash(state: &State) -> StateHash {
        let mut h = blake3::Hasher::new_derive_key(STATE_CONTEXT);
        state.layout.write_canonical(&mut h);
        for v in state.data.iter().flatten() {
            h.update(&v.to_le_bytes());
        }
        StateHash(*h.finalize().as_bytes())
    }

    #[test]
    fn the_hash_is_the_same_however_the_values_are_split_into_segments() {
        // 3 tensors, one of 300,000 values: more than a blake3 chunk and than every segment below.
        let big: Vec<f32> = (0..300_000u32).map(|i| (i as f32 * 0.37).sin()).collect();
        let state = State::new(vec![
            (spec("a", &[600, 500]), big),
            (spec("b", &[3]), vec![0.5, -0.0, f32::MIN_POSITIVE]),
            (spec("c", &[7]), vec![1.0; 7]),
        ])
        .unwrap();
        let want = reference_hash(&state);
        for segment in [1, 5, 4096, 4097, 65_536, HASH_SEGMENT_VALUES] {
            assert_eq!(state.hash_in_segments(segment), want, "segments of {segment}");
        }
        assert_eq!(state.hash(), want);
        // A value moved by one ulp changes it.
        let mut moved = state.clone();
        moved.data_mut()[0][299_999] = f32::from_bits(moved.data()[0][299_999].to_bits() + 1);
        assert_ne!(moved.hash(), want);
    }

    fn small() -> State {
        State::new(vec![
            (spec("w", &[2, 3]), vec![1.0, -2.0, 3.5, 0.0, -0.0, 7.25]),
            (spec("b", &[3]), vec![0.5, 0.25, -1.0]),
        ])
        .unwrap()
    }

    #[test]
    fn layout_is_sorted_and_validated() {
        let s = small();
        let names: Vec<_> = s.layout().tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "w"]);
        assert!(matches!(Layout::new(vec![spec("a", &[2]), spec("a", &[3])]), Err(VerifyError::InvalidLayout(_))));
        assert!(matches!(Layout::new(vec![spec("a", &[2, 0])]), Err(VerifyError::InvalidLayout(_))));
        assert!(matches!(Layout::new(vec![spec("", &[2])]), Err(VerifyError::InvalidLayout(_))));
        assert!(matches!(Layout::new(vec![spec("a", &[1 << 20, 1 << 20])]), Err(VerifyError::InvalidLayout(_))));
        assert!(matches!(Layout::new(vec![spec("a", &[1; 9])]), Err(VerifyError::InvalidLayout(_))));
    }

    #[test]
    fn hash_depends_on_names_shapes_and_bits() {
        let base = small();
        let h = base.hash();
        let renamed = State::new(vec![
            (spec("w2", &[2, 3]), base.get("w").unwrap().to_vec()),
            (spec("b", &[3]), base.get("b").unwrap().to_vec()),
        ])
        .unwrap();
        let reshaped = State::new(vec![
            (spec("w", &[3, 2]), base.get("w").unwrap().to_vec()),
            (spec("b", &[3]), base.get("b").unwrap().to_vec()),
        ])
        .unwrap();
        let mut zero_sign = base.clone();
        zero_sign.data_mut()[1][4] = 0.0; // -0.0 -> +0.0: a different bit pattern
        assert_ne!(h, renamed.hash());
        assert_ne!(h, reshaped.hash());
        assert_ne!(h, zero_sign.hash());
        assert_ne!(base.layout().hash(), reshaped.layout().hash());
        assert_eq!(h, base.clone().hash());
    }

    #[test]
    fn safetensors_round_trip_and_deterministic_bytes() {
        let a = small();
        let b = State::new(vec![
            (spec("b", &[3]), vec![0.5, 0.25, -1.0]),
            (spec("w", &[2, 3]), vec![1.0, -2.0, 3.5, 0.0, -0.0, 7.25]),
        ])
        .unwrap();
        let fa = a.to_safetensors().unwrap();
        assert_eq!(fa, b.to_safetensors().unwrap());
        let header = br#"{"b":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[12,36]}}"#;
        assert_eq!(&fa[8..8 + header.len()], header);
        let back = State::from_safetensors(&fa).unwrap();
        assert_eq!(back.hash(), a.hash());
    }

    #[test]
    fn load_rejects_non_f32_and_malformed() {
        let data = [0u8; 6];
        let view = TensorView::new(Dtype::F16, vec![3], &data).unwrap();
        let bytes = safetensors::serialize([("h", view)], None).unwrap();
        assert!(matches!(State::from_safetensors(&bytes), Err(VerifyError::NotF32 { .. })));
        assert!(matches!(State::from_safetensors(b"garbage!"), Err(VerifyError::Safetensors(_))));
        let mut good = small().to_safetensors().unwrap();
        good.pop();
        assert!(matches!(State::from_safetensors(&good), Err(VerifyError::Safetensors(_))));
        let nan = f32::NAN.to_le_bytes();
        let view = TensorView::new(Dtype::F32, vec![1], &nan).unwrap();
        let bytes = safetensors::serialize([("n", view)], None).unwrap();
        assert!(matches!(State::from_safetensors(&bytes), Err(VerifyError::NonFiniteTensor { .. })));
    }

    /// Data offsets that add up to nearly `usize::MAX` made the safetensors crate overflow (a panic
    /// in debug builds) while checking the file length; they are refused first.
    #[test]
    fn load_refuses_offsets_beyond_the_file() {
        let file = |header: &str| {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes
        };
        let big = (1u64 << 61) - 1;
        let mut parts = Vec::new();
        let mut off = 0u64;
        for i in 0..8 {
            parts.push(format!(r#""t{i}":{{"dtype":"U8","shape":[{big}],"data_offsets":[{off},{}]}}"#, off + big));
            off += big;
        }
        let rest = u64::MAX - 2 - off;
        parts.push(format!(r#""t8":{{"dtype":"U8","shape":[{rest}],"data_offsets":[{off},{}]}}"#, off + rest));
        let bytes = file(&format!("{{{}}}", parts.join(",")));
        let err = State::from_safetensors(&bytes).unwrap_err();
        assert!(matches!(&err, VerifyError::Safetensors(m) if m.contains("larger than")), "{err}");
        // One offset past the end, alone, is refused the same way.
        let bytes = file(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,99999]}}"#);
        assert!(matches!(State::from_safetensors(&bytes), Err(VerifyError::Safetensors(_))));
        // Digits inside names and metadata are not numbers of the header.
        let mut good = file(
            r#"{"__metadata__":{"note":"99999999999999999999 \"9999999999\""},"l99999999999999999999":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        );
        good.extend_from_slice(&1.5f32.to_le_bytes());
        let state = State::from_safetensors(&good).unwrap();
        assert_eq!(state.get("l99999999999999999999"), Some(&[1.5f32][..]));
    }
}
