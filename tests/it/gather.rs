//! Gathering (issue 21, item 3; `trainer::gather`): an organisation's contributions to a round
//! appended as one ledger slot by `cairn gather`, on the test S3 server with real workers, a
//! validator and the auditor; the worker's fallback when the gatherer is silent; a hostile
//! gatherer; and crashes around the pending folder.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ledger::{Body, Entry, PublicKey};
use storage::testing;
use trainer::gather::{pending_folder, pending_prefix};

use crate::federation::{Fed, TWO_WORKERS_AND_A_VALIDATOR, run_restarting_crashed, sections};

/// The crash points only a gathered run reaches (the other crash tests leave them to this file).
pub(crate) const GATHER_POINTS: [&str; 2] = ["worker:pending", "gather:appended"];

/// Starts worker `name` leaving its contributions for its organisation's gatherer, appending them
/// itself after `wait_ms`.
fn gathered_worker(fed: &Fed, name: &str, wait_ms: u64, env: &[(&str, &str)]) -> Child {
    fed.spawn_env("worker", name, &["--gatherer-wait-ms", &wait_ms.to_string()], env)
}

/// Starts the gatherer of `member`'s organisation (found from its key), logging to `log`.
fn gatherer(fed: &Fed, log: &str, member: &str, window_ms: u64, env: &[(&str, &str)]) -> Child {
    let window = window_ms.to_string();
    let args =
        ["gather", "--store", &fed.url, "--key", fed.key_path(member), "--poll-ms", "100", "--window-ms", &window];
    fed.spawn_args(log, &args, env)
}

async fn store_of(fed: &Fed) -> storage::Store {
    storage::open_with(&fed.url, &testing::s3_options()).await.unwrap()
}

/// The ledger's accepted contributions: round → slot → signers.
async fn contribution_slots(fed: &Fed) -> BTreeMap<u64, BTreeMap<u64, BTreeSet<PublicKey>>> {
    let store = store_of(fed).await;
    let run_id = ledger::genesis_run_id(&store).await.unwrap();
    let reader = ledger::Reader::replay(store, run_id).await.unwrap();
    let mut slots: BTreeMap<u64, BTreeMap<u64, BTreeSet<PublicKey>>> = BTreeMap::new();
    for e in reader.entries().iter().filter(|e| e.validity.is_accept()) {
        if let Some(entry) = &e.entry
            && let Body::Contribution(c) = &entry.body
        {
            slots.entry(c.round.0).or_default().entry(e.pos.seq.0).or_default().insert(entry.signer());
        }
    }
    slots
}

