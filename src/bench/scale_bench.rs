//! `cairn bench scale`: what one round costs at 10, 100 and 1,000 workers, by a model whose parts
//! are exact (sizes), simulated with the real ledger code (appends) or measured here and scaled
//! (aggregation).
//!
//! ```text
//!   the run's config at --preset (the defaults, or --config run.toml)
//!     ─▶ exact: parameters, update bytes (verify::wire::encoded_len), entries per round
//!   one round of the ledger, simulated: the real Appender over an in-memory store that delays
//!   every request by up to --store-latency-ms, on tokio's paused clock (virtual seconds, the same
//!   for one seed on any machine):
//!     N workers append their Contribution, arriving uniformly over --arrival-secs
//!     ─▶ each organisation's validator appends a Verdict on every contribution, --verdict-batch
//!        per slot, the validators racing each other
//!     ─▶ each organisation votes to close, then attests
//!     ─▶ virtual seconds per phase, slots, store requests
//!   aggregation: verify::apply timed on this machine at --measure-preset with 1 and 32 updates,
//!     fitted as fixed + per-update cost and scaled by parameters to --preset (extrapolated)
//!   ─▶ per N: bytes up and down per participant, seconds at --bandwidth-mbps, ledger seconds,
//!      aggregation seconds, store requests and their price, joining from a snapshot, a
//!      follower's memory after --rounds rounds
//!   ─▶ last line: bench scale: w{N}_round_s=.. w{N}_download_mb=.. w{N}_usd_per_round=.. ...
//! ```
//!
//! Every participant downloads every counted update (the aggregation needs all of them), so the
//! download grows with N; the ledger takes one slot per append, so the slots per round grow with
//! N times the validators. docs/SCALE.md reads the figures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use ledger::{
    Appender, Attestation, BlobId, Body, CloseVote, Contribution, Entry, EntryPos, Genesis, Keypair, Member, Role, Seq,
    Target, Verdict,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::fault::{FaultStore, Faults};
use storage::{RetryPolicy, Store};
use trainer::model::{BYTE_VOCAB, ModelConfig, Preset};
use trainer::run_spec::RunSpec;
use trainer::validator::flush_due;
use verify::wire::encoded_len;
use verify::{Header, Layout, Round, RunConfig, RunId, State, StateHash, WorkerKey, apply};

use super::aggregate_bench::synthetic;
use crate::Outcome;

#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Worker counts, one simulated round each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    workers: Vec<usize>,
    /// The model the run trains (its parameters and update size).
    #[arg(long, default_value = "1b")]
    preset: String,
    /// A run.toml whose compression and `max_contributions` the run uses (its preset is replaced
    /// by --preset; default: the defaults of docs/run.example.toml, except that every worker
    /// counts: `max_contributions = 4096`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Organisations: each has one validator and a share of the workers; the organisation
    /// quorum is a majority.
    #[arg(long, default_value_t = 10)]
    organisations: usize,
    /// Each participant's link, each way, in megabits per second.
    #[arg(long, default_value_t = 1000.0)]
    bandwidth_mbps: f64,
    /// Every store request waits a uniformly drawn time up to this many milliseconds.
    #[arg(long, default_value_t = 60)]
    store_latency_ms: u64,
    /// Workers' contributions arrive uniformly over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    arrival_secs: f64,
    /// Verdicts a validator appends per slot, each simulated: 1 (one slot per verdict, what
    /// `cairn validate` did before) against up to `VERDICTS_PER_SLOT` (64, what it does now).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    verdict_batch: Vec<usize>,
    /// Milliseconds a validator takes to score one update (read, decode, forward passes): its
    /// verdicts go out as `cairn validate` sends them, a slot when the batch is full or the oldest
    /// waited 2 s (0: instant, the ledger's share alone).
    #[arg(long, default_value_t = 0)]
    score_ms: u64,
    /// Each contribution is scored by this many organisations' validators (`cairn validate
    /// --score-orgs`, raised to the organisation quorum, a majority here), drawn as the validators
    /// draw them; a validator appends verdicts for its share only (the simulated updates are
    /// neither copies nor unusable, which every validator would judge). Default: every validator
    /// scores every contribution.
    #[arg(long)]
    score_orgs: Option<usize>,
    /// Research (not built in the worker): each organisation gathers its workers' contributions
    /// and appends them as one slot, when all its workers are in or the oldest waited this many
    /// milliseconds. Each worker PUTs its signed entry under `pending/`, the gatherer LISTs and
    /// GETs them before each append (any member may append others' signed entries: they stay
    /// theirs). 0: every worker appends its own entry, as `cairn worker` does.
    #[arg(long, default_value_t = 0)]
    gather_ms: u64,
    /// Milliseconds between a waiting participant's ledger polls (`cairn worker --poll-ms`).
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
    /// The longest wait between polls while the ledger is quiet (`cairn worker --max-poll-ms`;
    /// `--poll-ms` or less: no backoff, every wait is `--poll-ms`).
    #[arg(long, default_value_t = 2000)]
    max_poll_ms: u64,
    /// Rounds after which a follower's memory is reported.
    #[arg(long, default_value_t = 10_000)]
    rounds: u64,
    /// The run's window of rounds (`[rounds] window`; 0: none): a follower holds the entries of
    /// this many rounds.
    #[arg(long, default_value_t = trainer::run_spec::DEFAULT_WINDOW)]
    window: u32,
    /// Where aggregation is timed before it is scaled to --preset.
    #[arg(long, default_value = "small")]
    measure_preset: String,
    /// Price of 1,000 PUT, COPY, POST or LIST requests, in US dollars.
    #[arg(long, default_value_t = 0.005)]
    put_usd_per_1000: f64,
    /// Price of 1,000 GET requests, in US dollars.
    #[arg(long, default_value_t = 0.0004)]
    get_usd_per_1000: f64,
    /// Price of a gigabyte transferred out of the store's region, in US dollars.
    #[arg(long, default_value_t = 0.09)]
    egress_usd_per_gb: f64,
    /// Seed of the arrivals, the store's delays and the synthetic updates.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A follower's resident memory per ledger entry it holds, measured by `cairn bench poll` at
