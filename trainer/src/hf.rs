//! Export to the Hugging Face layout, so a cairn state loads in `transformers.LlamaForCausalLM`.
//!
//! ```text
//!   State (verify, f32, HF names) ──▶ model.safetensors   the same tensors, same names, F32,
//!                                                           metadata {"format": "pt"}
//!   ModelConfig ───────────────────▶ config.json          LlamaConfig fields (config_json)
//!   State + token ids ─────────────▶ cairn_logits.safetensors   input_ids [1, T] i64,
//!                                                           logits [1, T, vocab] f32 (our forward)
//! ```
//!
//! No renaming or permutation is needed: [`crate::model`] names its parameters as
//! `LlamaForCausalLM` does (linear weights `[out, in]`, no biases), keeps `lm_head.weight` untied,
//! and applies rotary embeddings in HF's rotate-half convention (`x·cos + rotate_half(x)·sin`, the
//! frequencies repeated for both halves), so `q_proj`/`k_proj` rows are already in the order HF
//! expects. (Meta's original checkpoints rotate interleaved pairs, which is why HF's conversion
//! script permutes those rows; ours must not be permuted.) `make interop` checks all of this
//! against transformers itself by comparing logits.

use std::collections::HashMap;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tch::{Device, Tensor};
use verify::State;

use crate::error::TrainerError;
use crate::model::{EMBEDDING, Model, ModelConfig, Preset};

/// The weights file transformers looks for in a model directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The config file transformers looks for in a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// Our logits for a few token ids, written beside an export for the interop check.
pub const LOGITS_FILE: &str = "cairn_logits.safetensors";

