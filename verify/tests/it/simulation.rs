//! Seeded simulation: random honest and faulty workers over several rounds; replay of the ledger
//! must equal the live state built by direct aggregation of the honest updates, count exactly
//! the contributions the simulation meant to count, and agree from the latest snapshot.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use verify::replay::{replay_from_genesis, replay_from_latest_snapshot};
use verify::{Round, StateHash, aggregate};

use crate::run::{TestRun, WORKERS, run_config};

#[tokio::test]
async fn replay_of_the_ledger_equals_the_live_state() {
    let (mut total_counted, mut total_not_counted) = (0, 0);
    for seed in 0..4u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut run = TestRun::new(run_config(16, 0)).await;
        let h = run.hyper();
        let mut live = run.initial.clone();
        let mut expected_counted = Vec::new();
        for round in 0..3u64 {
            let base = live.hash();
            let mut updates = Vec::new();
            let mut counted = Vec::new();
            let mut contributed = [false; WORKERS];
            for _ in 0..rng.random_range(1..12) {
                let w = rng.random_range(0..WORKERS);
                match rng.random_range(0..4) {
                    // honest: counts if it is the worker's first of the round
                    0 | 1 => {
                        let (pos, update) = run.contribute(w, round, base).await;
                        if !contributed[w] {
                            updates.push(update);
                            counted.push(pos);
                        }
                    }
                    2 => {
                        run.contribute(w, round, StateHash(rng.random())).await;
                    }
                    _ => {
                        let len = run.update(w, round, base).to_bytes().len();
                        let garbage: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        run.contribute_bytes(w, round, base, garbage).await;
                    }
                }
                contributed[w] = true;
            }
            live = aggregate(&live, Round(round), &updates, &h).unwrap();
            run.close(round, live.hash()).await;
            if rng.random_bool(0.5) {
                run.contribute(rng.random_range(0..WORKERS), round, base).await; // late
            }
            if rng.random_bool(0.5) {
                run.snapshot(round, &live).await;
            }
            expected_counted.push(counted);
        }
        let entries = run.entries().await;
        let replayed = replay_from_genesis(&entries, &run.store).await.unwrap();
        assert_eq!(replayed.state, live, "seed {seed}");
        assert!(replayed.report.discrepancies.is_empty(), "seed {seed}: {:?}", replayed.report.discrepancies);
        let got: Vec<Vec<_>> =
            replayed.report.rounds.iter().map(|r| r.counted.iter().map(|c| c.pos).collect()).collect();
        assert_eq!(got, expected_counted, "seed {seed}");
        let (resumed, _) = replay_from_latest_snapshot(&entries, &run.store).await.unwrap();
        assert_eq!(resumed.state, live, "seed {seed}");
        total_counted += got.iter().map(Vec::len).sum::<usize>();
        total_not_counted += replayed.report.rounds.iter().map(|r| r.not_counted.len()).sum::<usize>();
    }
    // The seeds exercise both sides of the rule.
    assert!(total_counted >= 8 && total_not_counted >= 8, "{total_counted} counted, {total_not_counted} not");
}
