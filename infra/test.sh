#!/usr/bin/env bash
# What `make test` runs: set-up, a SeaweedFS S3 server for the run, formatting, lints, tests, and
# the deployment files (infra/deploy/check.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash infra/setup-libtorch.sh
bash infra/setup-python.sh >/dev/null
bash infra/setup-browser.sh

# One S3 server for the whole run; it also stops if this script dies (watchdog on our pid).
export CAIRN_S3_DIR=${CAIRN_S3_DIR:-$root/target/s3-local-test}
trap 'bash infra/s3-local.sh stop' EXIT
bash infra/s3-local.sh start --parent $$
eval "$(bash infra/s3-local.sh env)"

# libtorch gets one thread: this machine has two cores and tests run in parallel.
export OMP_NUM_THREADS=1

echo "== rustfmt" >&2
cargo fmt --all --check
echo "== clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests" >&2
cargo test --workspace --locked
echo "== deployment files" >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cargo build --locked --bin cairn
bash infra/deploy/check.sh "$target_dir/debug/cairn"
echo "== fuzz smoke (5 s a decoder)" >&2
bash infra/fuzz.sh smoke
