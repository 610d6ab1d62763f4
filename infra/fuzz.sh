#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of peer bytes that does not need libtorch (fuzz/).
#
#   infra/fuzz.sh smoke        each target for 5 s (what `make test` runs)
#   infra/fuzz.sh run SECONDS [TARGET...]   each target for SECONDS (`make fuzz`: 600), one line per
#                              target: executions, corpus size, peak memory, crashes
#
# Needs cargo-fuzz, installed here once from crates.io, pinned (cargo install --locked
# cargo-fuzz@0.13.1), and the nightly toolchain or, without one, RUSTC_BOOTSTRAP (below). Starts
# from the seeds fuzz/examples/seeds.rs writes (one valid input per target and wire-format version) and the
# corpus earlier runs grew (fuzz/corpus, ignored). A crash, a timeout (> 10 s on one input) or a
# memory blow-up (> 2 GB) fails the run; libFuzzer leaves the input under fuzz/artifacts/. Inputs
# that once failed live in fuzz/regressions/TARGET (committed) and are replayed on every run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
log() { printf 'fuzz: %s\n' "$*" >&2; }
targets=(ledger_entry ledger_slot checkpoint note update_wire run_config state elias_fano round_step)

# libFuzzer's instrumentation (-Zsanitizer, coverage passes) takes unstable compiler flags: the
# nightly toolchain where there is one, else the default toolchain with RUSTC_BOOTSTRAP=1 for this
# build only (CAIRN_FUZZ_STABLE=1 forces that path), so a machine with stable Rust alone runs it.
if [ "${CAIRN_FUZZ_STABLE:-0}" != 1 ] && cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  log "no nightly toolchain: the default one with RUSTC_BOOTSTRAP=1 builds the fuzz targets"
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz 0.13.1 from crates.io"
  cargo install --locked cargo-fuzz --version 0.13.1 >&2
fi
export CARGO_TARGET_DIR=${CAIRN_FUZZ_TARGET:-${CAIRN_CACHE:-$HOME/.cache/cairn}/fuzz-target}
cargo run --quiet --release --example seeds >&2
"${fuzz[@]}" build --release >&2

mode=${1:-smoke}
case $mode in
  smoke) seconds=5 ;;
  run) seconds=${2:?run needs SECONDS}; shift 2; [ $# -gt 0 ] && targets=("$@") ;;
  *) log "usage: fuzz.sh smoke | run SECONDS [TARGET...]"; exit 2 ;;
esac

failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  out=$(mktemp)
  dirs=("corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")  # inputs that once failed, kept for good
  if "${fuzz[@]}" run --release "$t" "${dirs[@]}" -- -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 >"$out" 2>&1; then
    verdict=ok
  else
    verdict=FAIL; failed=1
    tail -n 40 "$out" >&2
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$out" | tail -1)
  echo "fuzz $t: $verdict seconds=$seconds execs=${execs:-0} corpus=$(find "corpus/$t" -type f | wc -l) peak_rss_mb=${rss:-?}"
  rm -f "$out"
done
[ "$failed" = 0 ] || { log "a target failed: inputs under fuzz/artifacts/"; exit 1; }
