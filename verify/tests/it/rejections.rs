//! Every decoder rejection, each from a crafted input. The small layout: tensor "a" [16, 16] in 8x8
//! chunks (64 coefficients, kept 5: 60-bit index block, 4 padding bits), tensor "b" [10] in 1-D
//! chunks of 5. Tensor "a"'s first chunk starts at byte 175 (155 header + 20 grid record).

use verify::wire::{MAX_UPDATE_BYTES, encoded_len};
use verify::{
    Compression, Expected, Layout, Round, RunId, State, StateHash, Update, ValueEncoding, Values, VerifyError, decode,
    encode,
};

use crate::common::*;

const CHUNK0: usize = 175;
const INDEX_BYTES: usize = 8;
const VALUES0: usize = CHUNK0 + INDEX_BYTES;

fn small_layout() -> Layout {
    Layout::new(vec![spec("a", &[16, 16]), spec("b", &[10])]).unwrap()
}

fn comp(values: ValueEncoding) -> Compression {
    Compression::uniform(8, 5, values)
}

struct Case {
    layout: Layout,
    base: State,
    comp: Compression,
    update: Update,
    bytes: Vec<u8>,
}

impl Case {
    fn new(values: ValueEncoding) -> Case {
        let layout = small_layout();
        let mut r = rng(11);
        let base = random_state(&layout, &mut r, 1.0);
        let momentum = random_state(&layout, &mut r, 1.0);
        let comp = comp(values);
        let update = encode(&momentum, &header(&layout, base.hash(), worker(3), comp)).unwrap();
        let bytes = update.to_bytes();
        Case { layout, base, comp, update, bytes }
    }

    fn expected(&self) -> Expected<'_> {
        expected(&self.layout, self.base.hash(), worker(3), self.comp)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Update, VerifyError> {
        decode(bytes, &self.expected())
    }

    /// Decodes `bytes` after `edit`.
    fn edited(&self, edit: impl FnOnce(&mut Vec<u8>)) -> Result<Update, VerifyError> {
        let mut b = self.bytes.clone();
        edit(&mut b);
        self.decode(&b)
    }
}

/// The five 12-bit indices of tensor "a" chunk 0, read and rewritten by hand (an independent unpacker).
fn indices(bytes: &[u8]) -> [u16; 5] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[CHUNK0..CHUNK0 + 8]);
    let w = u64::from_le_bytes(w);
    std::array::from_fn(|i| ((w >> (12 * i)) & 0xFFF) as u16)
}

fn set_indices(bytes: &mut [u8], idx: [u16; 5]) {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[CHUNK0..CHUNK0 + 8]);
    let mut w = u64::from_le_bytes(w) & !((1u64 << 60) - 1);
    for (i, v) in idx.iter().enumerate() {
        w |= u64::from(*v) << (12 * i);
    }
    bytes[CHUNK0..CHUNK0 + 8].copy_from_slice(&w.to_le_bytes());
}

#[test]
fn valid_bytes_decode_and_are_canonical() {
    for v in [ValueEncoding::Sign, ValueEncoding::Int8, ValueEncoding::Bf16, ValueEncoding::TwoBit] {
        let c = Case::new(v);
        assert_eq!(c.bytes.len() as u64, encoded_len(&c.layout, &c.comp));
        let d = c.decode(&c.bytes).unwrap();
        assert_eq!(d, c.update);
        assert_eq!(d.to_bytes(), c.bytes);
        let idx = indices(&c.bytes);
        assert!(idx.windows(2).all(|w| w[0] < w[1]) && idx[4] < 64, "{idx:?}");
    }
}

#[test]
fn too_large() {
    let c = Case::new(ValueEncoding::Sign);
    let huge = vec![0u8; MAX_UPDATE_BYTES as usize + 1];
    assert_eq!(c.decode(&huge), Err(VerifyError::TooLarge { len: MAX_UPDATE_BYTES + 1, max: MAX_UPDATE_BYTES }));
}

