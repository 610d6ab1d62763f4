//! Holes: a member with write access writes far ahead of the head, or deletes a slot. Readers
//! fill the hole with the filler and move on, appenders land in it rather than beyond it, and
//! everyone agrees on the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use ledger::log::HOLE_LOOKAHEAD;
use ledger::{Appender, Entry, LedgerError, Reader, Seq, Tamper, VoidReason, seq_key, slot};
use storage::Store;

use crate::common::{TestRun, memory_store};

/// Genesis and `n` contributions by worker 0, in slots 0..=n.
async fn log_of(run: &TestRun, store: &Store, n: u64) {
    let mut a = Appender::new(store.clone());
    a.append(&[run.genesis()]).await.unwrap();
    for i in 0..n {
        a.append(&[run.contribution(0, 0, i)]).await.unwrap();
    }
}

async fn rogue_write(run: &TestRun, store: &Store, seq: u64, n: u64) {
    let bytes = slot::encode_entries(&[run.contribution(1, 0, n)]).unwrap();
    store.put_if_absent(&seq_key(Seq(seq)), bytes).await.unwrap();
}

#[test]
fn the_hole_rule_looks_a_bounded_distance_ahead() {
    assert!(!ledger::log::is_hole(&[]));
    assert!(!ledger::log::is_hole(&[false; 16]));
    let mut ahead = vec![false; 40];
    ahead[15] = true;
    assert!(ledger::log::is_hole(&ahead), "slot N+16 is within the look-ahead");
    ahead[15] = false;
    ahead[16] = true;
    assert!(!ledger::log::is_hole(&ahead), "slot N+17 is beyond it");
}

#[tokio::test]
async fn a_rogue_write_ahead_leaves_a_hole_that_readers_fill_and_everyone_agrees() {
    let run = TestRun::new(2);
    let store = memory_store().await;
    log_of(&run, &store, 3).await; // slots 0..=3
    rogue_write(&run, &store, 10, 100).await; // slots 4..=9 are a hole

    let mut first = Reader::replay(store.clone(), run.run_id).await.unwrap();
    assert_eq!(first.next_seq(), Seq(11), "the reader filled the hole and read on");
    for s in &first.slots()[4..10] {
        assert_eq!(s.void, Some(VoidReason::Filler), "slot {}", s.seq);
        assert!(s.entries.is_empty());
        assert_eq!(store.get(&seq_key(s.seq), 16).await.unwrap().bytes.as_ref(), slot::FILLER);
    }
    let rogue = first.entries().last().unwrap();
    assert_eq!(rogue.pos.seq, Seq(10));
    assert!(rogue.validity.is_accept(), "a member's entry ahead of the head still counts once reached");

    let second = Reader::replay(store.clone(), run.run_id).await.unwrap();
    assert_eq!(second.leaves(), first.leaves(), "a second reader reads the same log");

    // Appenders land right after: a fresh one and one started where the reader stopped.
    assert_eq!(Appender::new(store.clone()).append(&[run.contribution(0, 0, 50)]).await.unwrap(), Seq(11));
    let mut from_reader = Appender::starting_at(store.clone(), first.next_seq());
    assert_eq!(from_reader.append(&[run.contribution(0, 0, 51)]).await.unwrap(), Seq(12));
    assert_eq!(first.poll().await.unwrap(), 2);
    let third = Reader::replay(store, run.run_id).await.unwrap();
    assert_eq!(third.leaves(), first.leaves());
    assert_eq!(third.root_at(13), first.root_at(13));
}

