//! Following the rounds through published steps (issue 21, item 2; `trainer::steps`): validators
//! publish each round's step under their organisation's folder, workers with `--steps follow`
//! take each final round through one instead of its updates, and reach the auditor's state; a
//! step that an organisation (or anyone who can write the bucket) altered, truncated or removed
//! costs one read and a fallback, never a wrong state; a run whose members all follow does not
//! stall. On the test S3 server with real processes.

use std::process::Child;

use bytes::Bytes;
use storage::testing;
use verify::Round;
use verify::replay::step_key;
use verify::step::STEP_HEADER_BYTES;

use crate::federation::{Fed, sections};

const TWO_ORGANISATIONS: [(&str, &str, &str); 6] = [
    ("admin", "alpha", "admin"),
    ("w1", "alpha", "worker"),
    ("w2", "beta", "worker"),
    ("w3", "alpha", "worker"),
    ("va", "alpha", "validator"),
    ("vb", "beta", "validator"),
];

async fn store_of(fed: &Fed) -> storage::Store {
    storage::open_with(&fed.url, &testing::s3_options()).await.unwrap()
}

/// The `key=value` figure of `name`'s last `worker:` line.
fn summary_figure(fed: &Fed, name: &str, key: &str) -> u64 {
    let log = fed.log_text(name);
    let last = log.lines().rev().find(|l| l.starts_with("worker: ")).unwrap_or_else(|| panic!("{name}: {log}"));
    let prefix = format!("{key}=");
    last.split_whitespace()
        .find_map(|kv| kv.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{name}: no {key} in {last}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_follow_the_validators_steps_and_a_joiner_survives_altered_and_missing_ones() {
    let fed = Fed::start(&TWO_ORGANISATIONS, &sections(3, 2, 120, 0, "sign")).await;
    let follow = ["--steps", "follow"];
    let mut children: Vec<(&str, Child)> = vec![
        ("w1", fed.spawn_env("worker", "w1", &follow, &[])),
        ("w2", fed.spawn_env("worker", "w2", &follow, &[])),
        // `auto`: a round's 3 updates of a few KB weigh less than tiny's 184 KB step.
        ("w3", fed.spawn_env("worker", "w3", &["--steps", "auto"], &[])),
        ("va", fed.spawn("validate", "va")),
        ("vb", fed.spawn("validate", "vb")),
    ];
    fed.wait_all(&mut children);
    fed.assert_each_round_counts_each_worker_once(3, &["w1", "w2", "w3"]);
    let w3 = fed.log_text("w3");
    assert!(!w3.contains("through a published step") && !w3.contains("attested"), "{w3}");
    let w3_figures = ["rounds_through_steps", "rounds_updates_smaller", "step_fallbacks", "step_bytes_read"]
        .map(|k| summary_figure(&fed, "w3", k));
    assert_eq!(w3_figures, [0, 3, 0, 0], "{w3}");
    for w in ["w1", "w2"] {
        let log = fed.log_text(w);
        assert_eq!(log.matches("applied (through a published step)").count(), 3, "{w}: {log}");
        assert!(!log.contains("attested"), "a follower leaves attesting to the validators: {log}");
        assert_eq!(summary_figure(&fed, w, "rounds_through_steps"), 3, "{log}");
        assert_eq!(summary_figure(&fed, w, "step_fallbacks"), 0, "{log}");
    }
    // Both validators published every round's step: the tiny preset's 918,656 parameters at five
    // trits a byte, after the 90-byte header.
    let store = store_of(&fed).await;
    let step_len = STEP_HEADER_BYTES as u64 + 918_656u64.div_ceil(5);
    for org in ["alpha", "beta"] {
        for round in 0..3 {
            let info = store.head(&step_key(org, Round(round))).await.unwrap();
            assert_eq!(info.map(|i| i.size), Some(step_len), "{org}'s step of round {round}");
        }
    }

    // Now the steps are tampered with, and w1 (alpha) joins the finished run again, through steps.
    // Round 0: alpha's own step, untouched. Round 1: alpha's step altered under its true header
    // (refused when applied; alpha is read no more), beta's passes. Round 2: beta's truncated
    // (refused unread past its length), alpha's not read: from the updates.
    let alpha1 = step_key("alpha", Round(1));
    let mut bytes = store.get(&alpha1, step_len).await.unwrap().bytes.to_vec();
    let at = STEP_HEADER_BYTES + 1000;
    bytes[at] = if bytes[at] % 3 == 2 { bytes[at] - 1 } else { bytes[at] + 1 };
    store.put(&alpha1, Bytes::from(bytes)).await.unwrap();
    let beta2 = step_key("beta", Round(2));
    let truncated = store.get(&beta2, step_len).await.unwrap().bytes.slice(..1000);
    store.put(&beta2, truncated).await.unwrap();
    let audited = fed.audit_ok();
    let mut again = vec![("w1", fed.spawn_env("worker", "w1", &follow, &[]))];
    fed.wait_all(&mut again);
    let log = fed.log_text("w1");
    let figure = |key| summary_figure(&fed, "w1", key);
    assert_eq!((figure("rounds_through_steps"), figure("step_fallbacks"), figure("steps_refused")), (2, 1, 2), "{log}");
    assert_eq!(fed.worker_state("w1"), audited, "{log}");
    assert!(log.contains("leads to") || log.contains("gives"), "the altered step's refusal says why: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_members_all_follow_steps_still_finalises_its_rounds() {
    // No validator publishes, and both workers follow: after twice the deadline and verdict wait
    // without a result, they compute and attest the round themselves.
    let members = [("admin", "alpha", "admin"), ("w1", "alpha", "worker"), ("w2", "beta", "worker")];
    let sections = sections(2, 2, 2, 0, "sign").replace("verdict_wait_secs = 60", "verdict_wait_secs = 1");
    let fed = Fed::start(&members, &sections).await;
    let follow = ["--steps", "follow"];
    let mut children: Vec<(&str, Child)> =
        vec![("w1", fed.spawn_env("worker", "w1", &follow, &[])), ("w2", fed.spawn_env("worker", "w2", &follow, &[]))];
    fed.wait_all(&mut children);
    fed.assert_each_round_counts_each_worker_once(2, &["w1", "w2"]);
    for w in ["w1", "w2"] {
        let log = fed.log_text(w);
        assert!(log.contains("attested"), "{w}: {log}");
        assert_eq!(summary_figure(&fed, w, "rounds_through_steps"), 0, "nobody published: {log}");
    }
}
