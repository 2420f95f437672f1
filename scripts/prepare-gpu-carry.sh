#!/usr/bin/env bash
# Stage what scripts/gpu-check.sh needs on a GPU machine that has no Rust and no internet:
# the CUDA build of sdxl-worker (from scripts/build-cuda.sh) and the Python wheels of the
# diffusers reference, in .cache/gpu-carry/ (ignored by git; pass it as a carried path).
#
# Usage: scripts/prepare-gpu-carry.sh [path/to/sdxl-worker]
# Env:   GPU_CARRY_WHEELS  wheels to stage (default: diffusers and transformers, pinned to the
#                          versions the test fixtures were made with)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carry="$repo/.cache/gpu-carry"
bin="${1:-${CARGO_TARGET_DIR:-$repo/target}/release/sdxl-worker}"
wheels="${GPU_CARRY_WHEELS:-diffusers==0.42.1 transformers==5.24.0}"

[ -x "$bin" ] || { echo "prepare-gpu-carry: no binary at $bin (run scripts/build-cuda.sh)" >&2; exit 1; }
readelf -d "$bin" | grep -q 'libcuda\.so' \
  || { echo "prepare-gpu-carry: $bin is not a CUDA build" >&2; exit 1; }
rm -rf "$carry"
mkdir -p "$carry/wheels"
# Debug sections are not needed to run; the embedded PTX/fatbin sections stay.
strip -o "$carry/sdxl-worker" "$bin"
# shellcheck disable=SC2086 # word splitting of the wheel list is intended
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$carry/wheels" $wheels
total=$(du -sm "$carry" | cut -f1)
ls -la "$carry" "$carry/wheels"
echo "prepare-gpu-carry: $total MiB in $carry (the device carry limit is 64 MiB)"
[ "$total" -lt 64 ] || { echo "prepare-gpu-carry: too large to carry" >&2; exit 1; }
