//! Federated runs end to end on the test S3 server (SeaweedFS): `cairn genesis`, workers and a
//! validator as separate OS processes, and `cairn audit` as an outsider with only the store URL.
//! Adversaries are played by the test itself with the ledger and trainer libraries, writing into
//! the same bucket as the honest processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ledger::{Body, Contribution, Entry, Keypair, PublicKey};
use serde_json::Value;
use storage::testing;
use trainer::follow::{Follower, TallyAction};
use trainer::model::Model;
use trainer::step::StepConfig;
use trainer::worker::compute_update;
use verify::{Expected, Update, Values, WorkerKey};

use crate::cairn;

/// Longest a test run may take before its processes are killed and the test fails.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// One federated run under test: keys, run.toml and logs in a temp folder, the ledger on S3.
pub(crate) struct Fed {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) url: String,
    pub(crate) env: Vec<(String, String)>,
    members: Vec<(String, PathBuf, Keypair)>,
    /// A command every `cairn` of this run is started through (e.g. `nsenter` into the mount
    /// namespace that holds the store's file system); empty: none.
    wrap: Vec<String>,
}

impl Fed {
    /// A run on a fresh bucket with `members` (name, organisation, role) and the run.toml sections
    /// `sections` (everything but the roster); the first member must be the admin.
    pub(crate) async fn start(members: &[(&str, &str, &str)], sections: &str) -> Fed {
        Fed::start_with_quorum(members, sections, 1).await
    }

    async fn start_with_quorum(members: &[(&str, &str, &str)], sections: &str, quorum: u16) -> Fed {
        let url = testing::fresh_bucket().await;
        Fed::start_in(
            tempfile::tempdir().unwrap(),
            url,
            testing::s3_env().clone(),
            Vec::new(),
            members,
            sections,
            quorum,
        )
    }

    /// A run in the store at `url` (reached with `env`, every `cairn` started through `wrap`), its
    /// keys and logs in `dir`.
    pub(crate) fn start_in(
        dir: tempfile::TempDir,
        url: String,
        env: Vec<(String, String)>,
        wrap: Vec<String>,
        members: &[(&str, &str, &str)],
        sections: &str,
        quorum: u16,
    ) -> Fed {
        let mut spec = format!("{sections}\n[roster]\nquorum = {quorum}\n");
        let mut keys = Vec::new();
        for (name, org, role) in members {
            let path = dir.path().join(format!("{name}.key"));
            let key = ledger::write_key_file(&path).unwrap();
            spec.push_str(&format!(
                "\n[[roster.member]]\nkey = \"{}\"\norganisation = \"{org}\"\nrole = \"{role}\"\n",
                key.public()
            ));
            keys.push((name.to_string(), path, key));
        }
        let spec_path = dir.path().join("run.toml");
        std::fs::write(&spec_path, spec).unwrap();
        let fed = Fed { dir, url, env, members: keys, wrap };
        let out = fed.cli(&[
            "genesis",
            "--store",
            &fed.url,
            "--config",
            spec_path.to_str().unwrap(),
            "--key",
            fed.key_path(members[0].0),
        ]);
        assert!(out.status.success(), "genesis: {}", String::from_utf8_lossy(&out.stderr));
        fed
    }

