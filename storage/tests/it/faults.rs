//! Failures injected below the `Store`: transient errors, and writes that land while their reply
//! is lost. The store must retry the first and recognise the second as its own write.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use storage::{CasOutcome, PutOutcome, RetryPolicy, Store, StoreError};

/// What the next write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Fails with a transient error without touching the store.
    FailBefore,
    /// Lands, then fails with a transient error as if the reply was lost.
    LoseReply,
}

/// An in-memory store whose writes follow a script of faults.
#[derive(Debug, Default)]
struct Scripted {
    inner: InMemory,
    script: Mutex<VecDeque<Fault>>,
}

impl fmt::Display for Scripted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scripted")
    }
}

fn transient() -> object_store::Error {
    object_store::Error::Generic { store: "Scripted", source: "connection reset by peer".into() }
}

#[async_trait]
impl ObjectStore for Scripted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let fault = self.script.lock().unwrap().pop_front();
        match fault {
            Some(Fault::FailBefore) => Err(transient()),
            Some(Fault::LoseReply) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(transient())
            }
            None => self.inner.put_opts(location, payload, opts).await,
        }
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn scripted(faults: &[Fault], attempts: u32) -> (Store, Arc<Scripted>) {
    let inner = Arc::new(Scripted::default());
    inner.script.lock().unwrap().extend(faults.iter().copied());
    let policy = RetryPolicy { max_attempts: attempts, base_delay_ms: 1, max_delay_ms: 5 };
    (Store::from_object_store(inner.clone(), "scripted://", policy), inner)
}

#[tokio::test]
async fn put_if_absent_whose_reply_was_lost_is_ours() {
    let (s, _) = scripted(&[Fault::LoseReply], 5);
    let out = s.put_if_absent("ledger/seq/00000000000000000007", Bytes::from_static(b"entry")).await.unwrap();
    assert!(matches!(out, PutOutcome::Created(_)), "the retry saw our own landed write: {out:?}");
    assert_eq!(s.get("ledger/seq/00000000000000000007", 64).await.unwrap().bytes.as_ref(), b"entry");
}

#[tokio::test]
async fn lost_reply_does_not_claim_someone_elses_slot() {
    let (s, _) = scripted(&[], 5);
    s.put_if_absent("slot", Bytes::from_static(b"theirs")).await.unwrap();
    assert_eq!(s.put_if_absent("slot", Bytes::from_static(b"ours")).await.unwrap(), PutOutcome::AlreadyExists);
}

#[tokio::test]
async fn compare_and_swap_whose_reply_was_lost_is_reported_done() {
    let (s, inner) = scripted(&[], 5);
    let CasOutcome::Swapped(v1) = s.compare_and_swap("pointer", None, Bytes::from_static(b"1")).await.unwrap() else {
        panic!("create conflicted")
    };
    inner.script.lock().unwrap().push_back(Fault::LoseReply);
    let out = s.compare_and_swap("pointer", Some(&v1), Bytes::from_static(b"2")).await.unwrap();
    assert!(matches!(out, CasOutcome::Swapped(_)), "{out:?}");
    assert_eq!(s.get("pointer", 8).await.unwrap().bytes.as_ref(), b"2");
}

#[tokio::test]
async fn transient_failures_are_retried_within_the_budget() {
    let (s, _) = scripted(&[Fault::FailBefore, Fault::FailBefore], 3);
    assert!(matches!(s.put_if_absent("k", Bytes::from_static(b"v")).await.unwrap(), PutOutcome::Created(_)));
}

