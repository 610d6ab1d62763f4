//! Test support (feature `test-support`): fresh stores of each kind, including a real S3 server,
//! for the tests of every crate in the workspace.
//!
//! Under `make test` the server is already running and its settings are in the environment
//! (`CAIRN_TEST_S3=1` plus the AWS variables). Otherwise the first caller starts SeaweedFS with
//! `infra/s3-local.sh start --parent <this process>`, which stops it when the process exits. If it
//! cannot, the caller panics with the reason: S3 tests fail, they never skip.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::admin::{self, InitOptions};
use crate::{OpenOptions, RetryPolicy, Store};

/// The test S3 server's settings as environment variables (`AWS_ENDPOINT_URL`, ...), for child
/// processes such as the `cairn` binary under test.
pub fn s3_env() -> &'static Vec<(String, String)> {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lines = if std::env::var("CAIRN_TEST_S3").as_deref() == Ok("1") {
            ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"]
                .iter()
                .map(|k| {
                    format!(
                        "export {k}={}",
                        std::env::var(k).unwrap_or_else(|_| panic!("CAIRN_TEST_S3=1 but {k} is unset"))
                    )
                })
                .collect::<Vec<_>>()
        } else {
            start_own_server()
        };
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

/// The test S3 server's settings as object_store config keys (for [`OpenOptions::settings`]).
pub fn s3_settings() -> Vec<(String, String)> {
    s3_env()
        .iter()
        .filter_map(|(k, v)| {
            let key = match k.as_str() {
                "AWS_ENDPOINT_URL" => "aws_endpoint",
                "AWS_ACCESS_KEY_ID" => "aws_access_key_id",
                "AWS_SECRET_ACCESS_KEY" => "aws_secret_access_key",
                "AWS_REGION" => "aws_region",
                "AWS_ALLOW_HTTP" => "aws_allow_http",
                _ => return None,
            };
            Some((key.to_string(), v.clone()))
        })
        .collect()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("storage/ has a parent").to_path_buf()
}

fn start_own_server() -> Vec<String> {
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!("cairn-s3-test-{}", std::process::id()));
    let script = root.join("infra/s3-local.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .args(["start", "--parent", &std::process::id().to_string()])
        .env("CAIRN_S3_DIR", &dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "S3 tests need SeaweedFS: `{} start` failed (run `make test`, which installs it)",
        script.display()
    );
    let env = std::fs::read_to_string(dir.join("env")).expect("s3-local.sh wrote no env file");
    env.lines().map(str::to_string).collect()
}

/// Open options pointing at the test S3 server, with a quick retry policy.
pub fn s3_options() -> OpenOptions {
    OpenOptions { retry: quick_retry(), settings: s3_settings() }
}

/// Retries short enough for tests.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy { max_attempts: 4, base_delay_ms: 10, max_delay_ms: 50 }
}

/// A fresh, empty bucket on the test S3 server; returns its URL (`s3://bucket/prefix`).
pub async fn fresh_bucket() -> String {
    let bucket = format!("cairn-test-{}", hex_id());
    let url = format!("s3://{bucket}/run");
    admin::init(&url, InitOptions::default(), &s3_options()).await.expect("create test bucket");
    url
}

/// A fresh S3 store.
pub async fn s3_store() -> Store {
    let url = fresh_bucket().await;
    crate::open_with(&url, &s3_options()).await.expect("open S3 store")
}

/// A fresh local-folder store and the folder (kept alive by the returned guard).
pub async fn file_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", dir.path().display());
    let store =
        crate::open_with(&url, &OpenOptions { retry: quick_retry(), settings: vec![] }).await.expect("open file store");
    (store, dir)
}

/// A fresh in-memory store.
pub async fn memory_store() -> Store {
    crate::open_with("memory://", &OpenOptions { retry: quick_retry(), settings: vec![] })
        .await
        .expect("open memory store")
}

/// A random hex id for names.
pub fn hex_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
