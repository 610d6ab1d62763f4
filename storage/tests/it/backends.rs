//! The same behaviour, checked on every backend: memory, a local folder, and real S3.

use bytes::Bytes;
use futures::future::join_all;
use storage::{BlobId, CasOutcome, PutOutcome, Store, StoreError, conformance};

/// Runs one scenario on each backend, as three tests.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory { $( #[tokio::test] async fn $name() { super::$name(&storage::testing::memory_store().await).await } )* }
        mod file { $( #[tokio::test] async fn $name() { let (s, _dir) = storage::testing::file_store().await; super::$name(&s).await } )* }
        mod s3 { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(&storage::testing::s3_store().await).await } )* }
    };
}

on_every_backend!(
    put_if_absent_first_writer_wins,
    get_enforces_the_size_limit,
    compare_and_swap_refuses_a_stale_version,
    list_is_sorted_and_starts_after,
    blobs_round_trip_and_detect_corruption,
    large_blobs_go_up_in_parts,
    streamed_blob_is_hashed_while_uploading,
    streamed_blob_over_the_limit_leaves_nothing,
    conformance_check_passes,
    concurrent_compare_and_swap_loses_no_update,
    an_unprotected_store_is_reported_as_such,
);

async fn put_if_absent_first_writer_wins(s: &Store) {
    let first = s.put_if_absent("ledger/seq/00000000000000000001", Bytes::from_static(b"A")).await.unwrap();
    assert!(matches!(first, PutOutcome::Created(_)));
    let other = s.put_if_absent("ledger/seq/00000000000000000001", Bytes::from_static(b"B")).await.unwrap();
    assert_eq!(other, PutOutcome::AlreadyExists);
    // The same bytes again, with no lost reply in between: still taken (not "ours").
    let again = s.put_if_absent("ledger/seq/00000000000000000001", Bytes::from_static(b"A")).await.unwrap();
    assert_eq!(again, PutOutcome::AlreadyExists);
    assert_eq!(s.get("ledger/seq/00000000000000000001", 10).await.unwrap().bytes.as_ref(), b"A");
    assert!(matches!(s.get("ledger/seq/00000000000000000002", 10).await, Err(StoreError::NotFound { .. })));
    assert!(matches!(s.put_if_absent("a//b", Bytes::new()).await, Err(StoreError::InvalidKey { .. })));
    assert!(matches!(s.put_if_absent("../escape", Bytes::new()).await, Err(StoreError::InvalidKey { .. })));
}

