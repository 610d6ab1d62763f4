//! `cairn keygen`, `cairn export` and `cairn checkpoint`: key files, Parquet exports of the
//! ledger, and its newest quorum checkpoint as a C2SP signed note.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use ledger::checkpoint::{member_verifier_key, origin};
use serde_json::json;

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
    /// Also store the export in the run, at exports/whole/{size:020}.parquet.
    #[arg(long)]
    publish: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// The run's store: file:///abs/dir, s3://bucket/run, memory:// (read access is enough)
    #[arg(long)]
    store: String,
    /// Print the members' verifier keys (vkeys), one a line, instead of the checkpoint.
    #[arg(long)]
    vkeys: bool,
    /// Organisations whose members must have cosigned a tree head for it to count (default: the
    /// run's org quorum).
    #[arg(long, value_name = "N")]
    organisations: Option<u16>,
    /// Print one JSON object (the note with its checkpoint, signers and vkeys) and nothing else.
    #[arg(long)]
    json: bool,
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
    let progress = crate::audit_cmd::Progress::new("replaying the ledger");
    let reader = ledger::Reader::replay(store.clone(), run_id)
        .await
        .with_context(|| format!("replaying the ledger of {url}"))?;
    progress.finish();
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

/// Replays the ledger, checks the newest tree head cosigned by members of a quorum of
/// organisations against it, and prints that checkpoint as one signed note (docs/LEDGER.md,
/// "Checkpoints"), or prints the members' vkeys. Fails when no head has the quorum yet.
pub async fn checkpoint(args: CheckpointArgs) -> anyhow::Result<Outcome> {
    let url = absolute_url(&args.store)?;
    let store = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
    let run_id = ledger::genesis_run_id(&store).await.with_context(|| format!("reading the genesis of {url}"))?;
    let progress = crate::audit_cmd::Progress::new("replaying the ledger");
    let mut reader =
        ledger::Reader::replay(store, run_id).await.with_context(|| format!("replaying the ledger of {url}"))?;
    progress.finish();
    let members: Vec<ledger::note::VerifierKey> =
        reader.state().roster().keys().map(|k| member_verifier_key(run_id, k)).collect();
    let vkeys: Vec<serde_json::Value> = reader
        .state()
        .roster()
        .values()
        .zip(&members)
        .map(|(m, vkey)| {
            json!({ "key": m.key.to_string(), "organisation": m.organisation, "role": m.role.name(),
                    "key_name": vkey.name(), "vkey": vkey.to_string() })
        })
        .collect();
    if args.vkeys {
        if args.json {
            println!("{}", json!({ "run_id": run_id.to_string(), "origin": origin(run_id), "vkeys": vkeys }));
        } else {
            members.iter().for_each(|vkey| println!("{vkey}"));
        }
        return Ok(Outcome::Ok);
    }
    let required = reader.checkpoint_quorum(args.organisations);
    let found =
        reader.check_checkpoint(required).await.with_context(|| format!("checking the checkpoints of {url}"))?;
    let Some(cp) = found else {
        anyhow::bail!(
            "no checkpoint yet: no tree head of run {run_id} is signed by members of {required} organisation(s) \
             (members sign one after each snapshot round becomes final)"
        );
    };
    let note = reader.checkpoint_note(&cp).context("writing the checkpoint as a signed note")?.encode();
    // Checked the way an outside verifier checks it, with the members' vkeys, before it is printed.
    let (_, signers) = ledger::checkpoint::open_checkpoint_note(note.as_bytes(), &members)
        .context("the checkpoint note does not verify with the members' vkeys")?;
    let state = reader.state();
    let organisations: BTreeSet<&str> = signers.iter().filter_map(|v| state.organisation(v.key())).collect();
    eprintln!(
        "checkpoint: {} slots, root {}, {} signature(s) from {} organisation(s) ({required} required)",
        cp.checkpoint.size,
        cp.checkpoint.root,
        signers.len(),
        organisations.len()
    );
    if args.json {
        let signers: Vec<serde_json::Value> = signers
            .iter()
            .map(|v| json!({ "key": v.key().to_string(), "organisation": state.organisation(v.key()), "vkey": v.to_string() }))
            .collect();
        let report = json!({
            "run_id": run_id.to_string(),
            "origin": origin(run_id),
            "size": cp.checkpoint.size,
            "root": cp.checkpoint.root.to_string(),
            "required_organisations": required,
            "organisations": organisations,
            "signers": signers,
            "note": note,
            "vkeys": vkeys,
        });
        println!("{report}");
    } else {
        print!("{note}");
    }
    Ok(Outcome::Ok)
}
