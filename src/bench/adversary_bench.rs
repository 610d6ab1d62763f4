//! `cairn bench adversary`: a seeded adversarial simulation of a federation, in the spirit of
//! TigerBeetle's VOPR. Honest organisations run the real participant code against byzantine
//! organisations and a faulty bucket; after every round the simulation checks that the honest
//! participants agree and that no safety property broke.
//!
//! ```text
//!   seed ─▶ FaultStore (failed writes, lost replies, failed reads, unreadable objects)
//!        ─▶ genesis: N organisations, quorum q (default: a majority), the last F byzantine
//!   tick t = 0, 1, ...: every organisation, in a seeded order, takes one step
//!     honest:    Follower::sync ─▶ contribute (a random update through verify's encoder: training
//!                is not what is tested) ─▶ judge the round's contributions (a verdict per
//!                contribution: decodes for this round and base, or UNUSABLE) ─▶
//!                Follower::take_part(simulated time: vote, attest) ─▶ snapshots as workers write them
//!     byzantine: seeded attacks from docs/SECURITY.md (below), or silence
//!   every final round: every honest organisation computed the same state; each honest
//!   contribution counted (or came after the cut); the round closed within its time budget
//!   at the end: a fresh joiner reaches the honest state; cairn audit passes from genesis and from
//!   the newest snapshot
//! ─▶ last line: bench adversary: seed=S ... safety_violations=V stalled_rounds=T (exit 1 if V + T > 0)
//! ```
//!
//! The honest verdict is "decodes" rather than the loss-based score of `cairn validate` (the updates
//! here are random; the score itself is measured in docs/BENCHMARKS.md, "Validator scores"): what
//! the simulation tests is the rule that turns verdicts into rejections and exclusions, not the
//! score. Everything else an honest organisation does is the code `cairn worker` runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use ledger::{Attestation, Body, CloseVote, Contribution, Entry, EntryPos, Keypair, Snapshot, Target, Verdict};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storage::fault::{FaultStore, Faults, Unreadable};
use storage::{RetryPolicy, Store};
use trainer::follow::Follower;
use trainer::model::init_state;
use trainer::run_spec::RunSpec;
use trainer::validator::UNUSABLE_SCORE;
use trainer::worker::{WorkerEvent, after_final, assignment_bytes};
use verify::audit::{AuditOptions, audit};
use verify::{BlobSource, Expected, Header, NotCounted, Round, State, StateHash, WorkerKey};

use crate::Outcome;

/// Seconds of simulated time per tick.
const TICK_SECS: u64 = 1;
/// A round's deadline, in simulated seconds (run.toml's `rounds.deadline_secs`).
const DEADLINE_SECS: u64 = 6;
/// A round that is not final this many ticks after it opened is stalled.
const STALL_TICKS: u64 = 60;
/// Score an honest simulated validator gives a contribution that decodes.
const PASSING_SCORE: i64 = 100;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The seed: every fault, attack and schedule follows from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Organisations in the run (each with a worker and a validator).
    #[arg(long, default_value_t = 4)]
    organisations: u16,
    /// Of them, how many are byzantine (the last ones).
    #[arg(long, default_value_t = 1)]
    byzantine: u16,
    /// The organisation quorum (default: a majority of the organisations).
    #[arg(long)]
    quorum: Option<u16>,
    /// Rounds to run.
    #[arg(long, default_value_t = 8)]
    rounds: u64,
    /// Probability that a bucket write fails, that its reply is lost, that a read fails.
    #[arg(long, default_value_t = 0.02)]
    fault_rate: f64,
    /// Print what happens.
    #[arg(long)]
    verbose: bool,
    /// Allow as many byzantine organisations as the quorum (or more): the promise does not hold
    /// there, and the checks must say so (a control for the simulation itself).
    #[arg(long)]
    beyond_quorum: bool,
}

/// What a byzantine organisation may do in a round (docs/SECURITY.md names each threat).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Attack {
    /// Vote to close right after its own contribution (censor everyone else).
    EarlyVote,
    /// Vote for the next rounds ahead of time (pre-close them).
    FutureVotes,
    /// Attest a state nobody computed.
    WrongAttestation,
    /// Attest with every honest contribution dropped.
    DropHonest,
    /// Attest over and over.
    AttestationSpam,
    /// Contribute, then make its own blob unreadable for good.
    UnreadableBlob,
    /// Name a blob that was never uploaded.
    MissingBlob,
    /// Upload garbage as an update.
    GarbageUpdate,
    /// Name a base nobody has.
    StaleBase,
    /// Fail every honest contribution with its validator.
    FailHonest,
    /// Publish a snapshot entry with the attested state and a garbage blob.
    GarbageSnapshot,
    /// Write garbage into the next free slot (what anyone with bucket write access can do).
    GarbageSlot,
    /// Write a slot ahead of the head, leaving a hole.
    Hole,
    /// Re-append an honest entry's bytes.
    Replay,
    /// Sign tree heads nobody else signs (one beyond the log, one over a wrong root) and write
    /// garbage where an honest member's checkpoint signature will go.
    CheckpointForgery,
    /// Do nothing at all.
    Silence,
}