#[test]
fn bad_magic_and_version() {
    let c = Case::new(ValueEncoding::Sign);
    assert_eq!(c.edited(|b| b[0] ^= 1), Err(VerifyError::BadMagic));
    assert_eq!(c.edited(|b| b[8] = 5), Err(VerifyError::UnsupportedVersion(5)));
    // Version 4 carries a transform and an index coding byte, which a v1 run's update must not have.
    assert!(c.edited(|b| b[8] = 4).is_err());
    // Version 3 carries a transform byte, which a DCT run's update must not have.
    assert!(c.edited(|b| b[8] = 3).is_err());
    // Version 2 reads overrides after the value encoding, which this run does not have.
    assert!(matches!(c.edited(|b| b[8] = 2), Err(VerifyError::WrongTopkOverrides { .. })));
}

#[test]
fn wrong_run_round_base_worker() {
    let c = Case::new(ValueEncoding::Sign);
    assert_eq!(c.edited(|b| b[10] ^= 0x80), Err(VerifyError::WrongRun));
    assert_eq!(c.edited(|b| b[42] ^= 1), Err(VerifyError::WrongRound { expected: ROUND, got: Round(ROUND.0 ^ 1) }));
    assert_eq!(c.edited(|b| b[50] ^= 1), Err(VerifyError::WrongBase));
    assert_eq!(c.edited(|b| b[82] ^= 1), Err(VerifyError::WrongWorker));
    let other_run = Expected { run: RunId([8; 32]), ..c.expected() };
    assert_eq!(decode(&c.bytes, &other_run), Err(VerifyError::WrongRun));
    let stale = Expected { base: StateHash([0; 32]), ..c.expected() };
    assert_eq!(decode(&c.bytes, &stale), Err(VerifyError::WrongBase));
}

#[test]
fn layout_mismatch() {
    let c = Case::new(ValueEncoding::Sign);
    assert!(matches!(c.edited(|b| b[114] ^= 1), Err(VerifyError::LayoutMismatch(_))));
    let other = Layout::new(vec![spec("a", &[16, 16]), spec("b", &[12])]).unwrap();
    let e = expected(&other, c.base.hash(), worker(3), c.comp);
    assert!(matches!(decode(&c.bytes, &e), Err(VerifyError::LayoutMismatch(_))));
    // tensor count
    assert!(matches!(c.edited(|b| b[151] = 3), Err(VerifyError::LayoutMismatch(_))));
    // chunk grid record of tensor "a": chunk_rows 8 -> 4
    assert!(matches!(c.edited(|b| b[155] = 4), Err(VerifyError::LayoutMismatch(_))));
    // grid_cols of tensor "a"
    assert!(matches!(c.edited(|b| b[167] = 9), Err(VerifyError::LayoutMismatch(_))));
}

#[test]
fn wrong_compression_parameters() {
    let c = Case::new(ValueEncoding::Sign);
    assert_eq!(c.edited(|b| b[146] = 16), Err(VerifyError::WrongChunkSize { expected: 8, got: 16 }));
    assert_eq!(c.edited(|b| b[148] = 4), Err(VerifyError::WrongTopK { expected: 5, got: 4 }));
    assert_eq!(c.edited(|b| b[150] = 2), Err(VerifyError::WrongValueEncoding { expected: 0, got: 2 }));
    assert_eq!(c.edited(|b| b[150] = 9), Err(VerifyError::WrongValueEncoding { expected: 0, got: 9 }));
    // A caller-side configuration outside the limits is rejected too, before any parsing.
    let e = Expected { compression: Compression { topk: 0, ..c.comp }, ..c.expected() };
    assert!(matches!(decode(&c.bytes, &e), Err(VerifyError::InvalidCompression(_))));
}

