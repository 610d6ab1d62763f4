//! `cairn bench poll`: what following a long run costs, against the ledger's length.
//!
//! For each size (entries in the ledger), in a fresh prefix of the store: a genesis with two
//! organisations (four workers and a validator each, an organisation quorum of 2), then rounds of
//! 12 single-entry slots (8 contributions, 2 close votes, 2 attestations: the round becomes final).
//! Then a fresh reader replays it all (what joining costs, linear by nature), and the figures a
//! participant pays on every poll are measured at that length:
//! - an idle poll (nothing new: one read at the head);
//! - per new slot (one more round of 12 slots, written one at a time): the poll that reads it,
//!   and the round rule's index brought up to date the way a follower does it
//!   ([`RoundRule::extend`]) against rebuilding it from every entry ([`RoundRule::new`], what a
//!   follower did on every decision before, the baseline);
//! - the process's resident memory taken by the reader and the index (VmRSS after minus before
//!   the replay; Linux only).
//!
//! Poll and extend should stay flat as the ledger grows; the rebuild grows linearly.

use std::time::Instant;

use anyhow::{Context, ensure};
use ledger::{Appender, Attestation, BlobId, Body, CloseVote, Contribution, Entry, Keypair, Reader, Round, RunId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storage::Store;
use trainer::run_spec::RunSpec;
use verify::{RoundRule, RunConfig};

use crate::Outcome;
use crate::bench::median;
use crate::store_cmd::absolute_url;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store URL: memory:// (the default: the cost of cairn's own work), file:///abs/dir, s3://bucket/prefix.
    #[arg(long, default_value = "memory://")]
    url: String,
    /// Ledger lengths to measure at, in entries (rounded up to whole rounds of 12).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<u64>,
    /// Idle polls timed at each size.
    #[arg(long, default_value_t = 200)]
    idle_polls: u32,
    /// Rounds appended and timed slot by slot at each size.
    #[arg(long, default_value_t = 3)]
    rounds: u64,
}

const ORGS: usize = 2;
const WORKERS_PER_ORG: usize = 4;
const ENTRIES_PER_ROUND: u64 = (ORGS * WORKERS_PER_ORG + 2 * ORGS) as u64;

/// The keys of the benchmark's run.
struct Run {
    run_id: RunId,
    config: RunConfig,
    genesis: Entry,
    workers: Vec<Keypair>,
    validators: Vec<Keypair>,
}

impl Run {
    fn new(rng: &mut ChaCha8Rng) -> anyhow::Result<Run> {
        let admin = Keypair::from_seed(rng.random());
        let workers: Vec<Keypair> = (0..ORGS * WORKERS_PER_ORG).map(|_| Keypair::from_seed(rng.random())).collect();
        let validators: Vec<Keypair> = (0..ORGS).map(|_| Keypair::from_seed(rng.random())).collect();
        let mut spec = format!(
            "[run]\npreset = \"tiny\"\nseed = 1\ntotal_rounds = 1000000\n\
             [data]\nsource = \"synthetic\"\nseq_len = 32\n\
             [train]\ntokens_per_round = 64\n\
             [roster]\nquorum = 1\norg_quorum = {ORGS}\n\
             [[roster.member]]\nkey = \"{}\"\norganisation = \"org-0\"\nrole = \"admin\"\n",
            admin.public()
        );
        let members = workers.iter().enumerate().map(|(i, k)| (k, i / WORKERS_PER_ORG, "worker"));
        for (key, org, role) in members.chain(validators.iter().enumerate().map(|(o, k)| (k, o, "validator"))) {
            spec.push_str(&format!(
                "[[roster.member]]\nkey = \"{}\"\norganisation = \"org-{org}\"\nrole = \"{role}\"\n",
                key.public()
            ));
        }
        let parts = RunSpec::parse(&spec)?.genesis_parts(trainer::model::BYTE_VOCAB)?;
        let genesis = ledger::Genesis {
            org_quorum: parts.org_quorum,
            ..ledger::Genesis::new(
                parts.config.encode()?,
                parts.roster,
                parts.quorum,
                ledger::StateHash([1; 32]),
                BlobId([2; 32]),
                1,
            )
        };
        let run_id = genesis.run_id();
        let genesis = Entry::sign(run_id, Body::Genesis(genesis), &[&admin])?;
        Ok(Run { run_id, config: parts.config, genesis, workers, validators })
    }

