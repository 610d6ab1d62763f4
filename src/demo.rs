//! `cairn demo`: what `make demo` runs. A whole federated run on one machine, with every
//! participant a separate OS process talking only through the store:
//!
//! ```text
//!   store check ─▶ keys for alpha (admin, 2 workers, validator) and beta (2 workers, validator)
//!     ─▶ run.toml (organisation quorum 2: both must vote, attest, fail a contribution)
//!     ─▶ cairn genesis ─▶ 4 × cairn worker + 2 × cairn validate (child processes, logs/)
//!     ─▶ live progress from the ledger ─▶ cairn audit ─▶ summary (loss vs floor, bytes, audit)
//! ```
//!
//! Each invocation starts a new run in its own folder under the demo store (`run-1`, `run-2`, ...),
//! so earlier runs stay auditable.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::Body;
use storage::admin::{self, InitOptions};
use tokio::process::{Child, Command};
use trainer::follow::Follower;
use trainer::model::{Model, init_state};
use trainer::step::eval_loss;

use crate::Outcome;
use crate::store_cmd::{Protection, absolute_url, check};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its runs (a local folder by default; s3://bucket/prefix works too).
    #[arg(long, default_value = "file://cairn-demo")]
    store: String,
    /// Rounds to train.
    #[arg(long, default_value_t = 200)]
    rounds: u64,
    /// Model preset (tiny, 0.9M parameters, trains in minutes on a CPU; small is 10.8M).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Training text (a path, made a file:// URL, or a store URL) instead of the synthetic corpus.
    #[arg(long)]
    data: Option<String>,
    /// Tokens per worker per round.
    #[arg(long, default_value_t = 512)]
    tokens_per_round: u64,
    /// Local AdamW steps per round (train.local_steps; 1: one gradient per round). With more, the
    /// round's sign step is that many times the one-step rate and the local AdamW peaks at 2e-3.
    #[arg(long, default_value_t = 1)]
    local_steps: u32,
    /// The aggregation's step rule: sign (DeMo's, 1-bit values), or linear (the mean of the workers'
    /// pseudo-gradients at rate 1, two-bit values, top-k 4 x local steps; needs --local-steps >= 2).
    #[arg(long, default_value = "sign")]
    step_rule: String,
    /// What each chunk's top-k is taken of (demo.transform): dct (its DCT coefficients) or identity
    /// (its entries, SparseLoCo's choice; better with --step-rule linear).
    #[arg(long, default_value = "dct")]
    transform: String,
    /// How each chunk's kept indices are written (demo.index_coding): elias-fano (about 2 +
    /// log2(coefficients / top-k) bits each) or fixed (12 bits each: larger updates at the same top-k).
    #[arg(long, default_value = "elias-fano")]
    index_coding: String,
    /// Local folder for keys, run.toml and logs (default: ./cairn-demo-local).
    #[arg(long, default_value = "cairn-demo-local")]
    work_dir: PathBuf,
    /// Where the workers train: cpu, cuda or cuda:N (the four share it; the validator stays on the
    /// CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The workers' arithmetic: f32, or bf16 (for GPUs).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Where the live dashboard of the run listens while the demo trains (port 0: any free port;
    /// the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    dashboard: std::net::SocketAddr,
    /// Do not start the dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// Overlapping rounds (`[rounds] overlap`): each worker trains the next round while the
    /// current one closes; the summary shows the workers' compute idle either way.
    #[arg(long)]
    overlap: bool,
    /// Each organisation runs a gatherer (`cairn gather`) that appends its workers' contributions
    /// to a round as one ledger slot; the summary shows the slots either way.
    #[arg(long)]
    gather: bool,
    /// Workers follow the rounds through the steps the validators publish (`--steps follow`;
    /// docs/RUN.md, "Following steps"): one step a round instead of every counted update, and the
    /// validators attest.
    #[arg(long)]
    follow_steps: bool,
    /// The longest pause between a worker's or validator's ledger polls while the ledger is quiet
    /// (`--max-poll-ms`; 250, the poll interval: no backoff).
    #[arg(long, default_value_t = 2000)]
    max_poll_ms: u64,
}

