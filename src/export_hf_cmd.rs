//! `cairn export-hf`: a model state as a directory that `transformers.LlamaForCausalLM` loads
//! (`model.safetensors` + `config.json`; the mapping is `trainer::hf`).

use std::path::PathBuf;

use anyhow::Context;
use trainer::hf;
use trainer::model::{ModelConfig, Preset, init_state};
use verify::State;

use crate::Outcome;
use crate::store_cmd::absolute_url;

/// Largest state read: 16 GiB, four times the f32 state of the `1b` preset.
const MAX_STATE_BYTES: u64 = 16 << 30;
/// Most token ids `--logits-for` takes (the longest preset context).
const MAX_LOGITS_TOKENS: usize = 2048;

#[derive(Debug, clap::Args)]
pub struct ExportHfArgs {
    /// The state: a safetensors file as verify writes it. Without it (and without --blob), the
    /// genesis state of --preset for --seed.
    #[arg(long, conflicts_with_all = ["store", "blob"])]
    state: Option<PathBuf>,
    /// The state as a blob in a run's store (with --blob): file:///abs/dir, s3://bucket/run, ...
    #[arg(long, requires = "blob")]
    store: Option<String>,
    /// The state blob's hash (hex), with --store.
    #[arg(long, requires = "store")]
    blob: Option<String>,
    /// Model preset (tiny, small, 125m, 1b); found from the state's shapes when a state is given.
    #[arg(long)]
    preset: Option<String>,
    /// Seed of the genesis state, when no state is given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The directory to write (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Also write our logits for these comma-separated token ids to cairn_logits.safetensors (what
    /// `make interop` compares with transformers).
    #[arg(long, value_name = "IDS")]
    logits_for: Option<String>,
}

/// Reads or builds the state, then writes the export.
pub async fn run(args: ExportHfArgs) -> anyhow::Result<Outcome> {
    let preset: Option<Preset> = args.preset.as_deref().map(str::parse).transpose()?;
    let ids = args.logits_for.as_deref().map(parse_ids).transpose()?;
    let state_bytes = match (&args.state, &args.store, &args.blob) {
        (Some(path), _, _) => {
            let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
            anyhow::ensure!(size <= MAX_STATE_BYTES, "{} is {size} bytes, over {MAX_STATE_BYTES}", path.display());
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        (None, Some(store), Some(blob)) => {
            let url = absolute_url(store)?;
            let store = storage::open(&url).await.with_context(|| format!("opening {url}"))?;
            let id: storage::BlobId = blob.parse().with_context(|| format!("--blob {blob:?}"))?;
            Some(store.get_blob(id, MAX_STATE_BYTES).await.with_context(|| format!("reading blob {blob}"))?.to_vec())
        }
        _ => None,
    };
    tokio::task::spawn_blocking(move || export(args, preset, state_bytes, ids)).await.context("export thread")?
}

fn export(
    args: ExportHfArgs,
    preset: Option<Preset>,
    state_bytes: Option<Vec<u8>>,
    ids: Option<Vec<u32>>,
) -> anyhow::Result<Outcome> {
    let (preset, config, state) = match state_bytes {
        Some(bytes) => {
            let state = State::from_safetensors(&bytes).context("parsing the state")?;
            let (preset, config) = match preset {
                Some(p) => (p, hf::config_for_state(p, &state)?),
                None => hf::identify(&state)?,
            };
            (preset, config, state)
        }
        None => {
            let preset = preset.context("--preset is needed to export a genesis state (no --state or --blob)")?;
            let config = ModelConfig::preset(preset);
            let state = init_state(&config, args.seed)?;
            (preset, config, state)
        }
    };
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write(hf::MODEL_FILE, &hf::model_safetensors(&config, &state)?)?;
    write(hf::CONFIG_FILE, hf::config_json(&config)?.as_bytes())?;
    if let Some(ids) = ids {
        trainer::set_torch_threads(1);
        write(hf::LOGITS_FILE, &hf::logits_safetensors(&config, &state, &ids)?)?;
    }
    println!(
        "export-hf: preset={preset} vocab={} params={} state={} out={}",
        config.vocab,
        state.layout().elements(),
        state.hash(),
        out.display()
    );
    Ok(Outcome::Ok)
}

/// `"1, 2,3"` as token ids (1 to MAX_LOGITS_TOKENS of them).
fn parse_ids(list: &str) -> anyhow::Result<Vec<u32>> {
    let ids = list
        .split(',')
        .map(|s| s.trim().parse::<u32>().with_context(|| format!("--logits-for: {s:?} is not a token id")))
        .collect::<anyhow::Result<Vec<u32>>>()?;
    anyhow::ensure!((1..=MAX_LOGITS_TOKENS).contains(&ids.len()), "--logits-for takes 1 to {MAX_LOGITS_TOKENS} ids");
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::parse_ids;

    #[test]
    fn logits_ids_parse_and_refuse_garbage() {
        assert_eq!(parse_ids("1, 2,300").unwrap(), [1, 2, 300]);
        assert!(parse_ids("").is_err());
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("-1").is_err());
        assert!(parse_ids(&vec!["1"; 2049].join(",")).is_err());
    }
}