    /// Round `round`'s 12 entries, in the order they are appended; `seen` is the slot the first
    /// close vote lands in.
    fn round(&self, round: u64, first_slot: u64) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(ENTRIES_PER_ROUND as usize);
        for (w, key) in self.workers.iter().enumerate() {
            let c = Contribution {
                round: Round(round),
                base_state: ledger::StateHash([3; 32]),
                assignment: round.to_be_bytes().to_vec(),
                blob: BlobId::of(&[round.to_be_bytes(), (w as u64).to_be_bytes()].concat()),
                blob_size: 4096,
                metrics: vec![("loss_milli".into(), 2400)],
            };
            out.push(Entry::sign(self.run_id, Body::Contribution(c), &[key])?);
        }
        let votes_at = first_slot + self.workers.len() as u64;
        for (i, v) in self.validators.iter().enumerate() {
            let vote = CloseVote { round: Round(round), seen: ledger::Seq(votes_at + i as u64) };
            out.push(Entry::sign(self.run_id, Body::CloseVote(vote), &[v])?);
        }
        let state = ledger::StateHash(*blake3::hash(&round.to_be_bytes()).as_bytes());
        for v in &self.validators {
            let a = Attestation { round: Round(round), state, dropped: Vec::new() };
            out.push(Entry::sign(self.run_id, Body::Attestation(a), &[v])?);
        }
        Ok(out)
    }
}

/// The process's resident memory, in bytes (Linux; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

/// What was measured at one ledger length.
struct Measured {
    entries: u64,
    replay_s: f64,
    rss_bytes: Option<u64>,
    idle_poll_us: f64,
    new_slot_poll_us: f64,
    extend_us: f64,
    rebuild_us: f64,
}

async fn measure(root: &Store, run: &Run, size: u64, args: &Args) -> anyhow::Result<Measured> {
    let prefix = format!("bench-poll-{:016x}", rand::random::<u64>());
    let store = root.scoped(&prefix)?;
    let mut appender = Appender::new(store.clone());
    appender.append(std::slice::from_ref(&run.genesis)).await.context("genesis")?;
    let rounds = size.div_ceil(ENTRIES_PER_ROUND);
    let t = Instant::now();
    let mut slot = 1u64;
    for r in 0..rounds {
        for e in run.round(r, slot)? {
            appender.append(std::slice::from_ref(&e)).await.context("append")?;
            slot += 1;
        }
        if r % 1000 == 999 {
            eprintln!("  {size}: wrote {} of {rounds} rounds ({:.0} s)", r + 1, t.elapsed().as_secs_f64());
        }
    }

    let before = resident_bytes();
    let t = Instant::now();
    let mut reader = Reader::replay(store.clone(), run.run_id).await.context("replay")?;
    let mut rule = RoundRule::new(reader.entries(), &run.config);
    let replay_s = t.elapsed().as_secs_f64();
    let rss_bytes = resident_bytes().zip(before).map(|(after, before)| after.saturating_sub(before));
    let entries = reader.entries().len() as u64;
    let void = reader.entries().iter().filter(|e| !e.validity.is_accept()).count();
    ensure!(void == 0, "{void} of {entries} entries are void in the benchmark's own ledger");
    ensure!(
        rule.final_result(verify::Round(rounds - 1)).is_some(),
        "round {} is not final in the benchmark's own ledger",
        rounds - 1
    );

    let mut idle = Vec::new();
    for _ in 0..args.idle_polls {
        let t = Instant::now();
        let n = reader.poll().await.context("idle poll")?;
        idle.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(n == 0, "an idle poll read {n} slots");
    }

    let (mut polls, mut extends, mut rebuilds) = (Vec::new(), Vec::new(), Vec::new());
    for r in rounds..rounds + args.rounds {
        for e in run.round(r, slot)? {
            appender.append(std::slice::from_ref(&e)).await.context("append")?;
            slot += 1;
            let t = Instant::now();
            let n = reader.poll().await.context("poll")?;
            polls.push(t.elapsed().as_secs_f64() * 1e6);
            ensure!(n == 1, "a poll after one append read {n} slots");
            let t = Instant::now();
            rule.extend(reader.entries());
            extends.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let rebuilt = RoundRule::new(reader.entries(), &run.config);
            rebuilds.push(t.elapsed().as_secs_f64() * 1e6);
            ensure!(rebuilt.end() == rule.end(), "the extended index and the rebuilt one disagree on the end");
        }
        let r = verify::Round(r);
        ensure!(
            rule.final_result(r).is_some() && rule.close(r) == RoundRule::new(reader.entries(), &run.config).close(r),
            "the extended index does not see round {} final as the rebuilt one does",
            r.0
        );
    }
    Ok(Measured {
        entries,
        replay_s,
        rss_bytes,
        idle_poll_us: median(idle),
        new_slot_poll_us: median(polls),
        extend_us: median(extends),
        rebuild_us: median(rebuilds),
    })
}