const ATTACKS: [Attack; 16] = [
    Attack::EarlyVote,
    Attack::FutureVotes,
    Attack::WrongAttestation,
    Attack::DropHonest,
    Attack::AttestationSpam,
    Attack::UnreadableBlob,
    Attack::MissingBlob,
    Attack::GarbageUpdate,
    Attack::StaleBase,
    Attack::FailHonest,
    Attack::GarbageSnapshot,
    Attack::GarbageSlot,
    Attack::Hole,
    Attack::Replay,
    Attack::CheckpointForgery,
    Attack::Silence,
];

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::EarlyVote => "early_vote",
            Attack::FutureVotes => "future_votes",
            Attack::WrongAttestation => "wrong_attestation",
            Attack::DropHonest => "drop_honest",
            Attack::AttestationSpam => "attestation_spam",
            Attack::UnreadableBlob => "unreadable_blob",
            Attack::MissingBlob => "missing_blob",
            Attack::GarbageUpdate => "garbage_update",
            Attack::StaleBase => "stale_base",
            Attack::FailHonest => "fail_honest",
            Attack::GarbageSnapshot => "garbage_snapshot",
            Attack::GarbageSlot => "garbage_slot",
            Attack::Hole => "hole",
            Attack::Replay => "replay",
            Attack::CheckpointForgery => "checkpoint_forgery",
            Attack::Silence => "silence",
        }
    }
}

/// One organisation: a worker key and a validator key, and its view of the run.
struct Org {
    name: String,
    worker: Keypair,
    validator: Keypair,
    byzantine: bool,
    /// Whether its validator runs (seeded: rounds without enough verdicts exercise the verdict
    /// wait, and unreadable blobs are then dropped by the attesters instead of failed by
    /// validators).
    judges: bool,
    follower: Follower,
    /// The tick at which it saw the current round open.
    opened: (Round, u64),
    /// Contributions it judged.
    judged: BTreeSet<EntryPos>,
    /// Failed reads of contributions' blobs, in a row.
    unreadable: BTreeMap<EntryPos, u32>,
    /// Its state hash after each round it applied.
    states: BTreeMap<u64, StateHash>,
    /// This round's attacks (byzantine only), drawn when the round opens.
    attacks: Vec<Attack>,
}

/// Everything the simulation found.
#[derive(Default)]
struct Findings {
    /// Broken safety properties.
    violations: Vec<String>,
    /// Broken liveness: rounds that did not become final in time.
    stalls: Vec<String>,
    honest_contributed: u64,
    honest_counted: u64,
    honest_late: u64,
    attacks: BTreeMap<&'static str, u64>,
    /// Why the byzantine organisations' contributions did not count, by reason.
    byzantine_outcomes: BTreeMap<String, u64>,
    /// Organisations that cosigned the checkpoint the final audit verified (0: none verified).
    checkpoint_organisations: usize,
}

