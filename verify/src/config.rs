//! The run configuration: what consensus needs to know about a run, fixed at genesis, carried as the
//! Genesis entry's opaque `config` bytes.
//!
//! ```text
//!   offset  size  field                      (all integers little-endian; no floats)
//!   0       8     magic "CAIRNCFG"
//!   8       2     version = 1, or 2 when the compression has top-k overrides, or 3 when the
//!                 step rule is linear (with or without overrides), or 4 when the transform is
//!                 not the DCT (with any step rule, with or without overrides), or 5 when the
//!                 indices are Elias-Fano coded (with either transform and any step rule), or 6
//!                 when the exclusion has a relative threshold (with any of the above), or 7
//!                 when rounds overlap (with any of the above)
//!   10            layout      u32 count | (u32 name_len | name | u32 rank | u64 dim * rank) * count
//!                             (= layout_bytes of FORMAT.md 1.1; names strictly ascending)
//!                 compression u16 chunk size | u16 top-k | u8 value encoding
//!                             v2 only: u8 n (1..=4) | (u32 tensor index | u16 top-k) * n, as in
//!                             the update header (FORMAT.md 2)
//!                             v3 to v5: u8 n (0..=4) | (u32 tensor index | u16 top-k) * n
//!                             v4: u8 transform: 1 identity (a DCT run is v1 to v3)
//!                             v5: u8 transform: 0 DCT, 1 identity | u8 index coding: 1
//!                                 Elias-Fano (fixed-width indices are v1 to v4)
//!                 schedule    u8 tag: 0 constant:      ratio lr
//!                                     1 warmup-cosine: ratio peak | ratio min | u64 warmup | u64 total
//!                                     2 warmup-stable-decay: ratio peak | ratio min | u64 warmup
//!                                       | u64 decay_start | u64 total
//!                 weight decay ratio                    ratio = u64 num | u64 den (den != 0)
//!                 clip        u8: 0 off, 1 median
//!                 v3 only: step rule  u8: 1 linear (a sign-rule run is v1, v2 or v4)
//!                 v4 to v7: step rule u8: 0 sign, 1 linear
//!                 rounds      u32 min contributions | u32 max contributions (1..=4096, min <= max)
//!                 exclusion   i64 min score | u32 max failures (0 = never exclude)
//!                             v6: u8 min percent of the median (1..=100; a run without
//!                             a relative threshold is v1 to v5)
//!                             v7: u8 min percent of the median (0..=100, 0: none)
//!                                 | u8 overlap: 1 (a contribution to round r may be trained
//!                                 on the state after r - 2 as well as on the one after r - 1)
//!                 extra       u32 len (<= MAX_EXTRA_BYTES) | bytes (opaque: trainer, federation)
//!   total <= MAX_CONFIG_BYTES; nothing may follow `extra`.
//! ```
//!
//! The encoding is canonical: [`RunConfig::decode`] accepts exactly the byte strings that
//! [`RunConfig::encode`] produces, so two runs with equal configs have equal genesis bytes.
//! Fields that do not change consensus (model preset, data spec, tokens per round, deadlines)
//! belong in `extra`, whose format the trainer and federation own.

use crate::aggregate::{Hyper, MAX_UPDATES_PER_ROUND, NormClip, StepRule};
use crate::error::{ConfigError, VerifyError};
use crate::schedule::{Ratio, Schedule};
use crate::state::{Layout, MAX_NAME_BYTES, MAX_RANK, MAX_TENSORS, TensorSpec};
use crate::wire::{
    Compression, IndexCoding, MAX_TOPK_OVERRIDES, TopkOverride, TopkOverrides, Transform, ValueEncoding,
};

/// First 8 bytes of every run config.
pub const CONFIG_MAGIC: [u8; 8] = *b"CAIRNCFG";
/// The config version of a run without top-k overrides.
pub const CONFIG_VERSION: u16 = 1;
/// The config version of a run with top-k overrides.
pub const CONFIG_VERSION_WITH_OVERRIDES: u16 = 2;
/// The config version of a run whose step rule is not the sign.
pub const CONFIG_VERSION_WITH_STEP_RULE: u16 = 3;
/// The config version of a run whose transform is not the DCT.
pub const CONFIG_VERSION_WITH_TRANSFORM: u16 = 4;
/// The config version of a run whose indices are Elias-Fano coded.
pub const CONFIG_VERSION_WITH_INDEX_CODING: u16 = 5;
/// The config version of a run whose verdicts also fail below a share of their validator's median.
pub const CONFIG_VERSION_WITH_RELATIVE_SCORE: u16 = 6;
/// The config version of a run whose rounds overlap ([`RoundRules::overlap`]).
pub const CONFIG_VERSION_WITH_OVERLAP: u16 = 7;
/// Largest encoded config: the ledger's limit on a Genesis entry's config.
pub const MAX_CONFIG_BYTES: u64 = ledger::entry::MAX_CONFIG_BYTES as u64;
/// Largest `extra` field.
pub const MAX_EXTRA_BYTES: u32 = 64 * 1024;

