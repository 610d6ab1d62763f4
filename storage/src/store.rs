//! `Store`: one object store plus a key prefix, with the few operations cairn builds on.
//!
//! ```text
//!   Store::open(url) ──► memory:// | file://DIR | s3://BUCKET/PREFIX | gs:// az:// (object_store)
//!        │
//!        ├─ put_if_absent(key)      first writer wins; a lost reply is recovered by re-reading
//!        ├─ compare_and_swap(key)   mutable pointers; file:// gets its own, under an OS lock
//!        ├─ get / get_range / head  with a size limit on every full read
//!        ├─ list(prefix, after)     sorted by key
//!        └─ put_blob / get_blob     content-addressed, re-hashed on every read (see `blob`)
//! ```
//!
//! Every call that can fail transiently is retried here (and only here) under a `RetryPolicy`.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use tracing::{debug, warn};

use crate::error::{Result, StoreError};
use crate::local_cas;
use crate::retry::{RetryPolicy, is_transient};

/// The version of an object as the backend reports it, for compare-and-swap.
///
/// S3 and memory stores use their ETag (and version id where there is one); the file:// store
/// uses the blake3 of the content, which its own compare-and-swap checks under a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Entity tag.
    pub e_tag: Option<String>,
    /// Backend version id, where versioning is on.
    pub version: Option<String>,
}

/// What `put_if_absent` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Our bytes are at the key: we wrote them, or identical bytes were already there (our own
    /// earlier attempt whose reply was lost, or the same content from someone else).
    Created(Version),
    /// Different bytes were already at the key.
    AlreadyExists,
}

/// What `compare_and_swap` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The object now holds our bytes, at this version.
    Swapped(Version),
    /// The object was not at the expected version (or existed when absence was expected).
    Conflict,
}

/// An object read in full, with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The content.
    pub bytes: Bytes,
    /// Its version, for a later compare-and-swap.
    pub version: Version,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key, relative to the store's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The store's tag of this version of the object, where it gives one: a rewrite of the same
    /// size changes it.
    pub e_tag: Option<String>,
    /// When the store says it was last written, in milliseconds since the Unix epoch.
    pub modified_ms: i64,
}

/// Which kind of backend a `Store` talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In-process memory (`memory://`), for tests and simulations.
    Memory,
    /// A local folder (`file://`).
    File {
        /// The folder.
        dir: PathBuf,
    },
    /// S3 or an S3-compatible server.
    S3 {
        /// The bucket.
        bucket: String,
    },
    /// Another object_store backend (GCS, Azure) or a wrapped store.
    Other,
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::File { .. } => "file",
            Backend::S3 { .. } => "s3",
            Backend::Other => "object_store",
        }
    }
}

/// A handle on one object store under one key prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    backend: Backend,
    url: String,
    retry: RetryPolicy,
    /// Where large uploads are staged before their create-only copy to `blobs/`
    /// ([`crate::STAGING_PREFIX`] unless [`Store::staging_in`] moved it).
    staging: String,
}

/// How to open a store, beyond its URL.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Retries for transient failures.
    pub retry: RetryPolicy,
    /// Backend settings applied over the environment, as object_store config keys
    /// (`aws_endpoint`, `aws_access_key_id`, `aws_secret_access_key`, `aws_region`,
    /// `aws_allow_http`, ...). Empty: the environment alone decides.
    pub settings: Vec<(String, String)>,
}

