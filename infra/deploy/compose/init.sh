#!/usr/bin/env bash
# The init job of infra/deploy/compose/compose.yaml: the bucket, the store check, one key per
# member, the run's run.toml and its genesis. Idempotent: a second start changes nothing.
set -euo pipefail
store=${CAIRN_STORE:?CAIRN_STORE names the run}
keys=${CAIRN_KEYS:-/var/lib/cairn/keys}
log() { printf 'init: %s\n' "$*" >&2; }

ready=""
for i in $(seq 1 30); do
  if cairn store init "$store"; then ready=1; break; fi
  log "the S3 server is not answering yet ($i/30)"; sleep 2
done
[ -n "$ready" ] || { log "the S3 server did not answer in a minute"; exit 1; }
# SeaweedFS enforces no bucket policy, so history is reported unprotected; the ledger's own
# guarantees (put-if-absent, one winner per race) must pass.
cairn store check "$store" --organisation alpha

# A genesis is there when the status reads; if it cannot be read for any other reason, genesis
# below refuses to write a second one, and the job fails and is restarted.
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
  if [ ! -s "$keys/$name.pub" ]; then
    rm -f "$keys/$name.key" "$keys/$name.pub.new"
    cairn keygen --out "$keys/$name.key" >"$keys/$name.pub.new"
    [ -s "$keys/$name.pub.new" ] || { log "keygen printed no public key for $name"; exit 1; }
    mv "$keys/$name.pub.new" "$keys/$name.pub"
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
