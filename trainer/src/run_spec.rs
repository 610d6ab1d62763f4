//! The run specification: `run.toml` as an operator writes it, and the part of it that travels in
//! the Genesis entry.
//!
//! ```text
//!   run.toml ──RunSpec::parse──▶ RunSpec ──genesis_parts──▶ RunConfig (consensus: layout, DeMo,
//!                                                          │    schedule, round and exclusion rules)
//!                                                          ├─▶ extra = TrainSpec as JSON (model
//!                                                          │    preset, seed, data, tokens per round,
//!                                                          │    deadlines, snapshot interval)
//!                                                          └─▶ roster + quorum (the Genesis entry)
//! ```
//!
//! Workers and validators need nothing but the store URL and their key: they read the Genesis
//! entry, decode the RunConfig and the [`TrainSpec`] in its `extra` bytes, and know the run. The
//! TOML is documented field by field in docs/RUN.md and in `RunSpec::EXAMPLE`.

use std::collections::BTreeMap;
use std::str::FromStr;

use ledger::{Member, PublicKey, Role};
use serde::{Deserialize, Serialize};
use verify::config::{ExclusionRules, RoundRules};
use verify::{Compression, Hyper, NormClip, Ratio, RunConfig, Schedule, ValueEncoding};

use crate::TrainerError;
use crate::data::{
    DEFAULT_TEXT_COLUMN, Dataset, MAX_TEXT_BYTES, MarkovSpec, Tokenizer, is_parquet_source, load_parquet, load_text,
    sequences_for_tokens,
};
use crate::model::{BYTE_VOCAB, ModelConfig, Preset, topk_overrides};
use crate::score::ScoreConfig;

/// Denominator of the exact ratios that learning rates and weight decay become.
const RATIO_DEN: u64 = 1_000_000_000;
/// Largest run.toml read.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;
/// The version of the [`TrainSpec`] JSON in the Genesis `extra` bytes.
pub const TRAIN_SPEC_VERSION: u32 = 1;
/// The training spec version of a run with local steps (`train.local_steps > 1`).
pub const LOCAL_STEPS_SPEC_VERSION: u32 = 2;
/// The training spec version of a run whose local AdamW has its own schedule (`train.inner_min_lr`).
pub const INNER_SCHEDULE_SPEC_VERSION: u32 = 3;
/// Most local steps per round.
pub const MAX_LOCAL_STEPS: u32 = 64;

fn one_step() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_zero_u64(x: &u64) -> bool {
    *x == 0
}

/// `run.toml`, parsed. See docs/RUN.md.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// `[run]`: model, seed, length.
    pub run: RunSection,
    /// `[data]`: where tokens come from.
    #[serde(default)]
    pub data: DataSection,
    /// `[train]`: each worker's local work per round.
    #[serde(default)]
    pub train: TrainSection,
    /// `[demo]`: DeMo compression.
    #[serde(default)]
    pub demo: DemoSection,
    /// `[optimizer]`: the learning-rate schedule of the aggregated sign step.
    #[serde(default)]
    pub optimizer: OptimizerSection,
    /// `[rounds]`: when rounds close.
    #[serde(default)]
    pub rounds: RoundsSection,
    /// `[validation]`: verdicts and exclusion.
    #[serde(default)]
    pub validation: ValidationSection,
    /// `[roster]`: the members at genesis.
    pub roster: RosterSection,
}

/// `[run]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// A name for humans (not part of consensus).
    #[serde(default)]
    pub name: String,
    /// Model preset: tiny, small, 125m, 1b.
    pub preset: String,
    /// The run seed: model initialisation, synthetic corpus, data assignment.
    #[serde(default)]
    pub seed: u64,
    /// Rounds in the run; workers and validators stop after the last one closes (0: no end).
    #[serde(default)]
    pub total_rounds: u64,
    /// Every this many rounds the member whose attestation made the round final uploads a
    /// snapshot, and every member signs the checkpoint (0: never).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

/// `[data]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// `synthetic` (the seeded Markov corpus with a known loss floor), or a text file's path or
    /// store URL (byte-level tokens).
    pub source: String,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Held-out share of a text corpus.
    pub eval_fraction: f64,
    /// Held-out sequences of the synthetic corpus.
    pub eval_sequences: u64,
    /// The text column of a Parquet source.
    pub text_column: String,
    /// An HF `tokenizer.json` (a URL every member can read); byte-level when absent.
    pub tokenizer: Option<String>,
}

impl Default for DataSection {
    fn default() -> DataSection {
        DataSection {
            source: "synthetic".into(),
            seq_len: 64,
            eval_fraction: 0.05,
            eval_sequences: 256,
            text_column: DEFAULT_TEXT_COLUMN.into(),
            tokenizer: None,
        }
    }
}

/// `[train]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Tokens each worker trains on per round (rounded up to whole sequences).
    pub tokens_per_round: u64,
    /// Sequences per forward/backward pass (gradient accumulation over the rest).
    pub micro_batch: usize,
    /// Gradient norm clipping before the momentum (0: off).
    pub clip_norm: f64,
    /// DeMo momentum decay (with local steps: the error feedback's decay per round).
    pub momentum_decay: f64,
    /// AdamW steps a worker takes on its own copy per round, each on an equal part of its
    /// assignment, before it encodes how far it moved (1: one gradient, no local optimiser).
    pub local_steps: u32,
    /// Peak rate of the local AdamW (with local_steps > 1). Without `inner_min_lr` it follows the
    /// shape of the optimizer schedule: round r's rate is inner_lr * lr(r) / lr.
    pub inner_lr: f64,
    /// With it, the local AdamW has its own schedule: a linear warm-up over `inner_warmup_rounds`,
    /// inner_lr until `inner_decay_start` (0: a cosine from the end of the warm-up), then down to
    /// this rate at run.total_rounds (as SparseLoCo, whose outer rate stays constant).
    pub inner_min_lr: Option<f64>,
    /// Warm-up rounds of the local AdamW's own schedule.
    pub inner_warmup_rounds: u64,
    /// Round from which the local AdamW's own schedule decays linearly (0: cosine).
    pub inner_decay_start: u64,
}

impl Default for TrainSection {
    fn default() -> TrainSection {
        TrainSection {
            tokens_per_round: 1024,
            micro_batch: 8,
            clip_norm: 1.0,
            momentum_decay: crate::demo::DEFAULT_MOMENTUM_DECAY,
            local_steps: 1,
            inner_lr: 0.0,
            inner_min_lr: None,
            inner_warmup_rounds: 0,
            inner_decay_start: 0,
        }
    }
}

/// `[demo]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoSection {
    /// DCT chunk size.
    pub chunk: u16,
    /// Coefficients kept per chunk.
    pub topk: u16,
    /// Value encoding: sign (1 bit), int8, bf16, two-bit.
    pub values: String,
    /// The aggregation's step: sign (DeMo's) or linear (the mean update times the rate; needs
    /// int8, bf16 or two-bit values).
    pub step_rule: String,
    /// What each chunk's top-k is taken of: dct (its DCT coefficients, DeMo's) or identity (its
    /// entries, SparseLoCo's).
    pub transform: String,
    /// How each chunk's kept indices are written: fixed (12 or 16 bits each) or elias-fano (about
    /// 2 + log2(coefficients / top-k) bits each, so more coefficients fit the same bytes).
    pub index_coding: String,
    /// Top-k of particular tensors, by name (`[demo.topk_by_tensor]`); left out: the embedding at
    /// [`crate::model::DEFAULT_EMBEDDING_TOPK`]; an empty table: none.
    pub topk_by_tensor: Option<BTreeMap<String, u16>>,
}

