//! The step of a sign round (`verify::step`): a golden vector worked out by hand, the step of real
//! aggregations reproducing them bit for bit, and every way a peer's step bytes can be wrong.

use verify::step::{RoundStep, STEP_HEADER_BYTES, STEP_MAGIC, StepError};
use verify::{Hyper, Layout, NormClip, Ratio, Round, Schedule, State, StepRule, ValueEncoding, aggregate};

use crate::common::*;

/// lr 1/100, weight decay 1/10 (so `decay = 1 - 0.01 * 0.1` in f32), the sign rule.
fn golden_hyper() -> Hyper {
    Hyper {
        schedule: Schedule::Constant { lr: Ratio::new(1, 100) },
        weight_decay: Ratio::new(1, 10),
        ..hyper(compression(ValueEncoding::Sign), NormClip::Off)
    }
}

#[test]
fn a_golden_step_packs_five_trits_a_byte_and_reproduces_the_state() {
    let layout = Layout::new(vec![spec("a", &[3]), spec("b", &[2, 2])]).unwrap();
    let before = State::from_parts(layout.clone(), vec![vec![0.5, -1.25, 3.0], vec![-0.0, 2.0, -7.5, 0.1]]).unwrap();
    // The trits s, and the state after by the formula of docs/FORMAT.md section 5 written out here:
    // (p * decay) - (lr * s), each operation rounded to f32.
    let s: [f32; 7] = [1.0, 0.0, -1.0, -1.0, 1.0, 0.0, 1.0];
    let (lr, decay) = (0.01f32, 1.0f32 - 0.01f32 * 0.1f32);
    let flat: Vec<f32> = before.data().concat();
    let after_flat: Vec<f32> = flat.iter().zip(s).map(|(&p, s)| p * decay - lr * s).collect();
    let after = State::from_parts(layout.clone(), vec![after_flat[..3].to_vec(), after_flat[3..].to_vec()]).unwrap();
    // The order of the operations matters: decaying after the step gives other bits somewhere.
    let wrong_order: Vec<f32> = flat.iter().zip(s).map(|(&p, s)| (p - lr * s) * decay).collect();
    assert!(wrong_order.iter().zip(&after_flat).any(|(a, b)| a.to_bits() != b.to_bits()));

    let step = RoundStep::derive(&before, &after, Round(4), &golden_hyper()).unwrap();
    let bytes = step.encode();
    // digits d = s + 1 = [2, 1, 0, 0, 2 | 1, 2] and three padding digits of 1:
    // 2 + 3*1 + 9*0 + 27*0 + 81*2 = 167;  1 + 3*2 + 9*1 + 27*1 + 81*1 = 124.
    let mut want = Vec::new();
    want.extend_from_slice(b"cairnstp");
    want.extend_from_slice(&1u16.to_le_bytes());
    want.extend_from_slice(&4u64.to_le_bytes());
    want.extend_from_slice(&7u64.to_le_bytes());
    want.extend_from_slice(&before.hash().0);
    want.extend_from_slice(&after.hash().0);
    want.extend_from_slice(&[167, 124]);
    assert_eq!(bytes, want);
    assert_eq!(bytes.len(), STEP_HEADER_BYTES + 2);
    let read = RoundStep::decode(&bytes, &layout).unwrap();
    assert_eq!(read, step);
    let applied = read.apply(&before, Round(4), &golden_hyper()).unwrap();
    let bits = |st: &State| st.data().concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&applied), bits(&after));
    assert_eq!(applied.hash(), after.hash());
}

