//! `cairn genesis`, `cairn worker` and `cairn validate`: starting a run and taking part in it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use ledger::{Body, Entry, Genesis};
use trainer::gather::{GatherEvent, GatherOptions, Organisation, run_gatherer};
use trainer::model::init_state;
use trainer::run_spec::{MAX_SPEC_BYTES, RunSpec};
use trainer::validator::{ValidatorEvent, ValidatorOptions, run_validator};
use trainer::worker::{WorkerEvent, WorkerOptions, run_worker};

use crate::Outcome;
use crate::metrics::Metrics;
use crate::store_cmd::absolute_url;

#[derive(Debug, clap::Args)]
pub struct GenesisArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run (must exist: see `cairn store init`).
    #[arg(long)]
    store: String,
    /// The run specification (see docs/RUN.md).
    #[arg(long)]
    config: PathBuf,
    /// An admin's key file (the admin must be in the roster).
    #[arg(long)]
    key: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ParticipantArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run.
    #[arg(long)]
    store: String,
    /// This member's key file (from `cairn keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Where to train: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The arithmetic of a worker's passes: f32, or bf16 (matrix products in bf16, the rest f32;
    /// for GPUs). A local choice: it does not change the run's config.
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Stop after this many rounds (default: when the run's last round closes).
    #[arg(long)]
    rounds: Option<u64>,
    /// libtorch threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Milliseconds between ledger polls while waiting and the ledger moves.
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
    /// The longest pause between polls while the ledger is quiet: each poll that reads nothing
    /// doubles the pause up to this (docs/RUN.md, "Polling"); at most --poll-ms: no backoff.
    #[arg(long, default_value_t = 2000)]
    max_poll_ms: u64,
    /// The worker's momentum file (default: the key file's path with `.momentum` appended).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Serve Prometheus metrics of this process at http://ADDR/metrics (docs/DASHBOARD.md).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Workers: leave each contribution for the organisation's gatherer (`cairn gather`), which
    /// appends the organisation's contributions to a round as one ledger slot, and append it here
    /// only if it is not in the ledger after this many milliseconds (0: append at once). Set it
    /// above the gatherer's --window-ms plus two polls (docs/RUN.md, "Gathering").
    #[arg(long, default_value_t = 0)]
    gatherer_wait_ms: u64,
    /// Validators: score each contribution in this many validator organisations only, this one
    /// where it is among them (drawn per worker and round from the ledger; docs/RUN.md, "Sharing
    /// the scoring"). Raised to the run's organisation quorum when below it. Every validator
    /// still reads, decodes and copy-checks every contribution. Default: score every contribution.
    #[arg(long, value_name = "N")]
    score_orgs: Option<usize>,
    /// What to do with the rounds' steps (one trit a parameter; docs/RUN.md, "Following steps"):
    /// `publish` each round this member computes to attest, under its organisation's
    /// `steps/FOLDER/`; `follow`: take each final round through a published step that reproduces
    /// the attested result, falling back to the updates, and attest only when a round stalls
    /// (workers only); `auto`: follow, through a round's step only when it is smaller than the
    /// round's counted updates (workers only); `off`. Default: `publish` for validators, `off` for workers. Sign-rule runs
    /// only; elsewhere it is off.
    #[arg(long, value_enum)]
    steps: Option<StepsMode>,
    /// Rejoin the run after transient failures (the store unreachable after the storage layer's
    /// retries, a contended append) at most this many times in a row, waiting 1 s, 2 s, ... up to
    /// 60 s between tries (a failure 10 minutes after the last starts a new count); 0 gives up at
    /// the first.
    #[arg(long, default_value_t = 30)]
    max_rejoins: u32,
}

/// `--steps`: what a member does with the rounds' steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StepsMode {
    /// Neither publish nor follow.
    Off,
    /// Publish the step of each round this member computes.
    Publish,
    /// Follow the rounds through published steps.
    Follow,
    /// Follow, taking a round through its step only when the step is smaller than its updates.
    Auto,
}