impl Default for DemoSection {
    fn default() -> DemoSection {
        DemoSection {
            chunk: 64,
            topk: 4,
            values: "sign".into(),
            step_rule: "sign".into(),
            transform: "dct".into(),
            index_coding: "elias-fano".into(),
            topk_by_tensor: None,
        }
    }
}

impl DemoSection {
    /// The per-tensor top-k this section sets, by name.
    pub fn topk_by_name(&self) -> Vec<(String, u16)> {
        match &self.topk_by_tensor {
            None => crate::model::default_topk_overrides(),
            Some(map) => map.iter().map(|(name, k)| (name.clone(), *k)).collect(),
        }
    }
}

/// `[optimizer]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSection {
    /// Peak learning rate of the sign step.
    pub lr: f64,
    /// Rate at the end of the cosine decay (the peak: no decay).
    pub min_lr: Option<f64>,
    /// Rounds of linear warm-up.
    pub warmup_rounds: u64,
    /// Round at which the decay ends (0: the run's total_rounds).
    pub decay_rounds: u64,
    /// 0: cosine decay from the end of warm-up. Otherwise the peak holds until this round, then the
    /// rate falls linearly to `min_lr` at `decay_rounds` (warm-up, stable, decay).
    pub decay_start: u64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Median norm clipping of updates: median or off.
    pub clip: String,
}

impl Default for OptimizerSection {
    fn default() -> OptimizerSection {
        OptimizerSection {
            lr: 3e-3,
            min_lr: None,
            warmup_rounds: 0,
            decay_rounds: 0,
            decay_start: 0,
            weight_decay: 0.0,
            clip: "median".into(),
        }
    }
}

/// `[rounds]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundsSection {
    /// Contributions an honest member waits for before it votes to close a round.
    pub min_contributions: u32,
    /// Most contributions counted per round.
    pub max_contributions: u32,
    /// Seconds after a round opens before it may close with fewer than every active worker.
    pub deadline_secs: u64,
    /// Extra seconds an honest member waits for validators' verdicts before it votes to close.
    pub verdict_wait_secs: u64,
    /// The ledger's window of rounds (0: none): an entry naming a round more than this many
    /// rounds from the open one is void, so participants forget older rounds and their memory
    /// stays flat however long the run (docs/LEDGER.md, "Validity rule", check 6, and "Long
    /// runs"). At least `run.snapshot_every` when not 0.
    pub window: u32,
    /// Whether rounds overlap: a worker trains round r + 1 on the state it has while round r
    /// closes, and its contribution counts on either base (docs/FORMAT.md, "Round rule"). In
    /// the config, so consensus.
    pub overlap: bool,
}

impl Default for RoundsSection {
    fn default() -> RoundsSection {
        RoundsSection {
            min_contributions: 1,
            max_contributions: 64,
            deadline_secs: 60,
            verdict_wait_secs: 30,
            window: DEFAULT_WINDOW,
            overlap: false,
        }
    }
}

/// `[validation]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationSection {
    /// A verdict below this score (milli-nats of loss improvement) fails a contribution.
    pub min_score: i64,
    /// Contributed rounds in a row whose contribution failed, after which a worker is excluded
    /// (0: never).
    pub max_failures: u32,
    /// The relative threshold, in percent (0: none): a verdict also fails a contribution when its
    /// score is below this share of the lower median of its validator's scores on the round.
    pub min_pct_of_median: u8,
    /// Assigned sequences a validator re-evaluates per contribution.
    pub assigned_sequences: usize,
    /// Held-out sequences a validator evaluates per contribution.
    pub eval_sequences: usize,
}

impl Default for ValidationSection {
    fn default() -> ValidationSection {
        ValidationSection {
            min_score: -20,
            max_failures: 3,
            min_pct_of_median: 25,
            assigned_sequences: 16,
            eval_sequences: 16,
        }
    }
}

/// `[roster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterSection {
    /// Admin signatures a roster change needs.
    #[serde(default = "one")]
    pub quorum: u16,
    /// The run's quorum of organisations (close a round, attest its result, fail a contribution,
    /// sign a checkpoint audits rely on); default: a majority of the roster's organisations.
    #[serde(default)]
    pub org_quorum: Option<u16>,
    /// `[[roster.member]]`: the members.
    pub member: Vec<MemberSpec>,
}

/// `[[roster.member]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// Public key, 64 hex digits (what `cairn keygen` prints).
    pub key: String,
    /// The member's organisation.
    pub organisation: String,
    /// admin, worker or validator.
    pub role: String,
}

/// The window of new runs: long enough that a snapshot, a verdict or an evaluation that is an hour
/// late at one-minute rounds still counts, short enough that a follower of 1,000 workers holds
/// tens of megabytes (docs/BENCHMARKS.md, "Long runs").
pub const DEFAULT_WINDOW: u32 = 64;

fn default_snapshot_every() -> u64 {
    10
}

fn one() -> u16 {
    1
}

/// What workers and validators need beyond consensus, carried in the Genesis entry's config
/// `extra` bytes as JSON. Not consensus: it changes what honest participants compute, never which
/// entries count or how updates combine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// [`TRAIN_SPEC_VERSION`].
    pub version: u32,
    /// Model preset name.
    pub preset: String,
    /// The run seed.
    pub seed: u64,
    /// Rounds in the run (0: no end).
    pub total_rounds: u64,
    /// Snapshot interval in rounds (0: never).
    pub snapshot_every: u64,
    /// `[data]`.
    pub data_source: String,
    /// The blake3 of the tokens `cairn genesis` loaded from `data_source` ([`Dataset::tokens_blake3`]);
    /// members refuse other tokens. `None` for the synthetic corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_blake3: Option<String>,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Held-out share of a text corpus.
    pub eval_fraction: f64,
    /// Held-out sequences of the synthetic corpus.
    pub eval_sequences: u64,
    /// The text column of a Parquet source.
    pub text_column: String,
    /// An HF `tokenizer.json` (a URL), or none for byte-level tokens.
    pub tokenizer: Option<String>,
    /// The vocabulary size (256 for bytes; the tokenizer's, checked when it is loaded).
    pub vocab: u32,
    /// Tokens per worker per round.
    pub tokens_per_round: u64,
    /// Sequences per pass.
    pub micro_batch: usize,
    /// Gradient clipping (0: off).
    pub clip_norm: f64,
    /// DeMo momentum decay (with local steps: the error feedback's decay per round).
    pub momentum_decay: f64,
    /// Local AdamW steps per round ([`crate::local`]); 1 (and absent, in version 1) for none.
    #[serde(default = "one_step", skip_serializing_if = "is_one")]
    pub local_steps: u32,
    /// Peak rate of the local AdamW; 0 (absent) without local steps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inner_lr: f64,
    /// The end rate of the local AdamW's own schedule (version 3); absent: it follows the
    /// optimizer schedule's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_min_lr: Option<f64>,
    /// Warm-up rounds of the local AdamW's own schedule.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inner_warmup_rounds: u64,
    /// Decay start of the local AdamW's own schedule (0: cosine).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inner_decay_start: u64,
    /// Round deadline, seconds.
    pub deadline_secs: u64,
    /// Verdict wait, seconds.
    pub verdict_wait_secs: u64,
    /// Validator sequences per contribution: assigned.
    pub score_assigned_sequences: usize,
    /// Validator sequences per contribution: held out.
    pub score_eval_sequences: usize,
}

