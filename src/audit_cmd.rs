//! `cairn audit`, `cairn status` and `cairn gc`: what an auditor and an operator run against a
//! run's store. The checks live in `verify::audit`; this file draws progress, prints reports and
//! maps verdicts to exit codes (docs/AUDIT.md).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ledger::{Body, Kind, LoggedEntry, Reader, Role};
use verify::audit::{AuditOptions, AuditProgress, AuditReport, CheckpointStatus, StartPoint};

use crate::Outcome;
use crate::store_cmd::absolute_url;

/// Lines of a list printed before "... and N more" (the JSON report has them all).
const MAX_LISTED: usize = 50;
/// Hex characters of a key or hash shown in tables.
const PREFIX_HEX: usize = 12;
/// Rounds of the loss curve shown after the first.
const LOSS_CURVE_ROUNDS: usize = 10;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run, memory:// (read access is enough)
    #[arg(long)]
    store: String,
    /// Replay from the newest snapshot whose state a quorum of organisations attested and whose
    /// blob reads, not from genesis (faster; needed after `cairn gc`).
    #[arg(long)]
    from_snapshot: bool,
    /// Organisations whose members must have cosigned a tree head for the audit to take it as
    /// the checkpoint (default: the run's org quorum; lower only to inspect a run by hand).
    #[arg(long, value_name = "N")]
    checkpoint_organisations: Option<u16>,
    /// Print the report as one JSON object and nothing else; the exit code carries OK/FAIL.
    #[arg(long)]
    json: bool,
    /// A witness file kept between audits: if present, the log must extend the checkpoint it
    /// holds (a slot rewritten since is named); after a passing audit with a verified
    /// checkpoint it is (re)written.
    #[arg(long)]
    witness: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run, memory://
    #[arg(long)]
    store: String,
    /// How many of the latest contributions to list.
    #[arg(long, default_value_t = 10)]
    last: usize,
    /// Print the run's figures as one JSON object (what `cairn dashboard` serves under `ledger`
    /// at /api/run; docs/DASHBOARD.md) and nothing else.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run (write access needed to delete)
    #[arg(long)]
    store: String,
    /// Delete the update blobs behind the newest confirmed snapshot. Without it, gc only prints
    /// what it would delete.
    #[arg(long, alias = "before-snapshot")]
    delete: bool,
    /// Audit from the newest snapshot instead of from genesis before deciding (needed after an
    /// earlier gc, which removed the blobs a replay from genesis reads).
    #[arg(long)]
    from_snapshot: bool,
}

fn short(hex: &str) -> &str {
    hex.get(..PREFIX_HEX).unwrap_or(hex)
}

fn org_name(org: &Option<String>) -> &str {
    org.as_deref().unwrap_or("(not a member)")
}

/// A progress display on stderr, drawn only when stderr is a terminal.
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub(crate) fn new(what: &'static str) -> Progress {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(None, target);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
            bar.set_style(style);
        }
        bar.set_message(what);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    fn audit(&self, p: AuditProgress) {
        match p {
            AuditProgress::LedgerRead { slots, entries } => {
                self.bar.set_message(format!("read {slots} slots ({entries} entries); checking the checkpoint"));
            }
            AuditProgress::CheckpointChecked => self.bar.set_message("re-reading every slot"),
            AuditProgress::SlotsReread { slots } => self.bar.set_message(format!("{slots} slots re-read; replaying")),
            AuditProgress::ReplayStarted { first, rounds } => {
                if let Ok(style) =
                    ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rounds [{elapsed} < {eta}]")
                {
                    self.bar.set_style(style.progress_chars("=> "));
                }
                self.bar.set_length(rounds);
                self.bar.set_position(0);
                self.bar.set_message(format!("replaying from round {first}"));
            }
            AuditProgress::RoundReplayed { round, done, .. } => {
                self.bar.set_position(done);
                self.bar.set_message(format!("round {round}"));
            }
            AuditProgress::SnapshotChecked { done, total } => {
                self.bar.set_message(format!("snapshot {done}/{total} checked"));
            }
        }
    }

    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn read_witness(path: &Path) -> anyhow::Result<Option<ledger::Witness>> {
    match std::fs::read(path) {
        Ok(bytes) => ledger::Witness::decode(&bytes)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("witness {} is not a witness: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the witness {}", path.display())),
    }
}

fn write_witness(path: &Path, witness: &ledger::Witness) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, witness.encode()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The audit's check of the genesis start: the trainer's initial state for the run's preset and
/// seed. A config whose `extra` is not a training spec is no run a worker joins: not checked.
pub fn initial_state_rule() -> std::sync::Arc<verify::audit::InitialStateRule> {
    std::sync::Arc::new(|config| {
        let Ok(train) = trainer::run_spec::TrainSpec::from_extra(&config.extra) else { return Ok(None) };
        trainer::run_spec::initial_state_of(config, &train).map(Some).map_err(|e| e.to_string())
    })
}

