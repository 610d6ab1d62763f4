//! What a user of a real S3 endpoint runs into: wrong credentials, a missing bucket, an endpoint
//! that does not answer, and Object Lock set-up. Each gives one clear, typed error.

use bytes::Bytes;
use storage::admin::{self, InitOptions, InitReport};
use storage::{OpenOptions, StoreError};

use storage::testing::{fresh_bucket, hex_id, quick_retry, s3_options};

fn with_setting(mut opts: OpenOptions, key: &str, value: &str) -> OpenOptions {
    opts.settings.push((key.to_string(), value.to_string()));
    opts
}

#[tokio::test]
async fn wrong_secret_is_permission_denied() {
    let url = fresh_bucket().await;
    let opts = with_setting(s3_options(), "aws_secret_access_key", "not-the-secret");
    let err = storage::open_with(&url, &opts).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err:?}");
    let good = storage::open_with(&url, &s3_options()).await.unwrap();
    assert!(good.head("k").await.unwrap().is_none(), "no partial object visible");
}

#[tokio::test]
async fn missing_bucket_says_how_to_create_it() {
    let url = format!("s3://cairn-missing-{}/run", hex_id());
    let err = storage::open_with(&url, &s3_options()).await.unwrap_err();
    assert!(matches!(err, StoreError::StoreMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("cairn store init"), "{err}");
}

#[tokio::test]
async fn unreachable_endpoint_gives_up_after_bounded_retries() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut opts = with_setting(s3_options(), "aws_endpoint", &format!("http://127.0.0.1:{port}"));
    opts.retry = quick_retry();
    let start = std::time::Instant::now();
    let err = storage::open_with("s3://any-bucket/run", &opts).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { attempts: 4, .. }), "{err:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20), "retries are bounded");
}

#[tokio::test]
async fn init_is_idempotent_and_enables_object_lock() {
    let bucket = format!("cairn-lock-{}", hex_id());
    let url = format!("s3://{bucket}/run");
    let opts = s3_options();
    let first = admin::init(&url, InitOptions { object_lock_days: Some(1) }, &opts).await.unwrap();
    assert_eq!(first, InitReport::Bucket { created: true, object_lock_days: Some(1) });
    let again = admin::init(&url, InitOptions::default(), &opts).await.unwrap();
    assert_eq!(again, InitReport::Bucket { created: false, object_lock_days: None });
    let conf = admin::s3_client(&opts).await.get_object_lock_configuration().bucket(&bucket).send().await.unwrap();
    let days = conf
        .object_lock_configuration()
        .and_then(|c| c.rule())
        .and_then(|r| r.default_retention())
        .and_then(|d| d.days());
    assert_eq!(days, Some(1));
    // The locked bucket still works as a store.
    let store = storage::open_with(&url, &opts).await.unwrap();
    let id = store.put_blob(Bytes::from_static(b"locked")).await.unwrap();
    assert_eq!(store.get_blob(id, 64).await.unwrap().as_ref(), b"locked");
}