/// The demo's members: (name, organisation, role).
const MEMBERS: [(&str, &str, &str); 7] = [
    ("admin", "alpha", "admin"),
    ("alpha-worker-1", "alpha", "worker"),
    ("alpha-worker-2", "alpha", "worker"),
    ("alpha-validator", "alpha", "validator"),
    ("beta-worker-1", "beta", "worker"),
    ("beta-worker-2", "beta", "worker"),
    ("beta-validator", "beta", "validator"),
];

/// Inputs per sequence in the demo's run.toml.
const DEMO_SEQ_LEN: usize = 64;

/// A participant process may take at most this long in all.
const DEMO_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub async fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    // Refuse a device or precision the workers would refuse, before anything is written.
    trainer::parse_device(&args.device)?;
    args.precision.parse::<trainer::model::Precision>()?;
    match args.step_rule.as_str() {
        "sign" => {}
        "linear" => anyhow::ensure!(
            args.local_steps >= 2,
            "--step-rule linear takes the mean of local pseudo-gradients: it needs --local-steps 2 or more"
        ),
        other => anyhow::bail!("--step-rule must be sign or linear, not {other}"),
    }
    anyhow::ensure!(
        verify::Transform::from_name(&args.transform).is_some(),
        "--transform must be dct or identity, not {}",
        args.transform
    );
    anyhow::ensure!(
        verify::IndexCoding::from_name(&args.index_coding).is_some(),
        "--index-coding must be fixed or elias-fano, not {}",
        args.index_coding
    );
    let base = absolute_url(&args.store)?;
    admin::init(&base, InitOptions::default(), &Default::default())
        .await
        .with_context(|| format!("creating {base}"))?;
    println!("cairn demo: store {base}");
    println!("\n[1/5] storage conformance");
    if let Outcome::Failed = check(&base, Protection::Skip, None).await? {
        return Ok(Outcome::Failed);
    }
    let (name, url) = next_run(&base).await?;
    let dir = args.work_dir.join(&name);
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "\n[2/5] members: 2 organisations, each with 2 workers and a validator; an admin (keys in {})",
        dir.display()
    );
    let mut keys = Vec::new();
    for (member, org, role) in MEMBERS {
        let path = dir.join(format!("{member}.key"));
        let key = ledger::write_key_file(&path).with_context(|| format!("writing {}", path.display()))?;
        println!("  {member:<15} {org:<6} {role:<9} {}", key.public());
        keys.push((member, org, role, path, key.public()));
    }
    let spec = demo_spec(&args, &keys);
    let spec_path = dir.join("run.toml");
    std::fs::write(&spec_path, &spec).with_context(|| format!("writing {}", spec_path.display()))?;
    println!("\n[3/5] genesis ({} preset, {} rounds, run.toml in {})", args.preset, args.rounds, dir.display());
    admin::init(&url, InitOptions::default(), &Default::default()).await.with_context(|| format!("creating {url}"))?;
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    let status = Command::new(&exe)
        .args(["genesis", "--store", &url, "--config"])
        .arg(&spec_path)
        .arg("--key")
        .arg(&keys[0].3)
        .status()
        .await
        .context("running cairn genesis")?;
    anyhow::ensure!(status.success(), "cairn genesis failed ({status})");

    let dashboard = if args.no_dashboard { None } else { Some(start_dashboard(&exe, &url, args.dashboard).await?) };
    println!(
        "\n[4/5] training: 4 workers{} and 2 validators as separate processes (logs in {})",
        if args.gather { ", 2 gatherers" } else { "" },
        dir.join("logs").display()
    );
    let mut children = Vec::new();
    let mut gathering = Vec::new();
    let max_poll = args.max_poll_ms.to_string();
    for (member, org, role, path, _) in &keys[1..] {
        let (command, mut extra) = match *role {
            "validator" => ("validate", vec!["--threads", "1"]),
            _ => (
                "worker",
                vec!["--threads", "1", "--device", args.device.as_str(), "--precision", args.precision.as_str()],
            ),
        };
        extra.extend(["--max-poll-ms", max_poll.as_str()]);
        if args.follow_steps && *role == "worker" {
            extra.extend(["--steps", "follow"]);
        }
        if args.gather && *role == "worker" {
            extra.extend(["--gatherer-wait-ms", "10000"]);
            if !gathering.contains(org) {
                // The organisation's gatherer, found from its first worker's key (it signs nothing).
                gathering.push(*org);
                let log = dir.join("logs").join(format!("{org}-gatherer.log"));
                children.push(("gatherer", spawn(&exe, "gather", &["--window-ms", "2000"], &url, path, &log)?));
            }
        }
        let log = dir.join("logs").join(format!("{member}.log"));
        children.push((*member, spawn(&exe, command, &extra, &url, path, &log)?));
    }
    let store = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    let outcome = watch(&store, &mut children, args.rounds).await;
    if outcome.is_err() {
        for (_, child) in &mut children {
            let _ = child.kill().await;
        }
    }
    let watched = outcome?;
    let bytes_per_worker = watched.update_bytes;

    println!("\n[5/5] audit: cairn audit --store {url}");
    let audit = Command::new(&exe).args(["audit", "--store", &url]).stderr(Stdio::inherit()).output().await?;
    let audit_out = String::from_utf8_lossy(&audit.stdout);
    print!("{audit_out}");
    let audit_line = audit_out.lines().last().unwrap_or("audit: FAIL no output").to_string();

    let follower = Follower::join(store.clone()).await.context("replaying the run for the summary")?;
    let info = follower.info().clone();
    let data = info.train.dataset().await?;
    let eval = data.batch(&data.eval_indices(64), trainer::Device::Cpu)?;
    let initial = Model::from_state(&info.model, &init_state(&info.model, info.train.seed)?, trainer::Device::Cpu)?;
    let before = eval_loss(&initial, &eval, 8)?;
    let after = eval_loss(&Model::from_state(&info.model, follower.state(), trainer::Device::Cpu)?, &eval, 8)?;
    let dense = info.config.layout.elements() * 4;
    println!("\nsummary ({:.0} s)", started.elapsed().as_secs_f64());
    println!("  rounds          {} closed, final state {}", follower.round().0, follower.state_hash());
    match (data.loss_floor_nats(), data.unigram_plateau_nats()) {
        (Some(floor), Some(plateau)) => {
            println!("  held-out loss   {before:.4} -> {after:.4} nats");
            println!("                  unigram plateau {plateau:.4} (symbol frequencies alone: no context learned)");
            println!("                  floor           {floor:.4} (the corpus's entropy rate: everything learned)");
        }
        _ => println!("  held-out loss   {before:.4} -> {after:.4} nats"),
    }
    println!(
        "  upload          {bytes_per_worker} bytes per worker per round; a dense fp32 update is {dense} bytes ({:.0}x smaller)",
        dense as f64 / bytes_per_worker.max(1) as f64
    );
    // Compute idle: from the end of a worker's training to the start of its next (`idle_ms`).
    let (idle, train) = (mean_ms(&watched.idle_ms), mean_ms(&watched.train_ms));
    println!(
        "  workers         {train:.0} ms training and {idle:.0} ms idle between trainings per round (mean; compute busy {:.0}%{})",
        100.0 * train / (train + idle).max(1e-9),
        if args.overlap { ", rounds overlap" } else { "" }
    );
    println!(
        "  ledger          {} contributions in {} slots ({:.1} a slot{})",
        watched.contributions,
        watched.contribution_slots,
        watched.contributions as f64 / watched.contribution_slots.max(1) as f64,
        if args.gather { ", gathered by organisation" } else { "" }
    );
    let downloads: Vec<(u64, u64)> = keys[1..]
        .iter()
        .filter(|k| k.2 == "worker")
        .filter_map(|k| worker_download(&dir.join("logs").join(format!("{}.log", k.0))))
        .collect();
    if !downloads.is_empty() {
        let n = downloads.len() as f64;
        let mean = |f: fn(&(u64, u64)) -> u64| downloads.iter().map(f).sum::<u64>() as f64 / n;
        println!(
            "  download        {:.1} MB per worker in all (mean of {}; {:.0} rounds through published steps{})",
            mean(|d| d.0) / 1e6,
            downloads.len(),
            mean(|d| d.1),
            if args.follow_steps { "" } else { ", --follow-steps to use them" }
        );
    }
    println!("  {audit_line}");
    println!("\nTry: cairn status --store {url}   |   cairn audit --store {url} --json");
    if let Some(mut dashboard) = dashboard {
        let _ = dashboard.kill().await;
        println!("     cairn dashboard --store {url}   (the page the demo served while it trained)");
    }
    Ok(if audit.status.success() { Outcome::Ok } else { Outcome::Failed })
}