pub async fn open(url: &str) -> anyhow::Result<(String, storage::Store)> {
    let url = absolute_url(url)?;
    let store = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    Ok((url, store))
}

/// `cairn audit`: the report, then `audit: OK rounds=R entries=E state=<hash>` (exit 0) or
/// `audit: FAIL <first problem>` (exit 1); with `--json`, only the JSON report.
pub async fn audit(args: AuditArgs) -> anyhow::Result<Outcome> {
    let (url, store) = open(&args.store).await?;
    let witness = args.witness.as_deref().map(read_witness).transpose()?.flatten();
    let options = AuditOptions {
        from_snapshot: args.from_snapshot,
        witness,
        checkpoint_organisations: args.checkpoint_organisations,
        initial_state: Some(initial_state_rule()),
    };
    let progress = Progress::new("reading the ledger");
    let report = verify::audit::audit(&store, &options, &mut |p| progress.audit(p))
        .await
        .with_context(|| format!("auditing {url}"));
    progress.finish();
    let report = report?;
    if let (Some(path), Some(witness), true) = (&args.witness, &report.witness, report.passed()) {
        write_witness(path, witness)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report).context("encoding the report")?);
    } else {
        print_report(&report);
        print_verdict(&report);
    }
    Ok(if report.passed() { Outcome::Ok } else { Outcome::Failed })
}

fn print_verdict(report: &AuditReport) {
    match &report.first_problem {
        None => {
            println!("audit: OK rounds={} entries={} state={}", report.rounds_replayed, report.entries, report.state)
        }
        Some(problem) => println!("audit: FAIL {problem}"),
    }
}

fn print_list<T>(items: &[T], mut line: impl FnMut(&T)) {
    for item in items.iter().take(MAX_LISTED) {
        line(item);
    }
    if items.len() > MAX_LISTED {
        println!("  ... and {} more (--json lists them all)", items.len() - MAX_LISTED);
    }
}

fn print_report(r: &AuditReport) {
    let void: u64 = r.kinds.values().map(|k| k.void).sum();
    println!("run         {}", r.run);
    println!("ledger      {} slots, {} entries, {} void; every signature checked", r.slots, r.entries, void);
    match &r.checkpoint {
        CheckpointStatus::Missing { required_organisations } => {
            println!("checkpoint  none cosigned by {required_organisations} organisation(s) yet (nothing to check)")
        }
        CheckpointStatus::Verified { size, root, signers, organisations, required_organisations } => println!(
            "checkpoint  verified: {size} slots, root {}, {} member signer(s) of {} organisation(s) ({}; {} required)",
            short(root),
            signers.len(),
            organisations.len(),
            organisations.join(", "),
            required_organisations
        ),
        CheckpointStatus::Bad { problem } => println!("checkpoint  BAD: {problem}"),
        CheckpointStatus::NotChecked => println!("checkpoint  not checked"),
    }
    let from = match &r.start {
        StartPoint::Genesis => "genesis".to_string(),
        StartPoint::Snapshot { pos, round } => format!("the snapshot at {pos} (round {round})"),
    };
    println!(
        "replay      from {from}: {} round(s) replayed, first {}, open round {}",
        r.rounds_replayed, r.first_round, r.open_round
    );
    if !r.organisations.is_empty() {
        println!("{:<24} {:>8} {:>12} {:>6}", "organisation", "counted", "not counted", "void");
        for o in &r.organisations {
            println!("{:<24} {:>8} {:>12} {:>6}", org_name(&o.organisation), o.counted, o.not_counted, o.void);
        }
    }
    let under: Vec<String> = r.rounds.iter().filter(|x| x.under_minimum).map(|x| x.round.to_string()).collect();
    if !under.is_empty() {
        println!("rounds under the minimum contributions: {}", under.join(", "));
    }
    println!("verdicts    {} accepted, {} failing", r.verdicts.accepted, r.verdicts.failing);
    if r.exclusions.is_empty() {
        println!("exclusions  none");
    } else {
        println!("exclusions  {}", r.exclusions.len());
        print_list(&r.exclusions, |e| {
            println!("  worker {} ({}) since verdict {}", short(&e.worker), org_name(&e.organisation), e.since)
        });
    }
    if !r.void_entries.is_empty() {
        let by: Vec<String> = r.void_by_reason.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("void entries {} ({}):", r.void_entries.len(), by.join(" "));
        print_list(&r.void_entries, |v| {
            let who = match (&v.signer, &v.organisation) {
                (Some(s), org) => format!(" by {} ({})", short(s), org_name(org)),
                (None, _) => String::new(),
            };
            println!("  {:<8} {}{}: {}", v.pos, v.kind.as_deref().unwrap_or("slot"), who, v.reason);
        });
    }
    let not_counted: Vec<_> = r.rounds.iter().flat_map(|x| x.not_counted.iter().map(move |n| (x.round, n))).collect();
    if !not_counted.is_empty() {
        let by: Vec<String> = r.not_counted_by_reason.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("not counted {} ({}):", not_counted.len(), by.join(" "));
        print_list(&not_counted, |(round, n)| {
            println!(
                "  round {round} {:<8} worker {} ({}): {}",
                n.pos,
                short(&n.worker),
                org_name(&n.organisation),
                n.reason
            )
        });
    }
    let checked = r.snapshots.iter().filter(|s| s.blob_ok.is_some()).count();
    println!("snapshots   {} accepted, {checked} blob(s) checked", r.snapshots.len());
    if !r.dissents.is_empty() {
        println!("dissents    {} attestation(s) of single organisations differ from the replay:", r.dissents.len());
        print_list(&r.dissents, |d| {
            println!(
                "  round {} {} by {} ({}) claims {}",
                d.round,
                d.pos,
                short(d.signer.as_deref().unwrap_or("?")),
                org_name(&d.organisation),
                short(&d.claimed)
            )
        });
    }
    if !r.notes.is_empty() {
        println!("notes       {}:", r.notes.len());
        print_list(&r.notes, |n| println!("  {n}"));
    }
    match r.discrepancies.first() {
        None => println!("claims      every attested state hash matches the replay"),
        Some(d) => println!(
            "claims      {} discrepancy(ies); first: round {} {} at {} claims {}, computed {}",
            r.discrepancies.len(),
            d.round,
            d.kind,
            d.pos,
            short(&d.claimed),
            short(&d.computed)
        ),
    }
    if r.problems.len() > 1 {
        println!("problems    {}:", r.problems.len());
        print_list(&r.problems, |p| println!("  {p}"));
    }
}

