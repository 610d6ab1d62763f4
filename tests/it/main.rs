//! Tests of the `cairn` command as users run it: exit codes, last lines, one-line errors.

mod adversary_cli;
mod audit_cli;
mod dashboard;
mod federation;
mod gather;
mod ledger_cli;
mod outage;
mod scale_cli;
mod steps;
mod store;
mod train_cli;

use std::process::{Command, Output};

/// Runs the `cairn` binary under test with one libtorch thread and extra environment variables.
pub fn cairn(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(args).env("OMP_NUM_THREADS", "1").env_remove("CAIRN_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cairn")
}

/// The figures on a benchmark's last stdout line, `bench NAME: key=value ...`, checking the
/// format every benchmark promises: that prefix, and each value a plain, finite number.
pub fn bench_figures(stdout: &str, name: &str) -> Vec<(String, f64)> {
    let last = stdout.lines().last().unwrap_or("");
    let prefix = format!("bench {name}: ");
    let figures = last.strip_prefix(&prefix).unwrap_or_else(|| panic!("last line: {last}"));
    figures
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("not key=value: {kv}"));
            let v: f64 = v.parse().unwrap_or_else(|_| panic!("{k} is not a plain number: {v}"));
            assert!(v.is_finite(), "{k}={v}");
            (k.to_string(), v)
        })
        .collect()
}