    /// Runs `cairn args` with this run's environment (and wrapper) to the end.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        let Some((program, wrap_args)) = self.wrap.split_first() else { return cairn(args, &self.env) };
        let mut cmd = Command::new(program);
        cmd.args(wrap_args).arg(env!("CARGO_BIN_EXE_cairn")).args(args);
        cmd.env("OMP_NUM_THREADS", "1").env_remove("CAIRN_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run cairn")
    }

    pub(crate) fn key_path(&self, name: &str) -> &str {
        self.members.iter().find(|m| m.0 == name).map(|m| m.1.to_str().unwrap()).unwrap()
    }

    pub(crate) fn key(&self, name: &str) -> &Keypair {
        self.members.iter().find(|m| m.0 == name).map(|m| &m.2).unwrap()
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    pub(crate) fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.log(name)).unwrap_or_default()
    }

    /// Starts `cairn worker` or `cairn validate` for member `name`, appending to its log.
    pub(crate) fn spawn(&self, command: &str, name: &str) -> Child {
        self.spawn_with(command, name, &[])
    }

    pub(crate) fn spawn_with(&self, command: &str, name: &str, extra: &[&str]) -> Child {
        self.spawn_env(command, name, extra, &[])
    }

    /// Starts `cairn command` for member `name` with `extra` arguments and `env` over the run's.
    pub(crate) fn spawn_env(&self, command: &str, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let mut args =
            vec![command, "--store", &self.url, "--key", self.key_path(name), "--threads", "1", "--poll-ms", "100"];
        args.extend(extra);
        self.spawn_args(name, &args, env)
    }

    /// Starts `cairn args` with `env` over the run's, appending to the log called `name`.
    pub(crate) fn spawn_args(&self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(name)).unwrap();
        let mut cmd = match self.wrap.split_first() {
            Some((program, wrap_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrap_args).arg(env!("CARGO_BIN_EXE_cairn"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_cairn")),
        };
        cmd.args(args)
            .env("OMP_NUM_THREADS", "1")
            .env_remove("CAIRN_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn cairn")
    }

    /// Scrapes `name`'s /metrics (its address is the first `metrics:` line of its log) until `done`
    /// holds; fails after the run's timeout.
    fn scrape_until(&self, name: &str, done: impl Fn(&prometheus_parse::Scrape) -> bool) -> prometheus_parse::Scrape {
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < RUN_TIMEOUT, "{name}'s metrics never got there: {}", self.log_text(name));
            let address = self.log_text(name).lines().find_map(|l| l.strip_prefix("metrics: ").map(str::to_string));
            if let Some(url) = address {
                let (status, text) = crate::dashboard::get(&url);
                assert_eq!(status, 200, "{text}");
                let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
                if done(&scrape) {
                    return scrape;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for every child to exit successfully; on a failure or a timeout kills them all and
    /// fails with every log.
    pub(crate) fn wait_all(&self, children: &mut [(&str, Child)]) {
        let started = Instant::now();
        loop {
            let mut running = false;
            let mut failed = None;
            for (name, child) in children.iter_mut() {
                match child.try_wait().unwrap() {
                    None => running = true,
                    Some(s) if s.success() => {}
                    Some(s) => failed = Some(format!("{name} exited with {s}")),
                }
            }
            if let Some(why) = failed {
                self.fail(children, &why);
            }
            if !running {
                return;
            }
            if started.elapsed() > RUN_TIMEOUT {
                self.fail(children, "the run timed out");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn fail(&self, children: &mut [(&str, Child)], why: &str) -> ! {
        let mut logs = String::new();
        for (name, child) in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
            logs.push_str(&format!("\n===== {name}\n{}", self.log_text(name)));
        }
        panic!("{why}{logs}");
    }

    /// Waits until `name`'s log contains `needle`.
    pub(crate) fn wait_for_log(&self, children: &mut [(&str, Child)], name: &str, needle: &str) {
        let started = Instant::now();
        while !self.log_text(name).contains(needle) {
            if started.elapsed() > RUN_TIMEOUT {
                self.fail(children, &format!("{name} never logged {needle:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `cairn audit --json`: the report and whether it passed.
    pub(crate) fn audit_json(&self) -> (Value, bool) {
        let out = self.cli(&["audit", "--store", &self.url, "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("audit --json: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        (report, out.status.success())
    }

    /// `cairn audit`'s last line, which must say OK; returns its state hash.
    pub(crate) fn audit_ok(&self) -> String {
        let out = self.cli(&["audit", "--store", &self.url]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let last = stdout.lines().last().unwrap_or("").to_string();
        assert!(
            out.status.success() && last.starts_with("audit: OK "),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        last.rsplit("state=").next().unwrap().to_string()
    }

    /// The run ended as it must: every one of `rounds` rounds closed with exactly one counted
    /// contribution of each of `workers` workers (none lost, none counted twice), the audit passes,
    /// and the workers reach the auditor's state.
    pub(crate) fn assert_each_round_counts_each_worker_once(&self, rounds: u64, workers: &[&str]) {
        let (report, passed) = self.audit_json();
        assert!(passed, "{report:#}");
        let audited = report["rounds"].as_array().unwrap();
        assert_eq!(audited.len() as u64, rounds, "{report:#}");
        for r in audited {
            assert_eq!(r["counted"].as_u64(), Some(workers.len() as u64), "{r:#}");
        }
        let audited_state = self.audit_ok();
        for w in workers {
            assert_eq!(self.worker_state(w), audited_state, "{w}");
        }
    }

    /// The `state=` of a worker's last line.
    pub(crate) fn worker_state(&self, name: &str) -> String {
        let log = self.log_text(name);
        let last = log.lines().rev().find(|l| l.starts_with("worker: ")).unwrap_or_else(|| panic!("{name}: {log}"));
        last.rsplit("state=").next().unwrap().to_string()
    }
}

/// The value of the sample `name` with `labels` (among others) in a scrape.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// Two workers of two organisations and a validator of a third (and the admin): the run of the
/// crash, crash-point and outage tests.
pub(crate) const TWO_WORKERS_AND_A_VALIDATOR: [(&str, &str, &str); 4] =
    [("admin", "alpha", "admin"), ("w1", "alpha", "worker"), ("w2", "beta", "worker"), ("v", "gamma", "validator")];
/// Its participants and the command each runs.
/// The sum of every sample of `name` whose labels include `labels`.
fn total(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_participant_reads_the_ledger_once_a_poll_and_less_while_it_is_quiet() {
    // A validator of a run whose workers have not started waits: each pass of its loop reads the
    // ledger's next slot once (a GET that finds nothing). Reading it twice a pass would double
    // what every participant asks of the ledger's prefix (docs/SCALE.md, item 3).
    let fed = Fed::start(&TWO_WORKERS_AND_A_VALIDATOR, &sections(3, 2, 600, 0, "sign")).await;
    // Ledger GETs of an idle validator in about 5 s, and the seconds measured.
    let idle_gets = |max_poll_ms: &str| {
        let args = ["--metrics", "127.0.0.1:0", "--max-poll-ms", max_poll_ms];
        let mut children = vec![("v", fed.spawn_with("validate", "v", &args))];
        let gets = |s: &prometheus_parse::Scrape| total(s, "cairn_store_requests_total", &[("operation", "get")]);
        let first = fed.scrape_until("v", |s| value(s, "cairn_round", &[]).is_some());
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        let second = fed.scrape_until("v", |_| true);
        let secs = started.elapsed().as_secs_f64();
        for (_, child) in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::remove_file(fed.log("v")).unwrap();
        (gets(&second) - gets(&first), secs)
    };
    // No backoff (the cap at --poll-ms, 100 ms here): one GET a pass, a pass every 100 ms.
    let (got, secs) = idle_gets("100");
    let passes = secs / 0.1;
    assert!(got >= 0.5 * passes && got <= 1.15 * passes + 3.0, "{got} ledger GETs in {passes:.0} poll intervals");
    // With a cap of 800 ms, 8 waits of 100 ms, then 200, 400, then 800 ms while nothing lands:
    // 8 + 3 + (5 - 2.2) / 0.8 = 14.5 passes in 5 s, against 50 at the base interval.
    let (got, secs) = idle_gets("800");
    let expected = 11.0 + (secs - 2.2) / 0.8;
    assert!(
        got >= 0.5 * expected && got <= 1.5 * expected + 3.0,
        "{got} ledger GETs in {secs:.1} s, expected {expected:.1}"
    );
}

pub(crate) const PARTICIPANTS: [(&str, &str); 3] = [("w1", "worker"), ("w2", "worker"), ("v", "validate")];

/// Every participant of [`TWO_WORKERS_AND_A_VALIDATOR`] started with `env` over the run's.
pub(crate) fn spawn_participants<'a>(fed: &Fed, env: &[(&str, &str)]) -> Vec<(&'a str, Child)> {
    PARTICIPANTS.iter().map(|&(name, cmd)| (name, fed.spawn_env(cmd, name, &[], env))).collect()
}

/// The number in environment variable `name` (a long mode's setting), or `default`.
pub(crate) fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A tiny-model run: rounds, contributions a round waits for, deadline, snapshot interval, and
/// the values encoding.
pub(crate) fn sections(rounds: u64, min: u32, deadline_secs: u64, snapshot_every: u64, values: &str) -> String {
    format!(
        "[run]\npreset = \"tiny\"\nseed = 5\ntotal_rounds = {rounds}\nsnapshot_every = {snapshot_every}\n\
         [data]\nsource = \"synthetic\"\nseq_len = 32\neval_fraction = 0.05\neval_sequences = 64\n\
         [train]\ntokens_per_round = 256\nmicro_batch = 8\nclip_norm = 1.0\nmomentum_decay = 0.99\n\
         [demo]\nchunk = 64\ntopk = 8\nvalues = \"{values}\"\n\
         [optimizer]\nlr = 0.003\nwarmup_rounds = 0\ndecay_rounds = 0\nweight_decay = 0.0\nclip = \"median\"\n\
         [rounds]\nmin_contributions = {min}\nmax_contributions = 16\ndeadline_secs = {deadline_secs}\nverdict_wait_secs = 60\n\
         [validation]\nmin_score = -20\nmax_failures = 1\nassigned_sequences = 8\neval_sequences = 8\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_and_a_validator_agree_with_an_outside_auditor() {
    let members = [
        ("admin", "alpha", "admin"),
        ("w1", "alpha", "worker"),
        ("w2", "beta", "worker"),
        ("w3", "gamma", "worker"),
        ("v", "beta", "validator"),
    ];
    let fed = Fed::start(&members, &sections(3, 3, 120, 2, "sign")).await;
    let metrics = ["--metrics", "127.0.0.1:0"];
    let mut children: Vec<(&str, Child)> = vec![("w1", fed.spawn_with("worker", "w1", &metrics))];
    children.extend(["w2", "w3"].iter().map(|w| (*w, fed.spawn("worker", w))));
    children.push(("v", fed.spawn_with("validate", "v", &metrics)));
    // While they run, w1's and the validator's /metrics (Prometheus text) follow what they do.
    let worker = fed.scrape_until("w1", |s| value(s, "cairn_contributions_total", &[]) >= Some(2.0));
    let validator = fed.scrape_until("v", |s| value(s, "cairn_evaluations_total", &[]) >= Some(1.0));
    fed.wait_all(&mut children);
    let contributions = value(&worker, "cairn_contributions_total", &[]).unwrap();
    assert_eq!(value(&worker, "cairn_tokens_total", &[]), Some(contributions * 256.0), "tokens_per_round 256");
    assert!(value(&worker, "cairn_update_bytes", &[]) > Some(0.0));
    assert!(value(&worker, "cairn_tokens_per_second", &[]) > Some(0.0));
    assert!(
        value(&worker, "cairn_store_requests_total", &[("operation", "put-if-absent"), ("outcome", "ok")])
            >= Some(contributions)
    );
    assert!(value(&validator, "cairn_verdicts_total", &[("outcome", "scored")]) >= Some(3.0));
    let eval = value(&validator, "cairn_eval_loss", &[]).unwrap();
    assert!((0.5..6.0).contains(&eval), "a held-out loss in nats: {eval}");
    let states: Vec<String> = ["w1", "w2", "w3"].iter().map(|w| fed.worker_state(w)).collect();
    assert!(states.iter().all(|s| *s == states[0]), "workers disagree: {states:?}");
    // The auditor starts from nothing but the bucket, and computes the same bits.
    assert_eq!(fed.audit_ok(), states[0]);
    for w in ["w1", "w2", "w3"] {
        assert_eq!(fed.log_text(w).matches("ours counted").count(), 3, "{w}: {}", fed.log_text(w));
    }
    assert_eq!(fed.log_text("v").matches(": verdict ").count(), 9, "{}", fed.log_text("v"));
}

/// Validators of three organisations with `--score-orgs 1`, which the organisation quorum (a
/// majority, 2 of 3) raises to 2: every contribution gets exactly two verdicts, each from another
/// organisation's validator, the third leaves it to them, and the run ends as it would with
/// everyone scoring everything.
#[tokio::test(flavor = "multi_thread")]
async fn validators_sharing_the_scoring_give_each_contribution_a_quorum_of_verdicts() {
    let members = [
        ("admin", "alpha", "admin"),
        ("w1", "alpha", "worker"),
        ("w2", "beta", "worker"),
        ("w3", "gamma", "worker"),
        ("v1", "alpha", "validator"),
        ("v2", "beta", "validator"),
        ("v3", "gamma", "validator"),
    ];
    let fed = Fed::start(&members, &sections(3, 3, 120, 2, "sign")).await;
    let mut children: Vec<(&str, Child)> = ["w1", "w2", "w3"].iter().map(|w| (*w, fed.spawn("worker", w))).collect();
    for v in ["v1", "v2", "v3"] {
        children.push((v, fed.spawn_with("validate", v, &["--score-orgs", "1"])));
    }
    fed.wait_all(&mut children);
    fed.assert_each_round_counts_each_worker_once(3, &["w1", "w2", "w3"]);
    // Per contribution (its ledger position), the validators that scored it and those that left it.
    let mut scored: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    let mut left: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for v in ["v1", "v2", "v3"] {
        for line in fed.log_text(v).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "verdict") {
                scored.entry(words[i + 3].to_string()).or_default().push(v);
            } else if line.contains("is scored by other organisations") {
                let i = words.iter().position(|w| *w == "is").unwrap();
                left.entry(words[i - 1].to_string()).or_default().push(v);
            }
        }
    }
    assert_eq!(scored.len(), 9, "3 rounds of 3 contributions: {scored:?}");
    for (pos, by) in &scored {
        assert_eq!(by.len(), 2, "{pos} scored by {by:?}");
        assert_eq!(left.get(pos).map(Vec::len), Some(1), "{pos} left by {:?}", left.get(pos));
        assert!(!by.contains(&left[pos][0]), "{pos}");
    }
    assert_eq!(left.len(), 9, "{left:?}");
}

/// Two workers of two organisations and a validator run `config` (3 rounds, both needed per round):
/// both workers reach the auditor's state, every contribution counts, and the validator passes all six.
async fn two_workers_count_agree_and_pass(config: &str) -> Fed {
    let members =
        [("admin", "alpha", "admin"), ("w1", "alpha", "worker"), ("w2", "beta", "worker"), ("v", "beta", "validator")];
    let fed = Fed::start(&members, config).await;
    let mut children: Vec<(&str, Child)> = ["w1", "w2"].iter().map(|w| (*w, fed.spawn("worker", w))).collect();
    children.push(("v", fed.spawn("validate", "v")));
    fed.wait_all(&mut children);
    assert_eq!(fed.worker_state("w1"), fed.worker_state("w2"));
    assert_eq!(fed.audit_ok(), fed.worker_state("w1"));
    for w in ["w1", "w2"] {
        assert_eq!(fed.log_text(w).matches("ours counted").count(), 3, "{w}: {}", fed.log_text(w));
    }
    // The validator judged all six and passed them: every score is above the run's min_score -20.
    let log = fed.log_text("v");
    let scores: Vec<i64> =
        log.lines().filter_map(|l| l.split_once(": verdict ")?.1.split_whitespace().next()?.parse().ok()).collect();
    assert_eq!(scores.len(), 6, "{log}");
    assert!(scores.iter().all(|&s| s > -20), "{scores:?}");
    fed
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_rounds_train_the_next_round_while_one_closes_and_count_it() {
    // Each worker trains round r + 1 from the state after r - 1 while round r closes: its
    // contributions from round 1 on name the base one round behind, and count (config version 7).
    let overlap = sections(3, 2, 120, 0, "sign").replacen(
        "verdict_wait_secs = 60\n",
        "verdict_wait_secs = 60\noverlap = true\n",
        1,
    );
    assert!(overlap.contains("overlap = true"));
    let fed = two_workers_count_agree_and_pass(&overlap).await;
    // The bases, from the ledger: the state after each round as attested, the genesis state before.
    let store = storage::open_with(&fed.url, &testing::s3_options()).await.unwrap();
    let run_id = ledger::genesis_run_id(&store).await.unwrap();
    let reader = ledger::Reader::replay(store, run_id).await.unwrap();
    let genesis = reader.state().genesis().unwrap().initial_state;
    let state_after = |r: i64| match r {
        -1 => Some(genesis),
        r => reader.state().rounds().final_result(ledger::Round(r as u64)).map(|f| f.state),
    };
    let mut bases = Vec::new();
    for e in reader.entries().iter().filter(|e| e.validity.is_accept()) {
        if let Some(Body::Contribution(c)) = e.entry.as_ref().map(|x| &x.body) {
            let r = c.round.0 as i64;
            let behind = if Some(c.base_state) == state_after(r - 1) {
                0
            } else {
                assert_eq!(Some(c.base_state), state_after(r - 2), "round {r}: neither base");
                1
            };
            // From its second training on, each contribution says how long the worker's compute
            // sat idle before it (the figure the overlap is for).
            let idle = c.metrics.iter().any(|(k, _)| k == "idle_ms");
            assert_eq!(idle, r > 0, "round {r}: {:?}", c.metrics);
            bases.push((r, behind));
        }
    }
    bases.sort_unstable();
    // Round 0 on the genesis state; rounds 1 and 2 trained ahead, while the round before closed.
    assert_eq!(bases, [(0, 0), (0, 0), (1, 1), (1, 1), (2, 1), (2, 1)], "{bases:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_with_local_steps_count_and_agree_with_the_auditor() {
    // Each round, each worker takes 2 AdamW steps on its own copy (4 of its 8 sequences each) and
    // uploads the pseudo-gradient through the usual encoder; the rule is the same for everyone.
    let local = sections(3, 2, 120, 0, "sign").replacen(
        "momentum_decay = 0.99\n",
        "momentum_decay = 0.99\nlocal_steps = 2\ninner_lr = 0.003\n",
        1,
    );
    two_workers_count_agree_and_pass(&local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linear_step_run_with_two_bit_values_counts_and_agrees_with_the_auditor() {
    // SparseLoCo's shape through the consensus path: 2 local AdamW steps, the pseudo-gradient's top-k
    // at two bits with error feedback, and the mean of the workers' updates applied at rate 1 (the
    // validator applies each update alone at that rate).
    let linear = sections(3, 2, 120, 0, "two-bit")
        .replacen("momentum_decay = 0.99\n", "momentum_decay = 0.95\nlocal_steps = 2\ninner_lr = 0.003\n", 1)
        .replacen("values = \"two-bit\"\n", "values = \"two-bit\"\nstep_rule = \"linear\"\n", 1)
        .replacen("[optimizer]\nlr = 0.003\n", "[optimizer]\nlr = 1.0\n", 1);
    two_workers_count_agree_and_pass(&linear).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linear_run_under_the_identity_with_elias_fano_indices_counts_and_agrees_with_the_auditor() {
    // The issue-17 setting through real workers, a validator and the auditor on S3: the top-k of
    // each chunk's entries (wire v4, run config v5), its indices Elias-Fano coded.
    let linear = sections(3, 2, 120, 0, "two-bit")
        .replacen("momentum_decay = 0.99\n", "momentum_decay = 0.95\nlocal_steps = 2\ninner_lr = 0.003\n", 1)
        .replacen(
            "values = \"two-bit\"\n",
            "values = \"two-bit\"\nstep_rule = \"linear\"\ntransform = \"identity\"\nindex_coding = \"elias-fano\"\n",
            1,
        )
        .replacen("[optimizer]\nlr = 0.003\n", "[optimizer]\nlr = 1.0\n", 1);
    two_workers_count_agree_and_pass(&linear).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_round_restarts_and_the_run_completes() {
    let members = [("admin", "alpha", "admin"), ("w1", "alpha", "worker"), ("w2", "beta", "worker")];
    // The rounds wait for both workers (min 2), so the run can only finish if the restart works.
    let fed = Fed::start(&members, &sections(4, 2, 600, 0, "sign")).await;
    let mut children = vec![("w1", fed.spawn("worker", "w1")), ("w2", fed.spawn("worker", "w2"))];
    fed.wait_for_log(&mut children, "w1", "round 1: contributed");
    children[0].1.kill().unwrap(); // SIGKILL
    children[0].1.wait().unwrap();
    children[0].1 = fed.spawn("worker", "w1");
    fed.wait_all(&mut children);
    let log = fed.log_text("w1");
    assert!(log.matches("joined at round").count() == 2, "{log}");
    assert!(log.contains("momentum resumed"), "the restart resumes the saved momentum: {log}");
    assert_eq!(fed.worker_state("w1"), fed.worker_state("w2"));
    assert_eq!(fed.audit_ok(), fed.worker_state("w2"));
}

/// Crash anywhere (issue 20; docs/BENCHMARKS.md, "Crash anywhere"): both workers and the validator
/// are killed with SIGKILL at seeded random moments (0.1 to 1.5 s apart, so kills land mid-training,
/// mid-upload, mid-append, mid-vote, mid-attestation and while a snapshot or the momentum file is
/// written, in proportion to how long each takes) and restarted with the same command. Rounds wait
/// for both workers (2 contributions, a 600 s deadline) and need two organisations to close and
/// attest, so the run finishes only if every restart picks up where the killed process left off.
/// Long mode: `CAIRN_CHAOS_KILLS=50` (default 4); `CAIRN_CHAOS_SEED` (default 1) picks the schedule.
#[tokio::test(flavor = "multi_thread")]
async fn processes_killed_at_random_moments_restart_and_every_round_counts_each_worker_once() {
    use rand::{Rng, SeedableRng};
    let (kills, seed) = (env_or("CAIRN_CHAOS_KILLS", 4), env_or("CAIRN_CHAOS_SEED", 1));
    let rounds = kills.max(6);
    let fed = Fed::start(&TWO_WORKERS_AND_A_VALIDATOR, &sections(rounds, 2, 600, 2, "sign")).await;
    let commands = PARTICIPANTS;
    let mut children = spawn_participants(&fed, &[]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut killed = [0u64; 3];
    let started = Instant::now();
    let budget = RUN_TIMEOUT + Duration::from_secs(10 * kills);
    while killed.iter().sum::<u64>() < kills {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1500)));
        let i = rng.random_range(0..children.len());
        let exits: Vec<(&str, Option<std::process::ExitStatus>)> =
            children.iter_mut().map(|(name, child)| (*name, child.try_wait().unwrap())).collect();
        if let Some((name, Some(s))) = exits.iter().find(|(_, s)| s.is_some_and(|s| !s.success())) {
            let why = format!("{name} exited with {s}");
            fed.fail(&mut children, &why);
        }
        if exits.iter().all(|(_, s)| s.is_some()) {
            break; // the run ended before every kill was made
        }
        if started.elapsed() > budget {
            fed.fail(&mut children, &format!("the run did not end in {budget:?} with {killed:?} kills"));
        }
        if children[i].1.try_wait().unwrap().is_some() {
            continue; // that one is done; another kill point follows
        }
        children[i].1.kill().unwrap(); // SIGKILL
        children[i].1.wait().unwrap();
        children[i].1 = fed.spawn(commands[i].1, commands[i].0);
        killed[i] += 1;
    }
    fed.wait_all(&mut children);
    let kills_made: u64 = killed.iter().sum();
    let workers_log = fed.log_text("w1") + &fed.log_text("w2");
    let resumed = workers_log.matches("momentum resumed").count();
    let zero = workers_log.matches("momentum starts at zero").count();
    eprintln!(
        "chaos: seed={seed} kills={kills_made} (w1, w2, v: {killed:?}) rounds={rounds} in {:.1} s; worker starts: \
         {resumed} resumed their momentum, {zero} at zero",
        started.elapsed().as_secs_f64()
    );
    // Each worker joined at most once per start (a process killed within its first moments may not
    // have got that far); every restart resumed its momentum or said why it could not.
    for (i, w) in ["w1", "w2"].into_iter().enumerate() {
        let log = fed.log_text(w);
        let joins: Vec<&str> = log.lines().filter(|l| l.contains("joined at round")).collect();
        assert!(!joins.is_empty() && joins.len() as u64 <= killed[i] + 1, "{w}, killed {}: {log}", killed[i]);
        for join in &joins[1..] {
            assert!(
                join.contains("momentum resumed") || join.contains("momentum starts at zero: "),
                "{w}'s restart neither resumed nor said why: {join}"
            );
        }
    }
    // Every round closed with exactly one counted contribution of each worker: none lost (the round
    // waited for both), none counted twice; and everyone agrees with the auditor.
    fed.assert_each_round_counts_each_worker_once(rounds, &["w1", "w2"]);
}

/// Crash at chosen points (issue 20; `trainer::crashpoint`): a run in which every participant (two
/// workers, a validator) aborts the first time it reaches `point` and is restarted with the same
/// command, without the point armed. Rounds wait for both workers and a snapshot follows round 1,
/// so every point is reached; the run must finish with nothing lost or counted twice.
fn crash_at(point: &str) {
    let rounds = 3;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fed = runtime.block_on(Fed::start(&TWO_WORKERS_AND_A_VALIDATOR, &sections(rounds, 2, 600, 2, "sign")));
    let commands = PARTICIPANTS;
    let children = spawn_participants(&fed, &[("CAIRN_CRASH_AT", point)]);
    let crashed = run_restarting_crashed(&fed, point, children, |i, name| fed.spawn(commands[i].1, name));
    // Workers reach every point first in round 0: before the momentum file of round 0 is in
    // place, a restart starts at zero and says so (a file written but not renamed is not read);
    // after, it resumes.
    let before_saved = ["worker:uploaded", "append:contribution", "state:written"].contains(&point);
    let expected = if before_saved { "momentum starts at zero: no saved worker state" } else { "momentum resumed" };
    for w in crashed.iter().filter(|n| n.starts_with('w')) {
        let log = fed.log_text(w);
        let rejoin = log.lines().filter(|l| l.contains("joined at round")).nth(1);
        let rejoin = rejoin.unwrap_or_else(|| panic!("{w} did not join again after {point}: {log}"));
        assert!(rejoin.contains(expected), "{w}'s restart after {point}: {rejoin:?}, expected {expected:?}");
    }
    fed.assert_each_round_counts_each_worker_once(rounds, &["w1", "w2"]);
}

/// Waits for `children` (armed to abort at `point`) to end; each one that aborted there is
/// restarted once, unarmed, by `restart(index, name)`. Fails if one fails otherwise, aborts twice,
/// or nobody reached the point. Returns those that aborted.
pub(crate) fn run_restarting_crashed<'a>(
    fed: &Fed,
    point: &str,
    mut children: Vec<(&'a str, Child)>,
    restart: impl Fn(usize, &str) -> Child,
) -> Vec<&'a str> {
    let mut crashed = Vec::new();
    let started = Instant::now();
    loop {
        let mut running = false;
        let mut failed = None;
        for (i, (name, child)) in children.iter_mut().enumerate() {
            match child.try_wait().unwrap() {
                None => running = true,
                Some(s) if s.success() => {}
                Some(s) => {
                    let said = format!("crash point {point} reached");
                    if crashed.contains(name) || !fed.log_text(name).contains(&said) {
                        failed = Some(format!("{name} exited with {s} at {point}"));
                        break;
                    }
                    crashed.push(*name);
                    *child = restart(i, name);
                    running = true;
                }
            }
        }
        if let Some(why) = failed {
            fed.fail(&mut children, &why); // kills the others, shows every log
        }
        if !running {
            break;
        }
        if started.elapsed() > RUN_TIMEOUT {
            fed.fail(&mut children, &format!("the run did not end after crashes at {point} of {crashed:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!crashed.is_empty(), "nobody reached {point}: every point must be reached by this run");
    eprintln!("crash point {point}: {crashed:?} aborted there and restarted");
    crashed
}

/// The points of a worker's own contribution; the other test takes every other point.
const WORKER_POINTS: [&str; 4] = ["worker:uploaded", "append:contribution", "state:written", "state:saved"];

#[test]
fn a_worker_aborted_between_its_writes_restarts_and_nothing_is_lost_or_counted_twice() {
    for point in WORKER_POINTS {
        assert!(trainer::crashpoint::POINTS.contains(&point), "{point}");
        crash_at(point);
    }
}

#[test]
fn a_participant_aborted_after_each_round_write_restarts_and_nothing_is_lost_or_counted_twice() {
    // The gatherer's points are reached only in a gathered run (tests/it/gather.rs).
    let others = |p: &&&str| !WORKER_POINTS.contains(p) && !crate::gather::GATHER_POINTS.contains(p);
    for point in trainer::crashpoint::POINTS.iter().filter(others) {
        crash_at(point);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_worker_joins_from_a_snapshot_and_its_contributions_count() {
    let members =
        [("admin", "alpha", "admin"), ("w1", "alpha", "worker"), ("w2", "beta", "worker"), ("late", "gamma", "worker")];
    // Rounds close 4 s after they open without the missing worker (once it runs, as soon as all
    // three are in); a snapshot every 2 rounds.
    // A window of 2 rounds: w1 and w2 forget behind it from round 3 on while they publish the
    // export parts, and the late worker joins from a log whose early rounds they forgot.
    let config =
        sections(7, 2, 4, 2, "sign").replace("verdict_wait_secs = 60\n", "verdict_wait_secs = 60\nwindow = 2\n");
    assert!(config.contains("window = 2"));
    let fed = Fed::start(&members, &config).await;
    let mut children = vec![("w1", fed.spawn("worker", "w1")), ("w2", fed.spawn("worker", "w2"))];
    let started = Instant::now();
    while !(fed.log_text("w1") + &fed.log_text("w2")).contains("snapshot after round 3") {
        assert!(started.elapsed() < RUN_TIMEOUT, "no snapshot: {}", fed.log_text("w1"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Checkpoint forgeries on the real server, while the run goes on: one organisation (gamma)
    // signs a head far beyond the log and a wrong root at the head; anyone with write access puts
    // garbage where w1's next signatures will go. Publishing and auditing must not notice.
    let store = storage::open_with(&fed.url, &testing::s3_options()).await.unwrap();
    let run_id = ledger::genesis_run_id(&store).await.unwrap();
    let head = ledger::find_head(&store, ledger::Seq(0)).await.unwrap().0;
    for size in [head, head + 1000] {
        let cp = ledger::Checkpoint { run_id, size, root: ledger::Hash([0xee; 32]) };
        let bytes = Bytes::from(ledger::SignedCheckpoint::sign(cp, fed.key("late")).encode());
        store.put_if_absent(&ledger::checkpoint::checkpoint_key(size, &fed.key("late").public()), bytes).await.unwrap();
    }
    for size in head + 1..head + 40 {
        let key = ledger::checkpoint::checkpoint_key(size, &fed.key("w1").public());
        store.put_if_absent(&key, Bytes::from_static(b"garbage")).await.unwrap();
    }
    children.push(("late", fed.spawn("worker", "late")));
    fed.wait_all(&mut children);
    let log = fed.log_text("late");
    assert!(log.contains("from a snapshot"), "{log}");
    let (report, passed) = fed.audit_json();
    assert!(passed, "{report:#}");
    let checkpoint = &report["checkpoint"];
    assert_eq!(checkpoint["status"], "verified", "{checkpoint:#}");
    // A head after the forgeries, cosigned by two organisations (w1's signature may be the one the
    // garbage took: then beta and gamma are the two).
    assert_eq!(checkpoint["required_organisations"], 2, "{checkpoint:#}");
    assert!(checkpoint["organisations"].as_array().unwrap().len() >= 2, "{checkpoint:#}");
    assert!(checkpoint["size"].as_u64().unwrap() > head, "signing went on past the forgeries: {checkpoint:#}");
    // The same checkpoint as a signed note, checked by the independent verifier with the vkeys.
    let note = cairn(&["checkpoint", "--store", &fed.url], &fed.env);
    let vkeys = cairn(&["checkpoint", "--store", &fed.url, "--vkeys"], &fed.env);
    assert!(note.status.success() && vkeys.status.success(), "{}", String::from_utf8_lossy(&note.stderr));
    let (note_file, vkeys_file) = (fed.dir.path().join("checkpoint.note"), fed.dir.path().join("members.vkeys"));
    std::fs::write(&note_file, &note.stdout).unwrap();
    std::fs::write(&vkeys_file, &vkeys.stdout).unwrap();
    let checked = crate::ledger_cli::spec_check_note(&note_file, &vkeys_file);
    let summary = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let expected = format!("size={} root={} ", checkpoint["size"], checkpoint["root"].as_str().unwrap());
    assert!(summary.contains(&expected), "{summary} (audit: {checkpoint:#})");
    let closers = fed.log_text("w1") + &fed.log_text("w2");
    assert!(closers.contains("ledger exported to exports/"), "each snapshot comes with a Parquet export: {closers}");
    // The parts (snapshot rounds 1, 3 and 5; a finaliser that took in two rounds at once skips
    // one, and the next part covers the gap if its finaliser still holds the slots) never overlap,
    // and follow each other from slot 0 when none was skipped.
    let mut parts = ledger::export::parts_present(&store).await.unwrap();
    parts.sort_unstable();
    assert!(parts.len() >= 2 && parts.windows(2).all(|w| w[0].1 <= w[1].0), "{parts:?}");
    if parts.len() == 3 {
        assert!(parts[0].0 == 0 && parts.windows(2).all(|w| w[0].1 == w[1].0), "{parts:?}");
    }
    assert!(log.contains("ours counted"), "the late worker's contributions count: {log}");
    assert_eq!(fed.worker_state("late"), fed.worker_state("w1"));
    assert_eq!(fed.audit_ok(), fed.worker_state("w1"));
}

/// An update of `key` for the open round, computed as an honest worker would.
async fn honest_update(follower: &Follower, key: &Keypair) -> Bytes {
    let info = follower.info();
    let model = Model::from_state(&info.model, follower.state(), trainer::Device::Cpu).unwrap();
    let mut demo = trainer::demo::DemoState::new(&info.config.layout, trainer::Device::Cpu).unwrap();
    let data = info.train.dataset().await.unwrap();
    let step = StepConfig { micro_batch: 8, clip_norm: Some(1.0) };
    let me = WorkerKey(key.public().0);
    compute_update(&model, &mut demo, None, &data, &step, follower, &me, 0.99).unwrap().0
}

/// The same update with every bf16 value negated.
fn sign_flipped(bytes: &[u8], follower: &Follower, worker: &PublicKey) -> Bytes {
    let info = follower.info();
    let expected = Expected {
        run: verify::RunId(info.run_id.0),
        round: follower.round(),
        base: follower.state_hash(),
        worker: WorkerKey(worker.0),
        layout: &info.config.layout,
        compression: info.config.hyper.compression,
    };
    let update = verify::decode(bytes, &expected).unwrap();
    let parts = update
        .tensors()
        .iter()
        .map(|t| match t.values() {
            Values::Bf16(v) => (t.indices().to_vec(), Values::Bf16(v.iter().map(|b| b ^ 0x8000).collect())),
            _ => panic!("the adversarial run uses bf16 values"),
        })
        .collect();
    Bytes::from(Update::new(*update.header(), &info.config.layout, parts).unwrap().to_bytes())
}

async fn contribute(follower: &mut Follower, key: &Keypair, blob: Bytes, base: Option<[u8; 32]>) -> Entry {
    let size = blob.len() as u64;
    let id = follower.info().store.put_blob(blob).await.unwrap();
    let entry = Entry::sign(follower.info().run_id, contribution(follower, id, size, base), &[key]).unwrap();
    follower.append(entry.clone()).await.unwrap();
    entry
}

fn contribution(follower: &Follower, blob: ledger::BlobId, size: u64, base: Option<[u8; 32]>) -> Body {
    Body::Contribution(Contribution {
        round: ledger::Round(follower.round().0),
        base_state: ledger::StateHash(base.unwrap_or(follower.state_hash().0)),
        assignment: vec![],
        blob,
        blob_size: size,
        metrics: vec![],
    })
}

/// Not-counted contributions of round 0 in an audit report, as (worker hex, reason kind).
fn not_counted(report: &Value) -> Vec<(String, String)> {
    report["rounds"][0]["not_counted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["worker"].as_str().unwrap().to_string(), n["reason_kind"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn adversaries_are_void_or_excluded_and_the_audit_says_why() {
    let members = [
        ("admin", "alpha", "admin"),
        ("w1", "alpha", "worker"),
        ("w2", "beta", "worker"),
        ("forger", "mallory", "worker"),
        ("stale", "mallory", "worker"),
        ("nan", "mallory", "worker"),
        ("copier", "mallory", "worker"),
        ("flipper", "mallory", "worker"),
        ("closer", "mallory", "worker"),
        ("vanisher", "mallory", "worker"),
        ("v", "beta", "validator"),
        ("v2", "alpha", "validator"),
    ];
    // One round, which waits for every worker (the deadline is far), so every adversary lands in
    // it; the close also waits for the verdicts of both honest organisations' validators on every
    // contribution it would count (a contribution fails only when validators of a quorum of
    // organisations, 2 of alpha, beta and mallory, fail it).
    let fed = Fed::start(&members, &sections(1, 2, 600, 0, "bf16")).await;
    let mut children = vec![("w1", fed.spawn("worker", "w1")), ("w2", fed.spawn("worker", "w2"))];
    children.push(("v", fed.spawn("validate", "v")));
    children.push(("v2", fed.spawn("validate", "v2")));
    let store = storage::open_with(&fed.url, &testing::s3_options()).await.unwrap();
    let mut follower = Follower::join(store).await.unwrap();
    // Wait for both honest contributions of round 0.
    let started = Instant::now();
    let honest = loop {
        follower.poll().await.unwrap();
        let found: Vec<(Entry, ledger::LoggedEntry)> = follower
            .reader()
            .entries()
            .iter()
            .filter(|e| matches!(e.entry.as_ref().map(|x| &x.body), Some(Body::Contribution(_))))
            .map(|e| (e.entry.clone().unwrap(), e.clone()))
            .collect();
        if found.len() >= 2 {
            break found;
        }
        assert!(started.elapsed() < RUN_TIMEOUT, "no honest contributions");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (w1_entry, w1_logged) = honest.iter().find(|(e, _)| e.signer() == fed.key("w1").public()).unwrap();
    let Body::Contribution(w1_contribution) = &w1_entry.body else { unreachable!() };

    // A forged signature: a real contribution body whose signature does not verify.
    let forger = fed.key("forger");
    let mut forged = Entry::sign(
        follower.info().run_id,
        contribution(&follower, w1_contribution.blob, w1_contribution.blob_size, None),
        &[forger],
    )
    .unwrap();
    forged.signatures[0].signature.0[7] ^= 0x20;
    follower.append(forged).await.unwrap();
    // A replayed contribution: w1's entry, byte for byte, in a new slot.
    let mut appender = ledger::Appender::starting_at(follower.info().store.clone(), follower.reader().next_seq());
    appender.append_slot(ledger::slot::encode_slot(&[w1_logged.bytes.to_vec()]).unwrap()).await.unwrap();
    // A stale base: an honest update whose entry names another state.
    let stale = fed.key("stale");
    let update = honest_update(&follower, stale).await;
    contribute(&mut follower, stale, update, Some([7; 32])).await;
    // NaN: an honest update with its last bf16 value set to NaN.
    let nan = fed.key("nan");
    let mut poisoned = honest_update(&follower, nan).await.to_vec();
    let n = poisoned.len();
    poisoned[n - 2..].copy_from_slice(&0x7fc0u16.to_le_bytes());
    contribute(&mut follower, nan, Bytes::from(poisoned), None).await;
    // A copy: w1's blob under another key.
    let copier = fed.key("copier");
    let copied = follower.info().store.get_blob(w1_contribution.blob, 1 << 24).await.unwrap();
    contribute(&mut follower, copier, copied, None).await;
    // A sign flip: an honest update with every value negated.
    let flipper = fed.key("flipper");
    let update = honest_update(&follower, flipper).await;
    let flipped = sign_flipped(&update, &follower, &flipper.public());
    contribute(&mut follower, flipper, flipped, None).await;
    // A blob that vanishes: contributed, then deleted from the bucket before anyone read it
    // (what a member who can delete objects, or a storage class change, does). Nobody can read
    // it, so the attesting organisations drop it and the round goes on.
    let vanisher = fed.key("vanisher");
    let update = honest_update(&follower, vanisher).await;
    let entry = contribute(&mut follower, vanisher, update, None).await;
    let Body::Contribution(c) = &entry.body else { unreachable!() };
    follower.info().store.delete(&c.blob.key()).await.unwrap();
    // Garbage at the head of the log, from anyone with write access to the bucket (it used to stall
    // closing: a close had to land at one exact slot).
    // The workers append meanwhile: if one takes the slot first, try the next head.
    loop {
        follower.poll().await.unwrap();
        let head = follower.reader().next_seq();
        let store = follower.info().store.clone();
        let put = store.put_if_absent(&ledger::seq_key(head), Bytes::from_static(b"not a slot")).await.unwrap();
        if matches!(put, storage::PutOutcome::Created(_)) {
            break;
        }
    }
    // An early close: mallory contributes, then votes to close at once (to shut out everyone after
    // it). One organisation is below the quorum of 2: the round closes only with an honest vote,
    // whose cut covers every contribution that honest organisation had seen.
    let closer = fed.key("closer");
    let update = honest_update(&follower, closer).await;
    contribute(&mut follower, closer, update, None).await;
    let seen = follower.reader().next_seq();
    let vote = Body::CloseVote(ledger::CloseVote { round: ledger::Round(0), seen });
    follower.append(Entry::sign(follower.info().run_id, vote, &[closer]).unwrap()).await.unwrap();
    assert!(follower.reader().state().rounds().close(ledger::Round(0)).is_none(), "one organisation cannot close");

    fed.wait_all(&mut children);
    let (report, passed) = fed.audit_json();
    assert!(passed, "the run itself is sound: {report:#}");
    let hex = |name: &str| fed.key(name).public().to_string();
    let void: Vec<(String, String)> = report["void_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["signer"].as_str().unwrap_or("").to_string(), v["reason_kind"].as_str().unwrap().to_string()))
        .collect();
    assert!(void.contains(&(hex("forger"), "bad_signature".into())), "{void:?}");
    assert!(void.contains(&(hex("w1"), "duplicate".into())), "{void:?}");
    let why = not_counted(&report);
    let reason = |name: &str| why.iter().filter(|(w, _)| *w == hex(name)).map(|(_, r)| r.clone()).collect::<Vec<_>>();
    assert_eq!(reason("stale"), ["stale_base"], "{why:?}");
    for name in ["nan", "copier", "flipper"] {
        let r = reason(name);
        assert!(r == ["rejected"] || r == ["undecodable"], "{name}: {r:?} in {why:?}");
    }
    assert_eq!(reason("flipper"), ["rejected"], "the sign flip decodes; only the validators' scores catch it");
    // Its validators could not read it either: failed by both honest organisations' validators
    // (unusable), or, had the round closed first, dropped by the attesters (unavailable).
    let vanished = reason("vanisher");
    assert!(vanished == ["rejected"] || vanished == ["unavailable"], "{why:?}");
    assert!(reason("closer").is_empty(), "the early closer's own update counts like any other: {why:?}");
    assert_eq!(report["rounds"][0]["counted"].as_u64(), Some(3), "the honest updates and the closer's: {report:#}");
    // The cut is an honest organisation's, past every contribution.
    let cut = report["rounds"][0]["cut"].as_u64().unwrap();
    assert!(cut > seen.0, "cut {cut}, the early vote had seen {}", seen.0);
    assert!(void.iter().any(|(_, r)| r == "malformed_slot"), "the garbage slot is void: {void:?}");
    let excluded: Vec<&str> =
        report["exclusions"].as_array().unwrap().iter().map(|e| e["worker"].as_str().unwrap()).collect();
    assert!(excluded.contains(&hex("flipper").as_str()), "max_failures = 1 excludes the flipper: {excluded:?}");
    // The honest workers agree with the auditor.
    assert_eq!(report["state"].as_str().map(str::to_string), Some(fed.worker_state("w1")));
    // The excluded key, run as a worker, stops at once and says why.
    let out = cairn(&["worker", "--store", &fed.url, "--key", fed.key_path("flipper")], &fed.env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("excluded by validators' verdicts"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_outside_the_roster_or_in_another_role_is_refused_with_one_line() {
    let members = [("admin", "alpha", "admin"), ("w1", "alpha", "worker"), ("v", "beta", "validator")];
    let fed = Fed::start(&members, &sections(1, 1, 60, 0, "sign")).await;
    let stranger = fed.dir.path().join("stranger.key");
    ledger::write_key_file(&stranger).unwrap();
    let cases = [
        ("worker", stranger.to_str().unwrap(), "is not in this run's roster"),
        ("worker", fed.key_path("v"), "not a Worker"),
        ("validate", fed.key_path("w1"), "not a Validator"),
    ];
    for (command, key, says) in cases {
        let out = cairn(&[command, "--store", &fed.url, "--key", key], &fed.env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command} {key}: {stderr}");
        assert!(stderr.contains(says) && stderr.trim().lines().count() == 1, "{command}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quorum_of_admins_adds_a_worker_who_can_then_work() {
    let members = [("a1", "alpha", "admin"), ("a2", "beta", "admin"), ("w1", "alpha", "worker")];
    let fed = Fed::start_with_quorum(&members, &sections(1, 1, 60, 0, "sign"), 2).await;
    let newcomer = fed.dir.path().join("newcomer.key");
    let public = ledger::write_key_file(&newcomer).unwrap().public().to_string();
    let proposal = fed.dir.path().join("change.entry");
    let (store, proposal) = (fed.url.as_str(), proposal.to_str().unwrap());
    let refused = cairn(&["worker", "--store", store, "--key", newcomer.to_str().unwrap(), "--rounds", "0"], &fed.env);
    assert_eq!(refused.status.code(), Some(1), "not a member yet");

    // The first admin's signature alone is not a quorum: it goes to the proposal file.
    let add = ["roster", "add", "--store", store, "--member", &public, "--organisation", "gamma", "--role", "worker"];
    let first = cairn(&[&add[..], &["--key", fed.key_path("a1"), "--proposal", proposal]].concat(), &fed.env);
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success() && text.contains("1 of 2 admin signatures"), "{text}{:?}", first);
    // A worker cannot sign for admins.
    let sign = |key: &str, yes: bool| {
        let args = ["roster", "sign", "--store", store, "--proposal", proposal, "--key", fed.key_path(key)];
        cairn(&[&args[..], if yes { &["--yes"][..] } else { &[] }].concat(), &fed.env)
    };
    let worker_signs = sign("w1", true);
    assert_eq!(worker_signs.status.code(), Some(1));
    // Without --yes (and no terminal to ask at) the second admin sees the change and nothing is signed.
    let shown = sign("a2", false);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(1), "{shown:?}");
    assert!(
        text.starts_with(&format!("roster change at epoch 0: add worker {public} (organisation \"gamma\")")),
        "{text}"
    );
    assert!(text.contains(&format!("signed by admin {}", fed.key("a1").public())), "{text}");
    assert!(String::from_utf8_lossy(&shown.stderr).contains("run again with --yes"), "{shown:?}");
    // The second admin completes the quorum on their own machine; the change is appended.
    let second = sign("a2", true);
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success() && text.contains("roster: applied") && text.contains("epoch 1"),
        "{text}{:?}",
        second
    );
    // The proposal cannot be replayed: the roster moved to epoch 1.
    let again = sign("a1", true);
    assert!(String::from_utf8_lossy(&again.stderr).contains("epoch 0"), "{again:?}");

    let joined = cairn(&["worker", "--store", store, "--key", newcomer.to_str().unwrap(), "--rounds", "0"], &fed.env);
    assert!(joined.status.success(), "a member now: {}", String::from_utf8_lossy(&joined.stderr));
    let (report, passed) = fed.audit_json();
    assert!(passed, "{report:#}");
}

/// One organisation's view of the run's bucket: the shared S3 store seen through a
/// `storage::fault::FaultStore` without random faults, where chosen keys can be made unreadable
/// for this organisation alone (a storage class, an ACL, a network path that only it has).
fn view_of(shared: &storage::Store, run_prefix: &str, seed: u64) -> (storage::Store, storage::fault::Unreadable) {
    let fault = storage::fault::FaultStore::over(shared.raw().clone(), seed, storage::fault::Faults::default());
    let unreadable = fault.unreadable();
    let store =
        storage::Store::from_object_store(std::sync::Arc::new(fault), &format!("view{seed}://"), shared.retry_policy());
    (store.scoped(run_prefix).unwrap(), unreadable)
}

/// Issue 16's re-publication, end to end on SeaweedFS: beta cannot read alpha's update at its
/// original key, alpha can. Beta drops it after `DROP_AFTER_FAILED_READS` failed reads; alpha,
/// seeing the drop, re-publishes the blob under `mirrors/<alpha>/`; beta reads that copy and
/// revises its attestation. The round becomes final with both updates counted, both organisations
/// reach the same state, and audits through either view (beta's still cannot read the original)
/// and through the plain store agree.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_one_organisation_cannot_read_is_re_published_under_a_mirror_and_the_run_closes() {
    let members = [("admin", "alpha", "admin"), ("wa", "alpha", "worker"), ("wb", "beta", "worker")];
    // One round that waits for both workers; the default org quorum of two organisations is 2, so
    // the round is final only once alpha and beta attest the same result.
    let fed = Fed::start(&members, &sections(1, 2, 600, 0, "bf16")).await;
    let shared = storage::open_with(&fed.url, &testing::s3_options()).await.unwrap();
    let run_prefix = fed.url.rsplit('/').next().unwrap();
    let (alpha_store, _) = view_of(&shared, run_prefix, 1);
    let (beta_store, beta_cannot_read) = view_of(&shared, run_prefix, 2);
    let mut alpha = Follower::join(alpha_store.clone()).await.unwrap();
    let mut beta = Follower::join(beta_store.clone()).await.unwrap();
    assert_eq!(alpha.info().org_quorum, 2);

    let update = honest_update(&alpha, fed.key("wa")).await;
    let entry = contribute(&mut alpha, fed.key("wa"), update, None).await;
    let Body::Contribution(alphas) = &entry.body else { unreachable!() };
    beta_cannot_read.add(shared.path(&alphas.blob.key()).unwrap().as_ref());
    assert!(beta_store.get_blob(alphas.blob, 1 << 24).await.is_err(), "beta's view refuses the original");
    let update = honest_update(&beta, fed.key("wb")).await;
    contribute(&mut beta, fed.key("wb"), update, None).await;

    // Both organisations' deadlines have passed: each votes, then attests, one call at a time.
    let open_for = Duration::from_secs(3600);
    let mut actions = Vec::new();
    for _ in 0..12 {
        for (org, follower, key) in [("alpha", &mut alpha, fed.key("wa")), ("beta", &mut beta, fed.key("wb"))] {
            follower.sync().await.unwrap();
            if follower.round().0 == 0
                && let Some(action) = follower.take_part(key, open_for).await.unwrap()
            {
                actions.push((org, action));
            }
        }
        if alpha.round().0 == 1 && beta.round().0 == 1 {
            break;
        }
    }
    assert_eq!((alpha.round().0, beta.round().0), (1, 1), "round 0 became final for both: {actions:?}");
    let attested = |org: &str| -> Vec<usize> {
        actions
            .iter()
            .filter_map(|(o, a)| match a {
                TallyAction::Attested { dropped, .. } if *o == org => Some(*dropped),
                _ => None,
            })
            .collect()
    };
    assert_eq!(attested("beta"), [1, 0], "beta dropped the blob, then read the copy and revised: {actions:?}");
    assert_eq!(attested("alpha"), [0], "{actions:?}");
    let mirror = alphas.blob.key_under(&verify::replay::mirror_prefix("alpha"));
    assert!(shared.head(&mirror).await.unwrap().is_some(), "alpha re-published the blob at {mirror}");
    assert!(beta_store.get_blob(alphas.blob, 1 << 24).await.is_err(), "the original is still unreadable to beta");
    assert_eq!(alpha.state_hash(), beta.state_hash());

    // Audits through beta's view (the copy), alpha's view and the plain store agree.
    let mut states = Vec::new();
    for store in [&beta_store, &alpha_store] {
        let report = verify::audit::audit(store, &verify::audit::AuditOptions::default(), &mut |_| {}).await.unwrap();
        assert!(report.passed(), "{:?}", report.problems);
        assert_eq!(report.rounds[0].counted, 2, "alpha's update counted: {:?}", report.rounds[0].not_counted);
        states.push(report.state);
    }
    states.push(fed.audit_ok());
    assert!(states.iter().all(|s| *s == alpha.state_hash().to_string()), "{states:?} vs {}", alpha.state_hash());
}
