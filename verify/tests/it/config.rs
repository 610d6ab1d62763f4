//! Run config: encode/decode round trips, and nothing but the canonical bytes decodes.

use proptest::prelude::*;
use verify::config::{ExclusionRules, MAX_EXTRA_BYTES, RoundRules};
use verify::{
    Compression, ConfigError, Hyper, IndexCoding, Layout, NormClip, Ratio, RunConfig, Schedule, StepRule, TensorSpec,
    Transform, ValueEncoding, VerifyError,
};

fn ratio() -> impl Strategy<Value = Ratio> {
    (any::<u64>(), 1u64..).prop_map(|(num, den)| Ratio::new(num, den))
}

fn config_strategy() -> impl Strategy<Value = RunConfig> {
    let tensor = ("[a-z][a-z0-9._]{0,12}", prop::collection::vec(1u64..=64, 0..=4));
    let layout = prop::collection::btree_map(tensor.0, tensor.1, 1..=6)
        .prop_map(|m| Layout::new(m.into_iter().map(|(name, shape)| TensorSpec { name, shape }).collect()).unwrap());
    let schedule = prop_oneof![
        ratio().prop_map(|lr| Schedule::Constant { lr }),
        (ratio(), ratio(), any::<u64>(), any::<u64>()).prop_map(|(peak, min, warmup_rounds, total_rounds)| {
            Schedule::WarmupCosine { peak, min, warmup_rounds, total_rounds }
        }),
        (ratio(), ratio(), prop::array::uniform3(any::<u64>())).prop_map(|(peak, min, mut rounds)| {
            rounds.sort_unstable();
            let [warmup_rounds, decay_start, total_rounds] = rounds;
            Schedule::WarmupStableDecay { peak, min, warmup_rounds, decay_start, total_rounds }
        }),
    ];
    let hyper = (1u16..=256, 1u16..=256, 0u8..4, schedule, ratio(), any::<bool>(), any::<bool>(), 0u8..2, 0u8..2)
        .prop_map(|(chunk_size, topk, code, schedule, weight_decay, median, linear, transform, indices)| {
            let values = ValueEncoding::from_code(code).unwrap();
            Hyper {
                compression: Compression {
                    transform: Transform::from_code(transform).unwrap(),
                    indices: IndexCoding::from_code(indices).unwrap(),
                    ..Compression::uniform(chunk_size, topk, values)
                },
                schedule,
                weight_decay,
                clip: if median { NormClip::Median } else { NormClip::Off },
                // the linear rule needs values with a magnitude
                step: if linear && values != ValueEncoding::Sign { StepRule::Linear } else { StepRule::Sign },
            }
        });
    let rounds = (1u32..=4096, any::<bool>()).prop_flat_map(|(max, overlap)| {
        (0..=max).prop_map(move |min| RoundRules { min_contributions: min, max_contributions: max, overlap })
    });
    // a relative threshold in half the cases
    let pct = prop_oneof![Just(0u8), 1u8..=100];
    let exclusion = (any::<i64>(), any::<u32>(), pct).prop_map(|(min_score, max_failures, min_pct_of_median)| {
        ExclusionRules { min_score, max_failures, min_pct_of_median }
    });
    (layout, hyper, rounds, exclusion, prop::collection::vec(any::<u8>(), 0..64))
        .prop_map(|(layout, hyper, rounds, exclusion, extra)| RunConfig { layout, hyper, rounds, exclusion, extra })
}

proptest! {
    #[test]
    fn config_round_trips(config in config_strategy()) {
        let bytes = config.encode().unwrap();
        prop_assert_eq!(RunConfig::decode(&bytes).unwrap(), config);
    }

    /// Any change of one byte is refused, or decodes to a different config whose canonical bytes are
    /// exactly the changed ones (so no config has two encodings).
    #[test]
    fn a_changed_byte_is_refused_or_another_config(config in config_strategy(), at in any::<prop::sample::Index>(), x in 1u8..) {
        let bytes = config.encode().unwrap();
        let mut changed = bytes.clone();
        let i = at.index(bytes.len());
        changed[i] ^= x;
        if let Ok(other) = RunConfig::decode(&changed) {
            prop_assert_ne!(&other, &config);
            prop_assert_eq!(other.encode().unwrap(), changed);
        }
    }

    #[test]
    fn truncated_or_extended_is_refused(config in config_strategy(), cut in any::<prop::sample::Index>(), tail in 1u8..) {
        let bytes = config.encode().unwrap();
        let n = cut.index(bytes.len());
        prop_assert!(RunConfig::decode(&bytes[..n]).is_err());
        let mut longer = bytes.clone();
        longer.push(tail);
        prop_assert_eq!(RunConfig::decode(&longer), Err(VerifyError::Config(ConfigError::TrailingBytes { extra: 1 })));
    }
}