/// 100,000 entries (the join's 112.3 MB; docs/BENCHMARKS.md, "Long runs").
const FOLLOWER_BYTES_PER_ENTRY: f64 = 1_122.0;
/// What a follower that forgets behind the window still gains per round, with its entries, its
/// Merkle tree and its round tallies all held to the window: its growth from 10,000 to 100,000
/// entries over the rounds added, measured by `cairn bench poll` (1.1 MB / 7,500 rounds;
/// docs/BENCHMARKS.md, "Long runs"). Resident memory, so the allocator's share is in it.
const FOLLOWER_BYTES_PER_ROUND: f64 = 147.0;

/// The ledger part of one round, as simulated.
#[derive(Debug, Default, Clone)]
struct LedgerRound {
    /// Virtual seconds from the first contribution's arrival to its last append landing.
    contributions_s: f64,
    /// Virtual seconds from then until every validator's last verdict landed.
    verdicts_s: f64,
    /// Virtual seconds for the close votes and attestations.
    close_s: f64,
    slots: u64,
    entries: u64,
    /// Bytes of every slot of the round.
    slot_bytes: u64,
    /// Bytes of one worker's contribution slot (the largest).
    contribution_bytes: u64,
    /// Store requests by operation (every attempt).
    requests: BTreeMap<&'static str, u64>,
}

impl LedgerRound {
    fn seconds(&self) -> f64 {
        self.contributions_s + self.verdicts_s + self.close_s
    }

    /// Requests priced as PUTs (put, put-if-absent, list).
    fn put_priced(&self) -> u64 {
        self.requests.iter().filter(|(op, _)| op.starts_with("put") || **op == "list").map(|(_, n)| n).sum()
    }

    /// Requests priced as GETs (get, get-range, head).
    fn get_priced(&self) -> u64 {
        self.requests.iter().filter(|(op, _)| op.starts_with("get") || **op == "head").map(|(_, n)| n).sum()
    }
}

/// Every store request of this process so far, summed over outcomes, by operation.
fn request_counts() -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for ((op, _), n) in storage::stats::requests() {
        *out.entry(op).or_default() += n;
    }
    out
}

struct Members {
    admin: Keypair,
    workers: Vec<Keypair>,
    validators: Vec<Keypair>,
    organisations: usize,
}

