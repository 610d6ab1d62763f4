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

/// The linear step rule with two-bit values (a version 3 run): (update length, blake3 of the first
/// update, state hash). The length is the sign update's 401 plus, per chunk, a 4-byte scale and the
/// codes' extra bytes: 8 values take 2 bytes instead of 1 (+5 a chunk: 1 embedding chunk, 6 attention,
/// 3 norm, 1 conv = 55) and the scalar's one value 1 byte as before (+4): 401 + 59.
const GOLDEN_LINEAR: (u64, &str, &str) = (
    460,
    "e6f0cdd676b0ecce134c1a2fe59404c3d24b54545d762a55b3376e37cd14713e",
    "f9c9390e01ed028ba0dd56b341b77a47d86d8d6bd222ca6779ed9950be7c10e6",
);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Order {
    /// FORMAT.md's order: rows of the coefficient chunk first (Z = Y · Dc over the selected v of each
    /// row, v ascending), then X = Drᵀ · Z over the rows holding a selected coefficient, u ascending;
    /// f32 left folds from +0.0, each product and sum rounded on its own.
    Spec,
    /// The same sums accumulated in f64 and rounded to f32 at the end.
    F64,
    /// The outer sum over u in descending order.
    Reversed,
    /// The other association: W = Drᵀ · Y first (over u), then X = W · Dc (over v).
    ColumnsFirst,
}

/// The DCT basis as FORMAT.md defines it: D[k][i] = s_k cos(pi m / 2n), m = (2i+1)k mod 4n, in f64
/// (libm's cos), rounded to f32.
fn outsider_basis(n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|k| {
            let s = if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
            (0..n)
                .map(|i| {
                    let m = ((2 * i + 1) * k) % (4 * n);
                    (s * libm::cos(std::f64::consts::PI * m as f64 / (2.0 * n as f64))) as f32
                })
                .collect()
        })
        .collect()
}

/// FORMAT.md 5.3's Y for chunk `c` of tensor `ti` under the linear rule: (sum over the updates in
/// order of f_i v_ij, f64) / N, rounded to f32, for each coefficient j someone selected.
fn outsider_chunk_means(ups: &[verify::Update], factors: &[f64], ti: usize, c: usize, size: usize) -> Vec<Option<f32>> {
    let mut sums = vec![0.0f64; size];
    let mut selected = vec![false; size];
    for (u, f) in ups.iter().zip(factors) {
        let t = &u.tensors()[ti];
        let k = t.kept() as usize;
        for e in c * k..(c + 1) * k {
            let j = usize::from(t.indices()[e]);
            sums[j] += t.values().value(c, e) * f;
            selected[j] = true;
        }
    }
    (0..size).map(|j| selected[j].then(|| (sums[j] / ups.len() as f64) as f32)).collect()
}

/// One round of the linear rule written from FORMAT.md alone (no verify arithmetic: only the chunk
/// geometry and the decoded values are taken from the crate), with the inverse DCT in `order`.
fn outsider_linear_round(s0: &verify::State, ups: &[verify::Update], h: &verify::Hyper, order: Order) -> verify::State {
    let factors = reference_clip_factors(ups, h.clip, |v, c, e| v.value(c, e));
    let lr = h.schedule.lr(ROUND);
    let decay = 1.0f32 - lr * (h.weight_decay.to_f64() as f32);
    let mut data = s0.data().to_vec();
    for (ti, spec) in s0.layout().tensors().iter().enumerate() {
        let g = verify::chunk::Grid::new(spec, h.compression.chunk_size);
        let (cr, cc, cols) = (g.chunk_rows as usize, g.chunk_cols as usize, g.cols as usize);
        let (dr, dc) = (outsider_basis(cr), outsider_basis(cc));
        for c in 0..g.chunks() as usize {
            let (gy, gx) = (c / g.grid_cols() as usize, c % g.grid_cols() as usize);
            let y = outsider_chunk_means(ups, &factors, ti, c, cr * cc);
            let live: Vec<usize> = (0..cr).filter(|&u| (0..cc).any(|v| y[u * cc + v].is_some())).collect();
            let x = |i: usize, j: usize| -> f32 {
                match order {
                    Order::Spec | Order::Reversed => {
                        let z = |u: usize| {
                            (0..cc).filter_map(|v| y[u * cc + v].map(|yv| yv * dc[v][j])).fold(0.0f32, |a, b| a + b)
                        };
                        let terms = live.iter().map(|&u| dr[u][i] * z(u));
                        match order {
                            Order::Reversed => terms.rev().fold(0.0f32, |a, b| a + b),
                            _ => terms.fold(0.0f32, |a, b| a + b),
                        }
                    }
                    Order::F64 => {
                        let z = |u: usize| {
                            (0..cc)
                                .filter_map(|v| y[u * cc + v].map(|yv| f64::from(yv) * f64::from(dc[v][j])))
                                .sum::<f64>()
                        };
                        live.iter().map(|&u| f64::from(dr[u][i]) * z(u)).sum::<f64>() as f32
                    }
                    Order::ColumnsFirst => {
                        let w = |v: usize| {
                            live.iter()
                                .filter_map(|&u| y[u * cc + v].map(|yv| dr[u][i] * yv))
                                .fold(0.0f32, |a, b| a + b)
                        };
                        (0..cc).map(|v| w(v) * dc[v][j]).fold(0.0f32, |a, b| a + b)
                    }
                }
            };
            for i in 0..cr {
                for j in 0..cc {
                    let p = &mut data[ti][(gy * cr + i) * cols + gx * cc + j];
                    *p = *p * decay - lr * x(i, j);
                }
            }
        }
    }
    verify::State::from_parts(s0.layout().clone(), data).unwrap()
}