/// The initial state hash a run determines: the model of its training spec `train` (read from the
/// `extra` bytes of `config`), initialised from the spec's seed ([`crate::model::init_state`], pure
/// Rust, the same bits on every machine). Workers refuse to join, and `cairn audit` fails, a run
/// whose Genesis names another start: nobody could recompute it.
pub fn initial_state_of(config: &RunConfig, train: &TrainSpec) -> Result<verify::StateHash, TrainerError> {
    let model = train.model_config()?;
    if model.layout()? != config.layout {
        return Err(TrainerError::InvalidConfig(format!(
            "the genesis layout is not the layout of preset {}",
            train.preset
        )));
    }
    Ok(crate::model::init_state(&model, train.seed)?.hash())
}

impl TrainSpec {
    /// Reads the spec from a Genesis config's `extra` bytes.
    pub fn from_extra(extra: &[u8]) -> Result<TrainSpec, TrainerError> {
        let spec: TrainSpec = serde_json::from_slice(extra)
            .map_err(|e| TrainerError::InvalidConfig(format!("the genesis training spec does not parse: {e}")))?;
        // Version 2 is version 1 with local steps, version 3 adds the local AdamW's own schedule: a
        // build that predates them refuses such a run instead of training it another way.
        let want = spec.version_needed();
        if spec.version != want {
            return Err(TrainerError::InvalidConfig(format!(
                "training spec version {} with local_steps {} and inner_min_lr {:?} (this build reads version \
                 {TRAIN_SPEC_VERSION} without local steps, {LOCAL_STEPS_SPEC_VERSION} with them and \
                 {INNER_SCHEDULE_SPEC_VERSION} with their own schedule)",
                spec.version, spec.local_steps, spec.inner_min_lr
            )));
        }
        spec.validate()?;
        Ok(spec)
    }

    /// The model preset.
    pub fn preset(&self) -> Result<Preset, TrainerError> {
        Preset::from_str(&self.preset)
    }

    /// The model shape (with the run's vocabulary).
    pub fn model_config(&self) -> Result<ModelConfig, TrainerError> {
        let config = ModelConfig::preset(self.preset()?).with_vocab(self.vocab);
        if self.seq_len as u64 > u64::from(config.max_seq_len) {
            return Err(TrainerError::InvalidConfig(format!(
                "seq_len {} is longer than the model's {}",
                self.seq_len, config.max_seq_len
            )));
        }
        Ok(config)
    }

    /// Sequences per worker per round.
    pub fn sequences_per_round(&self) -> usize {
        sequences_for_tokens(self.tokens_per_round, self.seq_len)
    }

    /// How much a validator evaluates per contribution.
    pub fn score_config(&self) -> ScoreConfig {
        ScoreConfig {
            assigned_sequences: self.score_assigned_sequences.min(self.sequences_per_round()).max(1),
            eval_sequences: self.score_eval_sequences.max(1),
            micro_batch: self.micro_batch.max(1),
            // the validator sets the round's share from the roster (validator::validate)
            linear_share: 1,
            held_out_against: false,
        }
    }

    /// The run's tokenizer: byte-level, or the `tokenizer.json` named, whose vocabulary must be
    /// the run's.
    pub async fn tokenizer(&self) -> Result<Tokenizer, TrainerError> {
        let tokenizer = match &self.tokenizer {
            None => Tokenizer::Bytes,
            Some(source) => Tokenizer::load(source).await?,
        };
        if tokenizer.vocab_size() != self.vocab {
            return Err(TrainerError::InvalidConfig(format!(
                "the tokenizer has {} tokens, the run's model {}",
                tokenizer.vocab_size(),
                self.vocab
            )));
        }
        Ok(tokenizer)
    }

    /// The run's dataset: the synthetic corpus, or the text at `data_source` (a text file, or
    /// Parquet files with a text column; a path or store URL; at most [`MAX_TEXT_BYTES`] of text),
    /// tokenised by [`TrainSpec::tokenizer`].
    pub async fn dataset(&self) -> Result<Dataset, TrainerError> {
        if self.data_source == "synthetic" {
            return Dataset::synthetic(MarkovSpec::default(), self.seed, self.seq_len, self.eval_sequences);
        }
        let tokenizer = self.tokenizer().await?;
        let tokens = if is_parquet_source(&self.data_source) {
            let docs = load_parquet(&self.data_source, &self.text_column, MAX_TEXT_BYTES).await?;
            tokenizer.tokenize_documents(docs.texts())?
        } else {
            tokenizer.encode(&load_text(&self.data_source, MAX_TEXT_BYTES).await?)?
        };
        let data = Dataset::text(tokens, self.seed, self.seq_len, self.eval_fraction)?;
        if let (Some(pinned), Some(found)) = (&self.data_blake3, data.tokens_blake3())
            && *pinned != found
        {
            return Err(TrainerError::InvalidConfig(format!(
                "the data at {} is not what the run pinned: its tokens hash to {found}, the genesis names {pinned}",
                self.data_source
            )));
        }
        Ok(data)
    }

    /// The version this spec's fields need.
    fn version_needed(&self) -> u32 {
        match (self.local_steps > 1, self.inner_min_lr.is_some()) {
            (_, true) => INNER_SCHEDULE_SPEC_VERSION,
            (true, false) => LOCAL_STEPS_SPEC_VERSION,
            (false, false) => TRAIN_SPEC_VERSION,
        }
    }

    /// The local AdamW's own schedule, when `inner_min_lr` gives it one.
    pub fn inner_schedule(&self) -> Result<Option<verify::Schedule>, TrainerError> {
        let Some(min) = self.inner_min_lr else { return Ok(None) };
        let (peak, min) = (ratio(self.inner_lr, "train.inner_lr")?, ratio(min, "train.inner_min_lr")?);
        let (warmup_rounds, total_rounds) = (self.inner_warmup_rounds, self.total_rounds);
        let schedule = match self.inner_decay_start {
            0 => verify::Schedule::WarmupCosine { peak, min, warmup_rounds, total_rounds },
            decay_start => verify::Schedule::WarmupStableDecay { peak, min, warmup_rounds, decay_start, total_rounds },
        };
        schedule.validate().map_err(|e| {
            TrainerError::InvalidConfig(format!(
                "train.inner_warmup_rounds {} and train.inner_decay_start {} must lie within run.total_rounds {}: {e}",
                self.inner_warmup_rounds, self.inner_decay_start, self.total_rounds
            ))
        })?;
        Ok(Some(schedule))
    }

