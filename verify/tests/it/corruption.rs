//! Any single-bit corruption of an update is rejected, or decodes to a different update whose
//! canonical bytes are exactly the corrupted ones (so the contribution's identity, the blake3 the
//! ledger signs, changes with it). Exhaustive over every bit of a small update, for each encoding.

use verify::{Compression, Layout, NormClip, State, ValueEncoding, aggregate, decode, encode};

use crate::common::*;

#[test]
fn every_single_bit_flip_is_rejected_or_changes_the_update() {
    let layout = Layout::new(vec![spec("a", &[16, 16]), spec("b", &[10]), spec("c", &[])]).unwrap();
    for values in [ValueEncoding::Sign, ValueEncoding::Int8, ValueEncoding::Bf16, ValueEncoding::TwoBit] {
        let mut r = rng(21);
        let base = random_state(&layout, &mut r, 1.0);
        let comp = Compression::uniform(8, 5, values);
        let momentum = random_state(&layout, &mut r, 1.0);
        let original = encode(&momentum, &header(&layout, base.hash(), worker(1), comp)).unwrap();
        let bytes = original.to_bytes();
        let e = expected(&layout, base.hash(), worker(1), comp);
        // two-bit values under the linear rule: every code is a magnitude the state sees
        let step = if values == ValueEncoding::TwoBit { verify::StepRule::Linear } else { verify::StepRule::Sign };
        let h = verify::Hyper { step, ..hyper(comp, NormClip::Off) };
        let state_of = |u| -> State { aggregate(&base, ROUND, &[u], &h).unwrap() };
        let original_state = state_of(original.clone()).hash();
        let (mut rejected, mut accepted, mut state_changed) = (0, 0, 0);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            match decode(&b, &e) {
                Err(_) => rejected += 1,
                Ok(u) => {
                    accepted += 1;
                    assert_ne!(u, original, "{values:?}: flip of bit {bit} decoded to the same update");
                    assert_eq!(u.to_bytes(), b, "{values:?}: flip of bit {bit} is not canonical");
                    if state_of(u).hash() != original_state {
                        state_changed += 1;
                    }
                }
            }
        }
        // The header, grid records and padding make up a large share of the bits: all of them reject.
        assert!(rejected >= 155 * 8 + 2 * 20 * 8, "{values:?}: only {rejected} rejections");
        // An index or sign flip (or a code flip under the linear rule) moves the step of at least one
        // parameter in most cases.
        let checked = [ValueEncoding::Sign, ValueEncoding::TwoBit].contains(&values);
        assert!(accepted > 0 && state_changed * 2 >= accepted || !checked, "{values:?}: {state_changed} of {accepted}");
    }
}