impl Findings {
    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }
}

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    let n = args.organisations;
    anyhow::ensure!((1..=64).contains(&n), "--organisations must be 1 to 64");
    let quorum = args.quorum.unwrap_or(n / 2 + 1);
    anyhow::ensure!(quorum >= 1 && quorum <= n, "--quorum must be 1 to {n}");
    anyhow::ensure!(
        args.byzantine < quorum || args.beyond_quorum,
        "--byzantine must be below the quorum ({quorum}): the promise is for coalitions smaller than it \
         (--beyond-quorum runs it anyway, to see the checks fail)"
    );
    anyhow::ensure!(args.byzantine <= n, "--byzantine must be at most --organisations");
    anyhow::ensure!(
        args.beyond_quorum || n - args.byzantine >= quorum,
        "{} honest organisations cannot reach a quorum of {quorum}: rounds could never close",
        n - args.byzantine
    );
    anyhow::ensure!((0.0..0.5).contains(&args.fault_rate), "--fault-rate must be in [0, 0.5)");
    trainer::set_torch_threads(1);
    let started = Instant::now();
    let seed = args.seed;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let faults = Faults {
        fail_write: args.fault_rate,
        lose_reply: args.fault_rate,
        fail_read: args.fault_rate,
        max_delay_ms: 0,
    };
    let fault_store = FaultStore::new(rng.next_u64(), faults);
    let unreadable = fault_store.unreadable();
    let faults_on = fault_store.switch();
    let policy = RetryPolicy { max_attempts: 8, base_delay_ms: 1, max_delay_ms: 2 };
    let store = Store::from_object_store(Arc::new(fault_store), "sim://", policy).scoped("run")?;

    // The roster: organisation i has a worker and a validator; org 0 also an admin.
    let keys: Vec<(Keypair, Keypair)> = (0..n).map(|_| (key(&mut rng), key(&mut rng))).collect();
    let admin = key(&mut rng);
    let names: Vec<String> = (0..n).map(|i| format!("org{i}")).collect();
    let genesis = write_genesis(&store, &admin, &keys, &names, quorum, args.rounds).await?;
    let mut orgs = Vec::new();
    for (i, (worker, validator)) in keys.into_iter().enumerate() {
        let follower = Follower::join(store.clone()).await.context("joining the simulated run")?;
        orgs.push(Org {
            name: names[i].clone(),
            worker,
            validator,
            byzantine: i >= usize::from(n - args.byzantine),
            judges: rng.random_bool(0.5),
            follower,
            opened: (Round(0), 0),
            judged: BTreeSet::new(),
            unreadable: BTreeMap::new(),
            states: BTreeMap::new(),
            attacks: Vec::new(),
        });
    }
    let layout = genesis.layout().clone();
    let mut findings = Findings::default();
    let mut tick = 0u64;
    let budget = args.rounds.saturating_mul(STALL_TICKS).saturating_add(STALL_TICKS);
    let mut round_opened: BTreeMap<u64, u64> = BTreeMap::from([(0, 0)]);
    loop {
        let honest_round = orgs.iter().filter(|o| !o.byzantine).map(|o| o.follower.round().0).min().unwrap_or(0);
        if honest_round >= args.rounds {
            break;
        }
        if tick > budget {
            findings.stalls.push(format!("the run stopped at round {honest_round} after {tick} ticks"));
            break;
        }
        let opened_at = *round_opened.entry(honest_round).or_insert(tick);
        if tick - opened_at == STALL_TICKS {
            findings.stalls.push(format!("round {honest_round} not final {STALL_TICKS} ticks after it opened"));
        }
        let mut order: Vec<usize> = (0..orgs.len()).collect();
        order.shuffle(&mut rng);
        for i in order {
            let step = if orgs[i].byzantine {
                byzantine_step(
                    &mut orgs,
                    i,
                    tick,
                    &mut rng,
                    &unreadable,
                    &layout,
                    &mut findings,
                    args.rounds,
                    args.beyond_quorum,
                )
                .await
            } else {
                honest_step(&mut orgs[i], tick, &mut rng, &layout, args.rounds).await
            };
            if let Err(e) = step {
                // Injected store faults surface here after the storage layer's retries: a real
                // participant rejoins; here the organisation simply tries again next tick.
                if args.verbose {
                    println!("tick {tick}: {}: {e:#}", orgs[i].name);
                }
            }
        }
        check_rounds(&orgs, &mut findings);
        if args.verbose && tick.is_multiple_of(10) {
            println!("tick {tick}: honest round {honest_round}");
        }
        tick += 1;
    }
    let rounds_closed = orgs.iter().filter(|o| !o.byzantine).map(|o| o.follower.round().0).min().unwrap_or(0);
    // The checks read the truth: no more injected faults (unreadable objects stay unreadable).
    faults_on.store(false, std::sync::atomic::Ordering::SeqCst);
    count_honest(&orgs, &mut findings).await;
    finish(&store, &orgs, &mut findings).await;

    for v in &findings.violations {
        println!("violation: {v}");
    }
    for s in &findings.stalls {
        println!("stalled: {s}");
    }
    let secs = started.elapsed().as_secs_f64();
    let pct = if findings.honest_contributed == 0 {
        100.0
    } else {
        100.0 * findings.honest_counted as f64 / findings.honest_contributed as f64
    };
    let attacks: Vec<String> = findings.attacks.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!("attacks: {}", attacks.join(" "));
    let outcomes: Vec<String> = findings.byzantine_outcomes.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!("byzantine contributions: {}", outcomes.join(" "));
    let failed = !(findings.violations.is_empty() && findings.stalls.is_empty());
    if failed {
        println!(
            "replay it with: cairn bench adversary --seed {seed} --organisations {n} --byzantine {} --quorum {quorum} \
             --rounds {} --fault-rate {}{} --verbose",
            args.byzantine,
            args.rounds,
            args.fault_rate,
            if args.beyond_quorum { " --beyond-quorum" } else { "" }
        );
    }
    println!(
        "bench adversary: seed={seed} organisations={n} byzantine={} quorum={quorum} rounds_closed={rounds_closed} \
         honest_counted_pct={pct:.1} honest_late={} checkpoint_organisations={} safety_violations={} \
         stalled_rounds={} ticks={tick} rounds_per_s={:.2}",
        args.byzantine,
        findings.honest_late,
        findings.checkpoint_organisations,
        findings.violations.len(),
        findings.stalls.len(),
        rounds_closed as f64 / secs.max(1e-9)
    );
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

