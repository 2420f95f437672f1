#!/usr/bin/env bash
# Copy the CUDA libraries a binary needs at run time into a directory, so that the runtime image
# can start from the small `nvidia/cuda:*-base` image instead of `*-runtime` (~2.5 GB less).
#
# Usage: collect-cuda-libs.sh <binary> <dest dir>
#
# Copies every shared library `ldd` resolves from the CUDA toolkit or cuDNN (with its symlinks),
# plus cuBLAS's libcublasLt and, when libcudnn is needed, all libcudnn_* sub-libraries that cuDNN
# dlopens at run time. libcuda.so.1 belongs to the driver and is injected by the NVIDIA container
# runtime on a GPU host, so it is never copied (a link stub must never reach the image).
set -euo pipefail
bin="$1"
dest="$2"
mkdir -p "$dest"

copy_lib() { # <resolved path>: copy the file under its soname, keep the real file name too
  local path="$1" real
  real="$(readlink -f "$path")"
  cp -a "$real" "$dest/"
  [ "$(basename "$path")" = "$(basename "$real")" ] || ln -sf "$(basename "$real")" "$dest/$(basename "$path")"
}

# Resolve without libcuda (absent on a build machine): ldd prints "not found" for it.
mapfile -t libs < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' \
  | grep -E '/(cuda|cudnn)[^/]*/|/libcu(blas|blasLt|rand|dart|dnn|fft|sparse)[^/]*\.so|/libnvrtc' || true)
missing="$(ldd "$bin" | awk '/not found/ {print $1}' | grep -v '^libcuda\.so\.1$' || true)"
if [ -n "$missing" ]; then
  echo "collect-cuda-libs: unresolved libraries: $missing" >&2
  exit 1
fi
for lib in "${libs[@]}"; do
  copy_lib "$lib"
  case "$(basename "$lib")" in
    libcudnn.so.*)
      for sub in "$(dirname "$lib")"/libcudnn_*.so.*; do copy_lib "$sub"; done ;;
    libnvrtc.so.*)
      for sub in "$(dirname "$lib")"/libnvrtc-builtins.so.*; do copy_lib "$sub"; done ;;
  esac
done
if [ -z "${libs[*]:-}" ]; then
  echo "collect-cuda-libs: $bin needs no CUDA libraries; was it built with --features cuda?" >&2
  exit 1
fi
ls -la "$dest"
