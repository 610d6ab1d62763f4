//! Per-tensor top-k overrides: the version 2 header, its round trip, and every rejection it adds.
//! The model layout (common.rs) in canonical order is blocks.0.attn.weight (0), blocks.0.norm.weight
//! (1), conv.weight (2), embed (3), logit_scale (4).

use verify::wire::{HEADER_BYTES, MAX_TOPK_OVERRIDES, encoded_len, header_len};
use verify::{
    Compression, NormClip, RunConfig, TopkOverride, TopkOverrides, ValueEncoding, VerifyError, aggregate, decode,
    encode,
};

use crate::common::*;

const EMBED: u32 = 3;

/// Top-k 8 everywhere but the embedding (32) and the attention matrix (2).
fn with_overrides(values: ValueEncoding) -> Compression {
    let list = [TopkOverride { tensor: 0, topk: 2 }, TopkOverride { tensor: EMBED, topk: 32 }];
    Compression { overrides: TopkOverrides::new(&list).unwrap(), ..compression(values) }
}

#[test]
fn overrides_change_each_tensors_kept_count_and_round_trip() {
    let layout = model_layout();
    let mut r = rng(5);
    let base = random_state(&layout, &mut r, 0.1);
    let momentum = random_state(&layout, &mut r, 0.01);
    for values in [ValueEncoding::Sign, ValueEncoding::Int8, ValueEncoding::Bf16] {
        let comp = with_overrides(values);
        assert_eq!((comp.topk_for(0), comp.topk_for(1), comp.topk_for(3)), (2, 8, 32));
        let update = encode(&momentum, &header(&layout, base.hash(), worker(1), comp)).unwrap();
        let kept: Vec<u32> = update.tensors().iter().map(|t| t.kept()).collect();
        // embed [29, 48] is one 29 x 48 chunk, so it keeps 32; the norm [192] keeps 8 per 1-D chunk;
        // the scalar keeps its one coefficient.
        assert_eq!(kept, [2, 8, 8, 32, 1], "{values:?}");
        let bytes = update.to_bytes();
        assert_eq!(&bytes[8..10], &2u16.to_le_bytes(), "version 2");
        // After the value encoding at 150: count 2, then (0, 2) and (3, 32).
        assert_eq!(&bytes[151..164], &[2, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 32, 0]);
        assert_eq!(header_len(&comp), HEADER_BYTES + 13);
        assert_eq!(bytes.len() as u64, encoded_len(&layout, &comp));
        let back = decode(&bytes, &expected(&layout, base.hash(), worker(1), comp)).unwrap();
        assert_eq!(back, update);
        assert_eq!(back.to_bytes(), bytes);
        // Without overrides the same momentum is a version 1 update of another length.
        let plain = encode(&momentum, &header(&layout, base.hash(), worker(1), compression(values))).unwrap();
        assert_eq!(&plain.to_bytes()[8..10], &1u16.to_le_bytes());
        assert_ne!(plain.to_bytes().len(), bytes.len());
    }
}

#[test]
fn an_update_must_carry_exactly_the_runs_overrides() {
    let layout = model_layout();
    let mut r = rng(6);
    let base = random_state(&layout, &mut r, 0.1);
    let momentum = random_state(&layout, &mut r, 0.01);
    let comp = with_overrides(ValueEncoding::Sign);
    let plain = compression(ValueEncoding::Sign);
    let v2 = encode(&momentum, &header(&layout, base.hash(), worker(1), comp)).unwrap().to_bytes();
    let v1 = encode(&momentum, &header(&layout, base.hash(), worker(1), plain)).unwrap().to_bytes();
    let expect = |c| expected(&layout, base.hash(), worker(1), c);
    let wrong = |e: Result<_, VerifyError>| matches!(e, Err(VerifyError::WrongTopkOverrides { .. }));
    assert!(wrong(decode(&v2, &expect(plain))), "overrides the run does not have");
    assert!(wrong(decode(&v1, &expect(comp))), "the run's overrides left out");
    let mut other_k = v2.clone();
    other_k[162] = 33; // the embedding's top-k
    assert!(wrong(decode(&other_k, &expect(comp))));
    let mut other_tensor = v2.clone();
    other_tensor[158] = 2; // the embedding's index
    assert!(wrong(decode(&other_tensor, &expect(comp))));
    for n in [0u8, MAX_TOPK_OVERRIDES as u8 + 1] {
        let mut count = v2.clone();
        count[151] = n;
        assert!(matches!(decode(&count, &expect(comp)), Err(VerifyError::InvalidCompression(_))), "count {n}");
    }
    // Version 3 is the identity transform's: a DCT run refuses it.
    let mut v3 = v2.clone();
    v3[8] = 3;
    assert!(decode(&v3, &expect(comp)).is_err());
    // Version 4 is Elias-Fano indices': a fixed-width run refuses it.
    let mut v4 = v2.clone();
    v4[8] = 4;
    assert!(decode(&v4, &expect(comp)).is_err());
    let mut v5 = v2.clone();
    v5[8] = 5;
    assert_eq!(decode(&v5, &expect(comp)).unwrap_err(), VerifyError::UnsupportedVersion(5));
}

