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

/// Runs `cairn bench ARGS` with one libtorch thread, whatever its outcome.
fn bench_output(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("bench")
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("CAIRN_LOG")
        .output()
        .expect("run cairn")
}

/// Runs `cairn bench ARGS` with one libtorch thread; its stdout, after checking it succeeded.
fn bench(args: &[&str]) -> String {
    let out = bench_output(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// `cairn bench train` on the synthetic corpus: 2 workers, 8 sequences of 32 tokens per step,
/// `steps` steps evaluated every `every` on 8 held-out sequences, no warm-up, plus `extra`.
fn small_train(steps: &str, every: &str, extra: &[&str]) -> String {
    let mut args = vec!["train", "--corpus", "synthetic", "--steps", steps, "--workers", "2"];
    args.extend(["--tokens-per-step", "256", "--seq-len", "32", "--eval-every", every, "--eval-sequences", "8"]);
    args.extend(["--warmup", "0", "--threads", "1"]);
    args.extend(extra);
    bench(&args)
}

/// `cairn bench train` on the synthetic corpus: 2 workers, 4 sequences of 32 tokens per step,
/// `steps` steps evaluated at the end on 4 held-out sequences, no warm-up, plus `extra`; whatever
/// its outcome.
fn quick_train(steps: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", "--corpus", "synthetic", "--steps", steps, "--workers", "2"];
    args.extend(["--tokens-per-step", "128", "--seq-len", "32", "--eval-every", steps, "--eval-sequences", "4"]);
    args.extend(["--warmup", "0", "--threads", "1"]);
    args.extend(extra);
    bench_output(&args)
}

#[test]
fn bench_train_runs_both_optimisers_and_both_losses_fall() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("curves.csv");
    let stdout = small_train("4", "2", &["--csv", csv.to_str().unwrap()]);
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
            "compression_x",
            "best_peer_gap_pct",
            "best_peer_compression_x"
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
    // The curves file holds every evaluation, the last one as on the last line.
    let curves = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = curves.lines().collect();
    assert_eq!(rows[0], "step,baseline_loss,cairn_loss,demo-ref,demo-sign,sparseloco,diloco,floor_nats");
    assert_eq!(rows.len(), 1 + 3, "steps 0, 2 and 4: {curves}");
    let last_row: Vec<f64> = rows[3].split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(last_row[0], 4.0);
    assert!((last_row[1] - number(&m, "baseline_loss")).abs() < 1e-4, "{curves}");
    assert!((last_row[2] - number(&m, "cairn_loss")).abs() < 1e-4, "{curves}");
}

#[test]
fn bench_train_research_flags_are_labelled_and_checked() {
    let run = |extra: &[&str]| quick_train("2", extra);
    let sign = run(&[]);
    let int8 = run(&["--values", "int8", "--diagnostics", "--dense-tensors", "vocab"]);
    let (sign_out, int8_out) = (String::from_utf8_lossy(&sign.stdout), String::from_utf8_lossy(&int8.stdout));
    assert!(int8.status.success(), "{int8_out}{}", String::from_utf8_lossy(&int8.stderr));
    // The consensus method's research flags are labelled; without them, only the peers are research.
    assert!(int8_out.contains("research (not consensus): linear step"), "{int8_out}");
    assert!(!sign_out.contains("research (not consensus): linear step"), "{sign_out}");
    assert!(sign_out.contains("cairn (consensus)"), "{sign_out}");
    let bytes = |out: &str| number(&pairs(out.lines().last().unwrap()), "bytes_per_worker_round");
    assert!(bytes(&int8_out) > bytes(&sign_out), "int8 values carry more than one bit each");
    let bad = run(&["--dense-tensors", "no.such.tensor"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("matches no tensor"));
}

#[test]
fn bench_train_decays_both_optimisers_alike() {
    let run = |extra: &[&str]| quick_train("3", extra);
    let last = |out: &std::process::Output| {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let m = pairs(stdout.lines().last().unwrap());
        (number(&m, "baseline_loss"), number(&m, "cairn_loss"), stdout)
    };
    let (base, cairn, _) = last(&run(&[]));
    let (base_wsd, cairn_wsd, out) = last(&run(&["--min-lr-factor", "0", "--decay-start", "1"]));
    assert!(out.contains("from step 1 linear to 0 x lr (both)"), "{out}");
    // the last step runs at half the rate in both optimisers, so both end elsewhere
    assert_ne!(base, base_wsd);
    assert_ne!(cairn, cairn_wsd);
    let bad = run(&["--min-lr-factor", "0.1", "--decay-start", "4"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--decay-start 4"));
}

#[test]
fn bench_step_times_a_workers_round_and_reports_mfu() {
    let stdout = bench(&[
        "step",
        "--preset",
        "tiny",
        "--seq-len",
        "32",
        "--tokens-per-round",
        "256",
        "--micro-batch",
        "4",
        "--rounds",
        "2",
        "--threads",
        "1",
        "--peak-tflops",
        "0.001",
    ]);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("round ")).count(), 3, "a warm-up and 2 timed rounds: {stdout}");
    let last = pairs(stdout.lines().last().unwrap_or(""));
    assert_eq!(number(&last, "tokens_per_round"), 256.0);
    let (tps, pass_tps) = (number(&last, "tokens_per_s"), number(&last, "pass_tokens_per_s"));
    assert!(tps > 0.0 && pass_tps >= tps, "the passes are part of the round: {last:?}");
    let round_ms = number(&last, "round_ms");
    assert!((256.0 / tps * 1e3 - round_ms).abs() < 0.01 * round_ms + 0.1, "{last:?}");
    // MFU is the model FLOPs rate over the given peak: 0.001 TFLOP/s here.
    let want_mfu = tps * number(&last, "model_flops_per_token") / 1e12 / 0.001 * 100.0;
    assert!((number(&last, "mfu_pct") - want_mfu).abs() <= 0.01 * want_mfu + 0.01, "{last:?}");
    // The update is the size verify's decoder demands for tiny at chunk 64, top-k 4.
    assert_eq!(number(&last, "update_bytes"), 2629.0);
    // A CPU run compares no GPU encoding with the CPU's: the key is left out rather than faked.
    assert!(!last.contains_key("cpu_encode_agreement_pct"), "{last:?}");
}

#[test]
fn bench_train_reports_the_best_of_several_adamw_rates() {
    let stdout = small_train("3", "3", &["--adamw-lr", "0.0001,0.01"]);
    let finals = stdout.lines().find(|l| l.contains("AdamW final losses")).expect("each rate's final loss");
    let losses: Vec<f64> = finals
        .split("lr ")
        .skip(1)
        .filter_map(|part| part.split_once(": ").and_then(|(_, v)| v.split([',', ';']).next()?.trim().parse().ok()))
        .collect();
    assert_eq!(losses.len(), 2, "{finals}");
    let last = pairs(stdout.lines().last().unwrap_or(""));
    let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
    assert!((number(&last, "baseline_loss") - best).abs() < 1e-4, "the best rate is the baseline: {finals} {last:?}");
    assert!(losses[0] != losses[1], "two rates, two baselines: {finals}");
    let step3 = stdout.lines().find(|l| l.starts_with("step 3 ")).expect("an evaluation at step 3");
    assert!(step3.contains("adamw_losses="), "{step3}");
}

#[test]
fn bench_train_tunes_adamw_over_where_its_decay_starts() {
    // Decay to 0 from step 1 or from step 3 of 4: two schedules, two different AdamW runs.
    let extra = ["--adamw-lr", "0.01", "--min-lr-factor", "0", "--decay-start", "2", "--adamw-decay-start", "1,3"];
    let stdout = small_train("4", "4", &extra);
    let described = stdout.lines().find(|l| l.contains("baseline: AdamW")).expect("the set-up line");
    assert!(
        described.contains("from step 2 linear") && described.contains("AdamW's own decay from step 1,3"),
        "{described}"
    );
    let finals = stdout.lines().find(|l| l.contains("AdamW final losses")).expect("each schedule's final loss");
    let loss = |label: &str| -> f64 {
        let rest = finals.split(&format!("{label}: ")).nth(1).unwrap_or_else(|| panic!("no {label} in {finals}"));
        rest.split([',', ';']).next().unwrap().trim().parse().unwrap()
    };
    let (early, late) = (loss("lr 0.01 decay from 1"), loss("lr 0.01 decay from 3"));
    assert_ne!(early, late, "two decay starts, two baselines: {finals}");
    let last = pairs(stdout.lines().last().unwrap_or(""));
    assert!(
        (number(&last, "baseline_loss") - early.min(late)).abs() < 1e-4,
        "the better schedule is the baseline: {finals}"
    );
    let chosen = if early <= late { "decay from 1" } else { "decay from 3" };
    assert!(finals.ends_with(&format!("the baseline is lr 0.01 {chosen}")), "{finals}");
    // The final table names each baseline by its schedule too, so its rows can be told apart.
    let row_loss = |label: &str| -> f64 {
        let row = stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label).filter(|rest| rest.starts_with(' ')))
            .unwrap_or_else(|| panic!("no row for {label}: {stdout}"));
        // [*] bytes Nx loss gap seconds; the star marks the baseline reported
        let fields: Vec<&str> = row.split_whitespace().filter(|f| *f != "*").collect();
        fields[2].parse().unwrap()
    };
    assert_eq!(row_loss("AdamW lr 0.01 decay from 1"), early, "{stdout}");
    assert_eq!(row_loss("AdamW lr 0.01 decay from 3"), late, "{stdout}");
    let bad = quick_train("3", &["--min-lr-factor", "0", "--adamw-decay-start", "9"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--adamw-decay-start 9 must lie between"));
}

/// The table row of `label` in `cairn bench train`'s final table: (bytes per step, loss).
fn table_row(stdout: &str, label: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{label} (")))
        .unwrap_or_else(|| panic!("no row for {label}: {stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    // label, (role), bytes, Nx, loss, gap, seconds
    (fields[2].parse().unwrap(), fields[4].parse().unwrap())
}

#[test]
fn bench_train_runs_the_peers_on_the_same_tokens_and_counts_their_bytes_alike() {
    let stdout = small_train("4", "4", &["--local-steps", "2"]);
    assert!(stdout.contains("peers (research, not consensus"), "{stdout}");
    // Every method starts from the same state.
    let first = pairs(stdout.lines().find(|l| l.starts_with("step 0 ")).unwrap());
    let start = number(&first, "baseline_loss");
    for key in ["cairn_loss", "demo-ref", "demo-sign", "sparseloco", "diloco"] {
        assert_eq!(number(&first, key), start, "{key}: {first:?}");
    }
    let params: f64 = stdout
        .split_once(" params)")
        .and_then(|(head, _)| head.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .expect("the parameter count");
    // DiLoCo uploads the whole model in f32 once every H = 2 steps.
    assert_eq!(table_row(&stdout, "diloco").0, params * 4.0 / 2.0);
    // The sparse peers take the top-k whose bytes are nearest cairn's: within 1.25x of them.
    let last = pairs(stdout.lines().last().unwrap());
    let cairn_bytes = number(&last, "bytes_per_worker_round");
    for peer in ["demo-ref", "demo-sign", "sparseloco"] {
        let (bytes, loss) = table_row(&stdout, peer);
        assert!(bytes <= 1.25 * cairn_bytes && bytes >= cairn_bytes / 1.25, "{peer}: {bytes} vs {cairn_bytes}");
        assert!(loss.is_finite());
    }
    // The headline's best peer is the lowest final loss among them.
    let best = ["demo-ref", "demo-sign", "sparseloco"]
        .map(|p| table_row(&stdout, p).1)
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    let base = number(&last, "baseline_loss");
    assert!((number(&last, "best_peer_gap_pct") - 100.0 * (best - base) / base).abs() < 0.02, "{last:?}");

    // Without peers the last line names none; an unknown peer is refused.
    let none = small_train("2", "2", &["--peers", "none"]);
    let last = none.lines().last().unwrap();
    assert!(!last.contains("best_peer"), "{last}");
    assert!(!none.contains("demo-ref"), "{none}");
    let bad = quick_train("1", &["--peers", "demo-ref,adam"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--peers adam"));
}

#[test]
fn bench_train_frontier_sweeps_every_method_over_the_ratios() {
    let stdout = small_train(
        "2",
        "2",
        &[
            "--frontier",
            "--frontier-x",
            "300,1200",
            "--peers",
            "demo-sign,sparseloco,cairn-local",
            "--local-steps",
            "2",
        ],
    );
    let last = pairs(stdout.lines().last().unwrap());
    for key in ["cairn_gap_300x_pct", "best_peer_gap_300x_pct", "cairn_gap_1200x_pct", "best_peer_gap_1200x_pct"] {
        assert!(number(&last, key).is_finite(), "{key}: {last:?}");
    }
    // Each target's runners sit near its ratio: cairn's achieved ratio is printed beside its gap.
    for (x, key) in [(300.0, "cairn_300x_x"), (1200.0, "cairn_1200x_x")] {
        let got = number(&last, key);
        assert!(got > x / 2.0 && got < x * 2.0, "{key} {got}");
    }
    for label in ["cairn@300x", "demo-sign@300x", "sparseloco@1200x", "cairn-local@1200x"] {
        table_row(&stdout, label);
    }
    assert!(stdout.contains("frontier (gap to the best AdamW"), "{stdout}");
}

#[test]
fn bench_train_runs_cairn_with_local_steps_and_the_linear_rule_as_a_run_would() {
    let stdout = small_train(
        "4",
        "4",
        &[
            "--cairn-local",
            "--local-steps",
            "2",
            "--values",
            "two-bit",
            "--step-rule",
            "linear",
            "--local-outer-schedule",
            "constant",
            "--peers",
            "sparseloco,sparseloco-dct",
        ],
    );
    assert!(stdout.contains("cairn takes 2 local AdamW steps"), "{stdout}");
    assert!(stdout.contains("cairn: linear step"), "{stdout}");
    let first = pairs(stdout.lines().find(|l| l.starts_with("step 0 ")).unwrap());
    let last = pairs(stdout.lines().last().unwrap());
    let (start, cairn) = (number(&first, "cairn_loss"), number(&last, "cairn_loss"));
    assert!(cairn < start - 0.1, "cairn's loss {start} -> {cairn}");
    // cairn talks every 2 steps: its bytes per step are half a round's, and the peers' are near them.
    let cairn_bytes = number(&last, "bytes_per_worker_round");
    for peer in ["sparseloco", "sparseloco-dct"] {
        let (bytes, loss) = table_row(&stdout, peer);
        assert!(bytes <= 1.25 * cairn_bytes && bytes >= cairn_bytes / 1.25, "{peer}: {bytes} vs {cairn_bytes}");
        assert!(loss.is_finite());
    }
    // The linear rule needs values with a magnitude.
    let bad = quick_train("1", &["--step-rule", "linear"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("needs values with a magnitude"), "{bad:?}");
}

#[test]
fn bench_train_elias_fano_indices_buy_a_larger_top_k_at_the_same_bytes() {
    let run = |coding: &str| {
        let mut args = vec!["--cairn-local", "--local-steps", "8", "--values", "two-bit", "--step-rule", "linear"];
        args.extend(["--local-outer-schedule", "constant", "--transform", "identity", "--topk-override", "none"]);
        args.extend(["--peers", "none", "--frontier", "--frontier-x", "1000", "--index-coding", coding]);
        let stdout = small_train("2", "2", &args);
        let setting = stdout.lines().find(|l| l.contains("cairn: linear step")).expect("the settings line").to_string();
        let topk: u32 =
            setting.split("top-k ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap().parse().unwrap();
        let x = number(&pairs(stdout.lines().last().unwrap()), "cairn_1000x_x");
        (topk, x)
    };
    let (fixed_k, fixed_x) = run("fixed");
    let (ef_k, ef_x) = run("elias-fano");
    // Both sizes are the real wire sizes nearest 1000x; Elias-Fano's indices take fewer bits, so
    // more coefficients fit (about 1.5x on this layout: FORMAT.md 4.2).
    assert!(ef_k > fixed_k, "elias-fano top-k {ef_k}, fixed {fixed_k}");
    for x in [fixed_x, ef_x] {
        assert!((900.0..1100.0).contains(&x), "{x}x");
    }
    let bad = quick_train("1", &["--index-coding", "huffman"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--index-coding must be fixed or elias-fano"), "{bad:?}");
}