/// What is left in `organisation`'s pending folder.
async fn pending_left(fed: &Fed, organisation: &str) -> Vec<String> {
    store_of(fed).await.list(&pending_folder(organisation), None).await.unwrap().into_iter().map(|o| o.key).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_organisations_contributions_to_a_round_land_in_one_slot_through_its_gatherer() {
    let members = [
        ("admin", "alpha", "admin"),
        ("w1", "alpha", "worker"),
        ("w2", "alpha", "worker"),
        ("w3", "alpha", "worker"),
        ("w4", "beta", "worker"),
        ("v", "gamma", "validator"),
    ];
    let fed = Fed::start(&members, &sections(3, 4, 120, 0, "sign")).await;
    let workers = ["w1", "w2", "w3", "w4"];
    // A worker waits a minute for its gatherer: any contribution it appended itself would show.
    let mut children: Vec<(&str, Child)> =
        workers.iter().map(|w| (*w, gathered_worker(&fed, w, 60_000, &[]))).collect();
    children.push(("v", fed.spawn("validate", "v")));
    children.push(("g-alpha", gatherer(&fed, "g-alpha", "w1", 30_000, &[])));
    children.push(("g-beta", gatherer(&fed, "g-beta", "w4", 30_000, &[])));
    fed.wait_all(&mut children);
    fed.assert_each_round_counts_each_worker_once(3, &workers);
    let key = |w: &str| fed.key(w).public();
    let alpha: BTreeSet<PublicKey> = ["w1", "w2", "w3"].iter().map(|w| key(w)).collect();
    let slots = contribution_slots(&fed).await;
    assert_eq!(slots.len(), 3, "{slots:?}");
    for (round, by_slot) in &slots {
        // Alpha's three in one slot, beta's one in another: two slots a round, not four.
        assert_eq!(by_slot.len(), 2, "round {round}: {by_slot:?}");
        assert!(by_slot.values().any(|s| *s == alpha), "round {round}: alpha's three share a slot: {by_slot:?}");
        assert!(by_slot.values().any(|s| *s == BTreeSet::from([key("w4")])), "round {round}: {by_slot:?}");
    }
    for w in workers {
        assert_eq!(fed.log_text(w).matches("appended by the gatherer").count(), 3, "{w}: {}", fed.log_text(w));
    }
    let last = |log: &str| fed.log_text(log).lines().last().unwrap_or("").to_string();
    assert_eq!(last("g-alpha"), "gather: slots=3 contributions=9 refused=0", "{}", fed.log_text("g-alpha"));
    assert_eq!(last("g-beta"), "gather: slots=3 contributions=3 refused=0", "{}", fed.log_text("g-beta"));
    // The gatherers leave their folders empty.
    assert_eq!(pending_left(&fed, "alpha").await, Vec::<String>::new());
    assert_eq!(pending_left(&fed, "beta").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_gatherer_delays_a_contribution_by_the_wait_and_a_hostile_one_adds_only_void_copies() {
    let fed = Fed::start(&TWO_WORKERS_AND_A_VALIDATOR, &sections(3, 2, 120, 0, "sign")).await;
    // Beta runs no gatherer: w2 appends its own after 1.5 s. Alpha's "gatherer" is hostile: it
    // appends each pending contribution of w1 twice, with a copy whose body it altered.
    let stop = Arc::new(AtomicBool::new(false));
    let hostile = {
        let (stop, url) = (stop.clone(), fed.url.clone());
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let store = storage::open_with(&url, &testing::s3_options()).await.unwrap();
                let mut appender = ledger::Appender::new(store.clone());
                let mut taken = BTreeSet::new();
                while !stop.load(Ordering::SeqCst) {
                    for round in 0..3 {
                        for object in store.list(&pending_prefix("alpha", ledger::Round(round)), None).await.unwrap() {
                            if taken.contains(&object.key) {
                                continue;
                            }
                            let Ok(got) = store.get(&object.key, 1 << 20).await else { continue };
                            let entry = Entry::decode(&got.bytes).unwrap();
                            let mut altered = entry.clone();
                            if let Body::Contribution(c) = &mut altered.body {
                                c.blob_size += 1;
                            }
                            appender.append(&[entry.clone(), entry, altered]).await.unwrap();
                            taken.insert(object.key);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                taken.len()
            })
        })
    };
    let mut children = vec![
        ("w1", gathered_worker(&fed, "w1", 60_000, &[])),
        ("w2", gathered_worker(&fed, "w2", 1_500, &[])),
        ("v", fed.spawn("validate", "v")),
    ];
    fed.wait_all(&mut children);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(hostile.join().unwrap(), 3, "the hostile gatherer took w1's three contributions");
    fed.assert_each_round_counts_each_worker_once(3, &["w1", "w2"]);
    let (w1, w2) = (fed.log_text("w1"), fed.log_text("w2"));
    assert_eq!(w1.matches("appended by the gatherer").count(), 3, "{w1}");
    assert_eq!(w2.matches("appended by the gatherer").count(), 0, "{w2}");
    assert_eq!(w2.matches("did not append the contribution in time; appending it").count(), 3, "{w2}");
    // Each copy is void: the same entry again (duplicate), the altered body (its signature fails).
    let (report, _) = fed.audit_json();
    let hex = fed.key("w1").public().to_string();
    let void: Vec<&str> = report["void_entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["signer"].as_str() == Some(hex.as_str()))
        .map(|v| v["reason_kind"].as_str().unwrap())
        .collect();
    assert_eq!(void.iter().filter(|r| **r == "duplicate").count(), 3, "{void:?}");
    assert_eq!(void.iter().filter(|r| **r == "bad_signature").count(), 3, "{void:?}");
    // A worker that appended its own deletes what it left for the gatherer.
    assert_eq!(pending_left(&fed, "beta").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_in_the_pending_folder_is_deleted_unread_and_the_gatherer_still_gathers() {
    let fed = Fed::start(&TWO_WORKERS_AND_A_VALIDATOR, &sections(3, 2, 120, 0, "sign")).await;
    // More objects than one listing reads (1,024), in every round's folder of alpha: names that are
    // not a worker's key in lowercase hex (upper-case hex of made-up keys, and of w1's own key).
    let store = store_of(&fed).await;
    let w1 = fed.key("w1").public().to_string();
    let mut puts = tokio::task::JoinSet::new();
    for round in 0..3u64 {
        let prefix = pending_prefix("alpha", ledger::Round(round));
        let mut names: Vec<String> = (0..400u64).map(|i| format!("{:064X}", u128::from(i) << 64 | 0xABCDEF)).collect();
        names.push(w1.to_uppercase());
        for name in names {
            let (store, key) = (store.clone(), format!("{prefix}{name}"));
            puts.spawn(async move { store.put(&key, bytes::Bytes::from_static(b"junk")).await.unwrap() });
            while puts.len() >= 16 {
                puts.join_next().await.unwrap().unwrap();
            }
        }
    }
    while let Some(put) = puts.join_next().await {
        put.unwrap();
    }
    let planted = pending_left(&fed, "alpha").await.len();
    assert_eq!(planted, 3 * 401, "the junk is in place");
    let mut children = vec![
        ("w1", gathered_worker(&fed, "w1", 60_000, &[])),
        ("w2", gathered_worker(&fed, "w2", 60_000, &[])),
        ("v", fed.spawn("validate", "v")),
        ("g-alpha", gatherer(&fed, "g-alpha", "w1", 30_000, &[])),
        ("g-beta", gatherer(&fed, "g-beta", "w2", 30_000, &[])),
    ];
    fed.wait_all(&mut children);
    fed.assert_each_round_counts_each_worker_once(3, &["w1", "w2"]);
    let w1_log = fed.log_text("w1");
    assert_eq!(w1_log.matches("appended by the gatherer").count(), 3, "{w1_log}");
    // Every junk object was left out unread (each reported once) and deleted.
    let log = fed.log_text("g-alpha");
    let last = log.lines().last().unwrap_or("");
    assert_eq!(last, format!("gather: slots=3 contributions=3 refused={planted}"), "{log}");
    assert_eq!(log.matches("not named for a worker of the organisation").count(), planted);
    assert_eq!(pending_left(&fed, "alpha").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_never_comes_holds_its_organisations_slot_for_one_round_only() {
    // w2 of alpha never runs. In round 0 the gatherer waits its whole window for it; from round 1
    // on it waits only for the workers that contributed to the round before.
    let members = [
        ("admin", "alpha", "admin"),
        ("w1", "alpha", "worker"),
        ("w2", "alpha", "worker"),
        ("w3", "beta", "worker"),
        ("v", "gamma", "validator"),
    ];
    // Rounds close at their 10 s deadline (w2 is missing), after the 3 s window.
    let fed = Fed::start(&members, &sections(3, 2, 10, 0, "sign")).await;
    let mut children = vec![
        ("w1", gathered_worker(&fed, "w1", 60_000, &[])),
        ("w3", fed.spawn("worker", "w3")),
        ("v", fed.spawn("validate", "v")),
        ("g-alpha", gatherer(&fed, "g-alpha", "w1", 3_000, &[])),
    ];
    fed.wait_all(&mut children);
    let log = fed.log_text("g-alpha");
    let waited: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split_once("(the oldest waited ")?.1.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(waited.len(), 3, "{log}");
    assert!(waited[0] >= 2_500, "round 0 waits the window for w2: {waited:?}");
    assert!(waited[1] < 1_500 && waited[2] < 1_500, "then only for w1: {waited:?}");
    assert_eq!(fed.log_text("w1").matches("ours counted").count(), 3, "{}", fed.log_text("w1"));
}

/// A gathered run in which every participant, the gatherers included, aborts the first time it
/// reaches `point` and is restarted without it: nothing lost or counted twice, no pending object
/// left.
fn gathered_crash_at(point: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fed = runtime.block_on(Fed::start(&TWO_WORKERS_AND_A_VALIDATOR, &sections(3, 2, 600, 2, "sign")));
    let spawn = |i: usize, env: &[(&str, &str)]| match i {
        0 => gathered_worker(&fed, "w1", 60_000, env),
        1 => gathered_worker(&fed, "w2", 60_000, env),
        2 => fed.spawn_env("validate", "v", &[], env),
        3 => gatherer(&fed, "g-alpha", "w1", 30_000, env),
        _ => gatherer(&fed, "g-beta", "w2", 30_000, env),
    };
    let armed = [("CAIRN_CRASH_AT", point)];
    let names = ["w1", "w2", "v", "g-alpha", "g-beta"];
    let children = names.iter().enumerate().map(|(i, n)| (*n, spawn(i, &armed))).collect();
    run_restarting_crashed(&fed, point, children, |i, _| spawn(i, &[]));
    fed.assert_each_round_counts_each_worker_once(3, &["w1", "w2"]);
    runtime.block_on(async {
        assert_eq!(pending_left(&fed, "alpha").await, Vec::<String>::new(), "{point}");
        assert_eq!(pending_left(&fed, "beta").await, Vec::<String>::new(), "{point}");
    });
}

#[test]
fn a_worker_or_gatherer_aborted_around_the_pending_folder_restarts_and_nothing_is_lost_or_counted_twice() {
    for point in GATHER_POINTS {
        assert!(trainer::crashpoint::POINTS.contains(&point), "{point}");
        gathered_crash_at(point);
    }
}