fn key(rng: &mut ChaCha8Rng) -> Keypair {
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    Keypair::from_seed(seed)
}

/// Writes the genesis of a tiny-model run with these organisations and returns its initial state.
async fn write_genesis(
    store: &Store,
    admin: &Keypair,
    keys: &[(Keypair, Keypair)],
    names: &[String],
    quorum: u16,
    rounds: u64,
) -> anyhow::Result<State> {
    let mut spec = format!(
        "[run]\npreset = \"tiny\"\nseed = 3\ntotal_rounds = {rounds}\nsnapshot_every = 3\n\
         [data]\nsource = \"synthetic\"\nseq_len = 32\n\
         [train]\ntokens_per_round = 64\n\
         [optimizer]\nlr = 0.002\n\
         [rounds]\nmin_contributions = 1\nmax_contributions = 64\ndeadline_secs = {DEADLINE_SECS}\nverdict_wait_secs = {DEADLINE_SECS}\n\
         [validation]\nmin_score = 0\nmax_failures = 2\n\
         [roster]\nquorum = 1\norg_quorum = {quorum}\n\
         [[roster.member]]\nkey = \"{}\"\norganisation = \"{}\"\nrole = \"admin\"\n",
        admin.public(),
        names[0]
    );
    for ((worker, validator), name) in keys.iter().zip(names) {
        for (k, role) in [(worker, "worker"), (validator, "validator")] {
            spec.push_str(&format!(
                "[[roster.member]]\nkey = \"{}\"\norganisation = \"{name}\"\nrole = \"{role}\"\n",
                k.public()
            ));
        }
    }
    let parts = RunSpec::parse(&spec)?.genesis_parts(trainer::model::BYTE_VOCAB)?;
    let state = init_state(&parts.train.model_config()?, parts.train.seed)?;
    let bytes = Bytes::from(state.to_safetensors()?);
    let size = bytes.len() as u64;
    let blob = put_until_ok(store, bytes).await?;
    let genesis = ledger::Genesis {
        org_quorum: parts.org_quorum,
        window: parts.window,
        once_per_round: parts.once_per_round,
        salt: [7; 16],
        ..ledger::Genesis::new(
            parts.config.encode()?,
            parts.roster,
            parts.quorum,
            ledger::StateHash(state.hash().0),
            blob,
            size,
        )
    };
    let entry = Entry::sign(genesis.run_id(), Body::Genesis(genesis), &[admin])?;
    for _ in 0..100 {
        if ledger::write_genesis(store, &entry).await.is_ok() {
            return Ok(state);
        }
    }
    bail!("could not write the genesis through the faulty store")
}

async fn put_until_ok(store: &Store, bytes: Bytes) -> anyhow::Result<ledger::BlobId> {
    let mut last = None;
    for _ in 0..100 {
        match store.put_blob(bytes.clone()).await {
            Ok(id) => return Ok(id),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from))
}

/// A random update of `key` for the follower's open round, through verify's encoder.
fn random_update(
    follower: &Follower,
    key: &Keypair,
    rng: &mut ChaCha8Rng,
    layout: &verify::Layout,
) -> anyhow::Result<Bytes> {
    let data = layout
        .tensors()
        .iter()
        .map(|t| (0..t.elements()).map(|_| rng.random_range(-0.01f32..0.01)).collect())
        .collect();
    let momentum = State::from_parts(layout.clone(), data)?;
    let info = follower.info();
    let header = Header {
        run: verify::RunId(info.run_id.0),
        round: follower.round(),
        base: follower.state_hash(),
        worker: WorkerKey(key.public().0),
        layout: layout.hash(),
        compression: info.config.hyper.compression,
    };
    Ok(Bytes::from(verify::encode(&momentum, &header)?.to_bytes()))
}

