#!/usr/bin/env bash
# The GPU check: sdxl-worker vs diffusers on the same card, same work, one run each.
#
#   ours:      sdxl-worker bench --synthetic sdxl (random weights in the real SDXL base shapes)
#   reference: scripts/diffusers_bench.py (StableDiffusionXLPipeline, random weights, fp16, SDPA)
#   both:      1024x1024, 30 steps, DPM++ 2M Karras, CFG 5, batch 1, one warm-up image first
#
# Writes ours.json, diffusers.json, summary.json (ratio ours/diffusers seconds per image; the
# target is <= 0.8), logs, nvidia-smi and ldd output into $OUT (default /tmp/sdxl-gpu-check).
# Expects .cache/gpu-carry/ from scripts/prepare-gpu-carry.sh (the binary and the diffusers/
# transformers wheels, installed only where the machine lacks them), PyTorch with CUDA on the
# machine, and the NVIDIA CUDA 13 user-space libraries as pip packages (nvidia/cu13/lib) or on
# the loader path. NOT YET RUN ON A GPU: written and checked without one.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
out="${OUT:-/tmp/sdxl-gpu-check}"
mkdir -p "$out"
carry="$repo/.cache/gpu-carry"
bin="${SDXL_WORKER_BIN:-$carry/sdxl-worker}"
steps="${GPU_CHECK_STEPS:-30}"
size="${GPU_CHECK_SIZE:-1024}"
images="${GPU_CHECK_IMAGES:-3}"
limit="${GPU_CHECK_TIMEOUT:-300}"
py="${PYTHON:-python3}"
# `bench` for sdxl-worker; empty for a stand-alone bench binary (cargo's `--example bench`).
sub="${GPU_CHECK_BENCH_SUBCOMMAND-bench}"
log() { echo "gpu-check: $*" | tee -a "$out/gpu-check.log" >&2; }

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
"$py" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))' \
  > "$out/torch.txt" 2>&1 || log "torch import failed (see torch.txt)"

# CUDA libraries from pip packages (nvidia-cublas, nvidia-curand, nvidia-cuda-runtime, cudnn …).
libdirs="$("$py" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
roots = list(nvidia.__path__)
dirs = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "**", "lib*.so*"), recursive=True)})
print(":".join(dirs))
PY
)"
export LD_LIBRARY_PATH="${libdirs:+$libdirs:}${LD_LIBRARY_PATH:-}"
echo "$LD_LIBRARY_PATH" > "$out/ld_library_path.txt"

ours_ok=0
if [ ! -x "$bin" ]; then
  log "no sdxl-worker binary at $bin"
else
  ldd "$bin" > "$out/ldd.txt" 2>&1
  if grep -q 'not found' "$out/ldd.txt"; then
    log "missing libraries: $(grep 'not found' "$out/ldd.txt" | awk '{print $1}' | tr '\n' ' ')"
  else
    log "ours: $bin $sub --synthetic sdxl ${size}x${size} ${steps} steps"
    start=$(date +%s%N)
    # shellcheck disable=SC2086 # $sub is empty or one word
    if timeout "$limit" "$bin" $sub --synthetic sdxl --width "$size" --height "$size" \
        --steps "$steps" --sampler dpmpp_2m_karras --guidance 5 --images $((images + 1)) \
        > "$out/ours.json" 2> "$out/ours.log"; then
      ours_ok=1
    else
      log "ours failed (exit $?), see ours.log"
    fi
    echo "process_wall_ms $(( ($(date +%s%N) - start) / 1000000 ))" >> "$out/ours.log"
  fi
fi

# diffusers/transformers from the carried wheels, only where the machine lacks them.
pylib="$(mktemp -d)"
for mod in diffusers transformers; do
  if ! "$py" -c "import $mod" 2>/dev/null; then
    whl=""
    for w in "$carry"/wheels/"$mod"-*.whl; do [ -e "$w" ] && whl="$w"; done
    if [ -n "$whl" ]; then
      log "installing $(basename "$whl") into a temporary path"
      "$py" -m pip install --quiet --no-index --no-deps --target "$pylib" "$whl" \
        >> "$out/gpu-check.log" 2>&1 || log "pip install $whl failed"
    else
      log "$mod missing and no wheel carried"
    fi
  fi
done
export PYTHONPATH="$pylib${PYTHONPATH:+:$PYTHONPATH}"

ref_ok=0
log "reference: diffusers StableDiffusionXLPipeline, random weights, fp16, SDPA"
if timeout "$limit" "$py" scripts/diffusers_bench.py --width "$size" --height "$size" \
    --steps "$steps" --images "$images" > "$out/diffusers.json" 2> "$out/diffusers.log"; then
  ref_ok=1
else
  log "diffusers failed (exit $?), see diffusers.log"
fi

"$py" - "$out" "$ours_ok" "$ref_ok" <<'PY' | tee "$out/summary.json"
import json, os, sys
out, ours_ok, ref_ok = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
def load(name, ok):
    if not ok:
        return None
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": str(e)}
ours, ref = load("ours.json", ours_ok), load("diffusers.json", ref_ok)
s = {"ours": ours, "diffusers": ref}
try:
    ratio = ours["seconds_per_image"] / ref["seconds_per_image"]
    s["ratio_seconds_per_image_ours_over_diffusers"] = ratio
    s["target_ratio"] = 0.8
    s["meets_target"] = ratio <= 0.8
except (TypeError, KeyError, ZeroDivisionError):
    s["ratio_seconds_per_image_ours_over_diffusers"] = None
print(json.dumps(s, indent=2))
PY
rm -rf "$pylib"
[ "$ours_ok" = 1 ] && [ "$ref_ok" = 1 ]
