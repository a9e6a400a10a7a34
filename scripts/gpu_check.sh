#!/usr/bin/env bash
# GPU check for a lent GPU machine (issue 13): nvidia-smi / MIG discovery -> GPU product tag and pools,
# onnxruntime-gpu (CUDA EP) vs PyTorch eager on the demo candidates, ModelOpt INT8/FP8 calibration on the GPU
# and a TensorRT engine build where tensorrt imports. Writes bench/results/gpu_check.json (or --out) and prints
# a table; see bench/gpu_check.py. Without a GPU every GPU check is skipped with its reason and it exits 0;
# it exits 1 when a check failed.
#
# Interpreter: $MODELOPS_GPU_CHECK_PYTHON, else the first of .venv-worker/bin/python, python3 whose torch sees
# a CUDA device, else the first of them that runs (the checks then say skipped).
# Packages a bare machine lacks (onnxruntime-gpu, pydantic for the demo models, tensorrt...) can come as wheels:
# MODELOPS_GPU_CHECK_WHEELS=<folder of .whl> installs them (no index, no deps) into a temporary site for this run.
# The ModelOpt checks use $MODELOPS_MODELOPT_PYTHON or .venv-modelopt (make modelopt); the worker-gpu image has all.
#
# Usage: scripts/gpu_check.sh [--out PATH] [--only gpu_discovery,ort_cuda_vs_torch,...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

runs() { [ -n "$1" ] && "$1" -c 'import sys' >/dev/null 2>&1; }
has_cuda() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }

candidates=("$root/.venv-worker/bin/python" "$(command -v python3 || true)")
py="${MODELOPS_GPU_CHECK_PYTHON:-}"
if [ -z "$py" ]; then
  for c in "${candidates[@]}"; do
    if runs "$c" && has_cuda "$c"; then py=$c; break; fi
  done
fi
if [ -z "$py" ]; then
  for c in "${candidates[@]}"; do
    if runs "$c"; then py=$c; break; fi
  done
fi
if ! runs "$py"; then
  echo "gpu_check: no Python interpreter found (set MODELOPS_GPU_CHECK_PYTHON)" >&2
  exit 2
fi

if [ -n "${MODELOPS_GPU_CHECK_WHEELS:-}" ]; then
  site=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
  trap 'rm -rf "$site"' EXIT
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
    "$MODELOPS_GPU_CHECK_WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
echo "gpu_check: $py"
"$py" "$root/bench/gpu_check.py" "$@"
