//! `cairn bench NAME`: whole-system benchmarks. Each prints its headline figures on its last
//! line as `bench NAME: key=value ...`, with ratios against a baseline measured in the same run.

mod adversary_bench;
mod aggregate_bench;
mod ledger_bench;
mod poison_bench;
mod poll_bench;
mod scale_bench;
mod step_bench;
mod storage_bench;
mod train_bench;

use clap::Subcommand;

use crate::Outcome;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Put/get throughput of the storage wrapper against raw object_store calls, and blake3 speed.
    Storage(storage_bench::Args),
    /// verify's bit-exact decode + aggregate + apply against libtorch doing DeMo's dense decode.
    Aggregate(aggregate_bench::Args),
    /// Ledger appends (1 and 16 appenders), replay with signature verification, inclusion proofs.
    Ledger(ledger_bench::Args),
    /// cairn's DeMo rounds (simulated workers, verify's aggregation) against full-batch AdamW.
    Train(train_bench::Args),
    /// One worker's compute per round on one device (passes, DeMo encoding): tokens/s and MFU.
    Step(step_bench::Args),
    /// What following a long run costs per poll (read, round-rule index) and in memory, against
    /// the ledger's length.
    Poll(poll_bench::Args),
    /// A poisoned minority (sign flip, x100, noise, stale, zero) against the clean run: the
    /// held-out loss with the aggregation alone and with validators.
    Poison(poison_bench::Args),
    /// A seeded adversarial simulation: honest organisations against byzantine ones and a faulty
    /// bucket, every safety property checked after every round.
    Adversary(adversary_bench::Args),
    /// One round at 10, 100 and 1,000 workers: bytes, ledger appends (simulated with the real
    /// appender), aggregation, store requests and their price, joining, a follower's memory.
    Scale(scale_bench::Args),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<Outcome> {
    match cmd {
        BenchCommand::Storage(args) => storage_bench::run(args).await,
        BenchCommand::Aggregate(args) => aggregate_bench::run(args).await,
        BenchCommand::Ledger(args) => ledger_bench::run(args).await,
        BenchCommand::Train(args) => train_bench::run(args).await,
        BenchCommand::Step(args) => step_bench::run(args).await,
        BenchCommand::Adversary(args) => adversary_bench::run(args).await,
        BenchCommand::Poll(args) => poll_bench::run(args).await,
        BenchCommand::Poison(args) => poison_bench::run(args).await,
        BenchCommand::Scale(args) => scale_bench::run(args).await,
    }
}

/// The roster a simulated run's run.toml needs (an admin and a worker; simulations draw their own
/// members), appended to the benches' built-in runs.
pub(crate) const SIM_ROSTER: &str = r#"
[roster]
quorum = 1
[[roster.member]]
key = "0000000000000000000000000000000000000000000000000000000000000001"
organisation = "sim"
role = "admin"
[[roster.member]]
key = "0000000000000000000000000000000000000000000000000000000000000002"
organisation = "sim"
role = "worker"
"#;

/// Median of a non-empty list of measurements.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}
