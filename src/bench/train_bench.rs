//! `cairn bench train`: cairn's DeMo rounds against full-batch AdamW, on the same tokens, in one run.
//!
//! Every step draws one global batch. The baseline takes an AdamW step on all of it (what all-reduce
//! data parallelism computes); the swarm splits it between `--workers` simulated workers, each of which
//! computes its gradients, updates its DeMo momentum and encodes an update (chunk, top-k, 1-bit signs),
//! and `verify::apply` aggregates the decoded updates into the shared state that the next round
//! starts from (`trainer::simulate`). Both are evaluated on the same held-out sequences.
//!
//! With several `--adamw-lr`, one baseline trains per rate on the same batches and the rate with
//! the lowest final loss is the one reported (a tuned baseline).
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
use trainer::simulate::{Baseline, Experiment, Swarm, SwarmConfig, embedding_coherence, global_batch};
use trainer::step::{AdamWConfig, StepConfig, eval_loss};
use verify::{Compression, Hyper, NormClip, Ratio, Round, Schedule, ValueEncoding};

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
    /// DeMo momentum decay.
    #[arg(long, default_value_t = trainer::demo::DEFAULT_MOMENTUM_DECAY)]
    decay: f64,
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
    #[arg(long, default_value = "sign")]
    values: String,
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