/// The `config.json` of `config` for `transformers.LlamaForCausalLM` (pretty-printed, keys sorted,
/// newline-terminated). Special token ids are null: the byte vocabulary has none, and a tokenizer's
/// are recorded in its own files.
pub fn config_json(config: &ModelConfig) -> Result<String, TrainerError> {
    config.validate()?;
    let value = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim(),
        "num_hidden_layers": config.layers,
        "vocab_size": config.vocab,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": f64::from(config.rope_theta),
        "rope_scaling": null,
        "initializer_range": config.init_std,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "use_cache": true,
        "bos_token_id": null,
        "eos_token_id": null,
        "pad_token_id": null,
    });
    let mut text = serde_json::to_string_pretty(&value)
        .map_err(|e| TrainerError::InvalidConfig(format!("config.json does not serialise: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// The model config of `state` read as `preset`: the preset's shape with the vocabulary size taken
/// from the state's embedding table. An error unless the state's layout is exactly that config's.
pub fn config_for_state(preset: Preset, state: &State) -> Result<ModelConfig, TrainerError> {
    let layout = state.layout();
    let vocab = layout
        .position(EMBEDDING)
        .and_then(|i| layout.tensors()[i].shape.first().copied())
        .ok_or_else(|| TrainerError::InvalidConfig(format!("the state has no {EMBEDDING}: not a cairn model state")))?;
    let vocab = u32::try_from(vocab)
        .map_err(|_| TrainerError::InvalidConfig(format!("vocabulary of {vocab} tokens is too large")))?;
    let config = ModelConfig::preset(preset).with_vocab(vocab);
    let want = config.layout()?;
    if &want != layout {
        return Err(TrainerError::InvalidConfig(format!(
            "the state ({} tensors, {} parameters) is not preset {preset} with a vocabulary of {vocab} \
             ({} tensors, {} parameters)",
            layout.tensors().len(),
            layout.elements(),
            want.tensors().len(),
            want.elements()
        )));
    }
    Ok(config)
}

/// The preset whose layout `state` has (with the vocabulary of its embedding table), and that config.
pub fn identify(state: &State) -> Result<(Preset, ModelConfig), TrainerError> {
    Preset::ALL.into_iter().find_map(|p| config_for_state(p, state).ok().map(|c| (p, c))).ok_or_else(|| {
        TrainerError::InvalidConfig(format!(
            "the state ({} tensors, {} parameters) matches no preset (tiny, small, 125m, 1b)",
            state.layout().tensors().len(),
            state.layout().elements()
        ))
    })
}

/// `model.safetensors` for `state`: its tensors under their (already HF) names, F32, with the
/// `{"format": "pt"}` metadata transformers checks for. `state` must have `config`'s layout.
pub fn model_safetensors(config: &ModelConfig, state: &State) -> Result<Vec<u8>, TrainerError> {
    if &config.layout()? != state.layout() {
        return Err(TrainerError::InvalidConfig("the state's layout is not the config's".into()));
    }
    let tensors =
        state.layout().tensors().iter().zip(state.data()).map(|(spec, values)| {
            (spec.name.clone(), spec.shape.iter().map(|&d| d as usize).collect(), f32_bytes(values))
        });
    serialize(tensors.map(|(n, s, b)| (n, Dtype::F32, s, b)).collect())
}

/// `cairn_logits.safetensors`: `input_ids` `[1, T]` (i64) and our `logits` `[1, T, vocab]` (f32) for
/// `ids`, computed on the CPU from `state`.
pub fn logits_safetensors(config: &ModelConfig, state: &State, ids: &[u32]) -> Result<Vec<u8>, TrainerError> {
    if ids.is_empty() {
        return Err(TrainerError::InvalidConfig("no token ids to compute logits for".into()));
    }
    let model = Model::from_state(config, state, Device::Cpu)?;
    let t = ids.len() as i64;
    let input: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let logits = tch::no_grad(|| model.forward(&Tensor::f_from_slice(&input)?.f_reshape([1, t])?))?;
    let logits = Vec::<f32>::try_from(&logits.f_contiguous()?.f_reshape([-1])?)?;
    let ids_bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
    serialize(vec![
        ("input_ids".to_string(), Dtype::I64, vec![1, ids.len()], ids_bytes),
        ("logits".to_string(), Dtype::F32, vec![1, ids.len(), config.vocab as usize], f32_bytes(&logits)),
    ])
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Safetensors bytes with the `pt` format metadata.
fn serialize(tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) -> Result<Vec<u8>, TrainerError> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| TrainerError::Safetensors(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| TrainerError::Safetensors(e.to_string()))
}

#[cfg(test)]
mod tests {
    use safetensors::SafeTensors;

    use super::*;
    use crate::model::init_state;

    #[test]
    fn config_json_has_the_llama_fields() {
        let config = ModelConfig::preset(Preset::B1).with_vocab(32_000);
        let json: serde_json::Value = serde_json::from_str(&config_json(&config).unwrap()).unwrap();
        assert_eq!(json["architectures"], serde_json::json!(["LlamaForCausalLM"]));
        assert_eq!(json["model_type"], "llama");
        for (key, want) in [
            ("hidden_size", 2048),
            ("intermediate_size", 8192),
            ("num_attention_heads", 32),
            ("num_key_value_heads", 8),
            ("head_dim", 64),
            ("num_hidden_layers", 16),
            ("vocab_size", 32_000),
            ("max_position_embeddings", 2048),
        ] {
            assert_eq!(json[key], want, "{key}");
        }
        assert_eq!(json["rms_norm_eps"].as_f64(), Some(1e-5));
        assert_eq!(json["rope_theta"].as_f64(), Some(10_000.0));
        assert_eq!(json["tie_word_embeddings"], false);
        assert_eq!(json["torch_dtype"], "float32");
        assert_eq!(json["hidden_act"], "silu");
        assert_eq!(json["attention_bias"], false);
        assert_eq!(json["mlp_bias"], false);
        assert!(json["eos_token_id"].is_null());
        assert!(config_json(&ModelConfig { heads: 3, ..config }).is_err());
    }

    #[test]
    fn model_safetensors_keeps_names_values_and_marks_the_format() {
        let config = ModelConfig::preset(Preset::Tiny);
        let state = init_state(&config, 4).unwrap();
        let bytes = model_safetensors(&config, &state).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
        // verify reads it back bit for bit (it ignores the metadata).
        assert_eq!(State::from_safetensors(&bytes).unwrap(), state);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("lm_head.weight").unwrap().shape(), [256, 128]);
        assert_eq!(st.tensor("model.layers.3.self_attn.q_proj.weight").unwrap().shape(), [128, 128]);
    }

    #[test]
    fn config_for_state_reads_the_vocabulary_and_rejects_other_layouts() {
        let config = ModelConfig::preset(Preset::Tiny).with_vocab(300);
        let state = init_state(&config, 0).unwrap();
        assert_eq!(config_for_state(Preset::Tiny, &state).unwrap(), config);
        assert!(matches!(config_for_state(Preset::Small, &state), Err(TrainerError::InvalidConfig(_))));
        let foreign =
            State::new(vec![(verify::TensorSpec { name: "w".into(), shape: vec![2] }, vec![0.0; 2])]).unwrap();
        assert!(matches!(config_for_state(Preset::Tiny, &foreign), Err(TrainerError::InvalidConfig(_))));
        assert_eq!(identify(&state).unwrap(), (Preset::Tiny, config.clone()));
        assert!(matches!(identify(&foreign), Err(TrainerError::InvalidConfig(_))));
        let tiny = ModelConfig::preset(Preset::Tiny);
        assert!(matches!(model_safetensors(&tiny, &state), Err(TrainerError::InvalidConfig(_))));
    }

    #[test]
    fn logits_file_matches_the_model() {
        tch::set_num_threads(1);
        let config = ModelConfig { layers: 1, ..ModelConfig::preset(Preset::Tiny) };
        let state = init_state(&config, 2).unwrap();
        let bytes = logits_safetensors(&config, &state, &[5, 255, 0]).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let ids = st.tensor("input_ids").unwrap();
        assert_eq!((ids.dtype(), ids.shape()), (Dtype::I64, &[1, 3][..]));
        let logits = st.tensor("logits").unwrap();
        assert_eq!(logits.shape(), [1, 3, 256]);
        let got: Vec<f32> = logits.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let model = Model::from_state(&config, &state, Device::Cpu).unwrap();
        let want = model.forward(&Tensor::from_slice(&[5i64, 255, 0]).reshape([1, 3])).unwrap();
        assert_eq!(got, Vec::<f32>::try_from(want.reshape([-1])).unwrap());
        assert!(logits_safetensors(&config, &state, &[]).is_err());
        assert!(matches!(logits_safetensors(&config, &state, &[256]), Err(TrainerError::InvalidConfig(_))));
    }
}