/// A worker's downloaded bytes and rounds taken through steps, from its log's last line
/// (`worker: ... downloaded_bytes=N ...`); `None` when it has none.
fn worker_download(log: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(log).ok()?;
    let last = text.lines().rev().find(|l| l.starts_with("worker: "))?;
    let value =
        |key: &str| last.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok());
    Some((value("downloaded_bytes")?, value("rounds_through_steps").unwrap_or(0)))
}

/// The first `run-N` under `base` without a ledger.
async fn next_run(base: &str) -> anyhow::Result<(String, String)> {
    for n in 1..10_000 {
        let name = format!("run-{n}");
        let url = format!("{}/{name}", base.trim_end_matches('/'));
        let store = storage::open(&url).await;
        let taken = match store {
            Ok(s) => ledger::genesis_run_id(&s).await.is_ok(),
            Err(_) => false,
        };
        if !taken {
            return Ok((name, url));
        }
    }
    anyhow::bail!("{base} holds 10,000 demo runs; clear it (make clean-demo)")
}

fn demo_spec(args: &DemoArgs, keys: &[(&str, &str, &str, PathBuf, ledger::PublicKey)]) -> String {
    // Every demo member runs on this machine: a local path becomes the file:// URL the run names.
    let source = match &args.data {
        None => "synthetic".to_string(),
        Some(d) if d.contains("://") => d.clone(),
        Some(path) => {
            format!("file://{}", std::path::absolute(path).unwrap_or_else(|_| std::path::PathBuf::from(path)).display())
        }
    };
    // The linear rule sends the local pseudo-gradient's top 4 x H coefficients per chunk at two bits
    // every H steps (about the sign demo's bytes per local step), takes its mean at rate 1 and keeps
    // SparseLoCo's error-feedback decay; the sign rule steps 0.002 per local step.
    let (demo, lr, momentum) = match args.step_rule.as_str() {
        "linear" => (
            format!(
                "topk = {}\nvalues = \"two-bit\"\nstep_rule = \"linear\"\n",
                (4 * args.local_steps).min(u32::from(verify::wire::MAX_TOPK))
            ),
            1.0,
            0.95,
        ),
        _ => (
            "topk = 4\nvalues = \"sign\"\n".to_string(),
            0.002 * f64::from(args.local_steps.max(1)),
            trainer::demo::DEFAULT_MOMENTUM_DECAY,
        ),
    };
    let mut s = format!(
        "# Written by `cairn demo`; see docs/RUN.md for every field.\n\
         [run]\nname = \"cairn demo\"\npreset = \"{preset}\"\nseed = 1\ntotal_rounds = {rounds}\nsnapshot_every = 50\n\n\
         [data]\nsource = \"{source}\"\nseq_len = {DEMO_SEQ_LEN}\neval_fraction = 0.05\neval_sequences = 256\n\n\
         [train]\ntokens_per_round = {tokens}\nmicro_batch = 8\nclip_norm = 1.0\nmomentum_decay = {momentum}\n{local}\n\
         [demo]\nchunk = 64\ntransform = \"{transform}\"\nindex_coding = \"{index_coding}\"\n{demo}\n\
         [optimizer]\nlr = {lr}\nwarmup_rounds = 2\nweight_decay = 0.0\nclip = \"median\"\n\n\
         [rounds]\nmin_contributions = 2\nmax_contributions = 16\ndeadline_secs = 120\nverdict_wait_secs = 60\noverlap = {overlap}\n\n\
         [validation]\nmin_score = -20\nmax_failures = 3\nassigned_sequences = {assigned}\neval_sequences = 4\n\n\
         [roster]\nquorum = 1\norg_quorum = 2\n",
        preset = args.preset,
        rounds = args.rounds,
        overlap = args.overlap,
        transform = args.transform,
        index_coding = args.index_coding,
        tokens = args.tokens_per_round,
        // The validator re-evaluates every sequence the worker trained on: with half of them, the
        // scores of honest updates were noisy enough to fail some (docs/BENCHMARKS.md).
        assigned = trainer::data::sequences_for_tokens(args.tokens_per_round, DEMO_SEQ_LEN),
        local = match args.local_steps {
            0 | 1 => String::new(),
            h => format!("local_steps = {h}\ninner_lr = 0.002\n"),
        },
    );
    for (_, org, role, _, key) in keys {
        s.push_str(&format!("\n[[roster.member]]\nkey = \"{key}\"\norganisation = \"{org}\"\nrole = \"{role}\"\n"));
    }
    s
}

