//! Property tests: decode(encode(x)) round-trips; the sparse aggregation equals a plain dense f64
//! reference (written here, independently of the crate's kernels) within float tolerance; random
//! single-bit flips are rejected or change the update.

use proptest::prelude::*;
use verify::wire::encoded_len;
use verify::{
    Compression, Hyper, IndexCoding, Layout, NormClip, State, StepRule, TensorSpec, Update, ValueEncoding, Values,
    aggregate, aggregate::direction, chunk::Grid, decode, encode,
};

use crate::common::*;

fn layout_strategy() -> impl Strategy<Value = Layout> {
    let shape = prop::collection::vec(1u64..=24, 0..=3);
    prop::collection::vec(shape, 1..=3).prop_map(|shapes| {
        Layout::new(
            shapes.into_iter().enumerate().map(|(i, shape)| TensorSpec { name: format!("t{i}"), shape }).collect(),
        )
        .unwrap()
    })
}

fn compression_strategy() -> impl Strategy<Value = Compression> {
    (1u16..=12, 1u16..=10, 0u8..4, 0u8..2).prop_map(|(chunk_size, topk, code, indices)| Compression {
        indices: IndexCoding::from_code(indices).unwrap(),
        ..Compression::uniform(chunk_size, topk, ValueEncoding::from_code(code).unwrap())
    })
}

/// Dequantisation, written out again.
fn value(t: &Values, chunk: usize, e: usize) -> f64 {
    match t {
        Values::Sign(v) => {
            if v[e] {
                -1.0
            } else {
                1.0
            }
        }
        Values::Int8 { scales, q } => f64::from(q[e]) * f64::from(scales[chunk]),
        Values::Bf16(v) => f64::from(f32::from_bits(u32::from(v[e]) << 16)),
        Values::TwoBit { scales, q } => [-3.0, -1.0, 1.0, 3.0][usize::from(q[e])] * f64::from(scales[chunk]),
    }
}

fn basis64(n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|k| {
            let s = if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
            (0..n).map(|i| s * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64).cos()).collect()
        })
        .collect()
}

/// Dense f64 reference of the pre-step direction: clip, scatter into full coefficient tensors,
/// mean where selected (sign rule) or over every update (linear rule), inverse DCT chunk by chunk
/// with the textbook triple sum.
fn reference_direction(
    layout: &Layout,
    updates: &[Update],
    comp: Compression,
    clip: NormClip,
    rule: StepRule,
) -> Vec<Vec<f64>> {
    let factors = reference_clip_factors(updates, clip, value);
    let mut out = Vec::new();
    for (ti, spec) in layout.tensors().iter().enumerate() {
        let g = Grid::new(spec, comp.chunk_size);
        let (rows, cols) = (g.rows as usize, g.cols as usize);
        let (cr, cc) = (g.chunk_rows as usize, g.chunk_cols as usize);
        let mut sum = vec![0.0f64; rows * cols];
        let mut count = vec![0u32; rows * cols];
        for (u, f) in updates.iter().zip(&factors) {
            let t = &u.tensors()[ti];
            let k = t.kept() as usize;
            for e in 0..t.indices().len() {
                let c = e / k;
                let (gy, gx) = (c / g.grid_cols() as usize, c % g.grid_cols() as usize);
                let j = t.indices()[e] as usize;
                let pos = (gy * cr + j / cc) * cols + gx * cc + j % cc;
                sum[pos] += value(t.values(), c, e) * f;
                count[pos] += 1;
            }
        }
        let y: Vec<f64> = sum
            .iter()
            .zip(&count)
            .map(|(s, &n)| match (n, rule) {
                (0, _) => 0.0,
                (n, StepRule::Sign) => s / f64::from(n),
                (_, StepRule::Linear) => s / updates.len() as f64,
            })
            .collect();
        let (br, bc) = (basis64(cr), basis64(cc));
        let mut x = vec![0.0f64; rows * cols];
        for gy in 0..rows / cr {
            for gx in 0..cols / cc {
                for i in 0..cr {
                    for j in 0..cc {
                        let mut acc = 0.0;
                        for u in 0..cr {
                            for v in 0..cc {
                                acc += br[u][i] * y[(gy * cr + u) * cols + gx * cc + v] * bc[v][j];
                            }
                        }
                        x[(gy * cr + i) * cols + gx * cc + j] = acc;
                    }
                }
            }
        }
        out.push(x);
    }
    out
}

