//! `cairn bench aggregate`: verify's bit-exact decode + aggregate + apply against libtorch doing the
//! same decode the way the DeMo reference does it, on the same CPU, in the same run.
//!
//! A GPT-2-small-shaped model (124M parameters), `updates` synthetic updates (random distinct indices
//! per chunk, random values) serialised to bytes. Each round, alternately:
//! - cairn: `verify::decode` every blob, then `verify::apply` (decode + aggregate + apply);
//! - torch: the decoded updates laid out as DeMo's gathered index/value tensors, scatter_reduce
//!   "mean" into dense coefficients, einsum inverse DCT, sign, decoupled weight decay, step
//!   (`trainer::demo::reference_aggregate`). The baseline is not charged for parsing the bytes.
//!
//! Throughput is parameters per second, median over rounds. Checks: every cairn round gives the same
//! state hash (bit-exact), and the torch result takes the same step as cairn's on the share of
//! parameters reported as `sign_agreement_pct`.

use std::time::Instant;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use trainer::demo::{Bases, gather_updates, reference_aggregate, tensors_from_state, tensors_to_host};
use verify::step::RoundStep;
use verify::wire::encoded_len;
use verify::{
    Compression, Expected, Header, Hyper, Layout, NormClip, Ratio, Round, RunId, Schedule, State, StateHash,
    TensorSpec, Update, ValueEncoding, Values, WorkerKey, apply, decode,
};

use super::median;
use crate::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Updates aggregated per round.
    #[arg(long, default_value_t = 16)]
    updates: u16,
    /// Coefficients kept per chunk (top-k).
    #[arg(long, default_value_t = 4)]
    k: u16,
    /// Chunk size.
    #[arg(long, default_value_t = 64)]
    chunk: u16,
    /// Value encoding: sign, int8, bf16 or two-bit.
    #[arg(long, default_value = "sign")]
    values: String,
    /// How the blobs write each chunk's kept indices: fixed (12 bits each) or elias-fano.
    #[arg(long, default_value = "fixed")]
    index_coding: String,
    /// Threads for rayon and libtorch (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Rounds (each measures cairn and torch once); figures are medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seed of the synthetic state and updates.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const ROUND: Round = Round(100);
const RUN: RunId = RunId([1; 32]);

/// GPT-2 small (124M parameters), HF names.
fn gpt2_small() -> anyhow::Result<Layout> {
    let mut t = vec![
        TensorSpec { name: "wte.weight".into(), shape: vec![50257, 768] },
        TensorSpec { name: "wpe.weight".into(), shape: vec![1024, 768] },
        TensorSpec { name: "ln_f.weight".into(), shape: vec![768] },
        TensorSpec { name: "ln_f.bias".into(), shape: vec![768] },
    ];
    for l in 0..12 {
        for (n, s) in [
            ("attn.c_attn.weight", vec![768, 2304]),
            ("attn.c_attn.bias", vec![2304]),
            ("attn.c_proj.weight", vec![768, 768]),
            ("attn.c_proj.bias", vec![768]),
            ("mlp.c_fc.weight", vec![768, 3072]),
            ("mlp.c_fc.bias", vec![3072]),
            ("mlp.c_proj.weight", vec![3072, 768]),
            ("mlp.c_proj.bias", vec![768]),
            ("ln_1.weight", vec![768]),
            ("ln_1.bias", vec![768]),
            ("ln_2.weight", vec![768]),
            ("ln_2.bias", vec![768]),
        ] {
            t.push(TensorSpec { name: format!("h.{l}.{n}"), shape: s });
        }
    }
    Ok(Layout::new(t)?)
}

/// A synthetic update: per chunk, `kept` distinct random indices and random values.
pub(super) fn synthetic(layout: &Layout, header: Header, rng: &mut StdRng) -> anyhow::Result<Update> {
    let comp = header.compression;
    let mut tensors = Vec::with_capacity(layout.tensors().len());
    for (t, g) in comp.grids(layout).into_iter().enumerate() {
        let kept = g.kept(comp.topk_for(t)) as usize;
        let n = g.coefficients();
        let mut idx = Vec::with_capacity(g.chunks() as usize * kept);
        let mut chunk: Vec<u16> = Vec::with_capacity(kept);
        for _ in 0..g.chunks() {
            chunk.clear();
            while chunk.len() < kept {
                let i = rng.random_range(0..n) as u16;
                if !chunk.contains(&i) {
                    chunk.push(i);
                }
            }
            chunk.sort_unstable();
            idx.extend_from_slice(&chunk);
        }
        let m = idx.len();
        let values = match comp.values {
            ValueEncoding::Sign => Values::Sign((0..m).map(|_| rng.next_u32() & 1 == 1).collect()),
            ValueEncoding::Int8 => Values::Int8 {
                scales: (0..g.chunks()).map(|_| 0.001).collect(),
                q: (0..m).map(|_| rng.random_range(-127..=127)).collect(),
            },
            ValueEncoding::Bf16 => {
                // bf16 bits of f32 values in (-0.01, 0.01): the top half of the f32 bits, rounded down
                Values::Bf16((0..m).map(|_| (rng.random_range(-0.01f32..0.01).to_bits() >> 16) as u16).collect())
            }
            ValueEncoding::TwoBit => Values::TwoBit {
                scales: (0..g.chunks()).map(|_| 0.001).collect(),
                q: (0..m).map(|_| rng.random_range(0..=3)).collect(),
            },
        };
        tensors.push((idx, values));
    }
    Ok(Update::new(header, layout, tensors)?)
}