fn spawn(exe: &Path, command: &str, extra: &[&str], url: &str, key: &Path, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(exe)
        .args([command, "--store", url, "--key"])
        .arg(key)
        .args(extra)
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting cairn {command}"))
}

/// Starts `cairn dashboard` on the run and prints its address (its first line); it stops with
/// the demo.
async fn start_dashboard(exe: &Path, url: &str, listen: std::net::SocketAddr) -> anyhow::Result<Child> {
    use tokio::io::AsyncBufReadExt;
    let mut child = Command::new(exe)
        .args(["dashboard", "--store", url, "--listen", &listen.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting cairn dashboard")?;
    let stdout = child.stdout.take().context("reading the dashboard's address")?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout).read_line(&mut line).await.context("reading the dashboard's address")?;
    anyhow::ensure!(line.starts_with("dashboard: "), "cairn dashboard did not start (is {listen} free?)");
    println!("  {}   <- open it to watch the run live", line.trim_end());
    Ok(child)
}

/// What [`watch`] saw in the counted rounds' contributions.
struct Watched {
    update_bytes: u64,
    /// The workers' `idle_ms` and `train_ms` metrics.
    idle_ms: Vec<i64>,
    train_ms: Vec<i64>,
    /// Contributions counted, and the ledger slots they were in.
    contributions: usize,
    contribution_slots: usize,
}

fn mean_ms(values: &[i64]) -> f64 {
    values.iter().map(|&v| v as f64).sum::<f64>() / values.len().max(1) as f64
}

/// Follows the ledger and prints each closed round until every child exits; fails if one fails.
async fn watch(store: &storage::Store, children: &mut [(&str, Child)], rounds: u64) -> anyhow::Result<Watched> {
    let run_id = ledger::genesis_run_id(store).await?;
    let mut reader = ledger::Reader::replay(store.clone(), run_id).await?;
    let started = Instant::now();
    let mut shown = 0u64;
    let mut update_bytes = 0u64;
    let (mut idle_ms, mut train_ms) = (Vec::new(), Vec::new());
    let (mut contributions, mut contribution_slots) = (0, 0);
    let mut running = children.len();
    while running > 0 {
        anyhow::ensure!(started.elapsed() < DEMO_TIMEOUT, "the demo ran past {} minutes", DEMO_TIMEOUT.as_secs() / 60);
        tokio::time::sleep(Duration::from_millis(500)).await;
        reader.poll().await?;
        while reader.state().rounds().final_result(ledger::Round(shown)).is_some() {
            let Some(close) = reader.state().rounds().close(ledger::Round(shown)).map(|c| c.pos) else { break };
            let mut losses = Vec::new();
            let mut verdicts = 0;
            let mut slots = std::collections::BTreeSet::new();
            for e in reader.by_round(ledger::Round(shown)).filter(|e| e.pos < close) {
                match e.entry.as_ref().map(|x| &x.body) {
                    Some(Body::Contribution(c)) => {
                        slots.insert(e.pos.seq);
                        update_bytes = c.blob_size;
                        let metric = |name: &str| c.metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
                        idle_ms.extend(metric("idle_ms"));
                        train_ms.extend(metric("train_ms"));
                        losses.extend(
                            c.metrics.iter().filter(|(k, _)| k == "loss_milli").map(|(_, v)| *v as f64 / 1000.0),
                        );
                    }
                    Some(Body::Verdict(_)) => verdicts += 1,
                    _ => {}
                }
            }
            let mean = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
            println!(
                "  round {:>3}/{rounds}: {} contributions in {} slots, {verdicts} verdicts, mean train loss {mean:.4}, {update_bytes} bytes each, {:>4.0} s",
                shown + 1,
                losses.len(),
                slots.len(),
                started.elapsed().as_secs_f64()
            );
            contributions += losses.len();
            contribution_slots += slots.len();
            shown += 1;
        }
        running = 0;
        for (name, child) in children.iter_mut() {
            match child.try_wait()? {
                None => running += 1,
                Some(status) if status.success() => {}
                Some(status) => anyhow::bail!("{name} exited with {status}; see its log"),
            }
        }
    }
    Ok(Watched { update_bytes, idle_ms, train_ms, contributions, contribution_slots })
}
