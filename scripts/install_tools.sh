#!/usr/bin/env bash
# Serving tools for the embedded stack (see ../shared/ENVIRONMENT.md):
#  - tritonserver 2.51 with the python backend, from the nvidia-pytriton wheel (run as a binary);
#  - perf_analyzer from tritonclient 2.51 (newer wheels need glibc 2.38), plus libcudart.so.12 and libb64;
#  - Debian's prometheus (server + promtool) for the stack's metrics (rollout analysis);
#  - Debian's chromium + chromium-driver for the headless-browser test of Open WebUI (selenium drives it).
# Idempotent: re-running with everything in place does nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="${MODELOPS_TOOLS_DIR:-$root/.tools}"
py="${PYTHON:-python3}"
mkdir -p "$tools/wheels"
if [ ! -x "$tools/pytriton/pytriton/tritonserver/bin/tritonserver" ]; then
  "$py" -m pip download -q --no-deps nvidia-pytriton==0.7.0 -d "$tools/wheels"
  rm -rf "$tools/pytriton" && "$py" -m zipfile -e "$tools"/wheels/nvidia_pytriton-0.7.0-*.whl "$tools/pytriton"
  chmod +x "$tools/pytriton/pytriton/tritonserver/bin/tritonserver" "$tools"/pytriton/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub
fi
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
cp "$tools/pytriton/pytriton/tritonserver/python_backend_stubs/$pyver/triton_python_backend_stub" \
   "$tools/pytriton/pytriton/tritonserver/backends/python/"
if [ ! -x "$tools/tritonclient/tritonclient-2.51.0.data/data/bin/perf_analyzer" ]; then
  "$py" -m pip download -q --no-deps tritonclient==2.51.0 -d "$tools/wheels"
  rm -rf "$tools/tritonclient" && "$py" -m zipfile -e "$tools"/wheels/tritonclient-2.51.0-*.whl "$tools/tritonclient"
  chmod +x "$tools/tritonclient/tritonclient-2.51.0.data/data/bin/perf_analyzer"
fi
if [ ! -d "$tools/cudart/nvidia/cuda_runtime/lib" ]; then
  "$py" -m pip install -q --no-deps --target "$tools/cudart" "nvidia-cuda-runtime-cu12==12.9.79"
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq libb64-0d >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null))
  else
    echo "perf_analyzer needs Debian's libb64-0d: sudo apt-get install libb64-0d" >&2; exit 1
  fi
fi
if [ ! -x /usr/bin/prometheus ] && ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq prometheus >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq prometheus >/dev/null))
  else
    echo "the stack's Prometheus needs Debian's prometheus package: sudo apt-get install prometheus" >&2; exit 1
  fi
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null))
  else
    echo "the Open WebUI browser test needs Debian's chromium: sudo apt-get install chromium chromium-driver" >&2; exit 1
  fi
fi
libdir=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
echo "$libdir:$tools/pytriton/nvidia_pytriton.libs:$tools/cudart/nvidia/cuda_runtime/lib" > "$tools/ld_library_path"
rm -rf "$tools/wheels"
echo "tools ready in $tools"
