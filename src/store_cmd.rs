//! `cairn store init` and `cairn store check`.

use anyhow::Context;
use clap::Subcommand;
use storage::admin::{self, InitOptions, InitReport};
use storage::conformance;

use crate::Outcome;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Create the bucket (or local folder) a store URL names; optionally turn on S3 Object Lock.
    Init {
        /// Store URL: file:///abs/dir, s3://bucket/prefix, memory://
        url: String,
        /// Default retention for S3 Object Lock, in days (entries and blobs become immutable).
        #[arg(long)]
        object_lock_days: Option<u32>,
    },
    /// Check that a store gives the guarantees the ledger needs (put-if-absent races, CAS, ...).
    Check {
        /// Store URL: file:///abs/dir, s3://bucket/prefix, memory://
        url: String,
    },
}

pub async fn run(cmd: StoreCommand) -> anyhow::Result<Outcome> {
    match cmd {
        StoreCommand::Init { url, object_lock_days } => {
            let url = absolute_url(&url)?;
            let report = admin::init(&url, InitOptions { object_lock_days }, &Default::default())
                .await
                .with_context(|| format!("store init {url}"))?;
            match report {
                InitReport::Memory => println!("memory store: nothing to create"),
                InitReport::Folder { created } => {
                    println!("store folder {}", if created { "created" } else { "already there" })
                }
                InitReport::Bucket { created, object_lock_days } => {
                    println!("bucket {}", if created { "created" } else { "already there" });
                    if let Some(days) = object_lock_days {
                        println!("object lock: governance retention of {days} days");
                    }
                }
            }
            Ok(Outcome::Ok)
        }
        StoreCommand::Check { url } => check(&absolute_url(&url)?).await,
    }
}

/// Runs the conformance check and prints one line per check and a verdict line.
pub async fn check(url: &str) -> anyhow::Result<Outcome> {
    let store = storage::open(url).await.with_context(|| format!("opening {url}"))?;
    let results = conformance::check(&store).await.with_context(|| format!("store check {url}"))?;
    let mut failed = Vec::new();
    for r in &results {
        println!("{:<5} {:<22} {:>6} ms  {}", if r.passed { "ok" } else { "FAIL" }, r.name, r.elapsed_ms, r.detail);
        if !r.passed {
            failed.push(r.name);
        }
    }
    if failed.is_empty() {
        println!("store check: PASS");
        Ok(Outcome::Ok)
    } else {
        println!("store check: FAIL {}", failed.join(", "));
        Ok(Outcome::Failed)
    }
}

/// Accepts `file://relative/dir` and bare paths for convenience and makes them absolute
/// `file://` URLs; everything else passes through.
pub fn absolute_url(url: &str) -> anyhow::Result<String> {
    let path = match url.strip_prefix("file://") {
        Some(rest) if !rest.starts_with('/') => rest,
        Some(_) => return Ok(url.to_string()),
        None if url.contains("://") => return Ok(url.to_string()),
        None => url,
    };
    let abs = std::path::absolute(path).with_context(|| format!("resolving {path}"))?;
    Ok(format!("file://{}", abs.display()))
}
