//! The linear step rule against a hostile worker: its step follows the updates' magnitudes, so the
//! median clipping is what bounds one worker's pull (docs/SECURITY.md, row 33).

use verify::{Hyper, NormClip, StepRule, Update, ValueEncoding, Values, aggregate, aggregate::update_norm};

use crate::common::*;

/// The same update with every value multiplied by `factor` (two-bit: the scales).
fn scaled(u: &Update, state: &verify::State, factor: f32) -> Update {
    let parts = u
        .tensors()
        .iter()
        .map(|t| {
            let values = match t.values() {
                Values::TwoBit { scales, q } => {
                    Values::TwoBit { scales: scales.iter().map(|s| s * factor).collect(), q: q.clone() }
                }
                other => panic!("two-bit values expected, got {other:?}"),
            };
            (t.indices().to_vec(), values)
        })
        .collect();
    Update::new(*u.header(), state.layout(), parts).unwrap()
}

/// L2 distance, in f64, between `after` and `before` decayed as the step does (`p * decay`).
fn step_norm(before: &verify::State, after: &verify::State, decay: f32) -> f64 {
    let mut sum = 0.0f64;
    for (b, a) in before.data().iter().flatten().zip(after.data().iter().flatten()) {
        let d = f64::from(*a) - f64::from(*b * decay);
        sum += d * d;
    }
    sum.sqrt()
}

#[test]
fn median_clipping_bounds_a_scaled_worker_under_the_linear_rule() {
    let mut r = rng(5);
    let s0 = random_state(&model_layout(), &mut r, 0.1);
    let comp = compression(ValueEncoding::TwoBit);
    let mut ups = updates(&s0, comp, 3, &mut r);
    // the third worker sends its update scaled 1000 times (scale 1000 x 0.01 / 3 stays far below
    // the decoder's bound of 16384)
    ups[2] = scaled(&ups[2], &s0, 1000.0);
    let median = {
        let mut norms: Vec<f64> = ups.iter().map(update_norm).collect();
        norms.sort_by(f64::total_cmp);
        norms[1]
    };
    let h = |clip| Hyper { step: StepRule::Linear, ..hyper(comp, clip) };
    let lr = f64::from(h(NormClip::Median).schedule.lr(ROUND));
    let decay = 1.0f32 - h(NormClip::Median).schedule.lr(ROUND) * (h(NormClip::Median).weight_decay.to_f64() as f32);
    // Arithmetic, not the code under test: each clipped update has a norm of at most the median, the
    // mean of three has at most that norm, and the orthonormal inverse DCT keeps it; the step is lr
    // times it (plus f32 rounding of the parameters, far below 1e-3 of it here).
    let clipped = step_norm(&s0, &aggregate(&s0, ROUND, &ups, &h(NormClip::Median)).unwrap(), decay);
    assert!(clipped <= lr * median * 1.001, "clipped step {clipped} above lr x median {}", lr * median);
    // Without clipping the same worker moves the state about 1000 / 3 times as far.
    let open = step_norm(&s0, &aggregate(&s0, ROUND, &ups, &h(NormClip::Off)).unwrap(), decay);
    assert!(open > 100.0 * lr * median, "unclipped step {open} vs lr x median {}", lr * median);
}
