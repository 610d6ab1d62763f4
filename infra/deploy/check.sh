#!/usr/bin/env bash
# The deployment files, checked in `make test` (infra/test.sh runs this after the Rust tests, with
# the test S3 server in the environment). No container runtime is needed:
#   1. hadolint lints infra/deploy/Dockerfile, and checkov scans it, the Kubernetes manifests and
#      the Terraform (0 failed checks; every skip carries its reason in the file);
#   2. kubernetes-validate checks every manifest against Kubernetes 1.30 and 1.33 schemas
#      (--strict: unknown fields fail); docker-compose config validates the compose file;
#      bc-python-hcl2 parses every .tf file (check.py);
#   3. each tool is shown a broken copy and must reject it (a check that cannot fail proves nothing);
#   4. check.py consistency: the Terraform and docs/SECURITY.md policies, the IAM prefixes, the
#      example's mirror prefixes and every cairn command line against the binary;
#   5. image.sh stage cpu: the Dockerfile's staging step, then `cairn info` from the staged tree;
#   6. check.py rehearse: the compose file's services as processes on the test S3 server;
#   7. where a Docker engine with the compose plugin is available, `docker compose up` until the
#      auditor passes an audit of 3 final rounds.
# Usage: check.sh CAIRN_BINARY
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cairn=${1:?usage: check.sh CAIRN_BINARY}
cairn=$(cd "$(dirname "$cairn")" && pwd)/$(basename "$cairn")
deploy=$root/infra/deploy
venv=$(bash "$deploy/setup-tools.sh")
export PATH=$venv/bin:$PATH
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
log() { printf 'deploy-check: %s\n' "$*" >&2; }

must_fail() { # what command...
  local what=$1; shift
  if "$@" >"$scratch/out" 2>&1; then
    log "FAIL: $what was accepted; the check cannot fail"; exit 1
  fi
}

log "hadolint infra/deploy/Dockerfile"
hadolint "$deploy/Dockerfile"
sed 's/^FROM debian:12-slim AS cpu/FROM debian AS cpu/' "$deploy/Dockerfile" >"$scratch/Dockerfile"
must_fail "a Dockerfile with an untagged base image" hadolint "$scratch/Dockerfile"

for framework in dockerfile kubernetes terraform; do
  case $framework in
    dockerfile) target=(-f "$deploy/Dockerfile") ;;
    kubernetes) target=(-d "$deploy/k8s") ;;
    terraform) target=(-d "$deploy/terraform/aws") ;;
  esac
  log "checkov --framework $framework"
  checkov "${target[@]}" --framework "$framework" --quiet --compact --skip-download --output cli
done
mkdir -p "$scratch/tf"
sed 's/block_public_acls       = true/block_public_acls       = false/' "$deploy/terraform/aws/bucket.tf" >"$scratch/tf/bucket.tf"
must_fail "a bucket that allows public ACLs" checkov -d "$scratch/tf" --framework terraform --quiet --compact --skip-download

manifests=()
for f in "$deploy"/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
for version in 1.30.0 1.33.0; do
  log "kubernetes-validate --strict -k $version (${#manifests[@]} files)"
  kubernetes-validate --strict --quiet -k "$version" "${manifests[@]}"
done
sed 's/^  replicas: 2$/  replica: 2/' "$deploy/k8s/workers.yaml" >"$scratch/workers.yaml"
must_fail "a StatefulSet with a misspelt field" kubernetes-validate --strict --quiet -k 1.33.0 "$scratch/workers.yaml"

log "docker-compose config ($(docker-compose version --short))"
docker-compose -f "$deploy/compose/compose.yaml" config -q
sed 's/condition: service_completed_successfully/condition: service_finished/' "$deploy/compose/compose.yaml" >"$scratch/compose.yaml"
must_fail "a compose file with an unknown depends_on condition" docker-compose -f "$scratch/compose.yaml" config -q

log "consistency with the binary and docs/SECURITY.md"
python "$deploy/check.py" consistency "$cairn"

log "image.sh stage cpu (the Dockerfile's staging step)"
bash "$deploy/image.sh" stage cpu "$cairn" "$scratch/image"

log "the compose services, rehearsed as processes"
python "$deploy/check.py" rehearse "$cairn"

# 7. With a Docker engine and the compose plugin (none on the machine this was written on), the
#    real thing: build the images, start the consortium, and wait until the auditor has passed an
#    audit of 3 final rounds or more. CAIRN_COMPOSE_UP=0 skips it (the image build is a release
#    build: many minutes on a cold machine).
if [ "${CAIRN_COMPOSE_UP:-1}" != 0 ] && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  project=cairn-check-$$
  compose=(docker compose -f "$deploy/compose/compose.yaml" -p "$project")
  trap '"${compose[@]}" down -v >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
  log "docker compose up (project $project)"
  "${compose[@]}" up --build --detach
  passed=""
  for _ in $(seq 1 240); do
    if "${compose[@]}" logs auditor 2>/dev/null | grep -Eq 'audit: OK rounds=([3-9]|[1-9][0-9]+) '; then passed=1; break; fi
    sleep 5
  done
  "${compose[@]}" logs --tail 5 >&2 || true
  [ -n "$passed" ] || { log "FAIL: the compose auditor did not pass an audit of 3 final rounds within 20 minutes"; exit 1; }
  log "docker compose up: the auditor passed an audit of 3 or more final rounds"
else
  log "no Docker engine with the compose plugin here (or CAIRN_COMPOSE_UP=0): docker compose up not run; the rehearsal above ran its services as processes"
fi
log "all deployment checks passed"
