//! Shared fixtures: a seeded generator, layouts, states and headers.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use verify::{
    Compression, Expected, Header, Hyper, Layout, NormClip, Ratio, Round, RunId, Schedule, State, StateHash,
    TensorSpec, Update, ValueEncoding, WorkerKey, encode,
};

pub const RUN: RunId = RunId([7; 32]);
pub const ROUND: Round = Round(12);

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in [-1, 1), from 24 random bits (independent of rand's float algorithms).
pub fn uniform(rng: &mut ChaCha8Rng) -> f32 {
    ((rng.next_u32() >> 8) as f32) * (1.0 / 8_388_608.0) - 1.0
}

pub fn spec(name: &str, shape: &[u64]) -> TensorSpec {
    TensorSpec { name: name.into(), shape: shape.to_vec() }
}

/// A small model with every tensor kind: 2-D with a prime-ish row count, 2-D with full 64x64 chunks,
/// 1-D, 4-D (flattened), and a scalar.
pub fn model_layout() -> Layout {
    Layout::new(vec![
        spec("embed", &[29, 48]),
        spec("blocks.0.attn.weight", &[128, 192]),
        spec("blocks.0.norm.weight", &[192]),
        spec("conv.weight", &[4, 3, 5, 6]),
        spec("logit_scale", &[]),
    ])
    .unwrap()
}

pub fn random_state(layout: &Layout, rng: &mut ChaCha8Rng, scale: f32) -> State {
    let data = layout.tensors().iter().map(|t| (0..t.elements()).map(|_| uniform(rng) * scale).collect()).collect();
    State::from_parts(layout.clone(), data).unwrap()
}

pub fn worker(i: u8) -> WorkerKey {
    WorkerKey([i; 32])
}

pub fn header(layout: &Layout, base: StateHash, worker: WorkerKey, compression: Compression) -> Header {
    Header { run: RUN, round: ROUND, base, worker, layout: layout.hash(), compression }
}

pub fn expected<'a>(layout: &'a Layout, base: StateHash, worker: WorkerKey, compression: Compression) -> Expected<'a> {
    Expected { run: RUN, round: ROUND, base, worker, layout, compression }
}

pub fn hyper(compression: Compression, clip: NormClip) -> Hyper {
    Hyper {
        compression,
        schedule: Schedule::WarmupCosine {
            peak: Ratio::new(3, 1000),
            min: Ratio::new(3, 10000),
            warmup_rounds: 10,
            total_rounds: 1000,
        },
        weight_decay: Ratio::new(1, 10),
        clip,
        step: verify::StepRule::Sign,
    }
}

pub fn compression(values: ValueEncoding) -> Compression {
    Compression::uniform(64, 8, values)
}

/// `n` updates from random momenta (worker i has key [i+1; 32]), for `state`.
pub fn updates(state: &State, compression: Compression, n: u8, rng: &mut ChaCha8Rng) -> Vec<Update> {
    let base = state.hash();
    (0..n)
        .map(|i| {
            let m = random_state(state.layout(), rng, 0.01);
            encode(&m, &header(state.layout(), base, worker(i + 1), compression)).unwrap()
        })
        .collect()
}

/// Clip factors written from FORMAT.md 5.1 (not the crate's): norm_i = sqrt of the f64 sum of the
/// squared values in wire order (each value from `value`), the lower median, median / norm_i above it.
pub fn reference_clip_factors(
    updates: &[Update],
    clip: NormClip,
    value: impl Fn(&verify::Values, usize, usize) -> f64,
) -> Vec<f64> {
    let norms: Vec<f64> = updates
        .iter()
        .map(|u| {
            let mut s = 0.0f64;
            for t in u.tensors() {
                let k = t.kept() as usize;
                for e in 0..t.indices().len() {
                    s += value(t.values(), e / k, e).powi(2);
                }
            }
            s.sqrt()
        })
        .collect();
    let mut sorted = norms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[(sorted.len() - 1) / 2];
    norms.iter().map(|&n| if clip == NormClip::Median && n > median { median / n } else { 1.0 }).collect()
}
