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
        /// Default retention for S3 Object Lock, in days: every object version is kept for that
        /// long. It does not stop a new version at the same key or a delete marker; the bucket
        /// policy in docs/SECURITY.md does (check it with `cairn store check --require-protection`).
        #[arg(long)]
        object_lock_days: Option<u32>,
    },
    /// Check that a store gives the guarantees the ledger needs (put-if-absent races, CAS, ...),
    /// and whether these credentials can replace or delete history (the bucket policy).
    Check {
        /// Store URL: file:///abs/dir, s3://bucket/prefix, memory://
        url: String,
        /// Fail unless the store refuses to replace or delete objects under every history prefix
        /// (what the bucket policy in docs/SECURITY.md enforces; run it with a member's credentials).
        #[arg(long)]
        require_protection: bool,
        /// The organisation whose member runs the check: its large-blob probe is staged in that
        /// organisation's folder (`tmp/<folder>/`), where the member's IAM rules let it write.
        #[arg(long)]
        organisation: Option<String>,
    },
    /// Print the key prefixes of a run, which are history (create-only) and who writes each:
    /// what a bucket policy and IAM roles must allow (docs/DEPLOY.md). With --organisation, each
    /// named organisation's folder: where its members re-publish blobs and stage uploads.
    Layout {
        /// An organisation of the roster, by name (repeatable).
        #[arg(long)]
        organisation: Vec<String>,
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
                    match object_lock_days {
                        Some(days) => println!(
                            "object lock: governance retention of {days} days (old versions are kept; overwrites \
                             and deletes are stopped only by the bucket policy in docs/SECURITY.md)"
                        ),
                        None => println!(
                            "history is not protected until the bucket policy in docs/SECURITY.md denies \
                             overwrites and deletes; `cairn store check --require-protection` verifies it"
                        ),
                    }
                }
            }
            Ok(Outcome::Ok)
        }
        StoreCommand::Check { url, require_protection, organisation } => {
            let protection = if require_protection { Protection::Require } else { Protection::Report };
            check(&absolute_url(&url)?, protection, organisation.as_deref()).await
        }
        StoreCommand::Layout { organisation } => {
            print!("{}", layout(&organisation));
            Ok(Outcome::Ok)
        }
    }
}

/// The run's key prefixes, one a line: `PREFIX history|replaceable WHO`, then for each
/// organisation asked about `folder HEX ORG`, `mirror PREFIX ORG`, `staging PREFIX ORG` and `steps PREFIX ORG`. Every prefix comes from the constant its writer uses.
fn layout(organisations: &[String]) -> String {
    let [seq, checkpoints, blobs, mirrors] = conformance::HISTORY_PREFIXES;
    let exports = format!("{}/", ledger::export::EXPORT_PREFIX);
    let rows = [
        (seq, "history", "every member: one signed entry a slot"),
        (checkpoints, "history", "every member: cosignatures of tree heads"),
        (blobs, "history", "every member: updates, snapshots; the admin: the genesis state"),
        (mirrors, "history", "workers and validators: under their own organisation's prefix only"),
        (ledger::log::HEAD_HINT_KEY, "replaceable", "every member: a hint where the ledger ends"),
        (exports.as_str(), "replaceable", "the snapshot writer: Parquet exports (derived)"),
        (
            storage::STAGING_PREFIX,
            "replaceable",
            "every member: large uploads in progress and contributions for the gatherer, in its own organisation's folder",
        ),
        (
            verify::replay::STEPS_PREFIX,
            "replaceable",
            "validators (and members with --steps publish): each round's step, in its own organisation's folder",
        ),
        (conformance::SCRATCH_PREFIX, "replaceable", "`cairn store check`: its probes"),
    ];
    let mut out = String::new();
    for (prefix, kind, who) in rows {
        out.push_str(&format!("{prefix:<21} {kind:<11} {who}\n"));
    }
    for org in organisations {
        out.push_str(&format!("folder {} {org}\n", verify::replay::organisation_folder(org)));
        out.push_str(&format!("mirror {}/ {org}\n", verify::replay::mirror_prefix(org)));
        out.push_str(&format!("staging {} {org}\n", verify::replay::staging_prefix(org)));
        out.push_str(&format!("steps {} {org}\n", verify::replay::step_prefix(org)));
    }
    out
}

