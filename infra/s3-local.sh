#!/usr/bin/env bash
# A local S3-compatible server (SeaweedFS, from PyPI) for tests and demos.
#
#   infra/s3-local.sh start [--parent PID]   start on free loopback ports, wait until S3 answers
#   infra/s3-local.sh env                    print `export` lines for the AWS SDKs and cairn
#   infra/s3-local.sh stop                   stop it and remove its data
#
# State (data, config, logs, credentials) lives in $CAIRN_S3_DIR (default target/s3-local).
# With --parent, the server also stops when process PID exits (test harnesses use this).
# Every service gets a port P with P+10000 free too: SeaweedFS puts its gRPC port there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${CAIRN_S3_DIR:-$root/target/s3-local}
# Only start creates the folder: stop (also run by the watchdog after its parent exits) must not
# recreate it while the caller removes the tree around it.
case "${1:-}" in start) mkdir -p "$dir" ;; esac
[ -d "$dir" ] && dir=$(cd "$dir" && pwd)
pidfile=$dir/weed.pid
envfile=$dir/env

log() { printf 's3-local: %s\n' "$*" >&2; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

answering() { # port
  local code
  code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/" || true)
  [ -n "$code" ] && [ "$code" != "000" ]
}

free_ports() { # prints 5 ports p, each with p and p+10000 free on 127.0.0.1
  python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
picked = []
rng = random.SystemRandom()
while len(picked) < 5:
    p = rng.randrange(20000, 30000)
    if p not in picked and p + 10000 not in picked and free(p) and free(p + 10000):
        picked.append(p)
print(" ".join(map(str, picked)))
PY
}

start() {
  local parent=""
  if [ "${1:-}" = "--parent" ]; then parent=${2:?--parent needs a PID}; fi
  if running && [ -f "$envfile" ]; then
    log "already running (pid $(cat "$pidfile"))"
    return 0
  fi
  local venv weed
  venv=$(bash "$root/infra/setup-python.sh")
  weed=$venv/bin/weed
  rm -rf "$dir/data" && mkdir -p "$dir/data"
  read -r master volume filer s3 admin <<<"$(free_ports)"
  local access="cairn-test" secret
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  cat >"$dir/s3.json" <<EOF
{"identities":[{"name":"cairn-test","credentials":[{"accessKey":"$access","secretKey":"$secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
  # setsid: the server gets its own process group, so stop (or the watchdog) ends all of it.
  # Every bucket is a SeaweedFS collection with volumes of its own; by default the number of
  # volumes is free disk / volume size, so on a nearly full disk new buckets fail with 500s. Volumes
  # are sparse files, so a fixed, generous count of smaller volumes costs no disk up front.
  setsid "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$master" -volume.port="$volume" -filer.port="$filer" -s3.port="$s3" \
    -admin.port="$admin" -s3.config="$dir/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    -webdav=false -admin.ui=false -master.telemetry=false \
    -volume.max=256 -master.volumeSizeLimitMB=64 >"$dir/weed.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local i
  for i in $(seq 1 120); do
    if answering "$s3"; then break; fi
    if ! running; then log "SeaweedFS exited during start; its log:"; tail -20 "$dir/weed.log" >&2; exit 1; fi
    sleep 0.5
  done
  if ! answering "$s3"; then log "SeaweedFS did not answer on port $s3 within 60 s"; stop; exit 1; fi
  cat >"$envfile" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3
export AWS_ACCESS_KEY_ID=$access
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
export CAIRN_TEST_S3=1
EOF
  if [ -n "$parent" ]; then
    # Watchdog: stop the server when the parent process is gone; only this server (the pid file
    # may name a newer one by then: a second run in the same folder).
    local server
    server=$(cat "$pidfile")
    (
      trap '' HUP
      while kill -0 "$parent" 2>/dev/null && kill -0 "$server" 2>/dev/null; do sleep 1; done
      if [ "$(cat "$pidfile" 2>/dev/null)" = "$server" ]; then "$0" stop >/dev/null 2>&1 || true; fi
    ) </dev/null >/dev/null 2>&1 &
    disown || true
  fi
  log "SeaweedFS S3 on http://127.0.0.1:$s3 (pid $(cat "$pidfile"), data in $dir)"
}

stop() {
  if running; then
    local pid
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  fi
  [ -d "$dir" ] || return 0
  rm -f "$pidfile" "$envfile"
  rm -rf "$dir/data"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  env)
    if running && [ -f "$envfile" ]; then cat "$envfile"; else log "not running: run '$0 start' first"; exit 1; fi ;;
  *) echo "usage: $0 start [--parent PID] | env | stop" >&2; exit 2 ;;
esac
