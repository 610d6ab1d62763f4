//! Many appenders racing for slots: no gap, no duplicate, everyone learns where they landed.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use ledger::{Appender, Entry, Reader, Seq};
use storage::Store;

use crate::common::{TestRun, memory_store};

/// `appenders` tasks each append `per_appender` single-entry slots; then a reader replays the log
/// and checks it against what every appender was told.
async fn race(store: Store, appenders: usize, per_appender: u64) {
    let run = std::sync::Arc::new(TestRun::new(appenders));
    let genesis_seq = Appender::new(store.clone()).append(&[run.genesis()]).await.unwrap();
    assert_eq!(genesis_seq, Seq(0));

    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|w| {
            let (store, run) = (store.clone(), run.clone());
            tokio::spawn(async move {
                let mut appender = Appender::new(store);
                let mut landed = Vec::new();
                for n in 0..per_appender {
                    let entry = run.contribution(w, 0, n);
                    let seq = appender.append(std::slice::from_ref(&entry)).await.unwrap();
                    landed.push((seq, entry));
                }
                landed
            })
        })
        .collect();
    let mut believed: BTreeMap<Seq, Entry> = BTreeMap::new();
    for task in tasks {
        for (seq, entry) in task.await.unwrap() {
            assert!(believed.insert(seq, entry).is_none(), "two appenders were told they own slot {seq}");
        }
    }
    let elapsed = started.elapsed();

    let reader = Reader::replay(store, run.run_id).await.unwrap();
    let total = appenders as u64 * per_appender;
    assert_eq!(reader.next_seq(), Seq(total + 1), "slots: genesis plus one per append, no gap");
    assert_eq!(believed.len() as u64, total);
    let mut seen = HashSet::new();
    for slot in &reader.slots()[1..] {
        assert_eq!(slot.entries.len(), 1);
        let logged = &reader.entries()[slot.entries.start];
        assert!(logged.validity.is_accept(), "slot {}: {:?}", slot.seq, logged.validity);
        let entry = logged.entry.as_ref().unwrap();
        assert_eq!(believed.get(&slot.seq), Some(entry), "slot {} holds what its appender believes", slot.seq);
        assert!(seen.insert(entry.encode()), "entry in slot {} appears twice", slot.seq);
    }
    eprintln!(
        "{appenders} appenders x {per_appender} entries on {}: {:.2?} ({:.0} appends/s)",
        reader.store().url(),
        elapsed,
        total as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_appenders_on_memory_leave_no_gap_and_no_duplicate() {
    race(memory_store().await, 32, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_appenders_on_a_local_folder_leave_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = storage::open(&url).await.unwrap().scoped("runs/test").unwrap();
    race(store, 32, 100).await;
}

#[tokio::test]
async fn a_batch_lands_in_one_slot_and_the_appender_learns_which() {
    let run = TestRun::new(2);
    let store = memory_store().await;
    let mut a = Appender::new(store.clone());
    a.append(&[run.genesis()]).await.unwrap();
    let batch: Vec<Entry> = (0..5).map(|n| run.contribution(n % 2, 0, n as u64)).collect();
    let seq = a.append(&batch).await.unwrap();
    assert_eq!(seq, Seq(1));
    let reader = Reader::replay(store, run.run_id).await.unwrap();
    let slot = &reader.slots()[1];
    let got: Vec<Entry> = reader.entries()[slot.entries.clone()].iter().map(|e| e.entry.clone().unwrap()).collect();
    assert_eq!(got, batch);
    assert!(reader.entries().iter().all(|e| e.validity.is_accept()));
}

/// The real S3 server (SeaweedFS) queues contended conditional writes for about a second each, so
/// this race is smaller than the memory and folder ones; it prints how long it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_appenders_on_seaweedfs_leave_no_gap_and_no_duplicate() {
    let store = storage::testing::s3_store().await.scoped("runs/test").unwrap();
    race(store, 8, 20).await;
}