async fn contribute(follower: &mut Follower, key: &Keypair, blob: Bytes, base: StateHash) -> anyhow::Result<()> {
    let info = follower.info().clone();
    let size = blob.len() as u64;
    let id = info.store.put_blob(blob).await?;
    contribute_entry(follower, key, id, size, base).await
}

async fn contribute_entry(
    follower: &mut Follower,
    key: &Keypair,
    blob: ledger::BlobId,
    size: u64,
    base: StateHash,
) -> anyhow::Result<()> {
    let round = follower.round();
    let body = Body::Contribution(Contribution {
        round: ledger::Round(round.0),
        base_state: ledger::StateHash(base.0),
        assignment: assignment_bytes(round, 1),
        blob,
        blob_size: size,
        metrics: vec![],
    });
    let run_id = follower.info().run_id;
    follower.append(Entry::sign(run_id, body, &[key])?).await?;
    Ok(())
}

/// Judges every contribution of the open round: PASSING_SCORE if it decodes for its round, base and
/// worker, UNUSABLE otherwise; `fail_all` gives every one a failing score (a hostile validator).
async fn judge(org: &mut Org, fail_all: bool) -> anyhow::Result<()> {
    let follower = &mut org.follower;
    let info = follower.info().clone();
    let round = follower.round();
    let todo: Vec<(EntryPos, ledger::PublicKey, ledger::BlobId, u64)> = follower
        .reader()
        .by_round(ledger::Round(round.0))
        .filter(|e| !org.judged.contains(&e.pos))
        .filter_map(|e| match e.entry.as_ref().map(|x| (&x.body, x.signer())) {
            Some((Body::Contribution(c), signer)) => Some((e.pos, signer, c.blob, c.blob_size)),
            _ => None,
        })
        .collect();
    for (pos, signer, blob, size) in todo {
        let score = if fail_all {
            -PASSING_SCORE
        } else {
            let bytes = match follower.blobs().blob(blob, size.min(1 << 24)).await {
                Ok(b) => Some(b),
                // As `cairn validate` does: unusable after as many failed reads as make an
                // attester drop it, else look again next tick.
                Err(_) => {
                    let failures = org.unreadable.entry(pos).or_default();
                    *failures += 1;
                    if *failures < trainer::follow::DROP_AFTER_FAILED_READS {
                        continue;
                    }
                    None
                }
            };
            let expected = Expected {
                run: verify::RunId(info.run_id.0),
                round,
                base: follower.state_hash(),
                worker: WorkerKey(signer.0),
                layout: &info.config.layout,
                compression: info.config.hyper.compression,
            };
            match bytes {
                Some(bytes) if verify::decode(&bytes, &expected).is_ok() => PASSING_SCORE,
                _ => UNUSABLE_SCORE,
            }
        };
        let body = Body::Verdict(Verdict { round: ledger::Round(round.0), target: Target::Entry(pos), score });
        follower.append(Entry::sign(info.run_id, body, &[&org.validator])?).await?;
        org.judged.insert(pos);
    }
    Ok(())
}

/// Syncs, records the state of every round applied, and writes snapshots as a worker would.
async fn sync(org: &mut Org) -> anyhow::Result<()> {
    for report in org.follower.sync().await? {
        org.states.insert(report.round.0, report.state);
        let mut ignore = |_: WorkerEvent| {};
        after_final(&mut org.follower, &org.worker, &report, &mut ignore).await?;
    }
    Ok(())
}

fn open_for(org: &mut Org, tick: u64) -> Duration {
    let round = org.follower.round();
    if org.opened.0 != round {
        org.opened = (round, tick);
    }
    Duration::from_secs((tick - org.opened.1) * TICK_SECS)
}

async fn honest_step(
    org: &mut Org,
    tick: u64,
    rng: &mut ChaCha8Rng,
    layout: &verify::Layout,
    rounds: u64,
) -> anyhow::Result<()> {
    sync(org).await?;
    if org.follower.round().0 >= rounds {
        return Ok(());
    }
    let key = org.worker.clone();
    if !org.follower.is_closed() && !org.follower.has_contributed(&key.public()) {
        let blob = random_update(&org.follower, &key, rng, layout)?;
        let base = org.follower.state_hash();
        contribute(&mut org.follower, &key, blob, base).await?;
    }
    if org.judges {
        judge(org, false).await?;
    }
    let open = open_for(org, tick);
    org.follower.take_part(&key, open).await?;
    sync(org).await
}

