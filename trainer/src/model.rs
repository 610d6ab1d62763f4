//! A Llama-style decoder on libtorch, its presets, and its deterministic initial state.
//!
//! ```text
//!   tokens [B, T] ─▶ model.embed_tokens ─▶ x [B, T, dim]
//!   for i in 0..layers:                                   (model.layers.{i}.…)
//!       h = RMSNorm(x)                     input_layernorm
//!       q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ       self_attn.{q,k,v}_proj    (k, v: kv_heads ≤ heads, GQA)
//!       q, k = rope(q), rope(k)            rotate-half convention (HF Llama), θ = rope_theta
//!       a = SDPA(q, k, v, causal)          Tensor::scaled_dot_product_attention(is_causal = true)
//!       x = x + a·Woᵀ                      self_attn.o_proj
//!       h = RMSNorm(x)                     post_attention_layernorm
//!       x = x + (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ   mlp.{gate,up,down}_proj   (SwiGLU)
//!   logits = RMSNorm(x) · Wlmᵀ             model.norm, lm_head       [B, T, vocab]
//! ```
//!
//! Parameter names and shapes are exactly those of `transformers.LlamaForCausalLM` (linear weights
//! `[out, in]`, no biases). The LM head is **untied** (`tie_word_embeddings = false`, as in Llama 2
//! and the larger Llama 3 models): `lm_head.weight` is its own tensor in the state.
//!
//! ## Initial state
//! [`init_state`] builds the genesis [`State`] in Rust, without libtorch's RNG, so that its hash is a
//! pure function of (config, seed), whatever the device, thread count or libtorch build:
//! - each tensor gets its own ChaCha8 stream, keyed by `blake3::derive_key("cairn init v1",
//!   seed_le64 || name)`;
//! - matrices are normal(0, `init_std`) (Llama's `initializer_range`, 0.02), drawn by Box–Muller in
//!   f64 with the pure-Rust `libm` functions from 53-bit uniforms in (0, 1], then rounded to f32;
//! - RMSNorm weights are ones.
//!
//! [`Model::from_state`] then copies that state into libtorch parameters; [`Model::to_state`] and
//! [`Model::load_state`] convert both ways bit-exactly (f32 in, f32 out).

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor, nn};
use verify::{Layout, State, TensorSpec, TopkOverride, TopkOverrides};

use crate::error::TrainerError;

/// The named model shapes. `Tiny` is for tests, `Small` for the CPU demo, the others for GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// 918,656 parameters with the byte vocabulary: dim 128, 4 layers, 4 heads, SwiGLU 384.
    Tiny,
    /// 10,818,432 parameters with the byte vocabulary: dim 384, 6 layers, 6 heads, SwiGLU 1024.
    Small,
    /// The GPT-3 "Small" shape (dim 768, 12 layers, 12 heads, SwiGLU 2048): 85,347,072 parameters with
    /// the byte vocabulary, 134,105,856 with a 32000-token vocabulary.
    M125,
    /// The Llama 3.2 1B body (dim 2048, 16 layers, 32 heads, 8 KV heads, SwiGLU 8192): 974,194,688
    /// parameters with the byte vocabulary.
    B1,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 4] = [Preset::Tiny, Preset::Small, Preset::M125, Preset::B1];

    /// The name used on the command line and in configs: `tiny`, `small`, `125m`, `1b`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Small => "small",
            Preset::M125 => "125m",
            Preset::B1 => "1b",
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = TrainerError;

    fn from_str(s: &str) -> Result<Preset, TrainerError> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| TrainerError::InvalidConfig(format!("unknown model preset {s:?} (tiny, small, 125m, 1b)")))
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The byte-level vocabulary size, the default.
pub const BYTE_VOCAB: u32 = 256;

/// The arithmetic of the forward and backward passes. The parameters, their gradients, the DeMo
/// momentum and the loss stay f32 either way; this is a worker's local choice (its updates are
/// judged by what they do, not how they were computed), so it is not part of the run's config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32 (the default; what CPUs run fastest).
    #[default]
    F32,
    /// Mixed precision: the matrix products, the rotary embedding and attention in bf16 (tensor
    /// cores on GPUs); norms, residual stream and loss in f32.
    Bf16,
}