#[test]
fn truncated_and_trailing() {
    let c = Case::new(ValueEncoding::Int8);
    let n = c.bytes.len() as u64;
    assert_eq!(c.edited(|b| b.truncate(b.len() - 1)), Err(VerifyError::Truncated { needed: n, got: n - 1 }));
    assert_eq!(c.edited(|b| b.truncate(100)), Err(VerifyError::Truncated { needed: 114, got: 100 }));
    assert_eq!(c.decode(&[]), Err(VerifyError::Truncated { needed: 8, got: 0 }));
    assert_eq!(c.edited(|b| b.push(0)), Err(VerifyError::TrailingBytes { extra: 1 }));
}

#[test]
fn index_out_of_range_repeated_or_unordered() {
    let c = Case::new(ValueEncoding::Bf16);
    let idx = indices(&c.bytes);
    let (tensor, chunk) = (0, 0);
    let mut bad = idx;
    bad[4] = 64;
    assert_eq!(c.edited(|b| set_indices(b, bad)), Err(VerifyError::IndexOutOfRange { tensor, chunk, index: 64 }));
    let mut bad = idx;
    bad[0] = 4095;
    assert_eq!(c.edited(|b| set_indices(b, bad)), Err(VerifyError::IndexOutOfRange { tensor, chunk, index: 4095 }));
    let mut bad = idx;
    bad[2] = bad[1];
    assert_eq!(c.edited(|b| set_indices(b, bad)), Err(VerifyError::DuplicateIndex { tensor, chunk, index: idx[1] }));
    let mut bad = idx;
    bad.swap(0, 1);
    assert_eq!(c.edited(|b| set_indices(b, bad)), Err(VerifyError::IndexOrder { tensor, chunk }));
}

#[test]
fn non_zero_padding() {
    let c = Case::new(ValueEncoding::Sign);
    // the top 4 bits of the 8th index byte are padding (5 x 12 = 60 bits)
    assert_eq!(c.edited(|b| b[CHUNK0 + 7] |= 0x80), Err(VerifyError::NonZeroPadding { tensor: 0, chunk: 0 }));
    // the sign block holds 5 bits in one byte: bit 7 is padding
    assert_eq!(c.edited(|b| b[VALUES0] |= 0x80), Err(VerifyError::NonZeroPadding { tensor: 0, chunk: 0 }));
    // two-bit: a 4-byte scale, then 5 codes x 2 bits in 2 bytes; the top 6 bits of the second are padding
    let c = Case::new(ValueEncoding::TwoBit);
    assert_eq!(c.edited(|b| b[VALUES0 + 5] |= 0x04), Err(VerifyError::NonZeroPadding { tensor: 0, chunk: 0 }));
    // the last code's bits are not padding: any code decodes
    assert!(c.edited(|b| b[VALUES0 + 5] ^= 0x03).is_ok());
}

#[test]
fn two_bit_codes_decode_to_odd_multiples_of_the_scale() {
    let c = Case::new(ValueEncoding::TwoBit);
    // chunk 0 of tensor "a": scale 0.25, codes 0, 1, 2, 3, 0 -> -0.75, -0.25, 0.25, 0.75, -0.75
    let d = c
        .edited(|b| {
            b[VALUES0..VALUES0 + 4].copy_from_slice(&0.25f32.to_le_bytes());
            // LSB-first: codes 0b00, 0b01, 0b10, 0b11 in byte 0 = 0b11_10_01_00; code 4 = 0 in byte 1
            b[VALUES0 + 4] = 0b1110_0100;
            b[VALUES0 + 5] = 0;
        })
        .unwrap();
    let t = &d.tensors()[0];
    let got: Vec<f64> = (0..5).map(|e| t.values().value(0, e)).collect();
    assert_eq!(got, vec![-0.75, -0.25, 0.25, 0.75, -0.75]);
}