#[allow(clippy::too_many_arguments)]
async fn byzantine_step(
    orgs: &mut [Org],
    i: usize,
    tick: u64,
    rng: &mut ChaCha8Rng,
    unreadable: &Unreadable,
    layout: &verify::Layout,
    findings: &mut Findings,
    rounds: u64,
    collude: bool,
) -> anyhow::Result<()> {
    let honest_entries: Vec<Bytes> = orgs
        .iter()
        .filter(|o| !o.byzantine)
        .flat_map(|o| o.follower.reader().by_signer(&o.worker.public()).map(|e| e.bytes.clone()).collect::<Vec<_>>())
        .collect();
    let honest_keys: Vec<ledger::PublicKey> =
        orgs.iter().filter(|o| !o.byzantine).flat_map(|o| [o.worker.public(), o.validator.public()]).collect();
    let org = &mut orgs[i];
    sync(org).await?;
    let round = org.follower.round();
    if round.0 >= rounds {
        return Ok(());
    }
    if org.opened.0 != round || org.attacks.is_empty() {
        let mut pool = ATTACKS.to_vec();
        pool.shuffle(rng);
        org.attacks = pool.into_iter().take(rng.random_range(1..=4)).collect();
        if collude {
            // Beyond the quorum, the coalition acts together: it closes early and attests its lie.
            org.attacks.retain(|a| !matches!(a, Attack::Silence));
            org.attacks.extend([Attack::EarlyVote, Attack::WrongAttestation]);
        }
        org.opened = (round, tick);
        for a in &org.attacks {
            *findings.attacks.entry(a.name()).or_default() += 1;
        }
    }
    let attacks = org.attacks.clone();
    let key = org.worker.clone();
    let run_id = org.follower.info().run_id;
    let store = org.follower.info().store.clone();
    let closed = org.follower.is_closed();
    let contributed = org.follower.has_contributed(&key.public());
    let base = org.follower.state_hash();
    for attack in attacks {
        match attack {
            Attack::Silence => return Ok(()),
            Attack::EarlyVote if !closed => {
                let seen = org.follower.reader().next_seq();
                let vote = Body::CloseVote(CloseVote { round: ledger::Round(round.0), seen });
                org.follower.append(Entry::sign(run_id, vote, &[&key])?).await?;
            }
            Attack::FutureVotes => {
                for ahead in 1..=3 {
                    let seen = org.follower.reader().next_seq();
                    let vote = Body::CloseVote(CloseVote { round: ledger::Round(round.0 + ahead), seen });
                    org.follower.append(Entry::sign(run_id, vote, &[&key])?).await?;
                }
            }
            Attack::WrongAttestation | Attack::DropHonest | Attack::AttestationSpam if closed => {
                let times = if attack == Attack::AttestationSpam { 10 } else { 1 };
                let honest: Vec<EntryPos> = org
                    .follower
                    .reader()
                    .by_round(ledger::Round(round.0))
                    .filter(|e| e.validity.is_accept())
                    .filter(|e| matches!(e.entry.as_ref().map(|x| &x.body), Some(Body::Contribution(_))))
                    .map(|e| e.pos)
                    .filter(|p| {
                        org.follower
                            .reader()
                            .state()
                            .rounds()
                            .close(ledger::Round(round.0))
                            .is_some_and(|c| p.seq < c.cut)
                    })
                    .collect();
                for n in 0..times {
                    // The coalition's agreed lie: every byzantine organisation attests the same
                    // state for the round (what colluders would do; with fewer than the quorum it
                    // can never become the result).
                    let mut lie = blake3::Hasher::new();
                    lie.update(b"coalition").update(&round.0.to_le_bytes()).update(&(n as u64).to_le_bytes());
                    let state = *lie.finalize().as_bytes();
                    let dropped = if attack == Attack::DropHonest { honest.clone() } else { vec![] };
                    let body = Body::Attestation(Attestation {
                        round: ledger::Round(round.0),
                        state: ledger::StateHash(state),
                        dropped,
                    });
                    org.follower.append(Entry::sign(run_id, body, &[&key])?).await?;
                }
            }
            Attack::UnreadableBlob if !contributed && !closed => {
                let blob = random_update(&org.follower, &key, rng, layout)?;
                let id = ledger::BlobId::of(&blob);
                contribute(&mut org.follower, &key, blob, base).await?;
                unreadable.add(&format!("run/{}", id.key()));
            }
            Attack::MissingBlob if !contributed && !closed => {
                let blob = random_update(&org.follower, &key, rng, layout)?;
                let size = blob.len() as u64;
                contribute_entry(&mut org.follower, &key, ledger::BlobId::of(&blob), size, base).await?;
            }
            Attack::GarbageUpdate if !contributed && !closed => {
                let len = random_update(&org.follower, &key, rng, layout)?.len();
                let mut garbage = vec![0u8; len];
                rng.fill_bytes(&mut garbage);
                contribute(&mut org.follower, &key, Bytes::from(garbage), base).await?;
            }
            Attack::StaleBase if !contributed && !closed => {
                let blob = random_update(&org.follower, &key, rng, layout)?;
                contribute(&mut org.follower, &key, blob, StateHash([0xAB; 32])).await?;
            }
            Attack::FailHonest => judge(org, true).await?,
            Attack::GarbageSnapshot => {
                let last = org.follower.reader().state().rounds().finals().last().map(|(r, f)| (r, f.state));
                if let Some((r, state)) = last {
                    let mut garbage = vec![0u8; 256];
                    rng.fill_bytes(&mut garbage);
                    let blob = store.put_blob(Bytes::from(garbage)).await?;
                    let body = Body::Snapshot(Snapshot { round: r, state, blob, blob_size: 256 });
                    org.follower.append(Entry::sign(run_id, body, &[&key])?).await?;
                }
            }
            Attack::GarbageSlot => {
                let next = org.follower.reader().next_seq();
                let mut garbage = vec![0u8; 40];
                rng.fill_bytes(&mut garbage);
                store.put_if_absent(&ledger::seq_key(next), Bytes::from(garbage)).await?;
            }
            Attack::Hole => {
                let ahead = ledger::Seq(org.follower.reader().next_seq().0 + rng.random_range(2..10));
                let vote = Body::CloseVote(CloseVote { round: ledger::Round(round.0), seen: ledger::Seq(0) });
                let slot = ledger::slot::encode_entries(&[Entry::sign(run_id, vote, &[&key])?])?;
                store.put_if_absent(&ledger::seq_key(ahead), slot).await?;
            }
            Attack::CheckpointForgery => {
                use ledger::checkpoint::checkpoint_key;
                let head = org.follower.reader().next_seq().0;
                let mut root = [0u8; 32];
                rng.fill_bytes(&mut root);
                for size in [head + 1000, head] {
                    let cp = ledger::Checkpoint { run_id, size, root: ledger::Hash(root) };
                    let bytes = Bytes::from(ledger::SignedCheckpoint::sign(cp, &key).encode());
                    store.put_if_absent(&checkpoint_key(size, &key.public()), bytes).await?;
                }
                if let Some(victim) = honest_keys.choose(rng) {
                    let size = head + rng.random_range(1..20);
                    store.put_if_absent(&checkpoint_key(size, victim), Bytes::from_static(b"garbage")).await?;
                }
            }
            Attack::Replay => {
                if let Some(bytes) = honest_entries.choose(rng) {
                    let next = org.follower.reader().next_seq();
                    let mut appender = ledger::Appender::starting_at(store.clone(), next);
                    appender.append_slot(ledger::slot::encode_slot(&[bytes.to_vec()])?).await?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every round that two honest organisations both applied must have the same state hash there.
fn check_rounds(orgs: &[Org], findings: &mut Findings) {
    let honest: Vec<&Org> = orgs.iter().filter(|o| !o.byzantine).collect();
    let Some(first) = honest.first() else { return };
    for other in &honest[1..] {
        for (round, state) in &other.states {
            if let Some(mine) = first.states.get(round)
                && mine != state
            {
                let what = format!("round {round}: {} computed {mine}, {} computed {state}", first.name, other.name);
                if !findings.violations.contains(&what) {
                    findings.violation(what);
                }
            }
        }
    }
}

/// Honest contributions: each must count, or have come after the cut. Read from a full replay of
/// an honest organisation's ledger (the round rule needs each round's base).
async fn count_honest(orgs: &[Org], findings: &mut Findings) {
    let Some(judge) = orgs.iter().find(|o| !o.byzantine) else { return };
    let honest: BTreeSet<WorkerKey> =
        orgs.iter().filter(|o| !o.byzantine).map(|o| WorkerKey(o.worker.public().0)).collect();
    let reader = judge.follower.reader();
    let blobs = verify::replay::RunBlobs::of_reader(judge.follower.info().store.clone(), reader);
    let replayed = match verify::replay::replay_from_genesis(reader.entries(), &blobs).await {
        Ok(r) => r,
        Err(e) => {
            findings.violation(format!("an honest organisation's ledger does not replay from genesis: {e}"));
            return;
        }
    };
    // Per round, the smallest `seen` of the honest organisations' accepted close votes.
    let honest_keys: BTreeSet<ledger::PublicKey> =
        orgs.iter().filter(|o| !o.byzantine).flat_map(|o| [o.worker.public(), o.validator.public()]).collect();
    let mut honest_seen: BTreeMap<u64, ledger::Seq> = BTreeMap::new();
    for e in reader.entries().iter().filter(|e| e.validity.is_accept()) {
        if let Some(entry) = &e.entry
            && let Body::CloseVote(v) = &entry.body
            && honest_keys.contains(&entry.signer())
        {
            let seen = honest_seen.entry(v.round.0).or_insert(v.seen);
            *seen = (*seen).min(v.seen);
        }
    }
    for r in &replayed.report.rounds {
        for (_, why) in r.not_counted.iter().filter(|(c, _)| !honest.contains(&c.worker)) {
            *findings.byzantine_outcomes.entry(verify::audit::not_counted_kind(why)).or_default() += 1;
        }
        let byzantine_counted = r.counted.iter().filter(|c| !honest.contains(&c.worker)).count() as u64;
        *findings.byzantine_outcomes.entry("counted".into()).or_default() += byzantine_counted;
        let counted = r.counted.iter().filter(|c| honest.contains(&c.worker)).count() as u64;
        findings.honest_contributed += counted;
        findings.honest_counted += counted;
        for (c, why) in r.not_counted.iter().filter(|(c, _)| honest.contains(&c.worker)) {
            findings.honest_contributed += 1;
            match why {
                // Late is what a straggler gets; before every honest organisation's vote it is
                // censorship (the cut came from byzantine votes alone).
                NotCounted::Late { .. } if honest_seen.get(&r.round.0).is_some_and(|&seen| c.pos.seq < seen) => {
                    findings.violation(format!(
                        "round {}: honest contribution at {} censored: late, though every honest vote had read past it",
                        r.round, c.pos
                    ))
                }
                NotCounted::Late { .. } => findings.honest_late += 1,
                // Someone re-appended the honest entry's bytes: the original is what counts.
                NotCounted::Void(ledger::VoidReason::Duplicate) => findings.honest_contributed -= 1,
                why => findings
                    .violation(format!("round {}: honest contribution at {} not counted: {why}", r.round, c.pos)),
            }
        }
    }
}

/// After the run: a fresh joiner reaches the honest state, and the audit passes from genesis and
/// from the newest snapshot with that state.
async fn finish(store: &Store, orgs: &[Org], findings: &mut Findings) {
    let Some(honest) = orgs.iter().find(|o| !o.byzantine) else { return };
    let (round, state) = (honest.follower.round(), honest.follower.state_hash());
    match Follower::join(store.clone()).await {
        Ok(joiner) if joiner.round() == round && joiner.state_hash() != state => findings.violation(format!(
            "a fresh joiner reached {} at round {round}, the honest organisations {state}",
            joiner.state_hash()
        )),
        Ok(_) => {}
        Err(e) => findings.violation(format!("a fresh joiner could not join: {e}")),
    }
    for from_snapshot in [false, true] {
        let from = if from_snapshot { "the newest snapshot" } else { "genesis" };
        let options = AuditOptions {
            from_snapshot,
            initial_state: Some(crate::audit_cmd::initial_state_rule()),
            ..AuditOptions::default()
        };
        match audit(store, &options, &mut |_| {}).await {
            Ok(report) if !report.passed() => {
                findings.violation(format!("the audit from {from} fails: {}", report.first_problem.unwrap_or_default()))
            }
            Ok(report) if report.open_round == round.0 && report.state != state.to_hex() => findings.violation(
                format!("the audit from {from} computed {}, the honest organisations {state}", report.state),
            ),
            Ok(report) => {
                if let verify::audit::CheckpointStatus::Verified { organisations, .. } = &report.checkpoint {
                    findings.checkpoint_organisations = organisations.len();
                }
            }
            Err(e) => findings.violation(format!("the audit from {from} could not run: {e}")),
        }
    }
}
