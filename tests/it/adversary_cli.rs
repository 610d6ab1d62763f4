//! `cairn bench adversary` as CI runs it: a few fixed seeds and one random seed (printed, so a
//! failure can be replayed), each of which must pass; and a control that must fail: a byzantine
//! coalition as large as the quorum breaks the promise, and the simulation has to notice.

use crate::{bench_figures, cairn};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs one simulation; returns whether it passed, its figures and its whole output.
fn simulate(args: &[&str]) -> (bool, Vec<(String, f64)>, String) {
    let out = cairn(&[&["bench", "adversary"], args].concat(), &[]);
    let stdout = text(&out.stdout);
    let all = format!("{stdout}{}", text(&out.stderr));
    (out.status.success(), bench_figures(&stdout, "adversary"), all)
}

fn figure(figures: &[(String, f64)], key: &str) -> f64 {
    figures.iter().find(|(k, _)| k == key).map(|(_, v)| *v).unwrap_or_else(|| panic!("{key} missing: {figures:?}"))
}

#[test]
fn fixed_seeds_and_a_random_one_keep_every_safety_property() {
    let random = rand::random::<u32>() as u64;
    let cases = [(1, "4", "1"), (2, "4", "1"), (3, "3", "1"), (4, "5", "2"), (random, "4", "1")];
    for (seed, orgs, byzantine) in cases {
        let seed_text = seed.to_string();
        let args = ["--seed", &seed_text, "--organisations", orgs, "--byzantine", byzantine, "--rounds", "5"];
        let (passed, figures, all) = simulate(&args);
        assert!(passed, "seed {seed} ({orgs} organisations, {byzantine} byzantine) failed:\n{all}");
        assert_eq!(figure(&figures, "safety_violations"), 0.0, "seed {seed}: {all}");
        assert_eq!(figure(&figures, "stalled_rounds"), 0.0, "seed {seed}: {all}");
        assert_eq!(figure(&figures, "rounds_closed"), 5.0, "seed {seed}: {all}");
        assert_eq!(figure(&figures, "honest_counted_pct"), 100.0, "seed {seed}: {all}");
        // Round 2 is a snapshot round: the honest organisations' signatures make its checkpoint.
        assert!(figure(&figures, "checkpoint_organisations") >= figure(&figures, "quorum"), "seed {seed}: {all}");
    }
}

#[test]
fn a_coalition_as_large_as_the_quorum_is_caught_by_the_checks() {
    let args = ["--seed", "1", "--organisations", "4", "--byzantine", "3", "--rounds", "4", "--beyond-quorum"];
    let (passed, figures, all) = simulate(&args);
    assert!(!passed, "the promise does not hold beyond the quorum; the checks must say so:\n{all}");
    assert!(figure(&figures, "safety_violations") + figure(&figures, "stalled_rounds") > 0.0, "{all}");
    assert!(all.contains("replay it with: cairn bench adversary --seed 1"), "{all}");
    // Without the flag, such a run is refused before it starts.
    let out = cairn(&["bench", "adversary", "--organisations", "4", "--byzantine", "3"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("must be below the quorum"), "{}", text(&out.stderr));
}