/// How many contributions a round takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RoundRules {
    /// Counted contributions an honest member waits for before it votes to close a round. Not a
    /// consensus check: a round closed with fewer is applied with what it has (and flagged in the
    /// replay report as under the minimum).
    pub min_contributions: u32,
    /// Most contributions counted in one round: the first this many that pass the round rule
    /// (1..=[`MAX_UPDATES_PER_ROUND`]).
    pub max_contributions: u32,
    /// Whether rounds overlap: a worker trains round `r + 1` while round `r` closes, so a
    /// contribution to round `r` counts when its base is the state after `r - 1` (the round's
    /// base) or the state after `r - 2` (one round behind; the genesis state for round 1). Its
    /// update is applied to the round's base like any other (FORMAT.md, "Round rule").
    pub overlap: bool,
}

/// How validators' verdicts exclude contributions and workers (see FORMAT.md, "Round rule").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExclusionRules {
    /// A verdict with a score below this fails the contribution it names.
    pub min_score: i64,
    /// A worker whose contributions failed (rejected by validators of a quorum of organisations)
    /// in this many of its contributed rounds in a row is excluded from then on (0: never).
    pub max_failures: u32,
    /// The relative threshold, in percent (0: none, at most 100): a verdict also fails its
    /// contribution when its score is below this share of the lower median of the scores its
    /// validator gave in the round, when that median is positive. See [`ExclusionRules::threshold`].
    pub min_pct_of_median: u8,
}

impl ExclusionRules {
    /// Rules with only the absolute threshold (no relative one).
    pub fn absolute(min_score: i64, max_failures: u32) -> ExclusionRules {
        ExclusionRules { min_score, max_failures, min_pct_of_median: 0 }
    }

    /// The score below which a verdict rejects its contribution, given `round_scores`: its
    /// validator's (its signer's) scores on the round, one per worker not excluded, before the
    /// round closed, in any order (which scores exactly: [`crate::RoundRule::thresholds`] and
    /// FORMAT.md section 6).
    ///
    /// The threshold is `min_score`, or, when `min_pct_of_median` is not 0 and the lower median
    /// `m` of `round_scores` (sorted ascending, the element at index `(n - 1) / 2`) is positive,
    /// the larger of `min_score` and `floor(m * min_pct_of_median / 100)`. The median is the
    /// validator's own, so a validator that writes hostile scores moves only its own threshold;
    /// the lower median limits how far a minority of high-scoring updates can raise it, and
    /// failing below it alone never counts toward exclusion.
    pub fn threshold(&self, round_scores: &[i64]) -> i64 {
        if self.min_pct_of_median == 0 || round_scores.is_empty() {
            return self.min_score;
        }
        let mut sorted = round_scores.to_vec();
        sorted.sort_unstable();
        let median = sorted[(sorted.len() - 1) / 2];
        if median <= 0 {
            return self.min_score;
        }
        // median * pct fits in i128; dividing by 100 brings it back to at most median.
        let relative = (i128::from(median) * i128::from(self.min_pct_of_median) / 100) as i64;
        self.min_score.max(relative)
    }
}

/// What consensus needs to know about a run. See the module docs for the encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    /// The model's tensors.
    pub layout: Layout,
    /// Compression, learning-rate schedule, weight decay, clipping.
    pub hyper: Hyper,
    /// Contributions per round.
    pub rounds: RoundRules,
    /// Verdict thresholds.
    pub exclusion: ExclusionRules,
    /// Opaque bytes for the trainer and the federation (model preset, data spec, tokens per round).
    pub extra: Vec<u8>,
}