impl Precision {
    /// The name `--precision` takes: `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The kind the matrix products run in.
    fn matmul_kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = TrainerError;
    fn from_str(s: &str) -> Result<Precision, TrainerError> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(TrainerError::InvalidConfig(format!("precision must be f32 or bf16, not {other:?}"))),
        }
    }
}

/// The model's shape and numerics. Integers where the HF config has integers.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size (256 for byte-level tokens).
    pub vocab: u32,
    /// Hidden size (`hidden_size`).
    pub dim: u32,
    /// Decoder blocks (`num_hidden_layers`).
    pub layers: u32,
    /// Attention heads (`num_attention_heads`); `dim` must be a multiple.
    pub heads: u32,
    /// Key/value heads (`num_key_value_heads`); divides `heads`.
    pub kv_heads: u32,
    /// SwiGLU width (`intermediate_size`).
    pub hidden: u32,
    /// Longest sequence the rotary tables cover (`max_position_embeddings`).
    pub max_seq_len: u32,
    /// Rotary base (`rope_theta`).
    pub rope_theta: u32,
    /// RMSNorm epsilon (`rms_norm_eps`).
    pub norm_eps: f64,
    /// Standard deviation of the initial matrices (`initializer_range`).
    pub init_std: f64,
}

impl ModelConfig {
    /// The config of a preset, with the byte vocabulary.
    pub fn preset(preset: Preset) -> ModelConfig {
        let (dim, layers, heads, kv_heads, hidden, max_seq_len) = match preset {
            Preset::Tiny => (128, 4, 4, 4, 384, 256),
            Preset::Small => (384, 6, 6, 6, 1024, 512),
            Preset::M125 => (768, 12, 12, 12, 2048, 2048),
            Preset::B1 => (2048, 16, 32, 8, 8192, 2048),
        };
        ModelConfig {
            vocab: BYTE_VOCAB,
            dim,
            layers,
            heads,
            kv_heads,
            hidden,
            max_seq_len,
            rope_theta: 10_000,
            norm_eps: 1e-5,
            init_std: 0.02,
        }
    }

    /// The same config with another vocabulary size (for an HF tokenizer).
    pub fn with_vocab(mut self, vocab: u32) -> ModelConfig {
        self.vocab = vocab;
        self
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> u32 {
        self.dim / self.heads.max(1)
    }

    /// Checks that the shape is consistent (positive sizes, heads divide dim, kv_heads divide heads,
    /// an even head size for rotary embeddings).
    pub fn validate(&self) -> Result<(), TrainerError> {
        let bad = |m: String| Err(TrainerError::InvalidConfig(m));
        let sizes = [self.vocab, self.dim, self.layers, self.heads, self.kv_heads, self.hidden, self.max_seq_len];
        if sizes.contains(&0) || self.rope_theta == 0 {
            return bad(format!("model sizes must be positive: {self:?}"));
        }
        if !self.dim.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return bad(format!("dim {} must split into {} heads of an even size", self.dim, self.heads));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!("kv_heads {} must divide heads {}", self.kv_heads, self.heads));
        }
        if !(self.norm_eps > 0.0 && self.init_std > 0.0 && self.norm_eps.is_finite() && self.init_std.is_finite()) {
            return bad(format!("norm_eps and init_std must be positive: {self:?}"));
        }
        Ok(())
    }

    /// The parameter names and shapes, in the HF Llama layout (canonical order: sorted by name).
    pub fn layout(&self) -> Result<Layout, TrainerError> {
        self.validate()?;
        let (v, d, h) = (u64::from(self.vocab), u64::from(self.dim), u64::from(self.hidden));
        let kv = u64::from(self.kv_heads * self.head_dim());
        let spec = |name: String, shape: &[u64]| TensorSpec { name, shape: shape.to_vec() };
        let mut specs = vec![
            spec(EMBEDDING.into(), &[v, d]),
            spec("model.norm.weight".into(), &[d]),
            spec("lm_head.weight".into(), &[v, d]),
        ];
        for i in 0..self.layers {
            let p = format!("model.layers.{i}");
            specs.extend([
                spec(format!("{p}.input_layernorm.weight"), &[d]),
                spec(format!("{p}.self_attn.q_proj.weight"), &[d, d]),
                spec(format!("{p}.self_attn.k_proj.weight"), &[kv, d]),
                spec(format!("{p}.self_attn.v_proj.weight"), &[kv, d]),
                spec(format!("{p}.self_attn.o_proj.weight"), &[d, d]),
                spec(format!("{p}.post_attention_layernorm.weight"), &[d]),
                spec(format!("{p}.mlp.gate_proj.weight"), &[h, d]),
                spec(format!("{p}.mlp.up_proj.weight"), &[h, d]),
                spec(format!("{p}.mlp.down_proj.weight"), &[d, h]),
            ]);
        }
        Ok(Layout::new(specs)?)
    }
}