#[test]
fn invalid_overrides_are_refused_before_anything_is_encoded() {
    let layout = model_layout();
    let o = |tensor, topk| TopkOverride { tensor, topk };
    assert!(TopkOverrides::new(&[o(3, 16), o(0, 16)]).is_err(), "unsorted");
    assert!(TopkOverrides::new(&[o(3, 16), o(3, 32)]).is_err(), "repeated");
    assert!(TopkOverrides::new(&[o(0, 9), o(1, 9), o(2, 9), o(3, 9), o(4, 9)]).is_err(), "too many");
    let bad = |list: &[TopkOverride]| {
        let comp = Compression { overrides: TopkOverrides::new(list).unwrap(), ..compression(ValueEncoding::Sign) };
        comp.validate_for(&layout).is_err()
    };
    assert!(bad(&[o(3, 8)]), "the run's own top-k");
    assert!(bad(&[o(3, 0)]));
    assert!(bad(&[o(3, 4097)]));
    assert!(bad(&[o(5, 16)]), "no tensor 5");
    assert!(!bad(&[o(4, 16)]));
    let out_of_layout =
        Compression { overrides: TopkOverrides::new(&[o(9, 16)]).unwrap(), ..compression(ValueEncoding::Sign) };
    let mut r = rng(7);
    let momentum = random_state(&layout, &mut r, 0.01);
    let base = random_state(&layout, &mut r, 0.1);
    assert!(matches!(
        encode(&momentum, &header(&layout, base.hash(), worker(1), out_of_layout)),
        Err(VerifyError::InvalidCompression(_))
    ));
}

#[test]
fn aggregation_applies_updates_with_overrides_and_refuses_mixed_ones() {
    let layout = model_layout();
    let mut r = rng(8);
    let s0 = random_state(&layout, &mut r, 0.1);
    let comp = with_overrides(ValueEncoding::Sign);
    let ups = updates(&s0, comp, 3, &mut r);
    let h = hyper(comp, NormClip::Median);
    let s1 = aggregate(&s0, ROUND, &ups, &h).unwrap();
    assert_ne!(s1.hash(), s0.hash());
    assert_eq!(aggregate(&s0, ROUND, &ups, &h).unwrap().hash(), s1.hash(), "bit-exact");
    let plain = hyper(compression(ValueEncoding::Sign), NormClip::Median);
    assert!(matches!(aggregate(&s0, ROUND, &ups, &plain), Err(VerifyError::WrongTopkOverrides { .. })));
}

#[test]
fn a_run_config_with_overrides_round_trips_as_version_2() {
    let mut config = RunConfig {
        layout: model_layout(),
        hyper: hyper(with_overrides(ValueEncoding::Sign), NormClip::Off),
        rounds: verify::RoundRules { min_contributions: 1, max_contributions: 8, overlap: false },
        exclusion: verify::ExclusionRules::absolute(0, 0),
        extra: Vec::new(),
    };
    let bytes = config.encode().unwrap();
    assert_eq!(&bytes[8..10], &2u16.to_le_bytes());
    assert_eq!(RunConfig::decode(&bytes).unwrap(), config);
    // A version 1 config relabelled as version 2 (no overrides follow) is refused.
    config.hyper.compression.overrides = TopkOverrides::NONE;
    let mut v1 = config.encode().unwrap();
    assert_eq!(&v1[8..10], &1u16.to_le_bytes());
    v1[8] = 2;
    assert!(RunConfig::decode(&v1).is_err());
    // An override naming a tensor the layout lacks is refused at encode.
    config.hyper.compression.overrides = TopkOverrides::new(&[TopkOverride { tensor: 5, topk: 16 }]).unwrap();
    assert!(config.encode().is_err());
}