impl OpenOptions {
    /// The value of a backend setting, if given.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Opens the store a URL names, configured from the environment.
///
/// `memory://`, `file:///abs/dir` (the folder must exist: `init` creates it), `s3://bucket/prefix`
/// (credentials, region and `AWS_ENDPOINT_URL` from the standard AWS environment variables;
/// path-style requests), and whatever else object_store parses (`gs://`, `az://`).
pub async fn open(url: &str) -> Result<Store> {
    open_with(url, &OpenOptions::default()).await
}

/// Like [`open`], with explicit options.
pub async fn open_with(url: &str, opts: &OpenOptions) -> Result<Store> {
    let retry = opts.retry;
    let parsed =
        url::Url::parse(url).map_err(|e| StoreError::BadUrl { url: url.to_string(), reason: e.to_string() })?;
    let bad = |reason: String| StoreError::BadUrl { url: url.to_string(), reason };
    let (inner, prefix, backend): (Arc<dyn ObjectStore>, Path, Backend) = match parsed.scheme() {
        "memory" => (Arc::new(object_store::memory::InMemory::new()), Path::default(), Backend::Memory),
        "file" => {
            let dir = parsed.to_file_path().map_err(|_| bad("not an absolute local path".into()))?;
            if !dir.is_dir() {
                return Err(StoreError::StoreMissing {
                    what: format!("store folder {}", dir.display()),
                    url: url.to_string(),
                });
            }
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
            (Arc::new(fs), Path::default(), Backend::File { dir })
        }
        "s3" | "s3a" => {
            let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("no bucket".into()))?;
            let mut builder = object_store::aws::AmazonS3Builder::from_env();
            // Buckets with Object Lock retention (`cairn store init --object-lock-days`) refuse
            // uploads without a checksum header on AWS; send SHA-256 unless one was chosen.
            if std::env::var_os("AWS_CHECKSUM_ALGORITHM").is_none() && opts.setting("aws_checksum_algorithm").is_none()
            {
                builder = builder.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
            }
            for (key, value) in &opts.settings {
                let key = key.parse().map_err(|e: object_store::Error| bad(e.to_string()))?;
                builder = builder.with_config(key, value);
            }
            let s3 = builder
                .with_url(url)
                // Create-only copies (how large blobs land under blobs/) as a one-part multipart
                // copy completed with If-None-Match: the only create-only copy S3 offers, and
                // what a bucket policy that requires conditional writes lets through.
                .with_copy_if_not_exists(object_store::aws::S3CopyIfNotExists::Multipart)
                // One retry layer (ours): object_store's HTTP retries would hide lost replies.
                .with_retry(RetryConfig { max_retries: 0, ..RetryConfig::default() })
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let prefix = Path::parse(parsed.path().trim_matches('/')).map_err(|e| bad(e.to_string()))?;
            (Arc::new(s3), prefix, Backend::S3 { bucket: bucket.to_string() })
        }
        _ => {
            let (store, prefix) = object_store::parse_url(&parsed).map_err(|e| bad(e.to_string()))?;
            (Arc::from(store), prefix, Backend::Other)
        }
    };
    let store =
        Store { inner, prefix, backend, url: url.to_string(), retry, staging: crate::STAGING_PREFIX.to_string() };
    if let Backend::S3 { .. } = store.backend {
        store.probe().await?;
    }
    Ok(store)
}

