#!/usr/bin/env bash
# The steps of infra/deploy/Dockerfile, runnable outside a container (infra/deploy/check.sh runs
# `stage cpu` in `make test`, so they are exercised on machines without a container runtime).
#
#   image.sh build OUTDIR
#       set-up (infra/setup-libtorch.sh: the slim CPU libtorch from the pinned PyPI wheel), then
#       `cargo build --release --locked --bin cairn`; copies the binary to OUTDIR/cairn.
#   image.sh stage cpu|cuda BINARY DEST
#       lays out what an image holds: DEST/bin/cairn (stripped, library path $ORIGIN/../lib) and
#       DEST/lib with the libraries it loads: for cpu, the slim libtorch set-up made; for cuda,
#       libtorch and every CUDA library it needs, from the wheels pinned (sha256) in
#       infra/requirements-libtorch-cuda.txt. Fails if any library a staged file needs is neither
#       staged nor a system library (infra/deploy/stage_libs.py), and, for cpu, unless
#       DEST/bin/cairn runs `cairn info`. Prints the staged size.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CAIRN_CACHE:-$HOME/.cache/cairn}
log() { printf 'image: %s\n' "$*" >&2; }

build() {
  local out=${1:?build needs OUTDIR}
  cd "$root"
  bash infra/setup-libtorch.sh
  cargo build --release --locked --bin cairn
  mkdir -p "$out"
  cp "$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/cairn" "$out/cairn"
  log "built $out/cairn"
}

stage() {
  local flavour=${1:?stage needs cpu or cuda} binary=${2:?stage needs BINARY} dest=${3:?stage needs DEST}
  [ -x "$binary" ] || { log "$binary is not an executable"; exit 1; }
  command -v patchelf >/dev/null || { log "patchelf is missing (Debian: apt-get install patchelf)"; exit 1; }
  rm -rf "$dest"
  mkdir -p "$dest/bin" "$dest/lib"
  strip -o "$dest/bin/cairn" "$binary"
  # The binary finds its libraries beside it, wherever the tree is copied; no LD_LIBRARY_PATH.
  patchelf --set-rpath '$ORIGIN/../lib' "$dest/bin/cairn"
  case $flavour in
    cpu)
      local libtorch=$cache/libtorch-2.11.0/lib
      [ -f "$libtorch/libtorch_cpu.so" ] || { log "no libtorch at $libtorch: run infra/setup-libtorch.sh first"; exit 1; }
      cp -a "$libtorch/." "$dest/lib/"
      python3 "$root/infra/deploy/stage_libs.py" check "$dest"
      # The image's health check, run from the staged tree with nothing else on the library path.
      env -u LD_LIBRARY_PATH "$dest/bin/cairn" info >&2
      ;;
    cuda)
      local wheels=$cache/wheels-cuda
      mkdir -p "$wheels"
      fetch_cuda_wheels "$wheels"
      python3 "$root/infra/deploy/stage_libs.py" extract-cuda "$wheels" "$dest/lib"
      python3 "$root/infra/deploy/stage_libs.py" check "$dest"
      ;;
    *) log "unknown flavour $flavour (cpu or cuda)"; exit 2 ;;
  esac
  log "staged $flavour image tree at $dest: $(du -sh "$dest" | cut -f1) ($(du -sh "$dest/lib" | cut -f1) of libraries)"
}

# pip download of exactly the pinned wheels (--require-hashes), for x86_64 Linux and CPython 3.11
# tags (the wheels hold no Python code we use: only their shared libraries are unpacked).
fetch_cuda_wheels() {
  local wheels=$1 platforms=() tag
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_25 manylinux_2_24 manylinux_2_18 manylinux_2_17 manylinux2014; do
    platforms+=(--platform "${tag}_x86_64")
  done
  log "downloading the CUDA wheels pinned in infra/requirements-libtorch-cuda.txt (about 3 GB once)"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes "${platforms[@]}" --python-version 3.11 --implementation cp \
    -d "$wheels" -r "$root/infra/requirements-libtorch-cuda.txt" >&2
}

case ${1:-} in
  build) shift; build "$@" ;;
  stage) shift; stage "$@" ;;
  *) log "usage: image.sh build OUTDIR | image.sh stage cpu|cuda BINARY DEST"; exit 2 ;;
esac
