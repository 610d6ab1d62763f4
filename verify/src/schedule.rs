//! Learning-rate schedule: exact rationals in the run config, one portable f64 evaluation per round.
//!
//! ```text
//!   Constant:        lr(r) = lr
//!   WarmupCosine:    r <  warmup:  lr(r) = peak * ((r + 1) / warmup)
//!                    r >= warmup:  p     = min(r - warmup, decay) / decay,   decay = total - warmup
//!                                  lr(r) = min + (peak - min) * (0.5 * (1 + cos(pi * p)))
//!                                  (decay = 0: lr(r) = min)
//!   WarmupStableDecay (warm-up, then the peak until `decay_start`, then linear to `min` at `total`):
//!                    r <  warmup:       lr(r) = peak * ((r + 1) / warmup)
//!                    r <  decay_start:  lr(r) = peak
//!                    else:              span  = total - decay_start   (span = 0: lr(r) = min)
//!                                       q     = (span - min(r - decay_start, span)) / span
//!                                       lr(r) = min + (peak - min) * q
//! ```
//!
//! Every operation is an f64 IEEE operation written out one at a time, `cos` is the `libm` crate's,
//! and the result is rounded once to f32. Same bits on every machine.

use crate::error::VerifyError;
use crate::id::Round;

/// An exact non-negative rational `num / den` (consensus configs hold no floats).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ratio {
    /// Numerator.
    pub num: u64,
    /// Denominator (non-zero).
    pub den: u64,
}

impl Ratio {
    /// `num / den`.
    pub const fn new(num: u64, den: u64) -> Ratio {
        Ratio { num, den }
    }

    /// Checks the denominator.
    pub fn validate(&self) -> Result<(), VerifyError> {
        if self.den == 0 {
            return Err(VerifyError::InvalidHyper("ratio with a zero denominator".into()));
        }
        Ok(())
    }

    /// The value, as one IEEE division of the two integers converted to f64 (round to nearest).
    pub fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// A learning-rate schedule over rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// The same rate every round.
    Constant {
        /// The rate.
        lr: Ratio,
    },
    /// Linear warm-up to `peak` over `warmup_rounds`, then cosine decay to `min` at `total_rounds`.
    WarmupCosine {
        /// Rate at the end of warm-up.
        peak: Ratio,
        /// Rate at and after `total_rounds`.
        min: Ratio,
        /// Rounds of linear warm-up.
        warmup_rounds: u64,
        /// Round at which the decay ends.
        total_rounds: u64,
    },
    /// Linear warm-up to `peak` over `warmup_rounds`, the peak until `decay_start`, then a linear
    /// decay to `min` at `total_rounds` (warm-up, stable, decay: the decay can be placed late, once a
    /// run's length is settled, and the stable phase makes the most of a high rate). With `min`
    /// above `peak` the same formula rises instead (an outer rate that grows while local steps
    /// decay).
    WarmupStableDecay {
        /// Rate from the end of warm-up to `decay_start`.
        peak: Ratio,
        /// Rate at and after `total_rounds`.
        min: Ratio,
        /// Rounds of linear warm-up.
        warmup_rounds: u64,
        /// First round of the decay (at least `warmup_rounds`).
        decay_start: u64,
        /// Round at which the decay ends (at least `decay_start`).
        total_rounds: u64,
    },
}

