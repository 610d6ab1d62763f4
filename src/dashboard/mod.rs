//! `cairn dashboard`: a read-only web page and JSON API over a run's store. It follows the ledger
//! (one Reader, polled), verifies the newest quorum checkpoint against its own reading, and audits
//! the run again whenever a round becomes final; the page polls `/api/run`. Nothing on the page
//! is taken from a participant's word that the ledger does not carry, and every figure names its
//! entry, whose inclusion proof against the checkpoint `/api/entry/SEQ.INDEX` returns.
//!
//! ```text
//!   store ──poll──► Reader ──ledger_view()──► Shared ◄── GET /api/run, /api/entry/…, /
//!            └── a round became final ──► verify::audit (background) ──┘
//! ```
//!
//! The routes and JSON fields are specified in docs/DASHBOARD.md.

pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use ledger::{Body, EntryPos, LoggedEntry, Reader, SignedCheckpoint};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::RwLock;
use verify::audit::{AuditOptions, AuditReport};

use crate::Outcome;
use view::LedgerView;

/// The page, built into the binary (no CDN, no build step).
const PAGE: &str = include_str!("page.html");

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run (read access is enough)
    #[arg(long)]
    store: String,
    /// Address to serve on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Seconds between reads of the ledger's head.
    #[arg(long, default_value_t = 2.0)]
    poll_secs: f64,
    /// Do not replay the run (the page then shows the ledger's figures without the audit's).
    #[arg(long)]
    no_audit: bool,
    /// Also serve Prometheus metrics at http://ADDR/metrics (they are at /metrics on the
    /// dashboard's own address too).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// The audit as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditView {
    /// An audit is running now.
    pub running: bool,
    /// Slots the ledger had when the latest finished audit started.
    pub at_slots: Option<u64>,
    /// `ok` or `fail` (None: none finished yet).
    pub verdict: Option<&'static str>,
    /// The latest finished audit's report (`cairn audit --json` prints the same).
    pub report: Option<AuditReport>,
    /// An audit that could not run (the store unreadable, ...).
    pub error: Option<String>,
}

/// What every request reads.
#[derive(Debug, Default, Serialize)]
struct Shared {
    /// Bumped whenever the view or the audit changes.
    generation: u64,
    ledger: Option<LedgerView>,
    /// Why the last read of the head failed, when it did (the view is then the one before).
    ledger_error: Option<String>,
    audit: AuditView,
    #[serde(skip)]
    checkpoint: Option<SignedCheckpoint>,
    #[serde(skip)]
    entries: Vec<LoggedEntry>,
    #[serde(skip)]
    leaves: Vec<ledger::Hash>,
    #[serde(skip)]
    metrics: Arc<crate::metrics::Metrics>,
}

type App = Arc<RwLock<Shared>>;

/// `cairn dashboard`.
pub async fn run(args: DashboardArgs) -> anyhow::Result<Outcome> {
    let (url, store) = crate::audit_cmd::open(&args.store).await?;
    let run_id = ledger::genesis_run_id(&store).await.with_context(|| format!("reading the genesis of {url}"))?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let address = listener.local_addr().context("reading the listening address")?;
    let metrics = crate::metrics::Metrics::new();
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    let app: App = Arc::new(RwLock::new(Shared { metrics: metrics.clone(), ..Shared::default() }));
    let poll = Duration::from_secs_f64(args.poll_secs.clamp(0.1, 3600.0));
    // The ledger's futures are not Send (they borrow across awaits): the follower runs on a
    // blocking thread of its own, driven by this runtime.
    let (runtime, follower_app, audit) = (tokio::runtime::Handle::current(), app.clone(), !args.no_audit);
    tokio::task::spawn_blocking(move || runtime.block_on(follow(store, run_id, poll, audit, follower_app)));
    println!("dashboard: http://{address}/ (run {run_id} in {url})");
    axum::serve(listener, router(app).merge(crate::metrics::route(metrics))).await.context("serving the dashboard")?;
    Ok(Outcome::Ok)
}

fn router(app: App) -> axum::Router {
    axum::Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/run", get(api_run))
        .route("/api/entry/{pos}", get(api_entry))
        .with_state(app)
}

