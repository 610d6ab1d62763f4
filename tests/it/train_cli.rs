//! `cairn bench train`: a few steps of the baseline and the simulated swarm on the synthetic corpus.

use std::collections::HashMap;
use std::process::Command;

/// Parses `key=value` pairs of a line.
fn pairs(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace().filter_map(|w| w.split_once('=')).collect()
}

fn number(map: &HashMap<&str, &str>, key: &str) -> f64 {
    map.get(key).unwrap_or_else(|| panic!("no {key} in {map:?}")).parse().unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[test]
fn bench_train_runs_both_optimisers_and_both_losses_fall() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["bench", "train", "--corpus", "synthetic", "--steps", "4", "--workers", "2"])
        .args(["--tokens-per-step", "256", "--seq-len", "32", "--eval-every", "2", "--eval-sequences", "8"])
        .args(["--warmup", "0", "--threads", "1"])
        .env("OMP_NUM_THREADS", "1")
        .env_remove("CAIRN_LOG")
        .output()
        .expect("run cairn");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let first = stdout.lines().find(|l| l.starts_with("step 0 ")).expect("an evaluation before training");
    let initial = pairs(first);
    let (b0, c0) = (number(&initial, "baseline_loss"), number(&initial, "cairn_loss"));
    assert_eq!(b0, c0, "both start from the same state: {first}");
    let last = stdout.lines().last().unwrap_or("");
    assert!(last.starts_with("bench train: corpus=synthetic steps=4 workers=2 "), "{last}");
    let keys: Vec<&str> = last.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "corpus",
            "steps",
            "workers",
            "baseline_loss",
            "cairn_loss",
            "gap_pct",
            "floor_nats",
            "bytes_per_worker_round",
            "compression_x"
        ]
    );
    let m = pairs(last);
    for key in ["baseline_loss", "cairn_loss"] {
        let v = number(&m, key);
        assert!(v.is_finite() && v < b0, "{key} {v} is not below the initial loss {b0}: {stdout}");
    }
    let floor = number(&m, "floor_nats");
    assert!(floor > 0.0 && floor < b0, "floor {floor}");
    assert!(number(&m, "bytes_per_worker_round") > 0.0);
    assert!(number(&m, "compression_x") > 100.0, "{last}");
    assert!(number(&m, "gap_pct").is_finite());
}