impl Members {
    fn new(workers: usize, organisations: usize, rng: &mut StdRng) -> Members {
        Members {
            admin: Keypair::from_seed(rng.random()),
            workers: (0..workers).map(|_| Keypair::from_seed(rng.random())).collect(),
            validators: (0..organisations).map(|_| Keypair::from_seed(rng.random())).collect(),
            organisations,
        }
    }

    /// The name of organisation `i`; member `i` of each role belongs to `i` modulo their number.
    fn organisation(&self, i: usize) -> String {
        format!("org-{}", i % self.organisations)
    }

    /// A majority of the organisations (at most u16::MAX, far above any run).
    fn org_quorum(&self) -> usize {
        self.organisations / 2 + 1
    }

    fn genesis(&self) -> Genesis {
        let org = |i: usize| self.organisation(i);
        let mut roster = vec![Member { key: self.admin.public(), organisation: org(0), role: Role::Admin }];
        roster.extend(self.workers.iter().enumerate().map(|(i, k)| Member {
            key: k.public(),
            organisation: org(i),
            role: Role::Worker,
        }));
        roster.extend(self.validators.iter().enumerate().map(|(i, k)| Member {
            key: k.public(),
            organisation: org(i),
            role: Role::Validator,
        }));
        let g = Genesis::new(vec![], roster, 1, ledger::StateHash([0; 32]), BlobId([0; 32]), 0);
        Genesis { org_quorum: u16::try_from(self.org_quorum()).unwrap_or(u16::MAX), ..g }
    }
}

