//! The same aggregation on 1, 2 and 8 threads gives the same state hash.

use verify::{NormClip, ValueEncoding, aggregate};

use crate::common::*;

#[test]
fn same_hash_on_1_2_and_8_threads() {
    for encoding in [ValueEncoding::Sign, ValueEncoding::Int8, ValueEncoding::Bf16, ValueEncoding::TwoBit] {
        let mut r = rng(5);
        let s0 = random_state(&model_layout(), &mut r, 0.1);
        let comp = compression(encoding);
        let ups = updates(&s0, comp, 5, &mut r);
        // every encoding with a magnitude also under the linear rule, whose step shows every rounding
        let step = if encoding == ValueEncoding::Sign { verify::StepRule::Sign } else { verify::StepRule::Linear };
        let h = verify::Hyper { step, ..hyper(comp, NormClip::Median) };
        let hashes: Vec<_> = [1usize, 2, 8]
            .iter()
            .map(|&n| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
                pool.install(|| aggregate(&s0, ROUND, &ups, &h).unwrap().hash())
            })
            .collect();
        assert_eq!(hashes[0], hashes[1], "{encoding:?}: 1 vs 2 threads");
        assert_eq!(hashes[0], hashes[2], "{encoding:?}: 1 vs 8 threads");
        assert_ne!(hashes[0], s0.hash(), "{encoding:?}: the round changed nothing");
    }
}
