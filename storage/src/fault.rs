//! An object store that misbehaves on purpose, driven by one seeded RNG: the faulty bucket of the
//! ledger's deterministic simulation tests and of `cairn bench adversary`.
//!
//! Writes can fail before landing, or land with the reply lost; reads can fail; every call can
//! be delayed (tokio time, so a paused clock makes the schedule deterministic), which reorders
//! concurrent operations; listings come back shuffled. Chosen keys can be made unreadable for
//! good (what an S3 storage class, SSE-C or a `chmod` does to one object: the key is listed, every
//! read is refused). Prefixes can be write-protected the way a bucket policy protects history:
//! under them only create-only writes are accepted, and no deletes.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Fault rates (probabilities per call) and the delay bound.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A write fails before landing.
    pub fail_write: f64,
    /// A write lands and its reply is lost.
    pub lose_reply: f64,
    /// A read fails (transiently).
    pub fail_read: f64,
    /// Every call waits up to this long (0: no delay).
    pub max_delay_ms: u64,
}

/// What was injected, for the report on failure.
#[derive(Debug, Default, Clone, Copy)]
pub struct Injected {
    /// Writes failed before landing.
    pub failed_writes: u64,
    /// Writes that landed with the reply lost.
    pub lost_replies: u64,
    /// Reads failed.
    pub failed_reads: u64,
}

/// An object store with seeded faults (see the module docs): in memory, or over another store.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    rng: Arc<Mutex<ChaCha8Rng>>,
    faults: Faults,
    injected: Arc<Mutex<Injected>>,
    enabled: Arc<std::sync::atomic::AtomicBool>,
    unreadable: Arc<Mutex<HashSet<Path>>>,
    protected: Arc<Vec<String>>,
}

/// A poisoned lock only means another task panicked; the data is still what it was.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

fn denied(location: &Path, why: &'static str) -> object_store::Error {
    object_store::Error::PermissionDenied { path: location.to_string(), source: why.into() }
}

fn injected_error(what: &'static str) -> object_store::Error {
    object_store::Error::Generic { store: "FaultStore", source: what.into() }
}

impl FaultStore {
    /// An empty in-memory store whose faults follow `seed`.
    pub fn new(seed: u64, faults: Faults) -> FaultStore {
        FaultStore::over(Arc::new(InMemory::new()), seed, faults)
    }

    /// `inner` (a real bucket, or a store others share) seen through faults that follow `seed`.
    /// Two of them over one store give two participants different views of the same objects:
    /// a key unreadable through one reads through the other.
    pub fn over(inner: Arc<dyn ObjectStore>, seed: u64, faults: Faults) -> FaultStore {
        FaultStore {
            inner,
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            faults,
            injected: Arc::default(),
            enabled: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            unreadable: Arc::default(),
            protected: Arc::default(),
        }
    }

    /// Under these path prefixes (the store's own prefix included, e.g. `run/ledger/seq/`), refuse
    /// every write that is not create-only and every delete, as the bucket policy in
    /// docs/SECURITY.md does on S3.
    pub fn protecting(mut self, prefixes: &[&str]) -> FaultStore {
        self.protected = Arc::new(prefixes.iter().map(|p| p.to_string()).collect());
        self
    }

    fn is_protected(protected: &[String], location: &Path) -> bool {
        let path = location.as_ref();
        protected.iter().any(|p| path.starts_with(p.as_str()))
    }

    /// A handle that makes keys unreadable for good (whatever the switch says).
    pub fn unreadable(&self) -> Unreadable {
        Unreadable(self.unreadable.clone())
    }

    /// A handle that switches faults off (to read back the truth) or on.
    pub fn switch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.enabled.clone()
    }

    /// What was injected so far.
    pub fn injected(&self) -> Arc<Mutex<Injected>> {
        self.injected.clone()
    }

    fn on(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn roll(&self, p: f64) -> bool {
        self.on() && lock(&self.rng).random_bool(p)
    }

    async fn delay(&self) {
        if !self.on() || self.faults.max_delay_ms == 0 {
            return;
        }
        let ms = lock(&self.rng).random_range(0..=self.faults.max_delay_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.delay().await;
        if !matches!(opts.mode, object_store::PutMode::Create) && Self::is_protected(&self.protected, location) {
            return Err(denied(location, "protected: only create-only writes are allowed here"));
        }
        if self.roll(self.faults.fail_write) {
            lock(&self.injected).failed_writes += 1;
            return Err(injected_error("injected: write failed before landing"));
        }
        let result = self.inner.put_opts(location, payload, opts).await;
        self.delay().await;
        if result.is_ok() && self.roll(self.faults.lose_reply) {
            lock(&self.injected).lost_replies += 1;
            return Err(injected_error("injected: write landed, reply lost"));
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // object_store completes multipart uploads without a condition: the policy refuses them.
        if Self::is_protected(&self.protected, location) {
            return Err(denied(location, "protected: an unconditional multipart upload"));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.delay().await;
        if lock(&self.unreadable).contains(location) {
            return Err(denied(location, "injected: this object cannot be read"));
        }
        if self.roll(self.faults.fail_read) {
            lock(&self.injected).failed_reads += 1;
            return Err(injected_error("injected: read failed"));
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let protected = self.protected.clone();
        let checked = locations
            .map(move |location| {
                let location = location?;
                if Self::is_protected(&protected, &location) {
                    return Err(denied(&location, "protected: deletes are not allowed here"));
                }
                Ok(location)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.list(prefix);
        let rng = self.rng.clone();
        let on = self.on();
        futures::stream::once(async move {
            let mut all: Vec<_> = inner.collect().await;
            if on {
                all.shuffle(&mut *lock(&rng));
            }
            futures::stream::iter(all)
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        if !matches!(options.mode, object_store::CopyMode::Create) && Self::is_protected(&self.protected, to) {
            return Err(denied(to, "protected: only create-only copies are allowed here"));
        }
        self.inner.copy_opts(from, to, options).await
    }
}

/// Makes keys of a [`FaultStore`] unreadable (see [`FaultStore::unreadable`]).
#[derive(Debug, Clone)]
pub struct Unreadable(Arc<Mutex<HashSet<Path>>>);

impl Unreadable {
    /// From now on every read of `key` (a full object path, prefix included) is refused.
    pub fn add(&self, key: &str) {
        lock(&self.0).insert(Path::from(key));
    }
}