/// One round's appends on a store with `latency_ms` of delay per request, on the current
/// runtime's (paused) clock.
async fn simulate_ledger(
    members: &Members,
    update_bytes: u64,
    args: &Args,
    verdict_batch: usize,
    seed: u64,
) -> anyhow::Result<LedgerRound> {
    let faults = Faults { max_delay_ms: args.store_latency_ms, ..Faults::default() };
    let fault = FaultStore::new(seed, faults);
    let store = Store::from_object_store(Arc::new(fault), "sim", RetryPolicy::default());
    let genesis = members.genesis();
    let run = genesis.run_id();
    let before = request_counts();
    let mut appender = Appender::new(store.clone());
    appender.append(&[Entry::sign(run, Body::Genesis(genesis), &[&members.admin])?]).await?;
    let head = Seq(1);
    let mut out = LedgerRound::default();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xa11);
    let round = ledger::Round(0);

    // Contributions: every worker appends from the head it saw when the round opened.
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut by_organisation: Vec<Vec<(std::time::Duration, Entry)>> = vec![Vec::new(); members.organisations];
    for (i, key) in members.workers.iter().enumerate() {
        let body = Body::Contribution(Contribution {
            round,
            base_state: ledger::StateHash([0; 32]),
            assignment: trainer::worker::assignment_bytes(Round(0), 64),
            blob: BlobId::of(&(i as u64).to_le_bytes()),
            blob_size: update_bytes,
            metrics: vec![("loss_milli".into(), 3_000)],
        });
        let entry = Entry::sign(run, body, &[key])?;
        let arrival = std::time::Duration::from_secs_f64(rng.random_range(0.0..=args.arrival_secs.max(0.0)));
        if args.gather_ms > 0 {
            by_organisation[i % members.organisations].push((arrival, entry));
            continue;
        }
        let mut appender = Appender::starting_at(store.clone(), head);
        tasks.spawn(async move {
            tokio::time::sleep(arrival).await;
            let bytes = ledger::slot::encode_entries(std::slice::from_ref(&entry))?.len() as u64;
            let seq = appender.append(std::slice::from_ref(&entry)).await?;
            anyhow::Ok(vec![(vec![(EntryPos { seq, index: 0 }, entry.signer())], bytes)])
        });
    }
    let gather = std::time::Duration::from_millis(args.gather_ms);
    for (o, mut arrivals) in by_organisation.into_iter().enumerate().filter(|(_, a)| !a.is_empty()) {
        arrivals.sort_by_key(|(t, _)| *t);
        let store = store.clone();
        tasks.spawn(async move { gather_contributions(store, head, start, o, arrivals, gather).await });
    }
    let mut contributions = Vec::with_capacity(members.workers.len());
    while let Some(joined) = tasks.join_next().await {
        for (positions, bytes) in joined.context("contribution task")?? {
            contributions.extend(positions);
            out.slot_bytes += bytes;
            out.contribution_bytes = out.contribution_bytes.max(bytes);
            out.slots += 1;
        }
    }
    contributions.sort();
    out.contributions_s = start.elapsed().as_secs_f64();
    out.entries += contributions.len() as u64;
    let contribution_slots = contributions.iter().map(|(p, _)| p.seq).collect::<std::collections::BTreeSet<_>>().len();
    let after_contributions = Seq(head.0 + contribution_slots as u64);

    // Verdicts: each validator scores every contribution, or its share of them (--score-orgs),
    // taking --score-ms for each, and appends, racing the other validators.
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let score_time = std::time::Duration::from_millis(args.score_ms);
    let organisations: std::collections::BTreeSet<String> =
        (0..members.organisations).map(|o| members.organisation(o)).collect();
    let share = args.score_orgs.map(|n| n.max(members.org_quorum()));
    for (v, key) in members.validators.iter().enumerate() {
        let mine = members.organisation(v);
        let verdicts = contributions
            .iter()
            .filter(|(_, worker)| {
                share.is_none_or(|n| trainer::validator::scores((&run, round.0, worker), &mine, &organisations, n))
            })
            .enumerate()
            .map(|(i, &(pos, _))| {
                let score = 100 + (v + i) as i64;
                Entry::sign(run, Body::Verdict(Verdict { round, target: Target::Entry(pos), score }), &[key])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut batch = VerdictBatch::new(Appender::starting_at(store.clone(), after_contributions), verdict_batch);
        tasks.spawn(async move {
            // the validator's loop: check before and after each score, flush what is left at the end
            for verdict in verdicts {
                batch.flush_if_due().await?;
                tokio::time::sleep(score_time).await;
                batch.since.get_or_insert_with(tokio::time::Instant::now);
                batch.pending.push(verdict);
                batch.flush_if_due().await?;
            }
            batch.flush().await?;
            anyhow::Ok((batch.slots, batch.entries, batch.bytes))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (slots, entries, bytes) = joined.context("validator task")??;
        out.slots += slots;
        out.entries += entries;
        out.slot_bytes += bytes;
    }
    out.verdicts_s = start.elapsed().as_secs_f64();

    // Closing: one vote, then one attestation, per organisation (its validator), racing.
    let start = tokio::time::Instant::now();
    let seen = Seq(after_contributions.0 + out.slots - contribution_slots as u64);
    for body in [
        Body::CloseVote(CloseVote { round, seen }),
        Body::Attestation(Attestation { round, state: ledger::StateHash([1; 32]), dropped: Vec::new() }),
    ] {
        let mut tasks = tokio::task::JoinSet::new();
        for key in &members.validators {
            let entry = Entry::sign(run, body.clone(), &[key])?;
            let mut appender = Appender::starting_at(store.clone(), seen);
            tasks.spawn(async move {
                let bytes = ledger::slot::encode_entries(std::slice::from_ref(&entry))?.len() as u64;
                appender.append(std::slice::from_ref(&entry)).await?;
                anyhow::Ok(bytes)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            out.slot_bytes += joined.context("closing task")??;
            out.slots += 1;
            out.entries += 1;
        }
    }
    out.close_s = start.elapsed().as_secs_f64();
    let after = request_counts();
    for (op, n) in after {
        let was = before.get(op).copied().unwrap_or(0);
        if n > was {
            out.requests.insert(op, n - was);
        }
    }
    Ok(out)
}

/// One simulated validator's scored verdicts not yet appended (what `PendingVerdicts` is to
/// `cairn validate`, on the paused clock), with what it appended so far.
/// One organisation's gatherer (research, `--gather-ms`): its workers' signed contributions arrive
/// at their times (each PUT under `pending/`); it appends them as one slot when every one of them
/// is in, or when the oldest waited `gather` (after a LIST and a GET of each, what reading them back
/// costs). Returns each slot's positions and bytes.
async fn gather_contributions(
    store: Store,
    head: Seq,
    start: tokio::time::Instant,
    organisation: usize,
    arrivals: Vec<(std::time::Duration, Entry)>,
    gather: std::time::Duration,
) -> anyhow::Result<Vec<(Vec<(EntryPos, ledger::PublicKey)>, u64)>> {
    let mut appender = Appender::starting_at(store.clone(), head);
    let prefix = format!("pending/{organisation}/");
    let mut slots = Vec::new();
    let mut pending: Vec<Entry> = Vec::new();
    let mut oldest: Option<tokio::time::Instant> = None;
    let total = arrivals.len();
    for (arrived, (at, entry)) in arrivals.into_iter().enumerate() {
        if let Some(due) = oldest.map(|t| t + gather)
            && due <= start + at
        {
            tokio::time::sleep_until(due).await;
            slots.push(append_gathered(&store, &prefix, slots.len(), &mut pending, &mut appender).await?);
            oldest = None;
        }
        tokio::time::sleep_until(start + at).await;
        // The worker's own PUT of its entry; from there it is the gatherer's to append.
        let key = format!("{prefix}{}-{}", slots.len(), pending.len());
        store.put(&key, bytes::Bytes::from(entry.encode())).await?;
        pending.push(entry);
        oldest.get_or_insert_with(tokio::time::Instant::now);
        if arrived + 1 == total || pending.len() == usize::from(ledger::slot::MAX_BATCH_ENTRIES) {
            slots.push(append_gathered(&store, &prefix, slots.len(), &mut pending, &mut appender).await?);
            oldest = None;
        }
    }
    Ok(slots)
}

/// The gatherer reads the pending entries back (a LIST, a GET each) and appends them as one slot.
async fn append_gathered(
    store: &Store,
    prefix: &str,
    batch: usize,
    pending: &mut Vec<Entry>,
    appender: &mut Appender,
) -> anyhow::Result<(Vec<(EntryPos, ledger::PublicKey)>, u64)> {
    store.list(prefix, None).await?;
    for i in 0..pending.len() {
        store.get(&format!("{prefix}{batch}-{i}"), u64::MAX).await?;
    }
    let bytes = ledger::slot::encode_entries(pending)?.len() as u64;
    let seq = appender.append(pending).await?;
    let positions = pending.iter().enumerate().map(|(i, e)| (EntryPos { seq, index: i as u16 }, e.signer())).collect();
    pending.clear();
    Ok((positions, bytes))
}

struct VerdictBatch {
    appender: Appender,
    per_slot: usize,
    pending: Vec<Entry>,
    since: Option<tokio::time::Instant>,
    slots: u64,
    entries: u64,
    bytes: u64,
}

impl VerdictBatch {
    fn new(appender: Appender, per_slot: usize) -> VerdictBatch {
        VerdictBatch { appender, per_slot, pending: Vec::new(), since: None, slots: 0, entries: 0, bytes: 0 }
    }

    async fn flush_if_due(&mut self) -> anyhow::Result<()> {
        if flush_due(self.pending.len(), self.since.map(|t| t.elapsed()), self.per_slot) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Appends the pending verdicts as one slot (none: nothing).
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.bytes += ledger::slot::encode_entries(&self.pending)?.len() as u64;
        self.appender.append(&self.pending).await?;
        self.slots += 1;
        self.entries += self.pending.len() as u64;
        self.pending.clear();
        self.since = None;
        Ok(())
    }
}

/// Polls in `seconds` of a quiet spell (no poll reads anything) paced by `trainer::pace::PollPace`
/// from `base_ms` up to `max_ms`: 8 waits of `base`, then `2 base, 4 base, ..., max, max, ...`
/// (at `max_ms <= base_ms`, every wait is `base_ms`).
fn quiet_polls(seconds: f64, base_ms: u64, max_ms: u64) -> f64 {
    let mut pace = trainer::pace::PollPace::new(
        std::time::Duration::from_millis(base_ms.max(1)),
        std::time::Duration::from_millis(max_ms),
    );
    let busy = max_ms <= base_ms;
    let (mut elapsed, mut polls) = (0.0, 0.0);
    loop {
        let wait = pace.after(u64::from(busy)).as_secs_f64();
        if elapsed + wait > seconds {
            // The rest of the phase at the last wait, as a fraction of a poll.
            return polls + (seconds - elapsed) / wait;
        }
        elapsed += wait;
        polls += 1.0;
    }
}

/// A state of `layout` with entries uniform in ±0.02.
fn random_state(layout: &Layout, rng: &mut StdRng) -> State {
    let mut state = State::zeros(layout.clone());
    for d in state.data_mut() {
        for v in d.iter_mut() {
            *v = rng.random_range(-0.02..0.02);
        }
    }
    state
}

/// `updates` synthetic updates of `config`'s compression to the state hashed `base`.
fn synthetic_updates(
    config: &RunConfig,
    base: StateHash,
    updates: usize,
    rng: &mut StdRng,
) -> anyhow::Result<Vec<verify::Update>> {
    let layout = &config.layout;
    (0..updates)
        .map(|i| {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let header = Header {
                run: RunId([1; 32]),
                round: Round(0),
                base,
                worker: WorkerKey(k),
                layout: layout.hash(),
                compression: config.hyper.compression,
            };
            synthetic(layout, header, rng)
        })
        .collect()
}

/// Median seconds of three `verify::apply` of `updates` synthetic updates at `config`'s layout.
fn time_apply(config: &RunConfig, updates: usize, rng: &mut StdRng) -> anyhow::Result<f64> {
    let state = random_state(&config.layout, rng);
    let decoded = synthetic_updates(config, state.hash(), updates, rng)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let mut s = state.clone();
        let t = Instant::now();
        apply(&mut s, Round(0), &decoded, &config.hyper)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(super::median(times))
}

/// Median seconds of three applications of a round's step at `config`'s layout, as a follower
/// applies it (`RoundStep::apply_hashed`: the state after hashed and checked, the state before's
/// hash already known); `None` unless the rule is sign.
fn time_step_apply(config: &RunConfig, rng: &mut StdRng) -> anyhow::Result<Option<f64>> {
    if config.hyper.step != verify::StepRule::Sign {
        return Ok(None);
    }
    let before = random_state(&config.layout, rng);
    let mut after = before.clone();
    apply(&mut after, Round(0), &synthetic_updates(config, before.hash(), 4, rng)?, &config.hyper)?;
    let step = verify::step::RoundStep::derive(&before, &after, Round(0), &config.hyper)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        step.apply_hashed(&before, step.base, Round(0), &config.hyper)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Some(super::median(times)))
}

/// The run config at `preset` with the defaults, or with `config`'s settings, and the run's
/// snapshot interval in rounds.
fn run_config(preset: &str, config: Option<&PathBuf>) -> anyhow::Result<(RunConfig, u64)> {
    let text = match config {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => format!("{MINIMAL_RUN}{}", super::SIM_ROSTER),
    };
    let mut spec = RunSpec::parse(&text)?;
    spec.run.preset = preset.to_string();
    Ok((spec.genesis_parts(BYTE_VOCAB)?.config, spec.run.snapshot_every))
}

const MINIMAL_RUN: &str = r#"
[run]
preset = "tiny"
[rounds]
max_contributions = 4096
"#;

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!args.workers.is_empty() && !args.workers.contains(&0), "--workers must be positive counts");
    anyhow::ensure!(args.organisations > 0, "--organisations must be positive");
    anyhow::ensure!(args.bandwidth_mbps > 0.0, "--bandwidth-mbps must be positive");
    let most = usize::from(ledger::slot::MAX_BATCH_ENTRIES);
    anyhow::ensure!(
        !args.verdict_batch.is_empty() && args.verdict_batch.iter().all(|&b| (1..=most).contains(&b)),
        "--verdict-batch must be counts from 1 to {most} (entries in one slot)"
    );
    let preset: Preset = args.preset.parse()?;
    let (config, snapshot_every) = run_config(preset.name(), args.config.as_ref())?;
    let params = ModelConfig::preset(preset).layout()?.elements();
    let update_bytes = encoded_len(&config.layout, &config.hyper.compression);
    let dense_bytes = config.layout.elements() * 4;
    println!(
        "bench scale: {} ({params} parameters), update {update_bytes} B ({:.0}x smaller than dense f32), values {:?}, \
         {} organisations, {} Mbit/s links, store requests up to {} ms, arrivals over {} s, {:?} verdicts a slot, {} ms to score one, each scored by {} organisations, \
         at most {} counted a round, contributions gathered by organisation every {} ms (0: each worker appends its own)",
        preset.name(),
        dense_bytes as f64 / update_bytes as f64,
        config.hyper.compression.values,
        args.organisations,
        args.bandwidth_mbps,
        args.store_latency_ms,
        args.arrival_secs,
        args.verdict_batch,
        args.score_ms,
        args.score_orgs.map_or("all".to_string(), |n| format!("{} (at least a majority)", n)),
        config.rounds.max_contributions,
        args.gather_ms,
    );

    // Aggregation, measured here at a smaller preset and scaled by parameters.
    let measure: Preset = args.measure_preset.parse()?;
    let (measured, _) = run_config(measure.name(), args.config.as_ref())?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    const MANY: usize = 32;
    let one = time_apply(&measured, 1, &mut rng)?;
    let many = time_apply(&measured, MANY, &mut rng)?;
    let step_apply_s = time_step_apply(&measured, &mut rng)?;
    let per_update = ((many - one) / (MANY - 1) as f64).max(0.0);
    let fixed = (one - per_update).max(0.0);
    let scale = params as f64 / measured.layout.elements() as f64;
    println!(
        "aggregation measured at {} ({} parameters): {one:.3} s for 1 update, {many:.3} s for {MANY}: {fixed:.3} s + \
         {per_update:.3} s per update, x{scale:.1} for {}",
        measure.name(),
        measured.layout.elements(),
        preset.name()
    );
    if let Some(t) = step_apply_s {
        println!(
            "a round's step applied at {} (the state after hashed and checked): {t:.3} s, x{scale:.1} for {}",
            measure.name(),
            preset.name()
        );
    }

    println!(
        "| workers | verdicts a slot | slots per round | entries | ledger s (contributions, verdicts, close) | store writes / reads (ledger) | \
         upload per worker (MB) | download per participant (MB) | transfer s | aggregation s (extrapolated) | round s | \
         GET requests | ledger GET/HEAD per s | egress (GB) | USD per round | join from snapshot s | follower memory at {} rounds, window {} (GB) | \
         workers following steps: download (MB), USD per round, join s |",
        args.rounds, args.window
    );
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    // Under the sign rule a round is one trit a parameter (verify::step): validators publish it,
    // and workers with `--steps follow` download it instead of every update (docs/SCALE.md).
    let step_bytes =
        (config.hyper.step == verify::StepRule::Sign).then(|| verify::step::RoundStep::encoded_len(&config.layout));
    let mut keys = Vec::new();
    let runs: Vec<(usize, usize)> =
        args.workers.iter().flat_map(|&n| args.verdict_batch.iter().map(move |&b| (n, b))).collect();
    for (n, batch) in runs {
        let organisations = args.organisations.min(n);
        let members = Members::new(n, organisations, &mut StdRng::seed_from_u64(args.seed ^ n as u64));
        let sim_args = Args { organisations, ..args.clone() };
        let seed = args.seed ^ (n as u64).wrapping_mul(0x9e37_79b9);
        let ledger = std::thread::spawn(move || -> anyhow::Result<LedgerRound> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()?;
            rt.block_on(simulate_ledger(&members, update_bytes, &sim_args, batch, seed))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the ledger simulation panicked"))??;

        let participants = (n + organisations) as f64;
        let counted = n.min(config.rounds.max_contributions as usize) as f64;
        let bytes_per_s = args.bandwidth_mbps * 1e6 / 8.0;
        let upload = (update_bytes + ledger.contribution_bytes) as f64;
        let download = counted * update_bytes as f64 + ledger.slot_bytes as f64;
        let transfer_s = (upload + download) / bytes_per_s;
        let aggregation_s = (fixed + per_update * counted) * scale;
        // the ledger's first phase starts when the round opens and includes the arrivals
        let round_s = ledger.seconds() + transfer_s + aggregation_s;
        // every participant reads every slot and every counted blob, and polls while it waits
        // While the ledger phases run, slots keep landing and each poll waits `--poll-ms`; while
        // the members transfer and aggregate, nothing lands and the waits double up to the cap.
        let polls = participants
            * (quiet_polls(ledger.seconds(), args.poll_ms, args.poll_ms)
                + quiet_polls(transfer_s + aggregation_s, args.poll_ms, args.max_poll_ms));
        let ledger_gets = participants * ledger.slots as f64 + polls + ledger.get_priced() as f64;
        let gets = ledger_gets + participants * counted;
        // S3 serves at least 5,500 GET/HEAD a second per partitioned prefix; the log is one prefix
        let ledger_gets_per_s = ledger_gets / round_s;
        let puts = n as f64 + ledger.put_priced() as f64;
        let egress_gb = participants * download / 1e9;
        let usd = puts / 1000.0 * args.put_usd_per_1000
            + gets / 1000.0 * args.get_usd_per_1000
            + egress_gb * args.egress_usd_per_gb;
        // a joiner downloads the newest snapshot (the f32 state), then replays on average half a
        // snapshot interval of rounds: their updates and their aggregation
        let snapshot_every = snapshot_every.max(1) as f64;
        let join_s = (dense_bytes as f64) / bytes_per_s
            + snapshot_every / 2.0 * (counted * update_bytes as f64 / bytes_per_s + aggregation_s);
        // Without a window every entry stays; with one, the entries (and the tree) of `window`
        // rounds and each round's result.
        let memory_gb = match args.window {
            0 => ledger.entries as f64 * args.rounds as f64 * FOLLOWER_BYTES_PER_ENTRY,
            w => {
                ledger.entries as f64 * args.rounds.min(u64::from(w)) as f64 * FOLLOWER_BYTES_PER_ENTRY
                    + args.rounds as f64 * FOLLOWER_BYTES_PER_ROUND
            }
        } / 1e9;
        // Workers following steps download the step and the slots; validators still download
        // every update (they score them) and each organisation's validator uploads the step (one
        // PUT; uploads into the store are free). A joiner through steps replays its half interval
        // at a step a round.
        let with_step = step_bytes.map(|b| {
            let follower = b as f64 + ledger.slot_bytes as f64;
            let egress = (n as f64 * follower + organisations as f64 * download) / 1e9;
            // A follower GETs one step (and its header) instead of every counted update.
            let saved_gets = n as f64 * (counted - 2.0);
            let usd = usd - (egress_gb - egress) * args.egress_usd_per_gb - saved_gets / 1000.0 * args.get_usd_per_1000
                + organisations as f64 / 1000.0 * args.put_usd_per_1000;
            let apply_s = step_apply_s.unwrap_or(0.0) * scale;
            let join = dense_bytes as f64 / bytes_per_s + snapshot_every / 2.0 * (b as f64 / bytes_per_s + apply_s);
            (follower, usd, join)
        });
        let step_cell = with_step.map_or("-".to_string(), |(d, u, j)| format!("{:.1}, {u:.2}, {j:.0}", d / 1e6));
        println!(
            "| {n} | {batch} | {} | {} | {:.1} ({:.1}, {:.1}, {:.1}) | {} / {} | {:.1} | {:.1} | {transfer_s:.1} | {aggregation_s:.1} | \
             {round_s:.1} | {gets:.0} | {ledger_gets_per_s:.0} | {egress_gb:.1} | {usd:.2} | {join_s:.0} | {memory_gb:.1} | \
             {step_cell} |",
            ledger.slots,
            ledger.entries,
            ledger.seconds(),
            ledger.contributions_s,
            ledger.verdicts_s,
            ledger.close_s,
            ledger.put_priced(),
            ledger.get_priced(),
            upload / 1e6,
            download / 1e6,
        );
        eprintln!(
            "bench scale: {n} workers, {batch} verdicts a slot: store requests of the ledger round by operation: {:?}",
            ledger.requests
        );
        keys.push(format!(
            "w{n}_b{batch}_round_s={round_s:.1} w{n}_b{batch}_ledger_s={:.1} w{n}_b{batch}_slots={} \
             w{n}_b{batch}_download_mb={:.1} w{n}_b{batch}_usd_per_round={usd:.2} w{n}_b{batch}_memory_gb={memory_gb:.2} \
             w{n}_b{batch}_ledger_gets_per_s={ledger_gets_per_s:.0}",
            ledger.seconds(),
            ledger.slots,
            download / 1e6
        ));
        if let Some((d, u, j)) = with_step {
            keys.push(format!(
                "w{n}_b{batch}_step_download_mb={:.1} w{n}_b{batch}_step_usd_per_round={u:.2} w{n}_b{batch}_step_join_s={j:.0}",
                d / 1e6
            ));
        }
    }
    if args.gather_ms > 0 {
        keys.insert(0, format!("gather_ms={}", args.gather_ms));
    }
    println!("bench scale: {}", keys.join(" "));
    Ok(Outcome::Ok)
}
