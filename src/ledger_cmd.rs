//! `cairn keygen` and `cairn export`: key files and Parquet exports of the ledger.

use std::path::PathBuf;

use anyhow::Context;

use crate::Outcome;
use crate::store_cmd::absolute_url;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the new secret key (created with mode 0600; never overwritten).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run, memory://
    #[arg(long)]
    store: String,
    /// The Parquet file to write.
    #[arg(long)]
    out: PathBuf,
    /// Also store the export in the run, at exports/{size:020}.parquet.
    #[arg(long)]
    publish: bool,
}

/// Writes a new key file and prints its public key (lowercase hex, as the ledger shows keys).
pub fn keygen(args: KeygenArgs) -> anyhow::Result<Outcome> {
    let key = ledger::write_key_file(&args.out).with_context(|| "keygen")?;
    eprintln!("wrote the secret key to {} (mode 0600); keep it private", args.out.display());
    println!("{}", key.public());
    Ok(Outcome::Ok)
}

/// Replays the ledger and writes it as Parquet.
pub async fn export(args: ExportArgs) -> anyhow::Result<Outcome> {
    let url = absolute_url(&args.store)?;
    let store = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    let run_id = ledger::genesis_run_id(&store).await.with_context(|| format!("reading the genesis of {url}"))?;
    let reader = ledger::Reader::replay(store.clone(), run_id)
        .await
        .with_context(|| format!("replaying the ledger of {url}"))?;
    let summary = ledger::export::write_file(&reader, &args.out)
        .with_context(|| format!("exporting to {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    if args.publish {
        let (key, _) = ledger::export::write_to_store(&reader, &store)
            .await
            .with_context(|| format!("storing the export in {url}"))?;
        println!("stored {key}");
    }
    println!("export: run={run_id} rows={} size={} root={}", summary.rows, summary.size, summary.root);
    Ok(Outcome::Ok)
}
