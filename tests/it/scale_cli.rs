//! `cairn bench scale` as a user runs it, at a size CI affords: the simulated round writes exactly
//! the slots the protocol says (a contribution per worker, a verdict per contribution and
//! validator, in slots of the batch size, a close vote and an attestation per organisation).

use crate::{bench_figures, cairn};

/// Runs `cairn` with `args` (a `bench scale`), checks it succeeded, and returns the figures of its
/// last line with everything it printed (for messages).
fn run_scale(args: &[&str]) -> (Vec<(String, f64)>, String) {
    let out = cairn(args, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    (bench_figures(&stdout, "scale"), all)
}

#[test]
fn a_simulated_round_takes_the_slots_the_protocol_says() {
    let args = [
        "bench",
        "scale",
        "--workers",
        "4,5",
        "--organisations",
        "2",
        "--preset",
        "tiny",
        "--measure-preset",
        "tiny",
        "--verdict-batch",
        "1,3",
        "--arrival-secs",
        "1",
    ];
    let (figures, all) = run_scale(&args);
    let figure = |key: &str| {
        figures.iter().find(|(k, _)| k == key).map(|(_, v)| *v).unwrap_or_else(|| panic!("{key} missing: {all}"))
    };
    // workers + validators x ceil(workers / batch) + 2 organisations x (vote + attestation)
    for (workers, batch, slots) in
        [(4, 1, 4 + 2 * 4 + 4), (4, 3, 4 + 2 * 2 + 4), (5, 1, 5 + 2 * 5 + 4), (5, 3, 5 + 2 * 2 + 4)]
    {
        assert_eq!(figure(&format!("w{workers}_b{batch}_slots")), f64::from(slots), "{all}");
        let ledger = figure(&format!("w{workers}_b{batch}_ledger_s"));
        assert!(ledger > 0.0 && figure(&format!("w{workers}_b{batch}_round_s")) >= ledger, "{all}");
    }
}

/// Research mode `--gather-ms`: with a gathering interval longer than the arrivals, each
/// organisation appends all of its workers' contributions as one slot.
#[test]
fn gathered_contributions_take_one_slot_per_organisation() {
    let args = [
        "bench",
        "scale",
        "--workers",
        "5",
        "--organisations",
        "2",
        "--preset",
        "tiny",
        "--measure-preset",
        "tiny",
        "--verdict-batch",
        "3",
        "--arrival-secs",
        "1",
        "--gather-ms",
        "60000",
    ];
    let (figures, all) = run_scale(&args);
    let figure = |key: &str| figures.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    assert_eq!(figure("gather_ms"), Some(60000.0), "{all}");
    // 2 organisations' slots + 2 validators x ceil(5 / 3) + 2 x (vote + attestation)
    assert_eq!(figure("w5_b3_slots"), Some(f64::from(2 + 2 * 2 + 4)), "{all}");
}