#[tokio::test]
async fn a_write_beyond_the_look_ahead_stays_out_until_the_log_reaches_it() {
    let run = TestRun::new(2);
    let store = memory_store().await;
    log_of(&run, &store, 3).await; // slots 0..=3, head 4
    let far = 4 + HOLE_LOOKAHEAD + 5;
    rogue_write(&run, &store, far, 100).await;

    let mut reader = Reader::replay(store.clone(), run.run_id).await.unwrap();
    assert_eq!(reader.next_seq(), Seq(4), "too far ahead to be a hole: the head is 4");
    assert!(store.head(&seq_key(Seq(4))).await.unwrap().is_none(), "nothing was filled");

    let mut a = Appender::new(store.clone());
    let mut head = 4;
    // The log grows honestly until the far slot is within the look-ahead of its head.
    while head + HOLE_LOOKAHEAD < far {
        let seq = a.append(&[run.contribution(0, 1, head)]).await.unwrap();
        assert_eq!(seq, Seq(head), "appenders never jump to the far slot");
        head += 1;
    }
    reader.poll().await.unwrap();
    assert_eq!(reader.next_seq(), Seq(far + 1), "the gap was filled once the log came within reach");
    let fillers = reader.slots().iter().filter(|s| s.void == Some(VoidReason::Filler)).count() as u64;
    assert_eq!(fillers, far - head);
    assert_eq!(a.append(&[run.contribution(0, 1, 999)]).await.unwrap(), Seq(far + 1));
}

#[tokio::test]
async fn an_appender_lands_in_a_deleted_slot_not_beyond_it() {
    let run = TestRun::new(2);
    let store = memory_store().await;
    log_of(&run, &store, 5).await; // slots 0..=5
    store.delete(&seq_key(Seq(3))).await.unwrap();
    let mut a = Appender::starting_at(store.clone(), Seq(1));
    assert_eq!(a.append(&[run.contribution(1, 0, 77)]).await.unwrap(), Seq(3));
    let reader = Reader::replay(store.clone(), run.run_id).await.unwrap();
    assert_eq!(reader.next_seq(), Seq(6));
    assert!(reader.slots().iter().all(|s| s.void.is_none()));
}

#[tokio::test]
async fn a_deleted_slot_below_a_verified_checkpoint_is_reported_not_filled() {
    let run = TestRun::new(2);
    let store = memory_store().await;
    log_of(&run, &store, 6).await;
    let mut reader = Reader::replay(store.clone(), run.run_id).await.unwrap();
    let size = reader.leaves().len() as u64;
    let cp = reader.publish_checkpoint(&run.admins[0], size).await.unwrap();
    store.delete(&seq_key(Seq(2))).await.unwrap();
    let err = Reader::replay_from_checkpoint(store.clone(), run.run_id, cp).await.unwrap_err();
    assert!(matches!(err, LedgerError::Tampered { seq: Seq(2), how: Tamper::Deleted, .. }), "{err}");
    assert!(store.head(&seq_key(Seq(2))).await.unwrap().is_none(), "the evidence is left as it is");
}