    /// The local AdamW's rate in `round`: its own schedule's ([`TrainSpec::inner_schedule`]), or
    /// `inner_lr` scaled as `schedule` (the run's consensus schedule) is scaled from its peak.
    pub fn inner_rate(&self, schedule: &verify::Schedule, round: verify::Round) -> f64 {
        if let Ok(Some(own)) = self.inner_schedule() {
            return own.lr_f64(round);
        }
        let peak = match *schedule {
            verify::Schedule::Constant { lr } => lr,
            verify::Schedule::WarmupCosine { peak, .. } | verify::Schedule::WarmupStableDecay { peak, .. } => peak,
        }
        .to_f64();
        if peak > 0.0 { self.inner_lr * schedule.lr_f64(round) / peak } else { 0.0 }
    }

    /// Whether round `round` is past the end of the run.
    pub fn is_past_end(&self, round: u64) -> bool {
        self.total_rounds > 0 && round >= self.total_rounds
    }

    fn validate(&self) -> Result<(), TrainerError> {
        let bad = |what: String| Err(TrainerError::InvalidConfig(what));
        self.model_config()?;
        if self.seq_len == 0 {
            return bad("data.seq_len must be positive".into());
        }
        let sources = [("data.source", Some(&self.data_source)), ("data.tokenizer", self.tokenizer.as_ref())];
        for (what, source) in sources {
            if let Some(source) = source.filter(|s| *s != "synthetic" && !s.contains("://")) {
                return bad(format!(
                    "{what} {source:?} is a local path: every member must read the same bytes, so name a URL \
                     (s3://bucket/key, https://host/file, or file:///abs/path when every member shares one machine)"
                ));
            }
        }
        if !(self.eval_fraction > 0.0 && self.eval_fraction < 1.0) {
            return bad(format!("data.eval_fraction must be in (0, 1), got {}", self.eval_fraction));
        }
        if self.eval_sequences == 0 {
            return bad("data.eval_sequences must be positive".into());
        }
        if self.tokens_per_round == 0 || self.tokens_per_round > 1 << 30 {
            return bad(format!("train.tokens_per_round must be in 1..=2^30, got {}", self.tokens_per_round));
        }
        if self.micro_batch == 0 || self.micro_batch > 4096 {
            return bad(format!("train.micro_batch must be in 1..=4096, got {}", self.micro_batch));
        }
        if !(self.clip_norm >= 0.0 && self.clip_norm.is_finite()) {
            return bad(format!("train.clip_norm must be >= 0, got {}", self.clip_norm));
        }
        if !(0.0..=1.0).contains(&self.momentum_decay) {
            return bad(format!("train.momentum_decay must be in [0, 1], got {}", self.momentum_decay));
        }
        if self.local_steps == 0 || self.local_steps > MAX_LOCAL_STEPS {
            return bad(format!("train.local_steps must be in 1..={MAX_LOCAL_STEPS}, got {}", self.local_steps));
        }
        if self.local_steps > 1 {
            if !(self.inner_lr > 0.0 && self.inner_lr < 1.0) {
                return bad(format!("train.inner_lr must be in (0, 1) with local steps, got {}", self.inner_lr));
            }
            if self.sequences_per_round() < self.local_steps as usize {
                return bad(format!(
                    "train.tokens_per_round gives {} sequences, fewer than train.local_steps {}",
                    self.sequences_per_round(),
                    self.local_steps
                ));
            }
        } else if self.inner_lr != 0.0 {
            return bad("train.inner_lr needs train.local_steps > 1".into());
        }
        if let Some(min) = self.inner_min_lr {
            if self.local_steps <= 1 {
                return bad("train.inner_min_lr needs train.local_steps > 1".into());
            }
            if !(0.0..=self.inner_lr).contains(&min) {
                return bad(format!("train.inner_min_lr must be in [0, train.inner_lr], got {min}"));
            }
            if self.total_rounds == 0 {
                return bad("train.inner_min_lr needs run.total_rounds (the end of its decay)".into());
            }
            self.inner_schedule()?;
        } else if self.inner_warmup_rounds != 0 || self.inner_decay_start != 0 {
            return bad("train.inner_warmup_rounds and train.inner_decay_start need train.inner_min_lr".into());
        }
        if self.score_assigned_sequences > 4096 || self.score_eval_sequences > 4096 {
            return bad("validation sequences must be at most 4096".into());
        }
        Ok(())
    }
}

/// Everything `cairn genesis` writes, from a [`RunSpec`].
#[derive(Clone, Debug)]
pub struct GenesisParts {
    /// The consensus config (its `extra` holds the [`TrainSpec`]).
    pub config: RunConfig,
    /// The training spec.
    pub train: TrainSpec,
    /// The roster at genesis.
    pub roster: Vec<Member>,
    /// Admin signatures a roster change needs.
    pub quorum: u16,
    /// The run's quorum of organisations.
    pub org_quorum: u16,
    /// The ledger's window of rounds (0: none).
    pub window: u32,
    /// The ledger's once-per-round limits (set for every run with a window).
    pub once_per_round: bool,
}

impl GenesisParts {
    /// Pins the tokens of `data` (the run's dataset, as `cairn genesis` loaded it) in the training
    /// spec and in the config's `extra` bytes that carry it.
    pub fn pin_data(&mut self, data: &Dataset) -> Result<(), TrainerError> {
        self.train.data_blake3 = data.tokens_blake3();
        self.config.extra = serde_json::to_vec(&self.train)
            .map_err(|e| TrainerError::InvalidConfig(format!("the training spec does not serialise: {e}")))?;
        Ok(())
    }
}

impl RunSpec {
    /// A complete, commented example (what docs/RUN.md explains and `cairn demo` writes).
    pub const EXAMPLE: &'static str = include_str!("../../docs/run.example.toml");

    /// Parses `run.toml` text; errors name the field.
    pub fn parse(text: &str) -> Result<RunSpec, TrainerError> {
        toml::from_str(text).map_err(|e| TrainerError::InvalidConfig(format!("run.toml: {e}")))
    }

    /// The run's vocabulary size: 256 for byte-level tokens, else the tokenizer's (loaded).
    pub async fn vocab(&self) -> Result<u32, TrainerError> {
        match &self.data.tokenizer {
            None => Ok(BYTE_VOCAB),
            Some(source) => Ok(Tokenizer::load(source).await?.vocab_size()),
        }
    }

