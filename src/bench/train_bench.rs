//! `cairn bench train`: cairn's DeMo rounds against full-batch AdamW, on the same tokens, in one run.
//!
//! Every step draws one global batch. The baseline takes an AdamW step on all of it (what all-reduce
//! data parallelism computes); the swarm splits it between `--workers` simulated workers, each of which
//! computes its gradients, updates its DeMo momentum and encodes an update (chunk, top-k, 1-bit signs),
//! and `verify::apply` aggregates the decoded updates into the shared state that the next round
//! starts from (`trainer::simulate`). Both are evaluated on the same held-out sequences.
//!
//! With several `--adamw-lr` (and `--adamw-decay-start`), one baseline trains per rate (and per
//! start of its decay) on the same batches, and the one with the lowest final loss is reported (a
//! tuned baseline).
//!
//! The last line holds the headline: final held-out losses, the gap in percent
//! (`100 * (cairn - baseline) / baseline`), bytes each worker uploads per round and the ratio of a
//! dense fp32 gradient to it, and the synthetic corpus's loss floor (0 when unknown).

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use trainer::data::{
    Dataset, MAX_TEXT_BYTES, MarkovSpec, Tokenizer, is_parquet_source, load_parquet, load_text, sequences_for_tokens,
};
use trainer::model::{ModelConfig, Preset, init_state};
use trainer::peers::{
    DemoPeer, DemoPeerConfig, LocalSwarm, LocoConfig, LocoPeer, Method, Outer, PeerValues, TwoBitScale, chunk_grids,
    closest_topk, shared_payload_bytes, topk_for_bytes,
};
use trainer::simulate::{Baseline, Experiment, Swarm, SwarmConfig, embedding_coherence, global_batch};
use trainer::step::{AdamWConfig, StepConfig, eval_loss};
use verify::wire::encoded_len;
use verify::{Compression, Hyper, NormClip, Ratio, Round, Schedule, StepRule, Transform, ValueEncoding};

use crate::Outcome;

/// `--topk-override` values as (name, top-k): none given, the default (the embedding at 64); `none`,
/// no overrides.
fn topk_by_name(values: &[String]) -> anyhow::Result<Vec<(String, u16)>> {
    match values {
        [] => Ok(trainer::model::default_topk_overrides()),
        [none] if none == "none" => Ok(Vec::new()),
        _ => values
            .iter()
            .map(|v| {
                let (name, k) = v.split_once('=').with_context(|| format!("--topk-override {v:?}: NAME=K expected"))?;
                let k: u16 = k.parse().with_context(|| format!("--topk-override {v:?}: K must be 1 to 256"))?;
                Ok((name.to_string(), k))
            })
            .collect(),
    }
}

/// Default text for `--corpus shakespeare`, relative to the working directory.
const SHAKESPEARE: &str = "../shared/data/tinyshakespeare.txt";