impl Schedule {
    /// Checks the ratios.
    pub fn validate(&self) -> Result<(), VerifyError> {
        match self {
            Schedule::Constant { lr } => lr.validate(),
            Schedule::WarmupCosine { peak, min, .. } => {
                peak.validate()?;
                min.validate()
            }
            Schedule::WarmupStableDecay { peak, min, warmup_rounds, decay_start, total_rounds } => {
                peak.validate()?;
                min.validate()?;
                if !(warmup_rounds <= decay_start && decay_start <= total_rounds) {
                    return Err(VerifyError::InvalidHyper(format!(
                        "warm-up-stable-decay rounds out of order: warm-up {warmup_rounds}, decay start {decay_start}, total {total_rounds}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// The rate of `round`, in f64.
    pub fn lr_f64(&self, round: Round) -> f64 {
        let r = round.0;
        match *self {
            Schedule::Constant { lr } => lr.to_f64(),
            Schedule::WarmupCosine { peak, min, warmup_rounds, total_rounds } => {
                let (peak, min) = (peak.to_f64(), min.to_f64());
                if r < warmup_rounds {
                    let frac = (r + 1) as f64 / warmup_rounds as f64;
                    return peak * frac;
                }
                let decay = total_rounds.saturating_sub(warmup_rounds);
                if decay == 0 {
                    return min;
                }
                let done = (r - warmup_rounds).min(decay);
                let p = done as f64 / decay as f64;
                let c = libm::cos(core::f64::consts::PI * p);
                let half = 0.5 * (1.0 + c);
                min + (peak - min) * half
            }
            Schedule::WarmupStableDecay { peak, min, warmup_rounds, decay_start, total_rounds } => {
                let (peak, min) = (peak.to_f64(), min.to_f64());
                if r < warmup_rounds {
                    let frac = (r + 1) as f64 / warmup_rounds as f64;
                    return peak * frac;
                }
                if r < decay_start {
                    return peak;
                }
                let span = total_rounds.saturating_sub(decay_start);
                if span == 0 {
                    return min;
                }
                let left = span - (r - decay_start).min(span);
                let q = left as f64 / span as f64;
                min + (peak - min) * q
            }
        }
    }

    /// The rate of `round`, rounded once to f32 (what aggregation uses).
    pub fn lr(&self, round: Round) -> f32 {
        self.lr_f64(round) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule::WarmupCosine {
            peak: Ratio::new(1, 1000),
            min: Ratio::new(1, 10000),
            warmup_rounds: 10,
            total_rounds: 110,
        };
        assert_eq!(s.lr_f64(Round(0)), 0.001 * 0.1);
        assert_eq!(s.lr_f64(Round(9)), 0.001);
        assert_eq!(s.lr_f64(Round(10)), 0.001);
        assert!((s.lr_f64(Round(60)) - 0.00055).abs() < 1e-12);
        assert_eq!(s.lr_f64(Round(110)), 0.0001);
        assert_eq!(s.lr_f64(Round(1_000_000)), 0.0001);
        // Pinned bits: a platform or libm change shows up here.
        assert_eq!(s.lr(Round(37)).to_bits(), 979_251_411);
    }

    #[test]
    fn warmup_stable_then_linear_decay() {
        let wsd = |warmup_rounds, decay_start, total_rounds| Schedule::WarmupStableDecay {
            peak: Ratio::new(1, 1000),
            min: Ratio::new(1, 10000),
            warmup_rounds,
            decay_start,
            total_rounds,
        };
        let s = wsd(4, 100, 120);
        assert!(s.validate().is_ok());
        assert_eq!(s.lr_f64(Round(0)), 0.001 * 0.25);
        assert_eq!(s.lr_f64(Round(3)), 0.001);
        assert_eq!(s.lr_f64(Round(4)), 0.001);
        assert_eq!(s.lr_f64(Round(99)), 0.001);
        assert_eq!(s.lr_f64(Round(100)), 0.001);
        assert!((s.lr_f64(Round(110)) - 0.00055).abs() < 1e-12);
        assert!(s.lr_f64(Round(111)) < s.lr_f64(Round(110)));
        assert_eq!(s.lr_f64(Round(120)), 0.0001);
        assert_eq!(s.lr_f64(Round(u64::MAX)), 0.0001);
        // Pinned bits.
        assert_eq!(s.lr(Round(117)).to_bits(), 0.000_235_f32.to_bits());
        // a decay with no span is the floor at once; rounds out of order are refused
        let sharp = wsd(4, 120, 120);
        assert_eq!(sharp.lr_f64(Round(119)), 0.001);
        assert_eq!(sharp.lr_f64(Round(120)), 0.0001);
        for (w, d, t) in [(5, 4, 10), (0, 11, 10)] {
            assert!(matches!(wsd(w, d, t).validate(), Err(VerifyError::InvalidHyper(_))), "{w} {d} {t}");
        }
    }

    #[test]
    fn a_min_above_the_peak_rises_by_the_same_formula() {
        // The outer rate of docs/RUN.md's local-steps block: 3/2 held to round 60, then linear up
        // to 3 at round 120 (`min + (peak - min) * q`, q the share of the span left).
        let s = Schedule::WarmupStableDecay {
            peak: Ratio::new(3, 2),
            min: Ratio::new(3, 1),
            warmup_rounds: 0,
            decay_start: 60,
            total_rounds: 120,
        };
        assert!(s.validate().is_ok());
        assert_eq!(s.lr_f64(Round(0)), 1.5);
        assert_eq!(s.lr_f64(Round(60)), 1.5);
        assert_eq!(s.lr_f64(Round(90)), 2.25);
        assert_eq!(s.lr_f64(Round(120)), 3.0);
        assert_eq!(s.lr_f64(Round(u64::MAX)), 3.0);
        // Round 61: 3 - 1.5 x 59/60 = 1.525, one rounding to f32.
        assert_eq!(s.lr(Round(61)).to_bits(), 1.525_f32.to_bits());
        assert!(s.lr(Round(61)) < s.lr(Round(62)));
    }

    #[test]
    fn zero_denominator_is_rejected() {
        assert!(Schedule::Constant { lr: Ratio::new(1, 0) }.validate().is_err());
        assert!(Schedule::Constant { lr: Ratio::new(1, 3) }.validate().is_ok());
    }
}