/// What `cairn status` shows of one member.
struct MemberLine {
    organisation: String,
    role: Role,
    contributions: u64,
}

fn metric(c: &ledger::Contribution, name: &str) -> Option<i64> {
    c.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

fn loss_text(loss_milli: i64) -> String {
    format!("{}.{:03}", loss_milli.div_euclid(1000), loss_milli.rem_euclid(1000))
}

/// `cairn status`: the ledger alone (no tensors): the open round, members, latest
/// contributions, the loss curve, the latest close and snapshot.
pub async fn status(args: StatusArgs) -> anyhow::Result<Outcome> {
    let (url, store) = open(&args.store).await?;
    let run_id = ledger::genesis_run_id(&store).await.with_context(|| format!("reading the genesis of {url}"))?;
    let progress = Progress::new("replaying the ledger");
    let mut reader =
        Reader::replay(store.clone(), run_id).await.with_context(|| format!("replaying the ledger of {url}"))?;
    progress.finish();
    if args.json {
        let quorum = reader.checkpoint_quorum(None);
        let checkpoint = reader.check_checkpoint(quorum).await.context("checking the run's checkpoint")?;
        let view = crate::dashboard::view::ledger_view(&reader, checkpoint.as_ref());
        println!("{}", serde_json::to_string(&view).context("encoding the status")?);
        return Ok(Outcome::Ok);
    }
    let entries = reader.entries();
    let accepted = || entries.iter().filter(|e| e.validity.is_accept()).filter_map(|e| Some((e, e.entry.as_ref()?)));

    let tally = reader.state().rounds();
    let current = tally.open_round().0;
    let final_rounds = tally.finals().count();

    println!("run         {run_id}");
    let void = entries.iter().filter(|e| !e.validity.is_accept()).count();
    println!("ledger      {} slots, {} entries ({void} void)", reader.slots().len(), entries.len());
    let phase = match tally.close(ledger::Round(current)) {
        Some(c) => format!("closed at {} (cut at slot {}), awaiting attestations", c.pos, c.cut),
        None => {
            let voters: Vec<&str> = tally.voters().collect();
            format!("open, {} of {} organisations voted to close", voters.len(), tally.quorum())
        }
    };
    println!("round       {current} ({phase}); {final_rounds} final; organisation quorum {}", tally.quorum());

    let mut members: BTreeMap<ledger::PublicKey, MemberLine> = reader
        .state()
        .roster()
        .values()
        .map(|m| (m.key, MemberLine { organisation: m.organisation.clone(), role: m.role, contributions: 0 }))
        .collect();
    let mut loss: BTreeMap<u64, (i64, u64)> = BTreeMap::new();
    let mut contributions: Vec<(&LoggedEntry, &ledger::Contribution, ledger::PublicKey)> = Vec::new();
    for (logged, entry) in accepted() {
        if let Body::Contribution(c) = &entry.body {
            if let Some(m) = members.get_mut(&entry.signer()) {
                m.contributions += 1;
            }
            if let Some(l) = metric(c, "loss_milli") {
                let slot = loss.entry(c.round.0).or_default();
                slot.0 = slot.0.saturating_add(l);
                slot.1 += 1;
            }
            contributions.push((logged, c, entry.signer()));
        }
    }

    println!("members     {}", members.len());
    println!("  {:<14} {:<20} {:<10} {:>13}", "key", "organisation", "role", "contributions");
    for (key, m) in &members {
        let key = key.to_string();
        let role = format!("{:?}", m.role).to_lowercase();
        println!("  {:<14} {:<20} {:<10} {:>13}", short(&key), m.organisation, role, m.contributions);
    }

    let last = contributions.len().saturating_sub(args.last);
    println!("last contributions ({} of {} accepted)", contributions.len() - last, contributions.len());
    for (logged, c, signer) in &contributions[last..] {
        let key = signer.to_string();
        let org = logged.organisation.as_deref().unwrap_or("(not a member)");
        let loss = metric(c, "loss_milli").map_or_else(|| "-".to_string(), loss_text);
        println!("  round {:<6} {:<10} worker {} ({org}) loss {loss}", c.round.0, logged.pos.to_string(), short(&key));
    }

    if !loss.is_empty() {
        println!("loss curve (mean loss_milli of accepted contributions per round)");
        let mut shown: Vec<u64> = loss.keys().rev().take(LOSS_CURVE_ROUNDS).copied().collect();
        if let Some(first) = loss.keys().next().copied().filter(|f| !shown.contains(f)) {
            shown.push(first);
        }
        shown.sort_unstable();
        let mut previous = None;
        for round in shown {
            let (sum, n) = loss[&round];
            if previous.is_some_and(|p: u64| round > p + 1) {
                println!("  ...");
            }
            let mean = sum / i64::try_from(n.max(1)).unwrap_or(i64::MAX);
            println!("  round {round:<6} loss {} ({n} contribution(s))", loss_text(mean));
            previous = Some(round);
        }
    }

    let latest = |kind: Kind| accepted().filter(|(_, e)| e.body.kind() == kind).last();
    if let Some((round, result)) = tally.finals().last() {
        println!(
            "last final  round {round} at {}: state {} ({} dropped)",
            result.pos,
            result.state,
            result.dropped.len()
        );
    }
    if let Some((logged, e)) = latest(Kind::Snapshot)
        && let Body::Snapshot(s) = &e.body
    {
        println!("last snapshot round {} at {}: state {} ({} bytes)", s.round, logged.pos, s.state, s.blob_size);
    }
    println!("status: round={current} entries={} members={}", entries.len(), members.len());
    Ok(Outcome::Ok)
}

/// `cairn gc`: audits, then deletes (with `--delete`) or lists the update blobs behind the
/// newest confirmed snapshot. Last line: `gc: dry-run ...`, `gc: deleted ...`, or
/// `gc: REFUSED <why>` (exit 1).
pub async fn gc(args: GcArgs) -> anyhow::Result<Outcome> {
    let (url, store) = open(&args.store).await?;
    let options = AuditOptions {
        from_snapshot: args.from_snapshot,
        initial_state: Some(initial_state_rule()),
        ..AuditOptions::default()
    };
    let progress = Progress::new("reading the ledger");
    let plan = verify::audit::plan_gc(&store, &options, &mut |p| progress.audit(p))
        .await
        .with_context(|| format!("auditing {url}"));
    progress.finish();
    let plan = plan?;
    print_verdict(&plan.audit);
    if let Some(why) = &plan.refused {
        println!("gc: REFUSED {why}");
        return Ok(Outcome::Failed);
    }
    if let Some((pos, round)) = &plan.snapshot {
        println!("confirmed snapshot at {pos} (round {round}): update blobs of rounds <= {round} may go");
    }
    println!(
        "{} update blob(s), {} bytes declared; {} blob(s) kept (genesis, snapshots, later rounds)",
        plan.blobs.len(),
        plan.declared_bytes(),
        plan.protected
    );
    if !args.delete {
        println!("nothing deleted; run again with --delete to delete them");
        println!("gc: dry-run blobs={} bytes={}", plan.blobs.len(), plan.declared_bytes());
        return Ok(Outcome::Ok);
    }
    let bar = Progress::new("deleting");
    bar.bar.set_length(plan.blobs.len() as u64);
    let done = verify::audit::collect_garbage(&store, &plan, &mut |n| bar.bar.set_position(n))
        .await
        .with_context(|| format!("deleting blobs in {url}"));
    bar.finish();
    let done = done?;
    println!("gc: deleted blobs={} bytes={} absent={}", done.deleted, done.bytes, done.absent);
    Ok(Outcome::Ok)
}