/// Appenders and following readers run while a rogue member keeps writing ahead of the head:
/// nobody stalls, every appender's entry is where it was told, and all readers agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_and_appenders_make_progress_past_rogue_writes_and_agree() {
    const APPENDERS: usize = 4;
    const PER: u64 = 25;
    let run = Arc::new(TestRun::new(APPENDERS + 1));
    let store = memory_store().await;
    Appender::new(store.clone()).append(&[run.genesis()]).await.unwrap();

    let appenders: Vec<_> = (0..APPENDERS)
        .map(|w| {
            let (store, run) = (store.clone(), run.clone());
            tokio::spawn(async move {
                let mut a = Appender::new(store);
                let mut landed = Vec::new();
                for n in 0..PER {
                    let e = run.contribution(w, 0, n);
                    landed.push((a.append(std::slice::from_ref(&e)).await.unwrap(), e));
                    tokio::task::yield_now().await;
                }
                landed
            })
        })
        .collect();
    let rogue = {
        let (store, run) = (store.clone(), run.clone());
        tokio::spawn(async move {
            for i in 0..10u64 {
                let head = ledger::find_head(&store, Seq(0)).await.unwrap();
                rogue_write(&run, &store, head.0 + 2 + i % 7, 1000 + i).await;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    let followers: Vec<_> = (0..2)
        .map(|_| {
            let (store, run_id) = (store.clone(), run.run_id);
            tokio::spawn(async move {
                let mut r = Reader::new(store, run_id);
                for _ in 0..50 {
                    r.poll().await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                r
            })
        })
        .collect();

    let mut believed: BTreeMap<Seq, Entry> = BTreeMap::new();
    for task in appenders {
        for (seq, e) in task.await.unwrap() {
            assert!(believed.insert(seq, e).is_none(), "two appenders were told they own slot {seq}");
        }
    }
    rogue.await.unwrap();
    let mut followers: Vec<Reader> =
        futures::future::join_all(followers).await.into_iter().map(Result::unwrap).collect();

    let last = *believed.keys().last().unwrap();
    let reference = Reader::replay(store.clone(), run.run_id).await.unwrap();
    assert!(reference.next_seq() > last, "the log reaches every appended slot ({last})");
    for (seq, e) in &believed {
        let slot = &reference.slots()[seq.0 as usize];
        let got = reference.entries()[slot.entries.clone()].iter().map(|l| l.entry.clone()).collect::<Vec<_>>();
        assert_eq!(got, vec![Some(e.clone())], "slot {seq} holds what its appender was told");
    }
    for f in &mut followers {
        f.poll().await.unwrap();
        assert_eq!(f.leaves(), reference.leaves(), "a follower agrees with a fresh replay");
    }
}

/// Read access only, as an auditor has: every write is refused.
#[derive(Debug)]
struct ReadOnly(Arc<object_store::memory::InMemory>);

impl std::fmt::Display for ReadOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadOnly({})", self.0)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for ReadOnly {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        _payload: object_store::PutPayload,
        _opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        Err(object_store::Error::PermissionDenied { path: location.to_string(), source: "read-only".into() })
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        _opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        Err(object_store::Error::PermissionDenied { path: location.to_string(), source: "read-only".into() })
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.0.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.0.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.0.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn a_reader_without_write_access_stops_at_a_hole_until_someone_fills_it() {
    let run = TestRun::new(2);
    let memory = Arc::new(object_store::memory::InMemory::new());
    let policy = storage::RetryPolicy { max_attempts: 1, base_delay_ms: 0, max_delay_ms: 0 };
    let writable = Store::from_object_store(memory.clone(), "memory://", policy).scoped("run").unwrap();
    let read_only = Store::from_object_store(Arc::new(ReadOnly(memory)), "memory://", policy).scoped("run").unwrap();
    log_of(&run, &writable, 3).await; // slots 0..=3
    rogue_write(&run, &writable, 6, 100).await; // slots 4 and 5 are a hole

    let mut auditor = Reader::replay(read_only, run.run_id).await.unwrap();
    assert_eq!(auditor.next_seq(), Seq(4), "the auditor cannot fill the hole and stops there");
    let member = Reader::replay(writable, run.run_id).await.unwrap();
    assert_eq!(member.next_seq(), Seq(7), "a member fills it");
    assert_eq!(auditor.poll().await.unwrap(), 3);
    assert_eq!(auditor.leaves(), member.leaves(), "then the auditor reads the same log");
}

#[tokio::test]
async fn an_idle_follower_looks_for_holes_only_every_few_polls() {
    use ledger::log::HOLE_CHECK_EVERY_IDLE_POLLS;
    let run = TestRun::new(2);
    let store = memory_store().await;
    log_of(&run, &store, 2).await; // slots 0..=2
    let mut reader = Reader::replay(store.clone(), run.run_id).await.unwrap();
    assert_eq!(reader.next_seq(), Seq(3));
    rogue_write(&run, &store, 5, 100).await; // slots 3 and 4 are a hole, seen only by looking ahead
    for poll in 1..HOLE_CHECK_EVERY_IDLE_POLLS {
        assert_eq!(reader.poll().await.unwrap(), 0, "idle poll {poll} reads only the head slot");
    }
    assert!(store.get(&seq_key(Seq(3)), 16).await.is_err(), "nothing filled yet");
    assert_eq!(reader.poll().await.unwrap(), 3, "the next idle poll looks ahead, fills and reads on");
    assert_eq!(reader.slots()[3].void, Some(VoidReason::Filler));
}
