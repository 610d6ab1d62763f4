//! `cairn demo`: what `make demo` runs.
//!
//! Today it sets up the embedded local store, proves it gives the guarantees the ledger needs,
//! and proves libtorch loads. The federated training run (keys, genesis, workers, validator,
//! audit) arrives with the federation issue; the demo says so rather than pretending.

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
        "\nNext in cairn (open issues): the signed ledger, bit-exact DeMo aggregation, the Llama trainer,\n\
         and a federated run with workers, a validator and an audit. This demo grows with them."
    );
    Ok(Outcome::Ok)
}