/// Denominator of the rationals the learning rates and weight decay are written as.
const RATIO_DEN: u64 = 1_000_000_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Corpus: synthetic (seeded Markov source with a known loss floor), shakespeare, or text (the
    /// data named by --data).
    #[arg(long, default_value = "synthetic")]
    corpus: String,
    /// Data for `--corpus shakespeare` or `text`: a text file, or Parquet (a `.parquet` file, a
    /// directory of them, or a store prefix ending in `/`), as a local path or a store URL.
    #[arg(long)]
    data: Option<String>,
    /// The text column of Parquet data.
    #[arg(long, default_value = trainer::data::DEFAULT_TEXT_COLUMN)]
    text_column: String,
    /// Tokenise with this HF tokenizer.json (a local path or store URL) instead of byte-level.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Model preset: tiny or small.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Training steps (rounds).
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Simulated workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Target tokens per step (the global batch), split between the workers.
    #[arg(long, default_value_t = 1024)]
    tokens_per_step: u64,
    /// Sequence length (inputs per sequence).
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Peak learning rate of cairn's sign step.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Peak learning rate of the AdamW baseline; several, comma-separated, train one baseline each
    /// on the same batches, and the one with the lowest final loss is the baseline reported (a tuned
    /// baseline).
    #[arg(long, value_delimiter = ',', default_value = "0.003")]
    adamw_lr: Vec<f64>,
    /// Linear warm-up steps (both optimisers).
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Decay both optimisers' rates to this fraction of their peak at the last step (1: no decay).
    #[arg(long, default_value_t = 1.0)]
    min_lr_factor: f64,
    /// With --min-lr-factor: 0, a cosine decay from the end of warm-up; N, the peak until step N, then
    /// a linear decay (warm-up, stable, decay), as run.toml's optimizer.decay_start.
    #[arg(long, default_value_t = 0)]
    decay_start: u64,
    /// Where the AdamW baseline's decay starts instead (as --decay-start); several, comma-separated,
    /// train one baseline each for every --adamw-lr, and the lowest final loss is the baseline
    /// reported: a baseline tuned over its schedule too. Default: --decay-start, the shape every
    /// method shares.
    #[arg(long, value_delimiter = ',')]
    adamw_decay_start: Vec<u64>,
    /// DeMo momentum decay.
    #[arg(long, default_value_t = trainer::demo::DEFAULT_MOMENTUM_DECAY)]
    decay: f64,
    /// Research (cairn with --cairn-local): the error-feedback decay moves linearly from --decay to
    /// this between --decay-start and --steps (default: it stays at --decay).
    #[arg(long)]
    decay_end: Option<f64>,
    /// Coefficients kept per chunk.
    #[arg(long, default_value_t = 4)]
    topk: u16,
    /// Top-k of one tensor, NAME=K (repeatable), as a run.toml's `[demo.topk_by_tensor]` sets it;
    /// `none` for none. Default: the token embedding at 64, as in a run that sets nothing.
    #[arg(long = "topk-override", value_name = "NAME=K")]
    topk_override: Vec<String>,
    /// DCT chunk size.
    #[arg(long, default_value_t = 64)]
    chunk: u16,
    /// `--csv` and the research flags.
    #[command(flatten)]
    research: Box<Research>,
    /// The research peers and the compression sweep.
    #[command(flatten)]
    peers: Box<PeerArgs>,
    /// Decoupled weight decay (both optimisers).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Evaluate every this many steps (and at the end).
    #[arg(long, default_value_t = 20)]
    eval_every: u64,
    /// Held-out sequences evaluated.
    #[arg(long, default_value_t = 64)]
    eval_sequences: usize,
    /// Run seed (model init, synthetic corpus, data assignment).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the passes run: cpu, cuda or cuda:N (verify's aggregation runs on the CPU either way).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Threads for libtorch and rayon (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// The CSV output, and flags for investigating the compression (value encoding) and, not consensus,
/// the aggregation (in a box with `--csv`: inline they would make the subcommand enum lopsided).
#[derive(Debug, clap::Args)]
pub struct Research {
    /// Write the curves here as CSV: step, baseline_loss, cairn_loss, floor_nats (plot them with
    /// infra/plot-curves.sh).
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Value encoding of the selected coefficients: sign (1 bit), int8 (per-chunk f32 scale) or bf16.
    /// Several, comma-separated, train one cairn run each (`cairn-int8`, ...), every one at the top-k
    /// whose update size is nearest the first's (or the --frontier-x target).
    #[arg(long, value_delimiter = ',', default_value = "sign")]
    values: Vec<String>,
    /// The aggregation's step rule (consensus, a run's `demo.step_rule`) for cairn and cairn-local:
    /// sign (DeMo's: the sign of the mean over the senders of each coefficient) or linear (the mean
    /// over every worker, zeros included, times the rate, as SparseLoCo's outer step; needs int8,
    /// bf16 or two-bit values).
    #[arg(long, default_value = "sign")]
    step_rule: String,
    /// What each chunk's top-k is taken of, for cairn and cairn-local (consensus, a run's
    /// `demo.transform`): dct (its DCT coefficients, DeMo's) or identity (its entries, SparseLoCo's).
    #[arg(long, default_value = "dct")]
    transform: String,
    /// How cairn's and cairn-local's updates write each chunk's kept indices (consensus, a run's
    /// `demo.index_coding`): fixed (12 or 16 bits each) or elias-fano (about 2 + log2(n / k) bits
    /// each); the frontier's top-k is the one whose real update size is nearest the target.
    #[arg(long, default_value = "fixed")]
    index_coding: String,
    /// cairn's consensus runner takes --local-steps local AdamW steps (inner rate --inner-lr) between
    /// rounds, as a run with `train.local_steps` does, with cairn-local's outer rate and schedule
    /// (--local-outer-lr, --local-outer-schedule); its top-k is the one whose bytes per step are
    /// nearest the target.
    #[arg(long)]
    cairn_local: bool,
    /// Research only, not consensus: replace the aggregation's sign(X) by the linear step
    /// lr * X / rms(X) per tensor (the same RMS step as the sign).
    #[arg(long)]
    linear_step: bool,
    /// Research only, not consensus: tensors that bypass DeMo and take a dense signum step of the
    /// workers' mean gradient (momentum 0.9): a comma-separated list of names, where `vocab` means
    /// the embedding and LM head, `norms` every RMSNorm gain, `all` every tensor.
    #[arg(long, value_delimiter = ',')]
    dense_tensors: Vec<String>,
    /// Print per-interval diagnostics of the swarm's step: cosine with the workers' mean gradient
    /// (overall, embedding + LM head, the rest), that of a dense sign step, and the fraction of
    /// elements whose aggregated direction is exactly 0; at each evaluation, the mean pairwise cosine
    /// of the embedding rows of the synthetic corpus's 32 symbols, baseline and cairn.
    #[arg(long)]
    diagnostics: bool,
}

/// Published methods trained beside cairn on the same tokens (research, not consensus; see
/// `trainer::peers`), and the compression sweep.
#[derive(Debug, clap::Args)]
pub struct PeerArgs {
    /// Peers to train: a comma-separated list of demo-ref (DeMo's reference: f32 values, mean over
    /// the workers that sent each coefficient, sign step), demo-sign (the same with sign values),
    /// sparseloco (local AdamW steps, top-k at 2 bits with error feedback, outer SGD; sparseloco-dct
    /// takes each chunk's top-k in the DCT domain, as cairn's wire format does; sparseloco-shared sends
    /// the same random positions from every worker, drawn from the synchronisation's number, and no
    /// indices) and diloco
    /// (local AdamW steps, dense f32 outer delta, Nesterov outer step); `none` for none. Each sparse
    /// peer takes the top-k whose bytes per step are nearest cairn's. Also, a candidate not in the
    /// default list: cairn-local (local AdamW steps whose pseudo-gradient goes through cairn's own
    /// encoder and `verify::apply` every H steps).
    #[arg(long, value_delimiter = ',', default_value = "demo-ref,demo-sign,sparseloco,diloco")]
    peers: Vec<String>,
    /// Local AdamW steps between SparseLoCo's and DiLoCo's synchronisations (H).
    #[arg(long, default_value_t = 8)]
    local_steps: u64,
    /// Peak rate of SparseLoCo's and DiLoCo's inner AdamW (default: the first --adamw-lr), on the
    /// same schedule shape as the others.
    #[arg(long)]
    inner_lr: Option<f64>,
    /// cairn-local's outer rate per synchronisation (default: --lr x --local-steps with the sign
    /// step rule, 1 with the linear one).
    #[arg(long)]
    local_outer_lr: Option<f64>,
    /// cairn-local's outer schedule: `shaped` (the warm-up and decay every optimiser follows, which
    /// the inner AdamW also follows: a run's `optimizer` section) or `constant` (the inner AdamW
    /// alone decays, as SparseLoCo's) or `anneal:FACTOR` (constant until --decay-start, then linear
    /// to FACTOR x the rate at --steps while the inner AdamW decays).
    #[arg(long, default_value = "shaped")]
    local_outer_schedule: String,
    /// SparseLoCo's outer learning rate.
    #[arg(long, default_value_t = 1.0)]
    sparseloco_outer_lr: f64,
    /// SparseLoCo's outer schedule: `constant` (as published) or `anneal:FACTOR`, as
    /// --local-outer-schedule's (research).
    #[arg(long, default_value = "constant")]
    sparseloco_outer_schedule: String,
    /// SparseLoCo's outer Nesterov momentum (research; 0, the default, is SparseLoCo's plain
    /// averaged step; a steady update then moves rate / (1 - momentum) times the mean).
    #[arg(long, default_value_t = 0.0)]
    sparseloco_momentum: f64,
    /// SparseLoCo's error-feedback decay.
    #[arg(long, default_value_t = 0.95)]
    sparseloco_ef_decay: f64,
    /// cairn's two-bit scale (the worker's encoder choice, not consensus; research): max (the
    /// largest kept magnitude over 3, what `cairn worker` uses), mean (min(max, 1.5 x the mean
    /// kept magnitude) / 3, larger values clipped and fed back) or lsq (the least-squares scale of
    /// the four levels, larger values clipped and fed back).
    #[arg(long, default_value = "max")]
    two_bit_scale: String,
    /// SparseLoCo's two-bit scale (research): max (the largest kept magnitude, as published) or
    /// mean (1.5 x the mean kept magnitude, larger values clipped and fed back) or lsq (3 x the
    /// least-squares scale of the four levels).
    #[arg(long, default_value = "max")]
    sparseloco_scale: String,
    /// DiLoCo's outer learning rate.
    #[arg(long, default_value_t = 0.7)]
    diloco_outer_lr: f64,
    /// DiLoCo's outer Nesterov momentum.
    #[arg(long, default_value_t = 0.9)]
    diloco_momentum: f64,
    /// Sweep compression: train cairn and every sparse peer at each --frontier-x ratio to a dense
    /// fp32 gradient, and print the gap-vs-bytes table.
    #[arg(long)]
    frontier: bool,
    /// The ratios of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "250,1000,2500")]
    frontier_x: Vec<f64>,
}

/// The schedule of an optimiser peaking at `peak`: the same warm-up and decay for every optimiser in
/// the run, so that a decay helps or hurts all of them alike.
fn schedule(args: &Args, peak: f64, what: &str) -> anyhow::Result<Schedule> {
    schedule_from(args, peak, (args.decay_start, "--decay-start"), what)
}

/// [`schedule`] with its decay starting at `decay_start` (given by the flag named with it).
fn schedule_from(args: &Args, peak: f64, decay_start: (u64, &str), what: &str) -> anyhow::Result<Schedule> {
    let (decay_start, flag) = decay_start;
    anyhow::ensure!((0.0..=1.0).contains(&args.min_lr_factor), "--min-lr-factor must be in [0, 1]");
    let min = ratio(peak * args.min_lr_factor, "--min-lr-factor x peak")?;
    let (peak, warmup_rounds, total_rounds) = (ratio(peak, what)?, args.warmup, args.steps);
    let schedule = match decay_start {
        // at --min-lr-factor 1, min = peak: linear warm-up, then constant
        0 => Schedule::WarmupCosine { peak, min, warmup_rounds, total_rounds },
        decay_start => Schedule::WarmupStableDecay { peak, min, warmup_rounds, decay_start, total_rounds },
    };
    schedule.validate().with_context(|| {
        format!("{flag} {decay_start} must lie between --warmup {} and --steps {}", args.warmup, args.steps)
    })?;
    Ok(schedule)
}

/// The AdamW baselines' (rate, decay start): every --adamw-lr at every --adamw-decay-start
/// (--decay-start when none is given).
fn baseline_grid(args: &Args) -> Vec<(f64, u64)> {
    let starts = match args.adamw_decay_start.is_empty() {
        true => vec![args.decay_start],
        false => args.adamw_decay_start.clone(),
    };
    args.adamw_lr.iter().flat_map(|&lr| starts.iter().map(move |&start| (lr, start))).collect()
}

/// A baseline's name in the output: its rate, and its decay start when --adamw-decay-start is given.
fn baseline_name(args: &Args, (lr, decay_start): (f64, u64)) -> String {
    match args.adamw_decay_start.is_empty() {
        true => format!("lr {lr}"),
        false => format!("lr {lr} decay from {decay_start}"),
    }
}

/// An `anneal:FACTOR` spec (--local-outer-schedule, --sparseloco-outer-schedule) as the schedule
/// from `rate` to FACTOR x `rate`; None when `spec` is not of that form.
fn annealed(args: &Args, spec: &str, rate: f64, what: &str) -> Option<anyhow::Result<Schedule>> {
    let factor: f64 = spec.strip_prefix("anneal:")?.parse().ok()?;
    Some(anneal(args, rate, rate * factor, what))
}

/// `from` until --decay-start, then linear to `to` at --steps: a run's warm-up-stable-decay with no
/// warm-up and `min_lr` = `to` (which may be above `from`).
fn anneal(args: &Args, from: f64, to: f64, what: &str) -> anyhow::Result<Schedule> {
    let schedule = Schedule::WarmupStableDecay {
        peak: ratio(from, what)?,
        min: ratio(to, what)?,
        warmup_rounds: 0,
        decay_start: args.decay_start,
        total_rounds: args.steps,
    };
    schedule.validate()?;
    Ok(schedule)
}

fn ratio(x: f64, what: &str) -> anyhow::Result<Ratio> {
    anyhow::ensure!((0.0..1e6).contains(&x), "{what} must be in [0, 1e6), got {x}");
    Ok(Ratio::new((x * RATIO_DEN as f64).round() as u64, RATIO_DEN))
}

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    let source = match args.corpus.as_str() {
        "synthetic" => None,
        "shakespeare" => match &args.data {
            Some(data) => Some(data.clone()),
            None if std::path::Path::new(SHAKESPEARE).is_file() => Some(SHAKESPEARE.to_string()),
            None => anyhow::bail!(
                "--corpus shakespeare reads {SHAKESPEARE} by default, and it is not there: give the text with --data PATH"
            ),
        },
        "text" => Some(args.data.clone().context("--corpus text needs --data")?),
        other => anyhow::bail!("--corpus must be synthetic, shakespeare or text, not {other}"),
    };
    let tokenizer = match &args.tokenizer {
        Some(path) => Tokenizer::load(path).await.with_context(|| format!("loading the tokenizer {path}"))?,
        None => Tokenizer::Bytes,
    };
    let tokens = match source {
        None => None,
        Some(source) if is_parquet_source(&source) => {
            let docs = load_parquet(&source, &args.text_column, MAX_TEXT_BYTES)
                .await
                .with_context(|| format!("reading {source}"))?;
            Some(tokenizer.tokenize_documents(docs.texts())?)
        }
        Some(source) => {
            let text = load_text(&source, MAX_TEXT_BYTES).await.with_context(|| format!("reading {source}"))?;
            Some(tokenizer.encode(&text)?)
        }
    };
    let vocab = tokenizer.vocab_size();
    tokio::task::spawn_blocking(move || run_blocking(args, tokens, vocab)).await.context("benchmark thread")?
}