impl Store {
    /// Wraps an existing object store (fault-injecting wrappers in tests, custom backends).
    /// Compare-and-swap needs the backend to support `PutMode::Update`.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, label: &str, retry: RetryPolicy) -> Store {
        Store {
            inner,
            prefix: Path::default(),
            backend: Backend::Other,
            url: label.to_string(),
            retry,
            staging: crate::STAGING_PREFIX.to_string(),
        }
    }

    /// This store, staging large uploads under `prefix` (a key prefix ending in `/`) instead of
    /// [`crate::STAGING_PREFIX`]: a member stages under its own organisation's folder, which a
    /// bucket's IAM rules can keep other organisations from writing (docs/DEPLOY.md).
    pub fn staging_in(&self, prefix: &str) -> Result<Store> {
        let invalid = |reason: &str| StoreError::InvalidKey { key: prefix.to_string(), reason: reason.to_string() };
        if !prefix.ends_with('/') {
            return Err(invalid("a staging prefix ends in `/`"));
        }
        self.path(&format!("{prefix}x"))?;
        Ok(Store { staging: prefix.to_string(), ..self.clone() })
    }

    /// Where large uploads are staged.
    pub fn staging_prefix(&self) -> &str {
        &self.staging
    }

    /// The URL (or label) this store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The kind of backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The raw object store and the path a key maps to, for benchmarks that compare against
    /// unwrapped object_store calls.
    pub fn raw(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// A store for a sub-prefix of this one (e.g. one run under a consortium bucket).
    pub fn scoped(&self, sub: &str) -> Result<Store> {
        // file:// keeps its folder: local compare-and-swap resolves full paths itself.
        let prefix = self.path(sub)?;
        Ok(Store { prefix, url: format!("{}/{}", self.url.trim_end_matches('/'), sub), ..self.clone() })
    }

    /// The object_store path of a key: the store prefix joined with the validated key.
    pub fn path(&self, key: &str) -> Result<Path> {
        let invalid = |reason: &str| StoreError::InvalidKey { key: key.to_string(), reason: reason.to_string() };
        if key.is_empty() {
            return Err(invalid("empty"));
        }
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_string()).collect();
        for seg in key.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(invalid("empty, `.` or `..` segment"));
            }
            if seg.starts_with(local_cas::LOCK_DIR) {
                return Err(invalid("reserved name"));
            }
            parts.push(seg.to_string());
        }
        Path::parse(parts.join("/")).map_err(|e| invalid(&e.to_string()))
    }

    fn key_of(&self, path: &Path) -> String {
        let prefix_len = self.prefix.parts().count();
        path.parts().skip(prefix_len).map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/")
    }

    /// Runs `op` until it succeeds, fails for good, or the retry budget is spent.
    async fn retrying<T, F, Fut>(&self, operation: &'static str, key: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        self.retrying_write(operation, key, op).await.map(|(v, _)| v)
    }

    /// Like `retrying`, and also says whether an earlier attempt failed transiently: for a write,
    /// that attempt may have landed even though its reply never came back.
    async fn retrying_write<T, F, Fut>(&self, operation: &'static str, key: &str, mut op: F) -> Result<(T, bool)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => {
                    crate::stats::record(operation, "ok");
                    return Ok((v, attempt > 1));
                }
                Err(e) if is_transient(&e) && attempt < self.retry.max_attempts => {
                    crate::stats::record(operation, "retried");
                    let delay = self.retry.delay(attempt);
                    debug!(operation, key, attempt, delay_ms = delay.as_millis() as u64, error = %e, "transient failure, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    let err = self.map_err(operation, key, attempt, e);
                    crate::stats::record(operation, err.kind());
                    return Err(err);
                }
            }
        }
    }

    /// One listing request under the prefix: fails early, with a clear error, on a missing
    /// bucket, refused credentials or an endpoint that does not answer.
    async fn probe(&self) -> Result<()> {
        let prefix = self.prefix.clone();
        self.retrying("open", &self.url, || self.inner.list_with_delimiter(Some(&prefix))).await.map(|_| ())
    }

    /// Turns an object_store error into the typed error a caller acts on.
    fn map_err(&self, operation: &'static str, key: &str, attempts: u32, e: object_store::Error) -> StoreError {
        let text = e.to_string();
        let key = key.to_string();
        if text.contains("NoSuchBucket")
            && let Backend::S3 { bucket } = &self.backend
        {
            return StoreError::StoreMissing { what: format!("bucket `{bucket}`"), url: self.url.clone() };
        }
        if matches!(crate::retry::http_status(&e), Some(401 | 403)) {
            return StoreError::PermissionDenied { key, detail: s3_error_summary(&text).unwrap_or(text) };
        }
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound { key },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                StoreError::PermissionDenied { key, detail: s3_error_summary(&text).unwrap_or(text) }
            }
            object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
                StoreError::Unsupported { operation, backend: self.backend.name() }
            }
            e if is_transient(&e) => StoreError::Unavailable { operation, key, attempts, error: e },
            e => StoreError::Backend { operation, key, error: e },
        }
    }

    /// Writes `bytes` at `key` unless an object is already there (S3 `If-None-Match: *`).
    ///
    /// A write can land while its reply is lost; the retry then finds the key taken. So when an
    /// earlier attempt of this call failed in transit and the key is taken, the object is re-read:
    /// identical bytes are ours (`Created`). Without such an attempt, a taken key is
    /// `AlreadyExists`, whatever it holds.
    #[tracing::instrument(level = "debug", skip(self, bytes), fields(len = bytes.len()))]
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        self.put_if_absent_hashed(key, bytes, None).await
    }

    /// `put_if_absent` for bytes whose blake3 the caller already knows (a blob's id), so the
    /// file:// store need not hash them again for their version.
    pub(crate) async fn put_if_absent_hashed(
        &self,
        key: &str,
        bytes: Bytes,
        blake3: Option<[u8; 32]>,
    ) -> Result<PutOutcome> {
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes.clone());
        let (put, uncertain) = self
            .retrying_write("put-if-absent", key, || {
                let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
                let (inner, path, payload) = (self.inner.clone(), path.clone(), payload.clone());
                async move {
                    match inner.put_opts(&path, payload, opts).await {
                        Ok(r) => Ok(Some(r)),
                        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        match put {
            Some(r) => Ok(PutOutcome::Created(self.version_after_put(&bytes, blake3, r))),
            None if !uncertain => Ok(PutOutcome::AlreadyExists),
            None => match self.holds(key, &bytes).await? {
                Some(version) => {
                    debug!(key, "key taken by identical bytes after a lost reply: our write landed");
                    Ok(PutOutcome::Created(version))
                }
                // Different bytes, or taken and deleted since: not ours.
                None => Ok(PutOutcome::AlreadyExists),
            },
        }
    }

    fn version_after_put(&self, bytes: &[u8], blake3: Option<[u8; 32]>, r: object_store::PutResult) -> Version {
        match (&self.backend, blake3) {
            (Backend::File { .. }, Some(hash)) => local_cas::version_of_hash(&hash),
            (Backend::File { .. }, None) => local_cas::content_version(bytes),
            _ => Version { e_tag: r.e_tag, version: r.version },
        }
    }

    /// Writes `bytes` at `key`, replacing what is there. Only for derived objects (exports,
    /// hints): anything that must not be lost is written with `put_if_absent`.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<Version> {
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes.clone());
        let r = self.retrying("put", key, || self.inner.put(&path, payload.clone())).await?;
        Ok(self.version_after_put(&bytes, None, r))
    }

    /// Replaces the object at `key` only if it is still at `expected` (`None`: only if absent).
    ///
    /// As with `put_if_absent`, a conflict after an attempt that failed in transit is re-read: if
    /// the object holds exactly our bytes, that attempt landed and the swap is reported as done.
    /// Two writers that swap in identical bytes cannot be told apart then, so payloads should
    /// say who wrote them (a signed checkpoint does).
    #[tracing::instrument(level = "debug", skip(self, expected, bytes), fields(len = bytes.len()))]
    pub async fn compare_and_swap(&self, key: &str, expected: Option<&Version>, bytes: Bytes) -> Result<CasOutcome> {
        let Some(expected) = expected else {
            return Ok(match self.put_if_absent(key, bytes).await? {
                PutOutcome::Created(v) => CasOutcome::Swapped(v),
                PutOutcome::AlreadyExists => CasOutcome::Conflict,
            });
        };
        let path = self.path(key)?;
        let (swapped, uncertain) = if let Backend::File { dir } = &self.backend {
            (local_cas::compare_and_swap(dir, &path, expected, &bytes)?, false)
        } else {
            let payload = PutPayload::from(bytes.clone());
            let version = UpdateVersion { e_tag: expected.e_tag.clone(), version: expected.version.clone() };
            self.retrying_write("compare-and-swap", key, || {
                let opts = PutOptions { mode: PutMode::Update(version.clone()), ..Default::default() };
                let (inner, path, payload) = (self.inner.clone(), path.clone(), payload.clone());
                async move {
                    match inner.put_opts(&path, payload, opts).await {
                        Ok(r) => Ok(Some(Version { e_tag: r.e_tag, version: r.version })),
                        Err(
                            object_store::Error::Precondition { .. }
                            | object_store::Error::AlreadyExists { .. }
                            | object_store::Error::NotFound { .. },
                        ) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?
        };
        match swapped {
            Some(v) => Ok(CasOutcome::Swapped(v)),
            None if !uncertain => Ok(CasOutcome::Conflict),
            None => match self.holds(key, &bytes).await? {
                Some(version) => Ok(CasOutcome::Swapped(version)),
                None => Ok(CasOutcome::Conflict),
            },
        }
    }

    /// Reads a whole object, refusing (before reading the body) anything over `limit_bytes`.
    pub async fn get(&self, key: &str, limit_bytes: u64) -> Result<Object> {
        let (bytes, e_tag, version) = self.fetch(key, limit_bytes).await?;
        let version = match self.backend {
            Backend::File { .. } => local_cas::content_version(&bytes),
            _ => Version { e_tag, version },
        };
        Ok(Object { bytes, version })
    }

    /// The bytes of an object with the backend's e_tag and version id, within `limit_bytes`.
    /// Local backends read in one call once the size is known; remote bodies are streamed with a
    /// running cap, since a server may send more than it declared.
    pub(crate) async fn fetch(&self, key: &str, limit_bytes: u64) -> Result<(Bytes, Option<String>, Option<String>)> {
        let path = self.path(key)?;
        let local = matches!(self.backend, Backend::File { .. } | Backend::Memory);
        self.retrying("get", key, || {
            let (inner, path) = (self.inner.clone(), path.clone());
            async move {
                let res = inner.get(&path).await?;
                let (e_tag, version, size) = (res.meta.e_tag.clone(), res.meta.version.clone(), res.meta.size);
                if size > limit_bytes {
                    return Ok(Err(size));
                }
                let bytes = if local {
                    res.bytes().await?
                } else {
                    let mut buf = BytesMut::with_capacity(size as usize);
                    let mut stream = res.into_stream();
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk?;
                        if (buf.len() + chunk.len()) as u64 > limit_bytes {
                            return Ok(Err((buf.len() + chunk.len()) as u64));
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    buf.freeze()
                };
                if bytes.len() as u64 > limit_bytes {
                    return Ok(Err(bytes.len() as u64));
                }
                Ok(Ok((bytes, e_tag, version)))
            }
        })
        .await?
        .map_err(|size| StoreError::TooLarge { key: key.to_string(), size, limit: limit_bytes })
        .inspect(|(bytes, _, _)| crate::stats::record_read(bytes.len()))
    }

    /// Whether the object at `key` holds exactly `bytes` (our write, whose reply was lost), and its
    /// version if so. Reads at most `bytes.len()`: anything larger is not ours, and whoever wrote
    /// it may have made it too large to hold in memory.
    async fn holds(&self, key: &str, bytes: &Bytes) -> Result<Option<Version>> {
        match self.get(key, bytes.len() as u64).await {
            Ok(current) if current.bytes == *bytes => Ok(Some(current.version)),
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::TooLarge { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads `range` of an object (the end is clamped to the object's size by the backend).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        self.retrying("get-range", key, || {
            let (inner, path, range) = (self.inner.clone(), path.clone(), range.clone());
            async move {
                let opts = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
                inner.get_opts(&path, opts).await?.bytes().await
            }
        })
        .await
        .inspect(|bytes| crate::stats::record_read(bytes.len()))
    }

    /// The size of an object, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path(key)?;
        match self.retrying("head", key, || self.inner.head(&path)).await {
            Ok(meta) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: meta.size,
                e_tag: meta.e_tag,
                modified_ms: meta.last_modified.timestamp_millis(),
            })),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes an object; deleting what is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.retrying("delete", key, || self.inner.delete(&path)).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Lists the objects under `prefix` (a key prefix on `/` boundaries), sorted by key, keeping
    /// only keys after `start_after` when given (S3 pushes this down).
    pub async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        self.list_at_most(prefix, start_after, usize::MAX).await
    }

    /// [`Store::list`], reading no more than `limit` objects (pages stop there): for prefixes
    /// others can write to, where a listing must not grow with what they put.
    pub async fn list_at_most(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<ObjectInfo>> {
        let prefix_path =
            if prefix.is_empty() { self.prefix.clone() } else { self.path(prefix.trim_end_matches('/'))? };
        let offset = start_after.map(|k| self.path(k)).transpose()?;
        let mut found = self
            .retrying("list", prefix, || {
                let stream = match &offset {
                    Some(off) => self.inner.list_with_offset(Some(&prefix_path), off),
                    None => self.inner.list(Some(&prefix_path)),
                };
                stream.take(limit).try_collect::<Vec<_>>()
            })
            .await?;
        found.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(found
            .into_iter()
            .filter(|m| !m.location.parts().any(|p| p.as_ref().starts_with(local_cas::LOCK_DIR)))
            .map(|m| ObjectInfo {
                key: self.key_of(&m.location),
                size: m.size,
                e_tag: m.e_tag,
                modified_ms: m.last_modified.timestamp_millis(),
            })
            .collect())
    }

    /// Copies an object within the store, overwriting the destination.
    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (self.path(from)?, self.path(to)?);
        self.retrying("copy", from, || self.inner.copy(&src, &dst)).await
    }

    /// Copies `from` to `to` unless an object is already at `to` (on S3: a one-part multipart copy
    /// completed with `If-None-Match: *`). The retry after a lost reply finds `to` taken; callers
    /// that copy content-addressed bytes check what is there.
    pub async fn copy_if_absent(&self, from: &str, to: &str) -> Result<PutOutcome> {
        let (src, dst) = (self.path(from)?, self.path(to)?);
        let copied = self
            .retrying("copy-if-absent", to, || async {
                match self.inner.copy_if_not_exists(&src, &dst).await {
                    Ok(()) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(if copied { PutOutcome::Created(Version { e_tag: None, version: None }) } else { PutOutcome::AlreadyExists })
    }

    /// Starts a multipart upload at `key` (used by the blob streamer).
    pub(crate) async fn multipart(&self, key: &str) -> Result<Box<dyn object_store::MultipartUpload>> {
        let path = self.path(key)?;
        self.retrying("start-multipart", key, || self.inner.put_multipart(&path)).await
    }

    /// Maps an error from a multipart upload in progress (not retried: parts are not idempotent
    /// once the upload moved on).
    pub(crate) fn upload_error(&self, key: &str, e: object_store::Error) -> StoreError {
        if !matches!(e, object_store::Error::Generic { .. }) {
            warn!(key, error = %e, "multipart upload failed");
        }
        self.map_err("multipart-upload", key, 1, e)
    }
}

/// `Code: Message` from an S3 XML error body inside an error text, if there is one.
fn s3_error_summary(text: &str) -> Option<String> {
    let field = |tag: &str| {
        let open = format!("<{tag}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&format!("</{tag}>"))?;
        Some(text[start..start + len].to_string())
    };
    let code = field("Code")?;
    Some(match field("Message") {
        Some(msg) => format!("{code}: {msg}"),
        None => code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a lost reply, the object at the key is read back to see whether our write landed: at
    /// most our own length, so a huge object someone else wrote there is never downloaded.
    #[tokio::test]
    async fn a_lost_reply_reads_back_at_most_our_own_length() {
        let store = crate::open("memory://").await.unwrap();
        let ours = Bytes::from_static(b"ours");
        assert_eq!(store.holds("k", &ours).await.unwrap(), None, "absent");
        store.put("k", Bytes::from(vec![7u8; 1 << 20])).await.unwrap();
        assert_eq!(store.holds("k", &ours).await.unwrap(), None, "larger: not read, not ours");
        store.put("k", Bytes::from_static(b"tour")).await.unwrap();
        assert_eq!(store.holds("k", &ours).await.unwrap(), None, "same size, other bytes");
        let version = store.put("k", ours.clone()).await.unwrap();
        assert_eq!(store.holds("k", &ours).await.unwrap(), Some(version));
    }

    #[test]
    fn s3_error_bodies_are_summarised() {
        let text = "GET - Server returned non-2xx status code: 403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code><Message>Check your key.</Message></Error>";
        assert_eq!(s3_error_summary(text).as_deref(), Some("SignatureDoesNotMatch: Check your key."));
        assert_eq!(s3_error_summary("connection refused"), None);
    }
}
