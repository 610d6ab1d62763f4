//! `cairn bench step`: what one worker's device does per round, as `cairn worker` does it: draw the
//! round's sequences, forward and backward in micro-batches with clipping, fold the gradients into
//! the DeMo momentum, encode the update (DCT, top-k, signs) and serialise it to wire bytes.
//!
//! The last line holds tokens per second for the whole round and for the passes alone, the model
//! FLOPs those rates mean, and, given `--peak-tflops` (the device's dense peak for the precision),
//! the model FLOPs utilisation (MFU) in percent.
//!
//! Model FLOPs per token follow the usual convention (PaLM, appendix B): `6 N + 12 L d T`, where
//! `N` counts the parameters of the matrix products (every matrix but the token embedding, whose
//! forward is a lookup), `L` the layers, `d` the width and `T` the sequence length; the second term
//! is attention's two products, counted in full although causal attention skips half of them.
//! Rematerialisation and the DeMo encoding are not counted as model FLOPs.

use std::time::Instant;

use anyhow::Context;
use trainer::data::{Dataset, MarkovSpec, sequences_for_tokens};
use trainer::demo::{Bases, DemoState};
use trainer::model::{Model, ModelConfig, Precision, Preset, init_state};
use trainer::step::{StepConfig, local_step};
use verify::{Compression, Header, Layout, Round, StateHash, ValueEncoding};

use crate::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model preset: tiny, small, 125m or 1b.
    #[arg(long, default_value = "125m")]
    preset: String,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Arithmetic of the passes: f32, or bf16 (matrix products and attention in bf16).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Tokens per sequence (at most the preset's context).
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 8)]
    micro_batch: usize,
    /// Target tokens per round (whole sequences).
    #[arg(long, default_value_t = 65_536)]
    tokens_per_round: u64,
    /// Timed rounds (after the warm-up rounds).
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Untimed rounds first (kernel selection, allocator growth).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Coefficients kept per chunk (chunk 64, 1-bit values, as in the default run config).
    #[arg(long, default_value_t = 4)]
    topk: u16,
    /// libtorch threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The device's dense peak in TFLOP/s for this precision, for MFU (0: no MFU). H100/H200 SXM:
    /// 989 for bf16, 67 for f32 without TF32 (NVIDIA's data sheets).
    #[arg(long, default_value_t = 0.0)]
    peak_tflops: f64,
    /// On a GPU, encode the last round's momentum on the CPU as well and report how many bytes of
    /// the two updates agree (slow for the large presets).
    #[arg(long)]
    check_cpu_encoding: bool,
    /// Seed of the initial weights and the synthetic corpus.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Model FLOPs per trained token: `6 N + 12 L d T` (module docs).
pub fn model_flops_per_token(config: &ModelConfig, layout: &Layout, seq_len: usize) -> f64 {
    let matmul_params: u64 = layout
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2 && t.name != trainer::model::EMBEDDING)
        .map(|t| t.shape.iter().product::<u64>())
        .sum();
    6.0 * matmul_params as f64 + 12.0 * f64::from(config.layers) * f64::from(config.dim) * seq_len as f64
}