#[test]
fn non_finite_values() {
    let c = Case::new(ValueEncoding::Bf16);
    let (tensor, chunk) = (0, 0);
    for bits in [0x7F80u16, 0xFF80, 0x7FC0, 0x7F81] {
        assert_eq!(
            c.edited(|b| b[VALUES0 + 2..VALUES0 + 4].copy_from_slice(&bits.to_le_bytes())),
            Err(VerifyError::NonFiniteValue { tensor, chunk })
        );
    }
    for encoding in [ValueEncoding::Int8, ValueEncoding::TwoBit] {
        let c = Case::new(encoding);
        for scale in [f32::NAN, f32::INFINITY] {
            assert_eq!(
                c.edited(|b| b[VALUES0..VALUES0 + 4].copy_from_slice(&scale.to_le_bytes())),
                Err(VerifyError::NonFiniteValue { tensor, chunk })
            );
        }
    }
}

#[test]
fn values_out_of_bounds() {
    let (tensor, chunk) = (0, 0);
    let c = Case::new(ValueEncoding::Bf16);
    // 2^17 and -2^17 exceed MAX_ABS_VALUE (2^16)
    for bits in [0x4800u16, 0xC800] {
        assert_eq!(
            c.edited(|b| b[VALUES0..VALUES0 + 2].copy_from_slice(&bits.to_le_bytes())),
            Err(VerifyError::ValueOutOfBounds { tensor, chunk })
        );
    }
    let c = Case::new(ValueEncoding::Int8);
    assert_eq!(c.edited(|b| b[VALUES0 + 4] = 0x80), Err(VerifyError::ValueOutOfBounds { tensor, chunk }));
    for scale in [-0.5f32, -0.0, 513.0] {
        assert_eq!(
            c.edited(|b| b[VALUES0..VALUES0 + 4].copy_from_slice(&scale.to_le_bytes())),
            Err(VerifyError::ValueOutOfBounds { tensor, chunk })
        );
    }
    // two-bit: 3 x 16384 stays below 2^16; 16385 and negative scales are refused
    let c = Case::new(ValueEncoding::TwoBit);
    for scale in [-0.5f32, -0.0, 16385.0] {
        assert_eq!(
            c.edited(|b| b[VALUES0..VALUES0 + 4].copy_from_slice(&scale.to_le_bytes())),
            Err(VerifyError::ValueOutOfBounds { tensor, chunk })
        );
    }
    assert!(c.edited(|b| b[VALUES0..VALUES0 + 4].copy_from_slice(&16384.0f32.to_le_bytes())).is_ok());
}

#[test]
fn update_new_checks_like_the_decoder() {
    let c = Case::new(ValueEncoding::Bf16);
    let h = *c.update.header();
    let parts = |u: &Update| -> Vec<(Vec<u16>, Values)> {
        u.tensors().iter().map(|t| (t.indices().to_vec(), t.values().clone())).collect()
    };
    assert_eq!(Update::new(h, &c.layout, parts(&c.update)).unwrap(), c.update);
    let mut short = parts(&c.update);
    short[1].0.pop();
    assert!(matches!(Update::new(h, &c.layout, short), Err(VerifyError::WrongCoefficientCount { tensor: 1, .. })));
    let mut wrong = parts(&c.update);
    wrong[0].1 = Values::Sign(vec![false; wrong[0].0.len()]);
    assert!(matches!(Update::new(h, &c.layout, wrong), Err(VerifyError::WrongValueEncoding { .. })));
    let mut dup = parts(&c.update);
    dup[0].0[1] = dup[0].0[0];
    assert!(matches!(Update::new(h, &c.layout, dup), Err(VerifyError::DuplicateIndex { tensor: 0, chunk: 0, .. })));
    let mut nan = parts(&c.update);
    if let Values::Bf16(v) = &mut nan[1].1 {
        v[0] = 0x7FC0;
    }
    assert!(matches!(Update::new(h, &c.layout, nan), Err(VerifyError::NonFiniteValue { tensor: 1, chunk: 0 })));
}