impl RunConfig {
    /// Checks every field against its limits (what [`RunConfig::decode`] enforces on bytes).
    pub fn validate(&self) -> Result<(), VerifyError> {
        self.hyper.validate()?;
        self.hyper.compression.validate_for(&self.layout)?;
        let r = self.rounds;
        if r.max_contributions == 0 || r.max_contributions as usize > MAX_UPDATES_PER_ROUND {
            return Err(ConfigError::Invalid(format!(
                "max contributions {} outside 1..={MAX_UPDATES_PER_ROUND}",
                r.max_contributions
            ))
            .into());
        }
        if r.min_contributions > r.max_contributions {
            return Err(ConfigError::Invalid(format!(
                "min contributions {} above max {}",
                r.min_contributions, r.max_contributions
            ))
            .into());
        }
        if self.exclusion.min_pct_of_median > 100 {
            return Err(ConfigError::Invalid(format!(
                "min percent of the median {} above 100",
                self.exclusion.min_pct_of_median
            ))
            .into());
        }
        if self.extra.len() as u64 > u64::from(MAX_EXTRA_BYTES) {
            return Err(ConfigError::TooLong {
                field: "extra",
                len: self.extra.len() as u64,
                max: MAX_EXTRA_BYTES.into(),
            }
            .into());
        }
        Ok(())
    }