fn run_blocking(args: Args, tokens: Option<Vec<u32>>, vocab: u32) -> anyhow::Result<Outcome> {
    let preset: Preset = args.preset.parse()?;
    anyhow::ensure!(matches!(preset, Preset::Tiny | Preset::Small), "--preset must be tiny or small");
    anyhow::ensure!(args.steps >= 1 && args.eval_every >= 1, "--steps and --eval-every must be >= 1");
    anyhow::ensure!(args.workers >= 1, "--workers must be >= 1");
    anyhow::ensure!(args.eval_sequences >= 1, "--eval-sequences must be >= 1");
    let threads =
        if args.threads == 0 { std::thread::available_parallelism().map_or(1, usize::from) } else { args.threads };
    // verify's aggregation runs on rayon's global pool; size it once (a second call in this process
    // keeps the first size, which is fine for a benchmark run).
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    trainer::set_torch_threads(threads);
    let device = trainer::parse_device(&args.device)?;

    let config = ModelConfig::preset(preset).with_vocab(vocab);
    anyhow::ensure!(
        args.seq_len >= 1 && args.seq_len <= config.max_seq_len as usize,
        "--seq-len must be 1..={}",
        config.max_seq_len
    );
    let (corpus, data) = match tokens {
        None => (
            "synthetic",
            Dataset::synthetic(MarkovSpec::default(), args.seed, args.seq_len, args.eval_sequences as u64)?,
        ),
        Some(tokens) => (args.corpus.as_str(), Dataset::text(tokens, args.seed, args.seq_len, 0.1)?),
    };
    let floor = data.loss_floor_nats().unwrap_or(0.0);
    let sequences = sequences_for_tokens(args.tokens_per_step, args.seq_len);
    anyhow::ensure!(
        sequences >= args.workers,
        "{sequences} sequences per step cannot be shared by {} workers",
        args.workers
    );
    let eval = data.batch(&data.eval_indices(args.eval_sequences), device)?;
    let micro_batch = 16;
    let step = StepConfig { micro_batch, clip_norm: Some(1.0) };

    let state = init_state(&config, args.seed)?;
    let params = state.layout().elements();
    let dense_bytes = params * 4;
    anyhow::ensure!(!args.adamw_lr.is_empty(), "--adamw-lr needs at least one rate");
    let encodings = args
        .research
        .values
        .iter()
        .map(|v| {
            ValueEncoding::from_name(v)
                .with_context(|| format!("--values must be sign, int8, bf16 or two-bit, not {v}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!encodings.is_empty(), "--values needs at least one encoding");
    let step_rule = StepRule::from_name(&args.research.step_rule)
        .with_context(|| format!("--step-rule must be sign or linear, not {}", args.research.step_rule))?;
    let layout = state.layout().clone();
    let mut dense = Vec::new();
    for (t, spec) in layout.tensors().iter().enumerate() {
        let name = spec.name.as_str();
        let hit = args.research.dense_tensors.iter().any(|d| match d.as_str() {
            "all" => true,
            "vocab" => trainer::model::is_vocab(name),
            "norms" => trainer::model::is_norm(name),
            other => other == name,
        });
        if hit {
            dense.push(t);
        }
    }
    anyhow::ensure!(
        args.research.dense_tensors.is_empty() || !dense.is_empty(),
        "--dense-tensors {:?} matches no tensor",
        args.research.dense_tensors
    );
    let peers = Peers::parse(&args.peers)?;
    let by_name = topk_by_name(&args.topk_override)?;
    let transform = Transform::from_name(&args.research.transform)
        .with_context(|| format!("--transform must be dct or identity, not {}", args.research.transform))?;
    let indices = verify::IndexCoding::from_name(&args.research.index_coding)
        .with_context(|| format!("--index-coding must be fixed or elias-fano, not {}", args.research.index_coding))?;
    let cairn_compression = |topk: u16, values: ValueEncoding| -> anyhow::Result<Compression> {
        let overrides = trainer::model::topk_overrides(&layout, topk, &by_name)?;
        Ok(Compression { overrides, transform, indices, ..Compression::uniform(args.chunk, topk, values) })
    };
    // cairn's top-k at `values` whose update size is nearest `bytes`.
    let cairn_topk = |bytes: f64, values: ValueEncoding| {
        let size = |k: u16| match cairn_compression(k, values) {
            Ok(c) if c.validate_for(&layout).is_ok() => encoded_len(&layout, &c) as f64,
            _ => f64::INFINITY,
        };
        closest_topk(size, bytes)
    };
    // Steps between two of cairn's rounds (its bytes per step are a round's divided by this).
    let cairn_every = if args.research.cairn_local { args.peers.local_steps.max(1) as f64 } else { 1.0 };
    // The compression settings compared: the flags' (one), or one per --frontier-x target, where
    // cairn's top-k is the one whose update size is nearest the target.
    let targets: Vec<Target> = if args.peers.frontier {
        anyhow::ensure!(!args.peers.frontier_x.is_empty(), "--frontier needs at least one --frontier-x");
        args.peers
            .frontier_x
            .iter()
            .map(|&x| -> anyhow::Result<Target> {
                anyhow::ensure!(x > 1.0 && x.is_finite(), "--frontier-x {x}: a compression ratio above 1 expected");
                let bytes = dense_bytes as f64 / x;
                let cairn_topk = encodings.iter().map(|&v| cairn_topk(bytes * cairn_every, v)).collect();
                Ok(Target { label: format!("@{x}x"), x, bytes, cairn_topk })
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        let bytes = encoded_len(&layout, &cairn_compression(args.topk, encodings[0])?) as f64 / cairn_every;
        let mut topks = vec![args.topk];
        topks.extend(encodings[1..].iter().map(|&v| cairn_topk(bytes * cairn_every, v)));
        vec![Target { label: String::new(), x: dense_bytes as f64 / bytes, bytes, cairn_topk: topks }]
    };

    let cairn_schedule = schedule(&args, args.lr, "--lr")?;
    let inner_lr = args.peers.inner_lr.unwrap_or(args.adamw_lr[0]);
    let adamw = |lr: f64| -> anyhow::Result<AdamWConfig> {
        Ok(AdamWConfig {
            schedule: schedule(&args, lr, "--adamw-lr")?,
            weight_decay: args.weight_decay,
            step,
            ..AdamWConfig::default()
        })
    };
    // The baselines: one per --adamw-lr and --adamw-decay-start, in that order.
    let baseline_grid = baseline_grid(&args);
    let mut runners: Vec<Runner> = Vec::new();
    for &(lr, decay_start) in &baseline_grid {
        let config_of_baseline = AdamWConfig {
            schedule: schedule_from(&args, lr, (decay_start, "--adamw-decay-start"), "--adamw-lr")?,
            ..adamw(lr)?
        };
        runners.push(Runner::new(
            format!("AdamW {}", baseline_name(&args, (lr, decay_start))),
            Role::Baseline,
            None,
            Trainee::Baseline(Baseline::new(&config, &state, config_of_baseline, device)?),
        ));
    }
    let experiment =
        Experiment { linear: args.research.linear_step, dense: dense.clone(), diagnostics: args.research.diagnostics };
    let research = args.research.linear_step || !dense.is_empty() || args.research.diagnostics;
    let h = args.peers.local_steps;
    anyhow::ensure!(h >= 1, "--local-steps must be >= 1");
    let grids = chunk_grids(&layout, args.chunk)?;
    // cairn with local steps (a run's train.local_steps): the consensus runner with --cairn-local,
    // and the cairn-local peer.
    let two_bit_scale = match args.peers.two_bit_scale.as_str() {
        "mean" => verify::encode::TwoBitScale::ClippedMean,
        "max" => verify::encode::TwoBitScale::Max,
        "lsq" => verify::encode::TwoBitScale::LeastSquares,
        other => anyhow::bail!("--two-bit-scale must be max, mean or lsq, not {other}"),
    };
    let local_swarm = |topk: u16, values: ValueEncoding| -> anyhow::Result<LocalSwarm> {
        let outer = args.peers.local_outer_lr.unwrap_or(match step_rule {
            StepRule::Sign => args.lr * h as f64,
            StepRule::Linear => 1.0,
        });
        let hyper = Hyper {
            compression: cairn_compression(topk, values)?,
            schedule: match args.peers.local_outer_schedule.as_str() {
                "shaped" => schedule(&args, outer, "--local-outer-lr")?,
                "constant" => Schedule::Constant { lr: ratio(outer, "--local-outer-lr")? },
                other => match annealed(&args, other, outer, "--local-outer-lr") {
                    Some(schedule) => schedule?,
                    None => {
                        anyhow::bail!("--local-outer-schedule must be shaped, constant or anneal:FACTOR, not {other}")
                    }
                },
            },
            weight_decay: ratio(args.weight_decay, "--weight-decay")?,
            clip: NormClip::Off,
            step: step_rule,
        };
        let swarm =
            LocalSwarm::new(&config, &state, args.workers, h, args.steps, adamw(inner_lr)?, hyper, args.decay, device)?;
        let swarm = match args.decay_end {
            Some(end) => {
                anyhow::ensure!((0.0..1.0).contains(&end), "--decay-end must be in [0, 1), got {end}");
                swarm.with_decay_schedule(anneal(&args, args.decay, end, "--decay")?)
            }
            None => swarm,
        };
        Ok(swarm.with_two_bit_scale(two_bit_scale))
    };
    for (i, target) in targets.iter().enumerate() {
        for (&values, &topk) in encodings.iter().zip(&target.cairn_topk) {
            let name = match encodings.len() {
                1 => "cairn".to_string(),
                _ => format!("cairn-{}", values.name()),
            };
            let label = format!("{name}{}", target.label);
            if args.research.cairn_local {
                let trainee = Trainee::Peer(Box::new(local_swarm(topk, values)?));
                runners.push(Runner::new(label, Role::Consensus, Some(i), trainee));
                continue;
            }
            let hyper = Hyper {
                compression: cairn_compression(topk, values)?,
                schedule: cairn_schedule,
                weight_decay: ratio(args.weight_decay, "--weight-decay")?,
                clip: NormClip::Off,
                step: step_rule,
            };
            let mut swarm = Swarm::new(
                &config,
                state.clone(),
                SwarmConfig { workers: args.workers, hyper, momentum_decay: args.decay, step },
                device,
            )?;
            swarm.set_experiment(experiment.clone());
            runners.push(Runner::new(label, Role::Consensus, Some(i), Trainee::Cairn(swarm)));
        }
        for (name, values) in [(DEMO_REF, PeerValues::F32), (DEMO_SIGN, PeerValues::Sign)] {
            if !peers.has(name) {
                continue;
            }
            let topk = topk_for_bytes(&grids, values, 1, target.bytes);
            let peer = DemoPeer::new(
                &config,
                &state,
                DemoPeerConfig {
                    workers: args.workers,
                    chunk: args.chunk,
                    topk,
                    values,
                    schedule: cairn_schedule,
                    weight_decay: args.weight_decay,
                    momentum_decay: args.decay,
                    step,
                },
                device,
            )?;
            runners.push(Runner::new(
                format!("{name}{}", target.label),
                Role::Peer,
                Some(i),
                Trainee::Peer(Box::new(peer)),
            ));
        }
        if peers.has(CAIRN_LOCAL) {
            let values = encodings[0];
            let topk = cairn_topk(target.bytes * h as f64, values);
            let peer = local_swarm(topk, values)?;
            let label = format!("{CAIRN_LOCAL}{}", target.label);
            runners.push(Runner::new(label, Role::Peer, Some(i), Trainee::Peer(Box::new(peer))));
        }
        let scale = match args.peers.sparseloco_scale.as_str() {
            "max" => TwoBitScale::Max,
            "mean" => TwoBitScale::Mean,
            "lsq" => TwoBitScale::LeastSquares,
            other => anyhow::bail!("--sparseloco-scale must be max, mean or lsq, not {other}"),
        };
        let sparse = [
            (SPARSELOCO, Transform::Identity, false),
            (SPARSELOCO_DCT, Transform::Dct, false),
            (SPARSELOCO_SHARED, Transform::Identity, true),
        ];
        for (name, transform, shared) in sparse {
            if !peers.has(name) {
                continue;
            }
            let topk = match shared {
                true => closest_topk(
                    |k| shared_payload_bytes(&grids, k, PeerValues::TwoBit) as f64 / h as f64,
                    target.bytes,
                ),
                false => topk_for_bytes(&grids, PeerValues::TwoBit, h, target.bytes),
            };
            let outer = Outer::SparseLoco {
                chunk: args.chunk,
                topk,
                ef_decay: args.peers.sparseloco_ef_decay,
                transform,
                scale,
                shared,
            };
            let loco = LocoConfig {
                workers: args.workers,
                h,
                total_steps: args.steps,
                inner: adamw(inner_lr)?,
                outer_lr: args.peers.sparseloco_outer_lr,
                momentum: args.peers.sparseloco_momentum,
                outer,
            };
            let peer = LocoPeer::new(&config, &state, loco, device)?;
            let peer = match args.peers.sparseloco_outer_schedule.as_str() {
                "constant" => peer,
                other => match annealed(&args, other, loco.outer_lr, "--sparseloco-outer-lr") {
                    Some(schedule) => peer.with_outer_schedule(schedule?),
                    None => anyhow::bail!("--sparseloco-outer-schedule must be constant or anneal:FACTOR, not {other}"),
                },
            };
            let label = format!("{name}{}", target.label);
            runners.push(Runner::new(label, Role::Peer, Some(i), Trainee::Peer(Box::new(peer))));
        }
    }
    if peers.has(DILOCO) {
        let loco = LocoConfig {
            workers: args.workers,
            h,
            total_steps: args.steps,
            inner: adamw(inner_lr)?,
            outer_lr: args.peers.diloco_outer_lr,
            momentum: args.peers.diloco_momentum,
            outer: Outer::Diloco,
        };
        let peer = LocoPeer::new(&config, &state, loco, device)?;
        runners.push(Runner::new(DILOCO.to_string(), Role::Peer, None, Trainee::Peer(Box::new(peer))));
    }

    println!(
        "bench train: {corpus} corpus, preset {preset} ({params} params), {} steps of {} sequences x {} tokens, {} workers, {threads} threads",
        args.steps, sequences, args.seq_len, args.workers
    );
    println!(
        "  baseline: AdamW lr {} warm-up {}{}{} wd {}; cairn: {} step lr {} decay {} chunk {} top-k {}{} {} values",
        args.adamw_lr.iter().map(f64::to_string).collect::<Vec<_>>().join(","),
        args.warmup,
        match (args.min_lr_factor, args.decay_start) {
            (1.0, _) => String::new(),
            (f, 0) => format!(", cosine to {f} x lr (both)"),
            (f, n) => format!(", from step {n} linear to {f} x lr (both)"),
        },
        match args.adamw_decay_start.is_empty() {
            true => String::new(),
            false => format!(
                " (AdamW's own decay from step {})",
                args.adamw_decay_start.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            ),
        },
        args.weight_decay,
        step_rule.name(),
        args.lr,
        args.decay,
        args.chunk,
        targets
            .iter()
            .map(|t| t.cairn_topk.iter().map(u16::to_string).collect::<Vec<_>>().join("/"))
            .collect::<Vec<_>>()
            .join(" "),
        cairn_compression(targets[0].cairn_topk[0], encodings[0])?
            .overrides
            .as_slice()
            .iter()
            .map(|o| format!(" ({} {})", layout.tensors()[o.tensor as usize].name, o.topk))
            .collect::<String>(),
        args.research.values.join("/")
    );
    if args.research.cairn_local {
        println!(
            "  cairn takes {h} local AdamW steps (inner lr {inner_lr}) per round, outer rate {} ({}), as train.local_steps = {h} does{}",
            args.peers.local_outer_lr.map_or("default".to_string(), |r| r.to_string()),
            args.peers.local_outer_schedule,
            args.decay_end
                .map_or(String::new(), |d| format!("; error-feedback decay to {d} from step {}", args.decay_start))
        );
    }
    if research {
        println!(
            "  research (not consensus): linear step {}, dense tensors {:?}, diagnostics {}",
            args.research.linear_step,
            dense.iter().map(|&t| layout.tensors()[t].name.as_str()).collect::<Vec<_>>(),
            args.research.diagnostics
        );
    }
    if runners.iter().any(|r| r.role == Role::Peer) {
        println!(
            "  peers (research, not consensus; bytes per worker per step, module trainer::peers): {}",
            runners
                .iter()
                .filter(|r| r.role == Role::Peer)
                .map(|r| format!("{} {:.0} B ({:.0}x)", r.label, r.bytes, dense_bytes as f64 / r.bytes))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  peers' settings: DeMo sign step and momentum as cairn's; SparseLoCo and DiLoCo H {h}, inner AdamW lr {inner_lr}, SparseLoCo outer lr {} ({}) Nesterov {} error feedback {} two-bit scale {}, DiLoCo outer lr {} Nesterov {}",
            args.peers.sparseloco_outer_lr,
            args.peers.sparseloco_outer_schedule,
            args.peers.sparseloco_momentum,
            args.peers.sparseloco_ef_decay,
            args.peers.sparseloco_scale,
            args.peers.diloco_outer_lr,
            args.peers.diloco_momentum
        );
    }
    if corpus == "synthetic" {
        println!("  loss floor {floor:.4} nats/token");
    }
    let single = !args.peers.frontier;
    // The key of a runner on the step lines and in the CSV.
    let key = |r: &Runner| match (r.role, single) {
        (Role::Consensus, true) if r.label == "cairn" => "cairn_loss".to_string(),
        _ => r.label.clone(),
    };

    // Per evaluation: the step and every runner's loss (runner order).
    let mut curve: Vec<(u64, Vec<f64>)> = Vec::new();
    let evaluate = |runners: &[Runner]| -> anyhow::Result<Vec<f64>> {
        runners
            .iter()
            .map(|r| -> anyhow::Result<f64> { Ok(eval_loss(r.trainee.model(), &eval, micro_batch)?) })
            .collect()
    };
    let baselines = baseline_grid.len();
    // The step line shows the best baseline so far, and each one's loss when there are several.
    let step_line = |done: u64, losses: &[f64], runners: &[Runner]| {
        let best = losses[..baselines].iter().copied().fold(f64::INFINITY, f64::min);
        let others: String =
            runners.iter().zip(losses).skip(baselines).map(|(r, l)| format!(" {}={l:.4}", key(r))).collect();
        let each = match baselines {
            1 => String::new(),
            _ => format!(
                " adamw_losses={}",
                losses[..baselines].iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join("/")
            ),
        };
        println!("step {done} baseline_loss={best:.4}{others}{each}");
    };
    let first = evaluate(&runners)?;
    step_line(0, &first, &runners);
    curve.push((0, first));
    for s in 0..args.steps {
        let batch = global_batch(&data, Round(s), sequences, device)?;
        for r in &mut runners {
            let t = Instant::now();
            r.trainee.method().step(Round(s), &batch).with_context(|| format!("{} at step {s}", r.label))?;
            r.seconds += t.elapsed().as_secs_f64();
        }
        let done = s + 1;
        if done % args.eval_every == 0 || done == args.steps {
            let losses = evaluate(&runners)?;
            step_line(done, &losses, &runners);
            if args.research.diagnostics {
                diagnostics(&mut runners);
            }
            let _ = std::io::stdout().flush();
            curve.push((done, losses));
        }
    }
    // The baseline reported: the learning rate with the lowest final loss.
    let (_, finals) = curve.last().context("no evaluation")?;
    let best = (0..baselines).min_by(|&i, &j| finals[i].total_cmp(&finals[j])).unwrap_or(0);
    let base_loss = finals[best];
    if baselines > 1 {
        let each: Vec<String> =
            baseline_grid.iter().zip(finals).map(|(&b, l)| format!("{}: {l:.4}", baseline_name(&args, b))).collect();
        println!(
            "  AdamW final losses: {}; the baseline is {}",
            each.join(", "),
            baseline_name(&args, baseline_grid[best])
        );
    }
    let gap = |loss: f64| 100.0 * (loss - base_loss) / base_loss;
    if let Some(path) = &args.research.csv {
        // floor_nats: the synthetic corpus's entropy floor, 0 when unknown (as on the last line).
        let others: Vec<String> = runners.iter().skip(baselines).map(key).collect();
        // single mode keeps the historical columns first: cairn_loss right after the baseline
        let mut csv = match single {
            true => format!("step,baseline_loss,{},floor_nats\n", others.join(",")),
            false => format!("step,baseline_loss,floor_nats,{}\n", others.join(",")),
        };
        for (s, losses) in &curve {
            let rest: Vec<String> = losses[baselines..].iter().map(f64::to_string).collect();
            match single {
                true => csv.push_str(&format!("{s},{},{},{floor}\n", losses[best], rest.join(","))),
                false => csv.push_str(&format!("{s},{},{floor},{}\n", losses[best], rest.join(","))),
            }
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "  final held-out loss{}:",
        if corpus == "synthetic" { format!(" (floor {floor:.4})") } else { String::new() }
    );
    println!(
        "    {:<28} {:>14} {:>10} {:>10} {:>9} {:>9}",
        "method", "bytes/step", "vs dense", "loss", "gap", "seconds"
    );
    for (r, &loss) in runners.iter().zip(finals) {
        let label = match r.role {
            Role::Baseline => format!("{}{}", r.label, if std::ptr::eq(r, &runners[best]) { " *" } else { "" }),
            Role::Consensus => format!("{} (consensus)", r.label),
            Role::Peer => format!("{} (research)", r.label),
        };
        println!(
            "    {label:<28} {:>14.0} {:>9.0}x {loss:>10.4} {:>+8.2}% {:>9.1}",
            r.bytes,
            dense_bytes as f64 / r.bytes,
            gap(loss),
            r.seconds
        );
    }
    // Per target: cairn's gap and the best peer's among those within a factor 1.25 of cairn's bytes.
    let mut headline = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let of = |role: Role| runners.iter().zip(finals).filter(move |(r, _)| r.role == role && r.target == Some(i));
        // the best consensus encoding there (the only one without several --values)
        let (cairn, cairn_loss) =
            of(Role::Consensus).min_by(|a, b| a.1.total_cmp(b.1)).context("cairn runs at every target")?;
        let near = |r: &Runner| r.bytes <= 1.25 * cairn.bytes && r.bytes >= cairn.bytes / 1.25;
        let peer = runners
            .iter()
            .zip(finals)
            .filter(|(r, _)| r.role == Role::Peer && near(r))
            .min_by(|a, b| a.1.total_cmp(b.1));
        headline.push((target, cairn, *cairn_loss, peer));
    }
    if args.peers.frontier {
        println!("  frontier (gap to the best AdamW at each compression; peers within 1.25x of cairn's bytes):");
        for (target, cairn, cairn_loss, peer) in &headline {
            println!(
                "    {:>7.0}x: {} {:+.2}% at {:.0}x; best peer {}",
                target.x,
                cairn.label,
                gap(*cairn_loss),
                dense_bytes as f64 / cairn.bytes,
                peer.map_or("none".to_string(), |(p, l)| format!(
                    "{} {:+.2}% at {:.0}x",
                    p.label,
                    gap(*l),
                    dense_bytes as f64 / p.bytes
                ))
            );
        }
        let mut line = format!(
            "bench train: corpus={corpus} steps={} workers={} baseline_loss={base_loss:.4}",
            args.steps, args.workers
        );
        for (target, cairn, cairn_loss, peer) in &headline {
            let x = target.x.round();
            line.push_str(&format!(
                " cairn_gap_{x}x_pct={:.2} cairn_{x}x_x={:.1}",
                gap(*cairn_loss),
                dense_bytes as f64 / cairn.bytes
            ));
            if let Some((_, l)) = peer {
                line.push_str(&format!(" best_peer_gap_{x}x_pct={:.2}", gap(**l)));
            }
        }
        println!("{line}");
    } else {
        let (_, cairn, cairn_loss, peer) = &headline[0];
        let bytes_per_worker = cairn.bytes as u64;
        let compression_x = dense_bytes as f64 / cairn.bytes;
        println!(
            "  upload per worker per round: {bytes_per_worker} bytes vs {dense_bytes} bytes dense fp32: {compression_x:.0}x smaller"
        );
        if encodings.len() > 1 {
            println!("  the consensus method reported is the best of the encodings: {}", cairn.label);
        }
        if let Some((p, l)) = peer {
            println!("  best peer at the same bytes (within 1.25x): {} {:+.2}%", p.label, gap(**l));
        }
        let gap_pct = gap(*cairn_loss);
        let peer_keys = peer.map_or(String::new(), |(p, l)| {
            format!(" best_peer_gap_pct={:.2} best_peer_compression_x={:.1}", gap(*l), dense_bytes as f64 / p.bytes)
        });
        println!(
            "bench train: corpus={corpus} steps={} workers={} baseline_loss={base_loss:.4} cairn_loss={cairn_loss:.4} gap_pct={gap_pct:.2} floor_nats={floor:.4} bytes_per_worker_round={bytes_per_worker} compression_x={compression_x:.1}{peer_keys}",
            args.steps, args.workers
        );
    }
    Ok(Outcome::Ok)
}

/// One compression setting compared.
struct Target {
    /// Suffix of the runners' labels ("" with one setting, "@250x" in a sweep).
    label: String,
    /// Its ratio to a dense fp32 gradient.
    x: f64,
    /// Its bytes per worker per step.
    bytes: f64,
    /// cairn's top-k there, per --values encoding.
    cairn_topk: Vec<u16>,
}

const DEMO_REF: &str = "demo-ref";
const DEMO_SIGN: &str = "demo-sign";
const SPARSELOCO: &str = "sparseloco";
const DILOCO: &str = "diloco";
const SPARSELOCO_DCT: &str = "sparseloco-dct";
const SPARSELOCO_SHARED: &str = "sparseloco-shared";
const CAIRN_LOCAL: &str = "cairn-local";

/// The `--peers` list.
struct Peers(Vec<String>);

impl Peers {
    fn parse(args: &PeerArgs) -> anyhow::Result<Peers> {
        if args.peers.len() == 1 && args.peers[0] == "none" {
            return Ok(Peers(Vec::new()));
        }
        for p in &args.peers {
            anyhow::ensure!(
                [DEMO_REF, DEMO_SIGN, SPARSELOCO, DILOCO, CAIRN_LOCAL, SPARSELOCO_DCT, SPARSELOCO_SHARED]
                    .contains(&p.as_str()),
                "--peers {p}: one of {DEMO_REF}, {DEMO_SIGN}, {SPARSELOCO}, {DILOCO}, {CAIRN_LOCAL}, {SPARSELOCO_DCT}, \
                 {SPARSELOCO_SHARED} or none expected"
            );
        }
        Ok(Peers(args.peers.clone()))
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|p| p == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Baseline,
    Consensus,
    Peer,
}

enum Trainee {
    Baseline(Baseline),
    Cairn(Swarm),
    Peer(Box<dyn Method>),
}

impl Trainee {
    fn method(&mut self) -> &mut dyn Method {
        match self {
            Trainee::Baseline(b) => b,
            Trainee::Cairn(s) => s,
            Trainee::Peer(p) => p.as_mut(),
        }
    }

    fn model(&self) -> &trainer::model::Model {
        match self {
            Trainee::Baseline(b) => b.model(),
            Trainee::Cairn(s) => s.model(),
            Trainee::Peer(p) => p.model(),
        }
    }
}

/// A method in the comparison, with its label, role and the time it took.
struct Runner {
    label: String,
    role: Role,
    /// The compression setting it belongs to (none for the baselines and DiLoCo).
    target: Option<usize>,
    bytes: f64,
    seconds: f64,
    trainee: Trainee,
}

impl Runner {
    fn new(label: String, role: Role, target: Option<usize>, mut trainee: Trainee) -> Runner {
        let bytes = trainee.method().bytes_per_step();
        Runner { label, role, target, bytes, seconds: 0.0, trainee }
    }
}

/// `--diagnostics`: the first cairn runner's step statistics and the embedding coherence of the
/// first baseline and that runner.
fn diagnostics(runners: &mut [Runner]) {
    let baseline = runners.iter().find_map(|r| match &r.trainee {
        Trainee::Baseline(b) => b.model().to_state().ok(),
        _ => None,
    });
    let Some(swarm) = runners.iter_mut().find_map(|r| match &mut r.trainee {
        Trainee::Cairn(s) => Some(s),
        _ => None,
    }) else {
        return;
    };
    let d = swarm.take_diagnostics();
    // Token ids the synthetic corpus writes (byte-level): its first `alphabet` symbols.
    let rows: Vec<usize> =
        trainer::data::SYMBOLS[..usize::from(MarkovSpec::default().alphabet)].iter().map(|&b| usize::from(b)).collect();
    let coherence = |s: Option<f64>| s.map_or("-".to_string(), |c| format!("{c:.4}"));
    println!(
        "  diag embedding coherence (mean pairwise cos of the corpus's token rows): baseline {}, cairn {}",
        coherence(baseline.as_ref().and_then(|b| embedding_coherence(b, &rows))),
        coherence(embedding_coherence(swarm.state(), &rows))
    );
    let n = d.rounds.max(1) as f64;
    println!(
        "  diag rounds={} cos_step_grad={:.4} (vocab {:.4}, rest {:.4}) cos_signgrad_grad={:.4} zero_fraction={:.6}",
        d.rounds,
        d.cos_step_grad / n,
        d.cos_step_grad_vocab / n,
        d.cos_step_grad_rest / n,
        d.cos_signgrad_grad / n,
        d.zero_fraction / n
    );
}
