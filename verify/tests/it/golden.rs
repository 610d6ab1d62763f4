//! Golden values: a fixed seed gives fixed update bytes and a fixed resulting state. If one of these
//! fails, a platform, compiler or code change altered a bit of the consensus path (or the format).

use verify::{NormClip, ValueEncoding, aggregate, aggregate::direction, wire::encoded_len};

use crate::common::*;

/// (encoding, update length, blake3 of the first update, blake3 of the pre-sign direction, state hash).
/// The direction catches a change of any rounding in the inverse DCT even where no sign flips.
const GOLDEN: [(ValueEncoding, u64, &str, &str, &str); 3] = [
    (
        ValueEncoding::Sign,
        401,
        "0f64e2018acc7f189ece6ee954b110056ac1d834ac81df58072a59386906642e",
        "636adcb58cdf486b363b6673a330dc2f49e89569c85e753b85f9e423ce923c0d",
        "bbd65dc627636e9dc25b0d69c9de14c22cbf222d41150e39ba671ecaba0d94b6",
    ),
    (
        ValueEncoding::Int8,
        526,
        "a74262efe4840d7935297a1f54d45d5e943dcc64fcdea671c115380fbffe89c4",
        "678a2f323f58a4c14dc0ed20b73abaaf2c10cb7d105c15cb5e20a870798de600",
        "c8b6c4ff54225c761d54d7649db5538d0a29dc906af5a53fe97d60aea763a18c",
    ),
    (
        ValueEncoding::Bf16,
        567,
        "a5897b9d44d47eb2c34447ca226e3eb77ee142ceec7639d0547b9c3bfef4cdc3",
        "f951684ccd6c51bed52f3344641c9d7bf78966b221812147efc458800501db42",
        "ec79ca3f12a5bda00e0ba0c53a78b40946d0a4d21854ac2e6a7ae0887161be99",
    ),
];

const GOLDEN_INITIAL_STATE: &str = "687ec6ba221b9495da850597d856ed756f8ce63d913e4543eba37f4c87fffb61";

#[test]
fn golden_update_bytes_and_state_hash() {
    let mut failures = Vec::new();
    for (encoding, len, first_update, direction_hash, state_hash) in GOLDEN {
        let mut r = rng(42);
        let s0 = random_state(&model_layout(), &mut r, 0.1);
        assert_eq!(s0.hash().to_hex(), GOLDEN_INITIAL_STATE, "initial state");
        let comp = compression(encoding);
        let ups = updates(&s0, comp, 3, &mut r);
        let bytes = ups[0].to_bytes();
        let got_len = encoded_len(s0.layout(), &comp);
        assert_eq!(bytes.len() as u64, got_len);
        let h = hyper(comp, NormClip::Median);
        let s1 = aggregate(&s0, ROUND, &ups, &h).unwrap();
        let dir = direction(s0.layout(), ROUND, &ups, &h).unwrap();
        let dir_bytes: Vec<u8> = dir.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        let got = (
            encoding,
            got_len,
            blake3::hash(&bytes).to_hex().to_string(),
            blake3::hash(&dir_bytes).to_hex().to_string(),
            s1.hash().to_hex(),
        );
        if (got.1, got.2.as_str(), got.3.as_str(), got.4.as_str()) != (len, first_update, direction_hash, state_hash) {
            failures.push(format!("{got:?}"));
        }
    }
    assert!(failures.is_empty(), "golden values changed:\n{}", failures.join("\n"));
}

/// The same for a version 2 update: top-k 8 with the embedding at 32 and the attention matrix at 2,
/// 1-bit values. (update length, blake3 of the first update, state hash.) The length is the uniform
/// update's 401, plus 13 header bytes, less 6 x 9 bytes for the attention matrix's chunks (12-bit
/// indices: 13 bytes a chunk at top-k 8, 4 at 2), plus 39 for the embedding's one chunk (52 at 32).
const GOLDEN_OVERRIDES: (u64, &str, &str) = (
    399,
    "3194e512037bef0d4e13f60663e63495203828144e1789ecb648e1f5a4cb5e5a",
    "a90f0ee89ab65fa56107d4bba64cb7c8f6ed0cc02c57129820298090d7226141",
);

#[test]
fn golden_update_with_topk_overrides() {
    let mut r = rng(42);
    let s0 = random_state(&model_layout(), &mut r, 0.1);
    let overrides = verify::TopkOverrides::new(&[
        verify::TopkOverride { tensor: 0, topk: 2 },
        verify::TopkOverride { tensor: 3, topk: 32 },
    ])
    .unwrap();
    let comp = verify::Compression { overrides, ..compression(ValueEncoding::Sign) };
    let ups = updates(&s0, comp, 3, &mut r);
    let bytes = ups[0].to_bytes();
    let s1 = aggregate(&s0, ROUND, &ups, &hyper(comp, NormClip::Median)).unwrap();
    let got = (bytes.len() as u64, blake3::hash(&bytes).to_hex().to_string(), s1.hash().to_hex());
    assert_eq!((got.0, got.1.as_str(), got.2.as_str()), GOLDEN_OVERRIDES, "golden values changed: {got:?}");
}
