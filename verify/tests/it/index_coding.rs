//! Elias-Fano indices (update wire v4, run config v5): the sizes from FORMAT.md's arithmetic, an
//! outsider's decoder written from FORMAT.md 4.3 alone, and every rejection of a hostile v4 update.
//! The layout is rejections.rs's: tensor "a" [16, 16] in 8 x 8 chunks (64 coefficients, 5 kept),
//! tensor "b" [10] in two 1-D chunks of 5 (all 5 kept).

use verify::config::{ExclusionRules, RoundRules};
use verify::wire::{HEADER_BYTES, VERSION_WITH_INDEX_CODING, encoded_len};
use verify::{
    Compression, IndexCoding, Layout, RunConfig, State, Transform, Update, ValueEncoding, VerifyError, decode, encode,
};

use crate::common::*;

fn small_layout() -> Layout {
    Layout::new(vec![spec("a", &[16, 16]), spec("b", &[10])]).unwrap()
}

fn ef(values: ValueEncoding) -> Compression {
    Compression { indices: IndexCoding::EliasFano, ..Compression::uniform(8, 5, values) }
}

/// Byte offset of tensor "a"'s first chunk in a v4 update without overrides: the v1 header, the
/// override count, the transform and the index coding, then the 20-byte grid record.
const CHUNK0: usize = HEADER_BYTES as usize + 3 + 20;

fn case(comp: Compression) -> (Layout, State, Update, Vec<u8>) {
    let layout = small_layout();
    let mut r = rng(11);
    let base = random_state(&layout, &mut r, 1.0);
    let momentum = random_state(&layout, &mut r, 1.0);
    let update = encode(&momentum, &header(&layout, base.hash(), worker(3), comp)).unwrap();
    let bytes = update.to_bytes();
    (layout, base, update, bytes)
}

/// FORMAT.md 4.3, read by an outsider: `k` indices below `n` from one block (LSB-first bits).
fn outsider_block(block: &[u8], n: u64, k: u64) -> Vec<u64> {
    let bit = |i: u64| (block[(i / 8) as usize] >> (i % 8)) & 1 == 1;
    let mut l = 0;
    while k << (l + 1) <= n {
        l += 1;
    }
    let u = n.div_ceil(1 << l);
    let lows: Vec<u64> = (0..k).map(|i| (0..l).map(|b| u64::from(bit(i * l + b)) << b).sum()).collect();
    let mut out = Vec::new();
    for p in 0..k + u - 1 {
        if bit(k * l + p) {
            let j = out.len() as u64;
            out.push(((p - j) << l) | lows[j as usize]);
        }
    }
    assert_eq!(out.len() as u64, k);
    out
}

#[test]
fn sizes_follow_the_format_arithmetic() {
    let layout = small_layout();
    let fixed = Compression::uniform(8, 5, ValueEncoding::Sign);
    // Per chunk of "a": 5 x 12 bits = 8 bytes fixed; Elias-Fano L = 3 (5 x 8 <= 64 < 80), U = 8:
    // 15 + 5 + 7 = 27 bits = 4 bytes. Per chunk of "b": 8 bytes; L = 0, U = 5: 5 + 4 bits = 2 bytes.
    // The v4 header adds the override count, the transform and the index coding: 3 bytes.
    let saved = 4 * (8 - 4) + 2 * (8 - 2);
    assert_eq!(encoded_len(&layout, &ef(ValueEncoding::Sign)), encoded_len(&layout, &fixed) - saved + 3);
    let (_, _, _, bytes) = case(ef(ValueEncoding::Sign));
    assert_eq!(bytes.len() as u64, encoded_len(&layout, &ef(ValueEncoding::Sign)));
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), VERSION_WITH_INDEX_CODING);
    // override count 0, transform 0 (the DCT), index coding 1
    assert_eq!(bytes[HEADER_BYTES as usize - 4..HEADER_BYTES as usize - 1], [0, 0, 1]);
}