#[test]
fn the_step_of_real_aggregations_reproduces_them_bit_for_bit() {
    let layout = model_layout();
    for seed in 0..6u64 {
        let mut r = rng(seed);
        let before = random_state(&layout, &mut r, 1.0);
        let values = [ValueEncoding::Sign, ValueEncoding::Int8][seed as usize % 2];
        let clip = [NormClip::Off, NormClip::Median][seed as usize / 2 % 2];
        let h = hyper(compression(values), clip);
        let ups = updates(&before, compression(values), 1 + seed as u8 % 4, &mut r);
        let after = aggregate(&before, ROUND, &ups, &h).unwrap();
        let step = RoundStep::derive(&before, &after, ROUND, &h).unwrap();
        let bytes = step.encode();
        assert_eq!(bytes.len(), STEP_HEADER_BYTES + (layout.elements() as usize).div_ceil(5));
        let applied = RoundStep::decode(&bytes, &layout).unwrap().apply(&before, ROUND, &h).unwrap();
        assert_eq!(applied.hash(), after.hash(), "seed {seed}");
        // The updates a follower would otherwise download, against the step.
        let update_bytes: usize = ups.iter().map(|u| u.to_bytes().len()).sum();
        assert!(bytes.len() < layout.elements() as usize, "{} bytes for {} parameters", bytes.len(), layout.elements());
        eprintln!("seed {seed}: step {} bytes, {} updates {update_bytes} bytes", bytes.len(), ups.len());
    }
}

#[test]
fn a_step_is_refused_where_it_cannot_reproduce_the_state() {
    let layout = model_layout();
    let mut r = rng(9);
    let before = random_state(&layout, &mut r, 1.0);
    let h = hyper(compression(ValueEncoding::Sign), NormClip::Off);
    let ups = updates(&before, compression(ValueEncoding::Sign), 2, &mut r);
    let after = aggregate(&before, ROUND, &ups, &h).unwrap();
    // The linear rule moves parameters by a magnitude: no step.
    let linear = Hyper { step: StepRule::Linear, ..h };
    assert_eq!(RoundStep::derive(&before, &after, ROUND, &linear), Err(StepError::NotSignRule));
    // A state after that is not one step away, at a known place.
    let mut data = after.data().to_vec();
    data[1][17] += 0.5;
    let off = State::from_parts(layout.clone(), data).unwrap();
    assert_eq!(RoundStep::derive(&before, &off, ROUND, &h), Err(StepError::NotOneStep { tensor: 1, index: 17 }));
    // Another round's rate gives other bits.
    assert!(matches!(RoundStep::derive(&before, &after, Round(ROUND.0 + 500), &h), Err(StepError::NotOneStep { .. })));

    let step = RoundStep::derive(&before, &after, ROUND, &h).unwrap();
    let good = step.encode();
    // Applied to another state, or for another round.
    let other = random_state(&layout, &mut r, 1.0);
    assert!(matches!(step.apply(&other, ROUND, &h), Err(StepError::WrongBase { .. })));
    assert_eq!(
        step.apply(&before, Round(ROUND.0 + 1), &h),
        Err(StepError::WrongRound { expected: ROUND.0 + 1, got: ROUND.0 })
    );
    // One trit changed (a valid byte, another step): applied, it misses the result it claims.
    let mut tampered = good.clone();
    let at = STEP_HEADER_BYTES + 10;
    tampered[at] = if tampered[at] == 121 { 122 } else { 121 };
    let read = RoundStep::decode(&tampered, &layout).unwrap();
    assert!(matches!(read.apply(&before, ROUND, &h), Err(StepError::WrongResult { .. })));

    // The bytes themselves.
    let body = good.len() - STEP_HEADER_BYTES;
    let cases: Vec<(Vec<u8>, StepError)> = vec![
        (good[..good.len() - 1].to_vec(), StepError::WrongLength { len: good.len() - 1, expected: good.len() }),
        ([good.as_slice(), &[0]].concat(), StepError::WrongLength { len: good.len() + 1, expected: good.len() }),
        (Vec::new(), StepError::WrongLength { len: 0, expected: good.len() }),
        ([b"cairnstq".as_slice(), &good[8..]].concat(), StepError::BadMagic),
        ([&STEP_MAGIC[..], &2u16.to_le_bytes(), &good[10..]].concat(), StepError::UnsupportedVersion(2)),
        (
            [&good[..18], &(layout.elements() + 1).to_le_bytes(), &good[26..]].concat(),
            StepError::WrongElements { got: layout.elements() + 1, expected: layout.elements() },
        ),
        (
            [&good[..STEP_HEADER_BYTES + 3], &[243], &good[STEP_HEADER_BYTES + 4..]].concat(),
            StepError::BadTrits { at: 3, byte: 243 },
        ),
    ];
    for (bytes, why) in cases {
        assert_eq!(RoundStep::decode(&bytes, &layout), Err(why));
    }
    // The last byte pads with the zero step: any other padding is refused.
    let tail = layout.elements() % 5;
    assert!(tail > 0, "the layout leaves a partial last byte");
    let mut padded = good.clone();
    let last = padded.len() - 1;
    padded[last] %= 3u8.pow(tail as u32);
    assert_eq!(RoundStep::decode(&padded, &layout), Err(StepError::BadTrits { at: body - 1, byte: padded[last] }));
    // A step of another layout's size.
    let small = Layout::new(vec![spec("a", &[3])]).unwrap();
    assert!(matches!(RoundStep::decode(&good, &small), Err(StepError::WrongLength { .. })));
}