/// The token embedding's name in the layout.
pub const EMBEDDING: &str = "model.embed_tokens.weight";

/// Top-k of the token embedding in a run that does not set one: 64 per 64 x 64 chunk.
///
/// Each DCT chunk of the embedding mixes the rows of 64 tokens. At a low top-k the kept
/// coefficients are patterns shared by those rows, the sign step moves every token's embedding the
/// same way, and the embeddings converge until the model cannot tell its inputs apart (loss stuck at
/// the unigram entropy; docs/BENCHMARKS.md, "Why cairn stalls"). A higher top-k for this one tensor
/// keeps the rows apart. At 1-bit values it costs 104 bytes per 64 x 64 chunk per round instead of
/// 7 at top-k 4: 2.3 KB more for the byte vocabulary of `small`, about 0.9 MB more for a 50,000-token
/// vocabulary at width 768, where a lower value may be the better trade.
pub const DEFAULT_EMBEDDING_TOPK: u16 = 64;

/// The default per-tensor top-k: the embedding at [`DEFAULT_EMBEDDING_TOPK`].
pub fn default_topk_overrides() -> Vec<(String, u16)> {
    vec![(EMBEDDING.to_string(), DEFAULT_EMBEDDING_TOPK)]
}

/// Per-tensor top-k by name, as verify's overrides by position in `layout` (sorted by position; an
/// entry equal to the run's `topk` is dropped, since it overrides nothing).
pub fn topk_overrides(layout: &Layout, topk: u16, by_name: &[(String, u16)]) -> Result<TopkOverrides, TrainerError> {
    let mut list = Vec::with_capacity(by_name.len());
    for (name, k) in by_name {
        let tensor = layout
            .position(name)
            .ok_or_else(|| TrainerError::InvalidConfig(format!("top-k override for {name:?}: no such tensor")))?;
        if *k != topk {
            list.push(TopkOverride { tensor: tensor as u32, topk: *k });
        }
    }
    list.sort_by_key(|o| o.tensor);
    Ok(TopkOverrides::new(&list)?)
}

/// Whether a parameter is indexed by token: the embedding or the LM head.
pub fn is_vocab(name: &str) -> bool {
    name == EMBEDDING || name == "lm_head.weight"
}

/// Whether a parameter is an RMSNorm weight (initialised to ones, no weight decay).
pub fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight")
}

/// Domain of the per-tensor initial-value streams.
const INIT_CONTEXT: &str = "cairn init v1";

/// The genesis state of `config` for `seed` (see the module docs): a pure function of both.
pub fn init_state(config: &ModelConfig, seed: u64) -> Result<State, TrainerError> {
    let layout = config.layout()?;
    let data: Vec<Vec<f32>> = layout
        .tensors()
        .par_iter()
        .map(|spec| {
            // Layout::new bounds every tensor far below usize::MAX elements on 64-bit targets.
            let n = spec.elements() as usize;
            if is_norm(&spec.name) { vec![1.0f32; n] } else { normal_values(seed, &spec.name, n, config.init_std) }
        })
        .collect();
    Ok(State::from_parts(layout, data)?)
}

/// `n` values of normal(0, std) from the stream of tensor `name`.
fn normal_values(seed: u64, name: &str, n: usize, std: f64) -> Vec<f32> {
    let mut key_material = Vec::with_capacity(8 + name.len());
    key_material.extend_from_slice(&seed.to_le_bytes());
    key_material.extend_from_slice(name.as_bytes());
    let mut rng = ChaCha8Rng::from_seed(blake3::derive_key(INIT_CONTEXT, &key_material));
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (z0, z1) = box_muller(unit_open_closed(rng.next_u64()), unit_open_closed(rng.next_u64()));
        out.push((std * z0) as f32);
        out.push((std * z1) as f32);
    }
    out.truncate(n);
    out
}

