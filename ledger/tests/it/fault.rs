//! An object store wrapper that misbehaves on purpose, driven by one seeded RNG.
//!
//! Writes can fail before landing, or land with the reply lost; reads can fail; every call can
//! be delayed (tokio time, so a paused clock makes the schedule deterministic), which reorders
//! concurrent operations; listings come back shuffled.

use std::fmt;
use std::sync::{Arc, Mutex};
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
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub fail_write: f64,
    pub lose_reply: f64,
    pub fail_read: f64,
    pub max_delay_ms: u64,
}

/// What was injected, for the report on failure.
#[derive(Debug, Default, Clone, Copy)]
pub struct Injected {
    pub failed_writes: u64,
    pub lost_replies: u64,
    pub failed_reads: u64,
}

#[derive(Debug)]
pub struct FaultStore {
    inner: InMemory,
    rng: Arc<Mutex<ChaCha8Rng>>,
    faults: Faults,
    injected: Arc<Mutex<Injected>>,
    enabled: Arc<std::sync::atomic::AtomicBool>,
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

fn injected_error(what: &'static str) -> object_store::Error {
    object_store::Error::Generic { store: "FaultStore", source: what.into() }
}

impl FaultStore {
    pub fn new(seed: u64, faults: Faults) -> FaultStore {
        FaultStore {
            inner: InMemory::new(),
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            faults,
            injected: Arc::default(),
            enabled: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// A handle that switches faults off (to read back the truth) or on.
    pub fn switch(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.enabled.clone()
    }

    pub fn injected(&self) -> Arc<Mutex<Injected>> {
        self.injected.clone()
    }

    fn on(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn roll(&self, p: f64) -> bool {
        self.on() && self.rng.lock().unwrap().random_bool(p)
    }

    async fn delay(&self) {
        if !self.on() || self.faults.max_delay_ms == 0 {
            return;
        }
        let ms = self.rng.lock().unwrap().random_range(0..=self.faults.max_delay_ms);
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
        if self.roll(self.faults.fail_write) {
            self.injected.lock().unwrap().failed_writes += 1;
            return Err(injected_error("injected: write failed before landing"));
        }
        let result = self.inner.put_opts(location, payload, opts).await;
        self.delay().await;
        if result.is_ok() && self.roll(self.faults.lose_reply) {
            self.injected.lock().unwrap().lost_replies += 1;
            return Err(injected_error("injected: write landed, reply lost"));
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.delay().await;
        if self.roll(self.faults.fail_read) {
            self.injected.lock().unwrap().failed_reads += 1;
            return Err(injected_error("injected: read failed"));
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.list(prefix);
        let rng = self.rng.clone();
        let on = self.on();
        futures::stream::once(async move {
            let mut all: Vec<_> = inner.collect().await;
            if on {
                all.shuffle(&mut *rng.lock().unwrap());
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
        self.inner.copy_opts(from, to, options).await
    }
}