    /// Checks every field and computes what genesis carries, for a model of `vocab` tokens
    /// ([`RunSpec::vocab`]).
    pub fn genesis_parts(&self, vocab: u32) -> Result<GenesisParts, TrainerError> {
        let bad = |what: String| TrainerError::InvalidConfig(format!("run.toml: {what}"));
        let train = TrainSpec {
            version: TRAIN_SPEC_VERSION,
            preset: self.run.preset.clone(),
            seed: self.run.seed,
            total_rounds: self.run.total_rounds,
            snapshot_every: self.run.snapshot_every,
            data_source: self.data.source.clone(),
            data_blake3: None,
            seq_len: self.data.seq_len,
            eval_fraction: self.data.eval_fraction,
            eval_sequences: self.data.eval_sequences,
            text_column: self.data.text_column.clone(),
            tokenizer: self.data.tokenizer.clone(),
            vocab,
            tokens_per_round: self.train.tokens_per_round,
            micro_batch: self.train.micro_batch,
            clip_norm: self.train.clip_norm,
            momentum_decay: self.train.momentum_decay,
            local_steps: self.train.local_steps,
            inner_lr: self.train.inner_lr,
            inner_min_lr: self.train.inner_min_lr,
            inner_warmup_rounds: self.train.inner_warmup_rounds,
            inner_decay_start: self.train.inner_decay_start,
            deadline_secs: self.rounds.deadline_secs,
            verdict_wait_secs: self.rounds.verdict_wait_secs,
            score_assigned_sequences: self.validation.assigned_sequences,
            score_eval_sequences: self.validation.eval_sequences,
        };
        let train = TrainSpec { version: train.version_needed(), ..train };
        train.validate().map_err(|e| bad(e.to_string()))?;
        let values = ValueEncoding::from_name(&self.demo.values).ok_or_else(|| {
            bad(format!("demo.values must be sign, int8, bf16 or two-bit, not {:?}", self.demo.values))
        })?;
        let step = verify::StepRule::from_name(&self.demo.step_rule)
            .ok_or_else(|| bad(format!("demo.step_rule must be sign or linear, not {:?}", self.demo.step_rule)))?;
        let transform = verify::Transform::from_name(&self.demo.transform)
            .ok_or_else(|| bad(format!("demo.transform must be dct or identity, not {:?}", self.demo.transform)))?;
        let indices = verify::IndexCoding::from_name(&self.demo.index_coding).ok_or_else(|| {
            bad(format!("demo.index_coding must be fixed or elias-fano, not {:?}", self.demo.index_coding))
        })?;
        let o = &self.optimizer;
        let peak = ratio(o.lr, "optimizer.lr")?;
        if o.decay_start > 0 && o.min_lr.is_none() {
            return Err(bad("optimizer.decay_start needs optimizer.min_lr (the rate the decay ends at)".into()));
        }
        let schedule = match o.min_lr {
            None if o.warmup_rounds == 0 => Schedule::Constant { lr: peak },
            min => {
                let total = if o.decay_rounds > 0 { o.decay_rounds } else { self.run.total_rounds };
                let min = match min {
                    Some(m) => ratio(m, "optimizer.min_lr")?,
                    None => peak,
                };
                if total == 0 && min != peak {
                    return Err(bad("a decay (min_lr) needs optimizer.decay_rounds or run.total_rounds".into()));
                }
                if o.decay_start == 0 {
                    Schedule::WarmupCosine { peak, min, warmup_rounds: o.warmup_rounds, total_rounds: total.max(1) }
                } else {
                    let schedule = Schedule::WarmupStableDecay {
                        peak,
                        min,
                        warmup_rounds: o.warmup_rounds,
                        decay_start: o.decay_start,
                        total_rounds: total,
                    };
                    // verify's rule: warm-up <= decay start <= end of the decay
                    schedule.validate().map_err(|e| bad(format!("optimizer.decay_start: {e}")))?;
                    schedule
                }
            }
        };
        let clip = match o.clip.as_str() {
            "median" => NormClip::Median,
            "off" => NormClip::Off,
            other => return Err(bad(format!("optimizer.clip must be median or off, not {other:?}"))),
        };
        let layout = train.model_config()?.layout()?;
        let overrides = topk_overrides(&layout, self.demo.topk, &self.demo.topk_by_name())
            .map_err(|e| bad(format!("demo.topk_by_tensor: {e}")))?;
        let compression = Compression {
            overrides,
            transform,
            indices,
            ..Compression::uniform(self.demo.chunk, self.demo.topk, values)
        };
        compression.validate_for(&layout).map_err(|e| bad(format!("demo: {e}")))?;
        let hyper =
            Hyper { compression, schedule, weight_decay: ratio(o.weight_decay, "optimizer.weight_decay")?, clip, step };
        hyper.validate().map_err(|e| bad(format!("demo: {e}")))?;
        refuse_unclipped_linear(&hyper).map_err(|e| bad(e.to_string()))?;
        let config = RunConfig {
            layout,
            hyper,
            rounds: RoundRules {
                min_contributions: self.rounds.min_contributions,
                max_contributions: self.rounds.max_contributions,
                overlap: self.rounds.overlap,
            },
            exclusion: ExclusionRules {
                min_score: self.validation.min_score,
                max_failures: self.validation.max_failures,
                min_pct_of_median: self.validation.min_pct_of_median,
            },
            extra: serde_json::to_vec(&train).map_err(|e| bad(e.to_string()))?,
        };
        config.validate().map_err(|e| bad(e.to_string()))?;
        let mut roster = Vec::with_capacity(self.roster.member.len());
        for (i, m) in self.roster.member.iter().enumerate() {
            let key = PublicKey::from_str(m.key.trim())
                .map_err(|e| bad(format!("roster.member[{i}].key {:?}: {e}", m.key)))?;
            let role = Role::from_name(&m.role).ok_or_else(|| {
                bad(format!("roster.member[{i}].role must be admin, worker or validator, not {:?}", m.role))
            })?;
            if m.organisation.is_empty() || m.organisation.len() > usize::from(ledger::entry::MAX_ORG_BYTES) {
                return Err(bad(format!(
                    "roster.member[{i}].organisation must be 1..={} bytes",
                    ledger::entry::MAX_ORG_BYTES
                )));
            }
            if roster.iter().any(|r: &Member| r.key == key) {
                return Err(bad(format!("roster.member[{i}]: key {key} is listed twice")));
            }
            roster.push(Member { key, organisation: m.organisation.clone(), role });
        }
        let admins = roster.iter().filter(|m| m.role == Role::Admin).count();
        if admins == 0 {
            return Err(bad("the roster needs at least one admin".into()));
        }
        if self.roster.quorum == 0 || usize::from(self.roster.quorum) > admins {
            return Err(bad(format!("roster.quorum must be in 1..={admins} (the number of admins)")));
        }
        if !roster.iter().any(|m| m.role == Role::Worker) {
            return Err(bad("the roster needs at least one worker".into()));
        }
        let mut orgs: Vec<&str> = roster.iter().map(|m| m.organisation.as_str()).collect();
        orgs.sort_unstable();
        orgs.dedup();
        // Every member keeps the slots since the last snapshot round (the export part it may have
        // to publish), so a longer snapshot interval than the window would set the memory bound.
        let (window, every) = (u64::from(self.rounds.window), self.run.snapshot_every);
        if window != 0 && every > window {
            return Err(bad(format!(
                "run.snapshot_every ({every}) is longer than rounds.window ({window}): members keep the ledger since the \
                 last snapshot, so their memory would grow with snapshot_every; raise rounds.window to at least \
                 {every}, or set it to 0 for no window"
            )));
        }
        let org_quorum = match self.roster.org_quorum {
            None => u16::try_from(orgs.len() / 2 + 1).unwrap_or(u16::MAX),
            Some(q) if q == 0 || usize::from(q) > orgs.len() => {
                return Err(bad(format!(
                    "roster.org_quorum must be in 1..={} (the number of organisations in the roster)",
                    orgs.len()
                )));
            }
            Some(q) => q,
        };
        let window = self.rounds.window;
        // New runs with a window take check 9's limits, which bound what a round holds.
        let once_per_round = window != 0;
        Ok(GenesisParts { config, train, roster, quorum: self.roster.quorum, org_quorum, window, once_per_round })
    }
}