/// A follower's shortcut through a final round (`Replay::apply_step`): the step of each round
/// reaches the state the updates give, with the round rule's counted set; a step to another state,
/// one whose trits were altered under a true header, and one for a round whose quorum attested a
/// wrong hash are refused, and the replay stays where it was.
#[tokio::test]
async fn a_final_round_through_its_step_is_the_round_from_its_updates_and_nothing_else_passes() {
    use verify::replay::{replay_from_genesis, step_key};
    use verify::{Replay, Start, VerifyError};

    let (run, states, _) = crate::run::three_rounds(None).await;
    let entries = run.entries().await;
    let h = run.hyper();
    let full = replay_from_genesis(&entries, &run.store).await.unwrap();
    let mut replay = Replay::new(&entries, Start::Genesis(states[0].clone())).unwrap();
    for round in 0..3usize {
        let plan = replay.next_plan().unwrap();
        let step = RoundStep::derive(&states[round], &states[round + 1], Round(round as u64), &h).unwrap();
        if round == 1 {
            // A step from the right base to a state nobody attested.
            let elsewhere = aggregate(&states[1], Round(1), &[], &h).unwrap();
            let wrong = RoundStep::derive(&states[1], &elsewhere, Round(1), &h).unwrap();
            let err = replay.apply_step(plan.clone(), &wrong).unwrap_err();
            assert_eq!(
                err,
                VerifyError::Step(StepError::NotTheAttested { step: elsewhere.hash(), attested: states[2].hash() })
            );
            // The true header over altered trits: one parameter's step changed.
            let mut bytes = step.encode();
            let at = STEP_HEADER_BYTES;
            bytes[at] = if bytes[at] % 3 == 2 { bytes[at] - 1 } else { bytes[at] + 1 };
            let altered = RoundStep::decode(&bytes, &run.config.layout).unwrap();
            let err = replay.apply_step(plan.clone(), &altered).unwrap_err();
            assert!(matches!(err, VerifyError::Step(StepError::WrongResult { .. })), "{err}");
            assert_eq!(replay.state().hash(), states[1].hash(), "a refused step leaves the state as it was");
        }
        replay.apply_step(plan, &step).unwrap();
    }
    let through = replay.finish();
    assert_eq!(through.state.hash(), states[3].hash());
    assert!(through.report.discrepancies.is_empty(), "{:?}", through.report.discrepancies);
    for (a, b) in through.report.rounds.iter().zip(&full.report.rounds) {
        assert!(a.from_step && !b.from_step);
        assert_eq!((a.round, a.base, a.state, &a.counted), (b.round, b.base, b.state, &b.counted));
    }
    assert_eq!(step_key("alpha", Round(7)), "steps/644a9bc57c6063e2/00000000000000000007");

    // Round 1's quorum attested a hash nobody computes: its true step cannot stand for it.
    let (run, states, _) = crate::run::three_rounds(Some(1)).await;
    let entries = run.entries().await;
    let mut replay = Replay::new(&entries, Start::Genesis(states[0].clone())).unwrap();
    let plan = replay.next_plan().unwrap();
    replay.apply_step(plan, &RoundStep::derive(&states[0], &states[1], Round(0), &h).unwrap()).unwrap();
    let plan = replay.next_plan().unwrap();
    let err = replay.apply_step(plan, &RoundStep::derive(&states[1], &states[2], Round(1), &h).unwrap()).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Step(StepError::NotTheAttested {
            step: states[2].hash(),
            attested: verify::StateHash([0xEE; 32])
        })
    );
}
