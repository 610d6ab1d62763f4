#!/usr/bin/env python3
"""The library half of infra/deploy/image.sh.

  stage_libs.py check DEST
      Every ELF file under DEST/bin and DEST/lib: each library it names (DT_NEEDED) must be in
      DEST/lib or be one the base image provides (SYSTEM below). Exit 1 naming what is missing.
  stage_libs.py extract-cuda WHEELS LIBDIR
      Unpacks into LIBDIR the shared libraries of the wheels pinned in
      infra/requirements-libtorch-cuda.txt, after checking each wheel's sha256 against the pins
      (pip checked it when it downloaded the file; this checks it again when it comes from a cache).
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PINS = os.path.join(ROOT, "infra", "requirements-libtorch-cuda.txt")

# What the images' base (Debian slim, Ubuntu under nvidia/cuda) provides, and the driver's
# libcuda.so.1, which the NVIDIA container toolkit mounts into a GPU container at run time.
SYSTEM = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libgcc_s.so.1",
    "libstdc++.so.6", "ld-linux-x86-64.so.2", "libutil.so.1", "libcuda.so.1",
    # zlib1g: dpkg links it, so every Debian and Ubuntu base has it (cuDNN needs it).
    "libz.so.1",
}
# torch/lib files a libtorch program does not load: the Python bindings and its shared-memory helper.
TORCH_SKIP = {"libtorch_python.so", "libshm.so"}
# Optional plugins that a library loads only when asked to: NVSHMEM's multi-node transports and
# bootstraps (MPI, UCX, libfabric, InfiniBand) and cuFile's RDMA path. A cairn worker uses one GPU
# and neither, and each needs a cluster's fabric libraries that no base image has.
PLUGIN_SKIP = re.compile(r"^(nvshmem_transport_|nvshmem_bootstrap_|libcufile_rdma)")


def fail(msg):
    print(f"stage_libs: {msg}", file=sys.stderr)
    sys.exit(1)


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def needed(path):
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def check(dest):
    lib = os.path.join(dest, "lib")
    present = set(os.listdir(lib))
    missing = {}
    count = 0
    for sub in ("bin", "lib"):
        folder = os.path.join(dest, sub)
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path) or not is_elf(path):
                continue
            count += 1
            for dep in needed(path):
                if dep not in present and dep not in SYSTEM:
                    missing.setdefault(dep, []).append(f"{sub}/{name}")
    if missing:
        fail("; ".join(f"{dep} (needed by {', '.join(by)})" for dep, by in sorted(missing.items()))
             + f": not in {lib} and not a base-image library")
    print(f"stage_libs: {count} ELF files, every library they need is staged or a base-image library",
          file=sys.stderr)


def pins():
    """{normalised wheel-name prefix: set of sha256} from the pins file."""
    text = open(PINS).read()
    out = {}
    for block in re.split(r"\n(?=[a-z])", text):
        m = re.match(r"([a-z0-9-]+)==(\S+)", block)
        if not m:
            continue
        prefix = f"{m.group(1).replace('-', '_')}-{m.group(2)}-"
        out[prefix] = set(re.findall(r"sha256:([0-9a-f]{64})", block))
    if not out:
        fail(f"{PINS} pins nothing")
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_cuda(wheels, libdir):
    os.makedirs(libdir, exist_ok=True)
    files = sorted(os.listdir(wheels))
    for prefix, hashes in pins().items():
        hits = [f for f in files if f.startswith(prefix) and f.endswith(".whl") and "x86_64" in f]
        if not hits:
            fail(f"no wheel {prefix}* in {wheels}")
        whl = os.path.join(wheels, hits[0])
        have = sha256(whl)
        if have not in hashes:
            fail(f"{hits[0]} has sha256 {have}, which infra/requirements-libtorch-cuda.txt does not pin:"
                 " refusing a changed or substituted wheel (delete it to download again)")
        taken = 0
        with zipfile.ZipFile(whl) as z:
            for info in z.infolist():
                name = info.filename
                base = os.path.basename(name)
                if name.endswith("/") or ".so" not in base or PLUGIN_SKIP.match(base):
                    continue
                if name.startswith("torch/lib/") and base not in TORCH_SKIP:
                    pass
                elif re.match(r"nvidia/[^/]+/lib/", name) or re.match(r"nvidia/cu\d+/lib/", name):
                    pass
                else:
                    continue
                target = os.path.join(libdir, base)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.chmod(target, 0o755)
                taken += 1
        if taken == 0:
            fail(f"{hits[0]} holds no shared library")
        print(f"stage_libs: {hits[0]}: {taken} libraries", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "extract-cuda":
        extract_cuda(sys.argv[2], sys.argv[3])
    else:
        fail("usage: stage_libs.py check DEST | extract-cuda WHEELS LIBDIR")