fn make_updates(state: &State, comp: Compression, n: u8, seed: u64) -> Vec<Update> {
    let mut r = rng(seed);
    (0..n)
        .map(|i| {
            // momenta of different scales, so median clipping has something to do
            let m = random_state(state.layout(), &mut r, 0.01 * f32::from(i + 1));
            encode(&m, &header(state.layout(), state.hash(), worker(i), comp)).unwrap()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn decode_encode_round_trips(layout in layout_strategy(), comp in compression_strategy(), seed in any::<u64>()) {
        let mut r = rng(seed);
        let base = random_state(&layout, &mut r, 1.0);
        let m = random_state(&layout, &mut r, 1.0);
        let u = encode(&m, &header(&layout, base.hash(), worker(2), comp)).unwrap();
        let bytes = u.to_bytes();
        prop_assert_eq!(bytes.len() as u64, encoded_len(&layout, &comp));
        let back = decode(&bytes, &expected(&layout, base.hash(), worker(2), comp)).unwrap();
        prop_assert_eq!(&back, &u);
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn sparse_aggregation_equals_dense_reference(
        layout in layout_strategy(),
        comp in compression_strategy(),
        n in 1u8..=4,
        median in any::<bool>(),
        linear in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut r = rng(seed);
        let s0 = random_state(&layout, &mut r, 1.0);
        let ups = make_updates(&s0, comp, n, seed ^ 0x5eed);
        let clip = if median { NormClip::Median } else { NormClip::Off };
        // the linear rule needs values with a magnitude
        let rule = if linear && comp.values != ValueEncoding::Sign { StepRule::Linear } else { StepRule::Sign };
        let h = Hyper { step: rule, ..hyper(comp, clip) };
        let want = reference_direction(&layout, &ups, comp, clip, rule);
        let got = direction(&layout, ROUND, &ups, &h).unwrap();
        let lr = h.schedule.lr(ROUND);
        let decay = 1.0f32 - lr * (h.weight_decay.to_f64() as f32);
        let s1 = aggregate(&s0, ROUND, &ups, &h).unwrap();
        for t in 0..want.len() {
            let scale = want[t].iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let tol = 1e-4 * scale;
            for i in 0..want[t].len() {
                let (w, g) = (want[t][i], f64::from(got[t][i]));
                prop_assert!((w - g).abs() <= tol, "tensor {} elem {}: dense {} sparse {}", t, i, w, g);
                let p = s0.data()[t][i];
                let step = |s: f32| p * decay - lr * s;
                let after = s1.data()[t][i];
                if rule == StepRule::Linear {
                    // p * decay - lr * x, with x within tol of the dense reference
                    let exact = f64::from(p * decay) - f64::from(lr) * w;
                    let slack = f64::from(lr) * tol + 4.0 * f64::from(f32::EPSILON) * exact.abs().max(1.0);
                    prop_assert!((f64::from(after) - exact).abs() <= slack, "tensor {} elem {}", t, i);
                } else if w.abs() > tol {
                    prop_assert_eq!(after, step(w.signum() as f32), "tensor {} elem {}", t, i);
                } else {
                    prop_assert!([step(-1.0), step(0.0), step(1.0)].contains(&after));
                }
            }
        }
    }

    #[test]
    fn safetensors_round_trips(layout in layout_strategy(), seed in any::<u64>(), specials in any::<bool>()) {
        let mut r = rng(seed);
        let mut s = random_state(&layout, &mut r, 1.0);
        if specials {
            // signed zeros, subnormals and extremes must survive bit for bit
            for (i, v) in s.data_mut()[0].iter_mut().enumerate() {
                *v = [-0.0, f32::MIN_POSITIVE / 2.0, f32::MAX, -f32::MIN_POSITIVE][i % 4];
            }
        }
        let bytes = s.to_safetensors().unwrap();
        let back = State::from_safetensors(&bytes).unwrap();
        prop_assert_eq!(back.hash(), s.hash());
        prop_assert_eq!(back.to_safetensors().unwrap(), bytes);
    }

    #[test]
    fn random_bit_flip_is_rejected_or_changes_the_update(
        layout in layout_strategy(),
        comp in compression_strategy(),
        seed in any::<u64>(),
        bit in any::<prop::sample::Index>(),
    ) {
        let mut r = rng(seed);
        let base = random_state(&layout, &mut r, 1.0);
        let m = random_state(&layout, &mut r, 1.0);
        let u = encode(&m, &header(&layout, base.hash(), worker(2), comp)).unwrap();
        let mut bytes = u.to_bytes();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        if let Ok(d) = decode(&bytes, &expected(&layout, base.hash(), worker(2), comp)) {
            prop_assert_ne!(&d, &u);
            prop_assert_eq!(d.to_bytes(), bytes);
        }
    }
}