impl StepsMode {
    fn policy(self) -> trainer::steps::StepPolicy {
        trainer::steps::StepPolicy {
            publish: self == StepsMode::Publish,
            follow: matches!(self, StepsMode::Follow | StepsMode::Auto),
            when_smaller: self == StepsMode::Auto,
        }
    }
}

/// Longest pause before rejoining after a transient failure.
const MAX_REJOIN_WAIT: Duration = Duration::from_secs(60);

/// Counts transient failures in a row (the store unreachable after the storage layer's retries, a
/// contended append) and waits before the caller rejoins the run (a fresh catch-up).
struct Rejoins {
    who: String,
    max: u32,
    failures: u32,
    last_failure: Option<std::time::Instant>,
}

/// A failure this long after the previous one starts a new count (the run made progress between).
const REJOIN_COUNT_RESET: Duration = Duration::from_secs(600);

impl Rejoins {
    fn new(who: String, max: u32) -> Rejoins {
        Rejoins { who, max, failures: 0, last_failure: None }
    }

    /// Waits 1 s, 2 s, 4 s, ... (at most [`MAX_REJOIN_WAIT`]) after a transient `error`, or returns
    /// it: any other error, or the transient one after `max` in a row.
    async fn wait_or_fail(&mut self, error: trainer::TrainerError) -> Result<(), trainer::TrainerError> {
        if self.last_failure.is_some_and(|t| t.elapsed() > REJOIN_COUNT_RESET) {
            self.failures = 0;
        }
        self.last_failure = Some(std::time::Instant::now());
        if !error.is_transient() || self.failures >= self.max {
            return Err(error);
        }
        let wait = Duration::from_secs(1u64 << self.failures.min(6)).min(MAX_REJOIN_WAIT);
        self.failures += 1;
        eprintln!(
            "{}: {error}; rejoining in {} s ({} of at most {})",
            self.who,
            wait.as_secs(),
            self.failures,
            self.max
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

async fn open_run(store: &str) -> anyhow::Result<(String, storage::Store)> {
    let url = absolute_url(store)?;
    let store = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    Ok((url, store))
}

/// Writes the Genesis entry: the run config, the roster and the initial state (uploaded as a blob).
pub async fn genesis(args: GenesisArgs) -> anyhow::Result<Outcome> {
    let size = std::fs::metadata(&args.config).with_context(|| format!("reading {}", args.config.display()))?.len();
    anyhow::ensure!(
        size <= MAX_SPEC_BYTES,
        "{} is {size} bytes, over the limit of {MAX_SPEC_BYTES}",
        args.config.display()
    );
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let spec = RunSpec::parse(&text)?;
    let vocab = spec.vocab().await.context("loading data.tokenizer")?;
    let mut parts = spec.genesis_parts(vocab)?;
    // Every participant will load the data: fail here, once, if it cannot be.
    let data =
        parts.train.dataset().await.with_context(|| format!("loading the run's data ({})", parts.train.data_source))?;
    // Every member must train on these tokens: their hash goes into the genesis.
    parts.pin_data(&data)?;
    match data.loss_floor_nats() {
        Some(floor) => println!("data: the synthetic corpus (unbounded), loss floor {floor:.4} nats"),
        None => println!(
            "data: {} ({} training sequences of {} tokens, {} held out; tokens pinned as blake3 {})",
            parts.train.data_source,
            data.train_range().end - data.train_range().start,
            parts.train.seq_len,
            data.eval_range().end - data.eval_range().start,
            parts.train.data_blake3.as_deref().unwrap_or("-")
        ),
    }
    let admin = ledger::read_key_file(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let Some(admin_member) = parts.roster.iter().find(|m| m.key == admin.public() && m.role == ledger::Role::Admin)
    else {
        anyhow::bail!("the key in {} ({}) is not an admin in the roster", args.key.display(), admin.public());
    };
    let (url, store) = open_run(&args.store).await?;
    // The initial state of a large preset is staged: in the admin organisation's own folder.
    let store = store.staging_in(&verify::replay::staging_prefix(&admin_member.organisation))?;
    let model = parts.train.model_config()?;
    let state = init_state(&model, parts.train.seed)?;
    let bytes = Bytes::from(state.to_safetensors()?);
    let snapshot_size = bytes.len() as u64;
    let blob = store.put_blob(bytes).await.with_context(|| format!("uploading the initial state to {url}"))?;
    let hash = state.hash();
    let genesis = Genesis {
        org_quorum: parts.org_quorum,
        salt: rand::random(),
        window: parts.window,
        once_per_round: parts.once_per_round,
        ..Genesis::new(
            parts.config.encode()?,
            parts.roster.clone(),
            parts.quorum,
            ledger::StateHash(hash.0),
            blob,
            snapshot_size,
        )
    };
    let run_id = genesis.run_id();
    let entry = Entry::sign(run_id, Body::Genesis(genesis), &[&admin])?;
    ledger::write_genesis(&store, &entry).await.with_context(|| format!("writing the genesis of {url}"))?;
    println!(
        "run {run_id}: preset {} ({} parameters), {} members, organisation quorum {}, initial state {hash}",
        parts.train.preset,
        state.layout().elements(),
        parts.roster.len(),
        parts.org_quorum
    );
    println!("genesis: run={run_id} state={hash} store={url}");
    Ok(Outcome::Ok)
}

/// The device, and `--poll-ms` and `--max-poll-ms` (each within 10 ms and a minute).
fn options(args: &ParticipantArgs) -> anyhow::Result<(trainer::Device, Duration, Duration)> {
    if args.threads > 0 {
        trainer::set_torch_threads(args.threads);
    }
    let ms = |v: u64| Duration::from_millis(v.clamp(10, 60_000));
    Ok((trainer::parse_device(&args.device)?, ms(args.poll_ms), ms(args.max_poll_ms)))
}

/// Runs a worker until the run ends or `--rounds` contributions are made.
pub async fn worker(args: ParticipantArgs) -> anyhow::Result<Outcome> {
    let (device, poll, max_poll) = options(&args)?;
    let key = ledger::read_key_file(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let state_file = args.state_file.clone().unwrap_or_else(|| {
        let mut p = args.key.clone().into_os_string();
        p.push(".momentum");
        p.into()
    });
    let (url, store) = open_run(&args.store).await?;
    let me = short(&key.public().to_string()).to_string();
    let precision: trainer::model::Precision = args.precision.parse()?;
    anyhow::ensure!(args.score_orgs.is_none(), "--score-orgs is a validator's option: workers score nothing");
    let gatherer_wait = (args.gatherer_wait_ms > 0).then(|| Duration::from_millis(args.gatherer_wait_ms));
    let steps = args.steps.unwrap_or(StepsMode::Off).policy();
    let options =
        WorkerOptions { device, rounds: args.rounds, state_file, poll, max_poll, precision, gatherer_wait, steps };
    let metrics = Metrics::new();
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    let mut clock = RoundClock::default();
    let mut print = |e: WorkerEvent| {
        worker_metrics(&metrics, &e);
        let since = match &e {
            WorkerEvent::RoundApplied { .. } => clock.applied(&metrics),
            _ => String::new(),
        };
        println!("worker {me}: {}{since}", describe_worker(&e));
    };
    let mut rejoins = Rejoins::new(format!("worker {me}"), args.max_rejoins);
    let summary = loop {
        match run_worker(store.clone(), &key, &options, &mut print).await {
            Ok(summary) => break summary,
            Err(e) => {
                metrics.add("cairn_rejoins_total", "Rejoins after a transient failure.", &[], 1.0);
                rejoins.wait_or_fail(e).await.with_context(|| format!("working on {url}"))?
            }
        }
    };
    let steps = summary
        .steps
        .map(|s| {
            format!(
                " rounds_through_steps={} rounds_updates_smaller={} step_fallbacks={} steps_refused={} step_bytes_read={}",
                s.applied, s.updates_smaller, s.fallbacks, s.refused, s.bytes_read
            )
        })
        .unwrap_or_default();
    println!(
        "worker: contributed={} counted={}{steps} downloaded_bytes={} next_round={} state={}",
        summary.contributed,
        summary.counted,
        storage::stats::bytes_read(),
        summary.next_round,
        summary.state
    );
    Ok(Outcome::Ok)
}

#[derive(Debug, clap::Args)]
pub struct GatherArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run.
    #[arg(long)]
    store: String,
    /// The organisation whose workers' contributions it appends (as in the roster).
    #[arg(long, required_unless_present = "key", conflicts_with = "key")]
    organisation: Option<String>,
    /// Or a member's key file: gather for its organisation (the gatherer signs nothing).
    #[arg(long)]
    key: Option<PathBuf>,
    /// How long the first pending contribution of a round waits for the organisation's other
    /// workers before the gatherer appends what it has, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    window_ms: u64,
    /// Milliseconds between polls of the ledger and the pending folder.
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
    /// Rejoin after transient failures at most this many times in a row (as `cairn worker`).
    #[arg(long, default_value_t = 30)]
    max_rejoins: u32,
    /// Serve Prometheus metrics of this process at http://ADDR/metrics (docs/DASHBOARD.md).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// Runs an organisation's gatherer until the run's last round is final.
pub async fn gather(args: GatherArgs) -> anyhow::Result<Outcome> {
    let (url, store) = open_run(&args.store).await?;
    let (organisation, mut label) = match (&args.organisation, &args.key) {
        (Some(org), _) => (Organisation::Named(org.clone()), org.clone()),
        (None, Some(path)) => {
            let key = ledger::read_key_file(path).with_context(|| format!("reading {}", path.display()))?;
            // The gatherer finds the organisation in the roster it reads anyway; until then the
            // lines name the key.
            (Organisation::OfMember(key.public()), short(&key.public().to_string()).to_string())
        }
        (None, None) => anyhow::bail!("give --organisation or --key"),
    };
    let options = GatherOptions {
        organisation,
        window: Duration::from_millis(args.window_ms),
        poll: Duration::from_millis(args.poll_ms.clamp(10, 60_000)),
    };
    let metrics = Metrics::new();
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    // Totals over every rejoin.
    let (mut slots, mut gathered, mut refused) = (0u64, 0u64, 0u64);
    let mut print = |e: GatherEvent| {
        let line = match &e {
            GatherEvent::Joined { organisation, round, workers } => {
                label.clone_from(organisation);
                format!("round {round}: gathering the contributions of {workers} workers")
            }
            GatherEvent::Appended { round, seq, entries, waited_ms } => {
                slots += 1;
                gathered += *entries as u64;
                metrics.add("cairn_gathered_slots_total", "Slots of gathered contributions appended.", &[], 1.0);
                metrics.add(
                    "cairn_gathered_contributions_total",
                    "Contributions appended for the organisation's workers.",
                    &[],
                    *entries as f64,
                );
                metrics.set(
                    "cairn_gather_wait_seconds",
                    "How long the oldest contribution of the latest slot waited in the pending folder.",
                    &[],
                    *waited_ms as f64 / 1000.0,
                );
                format!(
                    "round {round}: appended {entries} contributions as slot {seq} (the oldest waited {waited_ms} ms)"
                )
            }
            GatherEvent::Refused { key, why } => {
                refused += 1;
                metrics.add("cairn_gather_refused_total", "Pending objects left out.", &[], 1.0);
                format!("left out {key}: {why}")
            }
        };
        println!("gatherer {label}: {line}");
    };
    let mut rejoins = Rejoins::new("gatherer".to_string(), args.max_rejoins);
    loop {
        match run_gatherer(store.clone(), &options, &mut print).await {
            Ok(()) => break,
            Err(e) => rejoins.wait_or_fail(e).await.with_context(|| format!("gathering on {url}"))?,
        }
    }
    println!("gather: slots={slots} contributions={gathered} refused={refused}");
    Ok(Outcome::Ok)
}

/// Runs a validator until the run ends or `--rounds` rounds closed.
pub async fn validate(args: ParticipantArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.gatherer_wait_ms == 0, "--gatherer-wait-ms is a worker's option: validators append their own");
    let (device, poll, max_poll) = options(&args)?;
    let key = ledger::read_key_file(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let (url, store) = open_run(&args.store).await?;
    let me = short(&key.public().to_string()).to_string();
    let steps = args.steps.unwrap_or(StepsMode::Publish);
    anyhow::ensure!(
        !matches!(steps, StepsMode::Follow | StepsMode::Auto),
        "--steps follow and auto are a worker's options: a validator reads every update to score it, and computes each round it attests"
    );
    let options = ValidatorOptions {
        device,
        rounds: args.rounds,
        poll,
        max_poll,
        publish_steps: steps == StepsMode::Publish,
        score_orgs: args.score_orgs,
    };
    let metrics = Metrics::new();
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    let mut clock = RoundClock::default();
    let mut print = |e: ValidatorEvent| {
        validator_metrics(&metrics, &e);
        let since = match &e {
            ValidatorEvent::RoundApplied { .. } => clock.applied(&metrics),
            _ => String::new(),
        };
        let line = match &e {
            ValidatorEvent::Joined { round } => format!("joined at round {round}"),
            ValidatorEvent::Judged { round, pos, organisation, score, unusable } => format!(
                "round {round}: verdict {score} for {pos} ({}){}",
                organisation.as_deref().unwrap_or("?"),
                unusable.as_ref().map(|u| format!(": unusable: {u}")).unwrap_or_default()
            ),
            ValidatorEvent::LeftToOthers { round, pos } => {
                format!("round {round}: {pos} is scored by other organisations (--score-orgs)")
            }
            ValidatorEvent::RoundApplied { round, counted } => format!("round {round} closed, {counted} counted"),
            ValidatorEvent::Evaluated { round, loss } => format!("round {round}: held-out loss {loss:.4} (evaluation)"),
            ValidatorEvent::Worker(w) => describe_worker(w),
        };
        println!("validator {me}: {line}{since}");
    };
    let mut rejoins = Rejoins::new(format!("validator {me}"), args.max_rejoins);
    let verdicts = loop {
        match run_validator(store.clone(), &key, &options, &mut print).await {
            Ok(verdicts) => break verdicts,
            Err(e) => {
                metrics.add("cairn_rejoins_total", "Rejoins after a transient failure.", &[], 1.0);
                rejoins.wait_or_fail(e).await.with_context(|| format!("validating {url}"))?
            }
        }
    };
    println!("validator: verdicts={verdicts}");
    Ok(Outcome::Ok)
}

/// When this process last applied a final round: each "applied" line says how long the round took
/// from the process's point of view, so a stall (a store outage, a slow store, a silent member)
/// shows in the log and in `cairn_round_seconds`. Local time only: nothing of it reaches the ledger.
#[derive(Default)]
struct RoundClock {
    last: Option<std::time::Instant>,
}

impl RoundClock {
    /// Notes a round applied now; the text to add to its line (empty for the first this process saw).
    fn applied(&mut self, m: &Metrics) -> String {
        let now = std::time::Instant::now();
        let previous = self.last.replace(now);
        match previous {
            Some(t) => {
                let secs = now.duration_since(t).as_secs_f64();
                m.set(
                    "cairn_round_seconds",
                    "Seconds between the latest two final rounds this process applied.",
                    &[],
                    secs,
                );
                format!(", {secs:.1} s after the previous round")
            }
            None => String::new(),
        }
    }
}

/// What a worker event changes in its metrics.
fn worker_metrics(m: &Metrics, e: &WorkerEvent) {
    match e {
        WorkerEvent::Joined { round, .. } => set_round(m, *round),
        WorkerEvent::Contributed { round, loss, bytes, train_secs, upload_secs, tokens, gathered } => {
            set_round(m, *round);
            m.add("cairn_contributions_total", "Contributions appended.", &[], 1.0);
            if *gathered {
                m.add(
                    "cairn_contributions_gathered_total",
                    "Contributions the organisation's gatherer appended.",
                    &[],
                    1.0,
                );
            }
            m.add("cairn_tokens_total", "Tokens trained on.", &[], *tokens as f64);
            m.set("cairn_train_loss", "Training loss of the latest update (nats).", &[], *loss);
            m.set("cairn_update_bytes", "Bytes of the latest update.", &[], *bytes as f64);
            m.add("cairn_uploaded_bytes_total", "Update bytes uploaded.", &[], *bytes as f64);
            m.set("cairn_step_seconds", "Seconds to train and encode the latest update.", &[], *train_secs);
            m.set("cairn_upload_seconds", "Seconds to upload the latest update.", &[], *upload_secs);
            if *train_secs > 0.0 {
                m.set(
                    "cairn_tokens_per_second",
                    "Training throughput of the latest update.",
                    &[],
                    *tokens as f64 / train_secs,
                );
            }
        }
        WorkerEvent::RoundApplied { round, ours, from_step, .. } => {
            if *from_step {
                m.add("cairn_rounds_through_steps_total", "Final rounds applied through a published step.", &[], 1.0);
            }
            if let Some(result) = ours {
                let outcome = if result.is_ok() { "counted" } else { "not_counted" };
                m.add(
                    "cairn_own_contributions_total",
                    "Own contributions in applied rounds, by outcome.",
                    &[("outcome", outcome)],
                    1.0,
                );
            }
            round_applied(m, *round);
        }
        _ => {}
    }
}

/// `cairn_round`: the open round this process works on.
fn set_round(m: &Metrics, round: u64) {
    m.set("cairn_round", "The open round this process works on.", &[], round as f64);
}

/// A final round was applied: the next one is open, and the ledger was just read.
fn round_applied(m: &Metrics, round: u64) {
    set_round(m, round + 1);
    m.add("cairn_rounds_applied_total", "Final rounds applied.", &[], 1.0);
    m.ledger_read();
}

/// What a validator event changes in its metrics.
fn validator_metrics(m: &Metrics, e: &ValidatorEvent) {
    match e {
        ValidatorEvent::Judged { unusable, .. } => {
            let outcome = if unusable.is_some() { "unusable" } else { "scored" };
            m.add("cairn_verdicts_total", "Verdicts appended, by outcome.", &[("outcome", outcome)], 1.0);
            m.ledger_read();
        }
        ValidatorEvent::Evaluated { loss, .. } => {
            m.set("cairn_eval_loss", "Held-out loss of the latest final round (nats).", &[], *loss);
            m.add("cairn_evaluations_total", "Evaluations appended.", &[], 1.0);
        }
        ValidatorEvent::RoundApplied { round, .. } => round_applied(m, *round),
        ValidatorEvent::Worker(w) => worker_metrics(m, w),
        ValidatorEvent::Joined { round } => set_round(m, *round),
        ValidatorEvent::LeftToOthers { .. } => {
            m.add("cairn_left_to_others_total", "Contributions scored by other organisations (--score-orgs).", &[], 1.0)
        }
    }
}

fn short(key: &str) -> &str {
    &key[..key.len().min(8)]
}

/// One line for a worker event.
pub fn describe_worker(e: &WorkerEvent) -> String {
    match e {
        WorkerEvent::Joined { round, from_snapshot, resumed, fresh } => format!(
            "joined at round {round}{}{}",
            if *from_snapshot { " from a snapshot" } else { "" },
            match (resumed, fresh) {
                (true, _) => ", momentum resumed".to_string(),
                (false, Some(why)) => format!(", momentum starts at zero: {why}"),
                (false, None) => String::new(),
            }
        ),
        WorkerEvent::Contributed { round, loss, bytes, train_secs, gathered, .. } => {
            let by = if *gathered { ", appended by the gatherer" } else { "" };
            format!("round {round}: contributed, loss {loss:.4}, {bytes} bytes, {train_secs:.1} s{by}")
        }
        WorkerEvent::AlreadyContributed { round } => format!("round {round}: contribution already in the ledger"),
        WorkerEvent::Voted { round, seen } => format!("round {round}: voted to close it (read {seen} slots)"),
        WorkerEvent::Attested { round, state, dropped } => {
            format!(
                "round {round}: attested state {}{}",
                short(state),
                if *dropped > 0 { format!(", {dropped} dropped") } else { String::new() }
            )
        }
        WorkerEvent::RoundApplied { round, counted, ours, state, from_step } => {
            let ours = match ours {
                Some(Ok(())) => "ours counted".to_string(),
                Some(Err(why)) => format!("ours not counted: {why}"),
                None => "none of ours".to_string(),
            };
            let how = if *from_step { " (through a published step)" } else { "" };
            format!("round {round} applied{how}: {counted} counted, {ours}, state {}", short(state))
        }
        WorkerEvent::Snapshot { round, bytes } => format!("snapshot after round {round}: {bytes} bytes"),
        WorkerEvent::Exported { key } => format!("ledger exported to {key}"),
    }
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run (read access is enough without --key).
    #[arg(long)]
    store: String,
    /// A member's key file: sign the evaluation and append it to the ledger (unless this key
    /// already evaluated that round). Without it the loss is only printed, next to what the
    /// ledger's evaluators signed: anyone can recompute the curve.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Where to evaluate: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// `cairn eval`: the held-out loss of the run's newest final state (the first
/// `trainer::evaluate::EVAL_SEQUENCES` held-out sequences), compared with the ledger's signed
/// evaluations of that round, and appended as a signed Evaluation with `--key`. Last line:
/// `eval: round=R loss=L sequences=N state=H appended=true|false`.
pub async fn eval(args: EvalArgs) -> anyhow::Result<Outcome> {
    use trainer::evaluate::{HeldOut, append_evaluation, evaluate_latest, has_evaluated};
    let device = trainer::parse_device(&args.device)?;
    let key = match &args.key {
        Some(path) => Some(ledger::read_key_file(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let (url, store) = open_run(&args.store).await?;
    let progress = crate::audit_cmd::Progress::new("replaying the run (every final round)");
    let mut follower =
        trainer::follow::Follower::join(store).await.with_context(|| format!("replaying the run in {url}"))?;
    progress.finish();
    if let Some(key) = &key {
        anyhow::ensure!(
            follower.reader().state().member(&key.public()).is_some(),
            "{} is not a member of the run: only members sign evaluations (leave out --key to only compute)",
            key.public()
        );
    }
    let info = follower.info().clone();
    let data = info.train.dataset().await.context("reading the run's data")?;
    let held_out = HeldOut::new(&data, info.train.micro_batch, device)?;
    let mut model = trainer::model::Model::from_state(&info.model, follower.state(), device)?;
    let progress = crate::audit_cmd::Progress::new("evaluating the newest final state");
    let evaluation = evaluate_latest(&follower, &mut model, &held_out)?;
    progress.finish();
    let Some(evaluation) = evaluation else {
        anyhow::bail!("no round of the run in {url} is final yet: nothing to evaluate");
    };
    let round = evaluation.round;
    let ours = evaluation.loss_milli;
    println!(
        "round {} (state {}): held-out loss {:.4} nats over {} sequences",
        round.0,
        evaluation.state,
        ours as f64 / 1000.0,
        evaluation.sequences
    );
    for logged in follower.reader().by_round(round).filter(|e| e.validity.is_accept()) {
        if let Some(Body::Evaluation(e)) = logged.entry.as_ref().map(|x| &x.body) {
            let signer = logged.entry.as_ref().map(|x| x.signer().to_string()).unwrap_or_default();
            println!(
                "  signed at {} by {} ({}): {:.4} ({:+} milli-nats from this one)",
                logged.pos,
                signer.get(..12).unwrap_or(&signer),
                logged.organisation.as_deref().unwrap_or("?"),
                e.loss_milli as f64 / 1000.0,
                e.loss_milli.saturating_sub(ours)
            );
        }
    }
    let state = evaluation.state;
    let sequences = evaluation.sequences;
    let appended = match &key {
        Some(key) if !has_evaluated(&follower, &key.public(), round) => {
            let seq = append_evaluation(&mut follower, key, evaluation).await?;
            println!("  appended at slot {}", seq.0);
            true
        }
        Some(_) => {
            println!("  this key already evaluated round {}: nothing appended", round.0);
            false
        }
        None => false,
    };
    println!(
        "eval: round={} loss={:.4} sequences={sequences} state={state} appended={appended}",
        round.0,
        ours as f64 / 1000.0
    );
    Ok(Outcome::Ok)
}
