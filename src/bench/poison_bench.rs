//! `cairn bench poison`: a poisoned minority against the clean run, with the aggregation alone and
//! with validators (the simulation: `trainer::poison`).
//!
//! ```text
//!   cairn bench poison [--config run.toml] [--text FILE] [--workers 8 --byzantine 2 --rounds 60]
//!   ─▶ a table: attack x defence ─▶ held-out loss, ratio to clean, hostile updates counted/failed,
//!      honest updates failed, the round the last hostile worker was excluded
//!   ─▶ last line: bench poison: worst_ratio_aggregation=.. worst_ratio_validators=.. {attack}_{defence}_ratio=..
//! ```

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use trainer::data::{Dataset, byte_tokens, read_text_file};
use trainer::poison::{Attack, Defence, PoisonOutcome, PoisonSim};
use trainer::run_spec::RunSpec;

use crate::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run.toml whose model, data, compression, step rule and validation rules the simulation
    /// uses (its roster is ignored). Default: `tiny` on the synthetic corpus, otherwise the example
    /// run's settings (docs/run.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A text file to train on instead of the config's data (byte-level tokens, 10% held out).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Workers, the last `byzantine` of them hostile.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Hostile workers.
    #[arg(long, default_value_t = 2)]
    byzantine: usize,
    /// Rounds per run.
    #[arg(long, default_value_t = 60)]
    rounds: u64,
    /// Attacks, each run against the clean run: sign-flip, scale-100, noise, stale, zero, silent
    /// (the control: the hostile workers send nothing), copy (this round's best-scoring kind of
    /// update, to push validators' medians up).
    #[arg(long, value_delimiter = ',', default_value = "sign-flip,scale-100,noise,stale,zero,silent,copy")]
    attacks: Vec<String>,
    /// Held-out sequences the final loss is measured on.
    #[arg(long, default_value_t = 64)]
    eval_sequences: usize,
    /// Defences, each run with every attack: aggregation (every update that decodes counts),
    /// validators (scored updates below the round rule's threshold fail: `min_score`, or a share
    /// of the round's median with `min_pct_of_median`; repeated failures exclude).
    #[arg(long, value_delimiter = ',', default_value = "aggregation,validators")]
    defences: Vec<String>,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The run the bench simulates without `--config`.
const DEFAULT_RUN: &str = r#"
[run]
preset = "tiny"
seed = 7
total_rounds = 0
[data]
source = "synthetic"
"#;

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    trainer::set_torch_threads(args.threads);
    let attacks: Vec<Attack> = args.attacks.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let defences: Vec<Defence> = args
        .defences
        .iter()
        .map(|d| match d.as_str() {
            "aggregation" => Ok(Defence::Aggregation),
            "validators" => Ok(Defence::Validators),
            other => Err(anyhow::anyhow!("unknown defence {other:?}: aggregation or validators")),
        })
        .collect::<Result<_, _>>()?;
    let text = match &args.config {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => format!("{DEFAULT_RUN}{}", super::SIM_ROSTER),
    };
    let parts = RunSpec::parse(&text)?.genesis_parts(trainer::model::BYTE_VOCAB)?;
    let (data, corpus) = match &args.text {
        Some(path) => {
            let bytes = read_text_file(path, 64 << 20)?;
            let name = path.file_stem().map_or("text".into(), |s| s.to_string_lossy().into_owned());
            (Dataset::text(byte_tokens(&bytes), parts.train.seed, parts.train.seq_len, 0.1)?, name)
        }
        None => (parts.train.dataset().await?, parts.train.data_source.clone()),
    };
    let sim = PoisonSim::new(
        parts.config,
        parts.train,
        data,
        args.workers,
        args.byzantine,
        args.rounds,
        args.eval_sequences,
    )?;
    let (config, train) = (sim.config(), sim.train());
    println!(
        "bench poison: corpus {corpus}, preset {}, {} workers ({} byzantine), {} rounds, values {:?}, step rule {:?}, \
         local steps {}, clip {:?}, min_score {}, min_pct_of_median {}, max_failures {}",
        train.preset,
        args.workers,
        args.byzantine,
        args.rounds,
        config.hyper.compression.values,
        config.hyper.step,
        train.local_steps,
        config.hyper.clip,
        config.exclusion.min_score,
        config.exclusion.min_pct_of_median,
        config.exclusion.max_failures,
    );
    println!(
        "| attack | defence | held-out loss | ratio to clean | hostile counted | hostile failed | honest failed | honest excluded | all hostile excluded in round | honest score, specificity, % specific | hostile score, specificity, % specific | \
         honest agreement mean, min, max | hostile agreement mean, min, max | copies failed: honest, hostile |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut keys = Vec::new();
    let mut worst = Vec::new();
    for defence in defences {
        let started = Instant::now();
        let clean = sim.run(None, defence)?;
        anyhow::ensure!(clean.loss.is_finite(), "the clean run's held-out loss is not finite: {}", clean.loss);
        row("clean", defence, &clean, clean.loss);
        keys.push(format!("clean_loss_{}={:.4}", defence.name(), clean.loss));
        let mut worst_here = 1.0f64;
        let mut honest_failed = clean.honest_failed;
        let mut honest_excluded = clean.honest_excluded;
        for &attack in &attacks {
            let o = sim.run(Some(attack), defence)?;
            row(attack.name(), defence, &o, clean.loss);
            honest_failed += o.honest_failed;
            honest_excluded += o.honest_excluded;
            // A diverged run (non-finite loss) is the worst outcome, not a missing one.
            let ratio = if o.loss.is_finite() { o.loss / clean.loss } else { f64::INFINITY };
            worst_here = worst_here.max(ratio);
            keys.push(format!("{}_{}_ratio={ratio:.4}", attack.name(), defence.name()));
        }
        worst.push(format!("worst_ratio_{}={worst_here:.4}", defence.name()));
        if defence == Defence::Validators {
            worst
                .push(format!("honest_failed_validators={honest_failed} honest_excluded_validators={honest_excluded}"));
        }
        eprintln!("bench poison: the {} runs took {:.1} s", defence.name(), started.elapsed().as_secs_f64());
    }
    println!(
        "bench poison: rounds={} workers={} byzantine={} {} {}",
        args.rounds,
        args.workers,
        args.byzantine,
        worst.join(" "),
        keys.join(" ")
    );
    Ok(Outcome::Ok)
}

fn row(attack: &str, defence: Defence, o: &PoisonOutcome, clean: f64) {
    let excluded = o.excluded_by.map_or("-".to_string(), |r| r.to_string());
    let stats = |s: &trainer::poison::ScoreStats| {
        s.means()
            .map_or("-".to_string(), |(score, specificity, pct)| format!("{score:.1}, {specificity:.1}, {pct:.0}%"))
    };
    let agreement = |a: &trainer::poison::AgreementStats| {
        a.summary().map_or("-".to_string(), |(mean, min, max)| format!("{mean:.3}, {min:.3}, {max:.3}"))
    };
    println!(
        "| {attack} | {} | {:.4} | {:.4} | {} | {} | {} | {} | {excluded} | {} | {} | {} | {} | {}, {} |",
        defence.name(),
        o.loss,
        o.loss / clean,
        o.byzantine_counted,
        o.byzantine_failed,
        o.honest_failed,
        o.honest_excluded,
        stats(&o.honest_scores),
        stats(&o.hostile_scores),
        agreement(&o.honest_agreement),
        agreement(&o.hostile_agreement),
        o.honest_copies,
        o.hostile_copies
    );
}