/// `1000` → `1k`, `100000` → `100k`, others as they are.
fn size_label(n: u64) -> String {
    if n >= 1000 && n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() }
}

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    ensure!(!args.sizes.is_empty() && args.sizes.iter().all(|s| *s > 0), "--sizes needs lengths above 0");
    ensure!(args.rounds > 0 && args.idle_polls > 0, "--rounds and --idle-polls must be above 0");
    let url = absolute_url(&args.url)?;
    let root = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    let run = Run::new(&mut ChaCha8Rng::seed_from_u64(5))?;
    println!("store {url}; rounds of {ENTRIES_PER_ROUND} single-entry slots; medians");
    println!(
        "| entries | join (replay + index) s | reader + index RSS MB | idle poll µs | poll of 1 new slot µs | index extend µs | index rebuild µs (baseline) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut all = Vec::new();
    for &size in &args.sizes {
        let m = measure(&root, &run, size, &args).await?;
        println!(
            "| {} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            m.entries,
            m.replay_s,
            m.rss_bytes.map_or("n/a".into(), |b| format!("{:.1}", b as f64 / 1e6)),
            m.idle_poll_us,
            m.new_slot_poll_us,
            m.extend_us,
            m.rebuild_us
        );
        all.push((size, m));
    }
    let mut line = String::from("bench poll:");
    for (size, m) in &all {
        let l = size_label(*size);
        line.push_str(&format!(
            " idle_poll_us_{l}={:.1} new_slot_poll_us_{l}={:.1} extend_us_{l}={:.1} rebuild_us_{l}={:.0} join_s_{l}={:.2}",
            m.idle_poll_us, m.new_slot_poll_us, m.extend_us, m.rebuild_us, m.replay_s
        ));
        if let Some(b) = m.rss_bytes {
            line.push_str(&format!(" rss_bytes_per_entry_{l}={:.0}", b as f64 / m.entries as f64));
        }
    }
    if let (Some((_, first)), Some((_, last))) = (all.first(), all.last()) {
        line.push_str(&format!(
            " extend_growth_x={:.2} poll_growth_x={:.2} rebuild_growth_x={:.1}",
            last.extend_us / first.extend_us,
            last.new_slot_poll_us / first.new_slot_poll_us,
            last.rebuild_us / first.rebuild_us
        ));
    }
    println!("{line}");
    Ok(Outcome::Ok)
}
