#!/usr/bin/env bash
# Build sdxl-worker with CUDA on a machine that has no GPU and no system CUDA toolkit.
#
# The CUDA 13.0 toolkit is assembled from NVIDIA's PyPI wheels into a cache directory (the
# wheels unpack into one `nvidia/cu13/{bin,include,lib,nvvm}` tree, which is a valid CUDA_HOME),
# plus a link-only `libcuda.so` stub, because candle links libcuda dynamically and the driver
# library does not exist on a build machine. Then it runs exactly:
#
#     cargo build --release --locked --features cuda      (or --features cudnn with --cudnn)
#
# which is the same command the Dockerfile's builder stage runs.
#
# Usage: scripts/build-cuda.sh [--cudnn] [--toolkit-only] [--print-env] [-- <extra cargo args>]
#
# Environment:
#   CUDA_COMPUTE_CAP    GPU arch for candle's kernels (default 80; see below)
#   CUDA_TOOLKIT_DIR    where the toolkit tree is cached (default <repo>/.cache/cuda-13.0)
#   CARGO_TARGET_DIR    honoured as usual (use a separate one so CPU builds stay warm)
#   CUDAFORGE_THREADS   nvcc parallelism inside candle-kernels' build script (default: nproc)
#
# Why CUDA_COMPUTE_CAP=80: candle-kernels compiles its kernels for ONE arch and embeds them as PTX,
# which the driver JIT-compiles at first use. PTX for compute_80 JITs forward to Ampere (86),
# Ada (89) and Hopper (90), so one binary runs on every card RunPod rents. `90` would become
# `sm_90a` (arch-specific, Hopper-only). The heavy maths (GEMMs, cuDNN convolutions) runs in
# cuBLAS/cuDNN, which pick per-arch kernels at run time, so PTX-for-80 costs little speed; the JIT
# cost is paid once per process (warm-up) or once per host with CUDA_CACHE_PATH on a volume.
#
# nvcc is pinned to 13.0: candle embeds PTX, and a driver can only JIT PTX from a CUDA version it
# knows. 13.0 PTX needs driver >= 580; nvcc 13.1+ would need a newer driver, and cudarc 0.19
# panics on nvcc >= 13.5.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolkit="${CUDA_TOOLKIT_DIR:-$repo/.cache/cuda-13.0}"
features=cuda
toolkit_only=0
print_env=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cudnn) features=cudnn ;;
    --toolkit-only) toolkit_only=1 ;;
    --print-env) print_env=1; toolkit_only=1 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown argument '$1' (allowed: --cudnn, --toolkit-only, --print-env, -- <cargo args>)" >&2; exit 2 ;;
  esac
  shift
done

# Pinned wheel set (CUDA 13.0). Each wheel unpacks into nvidia/cu13/.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35
  nvidia-cublas==13.0.2.14
)
cudnn_wheel=nvidia-cudnn-cu13==9.13.0.50

log() { echo "build-cuda: $*" >&2; }

fetch_wheels() { # <dest> <specs...>
  local dest="$1"; shift
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --python-version 3.11 -d "$dest" "$@"
}

unpack_wheels() { # <wheel dir> <extract dir>
  local w
  for w in "$1"/*.whl; do python3 -m zipfile -e "$w" "$2"; done
}

make_toolkit() {
  local tmp
  mkdir -p "$(dirname "$toolkit")"
  tmp="$(mktemp -d "${toolkit}.tmp.XXXXXX")"
  log "downloading CUDA 13.0 wheels into $tmp"
  fetch_wheels "$tmp/wheels" "${wheels[@]}"
  unpack_wheels "$tmp/wheels" "$tmp/x"
  mv "$tmp/x/nvidia/cu13" "$tmp/cu13"
  # zipfile drops the exec bits.
  chmod +x "$tmp"/cu13/bin/* "$tmp"/cu13/nvvm/bin/*
  (
    cd "$tmp/cu13/lib"
    # The wheels ship only versioned sonames; the linker needs `-lcublas` -> libcublas.so.
    for f in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13 libcurand.so.10; do
      [ -e "$f" ] || { log "wheel set lacks lib/$f"; exit 1; }
      ln -sf "$f" "${f%%.so*}.so"
    done
    # Link-only stub for the driver library, with the real soname so the binary records
    # NEEDED libcuda.so.1. Every cu* entry point in cuda.h gets an empty body; the real
    # library is injected by the NVIDIA container runtime on a GPU host. Never ship it.
    mkdir -p stubs
    {
      grep -oE 'CUDAAPI +cu[A-Za-z0-9_]+ *\(' ../include/cuda.h | sed -E 's/CUDAAPI +//; s/ *\(//'
      gcc -E -P -I ../include ../include/cuda.h | grep -oE '\bcu[A-Z][A-Za-z0-9_]* *\(' | sed -E 's/ *\(//'
    } | sort -u | awk '{print "void " $1 "(void){}"}' > stubs/libcuda_stub.c
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/libcuda_stub.c
  )
  rm -rf "$tmp/wheels" "$tmp/x"
  mkdir -p "$(dirname "$toolkit")"
  rm -rf "$toolkit"
  mv "$tmp/cu13" "$toolkit"
  rmdir "$tmp"
}

add_cudnn() {
  local tmp
  tmp="$(mktemp -d "${toolkit}.cudnn.XXXXXX")"
  log "downloading $cudnn_wheel"
  fetch_wheels "$tmp/wheels" "$cudnn_wheel"
  unpack_wheels "$tmp/wheels" "$tmp/x"
  rm -rf "$toolkit/cudnn"
  mv "$tmp/x/nvidia/cudnn" "$toolkit/cudnn"
  # cudarc only searches lib dirs under CUDA_ROOT: put the link name there.
  ln -sf ../cudnn/lib/libcudnn.so.9 "$toolkit/lib/libcudnn.so"
  rm -rf "$tmp"
}

if [ ! -x "$toolkit/bin/nvcc" ] || [ ! -e "$toolkit/lib/stubs/libcuda.so" ]; then
  command -v gcc >/dev/null || { log "gcc is required (nvcc host compiler and the libcuda stub)"; exit 1; }
  make_toolkit
fi
if [ "$features" = cudnn ] && [ ! -e "$toolkit/lib/libcudnn.so" ]; then
  add_cudnn
fi

export CUDA_HOME="$toolkit" CUDA_ROOT="$toolkit" CUDA_PATH="$toolkit"
export PATH="$toolkit/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"

if [ "$print_env" = 1 ]; then
  for v in CUDA_HOME CUDA_ROOT CUDA_PATH PATH CUDA_COMPUTE_CAP CUDARC_CUDA_VERSION CUDAFORGE_THREADS; do
    [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
  done
  exit 0
fi
log "toolkit: $("$toolkit/bin/nvcc" --version | tail -1)"
[ "$toolkit_only" = 1 ] && exit 0

cd "$repo"
log "CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP features=$features target=${CARGO_TARGET_DIR:-$repo/target}"
start=$(date +%s)
cargo build --release --locked --features "$features" "${extra[@]}"
end=$(date +%s)

bin="${CARGO_TARGET_DIR:-$repo/target}/release/sdxl-worker"
log "built in $((end - start)) s: $bin ($(stat -c %s "$bin") bytes)"
log "NEEDED: $(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