/// Reads the ledger every `poll`, rebuilds the view when the head moved, and audits after each
/// new final round (one audit at a time; a round that becomes final meanwhile is audited next).
async fn follow(store: storage::Store, run_id: ledger::RunId, poll: Duration, audit: bool, app: App) {
    let mut reader = None;
    let mut audited_finals = None;
    let mut audit_task: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        match read_head(&mut reader, &store, run_id).await {
            Ok(r) => {
                let quorum = r.checkpoint_quorum(None);
                let checkpoint = r.check_checkpoint(quorum).await;
                let (checkpoint, checkpoint_error) = match checkpoint {
                    Ok(cp) => (cp, None),
                    Err(e) => (None, Some(format!("the checkpoint does not verify: {e}"))),
                };
                let view = view::ledger_view(r, checkpoint.as_ref());
                let finals = view.final_rounds;
                let mut shared = app.write().await;
                ledger_metrics(&shared.metrics, &view);
                if shared.ledger.as_ref() != Some(&view) || shared.ledger_error != checkpoint_error {
                    shared.generation += 1;
                    shared.ledger = Some(view);
                    shared.ledger_error = checkpoint_error;
                    shared.entries = r.entries().to_vec();
                    shared.leaves = r.leaves().to_vec();
                    shared.checkpoint = checkpoint;
                }
                drop(shared);
                let idle = audit_task.as_ref().is_none_or(|t| t.is_finished());
                if audit && idle && audited_finals != Some(finals) {
                    audited_finals = Some(finals);
                    let (store, at, app) = (store.clone(), r.next_seq().0, app.clone());
                    // Not Send either: a blocking thread of its own.
                    let runtime = tokio::runtime::Handle::current();
                    audit_task = Some(tokio::task::spawn_blocking(move || runtime.block_on(run_audit(store, at, app))));
                }
            }
            Err(e) => {
                let mut shared = app.write().await;
                shared.metrics.add(
                    "cairn_ledger_read_errors_total",
                    "Reads of the ledger's head that failed.",
                    &[],
                    1.0,
                );
                shared.generation += 1;
                shared.ledger_error = Some(format!("reading the ledger: {e}"));
            }
        }
        tokio::time::sleep(poll).await;
    }
}

/// The dashboard's metrics from a fresh view.
fn ledger_metrics(m: &crate::metrics::Metrics, view: &LedgerView) {
    m.ledger_read();
    m.set("cairn_ledger_slots", "Slots of the ledger read.", &[], view.ledger.slots as f64);
    m.set("cairn_ledger_entries", "Entries of the ledger read.", &[], view.ledger.entries as f64);
    m.set("cairn_ledger_void_entries", "Void entries of the ledger read.", &[], view.ledger.void as f64);
    m.set("cairn_round", "The open round.", &[], view.open_round as f64);
    m.set("cairn_final_rounds", "Rounds whose result is final.", &[], view.final_rounds as f64);
    m.set("cairn_tokens_reported", "Tokens reported by accepted contributions.", &[], view.tokens_reported as f64);
    for org in &view.organisations {
        let labels = [("organisation", org.name.as_str())];
        m.set(
            "cairn_organisation_contributions",
            "Accepted contributions by organisation.",
            &labels,
            org.contributions as f64,
        );
    }
    if let Some(eval) = view.rounds.iter().rev().find_map(|r| r.eval_loss_milli) {
        m.set(
            "cairn_eval_loss",
            "Mean signed held-out loss of the newest evaluated round (nats).",
            &[],
            eval as f64 / 1000.0,
        );
    }
}

/// The reader at the ledger's head: replayed on the first call (and after a failed replay),
/// polled after that.
async fn read_head<'a>(
    reader: &'a mut Option<Reader>,
    store: &storage::Store,
    run_id: ledger::RunId,
) -> ledger::Result<&'a mut Reader> {
    let r = match reader.take() {
        Some(r) => r,
        None => Reader::replay(store.clone(), run_id).await?,
    };
    let r = reader.insert(r);
    r.poll().await?;
    Ok(r)
}

async fn run_audit(store: storage::Store, at_slots: u64, app: App) {
    {
        let mut shared = app.write().await;
        shared.audit.running = true;
        shared.generation += 1;
    }
    let options =
        AuditOptions { initial_state: Some(crate::audit_cmd::initial_state_rule()), ..AuditOptions::default() };
    let result = verify::audit::audit(&store, &options, &mut |_| {}).await;
    let mut shared = app.write().await;
    shared.generation += 1;
    shared.audit.running = false;
    shared.metrics.add("cairn_audits_total", "Audits run.", &[], 1.0);
    match result {
        Ok(report) => {
            let ok = if report.first_problem.is_none() { 1.0 } else { 0.0 };
            shared.metrics.set("cairn_audit_ok", "1 when the latest audit passed, 0 when it failed.", &[], ok);
            shared.metrics.set(
                "cairn_audit_rounds",
                "Rounds the latest audit replayed.",
                &[],
                report.rounds_replayed as f64,
            );
            shared.audit.verdict = Some(if report.first_problem.is_none() { "ok" } else { "fail" });
            shared.audit.at_slots = Some(at_slots);
            shared.audit.report = Some(report);
            shared.audit.error = None;
        }
        Err(e) => shared.audit.error = Some(format!("the audit could not run: {e}")),
    }
}

