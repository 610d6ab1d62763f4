#!/usr/bin/env bash
# Interop with transformers (`make interop`): does a cairn state exported by `cairn export-hf` load in
# `transformers.LlamaForCausalLM` and give the same logits as our model?
#
#   venv $CAIRN_CACHE/interop-venv: torch 2.11.0 (the wheel setup-libtorch.sh cached, if there;
#     its CUDA dependencies come from PyPI, a few GB once), transformers, safetensors, numpy
#   cairn export-hf --preset tiny --seed S --logits-for IDS --out DIR
#     -> DIR/model.safetensors, DIR/config.json, DIR/cairn_logits.safetensors (our forward pass)
#   infra/interop.py DIR: LlamaForCausalLM.from_pretrained(DIR) on the same ids, max |Δ logits| < 1e-4
#
# Not part of `make test`: it needs the full Python torch. Idempotent: the venv is rebuilt only when
# the requirements below change.
set -euo pipefail

TORCH_VERSION=2.11.0
REQUIREMENTS="transformers==5.24.0 safetensors==0.8.0 numpy==2.4.6"

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${CAIRN_CACHE:-$HOME/.cache/cairn}
venv=$cache/interop-venv
want="torch=$TORCH_VERSION $REQUIREMENTS"

log() { printf 'interop: %s\n' "$*" >&2; }

if [ "$(cat "$venv/.cairn-stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  torch_spec="torch==$TORCH_VERSION"
  cached=$(compgen -G "$cache/wheels/torch-$TORCH_VERSION-cp311-*manylinux*_x86_64.whl" | head -n 1 || true)
  if [ -n "$cached" ] && "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    torch_spec=$cached
  fi
  log "installing $torch_spec $REQUIREMENTS into $venv (once)"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$torch_spec" $REQUIREMENTS >&2
  echo "$want" >"$venv/.cairn-stamp"
fi

# Token ids for the comparison: arbitrary, spread over the byte vocabulary, 24 positions.
ids="72,101,108,108,111,44,32,99,97,105,114,110,33,0,255,17,200,3,128,64,91,250,7,180"
seed=${INTEROP_SEED:-7}
out=$(mktemp -d "${TMPDIR:-/tmp}/cairn-interop.XXXXXX")
trap 'rm -rf "$out"' EXIT

cd "$root"
log "exporting preset tiny (seed $seed) to $out"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} cargo run --quiet --locked -- \
  export-hf --preset tiny --seed "$seed" --logits-for "$ids" --out "$out"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
  HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error "$venv/bin/python" "$root/infra/interop.py" "$out"
