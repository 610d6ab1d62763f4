//! The `cairn` command: argument parsing, wiring and exit codes. The work happens in the library
//! crates (storage, ledger, verify, trainer); this file only connects them to a terminal.

mod audit_cmd;
mod bench;
mod dashboard;
mod demo;
mod export_hf_cmd;
mod ledger_cmd;
mod metrics;
mod roster_cmd;
mod run_cmd;
mod store_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Decentralised LLM pretraining on shared object storage.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines on stderr look: text, or json (one object per line, for log collectors).
    /// CAIRN_LOG sets the level (default warn).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up and check object stores.
    Store {
        #[command(subcommand)]
        command: store_cmd::StoreCommand,
    },
    /// Run a benchmark; its last line is `bench NAME: key=value ...`.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Create a member key file and print its public key.
    Keygen(ledger_cmd::KeygenArgs),
    /// Replay a run's ledger and write it as a Parquet file.
    Export(ledger_cmd::ExportArgs),
    /// Print the run's newest checkpoint cosigned by a quorum of organisations as a C2SP signed
    /// note, for any signed-note verifier (or, with --vkeys, the members' verifier keys).
    Checkpoint(ledger_cmd::CheckpointArgs),
    /// Start a run: write the Genesis entry from a run.toml.
    Genesis(run_cmd::GenesisArgs),
    /// Add or remove members, signed by a quorum of admins.
    Roster {
        #[command(subcommand)]
        command: roster_cmd::RosterCommand,
    },
    /// Take part in a run as a worker: train, contribute, follow.
    Worker(run_cmd::ParticipantArgs),
    /// Append an organisation's contributions to a round as one ledger slot (its workers run with
    /// --gatherer-wait-ms); holds no key and signs nothing.
    Gather(run_cmd::GatherArgs),
    /// Take part in a run as a validator: score contributions, append verdicts and evaluations.
    Validate(run_cmd::ParticipantArgs),
    /// The held-out loss of the run's newest final state, beside the ledger's signed evaluations
    /// (with --key, a member signs and appends it).
    Eval(run_cmd::EvalArgs),
    /// Audit a run: check every signature, slot, checkpoint and blob, replay every round and
    /// compare every claimed state hash; last line `audit: OK ...` or `audit: FAIL ...`.
    Audit(audit_cmd::AuditArgs),
    /// Show a run's state from its ledger: open round, members, latest contributions, loss.
    Status(audit_cmd::StatusArgs),
    /// Serve a live, read-only web page and JSON API of a run, every figure from its ledger.
    Dashboard(dashboard::DashboardArgs),
    /// Delete update blobs behind the newest snapshot a passing audit confirms (dry run unless
    /// --delete).
    Gc(audit_cmd::GcArgs),
    /// Write a model state as a directory that transformers' LlamaForCausalLM loads.
    ExportHf(export_hf_cmd::ExportHfArgs),
    /// Run the demonstration on a local store (what `make demo` runs).
    Demo(demo::DemoArgs),
    /// Print what this build links: libtorch version and devices.
    Info,
}

/// How a command ended, beyond success: a check that ran but found a problem.
pub enum Outcome {
    /// Everything passed.
    Ok,
    /// The command ran and reports a failure (exit 1).
    Failed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Store { command } => store_cmd::run(command).await,
            Command::Bench { command } => bench::run(command).await,
            Command::Keygen(args) => ledger_cmd::keygen(args),
            Command::Export(args) => ledger_cmd::export(args).await,
            Command::Checkpoint(args) => ledger_cmd::checkpoint(args).await,
            Command::Genesis(args) => run_cmd::genesis(args).await,
            Command::Roster { command } => roster_cmd::run(command).await,
            Command::Worker(args) => run_cmd::worker(args).await,
            Command::Validate(args) => run_cmd::validate(args).await,
            Command::Gather(args) => run_cmd::gather(args).await,
            Command::Audit(args) => audit_cmd::audit(args).await,
            Command::Status(args) => audit_cmd::status(args).await,
            Command::Dashboard(args) => dashboard::run(args).await,
            Command::Eval(args) => run_cmd::eval(args).await,
            Command::Gc(args) => audit_cmd::gc(args).await,
            Command::ExportHf(args) => export_hf_cmd::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Info => {
                let info = trainer::torch_info();
                println!("cairn {}", env!("CARGO_PKG_VERSION"));
                println!("libtorch threads={} cuda_available={}", info.threads, info.cuda_available);
                Ok(Outcome::Ok)
            }
        }
    });
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