async fn get_enforces_the_size_limit(s: &Store) {
    s.put("big", Bytes::from(vec![7u8; 4096])).await.unwrap();
    match s.get("big", 4095).await {
        Err(StoreError::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (4096, 4095)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(s.get("big", 4096).await.unwrap().bytes.len(), 4096);
    assert_eq!(s.get_range("big", 10..20).await.unwrap().len(), 10);
    assert_eq!(s.head("big").await.unwrap().map(|i| i.size), Some(4096));
    assert_eq!(s.head("absent").await.unwrap(), None);
}

async fn compare_and_swap_refuses_a_stale_version(s: &Store) {
    let CasOutcome::Swapped(v1) =
        s.compare_and_swap("ledger/checkpoint", None, Bytes::from_static(b"one")).await.unwrap()
    else {
        panic!("creating the pointer conflicted")
    };
    assert_eq!(
        s.compare_and_swap("ledger/checkpoint", None, Bytes::from_static(b"x")).await.unwrap(),
        CasOutcome::Conflict
    );
    let read = s.get("ledger/checkpoint", 100).await.unwrap();
    assert_eq!(read.version, v1, "a read reports the version the write returned");
    let CasOutcome::Swapped(v2) =
        s.compare_and_swap("ledger/checkpoint", Some(&v1), Bytes::from_static(b"two")).await.unwrap()
    else {
        panic!("fresh version refused")
    };
    assert_ne!(v1, v2);
    assert_eq!(
        s.compare_and_swap("ledger/checkpoint", Some(&v1), Bytes::from_static(b"three")).await.unwrap(),
        CasOutcome::Conflict
    );
    assert_eq!(s.get("ledger/checkpoint", 100).await.unwrap().bytes.as_ref(), b"two");
    // A stale writer that happens to write the current bytes still conflicts (no lost reply).
    assert_eq!(
        s.compare_and_swap("ledger/checkpoint", Some(&v1), Bytes::from_static(b"two")).await.unwrap(),
        CasOutcome::Conflict
    );
}

async fn list_is_sorted_and_starts_after(s: &Store) {
    for n in [5u64, 1, 12, 3, 100, 0] {
        s.put_if_absent(&format!("ledger/seq/{n:020}"), Bytes::from(n.to_string())).await.unwrap();
    }
    s.put_if_absent("ledger/other", Bytes::from_static(b"-")).await.unwrap();
    let keys: Vec<String> = s.list("ledger/seq", None).await.unwrap().into_iter().map(|i| i.key).collect();
    let want: Vec<String> = [0u64, 1, 3, 5, 12, 100].iter().map(|n| format!("ledger/seq/{n:020}")).collect();
    assert_eq!(keys, want);
    let after: Vec<String> = s.list("ledger/seq", Some(&want[2])).await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(after, want[3..]);
}

async fn blobs_round_trip_and_detect_corruption(s: &Store) {
    let body = Bytes::from((0..100_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>());
    let id = s.put_blob(body.clone()).await.unwrap();
    assert_eq!(id, BlobId::of(&body));
    assert_eq!(s.put_blob(body.clone()).await.unwrap(), id, "storing the same blob twice is harmless");
    assert_eq!(s.get_blob(id, 1 << 20).await.unwrap(), body);
    assert!(matches!(s.get_blob(id, 1000).await, Err(StoreError::TooLarge { .. })));
    // A member overwrites the blob object: readers notice.
    let mut tampered = body.to_vec();
    tampered[12345] ^= 1;
    s.put(&id.key(), Bytes::from(tampered)).await.unwrap();
    match s.get_blob(id, 1 << 20).await {
        Err(StoreError::HashMismatch { expected, .. }) => assert_eq!(expected, id),
        other => panic!("expected HashMismatch, got {other:?}"),
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>())
}

async fn large_blobs_go_up_in_parts(s: &Store) {
    let body = pattern(storage::SINGLE_PUT_MAX_BYTES + 3 * storage::PART_BYTES / 2, 1);
    let id = s.put_blob(body.clone()).await.unwrap();
    assert_eq!(id, BlobId::of(&body));
    assert_eq!(s.get_blob(id, u64::MAX).await.unwrap(), body);
    assert_eq!(s.put_blob(body).await.unwrap(), id);
}

async fn streamed_blob_is_hashed_while_uploading(s: &Store) {
    let body = pattern(2 * storage::PART_BYTES + 12345, 2);
    let (id, len) = s.put_blob_reader(std::io::Cursor::new(body.to_vec()), u64::MAX).await.unwrap();
    assert_eq!((id, len), (BlobId::of(&body), body.len() as u64));
    assert_eq!(s.get_blob(id, u64::MAX).await.unwrap(), body);
    assert!(s.list("tmp", None).await.unwrap().is_empty(), "staging object left behind");
}

async fn streamed_blob_over_the_limit_leaves_nothing(s: &Store) {
    let body = pattern(3 << 20, 3);
    let err = s.put_blob_reader(std::io::Cursor::new(body.to_vec()), 1 << 20).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
    assert!(s.list("blobs", None).await.unwrap().is_empty());
    assert!(s.list("tmp", None).await.unwrap().is_empty(), "aborted upload left an object");
}

async fn conformance_check_passes(s: &Store) {
    let results = conformance::check(s).await.unwrap();
    assert_eq!(results.len(), 5);
    for r in &results {
        assert!(r.passed, "{}: {}", r.name, r.detail);
    }
    assert!(s.list("_cairn-check", None).await.unwrap().is_empty(), "the check cleans up");
}

/// No backend here has a bucket policy: a plain PUT replaces history and a DELETE removes it, and
/// the protection check says so, prefix by prefix, leaving no probe behind.
async fn an_unprotected_store_is_reported_as_such(s: &Store) {
    let results = conformance::check_protection(s).await.unwrap();
    assert_eq!(results.len(), conformance::HISTORY_PREFIXES.len() + 1);
    let (probes, large) = results.split_at(conformance::HISTORY_PREFIXES.len());
    for r in probes {
        assert!(!r.passed, "{}: {}", r.name, r.detail);
        assert!(r.detail.starts_with("overwrite ALLOWED: accepted; delete ALLOWED: accepted"), "{}", r.detail);
    }
    assert!(large[0].passed, "{}", large[0].detail);
    for prefix in conformance::HISTORY_PREFIXES {
        assert!(s.list(prefix.trim_end_matches('/'), None).await.unwrap().is_empty(), "probe left under {prefix}");
    }
}

/// Several writers increment one counter with read / compare-and-swap loops: no increment lost.
async fn concurrent_compare_and_swap_loses_no_update(s: &Store) {
    const WRITERS: u64 = 4;
    const INCREMENTS: u64 = 5;
    s.put_if_absent("counter", Bytes::from_static(b"0")).await.unwrap();
    let writers = (0..WRITERS).map(|_| {
        let s = s.clone();
        async move {
            for _ in 0..INCREMENTS {
                loop {
                    let cur = s.get("counter", 64).await.unwrap();
                    let n: u64 = std::str::from_utf8(&cur.bytes).unwrap().parse().unwrap();
                    let next = Bytes::from((n + 1).to_string());
                    if let CasOutcome::Swapped(_) =
                        s.compare_and_swap("counter", Some(&cur.version), next).await.unwrap()
                    {
                        break;
                    }
                }
            }
        }
    });
    join_all(writers).await;
    assert_eq!(s.get("counter", 64).await.unwrap().bytes, Bytes::from((WRITERS * INCREMENTS).to_string()));
}

#[tokio::test]
async fn file_store_must_exist_and_init_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", dir.path().display());
    assert!(matches!(storage::open(&url).await, Err(StoreError::StoreMissing { .. })));
    let report = storage::admin::init(&url, Default::default(), &Default::default()).await.unwrap();
    assert_eq!(report, storage::admin::InitReport::Folder { created: true });
    storage::open(&url).await.unwrap();
}

#[tokio::test]
async fn bad_urls_are_refused_with_a_reason() {
    for url in ["not a url", "file://relative/path", "s3://"] {
        assert!(matches!(storage::open(url).await, Err(StoreError::BadUrl { .. })), "{url}");
    }
}
