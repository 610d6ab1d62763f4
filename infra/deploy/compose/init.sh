#!/usr/bin/env bash
# The init job of infra/deploy/compose/compose.yaml: the bucket, the store check, one key per
# member, the run's run.toml and its genesis. Idempotent: a second start changes nothing.
set -euo pipefail
store=${CAIRN_STORE:?CAIRN_STORE names the run}
keys=${CAIRN_KEYS:-/var/lib/cairn/keys}
log() { printf 'init: %s\n' "$*" >&2; }

for i in $(seq 1 30); do
  cairn store init "$store" && break
  log "the S3 server is not answering yet ($i/30)"; sleep 2
done
# SeaweedFS enforces no bucket policy, so history is reported unprotected; the ledger's own
# guarantees (put-if-absent, one winner per race) must pass.
cairn store check "$store"

if cairn status --store "$store" >/dev/null 2>&1; then
  log "the run at $store already has its genesis"
  exit 0
fi

# name organisation role
members="alpha-admin alpha admin
alpha-worker-1 alpha worker
beta-worker-1 beta worker
beta-validator beta validator"

roster=""
while read -r name org role; do
  if [ ! -f "$keys/$name.pub" ]; then
    rm -f "$keys/$name.key"
    cairn keygen --out "$keys/$name.key" >"$keys/$name.pub"
  fi
  roster+=$'\n'"[[roster.member]]"$'\n'"key = \"$(cat "$keys/$name.pub")\""$'\n'"organisation = \"$org\""$'\n'"role = \"$role\""$'\n'
done <<<"$members"

cat >"$keys/run.toml" <<TOML
[run]
name = "compose"
preset = "tiny"
total_rounds = 50
snapshot_every = 10

[data]
source = "synthetic"

[rounds]
deadline_secs = 60
$roster
TOML
cairn genesis --store "$store" --config "$keys/run.toml" --key "$keys/alpha-admin.key"
log "genesis written; the workers and the validator start now"