#[tokio::test]
async fn persistent_failures_give_up_with_a_typed_error() {
    let (s, _) = scripted(&[Fault::FailBefore; 4], 3);
    match s.put_if_absent("k", Bytes::from_static(b"v")).await {
        Err(StoreError::Unavailable { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected Unavailable after 3 attempts, got {other:?}"),
    }
    assert!(s.head("k").await.unwrap().is_none(), "nothing was written");
}

/// A bucket whose policy protects history (modelled by `FaultStore::protecting`, as S3 enforces
/// the policy in docs/SECURITY.md): the check passes for the protected prefixes only, and the
/// probes stay where the store refused to delete them.
#[tokio::test]
async fn the_protection_check_sees_a_bucket_policy() {
    use storage::conformance::{HISTORY_PREFIXES, check_protection};
    use storage::fault::{FaultStore, Faults};
    let protected: Vec<String> = HISTORY_PREFIXES.iter().map(|p| format!("run/{p}")).collect();
    let protected: Vec<&str> = protected.iter().map(String::as_str).collect();
    let all = FaultStore::new(1, Faults::default()).protecting(&protected);
    let store = Store::from_object_store(Arc::new(all), "sim://", RetryPolicy::default()).scoped("run").unwrap();
    let results = check_protection(&store).await.unwrap();
    assert_eq!(results.last().map(|r| (r.name, r.passed)), Some(("large blob still lands", true)));
    for r in &results[..HISTORY_PREFIXES.len()] {
        assert!(r.passed, "{}: {}", r.name, r.detail);
        assert!(r.detail.starts_with("overwrite denied: refused"), "{}", r.detail);
        assert!(r.detail.contains("delete denied: refused"), "{}", r.detail);
    }
    for prefix in HISTORY_PREFIXES {
        let want = if prefix == "blobs/" { 2 } else { 1 }; // the probe, and the large blob
        assert_eq!(store.list(prefix.trim_end_matches('/'), None).await.unwrap().len(), want, "under {prefix}");
    }

    // Under the policy, blobs still go up, small (put-if-absent) and large (staged under tmp/,
    // then a create-only copy), and the same blob again is fine.
    for len in [1000, storage::SINGLE_PUT_MAX_BYTES + 1] {
        let bytes = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let id = store.put_blob(bytes.clone()).await.unwrap();
        assert_eq!(store.put_blob(bytes.clone()).await.unwrap(), id);
        assert_eq!(store.get_blob(id, len as u64).await.unwrap(), bytes);
    }
    assert!(store.list("tmp", None).await.unwrap().is_empty(), "staging objects are removed");

    // A policy that forgets the checkpoint signatures: that prefix, and only it, fails.
    let some = FaultStore::new(2, Faults::default()).protecting(&["run/ledger/seq/", "run/blobs/", "run/mirrors/"]);
    let store = Store::from_object_store(Arc::new(some), "sim://", RetryPolicy::default()).scoped("run").unwrap();
    let failed: Vec<&str> =
        check_protection(&store).await.unwrap().iter().filter(|r| !r.passed).map(|r| r.name).collect();
    assert_eq!(failed, vec!["protected checkpoints/"]);
}

/// A large blob is staged under the store's staging prefix, and only there: where another
/// organisation's folder refuses our multipart upload (as IAM refuses it on S3), a store staging
/// there fails, and one staging in its own folder lands the blob and leaves no staging object.
#[tokio::test]
async fn large_blobs_are_staged_under_the_stores_own_staging_prefix() {
    use storage::fault::{FaultStore, Faults};
    let len = storage::SINGLE_PUT_MAX_BYTES + 1;
    let bytes = bytes::Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    // Refuses every multipart upload and plain write under run/tmp/beta/ (beta's folder).
    let bucket = FaultStore::new(3, Faults::default()).protecting(&["run/tmp/beta/"]);
    let store = Store::from_object_store(Arc::new(bucket), "sim://", RetryPolicy::default()).scoped("run").unwrap();
    assert_eq!(store.staging_prefix(), "tmp/");

    let as_beta = store.staging_in("tmp/beta/").unwrap();
    assert!(as_beta.put_blob(bytes.clone()).await.is_err(), "staging under tmp/beta/ must hit the refusal");
    assert!(store.list("blobs", None).await.unwrap().is_empty());

    let as_alpha = store.staging_in("tmp/alpha/").unwrap();
    let id = as_alpha.put_blob(bytes.clone()).await.unwrap();
    assert_eq!(id, storage::BlobId::of(&bytes));
    assert_eq!(as_alpha.get_blob(id, len as u64).await.unwrap(), bytes);
    assert!(store.list("tmp", None).await.unwrap().is_empty(), "the staging object is removed");

    // A staging prefix is a folder of valid keys.
    assert!(store.staging_in("tmp/alpha").is_err());
    assert!(store.staging_in("tmp/../x/").is_err());
}