/// Per element, the step's sign recovered from `before` and `after`: `after = before * decay - lr * s`.
fn steps(before: &[f32], after: &[f32], decay: f32, lr: f32) -> impl Iterator<Item = i8> {
    before.iter().zip(after).map(move |(b, a)| ((b * decay - a) / lr).round() as i8)
}

fn params_per_s(params: u64, secs: f64) -> f64 {
    params as f64 / secs
}

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    tokio::task::spawn_blocking(move || run_blocking(args)).await.context("benchmark thread")?
}

fn run_blocking(args: Args) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.updates > 0, "--updates must be > 0");
    anyhow::ensure!(args.rounds >= 2, "--rounds must be >= 2 (bit-exactness compares rounds)");
    let values = ValueEncoding::from_name(&args.values)
        .with_context(|| format!("--values must be sign, int8, bf16 or two-bit, not {}", args.values))?;
    let threads =
        if args.threads == 0 { std::thread::available_parallelism().map_or(1, usize::from) } else { args.threads };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().context("rayon thread pool")?;
    trainer::set_torch_threads(threads);

    let indices = verify::IndexCoding::from_name(&args.index_coding)
        .with_context(|| format!("--index-coding must be fixed or elias-fano, not {}", args.index_coding))?;
    let comp = Compression { indices, ..Compression::uniform(args.chunk, args.k, values) };
    comp.validate()?;
    let hyper = Hyper {
        compression: comp,
        schedule: Schedule::Constant { lr: Ratio::new(1, 1000) },
        weight_decay: Ratio::new(1, 10),
        clip: NormClip::Median,
        step: verify::StepRule::Sign,
    };
    let layout = gpt2_small()?;
    let params = layout.elements();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut state = State::zeros(layout.clone());
    for d in state.data_mut() {
        for v in d.iter_mut() {
            *v = rng.random_range(-0.02..0.02);
        }
    }
    let base: StateHash = state.hash();
    let update_bytes = encoded_len(&layout, &comp);
    let dense_bytes = params * 4;
    println!(
        "bench aggregate: {params} params ({} tensors), {} updates, chunk {} top-k {} {values:?}, {} indices, {threads} threads, {} rounds",
        layout.tensors().len(),
        args.updates,
        args.chunk,
        args.k,
        indices.name(),
        args.rounds
    );
    let workers: Vec<WorkerKey> = (0..args.updates)
        .map(|i| {
            let mut k = [0u8; 32];
            k[..2].copy_from_slice(&i.to_le_bytes());
            WorkerKey(k)
        })
        .collect();
    let blobs: Vec<Vec<u8>> = workers
        .iter()
        .map(|&worker| {
            let header = Header { run: RUN, round: ROUND, base, worker, layout: layout.hash(), compression: comp };
            Ok(synthetic(&layout, header, &mut rng)?.to_bytes())
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(blobs.iter().all(|b| b.len() as u64 == update_bytes), "blob length differs from encoded_len");
    println!(
        "  update {update_bytes} bytes, dense fp32 gradient {dense_bytes} bytes: {:.0}x smaller",
        dense_bytes as f64 / update_bytes as f64
    );

    let decode_all = |blobs: &[Vec<u8>]| -> anyhow::Result<Vec<Update>> {
        blobs
            .iter()
            .zip(&workers)
            .map(|(b, &worker)| {
                let e = Expected { run: RUN, round: ROUND, base, worker, layout: &layout, compression: comp };
                Ok(decode(b, &e)?)
            })
            .collect()
    };
    let lr = hyper.schedule.lr(ROUND);
    let decay = 1.0f32 - lr * (hyper.weight_decay.to_f64() as f32);
    let mut bases = Bases::cpu();
    let (mut cairn_s, mut torch_s, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut decode_s, mut apply_s, mut gather_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut cairn_state = None;
    let mut torch_params = None;
    for round in 0..args.rounds {
        // cairn: bytes -> decode -> aggregate + apply
        let mut next = state.clone();
        let t = Instant::now();
        let updates = decode_all(&blobs)?;
        let t_decode = t.elapsed().as_secs_f64();
        pool.install(|| apply(&mut next, ROUND, &updates, &hyper))?;
        let total = t.elapsed().as_secs_f64();
        decode_s.push(t_decode);
        apply_s.push(total - t_decode);
        cairn_s.push(total);
        hashes.push(next.hash());

        // torch: decoded updates -> gathered tensors -> scatter_reduce mean, einsum, sign, step
        let mut p = tensors_from_state(&state, bases.device())?;
        let t = Instant::now();
        let gathered = gather_updates(&updates, &layout, &hyper, bases.device())?;
        let t_gather = t.elapsed().as_secs_f64();
        reference_aggregate(&mut p, &gathered, &layout, ROUND, &hyper, &mut bases)?;
        let total_t = t.elapsed().as_secs_f64();
        gather_s.push(t_gather);
        torch_s.push(total_t);
        eprintln!(
            "  round {}/{}: cairn {:.3}s (decode {:.3}s, aggregate+apply {:.3}s)  torch {:.3}s (gather {:.3}s)  state {}",
            round + 1,
            args.rounds,
            total,
            t_decode,
            total - t_decode,
            total_t,
            t_gather,
            next.hash()
        );
        cairn_state = Some(next);
        torch_params = Some(p);
    }
    let (Some(cairn_state), Some(torch_params)) = (cairn_state, torch_params) else {
        anyhow::bail!("no rounds ran");
    };
    let bit_exact = hashes.iter().all(|h| *h == hashes[0]);

    // The round as one trit per parameter (`verify::step`): what a follower could download instead
    // of the updates, and what deriving it and applying it (both hashes included) cost.
    let t = Instant::now();
    let step = pool.install(|| RoundStep::derive(&state, &cairn_state, ROUND, &hyper))?;
    let derive_s = t.elapsed().as_secs_f64();
    let step_bytes = step.encode();
    let t = Instant::now();
    let applied = pool.install(|| RoundStep::decode(&step_bytes, &layout)?.apply(&state, ROUND, &hyper))?;
    let step_apply_s = t.elapsed().as_secs_f64();
    let step_exact = applied.hash() == hashes[0];
    let all_updates = update_bytes * u64::from(args.updates);
    println!(
        "  step: {} bytes (the {2} updates take {all_updates} bytes, {1:.2}x the step), derived in {derive_s:.3}s, decoded and applied in {step_apply_s:.3}s, reproduces the state: {step_exact}",
        step_bytes.len(),
        all_updates as f64 / step_bytes.len() as f64,
        args.updates
    );

    // Agreement: the per-parameter step sign of torch's result against cairn's.
    let torch_data = tensors_to_host(&torch_params)?;
    let (mut same, mut max_diff_same) = (0u64, 0.0f32);
    for ((before, a), b) in state.data().iter().zip(cairn_state.data()).zip(&torch_data) {
        for ((sa, sb), (x, y)) in steps(before, a, decay, lr).zip(steps(before, b, decay, lr)).zip(a.iter().zip(b)) {
            if sa == sb {
                same += 1;
                max_diff_same = max_diff_same.max((x - y).abs());
            }
        }
    }
    let sign_agreement_pct = 100.0 * same as f64 / params as f64;

    let (c, t) = (median(cairn_s), median(torch_s));
    let decode_median = median(decode_s);
    let (cairn_pps, torch_pps) = (params_per_s(params, c), params_per_s(params, t));
    println!(
        "  cairn: decode {:.3}s + aggregate/apply {:.3}s = {c:.3}s  ({cairn_pps:.3e} params/s)",
        decode_median,
        median(apply_s)
    );
    println!("  torch: gather {:.3}s + scatter/einsum/step = {t:.3}s  ({torch_pps:.3e} params/s)", median(gather_s));
    println!(
        "  bit-exact across {} rounds: {bit_exact} (state {}); torch takes cairn's step on {sign_agreement_pct:.4}% of parameters ({} differ; max |diff| where the steps agree {max_diff_same:e})",
        args.rounds,
        hashes[0],
        params - same
    );
    println!(
        "bench aggregate: params={params} updates={} cairn_params_per_s={cairn_pps:.0} torch_params_per_s={torch_pps:.0} ratio={:.3} decode_s={decode_median:.3} update_bytes={update_bytes} compression_x={:.1} sign_agreement_pct={sign_agreement_pct:.4} step_bytes={} step_vs_updates_x={:.2} step_apply_s={step_apply_s:.3}",
        args.updates,
        cairn_pps / torch_pps,
        dense_bytes as f64 / update_bytes as f64,
        step_bytes.len(),
        all_updates as f64 / step_bytes.len() as f64
    );
    Ok(if bit_exact && step_exact { Outcome::Ok } else { Outcome::Failed })
}