/// The golden state, three two-bit updates for it and the linear rule with median clipping.
fn linear_round() -> (verify::State, Vec<verify::Update>, verify::Hyper) {
    let mut r = rng(42);
    let s0 = random_state(&model_layout(), &mut r, 0.1);
    let comp = compression(ValueEncoding::TwoBit);
    let ups = updates(&s0, comp, 3, &mut r);
    (s0, ups, verify::Hyper { step: verify::StepRule::Linear, ..hyper(comp, NormClip::Median) })
}

#[test]
fn golden_linear_step_with_two_bit_values() {
    let (s0, ups, h) = linear_round();
    let bytes = ups[0].to_bytes();
    let s1 = aggregate(&s0, ROUND, &ups, &h).unwrap();
    let got = (bytes.len() as u64, blake3::hash(&bytes).to_hex().to_string(), s1.hash().to_hex());
    assert_eq!((got.0, got.1.as_str(), got.2.as_str()), GOLDEN_LINEAR, "golden values changed: {got:?}");
}

/// The issue this rule answers: under the sign rule an auditor that ran the inverse DCT in a wrong
/// order still matched every state hash. Under the linear rule each rounding reaches the state, so an
/// outsider must follow FORMAT.md's order exactly, and one who does matches bit for bit.
#[test]
fn an_outsider_reproduces_the_linear_rule_from_format_md_and_every_wrong_order_fails() {
    let (s0, ups, h) = linear_round();
    let want = aggregate(&s0, ROUND, &ups, &h).unwrap();
    assert_eq!(outsider_linear_round(&s0, &ups, &h, Order::Spec).hash(), want.hash(), "FORMAT.md's order");
    for order in [Order::F64, Order::Reversed, Order::ColumnsFirst] {
        let theirs = outsider_linear_round(&s0, &ups, &h, order);
        let differing =
            theirs.data().iter().flatten().zip(want.data().iter().flatten()).filter(|(a, b)| a != b).count();
        assert!(differing > 0, "{order:?} matched the consensus state: the golden vectors would not catch it");
    }
}

/// One round of the linear rule under the identity transform, from FORMAT.md alone: each chunk's
/// entry takes the clipped mean of the values sent for it (zero where nobody sent one), with no
/// inverse transform at all.
fn outsider_identity_round(s0: &verify::State, ups: &[verify::Update], h: &verify::Hyper) -> verify::State {
    let factors = reference_clip_factors(ups, h.clip, |v, c, e| v.value(c, e));
    let lr = h.schedule.lr(ROUND);
    let decay = 1.0f32 - lr * (h.weight_decay.to_f64() as f32);
    let mut data = s0.data().to_vec();
    for (ti, spec) in s0.layout().tensors().iter().enumerate() {
        let g = verify::chunk::Grid::new(spec, h.compression.chunk_size);
        let (cr, cc, cols) = (g.chunk_rows as usize, g.chunk_cols as usize, g.cols as usize);
        for c in 0..g.chunks() as usize {
            let (gy, gx) = (c / g.grid_cols() as usize, c % g.grid_cols() as usize);
            let y = outsider_chunk_means(ups, &factors, ti, c, cr * cc);
            for i in 0..cr {
                for j in 0..cc {
                    let x = y[i * cc + j].unwrap_or(0.0);
                    let p = &mut data[ti][(gy * cr + i) * cols + gx * cc + j];
                    *p = *p * decay - lr * x;
                }
            }
        }
    }
    verify::State::from_parts(s0.layout().clone(), data).unwrap()
}

/// The identity transform: updates are wire version 3 and the round is the outsider's arithmetic.
#[test]
fn an_outsider_reproduces_the_linear_rule_under_the_identity_transform() {
    let mut r = rng(42);
    let s0 = random_state(&model_layout(), &mut r, 0.1);
    let comp = verify::Compression { transform: verify::Transform::Identity, ..compression(ValueEncoding::TwoBit) };
    let ups = updates(&s0, comp, 3, &mut r);
    assert_eq!(ups[0].to_bytes()[8..10], [3, 0], "an identity update is wire version 3 (u16 LE after the magic)");
    let h = verify::Hyper { step: verify::StepRule::Linear, ..hyper(comp, NormClip::Median) };
    let want = aggregate(&s0, ROUND, &ups, &h).unwrap();
    assert_eq!(outsider_identity_round(&s0, &ups, &h).hash(), want.hash());
    // and the same updates judged against a DCT run are refused, typed
    let dct = verify::Hyper { compression: compression(ValueEncoding::TwoBit), ..h };
    assert!(matches!(
        aggregate(&s0, ROUND, &ups, &dct),
        Err(verify::VerifyError::WrongTransform { expected: 0, got: 1 })
    ));
}