#[test]
fn an_outsider_decodes_the_indices_from_the_format_alone() {
    for transform in [Transform::Dct, Transform::Identity] {
        let comp = Compression { transform, ..ef(ValueEncoding::TwoBit) };
        let (layout, base, update, bytes) = case(comp);
        let back = decode(&bytes, &expected(&layout, base.hash(), worker(3), comp)).unwrap();
        assert_eq!(back, update);
        assert_eq!(back.to_bytes(), bytes);
        // Tensor "a", chunk 0: a 4-byte block, then the two-bit values (4-byte scale, 2 bytes of codes).
        let got = outsider_block(&bytes[CHUNK0..CHUNK0 + 4], 64, 5);
        let want: Vec<u64> = update.tensors()[0].indices()[..5].iter().map(|&i| u64::from(i)).collect();
        assert_eq!(got, want);
        // Chunk 1 follows 4 + 4 + 2 bytes later.
        let c1 = CHUNK0 + 10;
        let got = outsider_block(&bytes[c1..c1 + 4], 64, 5);
        let want: Vec<u64> = update.tensors()[0].indices()[5..10].iter().map(|&i| u64::from(i)).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn hostile_version_4_updates_are_refused_with_typed_errors() {
    let comp = ef(ValueEncoding::Sign);
    let (layout, base, _, bytes) = case(comp);
    let exp = expected(&layout, base.hash(), worker(3), comp);
    let edited = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        edit(&mut b);
        decode(&b, &exp)
    };
    let code_at = HEADER_BYTES as usize - 2;
    // Fixed-width indices have one encoding, as v1 to v3: code 0 in a v4 update is not it.
    assert!(matches!(edited(&|b| b[code_at] = 0), Err(VerifyError::InvalidCompression(_))));
    assert_eq!(edited(&|b| b[code_at] = 2), Err(VerifyError::WrongIndexCoding { expected: 1, got: 2 }));
    assert_eq!(edited(&|b| b[code_at - 1] = 7), Err(VerifyError::WrongTransform { expected: 0, got: 7 }));
    // Chunk 0's block is 27 bits: bits 15..27 are the highs (5 ones among 12), 27..32 padding.
    // A sixth one among the highs, or a padding bit, is malformed.
    let block = u32::from_le_bytes(bytes[CHUNK0..CHUNK0 + 4].try_into().unwrap());
    let zero_high = (15..27).find(|&i| block >> i & 1 == 0).unwrap();
    let malformed = Err(VerifyError::MalformedIndices { tensor: 0, chunk: 0 });
    assert_eq!(edited(&|b| b[CHUNK0 + zero_high / 8] |= 1 << (zero_high % 8)), malformed);
    assert_eq!(edited(&|b| b[CHUNK0 + 3] |= 0x80), malformed);
    // Any single flip among the highs changes how many ones they hold.
    for i in 15..27 {
        assert_eq!(edited(&|b| b[CHUNK0 + i / 8] ^= 1 << (i % 8)), malformed, "high bit {i}");
    }
    // Judged by a fixed-width run, an Elias-Fano update is refused, and the other way round.
    let fixed = Compression::uniform(8, 5, ValueEncoding::Sign);
    let as_fixed = expected(&layout, base.hash(), worker(3), fixed);
    assert_eq!(decode(&bytes, &as_fixed), Err(VerifyError::WrongIndexCoding { expected: 0, got: 1 }));
    let (_, _, _, fixed_bytes) = case(fixed);
    assert_eq!(decode(&fixed_bytes, &exp), Err(VerifyError::WrongIndexCoding { expected: 1, got: 0 }));
}

#[test]
fn the_run_config_carries_the_index_coding_canonically() {
    let layout = small_layout();
    let mut config = RunConfig {
        layout: layout.clone(),
        hyper: hyper(ef(ValueEncoding::TwoBit), verify::NormClip::Median),
        rounds: RoundRules { min_contributions: 1, max_contributions: 8, overlap: false },
        exclusion: ExclusionRules::absolute(-5, 0),
        extra: Vec::new(),
    };
    let bytes = config.encode().unwrap();
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 5);
    assert_eq!(RunConfig::decode(&bytes).unwrap(), config);
    // Fixed-width indices write the older versions, so the same run has one config encoding.
    config.hyper.compression.indices = IndexCoding::Fixed;
    let bytes = config.encode().unwrap();
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
}
