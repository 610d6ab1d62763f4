//! `cairn demo`: what `make demo` runs.
//!
//! Today it sets up the embedded local store, proves it gives the guarantees the ledger needs,
//! and proves libtorch loads. The ledger, the aggregation and the trainer's parts exist as
//! libraries and benchmarks; the federated run over a bucket (genesis, workers, validator, audit)
//! arrives with the federation issue, and the demo says so rather than pretending.

use anyhow::Context;
use storage::admin::{self, InitOptions};

use crate::Outcome;
use crate::store_cmd::{absolute_url, check};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its store (a local folder by default; s3://bucket/prefix works too).
    #[arg(long, default_value = "file://cairn-demo")]
    store: String,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let url = absolute_url(&args.store)?;
    println!("cairn demo: store {url}");
    admin::init(&url, InitOptions::default(), &Default::default()).await.with_context(|| format!("creating {url}"))?;
    println!("\n[1/2] storage conformance");
    if let Outcome::Failed = check(&url).await? {
        return Ok(Outcome::Failed);
    }
    println!("\n[2/2] libtorch");
    let info = trainer::torch_info();
    println!("libtorch loaded: {} threads, cuda_available={}", info.threads, info.cuda_available);
    println!(
        "\nBuilt and benchmarked: the signed ledger (cairn bench ledger), bit-exact DeMo aggregation\n\
         (cairn bench aggregate), the Llama-style trainer (cairn bench train). Next: a federated run\n\
         over this store with workers, a validator and an audit; this demo grows into it."
    );
    Ok(Outcome::Ok)
}