/// A one-tensor version 1 config: a sign-rule DCT run without overrides or a relative threshold.
fn one_tensor_config() -> RunConfig {
    RunConfig {
        layout: Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![2, 2] }]).unwrap(),
        hyper: Hyper {
            compression: Compression::uniform(64, 4, ValueEncoding::Sign),
            schedule: Schedule::Constant { lr: Ratio::new(1, 1000) },
            weight_decay: Ratio::new(0, 1),
            clip: NormClip::Off,
            step: verify::StepRule::Sign,
        },
        rounds: RoundRules { min_contributions: 0, max_contributions: 1, overlap: false },
        exclusion: ExclusionRules::absolute(-5, 0),
        extra: vec![],
    }
}

#[test]
fn zero_denominator_and_unknown_tags_are_refused() {
    let config = one_tensor_config();
    let bytes = config.encode().unwrap();
    // layout: 10 + 4 + (4 + 1 + 4 + 16) = 39; then chunk 2, top-k 2, encoding 1 at 43, schedule tag at 44
    assert_eq!(bytes[43], 0);
    let mut bad_encoding = bytes.clone();
    bad_encoding[43] = 4;
    assert_eq!(
        RunConfig::decode(&bad_encoding),
        Err(VerifyError::Config(ConfigError::UnknownTag { field: "value encoding", tag: 4 }))
    );
    let mut bad_schedule = bytes.clone();
    bad_schedule[44] = 3;
    assert_eq!(
        RunConfig::decode(&bad_schedule),
        Err(VerifyError::Config(ConfigError::UnknownTag { field: "schedule", tag: 3 }))
    );
    // lr den: bytes 53..61
    let mut zero_den = bytes.clone();
    zero_den[53..61].fill(0);
    assert!(matches!(RunConfig::decode(&zero_den), Err(VerifyError::InvalidHyper(_))));
    let mut extra_len = bytes.clone();
    let n = extra_len.len();
    extra_len[n - 4..].copy_from_slice(&(MAX_EXTRA_BYTES + 1).to_le_bytes());
    assert!(matches!(
        RunConfig::decode(&extra_len),
        Err(VerifyError::Config(ConfigError::TooLong { field: "extra", .. }))
    ));
    // warm-up-stable-decay: the rounds must be in order, in a config written or read
    let wsd = |decay_start| Schedule::WarmupStableDecay {
        peak: Ratio::new(1, 1000),
        min: Ratio::new(0, 1),
        warmup_rounds: 10,
        decay_start,
        total_rounds: 100,
    };
    let mut staged = config.clone();
    staged.hyper.schedule = wsd(50);
    let staged_bytes = staged.encode().unwrap();
    assert_eq!(RunConfig::decode(&staged_bytes).unwrap(), staged);
    staged.hyper.schedule = wsd(5);
    assert!(matches!(staged.encode(), Err(VerifyError::InvalidHyper(_))));
    // tag 44, peak 45..61, min 61..77, warm-up 77..85, decay start 85..93
    let mut early = staged_bytes.clone();
    early[85..93].copy_from_slice(&5u64.to_le_bytes());
    assert!(matches!(RunConfig::decode(&early), Err(VerifyError::InvalidHyper(_))));
    // min above max
    let mut rounds = config.clone();
    rounds.rounds = RoundRules { min_contributions: 2, max_contributions: 1, overlap: false };
    assert!(matches!(rounds.encode(), Err(VerifyError::Config(ConfigError::Invalid(_)))));
}