    /// The canonical bytes (what the Genesis entry carries). Validates first, so that we never
    /// write a config that readers would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, VerifyError> {
        self.validate()?;
        let mut out = Vec::new();
        out.extend_from_slice(&CONFIG_MAGIC);
        let h = &self.hyper;
        let c = &h.compression;
        let version = match (c.indices, c.transform, h.step, c.overrides.is_empty()) {
            _ if self.rounds.overlap => CONFIG_VERSION_WITH_OVERLAP,
            _ if self.exclusion.min_pct_of_median != 0 => CONFIG_VERSION_WITH_RELATIVE_SCORE,
            (IndexCoding::EliasFano, _, _, _) => CONFIG_VERSION_WITH_INDEX_CODING,
            (IndexCoding::Fixed, Transform::Identity, _, _) => CONFIG_VERSION_WITH_TRANSFORM,
            (IndexCoding::Fixed, Transform::Dct, StepRule::Linear, _) => CONFIG_VERSION_WITH_STEP_RULE,
            (IndexCoding::Fixed, Transform::Dct, StepRule::Sign, true) => CONFIG_VERSION,
            (IndexCoding::Fixed, Transform::Dct, StepRule::Sign, false) => CONFIG_VERSION_WITH_OVERRIDES,
        };
        let step_byte = version >= CONFIG_VERSION_WITH_STEP_RULE;
        out.extend_from_slice(&version.to_le_bytes());
        let tensors = self.layout.tensors();
        // Layout::new bounds the count, name lengths and ranks far below u32::MAX.
        out.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
        for t in tensors {
            out.extend_from_slice(&(t.name.len() as u32).to_le_bytes());
            out.extend_from_slice(t.name.as_bytes());
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        out.extend_from_slice(&h.compression.chunk_size.to_le_bytes());
        out.extend_from_slice(&h.compression.topk.to_le_bytes());
        out.push(h.compression.values.code());
        h.compression.write_overrides(&mut out, step_byte);
        if version >= CONFIG_VERSION_WITH_TRANSFORM {
            out.push(h.compression.transform.code());
        }
        if version >= CONFIG_VERSION_WITH_INDEX_CODING {
            out.push(h.compression.indices.code());
        }
        match h.schedule {
            Schedule::Constant { lr } => {
                out.push(0);
                ratio(&mut out, lr);
            }
            Schedule::WarmupCosine { peak, min, warmup_rounds, total_rounds } => {
                out.push(1);
                ratio(&mut out, peak);
                ratio(&mut out, min);
                out.extend_from_slice(&warmup_rounds.to_le_bytes());
                out.extend_from_slice(&total_rounds.to_le_bytes());
            }
            Schedule::WarmupStableDecay { peak, min, warmup_rounds, decay_start, total_rounds } => {
                out.push(2);
                ratio(&mut out, peak);
                ratio(&mut out, min);
                for n in [warmup_rounds, decay_start, total_rounds] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        ratio(&mut out, h.weight_decay);
        out.push(match h.clip {
            NormClip::Off => 0,
            NormClip::Median => 1,
        });
        if step_byte {
            out.push(match h.step {
                StepRule::Sign => 0,
                StepRule::Linear => 1,
            });
        }
        out.extend_from_slice(&self.rounds.min_contributions.to_le_bytes());
        out.extend_from_slice(&self.rounds.max_contributions.to_le_bytes());
        out.extend_from_slice(&self.exclusion.min_score.to_le_bytes());
        out.extend_from_slice(&self.exclusion.max_failures.to_le_bytes());
        if version >= CONFIG_VERSION_WITH_RELATIVE_SCORE {
            out.push(self.exclusion.min_pct_of_median);
        }
        if version >= CONFIG_VERSION_WITH_OVERLAP {
            out.push(1);
        }
        out.extend_from_slice(&(self.extra.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.extra);
        if out.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLong { field: "config", len: out.len() as u64, max: MAX_CONFIG_BYTES }.into());
        }
        Ok(out)
    }

    /// Decodes and checks canonical bytes. Every failure is a typed rejection; no input panics.
    pub fn decode(bytes: &[u8]) -> Result<RunConfig, VerifyError> {
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLong { field: "config", len: bytes.len() as u64, max: MAX_CONFIG_BYTES }.into());
        }
        let mut r = Reader { bytes, pos: 0 };
        if r.array::<8>("magic")? != CONFIG_MAGIC {
            return Err(ConfigError::BadMagic.into());
        }
        let version = r.u16("version")?;
        if !(CONFIG_VERSION..=CONFIG_VERSION_WITH_OVERLAP).contains(&version) {
            return Err(ConfigError::UnsupportedVersion(version).into());
        }
        let layout = decode_layout(&mut r)?;
        let chunk_size = r.u16("chunk size")?;
        let topk = r.u16("top-k")?;
        let code = r.u8("value encoding")?;
        let values =
            ValueEncoding::from_code(code).ok_or(ConfigError::UnknownTag { field: "value encoding", tag: code })?;
        let mut compression = Compression::uniform(chunk_size, topk, values);
        if version != CONFIG_VERSION {
            let n = r.u8("top-k override count")?;
            let least = u8::from(version == CONFIG_VERSION_WITH_OVERRIDES);
            if n < least || usize::from(n) > MAX_TOPK_OVERRIDES {
                return Err(ConfigError::Invalid(format!("{n} top-k overrides in a version {version} config")).into());
            }
            let mut list = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                list.push(TopkOverride { tensor: r.u32("override tensor")?, topk: r.u16("override top-k")? });
            }
            compression.overrides = TopkOverrides::new(&list)?;
        }
        if version >= CONFIG_VERSION_WITH_TRANSFORM {
            let code = r.u8("transform")?;
            compression.transform =
                Transform::from_code(code).ok_or(ConfigError::UnknownTag { field: "transform", tag: code })?;
        }
        if version >= CONFIG_VERSION_WITH_INDEX_CODING {
            let code = r.u8("index coding")?;
            compression.indices =
                IndexCoding::from_code(code).ok_or(ConfigError::UnknownTag { field: "index coding", tag: code })?;
        }
        let schedule = match r.u8("schedule")? {
            0 => Schedule::Constant { lr: r.ratio("learning rate")? },
            1 => Schedule::WarmupCosine {
                peak: r.ratio("peak learning rate")?,
                min: r.ratio("min learning rate")?,
                warmup_rounds: r.u64("warmup rounds")?,
                total_rounds: r.u64("total rounds")?,
            },
            2 => Schedule::WarmupStableDecay {
                peak: r.ratio("peak learning rate")?,
                min: r.ratio("min learning rate")?,
                warmup_rounds: r.u64("warmup rounds")?,
                decay_start: r.u64("decay start")?,
                total_rounds: r.u64("total rounds")?,
            },
            tag => return Err(ConfigError::UnknownTag { field: "schedule", tag }.into()),
        };
        let weight_decay = r.ratio("weight decay")?;
        let clip = match r.u8("clip")? {
            0 => NormClip::Off,
            1 => NormClip::Median,
            tag => return Err(ConfigError::UnknownTag { field: "clip", tag }.into()),
        };
        let step = match version {
            CONFIG_VERSION_WITH_STEP_RULE
            | CONFIG_VERSION_WITH_TRANSFORM
            | CONFIG_VERSION_WITH_INDEX_CODING
            | CONFIG_VERSION_WITH_RELATIVE_SCORE
            | CONFIG_VERSION_WITH_OVERLAP => match r.u8("step rule")? {
                0 => StepRule::Sign,
                1 => StepRule::Linear,
                tag => return Err(ConfigError::UnknownTag { field: "step rule", tag }.into()),
            },
            _ => StepRule::Sign,
        };
        let mut rounds = RoundRules {
            min_contributions: r.u32("min contributions")?,
            max_contributions: r.u32("max")?,
            overlap: false,
        };
        let mut exclusion = ExclusionRules::absolute(r.i64("min score")?, r.u32("max failures")?);
        if version >= CONFIG_VERSION_WITH_RELATIVE_SCORE {
            exclusion.min_pct_of_median = r.u8("min percent of the median")?;
        }
        if version >= CONFIG_VERSION_WITH_OVERLAP {
            rounds.overlap = match r.u8("overlap")? {
                1 => true,
                tag => return Err(ConfigError::UnknownTag { field: "overlap", tag }.into()),
            };
        }
        let extra_len = r.u32("extra length")?;
        if extra_len > MAX_EXTRA_BYTES {
            return Err(
                ConfigError::TooLong { field: "extra", len: extra_len.into(), max: MAX_EXTRA_BYTES.into() }.into()
            );
        }
        let extra = r.take(extra_len as usize, "extra")?.to_vec();
        if r.pos != bytes.len() {
            return Err(ConfigError::TrailingBytes { extra: (bytes.len() - r.pos) as u64 }.into());
        }
        let config = RunConfig {
            layout,
            hyper: Hyper { compression, schedule, weight_decay, clip, step },
            rounds,
            exclusion,
            extra,
        };
        config.validate()?;
        // Every field above is read in its one encoding, so this holds; it guards the pair.
        if config.encode()? != bytes {
            return Err(ConfigError::NotCanonical("does not re-encode to the same bytes").into());
        }
        Ok(config)
    }
}