/// An exact ratio for a decimal rate, at most nine decimals.
/// Refuses the linear step rule without median clipping: the step then follows the updates'
/// magnitudes, and one worker moves the model as far as the value bounds allow (docs/SECURITY.md,
/// row 33). `cairn genesis` will not write such a run, and members will not join one.
pub fn refuse_unclipped_linear(hyper: &Hyper) -> Result<(), TrainerError> {
    if hyper.step == verify::StepRule::Linear && hyper.clip == NormClip::Off {
        return Err(TrainerError::InvalidConfig(
            "demo.step_rule = \"linear\" needs optimizer.clip = \"median\": without it one worker's update can \
             move the model as far as it likes"
                .into(),
        ));
    }
    Ok(())
}

fn ratio(x: f64, what: &str) -> Result<Ratio, TrainerError> {
    if !(0.0..1e6).contains(&x) {
        return Err(TrainerError::InvalidConfig(format!("run.toml: {what} must be in [0, 1e6), got {x}")));
    }
    Ok(Ratio::new((x * RATIO_DEN as f64).round() as u64, RATIO_DEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_round_trips_through_genesis_bytes() {
        let spec = RunSpec::parse(RunSpec::EXAMPLE).unwrap();
        let parts = spec.genesis_parts(BYTE_VOCAB).unwrap();
        let bytes = parts.config.encode().unwrap();
        let config = RunConfig::decode(&bytes).unwrap();
        assert_eq!(TrainSpec::from_extra(&config.extra).unwrap(), parts.train);
        assert_eq!(parts.roster.len(), spec.roster.member.len());
    }

    #[test]
    fn the_window_reaches_the_genesis_and_must_cover_the_snapshot_interval() {
        let parts = |text: &str| RunSpec::parse(text).and_then(|s| s.genesis_parts(BYTE_VOCAB));
        assert_eq!(parts(RunSpec::EXAMPLE).unwrap().window, DEFAULT_WINDOW);
        let none = RunSpec::EXAMPLE.replacen("window = 64", "window = 0", 1);
        assert_eq!(parts(&none).unwrap().window, 0);
        let short = RunSpec::EXAMPLE.replacen("window = 64", "window = 4", 1);
        let err = parts(&short).unwrap_err().to_string();
        assert!(err.contains("run.snapshot_every (5) is longer than rounds.window (4)"), "{err}");
    }

    #[test]
    fn the_identity_transform_reaches_the_run_config() {
        let genesis = |text: &str| {
            let parts = RunSpec::parse(text).unwrap().genesis_parts(BYTE_VOCAB).unwrap();
            RunConfig::decode(&parts.config.encode().unwrap()).unwrap().hyper.compression.transform
        };
        assert_eq!(genesis(RunSpec::EXAMPLE), verify::Transform::Dct);
        let identity = RunSpec::EXAMPLE.replacen("transform = \"dct\"", "transform = \"identity\"", 1);
        assert_eq!(genesis(&identity), verify::Transform::Identity);
    }

    #[test]
    fn elias_fano_indices_reach_the_run_config_and_shrink_the_update() {
        let genesis = |text: &str| {
            let parts = RunSpec::parse(text).unwrap().genesis_parts(BYTE_VOCAB).unwrap();
            let config = RunConfig::decode(&parts.config.encode().unwrap()).unwrap();
            (config.hyper.compression, verify::wire::encoded_len(&config.layout, &config.hyper.compression))
        };
        let (ef, ef_len) = genesis(RunSpec::EXAMPLE);
        let text = RunSpec::EXAMPLE.replacen("index_coding = \"elias-fano\"", "index_coding = \"fixed\"", 1);
        let (fixed, fixed_len) = genesis(&text);
        assert_eq!(fixed.indices, verify::IndexCoding::Fixed);
        assert_eq!(ef.indices, verify::IndexCoding::EliasFano);
        assert_eq!(ef.version(), verify::wire::VERSION_WITH_INDEX_CODING);
        // The example's embedding keeps 64 of 4096 per chunk: 96 bytes of 12-bit indices, 64 in
        // Elias-Fano (L = 6, U = 64: 384 + 64 + 63 bits); 4 of 4096 elsewhere: 6 bytes either way.
        assert!(ef_len < fixed_len, "{ef_len} >= {fixed_len}");
    }

    #[test]
    fn the_high_compression_settings_in_run_md_make_a_run_of_that_method() {
        // docs/RUN.md's block, laid over the example: the genesis a reader of the docs would write.
        let doc = include_str!("../../docs/RUN.md");
        let block = doc.split("**Settings by compression**").nth(1).unwrap();
        let block = block.split("```toml\n").nth(1).unwrap().split("```").next().unwrap();
        let mut spec: toml::Table = toml::from_str(RunSpec::EXAMPLE).unwrap();
        for (section, fields) in toml::from_str::<toml::Table>(block).unwrap() {
            let target = spec.get_mut(&section).and_then(|t| t.as_table_mut()).unwrap();
            for (k, v) in fields.as_table().unwrap() {
                target.insert(k.clone(), v.clone());
            }
        }
        let spec: RunSpec = toml::Value::Table(spec).try_into().unwrap();
        let parts = spec.genesis_parts(BYTE_VOCAB).unwrap();
        let config = RunConfig::decode(&parts.config.encode().unwrap()).unwrap();
        let c = config.hyper.compression;
        assert_eq!(
            (c.transform, c.indices, c.values, c.topk),
            (verify::Transform::Identity, verify::IndexCoding::EliasFano, ValueEncoding::TwoBit, 41)
        );
        assert!(c.overrides.is_empty());
        assert_eq!(config.hyper.step, verify::StepRule::Linear);
        use verify::Round;
        // The outer rate: 1.5 for the first half of 120 rounds, then linear up to 3 at the end,
        // while the local AdamW decays from 6e-3 to 0 over the same rounds.
        let (half, end) = (Round(60), Round(120));
        let outer = config.hyper.schedule;
        assert!(matches!(
            outer,
            Schedule::WarmupStableDecay { warmup_rounds: 0, decay_start: 60, total_rounds: 120, .. }
        ));
        assert_eq!((outer.lr_f64(Round(0)), outer.lr_f64(half), outer.lr_f64(end)), (1.5, 1.5, 3.0));
        assert_eq!(outer.lr_f64(Round(90)), 2.25);
        let inner = parts.train.inner_schedule().unwrap().unwrap();
        assert_eq!((inner.lr_f64(Round(0)), inner.lr_f64(half), inner.lr_f64(end)), (0.006, 0.006, 0.0));
        assert_eq!(parts.train.local_steps, 4);
        assert_eq!(parts.train.inner_lr, 0.006);
        assert_eq!(parts.train.momentum_decay, 0.9, "the error-feedback decay of the measured setting");
        // "About 1000x": a dense f32 gradient per optimizer step against one update per 4 steps.
        let dense = config.layout.elements() * 4;
        let per_step = verify::wire::encoded_len(&config.layout, &c) as f64 / f64::from(parts.train.local_steps);
        let ratio = dense as f64 / per_step;
        assert!((950.0..1050.0).contains(&ratio), "{ratio}");
    }

    #[test]
    fn errors_name_the_field() {
        let with = |from: &str, to: &str| {
            let text = RunSpec::EXAMPLE.replacen(from, to, 1);
            assert_ne!(text, RunSpec::EXAMPLE, "{from} not in the example");
            RunSpec::parse(&text).and_then(|s| s.genesis_parts(BYTE_VOCAB).map(|_| ())).unwrap_err().to_string()
        };
        assert!(with("preset = \"tiny\"", "preset = \"huge\"").contains("huge"));
        assert!(with("values = \"sign\"", "values = \"fp4\"").contains("demo.values"));
        assert!(with("step_rule = \"sign\"", "step_rule = \"adam\"").contains("demo.step_rule"));
        assert!(with("transform = \"dct\"", "transform = \"fft\"").contains("demo.transform"));
        assert!(with("index_coding = \"elias-fano\"", "index_coding = \"huffman\"").contains("demo.index_coding"));
        // the linear step needs values with a magnitude
        let err = with("step_rule = \"sign\"", "step_rule = \"linear\"");
        assert!(err.contains("linear step rule needs values with a magnitude"), "{err}");
        let err = RunSpec::parse(
            &RunSpec::EXAMPLE
                .replacen("values = \"sign\"", "values = \"two-bit\"", 1)
                .replacen("step_rule = \"sign\"", "step_rule = \"linear\"", 1)
                .replacen("clip = \"median\"", "clip = \"off\"", 1),
        )
        .and_then(|s| s.genesis_parts(BYTE_VOCAB).map(|_| ()))
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs optimizer.clip = \"median\""), "{err}");
        assert!(with("role = \"admin\"", "role = \"boss\"").contains("roster.member[0].role"));
        assert!(with("momentum_decay = 0.999", "momentum_decay = 1.5").contains("momentum_decay"));
        assert!(with("[train]", "[train]\nbogus = 1").contains("bogus"));
        assert!(with("quorum = 1", "quorum = 3").contains("quorum"));
    }

    #[test]
    fn the_decay_is_cosine_or_held_then_linear() {
        let schedule = |optimizer: &str| {
            let text = RunSpec::EXAMPLE.replacen("decay_start = 0", optimizer, 1);
            RunSpec::parse(&text).and_then(|s| s.genesis_parts(BYTE_VOCAB)).map(|p| p.config.hyper.schedule)
        };
        let (peak, min) = (Ratio::new(3_000_000, RATIO_DEN), Ratio::new(300_000, RATIO_DEN));
        assert_eq!(schedule("decay_start = 0").unwrap(), Schedule::Constant { lr: peak });
        assert_eq!(
            schedule("min_lr = 0.0003").unwrap(),
            Schedule::WarmupCosine { peak, min, warmup_rounds: 0, total_rounds: 20 }
        );
        assert_eq!(
            schedule("min_lr = 0.0003\ndecay_start = 15").unwrap(),
            Schedule::WarmupStableDecay { peak, min, warmup_rounds: 0, decay_start: 15, total_rounds: 20 }
        );
        // A `min_lr` above `lr` makes the same shape rise: held, then linear up to it (an outer
        // rate that grows while the local AdamW decays, docs/RUN.md "Settings by compression").
        let rising = schedule("min_lr = 0.006\ndecay_start = 15").unwrap();
        let up = Ratio::new(6_000_000, RATIO_DEN);
        assert_eq!(
            rising,
            Schedule::WarmupStableDecay { peak, min: up, warmup_rounds: 0, decay_start: 15, total_rounds: 20 }
        );
        // 0.003 until round 15, then 0.003 more over the 5 rounds to 20: 0.0048 at round 18.
        assert_eq!(rising.lr_f64(verify::Round(14)), 0.003);
        assert!((rising.lr_f64(verify::Round(18)) - 0.0048).abs() < 1e-15);
        assert_eq!(rising.lr_f64(verify::Round(20)), 0.006);
        let err = schedule("min_lr = 0.0003\ndecay_start = 21").unwrap_err().to_string();
        assert!(err.contains("optimizer.decay_start"), "{err}");
        let err = schedule("decay_start = 15").unwrap_err().to_string();
        assert!(err.contains("optimizer.decay_start") && err.contains("min_lr"), "{err}");
    }

    #[test]
    fn fields_left_out_take_their_defaults() {
        let text = RunSpec::EXAMPLE.replacen("text_column = \"text\"", "", 1).replacen("topk = 4 ", "", 1);
        let spec = RunSpec::parse(&text).unwrap();
        assert_eq!(spec.data.text_column, "text");
        assert_eq!(spec.demo.topk, DemoSection::default().topk);
        assert_eq!(spec.genesis_parts(BYTE_VOCAB).unwrap().train.text_column, "text");
    }

    #[test]
    fn per_tensor_top_k_defaults_to_the_embedding_and_can_be_set_or_cleared() {
        let compression = |text: &str| RunSpec::parse(text).unwrap().genesis_parts(BYTE_VOCAB).unwrap().config;
        let config = compression(RunSpec::EXAMPLE);
        let embed = config.layout.position(crate::model::EMBEDDING).unwrap();
        let c = config.hyper.compression;
        assert_eq!((c.topk, c.topk_for(embed), c.overrides.as_slice().len()), (4, 64, 1));
        let set = RunSpec::EXAMPLE.replacen(
            "[optimizer]",
            "[demo.topk_by_tensor]\n\"lm_head.weight\" = 16\n\"model.embed_tokens.weight\" = 32\n\n[optimizer]",
            1,
        );
        let config = compression(&set);
        let c = config.hyper.compression;
        assert_eq!(c.topk_for(embed), 32);
        assert_eq!(c.topk_for(config.layout.position("lm_head.weight").unwrap()), 16);
        let cleared = RunSpec::EXAMPLE.replacen("[optimizer]", "[demo.topk_by_tensor]\n\n[optimizer]", 1);
        assert!(compression(&cleared).hyper.compression.overrides.is_empty());
        let unknown = RunSpec::EXAMPLE.replacen("[optimizer]", "[demo.topk_by_tensor]\n\"wte\" = 32\n\n[optimizer]", 1);
        let err = RunSpec::parse(&unknown).unwrap().genesis_parts(BYTE_VOCAB).unwrap_err().to_string();
        assert!(err.contains("demo.topk_by_tensor") && err.contains("wte"), "{err}");
        let zero =
            RunSpec::EXAMPLE.replacen("[optimizer]", "[demo.topk_by_tensor]\n\"lm_head.weight\" = 0\n\n[optimizer]", 1);
        let err = RunSpec::parse(&zero).unwrap().genesis_parts(BYTE_VOCAB).unwrap_err().to_string();
        assert!(err.contains("demo"), "{err}");
    }

    #[tokio::test]
    async fn a_text_source_loads_byte_level_and_a_vocabulary_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.txt");
        std::fs::write(&path, "to be or not to be, that is the question. ".repeat(200)).unwrap();
        let with_source =
            |source: &str| RunSpec::EXAMPLE.replacen("source = \"synthetic\"", &format!("source = {source:?}"), 1);
        // A local path is refused: other members would read other bytes, or nothing.
        let local = RunSpec::parse(&with_source(path.to_str().unwrap())).unwrap().genesis_parts(BYTE_VOCAB);
        assert!(local.unwrap_err().to_string().contains("is a local path"), "a path is not a URL");
        let text = with_source(&format!("file://{}", path.display()));
        let train = RunSpec::parse(&text).unwrap().genesis_parts(BYTE_VOCAB).unwrap().train;
        let data = train.dataset().await.unwrap();
        assert!(data.loss_floor_nats().is_none());
        assert_eq!(data.sequence(0).unwrap()[..2], [u32::from(b't'), u32::from(b'o')]);
        // Pinned at genesis: the same tokens load; changed bytes behind the URL are refused.
        let mut parts = RunSpec::parse(&text).unwrap().genesis_parts(BYTE_VOCAB).unwrap();
        parts.pin_data(&data).unwrap();
        let pinned = TrainSpec::from_extra(&parts.config.extra).unwrap();
        let digest = blake3::hash(
            &"to be or not to be, that is the question. "
                .repeat(200)
                .into_bytes()
                .iter()
                .flat_map(|b| u32::from(*b).to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        assert_eq!(pinned.data_blake3.as_deref(), Some(digest.to_hex().as_str()), "blake3 of the u32 LE byte tokens");
        assert!(pinned.dataset().await.is_ok());
        std::fs::write(&path, "to be or not to be, that is the answer. ".repeat(200)).unwrap();
        let err = pinned.dataset().await.unwrap_err().to_string();
        assert!(err.contains("is not what the run pinned"), "{err}");
        let wrong = TrainSpec { vocab: 300, ..train };
        assert!(wrong.tokenizer().await.unwrap_err().to_string().contains("256 tokens"));
    }

    #[test]
    fn local_steps_are_version_2_of_the_training_spec_and_checked() {
        let with = |train: &str| {
            RunSpec::EXAMPLE.replacen("momentum_decay = 0.999", &format!("momentum_decay = 0.999\n{train}"), 1)
        };
        let parts = |text: &str| RunSpec::parse(text).unwrap().genesis_parts(BYTE_VOCAB);
        // Without local steps the spec is version 1 and its bytes hold neither field (runs made
        // before local steps existed keep their genesis bytes, and so their run ids).
        let plain = parts(RunSpec::EXAMPLE).unwrap();
        let json = String::from_utf8(plain.config.extra.clone()).unwrap();
        assert!(
            json.contains("\"version\":1") && !json.contains("local_steps") && !json.contains("inner_lr"),
            "{json}"
        );
        let local = parts(&with("local_steps = 8\ninner_lr = 0.002")).unwrap();
        let spec = TrainSpec::from_extra(&local.config.extra).unwrap();
        assert_eq!((spec.version, spec.local_steps, spec.inner_lr), (2, 8, 0.002));
        // The inner rate follows the schedule's shape: the example's cosine from 0.003 to 0.0003.
        let schedule = &local.config.hyper.schedule;
        let r = verify::Round(500);
        assert!((spec.inner_rate(schedule, r) - 0.002 * schedule.lr_f64(r) / 0.003).abs() < 1e-15);
        // A version that does not match the fields is refused, with both named.
        for (version, steps) in [(1, 8), (2, 1)] {
            let forged = TrainSpec {
                version,
                local_steps: steps,
                inner_lr: if steps > 1 { 0.002 } else { 0.0 },
                ..spec.clone()
            };
            let err = TrainSpec::from_extra(&serde_json::to_vec(&forged).unwrap()).unwrap_err().to_string();
            assert!(err.contains(&format!("version {version} with local_steps {steps}")), "{err}");
        }
        for (train, what) in [
            ("local_steps = 0", "train.local_steps must be in 1..=64"),
            ("local_steps = 65\ninner_lr = 0.002", "train.local_steps must be in 1..=64"),
            ("local_steps = 4", "train.inner_lr must be in (0, 1)"),
            ("inner_lr = 0.002", "train.inner_lr needs train.local_steps > 1"),
            ("local_steps = 64\ninner_lr = 0.002", "fewer than train.local_steps 64"),
        ] {
            let err = parts(&with(train)).unwrap_err().to_string();
            assert!(err.contains(what), "{train}: {err}");
        }
    }

    #[test]
    fn members_refuse_only_the_linear_rule_without_clipping() {
        let hyper = |step, clip| Hyper {
            compression: Compression::uniform(64, 4, ValueEncoding::TwoBit),
            schedule: Schedule::Constant { lr: Ratio::new(1, 1) },
            weight_decay: Ratio::new(0, 1),
            clip,
            step,
        };
        let err = refuse_unclipped_linear(&hyper(verify::StepRule::Linear, NormClip::Off)).unwrap_err().to_string();
        assert!(err.contains("needs optimizer.clip = \"median\""), "{err}");
        assert!(refuse_unclipped_linear(&hyper(verify::StepRule::Linear, NormClip::Median)).is_ok());
        assert!(refuse_unclipped_linear(&hyper(verify::StepRule::Sign, NormClip::Off)).is_ok());
    }

    #[test]
    fn the_local_adamw_s_own_schedule_is_version_3_and_checked() {
        // the example's total_rounds is 20
        let with = |train: &str| {
            RunSpec::EXAMPLE.replacen("momentum_decay = 0.999", &format!("momentum_decay = 0.999\n{train}"), 1)
        };
        let parts = |text: &str| RunSpec::parse(text).unwrap().genesis_parts(BYTE_VOCAB);
        let own = parts(&with(
            "local_steps = 4\ninner_lr = 0.002\ninner_min_lr = 0.0\ninner_warmup_rounds = 2\ninner_decay_start = 10",
        ))
        .unwrap();
        let spec = TrainSpec::from_extra(&own.config.extra).unwrap();
        assert_eq!(spec.version, 3);
        // Its own warm-up, hold and linear decay to 0 at round 20, whatever the optimizer schedule:
        // round 0 is 1/2 of the peak, rounds 2..10 the peak, round 15 half way down (5 of 10 left).
        let outer = &own.config.hyper.schedule;
        let rate = |r| spec.inner_rate(outer, verify::Round(r));
        assert!((rate(0) - 0.001).abs() < 1e-12, "{}", rate(0));
        assert!((rate(5) - 0.002).abs() < 1e-12, "{}", rate(5));
        assert!((rate(15) - 0.001).abs() < 1e-12, "{}", rate(15));
        assert_eq!(rate(20), 0.0);
        // A version 2 spec with an own schedule is refused (an older worker would train otherwise).
        let forged = TrainSpec { version: 2, ..spec.clone() };
        let err = TrainSpec::from_extra(&serde_json::to_vec(&forged).unwrap()).unwrap_err().to_string();
        assert!(err.contains("version 2 with local_steps 4 and inner_min_lr Some(0.0)"), "{err}");
        for (train, what) in [
            ("inner_min_lr = 0.0", "train.inner_min_lr needs train.local_steps > 1"),
            (
                "local_steps = 4\ninner_lr = 0.002\ninner_min_lr = 0.003",
                "train.inner_min_lr must be in [0, train.inner_lr]",
            ),
            ("local_steps = 4\ninner_lr = 0.002\ninner_warmup_rounds = 2", "need train.inner_min_lr"),
            (
                "local_steps = 4\ninner_lr = 0.002\ninner_min_lr = 0.0\ninner_decay_start = 30",
                "must lie within run.total_rounds 20",
            ),
        ] {
            let err = parts(&with(train)).unwrap_err().to_string();
            assert!(err.contains(what), "{train}: {err}");
        }
    }
}