/// The relative threshold's version and byte: a config with one is version 6 with the percent
/// right after `max failures`; 0 is never written in that version, and above 100 is refused.
#[test]
fn a_relative_threshold_is_version_6_with_one_byte_after_max_failures() {
    let mut config = one_tensor_config();
    let plain = config.encode().unwrap();
    assert_eq!(plain[8..10], 1u16.to_le_bytes());
    config.exclusion.min_pct_of_median = 25;
    let relative = config.encode().unwrap();
    assert_eq!(relative[8..10], 6u16.to_le_bytes());
    // v6 adds the override count, transform, index coding and step rule bytes (4) and the
    // percent (1); the percent is the byte before the 4-byte extra length
    assert_eq!(relative.len(), plain.len() + 5);
    let at = relative.len() - 5;
    assert_eq!(relative[at], 25);
    assert_eq!(relative[at - 4..at], 0u32.to_le_bytes());
    assert_eq!(RunConfig::decode(&relative).unwrap(), config);
    let mut zero = relative.clone();
    zero[at] = 0;
    assert!(matches!(RunConfig::decode(&zero), Err(VerifyError::Config(ConfigError::NotCanonical(_)))));
    let mut too_big = relative.clone();
    too_big[at] = 101;
    assert!(matches!(RunConfig::decode(&too_big), Err(VerifyError::Config(ConfigError::Invalid(_)))));
    config.exclusion.min_pct_of_median = 101;
    assert!(config.encode().is_err());
}

/// Overlapping rounds: version 7, with the percent (0 allowed there) and then one byte 1 after
/// `max failures`; any other value of that byte is refused.
#[test]
fn overlapping_rounds_are_version_7_with_one_byte_after_the_percent() {
    let mut config = one_tensor_config();
    let plain = config.encode().unwrap();
    config.rounds.overlap = true;
    let overlapping = config.encode().unwrap();
    assert_eq!(overlapping[8..10], 7u16.to_le_bytes());
    // v7 adds the override count, transform, index coding and step rule bytes (4), the percent
    // (1) and the overlap byte (1), which sits just before the 4-byte extra length
    assert_eq!(overlapping.len(), plain.len() + 6);
    let at = overlapping.len() - 5;
    assert_eq!(overlapping[at - 1..=at], [0, 1]);
    assert_eq!(RunConfig::decode(&overlapping).unwrap(), config);
    for bad in [0u8, 2, 255] {
        let mut other = overlapping.clone();
        other[at] = bad;
        assert!(
            matches!(
                RunConfig::decode(&other),
                Err(VerifyError::Config(ConfigError::UnknownTag { field: "overlap", .. }))
            ),
            "{bad}"
        );
    }
    // With a relative threshold too: both bytes.
    config.exclusion.min_pct_of_median = 25;
    let both = config.encode().unwrap();
    assert_eq!(both[at - 1..=at], [25, 1]);
    assert_eq!(RunConfig::decode(&both).unwrap(), config);
}

/// The threshold by hand: the lower median of the validator's scores, times the percent, floored,
/// and never below `min_score`; nothing relative when the median is not positive.
#[test]
fn the_relative_threshold_is_a_share_of_the_lower_median() {
    let rules = ExclusionRules { min_score: -20, max_failures: 3, min_pct_of_median: 25 };
    // sorted 0, 4, 90, 100, 130, 200: lower median (index 2) = 90; 90 * 25 / 100 = 22.5 -> 22
    assert_eq!(rules.threshold(&[100, 0, 130, 90, 4, 200]), 22);
    // odd count: sorted 1, 50, 70 -> 50 * 25 / 100 = 12.5 -> 12
    assert_eq!(rules.threshold(&[70, 1, 50]), 12);
    // a single score: its own share, so it never fails itself when positive
    assert_eq!(rules.threshold(&[7]), 1);
    // median 0 or below: only min_score
    assert_eq!(rules.threshold(&[-50, 0, 300]), -20);
    assert_eq!(rules.threshold(&[]), -20);
    // min_score above the relative share wins
    assert_eq!(ExclusionRules { min_score: 40, ..rules }.threshold(&[100, 100, 100]), 40);
    // no relative threshold at 0 percent
    assert_eq!(ExclusionRules::absolute(-20, 3).threshold(&[100, 100, 100]), -20);
    // no overflow at the extreme: i64::MAX * 100 / 100
    assert_eq!(ExclusionRules { min_pct_of_median: 100, ..rules }.threshold(&[i64::MAX]), i64::MAX);
}