fn ratio(out: &mut Vec<u8>, r: Ratio) {
    out.extend_from_slice(&r.num.to_le_bytes());
    out.extend_from_slice(&r.den.to_le_bytes());
}

fn decode_layout(r: &mut Reader<'_>) -> Result<Layout, VerifyError> {
    let count = r.u32("tensor count")?;
    if count as usize > MAX_TENSORS {
        return Err(ConfigError::TooLong { field: "tensors", len: count.into(), max: MAX_TENSORS as u64 }.into());
    }
    let mut tensors: Vec<TensorSpec> = Vec::new();
    for _ in 0..count {
        let len = r.u32("name length")?;
        if len as usize > MAX_NAME_BYTES {
            return Err(
                ConfigError::TooLong { field: "tensor name", len: len.into(), max: MAX_NAME_BYTES as u64 }.into()
            );
        }
        let name = std::str::from_utf8(r.take(len as usize, "tensor name")?)
            .map_err(|_| ConfigError::NotCanonical("tensor name is not UTF-8"))?
            .to_string();
        if let Some(prev) = tensors.last()
            && prev.name.as_bytes() >= name.as_bytes()
        {
            return Err(ConfigError::NotCanonical("tensor names not strictly ascending").into());
        }
        let rank = r.u32("rank")?;
        if rank as usize > MAX_RANK {
            return Err(ConfigError::TooLong { field: "rank", len: rank.into(), max: MAX_RANK as u64 }.into());
        }
        let mut shape = Vec::with_capacity(rank as usize);
        for _ in 0..rank {
            shape.push(r.u64("dimension")?);
        }
        tensors.push(TensorSpec { name, shape });
    }
    Layout::new(tensors)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ConfigError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(ConfigError::Truncated { field })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ConfigError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ConfigError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ConfigError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ConfigError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ConfigError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, ConfigError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    fn ratio(&mut self, field: &'static str) -> Result<Ratio, ConfigError> {
        Ok(Ratio { num: self.u64(field)?, den: self.u64(field)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunConfig {
        RunConfig {
            layout: Layout::new(vec![
                TensorSpec { name: "w".into(), shape: vec![4, 6] },
                TensorSpec { name: "b".into(), shape: vec![6] },
            ])
            .unwrap(),
            hyper: Hyper {
                compression: Compression::uniform(64, 8, ValueEncoding::Sign),
                schedule: Schedule::Constant { lr: Ratio::new(1, 100) },
                weight_decay: Ratio::new(1, 10),
                clip: NormClip::Median,
                step: crate::StepRule::Sign,
            },
            rounds: RoundRules { min_contributions: 1, max_contributions: 16, overlap: false },
            exclusion: ExclusionRules::absolute(0, 3),
            extra: b"preset=tiny".to_vec(),
        }
    }

    #[test]
    fn round_trips_and_starts_with_magic() {
        let c = config();
        let bytes = c.encode().unwrap();
        assert_eq!(&bytes[..8], b"CAIRNCFG");
        assert_eq!(RunConfig::decode(&bytes).unwrap(), c);
    }

    #[test]
    fn typed_rejections() {
        let bytes = config().encode().unwrap();
        let err = |b: &[u8]| match RunConfig::decode(b) {
            Err(VerifyError::Config(e)) => e,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(err(&bytes[..bytes.len() - 1]), ConfigError::Truncated { field: "extra" });
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(err(&long), ConfigError::TrailingBytes { extra: 1 });
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert_eq!(err(&magic), ConfigError::BadMagic);
        let mut version = bytes.clone();
        version[8] = 8;
        assert_eq!(err(&version), ConfigError::UnsupportedVersion(8));
        // tensors are "b" then "w": swap the one-byte names to make the list unsorted
        let mut unsorted = bytes.clone();
        let b_at = bytes.windows(5).position(|w| w == [1, 0, 0, 0, b'b']).unwrap() + 4;
        let w_at = bytes.windows(5).position(|w| w == [1, 0, 0, 0, b'w']).unwrap() + 4;
        unsorted.swap(b_at, w_at);
        assert!(matches!(err(&unsorted), ConfigError::NotCanonical(_)));
        let mut no_max = config();
        no_max.rounds.max_contributions = 0;
        assert!(matches!(no_max.encode(), Err(VerifyError::Config(ConfigError::Invalid(_)))));
        let mut huge = config();
        huge.extra = vec![0; MAX_EXTRA_BYTES as usize + 1];
        assert!(matches!(huge.encode(), Err(VerifyError::Config(ConfigError::TooLong { field: "extra", .. }))));
        assert!(matches!(RunConfig::decode(&vec![0; 200_000]), Err(VerifyError::Config(ConfigError::TooLong { .. }))));
    }

    #[test]
    fn a_linear_step_rule_is_version_3_and_has_one_encoding() {
        let mut linear = config();
        linear.hyper.compression.values = ValueEncoding::TwoBit;
        linear.hyper.step = StepRule::Linear;
        let bytes = linear.encode().unwrap();
        assert_eq!(bytes[8..10], [3, 0]);
        assert_eq!(RunConfig::decode(&bytes).unwrap(), linear);
        // two bytes longer than the same config at the sign rule (v1): the override count 0 after
        // the value encoding, and the step rule after the clip byte
        let mut sign = linear.clone();
        sign.hyper.step = StepRule::Sign;
        let sign_bytes = sign.encode().unwrap();
        assert_eq!(sign_bytes[8..10], [1, 0]);
        assert_eq!(bytes.len(), sign_bytes.len() + 2);
        // the step byte at 0 (sign) in a v3 config is not canonical: a sign run is v1 or v2
        // after the step byte: u32 min, u32 max, i64 min score, u32 max failures, u32 extra length, extra
        let step_at = bytes.len() - linear.extra.len() - 4 - 4 - 8 - 4 - 4 - 1;
        assert_eq!(bytes[step_at], 1);
        let mut zero = bytes.clone();
        zero[step_at] = 0;
        assert!(matches!(RunConfig::decode(&zero), Err(VerifyError::Config(ConfigError::NotCanonical(_)))));
        let mut unknown = bytes.clone();
        unknown[step_at] = 2;
        assert_eq!(
            RunConfig::decode(&unknown),
            Err(VerifyError::Config(ConfigError::UnknownTag { field: "step rule", tag: 2 }))
        );
        // the linear rule with sign values is refused on both sides
        let mut bad = linear.clone();
        bad.hyper.compression.values = ValueEncoding::Sign;
        assert!(bad.encode().is_err());
        let mut bad_bytes = bytes.clone();
        let code_at = bytes.windows(5).position(|w| w == [64, 0, 8, 0, 3]).unwrap() + 4;
        bad_bytes[code_at] = 0;
        assert!(RunConfig::decode(&bad_bytes).is_err());
    }
}