/// The top 53 bits of `x` as a uniform value in (0, 1] (never 0, so its log is finite).
fn unit_open_closed(x: u64) -> f64 {
    ((x >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Two independent standard normals from two uniforms in (0, 1], with the portable `libm`.
fn box_muller(u1: f64, u2: f64) -> (f64, f64) {
    let r = libm::sqrt(-2.0 * libm::log(u1));
    let theta = 2.0 * std::f64::consts::PI * u2;
    (r * libm::cos(theta), r * libm::sin(theta))
}

/// One decoder block's parameters (shallow handles on the var store's tensors).
#[derive(Debug)]
struct Block {
    input_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The decoder on one device: its parameters live in a [`nn::VarStore`] (so tch's optimisers can
/// drive them), named and shaped as [`ModelConfig::layout`] says.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    layout: Layout,
    vs: nn::VarStore,
    /// Every parameter, in layout order.
    params: Vec<Tensor>,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Tensor,
    /// Rotary tables `[max_seq_len, head_dim]` (f32, on the device).
    cos: Tensor,
    sin: Tensor,
    precision: Precision,
}

impl Model {
    /// The model initialised from `seed` ([`init_state`]) on `device`.
    pub fn new(config: &ModelConfig, seed: u64, device: Device) -> Result<Model, TrainerError> {
        Model::from_state(config, &init_state(config, seed)?, device)
    }

    /// A model holding `state` (whose layout must be `config`'s) on `device`. RMSNorm weights go in
    /// optimiser group 1 (no weight decay), everything else in group 0.
    pub fn from_state(config: &ModelConfig, state: &State, device: Device) -> Result<Model, TrainerError> {
        let layout = config.layout()?;
        check_layout(&layout, state.layout())?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut params = Vec::with_capacity(layout.tensors().len());
        for (spec, values) in layout.tensors().iter().zip(state.data()) {
            let mut parts: Vec<&str> = spec.name.split('.').collect();
            let leaf = parts.pop().unwrap_or_default();
            let group = usize::from(is_norm(&spec.name));
            let path = parts.iter().fold(root.set_group(group), |p, part| p.sub(part));
            let t = host_tensor(values, &spec.shape)?.f_to_device(device)?;
            params.push(path.add(leaf, t, true));
        }
        let get = |name: &str| -> Result<Tensor, TrainerError> {
            layout
                .position(name)
                .map(|i| params[i].shallow_clone())
                .ok_or_else(|| TrainerError::InvalidConfig(format!("layout has no tensor {name}")))
        };
        let mut blocks = Vec::with_capacity(config.layers as usize);
        for i in 0..config.layers {
            let p = format!("model.layers.{i}");
            blocks.push(Block {
                input_norm: get(&format!("{p}.input_layernorm.weight"))?,
                q: get(&format!("{p}.self_attn.q_proj.weight"))?,
                k: get(&format!("{p}.self_attn.k_proj.weight"))?,
                v: get(&format!("{p}.self_attn.v_proj.weight"))?,
                o: get(&format!("{p}.self_attn.o_proj.weight"))?,
                post_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
                gate: get(&format!("{p}.mlp.gate_proj.weight"))?,
                up: get(&format!("{p}.mlp.up_proj.weight"))?,
                down: get(&format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let (cos, sin) = rotary_tables(config, device)?;
        Ok(Model {
            embed: get(EMBEDDING)?,
            norm: get("model.norm.weight")?,
            lm_head: get("lm_head.weight")?,
            config: config.clone(),
            layout,
            vs,
            params,
            blocks,
            cos,
            sin,
            precision: Precision::F32,
        })
    }

    /// The same model computing its passes in `precision` (f32 unless set).
    pub fn with_precision(mut self, precision: Precision) -> Model {
        self.precision = precision;
        self
    }

    /// The arithmetic of the passes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `x · wᵀ` in the precision's matmul kind (a differentiable cast, so gradients reach the f32
    /// parameter as f32).
    fn linear(&self, x: &Tensor, w: &Tensor) -> Result<Tensor, TrainerError> {
        let kind = self.precision.matmul_kind();
        Ok(x.f_to_kind(kind)?.f_linear::<Tensor>(&w.f_to_kind(kind)?, None)?)
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameter layout (canonical order).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The var store (for building a tch optimiser over the parameters).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The parameters in layout order (shallow handles: gradients are read from them).
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Number of parameters.
    pub fn parameter_count(&self) -> u64 {
        self.layout.elements()
    }

    /// The current parameters as a verify state (copied to the host as f32, in layout order).
    pub fn to_state(&self) -> Result<State, TrainerError> {
        let data = self
            .params
            .iter()
            .map(|p| {
                let flat = p.f_detach()?.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
                Ok(Vec::<f32>::try_from(&flat.f_reshape([-1])?)?)
            })
            .collect::<Result<Vec<_>, TrainerError>>()?;
        Ok(State::from_parts(self.layout.clone(), data)?)
    }

    /// Overwrites every parameter with `state` (same layout), bit for bit. Gradients are untouched.
    pub fn load_state(&mut self, state: &State) -> Result<(), TrainerError> {
        check_layout(&self.layout, state.layout())?;
        let device = self.device();
        tch::no_grad(|| {
            for ((p, spec), values) in self.params.iter_mut().zip(self.layout.tensors()).zip(state.data()) {
                let src = host_tensor(values, &spec.shape)?.f_to_device(device)?;
                p.f_copy_(&src)?;
            }
            Ok(())
        })
    }

    /// Logits `[B, T, vocab]` for tokens `[B, T]` (integer kind, values below `vocab`, T at most
    /// `max_seq_len`).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor, TrainerError> {
        let size = tokens.size();
        let (b, t) = match size[..] {
            [b, t] => (b, t),
            _ => return Err(TrainerError::InvalidConfig(format!("tokens must be [batch, time], got {size:?}"))),
        };
        if t > i64::from(self.config.max_seq_len) || t < 1 {
            return Err(TrainerError::InvalidConfig(format!(
                "sequence of {t} tokens, the model takes 1 to {}",
                self.config.max_seq_len
            )));
        }
        let c = &self.config;
        let (heads, kv_heads, hd) = (i64::from(c.heads), i64::from(c.kv_heads), i64::from(c.head_dim()));
        let tokens = tokens.f_to_device(self.device())?.f_to_kind(Kind::Int64)?;
        // Out-of-range ids would fail inside the embedding (a device-side assert on CUDA): refuse first.
        let (lo, hi) = (i64::try_from(tokens.f_min()?)?, i64::try_from(tokens.f_max()?)?);
        if lo < 0 || hi >= i64::from(c.vocab) {
            return Err(TrainerError::InvalidConfig(format!(
                "token ids {lo}..={hi} outside the vocabulary of {}",
                c.vocab
            )));
        }
        // The rotation runs in the matmul kind (HF's convention under bf16 too).
        let kind = self.precision.matmul_kind();
        let cos = self.cos.f_narrow(0, 0, t)?.f_to_kind(kind)?;
        let sin = self.sin.f_narrow(0, 0, t)?.f_to_kind(kind)?;
        let mut x = Tensor::f_embedding(&self.embed, &tokens, -1, false, false)?;
        for blk in &self.blocks {
            // Normalised activations are cast once for the three (then two) products that read them.
            let h = rms_norm(&x, &blk.input_norm, c.norm_eps)?.f_to_kind(kind)?;
            let q = self.linear(&h, &blk.q)?.f_view([b, t, heads, hd])?.f_transpose(1, 2)?;
            let k = self.linear(&h, &blk.k)?.f_view([b, t, kv_heads, hd])?.f_transpose(1, 2)?;
            let v = self.linear(&h, &blk.v)?.f_view([b, t, kv_heads, hd])?.f_transpose(1, 2)?;
            let q = rotate(&q, &cos, &sin)?;
            let mut k = rotate(&k, &cos, &sin)?;
            let mut v = v;
            if kv_heads < heads {
                k = k.f_repeat_interleave_self_int(heads / kv_heads, 1, None)?;
                v = v.f_repeat_interleave_self_int(heads / kv_heads, 1, None)?;
            }
            let a = Tensor::f_scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, false)?;
            let a = a.f_transpose(1, 2)?.f_contiguous()?.f_view([b, t, heads * hd])?;
            x = x.f_add(&self.linear(&a, &blk.o)?)?;
            let h = rms_norm(&x, &blk.post_norm, c.norm_eps)?.f_to_kind(kind)?;
            let gate = self.linear(&h, &blk.gate)?.f_silu()?;
            let up = self.linear(&h, &blk.up)?;
            x = x.f_add(&self.linear(&gate.f_mul(&up)?, &blk.down)?)?;
        }
        let x = rms_norm(&x, &self.norm, c.norm_eps)?;
        Ok(self.linear(&x, &self.lm_head)?.f_to_kind(Kind::Float)?)
    }

    /// Mean next-token cross-entropy (nats) over `sequences` `[B, T + 1]`: the first T tokens are the
    /// input, the last T the targets.
    pub fn loss(&self, sequences: &Tensor) -> Result<Tensor, TrainerError> {
        let size = sequences.size();
        let len = match size[..] {
            [_, len] if len >= 2 => len,
            _ => return Err(TrainerError::InvalidConfig(format!("sequences must be [batch, T + 1], got {size:?}"))),
        };
        let sequences = sequences.f_to_device(self.device())?.f_to_kind(Kind::Int64)?;
        let inputs = sequences.f_narrow(1, 0, len - 1)?;
        let targets = sequences.f_narrow(1, 1, len - 1)?.f_reshape([-1])?;
        let logits = self.forward(&inputs)?;
        let logits = logits.f_reshape([-1, i64::from(self.config.vocab)])?;
        Ok(logits.f_cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Mean, -100, 0.0)?)
    }
}

/// An error unless `got` is `want`.
fn check_layout(want: &Layout, got: &Layout) -> Result<(), TrainerError> {
    if want == got {
        return Ok(());
    }
    let (w, g) = (want.tensors(), got.tensors());
    let index = w.iter().zip(g).position(|(a, b)| a != b).unwrap_or(w.len().min(g.len()));
    let name = w.get(index).or(g.get(index)).map(|s| s.name.clone()).unwrap_or_default();
    Err(TrainerError::Shape {
        index,
        name,
        problem: format!(
            "state layout ({} tensors, {} parameters) is not the model's ({} tensors, {} parameters)",
            g.len(),
            got.elements(),
            w.len(),
            want.elements()
        ),
    })
}

/// A host f32 tensor of `shape` holding `values`.
fn host_tensor(values: &[f32], shape: &[u64]) -> Result<Tensor, TrainerError> {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_slice(values)?.f_reshape(dims)?)
}

/// HF Llama's RMSNorm: `w ⊙ x / sqrt(mean(x²) + eps)` over the last dimension, in f32.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor, TrainerError> {
    let x = x.f_to_kind(Kind::Float)?;
    let var = x.f_pow_tensor_scalar(2)?.f_mean_dim(-1, true, None::<Kind>)?;
    Ok(weight.f_mul(&x.f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?)?)
}

/// Rotary embedding, rotate-half convention: `x·cos + rotate_half(x)·sin` on `[B, H, T, hd]`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TrainerError> {
    let half = x.size()[3] / 2;
    let x1 = x.f_narrow(3, 0, half)?;
    let x2 = x.f_narrow(3, half, half)?;
    let rotated = Tensor::f_cat(&[x2.f_neg()?, x1], 3)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

/// cos and sin tables `[max_seq_len, head_dim]`: position p, frequency `θ^(-2i/hd)` repeated for both
/// halves (HF's `cat(freqs, freqs)`), computed in f64 and rounded to f32.
fn rotary_tables(config: &ModelConfig, device: Device) -> Result<(Tensor, Tensor), TrainerError> {
    let hd = config.head_dim() as usize;
    let len = config.max_seq_len as usize;
    let theta = f64::from(config.rope_theta);
    let inv_freq: Vec<f64> = (0..hd / 2).map(|i| 1.0 / libm::pow(theta, (2 * i) as f64 / hd as f64)).collect();
    let mut cos = Vec::with_capacity(len * hd);
    let mut sin = Vec::with_capacity(len * hd);
    for p in 0..len {
        for _ in 0..2 {
            for f in &inv_freq {
                let angle = p as f64 * f;
                cos.push(libm::cos(angle) as f32);
                sin.push(libm::sin(angle) as f32);
            }
        }
    }
    let shape = [len as u64, hd as u64];
    Ok((host_tensor(&cos, &shape)?.f_to_device(device)?, host_tensor(&sin, &shape)?.f_to_device(device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The genesis state hash of `tiny` with seed 0. It changes only if the layout, the init rule or
    /// one of its pure-Rust dependencies (blake3, ChaCha8, libm) changes: a deliberate break.
    const TINY_SEED0_STATE_HASH: &str = "47eab789e8f47ef1cb8a2afb95ba05e0de86277836168b4b446f632152ad09b8";

    fn tiny() -> ModelConfig {
        ModelConfig::preset(Preset::Tiny)
    }

    #[test]
    fn layout_uses_hf_llama_names() {
        let layout = tiny().layout().unwrap();
        let names: Vec<&str> = layout.tensors().iter().map(|t| t.name.as_str()).collect();
        for name in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.3.self_attn.k_proj.weight",
            "model.layers.3.self_attn.v_proj.weight",
            "model.layers.3.self_attn.o_proj.weight",
            "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.layers.2.input_layernorm.weight",
            "model.layers.2.post_attention_layernorm.weight",
            "model.norm.weight",
            "lm_head.weight",
        ] {
            assert!(names.contains(&name), "{name} missing");
        }
        assert_eq!(names.len(), 3 + 4 * 9);
        let down = &layout.tensors()[layout.position("model.layers.0.mlp.down_proj.weight").unwrap()];
        assert_eq!(down.shape, [128, 384]);
        let gqa = ModelConfig::preset(Preset::B1).layout().unwrap();
        let k = &gqa.tensors()[gqa.position("model.layers.0.self_attn.k_proj.weight").unwrap()];
        assert_eq!(k.shape, [512, 2048]);
    }

    #[test]
    fn preset_parameter_counts() {
        let counts: Vec<u64> =
            Preset::ALL.iter().map(|&p| ModelConfig::preset(p).layout().unwrap().elements()).collect();
        assert_eq!(counts, [918_656, 10_818_432, 85_347_072, 974_194_688]);
        assert_eq!(ModelConfig::preset(Preset::M125).with_vocab(32_000).layout().unwrap().elements(), 134_105_856);
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
        }
        assert!(matches!("2b".parse::<Preset>(), Err(TrainerError::InvalidConfig(_))));
    }

    #[test]
    fn init_hash_is_pinned_and_reproducible() {
        tch::set_num_threads(1);
        let a = init_state(&tiny(), 0).unwrap();
        let b = Model::new(&tiny(), 0, Device::Cpu).unwrap().to_state().unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().to_string(), TINY_SEED0_STATE_HASH);
        assert_ne!(init_state(&tiny(), 1).unwrap().hash(), a.hash());
        let q = a.get("model.layers.0.self_attn.q_proj.weight").unwrap();
        let mean = q.iter().map(|&v| f64::from(v)).sum::<f64>() / q.len() as f64;
        let std = (q.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / q.len() as f64).sqrt();
        assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 5e-4, "mean {mean}, std {std}");
        assert!(a.get("model.norm.weight").unwrap().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn state_round_trips_without_drift() {
        tch::set_num_threads(1);
        let config = tiny();
        let mut model = Model::new(&config, 0, Device::Cpu).unwrap();
        let other = init_state(&config, 7).unwrap();
        model.load_state(&other).unwrap();
        assert_eq!(model.to_state().unwrap(), other);
        let small = ModelConfig::preset(Preset::Small).layout().unwrap();
        assert!(matches!(model.load_state(&State::zeros(small)), Err(TrainerError::Shape { .. })));
    }

    #[test]
    fn forward_shapes_and_causality() {
        tch::set_num_threads(1);
        let config = tiny();
        let model = Model::new(&config, 0, Device::Cpu).unwrap();
        let tokens = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6, 250, 255]).reshape([2, 4]);
        let logits = model.forward(&tokens).unwrap();
        assert_eq!(logits.size(), [2, 4, 256]);
        // Changing the last token must not change the logits of earlier positions.
        let changed = Tensor::from_slice(&[1i64, 2, 3, 9, 5, 6, 250, 0]).reshape([2, 4]);
        let logits2 = model.forward(&changed).unwrap();
        let early = logits.narrow(1, 0, 3);
        let early2 = logits2.narrow(1, 0, 3);
        assert!(early.allclose(&early2, 1e-6, 1e-6, false));
        assert!(!logits.narrow(1, 3, 1).allclose(&logits2.narrow(1, 3, 1), 1e-6, 1e-6, false));
        // At initialisation the loss is close to ln(vocab).
        let seqs = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6, 7, 8, 9, 10]).reshape([2, 5]);
        let loss = f64::try_from(model.loss(&seqs).unwrap()).unwrap();
        assert!((loss - 256f64.ln()).abs() < 0.25, "initial loss {loss}");
        let out_of_vocab = Tensor::from_slice(&[1i64, 256]).reshape([1, 2]);
        assert!(matches!(model.forward(&out_of_vocab), Err(TrainerError::InvalidConfig(_))));
        let too_long = Tensor::zeros([1, 257], (Kind::Int64, Device::Cpu));
        assert!(matches!(model.forward(&too_long), Err(TrainerError::InvalidConfig(_))));
    }

    #[test]
    fn rotary_scores_depend_only_on_relative_position() {
        let config = tiny();
        let (cos, sin) = rotary_tables(&config, Device::Cpu).unwrap();
        let (t, hd) = (16, i64::from(config.head_dim()));
        let (cos, sin) = (cos.narrow(0, 0, t), sin.narrow(0, 0, t));
        let values: Vec<f32> = normal_values(1, "q", 2 * hd as usize, 1.0);
        let q = Tensor::from_slice(&values[..hd as usize]).reshape([1, 1, 1, hd]).expand([1, 1, t, hd], false);
        let k = Tensor::from_slice(&values[hd as usize..]).reshape([1, 1, 1, hd]).expand([1, 1, t, hd], false);
        let scores = rotate(&q, &cos, &sin).unwrap().matmul(&rotate(&k, &cos, &sin).unwrap().transpose(2, 3));
        let at = |m: i64, n: i64| f64::try_from(scores.get(0).get(0).get(m).get(n)).unwrap();
        for (m, n) in [(3, 1), (5, 5), (2, 9)] {
            assert!((at(m, n) - at(m + 6, n + 6)).abs() < 1e-4, "({m}, {n})");
        }
        assert!((at(3, 1) - at(5, 1)).abs() > 1e-3);
        // Position 0 is the identity.
        assert!(rotate(&q, &cos, &sin).unwrap().get(0).get(0).get(0).allclose(
            &q.get(0).get(0).get(0),
            1e-6,
            1e-6,
            false
        ));
    }

    #[test]
    fn bf16_passes_track_f32_and_leave_f32_gradients() {
        tch::set_num_threads(1);
        let config = ModelConfig { layers: 2, ..tiny() };
        let f32_model = Model::new(&config, 4, Device::Cpu).unwrap();
        let bf16_model = Model::new(&config, 4, Device::Cpu).unwrap().with_precision(Precision::Bf16);
        assert_eq!(bf16_model.precision(), Precision::Bf16);
        let tokens: Vec<i64> = (0..2 * 33).map(|i| (i * 37 % 251) as i64).collect();
        let batch = Tensor::from_slice(&tokens).reshape([2, 33]);
        let exact = f64::try_from(f32_model.loss(&batch).unwrap()).unwrap();
        let loss = bf16_model.loss(&batch).unwrap();
        assert_eq!(loss.kind(), Kind::Float);
        let mixed = f64::try_from(&loss).unwrap();
        // bf16 keeps 8 bits of mantissa: the loss moves, but by far less than training moves it.
        assert!((mixed - exact).abs() < 0.02, "bf16 {mixed} vs f32 {exact}");
        assert_ne!(mixed, exact, "the bf16 path must actually compute in bf16");
        loss.backward();
        for p in bf16_model.params() {
            let g = p.grad();
            assert!(g.defined() && g.kind() == Kind::Float, "an f32 gradient for every parameter");
        }
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!(Precision::default().name().parse::<Precision>().unwrap(), Precision::F32);
        assert!("fp8".parse::<Precision>().is_err());
    }

    #[test]
    fn grouped_query_attention_runs() {
        tch::set_num_threads(1);
        let config = ModelConfig { kv_heads: 2, layers: 1, ..tiny() };
        let model = Model::new(&config, 3, Device::Cpu).unwrap();
        let tokens = Tensor::from_slice(&[7i64, 8, 9]).reshape([1, 3]);
        assert_eq!(model.forward(&tokens).unwrap().size(), [1, 3, 256]);
        assert!(ModelConfig { kv_heads: 3, ..tiny() }.validate().is_err());
    }
}
