# GPU worker image: runs `python -m modelops.steps.<step>` (export, optimize, compile, validate, benchmark) in
# KubernetesPodOperator pods on GPU nodes. CUDA + cuDNN runtime from NVIDIA's base image; torch,
# onnxruntime-gpu, TensorRT, Polygraphy and onnxruntime-genai from their wheels; NVIDIA ModelOpt in an
# environment of its own (its pins conflict with the worker's, as in `make modelopt`).
# Build from the repository root:  docker build -f docker/worker-gpu.Dockerfile -t modelops/worker-gpu:<tag> .
# Checked here by hadolint and tests/unit/test_deploy_manifests.py; never built in CI (no Docker engine).
# CUDA 13: PyPI's torch 2.13.0 and onnxruntime-gpu 1.31 are CUDA 13 builds (tensorrt-cu13 to match).
# Python is Ubuntu 24.04's 3.12 (the code needs >= 3.11).
#
# The benchmark step with serving_device gpu serves each candidate in a tritonserver of its own and measures it
# with perf_analyzer: the Triton of the serving image (docker/triton.Dockerfile, same NGC tag) and the
# perf_analyzer of its SDK image are copied in below, with every shared library they resolve in NGC's image
# (CUDA, cuDNN, TensorRT, ...) under /opt/tritonserver-libs. Only tritonserver and perf_analyzer get that folder
# (MODELOPS_TOOLS_LD_LIBRARY_PATH: the step puts it on their LD_LIBRARY_PATH), so torch and onnxruntime-gpu keep
# their own CUDA libraries. A TensorRT plan loads only in the TensorRT version that built it: the build fails
# unless the tensorrt-cu13 wheel (the compile step's builder) is the TensorRT of NGC's Triton.
FROM nvcr.io/nvidia/tritonserver:25.10-py3-sdk AS sdk
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# perf_analyzer, the ELF binary (not a launcher script that would not run elsewhere)
RUN mkdir -p /opt/perf && cp -L "$(command -v perf_analyzer)" /opt/perf/perf_analyzer \
    && head -c 4 /opt/perf/perf_analyzer | grep -q ELF

FROM nvcr.io/nvidia/tritonserver:25.10-py3 AS triton
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=sdk /opt/perf/perf_analyzer /opt/tritonserver/bin/perf_analyzer
# The libraries tritonserver, the backends the GPU benchmark renders (onnxruntime, tensorrt; python for the stub)
# and perf_analyzer resolve outside /opt/tritonserver, less glibc and the driver's (the NVIDIA container toolkit
# mounts libcuda / libnvidia-ml); the build fails on one that does not resolve. TENSORRT_VERSION: the server's.
RUN mkdir -p /opt/tritonserver-libs \
    && find /opt/tritonserver/bin /opt/tritonserver/lib /opt/tritonserver/backends/onnxruntime \
        /opt/tritonserver/backends/tensorrt /opt/tritonserver/backends/python -type f \
        \( -name '*.so*' -o -perm -u+x \) -print0 > /tmp/elves \
    && { xargs -0 ldd < /tmp/elves 2>/dev/null || true; } > /tmp/ldd \
    && if grep 'not found' /tmp/ldd | grep -vE 'lib(cuda|nvidia-ml)\.so'; then exit 1; fi \
    && awk '$2 == "=>" && $3 ~ /^\// {print $3}' /tmp/ldd | sort -u \
        | grep -vE '^/opt/tritonserver/|/(libc|libm|libdl|libpthread|librt|ld-linux-x86-64|libcuda|libnvidia-ml)\.so' \
        > /tmp/libs \
    && xargs -r cp -L -t /opt/tritonserver-libs/ < /tmp/libs \
    && basename "$(readlink -f "$(grep -m1 '/libnvinfer\.so' /tmp/libs)")" | sed 's/^libnvinfer\.so\.//' \
        > /opt/tritonserver-libs/TENSORRT_VERSION \
    && rm /tmp/elves /tmp/ldd /tmp/libs

FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv=3.12.3-* python3-dev=3.12.3-* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin modelops

WORKDIR /opt/modelops
COPY requirements-worker.txt requirements-worker-nodeps.txt requirements-modelopt.txt pyproject.toml ./
COPY docker/requirements-worker-gpu.txt ./docker/
# The worker environment, with onnxruntime / onnxruntime-genai swapped for their GPU builds (same imports).
# ModelOpt's own pins (requirements-modelopt.txt: onnxruntime-gpu 1.24, cupy-cuda12x) are CUDA 12 builds: its
# environment gets the CUDA 12 runtime and cuDNN as wheels (the [cuda,cudnn] extras) for cuda:0 calibration.
RUN python3 -m venv /opt/venv \
    && grep -vE '^(onnxruntime|onnxruntime-genai)==' requirements-worker.txt > /tmp/requirements-cpu-less.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-cpu-less.txt -r docker/requirements-worker-gpu.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -r requirements-worker-nodeps.txt \
    && python3 -m venv /opt/venv-modelopt \
    && /opt/venv-modelopt/bin/pip install --no-cache-dir -r requirements-modelopt.txt "onnxruntime-gpu[cuda,cudnn]==1.24.4" \
    && rm /tmp/requirements-cpu-less.txt

COPY --from=triton /opt/tritonserver/bin /opt/tritonserver/bin
COPY --from=triton /opt/tritonserver/lib /opt/tritonserver/lib
COPY --from=triton /opt/tritonserver/backends/onnxruntime /opt/tritonserver/backends/onnxruntime
COPY --from=triton /opt/tritonserver/backends/tensorrt /opt/tritonserver/backends/tensorrt
COPY --from=triton /opt/tritonserver/backends/python /opt/tritonserver/backends/python
COPY --from=triton /opt/tritonserver-libs /opt/tritonserver-libs
# plans built by the compile step must load in this Triton: same TensorRT (major.minor.patch)
RUN served="$(cat /opt/tritonserver-libs/TENSORRT_VERSION)" \
    && built="$(/opt/venv/bin/pip show tensorrt-cu13 | awk '/^Version:/ {print $2}')" \
    && case "$built" in "$served"*) ;; *) \
        echo "tensorrt-cu13 $built builds plans the Triton TensorRT $served cannot load" >&2; exit 1;; esac

COPY modelops ./modelops
COPY model_recipes ./model_recipes
COPY operators ./operators
COPY triton_repo_templates ./triton_repo_templates
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps -e . \
    && /opt/venv-modelopt/bin/pip install --no-cache-dir --no-deps -e . \
    && mkdir -p /airflow/xcom \
    && chown modelops /airflow/xcom

ENV PATH=/opt/venv/bin:$PATH \
    MODELOPS_EXECUTION=kubernetes \
    MODELOPS_MODELOPT_PYTHON=/opt/venv-modelopt/bin/python \
    MODELOPS_TRITONSERVER=/opt/tritonserver/bin/tritonserver \
    MODELOPS_TRITON_BACKENDS=/opt/tritonserver/backends \
    MODELOPS_PERF_ANALYZER=/opt/tritonserver/bin/perf_analyzer \
    MODELOPS_TOOLS_LD_LIBRARY_PATH=/opt/tritonserver/lib:/opt/tritonserver-libs \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# A batch image: each pod runs one step and exits; the pod's activeDeadlineSeconds bounds it.
HEALTHCHECK NONE
ENTRYPOINT ["python"]