async fn api_run(State(app): State<App>) -> Response {
    let shared = app.read().await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "generation": shared.generation,
            "ledger": shared.ledger,
            "ledger_error": shared.ledger_error,
            "audit": shared.audit,
        })),
    )
        .into_response()
}

fn parse_pos(text: &str) -> Option<EntryPos> {
    let (seq, index) = text.split_once('.').unwrap_or((text, "0"));
    Some(EntryPos { seq: ledger::Seq(seq.parse().ok()?), index: index.parse().ok()? })
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": what }))).into_response()
}

/// `GET /api/entry/SEQ.INDEX`: the entry as read, and its slot's inclusion proof against the
/// verified checkpoint (when the checkpoint covers it).
async fn api_entry(State(app): State<App>, Path(pos): Path<String>) -> Response {
    let Some(pos) = parse_pos(&pos) else {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "expected SEQ or SEQ.INDEX" }))).into_response();
    };
    let shared = app.read().await;
    let Some(logged) = shared.entries.iter().find(|e| e.pos == pos) else {
        return not_found(format!("no entry at {pos} in the ledger as read"));
    };
    let seq = pos.seq.0;
    let leaf = usize::try_from(seq).ok().and_then(|i| shared.leaves.get(i)).copied();
    let proof = shared.checkpoint.as_ref().filter(|cp| seq < cp.checkpoint.size).and_then(|cp| {
        let size = cp.checkpoint.size;
        let covered = shared.leaves.get(..usize::try_from(size).ok()?)?;
        let path = ledger::merkle::inclusion_proof(usize::try_from(seq).ok()?, covered);
        let leaf = leaf?;
        let verified = ledger::merkle::verify_inclusion(&leaf, seq, size, &path, &cp.checkpoint.root);
        Some(json!({
            "size": size,
            "root": cp.checkpoint.root.to_string(),
            "leaf": leaf.to_string(),
            "path": path.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "verified": verified,
        }))
    });
    Json(json!({
        "pos": pos.to_string(),
        "validity": match &logged.validity { ledger::Validity::Accept => "valid".to_string(), ledger::Validity::Void(r) => r.to_string() },
        "organisation": logged.organisation,
        "leaf": leaf.map(|l| l.to_string()),
        "entry": logged.entry.as_ref().map(|e| json!({
            "kind": e.body.kind().name(),
            "signers": e.signatures.iter().map(|s| s.key.to_string()).collect::<Vec<_>>(),
            "body": body_json(&e.body),
        })),
        "bytes": logged.bytes.len(),
        "inclusion": proof,
    }))
    .into_response()
}

/// The fields of a body, as the page shows them.
fn body_json(body: &Body) -> Value {
    match body {
        Body::Genesis(g) => json!({
            "members": g.roster.len(), "quorum": g.quorum, "org_quorum": g.org_quorum,
            "initial_state": g.initial_state.to_string(), "snapshot": g.snapshot.to_string(),
            "config_bytes": g.config.len(),
        }),
        Body::Contribution(c) => json!({
            "round": c.round.0, "base_state": c.base_state.to_string(), "blob": c.blob.to_string(),
            "blob_size": c.blob_size,
            "metrics": c.metrics.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        }),
        Body::Verdict(v) => json!({
            "round": v.round.0, "score": v.score,
            "target": match v.target { ledger::Target::Entry(p) => p.to_string(), ledger::Target::Blob(b) => b.to_string() },
        }),
        Body::CloseVote(v) => json!({ "round": v.round.0, "seen": v.seen.0 }),
        Body::Snapshot(s) => json!({
            "round": s.round.0, "state": s.state.to_string(), "blob": s.blob.to_string(), "blob_size": s.blob_size,
        }),
        Body::RosterChange(r) => json!({ "epoch": r.epoch, "change": format!("{:?}", r.change) }),
        Body::Evaluation(e) => json!({
            "round": e.round.0, "state": e.state.to_string(), "sequences": e.sequences, "loss_milli": e.loss_milli,
        }),
        Body::Attestation(a) => json!({
            "round": a.round.0, "state": a.state.to_string(),
            "dropped": a.dropped.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
    }
}