/// Whether `check` asks if history can be replaced or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Not asked (the demo's local folder, where nothing could protect it).
    Skip,
    /// Asked and reported.
    Report,
    /// Asked; anything unprotected fails the check.
    Require,
}

/// Runs the conformance check, then (unless skipped) the protection check, one line per check,
/// and a verdict line: `store check: PASS history=protected|unprotected|partly-protected` (just
/// `store check: PASS` when skipped) or `store check: FAIL <checks>`.
pub async fn check(url: &str, protection: Protection, organisation: Option<&str>) -> anyhow::Result<Outcome> {
    let require_protection = protection == Protection::Require;
    let mut store = storage::open(url).await.with_context(|| format!("opening {url}"))?;
    if let Some(org) = organisation {
        store = store.staging_in(&verify::replay::staging_prefix(org))?;
    }
    let results = conformance::check(&store).await.with_context(|| format!("store check {url}"))?;
    let print = |r: &conformance::CheckResult, bad: &str| {
        println!("{:<5} {:<22} {:>6} ms  {}", if r.passed { "ok" } else { bad }, r.name, r.elapsed_ms, r.detail)
    };
    let mut failed = Vec::new();
    for r in &results {
        print(r, "FAIL");
        if !r.passed {
            failed.push(r.name);
        }
    }
    if protection == Protection::Skip {
        return Ok(verdict(&failed, ""));
    }
    println!("can these credentials replace or delete history? (a bucket policy should refuse both)");
    let protection = conformance::check_protection(&store).await.with_context(|| format!("store check {url}"))?;
    for r in &protection {
        print(r, if require_protection { "FAIL" } else { "no" });
    }
    let probes: Vec<&conformance::CheckResult> =
        protection.iter().filter(|r| r.name.starts_with("protected ")).collect();
    let protected = probes.iter().filter(|r| r.passed).count();
    let history = match protected {
        0 => "unprotected",
        n if n == probes.len() && protection.iter().all(|r| r.passed) => "protected",
        _ => "partly-protected",
    };
    if protected > 0 {
        println!("{protected} probe object(s) stay behind: the store refused to delete them, as it should");
    }
    if require_protection {
        failed.extend(protection.iter().filter(|r| !r.passed).map(|r| r.name));
    }
    Ok(verdict(&failed, &format!(" history={history}")))
}

/// Prints the verdict line: PASS (with `pass_detail`) when nothing failed, else FAIL and the checks.
fn verdict(failed: &[&str], pass_detail: &str) -> Outcome {
    if failed.is_empty() {
        println!("store check: PASS{pass_detail}");
        Outcome::Ok
    } else {
        println!("store check: FAIL {}", failed.join(", "));
        Outcome::Failed
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

#[cfg(test)]
mod layout_tests {
    use super::*;

    #[test]
    fn layout_names_every_history_prefix_and_each_organisations_mirror() {
        let text = layout(&["alpha".to_string(), "beta".to_string()]);
        let history: Vec<&str> = text
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("history"))
            .map(|l| &l[..l.find(' ').unwrap_or(0)])
            .collect();
        assert_eq!(history, conformance::HISTORY_PREFIXES);
        for replaceable in ["ledger/head", "exports/", "tmp/", "_cairn-check/"] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{replaceable} ")) && l.contains("replaceable")),
                "{text}"
            );
        }
        // blake3("alpha") and blake3("beta"), first 8 bytes, from the Python blake3 package.
        assert!(text.contains("folder 644a9bc57c6063e2 alpha\n"), "{text}");
        assert!(text.contains("mirror mirrors/644a9bc57c6063e2/ alpha\n"), "{text}");
        assert!(text.contains("steps steps/644a9bc57c6063e2/ alpha\n"), "{text}");
        assert!(text.contains("staging tmp/644a9bc57c6063e2/ alpha\n"), "{text}");
        assert!(text.contains("mirror mirrors/c607f0e66519ff41/ beta\n"), "{text}");
    }
}
