//! `cairn store`, `cairn bench storage` and `cairn demo` against a local folder and real S3.

use std::process::Output;

use serde_json::Value;
use storage::testing;

use crate::{bench_figures, cairn};

/// Environment variables for a child process.
type Env = [(String, String)];

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[test]
fn store_check_passes_on_a_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let init = cairn(&["store", "init", path.to_str().unwrap()], &[]);
    assert!(init.status.success(), "{}", stderr(&init));
    let check = cairn(&["store", "check", &format!("file://{}", path.display())], &[]);
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    assert_eq!(last_line(&stdout(&check)), "store check: PASS history=unprotected");
    // Five conformance checks, and the large blob that must land with or without a policy.
    assert_eq!(stdout(&check).lines().filter(|l| l.starts_with("ok ")).count(), 6);
    assert_eq!(stdout(&check).lines().filter(|l| l.starts_with("no ") && l.contains("overwrite ALLOWED")).count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_check_passes_on_s3() {
    let url = testing::fresh_bucket().await;
    let check = cairn(&["store", "check", &url], testing::s3_env());
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    assert_eq!(last_line(&stdout(&check)), "store check: PASS history=unprotected");
    // SeaweedFS here has no bucket policy: a member's credentials can replace and delete history,
    // and an operator who requires protection is told so, prefix by prefix.
    let strict = cairn(&["store", "check", &url, "--require-protection"], testing::s3_env());
    assert_eq!(strict.status.code(), Some(1), "{}{}", stdout(&strict), stderr(&strict));
    assert_eq!(
        last_line(&stdout(&strict)),
        "store check: FAIL protected ledger/seq/, protected checkpoints/, protected blobs/, protected mirrors/"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_problems_are_one_clear_line_and_exit_1() {
    let url = testing::fresh_bucket().await;
    let env = testing::s3_env();
    let missing = format!("s3://cairn-missing-{}/run", testing::hex_id());
    let mut wrong_secret = env.clone();
    wrong_secret.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong".into()));
    let cases: [(&str, &Env, &str); 3] = [
        (&missing, env, "does not exist; create it with `cairn store init"),
        (&url, &wrong_secret, "access denied"),
        ("file:///nonexistent/cairn-store", &[], "does not exist; create it with `cairn store init"),
    ];
    for (target, env, want) in cases {
        let out = cairn(&["store", "check", target], env);
        assert_eq!(out.status.code(), Some(1), "{target}");
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{target}: one line expected, got {err}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(want), "{target}: {err}");
        assert!(stdout(&out).is_empty(), "{target}: nothing on stdout");
    }
}

/// `--log-format json`: every log line on stderr is one JSON object a collector can parse, with
/// its level, message and target; the error line the user sees stays plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line() {
    let url = testing::fresh_bucket().await;
    let mut env = testing::s3_env().clone();
    env.push(("CAIRN_LOG".into(), "debug".into()));
    let out = cairn(&["store", "check", &url, "--log-format", "json"], &env);
    let err = stderr(&out);
    let logs: Vec<Value> =
        err.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(logs.len() >= 3, "debug logs of the S3 client: {err}");
    for log in &logs {
        assert!(log["level"].is_string() && log["target"].is_string() && log["fields"]["message"].is_string(), "{log}");
    }
    assert!(err.lines().all(|l| l.starts_with('{') || l.starts_with("error: ")), "{err}");
}

#[test]
fn bench_storage_ends_with_its_figures() {
    let out = cairn(&["bench", "storage", "memory://", "--objects", "2", "--rounds", "1", "--object-mib", "1"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let figures = bench_figures(&stdout(&out), "storage");
    for (k, v) in &figures {
        assert!(*v > 0.0, "{k}={v}");
    }
    for k in ["put_mib_per_s", "put_ratio", "get_mib_per_s", "get_ratio", "blake3_gb_per_s"] {
        assert!(figures.iter().any(|(key, _)| key == k), "{k} missing from the last line");
    }
}

#[test]
fn demo_runs_a_federation_serves_its_dashboard_and_its_store_passes_the_audit() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/demo", dir.path().display());
    let work = dir.path().join("local");
    let args = ["demo", "--store", &url, "--work-dir", work.to_str().unwrap(), "--preset", "tiny", "--rounds", "4"];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([&args[..], &["--tokens-per-round", "256"]].concat())
        .env("OMP_NUM_THREADS", "1")
        .env_remove("CAIRN_LOG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut text = String::new();
    let mut base = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        text += &line;
        text += "\n";
        base = crate::dashboard::dashboard_address(&line);
        if base.is_some() {
            break;
        }
    }
    let base = base.unwrap_or_else(|| panic!("the demo prints its dashboard's address: {text}"));
    // While the demo trains, the page follows it: the screenshot in the README is this one.
    let live =
        crate::dashboard::wait_for(&base, "two final rounds", |r| r["ledger"]["final_rounds"].as_u64() >= Some(2));
    assert_eq!(live["ledger"]["config"]["preset"], "tiny");
    assert_eq!(live["ledger"]["organisations"].as_array().unwrap().len(), 2);
    let devices: Vec<&Value> = live["ledger"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "worker")
        .map(|m| &m["device"])
        .collect();
    assert_eq!(devices.len(), 4);
    assert!(devices.iter().all(|d| *d == "cpu"), "workers report their device: {devices:?}");
    let round0 = &live["ledger"]["rounds"][0];
    assert!(round0["train_ms"].as_i64().unwrap() > 0, "workers report their timings: {round0}");
    assert!(round0["wait_ms"].is_i64(), "and the wait, with the next round's contribution: {round0}");
    // Validators sign the held-out loss of each final round (about 5.5 nats at the start: the
    // uniform guess over 256 bytes is ln 256 = 5.545).
    let held_out = round0["eval_loss_milli"].as_i64().unwrap_or_else(|| panic!("an evaluation of round 0: {round0}"));
    assert!((4000..5600).contains(&held_out), "{round0}");
    crate::dashboard::browse(
        &format!("{base}/"),
        1280,
        800,
        Some(&crate::dashboard::artifact("demo-live-1280x800.png")),
    );
    for line in lines {
        text += &line.unwrap();
        text += "\n";
    }
    assert!(child.wait().unwrap().success(), "{text}");
    assert!(text.contains("store check: PASS"), "{text}");
    assert!(text.contains("4/4: 4 contributions in 4 slots, 8 verdicts"), "two validators judge each: {text}");
    let audit_line = text.lines().find(|l| l.trim_start().starts_with("audit: OK rounds=4")).expect("audit line");
    assert!(text.contains("floor"), "the summary compares the loss with the corpus's floor: {text}");
    // Anyone recomputes the held-out loss of the newest final round and finds what the validators
    // signed (the same code; threads may move the last digit); a member appends its own.
    let run = format!("{url}/run-1");
    let status: Value = serde_json::from_slice(&cairn(&["status", "--store", &run, "--json"], &[]).stdout).unwrap();
    let signed: Vec<i64> = status["rounds"][3]["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["loss_milli"].as_i64().unwrap())
        .collect();
    assert_eq!(signed.len(), 2, "both validators evaluated round 3: {}", status["rounds"][3]);
    let eval = cairn(&["eval", "--store", &run], &[]);
    let line = last_line(&stdout(&eval)).to_string();
    assert!(line.starts_with("eval: round=3 loss="), "{line}{}", stderr(&eval));
    assert!(line.ends_with(" appended=false"), "{line}");
    let recomputed: f64 = line.split(" loss=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    for s in &signed {
        assert!((recomputed * 1000.0 - *s as f64).abs() <= 2.0, "recomputed {recomputed}, signed {s}");
    }
    let admin = work.join("run-1").join("admin.key");
    let eval = cairn(&["eval", "--store", &run, "--key", admin.to_str().unwrap()], &[]);
    assert!(last_line(&stdout(&eval)).ends_with(" appended=true"), "{}{}", stdout(&eval), stderr(&eval));
    let eval = cairn(&["eval", "--store", &run, "--key", admin.to_str().unwrap()], &[]);
    assert!(last_line(&stdout(&eval)).ends_with(" appended=false"), "once per signer and round");
    // What the demo leaves behind is a run any auditor accepts.
    let again = cairn(&["audit", "--store", &run], &[]);
    // (one entry more than at the demo's end: the admin's evaluation; the same rounds and state)
    let (rounds, rest) = audit_line.trim().split_once(" entries=").unwrap();
    let state = rest.split_once(' ').unwrap().1;
    let line = last_line(&stdout(&again)).to_string();
    assert!(line.starts_with(rounds) && line.ends_with(state), "{line} against {audit_line}");
}
