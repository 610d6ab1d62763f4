#!/usr/bin/env bash
# Plots `cairn bench train --csv` curves as a PNG (docs/BENCHMARKS.md's figures):
#   infra/plot-curves.sh [LABEL=]CURVES.csv OUT.png [TITLE] [LABEL=MORE.csv ...]
# Installs matplotlib once into $CAIRN_CACHE/plot-venv (PyPI only). Not needed by make test.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${CAIRN_CACHE:-$HOME/.cache/cairn}
venv=$cache/plot-venv
want="matplotlib==3.10.7"
if [ "$(cat "$venv/.cairn-stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$want" >&2
  echo "$want" >"$venv/.cairn-stamp"
fi
exec "$venv/bin/python" "$root/infra/plot_curves.py" "$@"
