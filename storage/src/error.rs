//! The one error type of the storage crate: each variant is something a caller acts on.

use crate::BlobId;

/// A storage failure, typed by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL could not be understood.
    #[error("bad store URL `{url}`: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key is not a valid object key (empty segment, `.` or `..`, ...).
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bucket (or the local store folder) does not exist.
    #[error("{what} does not exist; create it with `cairn store init {url}`")]
    StoreMissing {
        /// The bucket or folder.
        what: String,
        /// The store URL, for the hint.
        url: String,
    },
    /// No object at this key.
    #[error("no object at `{key}`")]
    NotFound {
        /// The key that was read.
        key: String,
    },
    /// The credentials were refused (wrong secret, no permission for this operation).
    #[error("access denied to `{key}` (check the credentials and their permissions): {detail}")]
    PermissionDenied {
        /// The key or bucket that was touched.
        key: String,
        /// What the server said.
        detail: String,
    },
    /// An object is larger than the caller's limit; nothing past the limit was read.
    #[error("object `{key}` is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The key that was read.
        key: String,
        /// Its size (or at least this many bytes, when the server under-reported it).
        size: u64,
        /// The limit that applied.
        limit: u64,
    },
    /// A content-addressed blob did not hash to its name: it is corrupt or was tampered with.
    #[error("blob {expected} hashes to {actual}: corrupt or tampered")]
    HashMismatch {
        /// The id the blob was fetched by.
        expected: BlobId,
        /// The hash of the bytes that came back.
        actual: BlobId,
    },
    /// The object at a blob's key exists but is not that blob (a different size).
    #[error("`{key}` holds {size} bytes that are not blob {id}: the object was overwritten")]
    BlobSlotCorrupt {
        /// The blob id.
        id: BlobId,
        /// Its key.
        key: String,
        /// Size of what is there.
        size: u64,
    },
    /// The backend cannot do this operation.
    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        /// What was attempted.
        operation: &'static str,
        /// Which backend.
        backend: &'static str,
    },
    /// A transient failure (network, 5xx, timeout) that persisted through every retry.
    #[error("{operation} `{key}` failed after {attempts} attempts{}: {}", reach_hint(error), root_cause(error))]
    Unavailable {
        /// What was attempted.
        operation: &'static str,
        /// The key involved.
        key: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error (its innermost cause is shown; object_store's own message repeats
        /// its whole chain).
        error: object_store::Error,
    },
    /// Any other backend failure, not retried.
    #[error("{operation} `{key}`: {}", root_cause(error))]
    Backend {
        /// What was attempted.
        operation: &'static str,
        /// The key involved.
        key: String,
        /// The backend's error.
        error: object_store::Error,
    },
    /// A local filesystem failure (file:// compare-and-swap and store folders).
    #[error("{operation} `{path}`: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The local path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bucket administration through the S3 API failed.
    #[error("bucket administration ({operation}) on `{bucket}`: {detail}")]
    Admin {
        /// What was attempted.
        operation: &'static str,
        /// The bucket.
        bucket: String,
        /// What the server said.
        detail: String,
    },
}

impl StoreError {
    /// A short name of the variant, for metrics (`cairn_store_requests_total{outcome=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::BadUrl { .. } => "bad_url",
            StoreError::InvalidKey { .. } => "invalid_key",
            StoreError::StoreMissing { .. } => "store_missing",
            StoreError::NotFound { .. } => "not_found",
            StoreError::PermissionDenied { .. } => "permission_denied",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::HashMismatch { .. } => "hash_mismatch",
            StoreError::BlobSlotCorrupt { .. } => "blob_slot_corrupt",
            StoreError::Unsupported { .. } => "unsupported",
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Backend { .. } => "backend",
            StoreError::Io { .. } => "io",
            StoreError::Admin { .. } => "admin",
        }
    }
}

/// Result alias for the storage crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A hint for a failure that persisted: a network store may be unreachable; a local folder's
/// failure (a full disk, say) speaks for itself.
fn reach_hint(e: &object_store::Error) -> &'static str {
    match e {
        object_store::Error::Generic { store: "LocalFileSystem", .. } => "",
        _ => " (is the endpoint reachable?)",
    }
}

/// The innermost message of an error chain: what actually went wrong (`Connection refused`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
