//! Writes one valid input per fuzz target into fuzz/corpus/<target>/seed-<name> (the corpus the
//! campaigns start from; infra/fuzz.sh runs it first).
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in cairn_fuzz::seeds() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus folder");
        std::fs::write(dir.join(format!("seed-{name}")), &bytes).expect("seed file");
        // The seed must pass its own target: a seed that panics is a bug found before fuzzing.
        let run = match target {
            "ledger_entry" => cairn_fuzz::ledger_entry,
            "ledger_slot" => cairn_fuzz::ledger_slot,
            "checkpoint" => cairn_fuzz::checkpoint,
            "note" => cairn_fuzz::note,
            "update_wire" => cairn_fuzz::update_wire,
            "run_config" => cairn_fuzz::run_config,
            "state" => cairn_fuzz::state,
            "elias_fano" => cairn_fuzz::elias_fano,
            "round_step" => cairn_fuzz::round_step,
            other => panic!("unknown target {other}"),
        };
        run(&bytes);
    }
    println!("seeds written to {}", root.display());
}