/// Seconds spent in each part of a round.
#[derive(Default)]
struct Times {
    data: f64,
    passes: f64,
    encode: f64,
}

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.rounds == 0 {
        anyhow::bail!("--rounds must be at least 1");
    }
    if args.threads > 0 {
        trainer::set_torch_threads(args.threads);
    }
    let preset: Preset = args.preset.parse()?;
    let precision: Precision = args.precision.parse()?;
    let device = trainer::parse_device(&args.device)?;
    let config = ModelConfig::preset(preset);
    if args.seq_len == 0 || args.seq_len > config.max_seq_len as usize {
        anyhow::bail!("--seq-len must be 1 to {} for {}", config.max_seq_len, preset.name());
    }
    let layout = config.layout()?;
    let sequences = sequences_for_tokens(args.tokens_per_round, args.seq_len);
    let tokens = (sequences * args.seq_len) as u64;
    let flops_per_token = model_flops_per_token(&config, &layout, args.seq_len);
    println!(
        "bench step: preset {} ({} params), {} on {}, {sequences} sequences x {} tokens per round in micro-batches of {}, top-k {}, {} threads",
        preset.name(),
        layout.elements(),
        precision.name(),
        args.device,
        args.seq_len,
        args.micro_batch,
        args.topk,
        trainer::torch_info().threads
    );

    let state = init_state(&config, args.seed)?;
    let model = Model::from_state(&config, &state, device)?.with_precision(precision);
    drop(state);
    let data = Dataset::synthetic(MarkovSpec::default(), args.seed, args.seq_len, 1)?;
    let mut demo = DemoState::new(&layout, device)?;
    let step = StepConfig { micro_batch: args.micro_batch, clip_norm: Some(1.0) };
    let compression = Compression::uniform(64, args.topk, ValueEncoding::Sign);
    compression.validate()?;

    let first = data.train_range().start;
    let mut timed = Times::default();
    let mut update_bytes = 0usize;
    let mut last_loss = f64::NAN;
    // Measured only with --check-cpu-encoding on a GPU; otherwise the last line leaves the key out.
    let mut cpu_agreement_pct: Option<f64> = None;
    for r in 0..args.warmup + args.rounds {
        let t0 = Instant::now();
        let from = first + r * sequences as u64;
        let indices: Vec<u64> = (from..from + sequences as u64).collect();
        let batch = data.batch(&indices, device)?;
        let t1 = Instant::now();
        // local_step reads the loss and gradient norm back, so the passes have finished when it returns.
        let grads = local_step(&model, &batch, &step).context("forward/backward")?;
        let t2 = Instant::now();
        demo.accumulate(&grads.grads, &layout, trainer::demo::DEFAULT_MOMENTUM_DECAY, 1.0)?;
        let header = Header {
            run: verify::RunId([0x5e; 32]),
            round: Round(r),
            base: StateHash([0; 32]),
            worker: verify::WorkerKey([0x77; 32]),
            layout: layout.hash(),
            compression,
        };
        let last = r + 1 == args.warmup + args.rounds;
        // The copy for the check is not part of a worker's round: its time is left out.
        let copy_started = Instant::now();
        let host_momentum = match last && args.check_cpu_encoding && device != trainer::Device::Cpu {
            true => Some(
                demo.momentum().iter().map(|m| m.f_to_device(trainer::Device::Cpu)).collect::<Result<Vec<_>, _>>()?,
            ),
            false => None,
        };
        let copy = copy_started.elapsed();
        // Serialising copies the selected coefficients to the host: the encode has finished too.
        let blob = demo.encode(&header, &layout)?.to_bytes();
        let t3 = Instant::now();
        verify::decode(&blob, &header.expected(&layout)).context("the update does not decode")?;
        if let Some(momentum) = host_momentum {
            // The same momentum encoded on the CPU: the device's DCT and top-k should pick the same
            // coefficients and signs, up to near-ties.
            let cpu_blob = trainer::demo::encode(&momentum, &header, &layout, &mut Bases::cpu())?.to_bytes();
            let same = blob.iter().zip(&cpu_blob).filter(|(a, b)| a == b).count();
            let pct = 100.0 * same as f64 / blob.len().max(cpu_blob.len()) as f64;
            cpu_agreement_pct = Some(pct);
            println!("the last update agrees with the CPU's encoding of the same momentum in {pct:.3}% of its bytes");
        }
        update_bytes = blob.len();
        last_loss = grads.loss;
        let timed_round = r >= args.warmup;
        if timed_round {
            timed.data += (t1 - t0).as_secs_f64();
            timed.passes += (t2 - t1).as_secs_f64();
            timed.encode += (t3 - t2 - copy).as_secs_f64();
        }
        println!(
            "round {r}{}: loss {:.4}, data {:.0} ms, passes {:.0} ms, encode {:.0} ms, {} update bytes",
            if timed_round { "" } else { " (warm-up)" },
            grads.loss,
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2 - copy).as_secs_f64() * 1e3,
            blob.len()
        );
    }
    if !last_loss.is_finite() {
        anyhow::bail!("the loss is not finite: {last_loss}");
    }
    let rounds = args.rounds as f64;
    let round_secs = (timed.data + timed.passes + timed.encode) / rounds;
    let tokens_per_s = tokens as f64 / round_secs;
    let pass_tokens_per_s = tokens as f64 * rounds / timed.passes;
    let model_tflops = tokens_per_s * flops_per_token / 1e12;
    let pass_tflops = pass_tokens_per_s * flops_per_token / 1e12;
    // A key is printed only when it was measured: MFU needs --peak-tflops, the agreement a GPU run
    // with --check-cpu-encoding.
    let mut last = format!(
        "bench step: params={} tokens_per_round={tokens} tokens_per_s={tokens_per_s:.0} pass_tokens_per_s={pass_tokens_per_s:.0} round_ms={:.1} data_ms={:.1} passes_ms={:.1} encode_ms={:.1} model_flops_per_token={flops_per_token:.0} model_tflops={model_tflops:.2}",
        layout.elements(),
        round_secs * 1e3,
        timed.data / rounds * 1e3,
        timed.passes / rounds * 1e3,
        timed.encode / rounds * 1e3,
    );
    if args.peak_tflops > 0.0 {
        let mfu = |tflops: f64| 100.0 * tflops / args.peak_tflops;
        last.push_str(&format!(" mfu_pct={:.2} pass_mfu_pct={:.2}", mfu(model_tflops), mfu(pass_tflops)));
    }
    last.push_str(&format!(" update_bytes={update_bytes}"));
    if let Some(pct) = cpu_agreement_pct {
        last.push_str(&format!(" cpu_encode_agreement_pct={pct:.3}"));
    }
    println!("{last}");
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_flops_count_every_product_but_the_embedding_lookup() {
        let config = ModelConfig::preset(Preset::M125);
        let layout = config.layout().unwrap();
        // 12 layers of q, k, v, o (4 d²) and the SwiGLU's three d x 2048 matrices, plus the head.
        let per_layer = 4 * 768 * 768 + 3 * 768 * 2048;
        let n = 12 * per_layer + 256 * 768;
        let want = 6.0 * n as f64 + 12.0 * 12.0 * 768.0 * 1024.0;
        assert_eq!(model_flops_per_token(&config, &layout, 1024), want);
    }
}
