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
//!
//! Then the memory of a participant that follows the run as it grows, the way `Follower` does:
//! after each round, one poll, the index extended, and both told to forget the rounds behind the
//! window ([`Reader::forget_before`], [`RoundRule::forget_before`]). The ledger for this part is a
//! `file://` store in a temporary folder, so that the store's own bytes are not in the process's
//! memory; the figure is the resident memory gained since the follower started, at each size.
//! Each follower runs in a fresh process (this binary, `--follow-only`): RSS does not shrink when
//! a heap is freed, so a follower that ran after the join measurements would reuse their pages.
//! With `--window 0` (no window, as runs were before it existed) it grows with the log.

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
    /// The run's window of rounds (0: none).
    #[arg(long, default_value_t = trainer::run_spec::DEFAULT_WINDOW)]
    window: u32,
    /// Internal: only follow a growing run and print one `followed` line per size (the bench runs
    /// itself this way, one fresh process per window, so that no freed heap hides the growth).
    #[arg(long, hide = true)]
    follow_only: bool,
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
    fn new(rng: &mut ChaCha8Rng, window: u32) -> anyhow::Result<Run> {
        let admin = Keypair::from_seed(rng.random());
        let workers: Vec<Keypair> = (0..ORGS * WORKERS_PER_ORG).map(|_| Keypair::from_seed(rng.random())).collect();
        let validators: Vec<Keypair> = (0..ORGS).map(|_| Keypair::from_seed(rng.random())).collect();
        let mut spec = format!(
            "[run]\npreset = \"tiny\"\nseed = 1\ntotal_rounds = 1000000\n\
             [data]\nsource = \"synthetic\"\nseq_len = 32\n\
             [train]\ntokens_per_round = 64\n\
             [rounds]\nwindow = {window}\n\
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
            window: parts.window,
            once_per_round: parts.once_per_round,
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

/// A follower's memory at one ledger length.
struct Followed {
    size: u64,
    entries: u64,
    rss_gain_bytes: Option<u64>,
    held_entries: usize,
    held_slots: usize,
    /// Merkle leaves held (the tree keeps about as many inner hashes again).
    held_leaves: usize,
    /// Median time of a round's poll, index extension and forgetting, over the segment's last
    /// rounds (at most 50).
    round_us: f64,
}

/// Writes one run up to the largest size while a reader and an index follow it as a participant
/// does, and records the follower's resident memory gain as the ledger passes each size.
async fn follow(run: &Run, sizes: &[u64]) -> anyhow::Result<Vec<Followed>> {
    let dir = std::env::temp_dir().join(format!("cairn-bench-poll-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = follow_in(run, sizes, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn follow_in(run: &Run, sizes: &[u64], dir: &std::path::Path) -> anyhow::Result<Vec<Followed>> {
    let store = storage::open(&format!("file://{}", dir.display())).await?;
    let mut appender = Appender::new(store.clone());
    appender.append(std::slice::from_ref(&run.genesis)).await.context("genesis")?;
    let before = resident_bytes();
    let mut reader = Reader::new(store.clone(), run.run_id);
    let mut rule = RoundRule::empty(&run.config);
    let mut out = Vec::new();
    let mut sizes: Vec<u64> = sizes.to_vec();
    sizes.sort_unstable();
    let mut slot = 1u64;
    let t = Instant::now();
    for size in sizes {
        let rounds = size.div_ceil(ENTRIES_PER_ROUND);
        let mut times = Vec::new();
        for r in reader.state().rounds().open_round().0..rounds {
            for e in run.round(r, slot)? {
                appender.append(std::slice::from_ref(&e)).await.context("append")?;
                slot += 1;
            }
            let timed = Instant::now();
            reader.poll().await.context("poll")?;
            rule.extend(reader.entries());
            let horizon = reader.state().horizon();
            reader.forget_before(horizon, ledger::Seq(u64::MAX));
            rule.forget_before(verify::Round(horizon.0));
            if rounds - r <= 50 {
                times.push(timed.elapsed().as_secs_f64() * 1e6);
            }
            if r % 1000 == 999 {
                eprintln!("  following: {} rounds ({:.0} s)", r + 1, t.elapsed().as_secs_f64());
            }
        }
        ensure!(rule.final_result(verify::Round(rounds - 1)).is_some(), "the follower's index missed a round");
        out.push(Followed {
            size,
            entries: slot - 1,
            rss_gain_bytes: resident_bytes().zip(before).map(|(after, before)| after.saturating_sub(before)),
            held_entries: reader.entries().len(),
            held_leaves: reader.leaves().len(),
            held_slots: reader.slots().len(),
            round_us: median(times),
        });
    }
    Ok(out)
}

/// `1000` → `1k`, `100000` → `100k`, others as they are.
fn size_label(n: u64) -> String {
    if n >= 1000 && n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() }
}

/// Runs `--follow-only` for `window` in a fresh process of this binary and reads its lines back.
fn follow_in_process(args: &Args, window: u32) -> anyhow::Result<Vec<Followed>> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let sizes: Vec<String> = args.sizes.iter().map(u64::to_string).collect();
    let out = std::process::Command::new(&exe)
        .args(["bench", "poll", "--follow-only", "--window", &window.to_string(), "--sizes", &sizes.join(",")])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {} bench poll --follow-only", exe.display()))?;
    ensure!(out.status.success(), "bench poll --follow-only (window {window}) failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: Option<Vec<Followed>> = text
        .lines()
        .filter_map(|l| l.strip_prefix("followed "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let [size, entries, rss, held_entries, held_slots, held_leaves, round_us] = f.as_slice() else {
                return None;
            };
            Some(Followed {
                size: size.parse().ok()?,
                entries: entries.parse().ok()?,
                rss_gain_bytes: rss.parse().ok(),
                held_entries: held_entries.parse().ok()?,
                held_slots: held_slots.parse().ok()?,
                held_leaves: held_leaves.parse().ok()?,
                round_us: round_us.parse().ok()?,
            })
        })
        .collect();
    let parsed = parsed.context("bench poll --follow-only printed a line it should not")?;
    ensure!(
        parsed.len() == args.sizes.len(),
        "bench poll --follow-only measured {} of {} sizes",
        parsed.len(),
        args.sizes.len()
    );
    Ok(parsed)
}

pub async fn run(args: Args) -> anyhow::Result<Outcome> {
    ensure!(!args.sizes.is_empty() && args.sizes.iter().all(|s| *s > 0), "--sizes needs lengths above 0");
    ensure!(args.rounds > 0 && args.idle_polls > 0, "--rounds and --idle-polls must be above 0");
    if args.follow_only {
        let run = Run::new(&mut ChaCha8Rng::seed_from_u64(5), args.window)?;
        for f in follow(&run, &args.sizes).await? {
            let rss = f.rss_gain_bytes.map_or("n/a".into(), |b| b.to_string());
            println!(
                "followed {} {} {rss} {} {} {} {:.1}",
                f.size, f.entries, f.held_entries, f.held_slots, f.held_leaves, f.round_us
            );
        }
        return Ok(Outcome::Ok);
    }
    let url = absolute_url(&args.url)?;
    let root = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    let run = Run::new(&mut ChaCha8Rng::seed_from_u64(5), args.window)?;
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

    println!();
    println!(
        "following the run as it grows: file:// store in a temporary folder; the same run without a window is the baseline"
    );
    println!(
        "| window | entries | follower RSS gained MB | entries held | slot records held | Merkle leaves held | poll + extend + forget per round µs |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    line.push_str(&format!(" window={}", args.window));
    // Each in a fresh process; the baseline is the same run with no window in its genesis.
    for window in [args.window, 0] {
        for f in follow_in_process(&args, window)? {
            println!(
                "| {window} | {} | {} | {} | {} | {} | {:.0} |",
                f.entries,
                f.rss_gain_bytes.map_or("n/a".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                f.held_entries,
                f.held_slots,
                f.held_leaves,
                f.round_us
            );
            let l = format!("{}_w{window}", size_label(f.size));
            line.push_str(&format!(
                " follower_entries_held_{l}={} follower_leaves_held_{l}={} follower_round_us_{l}={:.0}",
                f.held_entries, f.held_leaves, f.round_us
            ));
            if let Some(b) = f.rss_gain_bytes {
                line.push_str(&format!(" follower_rss_mb_{l}={:.1}", b as f64 / 1e6));
            }
        }
    }
    println!("{line}");
    Ok(Outcome::Ok)
}
