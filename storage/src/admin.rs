//! Store administration that object_store has no API for: creating the bucket (or the local
//! folder) and turning on S3 Object Lock with a default retention.
//!
//! Object Lock keeps every object *version* for the retention period. It does not make a key
//! immutable: a plain PUT adds a new current version and a DELETE a delete marker, and readers
//! read the current version. What stops members from replacing or deleting history is a bucket
//! policy (docs/SECURITY.md), verified by [`crate::conformance::check_protection`]; the ledger's
//! checkpoints detect a rewrite on stores without one.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled,
    ObjectLockRetentionMode, ObjectLockRule,
};
use tracing::info;

use crate::error::{Result, StoreError};
use crate::store::OpenOptions;

/// What `init` should set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InitOptions {
    /// Turn on Object Lock with a default (governance-mode) retention of this many days. S3 only.
    pub object_lock_days: Option<u32>,
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitReport {
    /// A memory store needs nothing.
    Memory,
    /// The local folder exists now (`created`: it did not before).
    Folder {
        /// Whether it was created by this call.
        created: bool,
    },
    /// The bucket exists now.
    Bucket {
        /// Whether it was created by this call.
        created: bool,
        /// Default retention now in force, in days.
        object_lock_days: Option<u32>,
    },
}

/// An S3 client configured from the standard AWS environment (credentials, region,
/// `AWS_ENDPOINT_URL`) and then from `opts.settings` (the same keys `open` takes), with
/// path-style addressing so custom endpoints work.
pub async fn s3_client(opts: &OpenOptions) -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(endpoint) = opts.setting("aws_endpoint").or(opts.setting("aws_endpoint_url")) {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(region) = opts.setting("aws_region") {
        loader = loader.region(aws_sdk_s3::config::Region::new(region.to_string()));
    }
    if let (Some(id), Some(secret)) = (opts.setting("aws_access_key_id"), opts.setting("aws_secret_access_key")) {
        let creds = aws_sdk_s3::config::Credentials::new(id, secret, None, None, "cairn-settings");
        loader = loader.credentials_provider(creds);
    }
    let shared = loader.load().await;
    let conf = aws_sdk_s3::config::Builder::from(&shared).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Creates what the store URL names, idempotently: the folder for file://, the bucket for s3://
/// (with Object Lock when asked).
pub async fn init(url: &str, opts: InitOptions, open: &OpenOptions) -> Result<InitReport> {
    let parsed =
        url::Url::parse(url).map_err(|e| StoreError::BadUrl { url: url.to_string(), reason: e.to_string() })?;
    let only_s3 = || StoreError::Unsupported { operation: "Object Lock", backend: "non-S3" };
    match parsed.scheme() {
        "memory" => {
            if opts.object_lock_days.is_some() {
                return Err(only_s3());
            }
            Ok(InitReport::Memory)
        }
        "file" => {
            if opts.object_lock_days.is_some() {
                return Err(only_s3());
            }
            let dir = parsed.to_file_path().map_err(|_| StoreError::BadUrl {
                url: url.to_string(),
                reason: "not an absolute local path".into(),
            })?;
            let created = !dir.is_dir();
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                operation: "create store folder",
                path: dir.display().to_string(),
                source,
            })?;
            Ok(InitReport::Folder { created })
        }
        "s3" | "s3a" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| StoreError::BadUrl { url: url.to_string(), reason: "no bucket".into() })?;
            init_bucket(&s3_client(open).await, bucket, opts).await
        }
        _ => Err(StoreError::Unsupported { operation: "store init", backend: "this URL's" }),
    }
}

async fn init_bucket(client: &aws_sdk_s3::Client, bucket: &str, opts: InitOptions) -> Result<InitReport> {
    let admin =
        |operation: &'static str, detail: String| StoreError::Admin { operation, bucket: bucket.to_string(), detail };
    let mut req = client.create_bucket().bucket(bucket);
    // us-east-1 is the one region that must not be named as a location constraint.
    if let Some(region) = client.config().region().map(|r| r.as_ref().to_string())
        && region != "us-east-1"
    {
        let constraint = BucketLocationConstraint::from(region.as_str());
        req = req
            .create_bucket_configuration(CreateBucketConfiguration::builder().location_constraint(constraint).build());
    }
    if opts.object_lock_days.is_some() {
        req = req.object_lock_enabled_for_bucket(true);
    }
    let created = match req.send().await {
        Ok(_) => true,
        Err(e) => match e.code() {
            Some("BucketAlreadyOwnedByYou") => false,
            // Some servers (SeaweedFS) say this for a bucket you own too: ours if we can use it.
            Some("BucketAlreadyExists") if client.head_bucket().bucket(bucket).send().await.is_ok() => false,
            Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                return Err(StoreError::PermissionDenied { key: bucket.to_string(), detail: describe(&e) });
            }
            _ => return Err(admin("create bucket", describe(&e))),
        },
    };
    if let Some(days) = opts.object_lock_days {
        let retention = DefaultRetention::builder().mode(ObjectLockRetentionMode::Governance).days(days as i32).build();
        let conf = ObjectLockConfiguration::builder()
            .object_lock_enabled(ObjectLockEnabled::Enabled)
            .rule(ObjectLockRule::builder().default_retention(retention).build())
            .build();
        client
            .put_object_lock_configuration()
            .bucket(bucket)
            .object_lock_configuration(conf)
            .send()
            .await
            .map_err(|e| admin("set Object Lock retention", describe(&e)))?;
    }
    info!(bucket, created, object_lock_days = opts.object_lock_days, "bucket ready");
    Ok(InitReport::Bucket { created, object_lock_days: opts.object_lock_days })
}

/// One line for an SDK error: its code and message where the server sent them, else the chain.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(e: &E) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let mut out = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                out.push_str(": ");
                out.push_str(&s.to_string());
                src = s.source();
            }
            out
        }
    }
}