/// The schedule of an optimiser peaking at `peak`: the same warm-up and decay for every optimiser in
/// the run, so that a decay helps or hurts all of them alike.
fn schedule(args: &Args, peak: f64, what: &str) -> anyhow::Result<Schedule> {
    anyhow::ensure!((0.0..=1.0).contains(&args.min_lr_factor), "--min-lr-factor must be in [0, 1]");
    let min = ratio(peak * args.min_lr_factor, "--min-lr-factor x peak")?;
    let (peak, warmup_rounds, total_rounds) = (ratio(peak, what)?, args.warmup, args.steps);
    let schedule = match args.decay_start {
        // at --min-lr-factor 1, min = peak: linear warm-up, then constant
        0 => Schedule::WarmupCosine { peak, min, warmup_rounds, total_rounds },
        decay_start => Schedule::WarmupStableDecay { peak, min, warmup_rounds, decay_start, total_rounds },
    };
    schedule.validate().with_context(|| {
        format!(
            "--decay-start {} must lie between --warmup {} and --steps {}",
            args.decay_start, args.warmup, args.steps
        )
    })?;
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
    anyhow::ensure!(!args.adamw_lr.is_empty(), "--adamw-lr needs at least one rate");
    let mut baselines = args
        .adamw_lr
        .iter()
        .map(|&lr| -> anyhow::Result<Baseline> {
            let adamw = AdamWConfig {
                schedule: schedule(&args, lr, "--adamw-lr")?,
                weight_decay: args.weight_decay,
                step,
                ..AdamWConfig::default()
            };
            Ok(Baseline::new(&config, &state, adamw, device)?)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let values = ValueEncoding::from_name(&args.research.values)
        .with_context(|| format!("--values must be sign, int8 or bf16, not {}", args.research.values))?;
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
    let schedule = schedule(&args, args.lr, "--lr")?;
    let overrides = trainer::model::topk_overrides(&layout, args.topk, &topk_by_name(&args.topk_override)?)?;
    let hyper = Hyper {
        compression: Compression { overrides, ..Compression::uniform(args.chunk, args.topk, values) },
        schedule,
        weight_decay: ratio(args.weight_decay, "--weight-decay")?,
        clip: NormClip::Off,
    };
    let mut swarm = Swarm::new(
        &config,
        state,
        SwarmConfig { workers: args.workers, hyper, momentum_decay: args.decay, step },
        device,
    )?;
    let experiment =
        Experiment { linear: args.research.linear_step, dense: dense.clone(), diagnostics: args.research.diagnostics };
    let research = args.research.linear_step || !dense.is_empty() || args.research.diagnostics;
    swarm.set_experiment(experiment);
    let update_bytes = swarm.update_bytes();
    let dense_bytes = params * 4;
    let compression_x = dense_bytes as f64 / update_bytes as f64;

    println!(
        "bench train: {corpus} corpus, preset {preset} ({params} params), {} steps of {} sequences x {} tokens, {} workers, {threads} threads",
        args.steps, sequences, args.seq_len, args.workers
    );
    println!(
        "  baseline: AdamW lr {} warm-up {}{} wd {}; cairn: sign step lr {} decay {} chunk {} top-k {}{} {} values",
        args.adamw_lr.iter().map(f64::to_string).collect::<Vec<_>>().join(","),
        args.warmup,
        match (args.min_lr_factor, args.decay_start) {
            (1.0, _) => String::new(),
            (f, 0) => format!(", cosine to {f} x lr (both)"),
            (f, n) => format!(", from step {n} linear to {f} x lr (both)"),
        },
        args.weight_decay,
        args.lr,
        args.decay,
        args.chunk,
        args.topk,
        hyper
            .compression
            .overrides
            .as_slice()
            .iter()
            .map(|o| format!(" ({} {})", layout.tensors()[o.tensor as usize].name, o.topk))
            .collect::<String>(),
        args.research.values
    );
    if research {
        println!(
            "  research (not consensus): linear step {}, dense tensors {:?}, diagnostics {}",
            args.research.linear_step,
            dense.iter().map(|&t| layout.tensors()[t].name.as_str()).collect::<Vec<_>>(),
            args.research.diagnostics
        );
    }
    if corpus == "synthetic" {
        println!("  loss floor {floor:.4} nats/token");
    }

    // Per evaluation: the step, every baseline's loss (in --adamw-lr order) and cairn's.
    let mut curve: Vec<(u64, Vec<f64>, f64)> = Vec::new();
    let evaluate = |baselines: &[Baseline], swarm: &Swarm| -> anyhow::Result<(Vec<f64>, f64)> {
        let b = baselines
            .iter()
            .map(|b| -> anyhow::Result<f64> { Ok(eval_loss(b.model(), &eval, micro_batch)?) })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((b, eval_loss(swarm.model(), &eval, micro_batch)?))
    };
    // The step line shows the best baseline so far, and each one's loss when there are several.
    let step_line = |done: u64, b: &[f64], c: f64| {
        let best = b.iter().copied().fold(f64::INFINITY, f64::min);
        let each = match b.len() {
            1 => String::new(),
            _ => format!(" adamw_losses={}", b.iter().map(|v| format!("{v:.4}")).collect::<Vec<_>>().join("/")),
        };
        println!("step {done} baseline_loss={best:.4} cairn_loss={c:.4}{each}");
    };
    let (b0, c0) = evaluate(&baselines, &swarm)?;
    step_line(0, &b0, c0);
    curve.push((0, b0, c0));
    let (mut t_base, mut t_swarm) = (0.0f64, 0.0f64);
    let mut bytes_per_worker = update_bytes;
    for s in 0..args.steps {
        let batch = global_batch(&data, Round(s), sequences, device)?;
        let t = Instant::now();
        for baseline in &mut baselines {
            baseline.step(&batch)?;
        }
        t_base += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let stats = swarm.round(Round(s), &batch)?;
        t_swarm += t.elapsed().as_secs_f64();
        bytes_per_worker = stats.bytes_per_worker;
        let done = s + 1;
        if done % args.eval_every == 0 || done == args.steps {
            let (b, c) = evaluate(&baselines, &swarm)?;
            step_line(done, &b, c);
            if args.research.diagnostics {
                let d = swarm.take_diagnostics();
                // Token ids the synthetic corpus writes (byte-level): its first `alphabet` symbols.
                let rows: Vec<usize> = trainer::data::SYMBOLS[..usize::from(MarkovSpec::default().alphabet)]
                    .iter()
                    .map(|&b| usize::from(b))
                    .collect();
                let coherence = |s: Option<f64>| s.map_or("-".to_string(), |c| format!("{c:.4}"));
                println!(
                    "  diag embedding coherence (mean pairwise cos of the corpus's token rows): baseline {}, cairn {}",
                    coherence(embedding_coherence(&baselines[0].model().to_state()?, &rows)),
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
            let _ = std::io::stdout().flush();
            curve.push((done, b, c));
        }
    }
    anyhow::ensure!(
        bytes_per_worker == update_bytes,
        "update is {bytes_per_worker} bytes, encoded_len says {update_bytes}"
    );
    // The baseline reported: the learning rate with the lowest final loss.
    let (_, finals, cairn_loss) = curve.last().context("no evaluation")?;
    let best = (0..finals.len()).min_by(|&i, &j| finals[i].total_cmp(&finals[j])).unwrap_or(0);
    let (base_loss, cairn_loss) = (finals[best], *cairn_loss);
    if args.adamw_lr.len() > 1 {
        let each: Vec<String> = args.adamw_lr.iter().zip(finals).map(|(lr, l)| format!("lr {lr}: {l:.4}")).collect();
        println!("  AdamW final losses: {}; the baseline is lr {}", each.join(", "), args.adamw_lr[best]);
    }
    if let Some(path) = &args.research.csv {
        // floor_nats: the synthetic corpus's entropy floor, 0 when unknown (as on the last line).
        let mut csv = String::from("step,baseline_loss,cairn_loss,floor_nats\n");
        for (s, b, c) in &curve {
            csv.push_str(&format!("{s},{},{c},{floor}\n", b[best]));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
    }
    let gap_pct = 100.0 * (cairn_loss - base_loss) / base_loss;
    println!(
        "  final held-out loss: baseline {base_loss:.4}, cairn {cairn_loss:.4} ({gap_pct:+.2}%){}",
        if corpus == "synthetic" { format!("; floor {floor:.4}") } else { String::new() }
    );
    println!(
        "  upload per worker per round: {bytes_per_worker} bytes vs {dense_bytes} bytes dense fp32: {compression_x:.0}x smaller"
    );
    println!("  time: baseline {t_base:.1} s, cairn {t_swarm:.1} s ({} workers in sequence)", args.workers);
    println!(
        "bench train: corpus={corpus} steps={} workers={} baseline_loss={base_loss:.4} cairn_loss={cairn_loss:.4} gap_pct={gap_pct:.2} floor_nats={floor:.4} bytes_per_worker_round={bytes_per_worker} compression_x={compression_x:.1}",
        args.steps, args.workers
    );
    Ok(Outcome::Ok)
}
