# GPU worker image: runs `python -m modelops.steps.<step>` (export, optimize, compile, benchmark) in
# KubernetesPodOperator pods on GPU nodes. CUDA + cuDNN runtime from NVIDIA's base image; torch,
# onnxruntime-gpu, TensorRT, Polygraphy and onnxruntime-genai from their wheels; NVIDIA ModelOpt in an
# environment of its own (its pins conflict with the worker's, as in `make modelopt`).
# Build from the repository root:  docker build -f docker/worker-gpu.Dockerfile -t modelops/worker-gpu:<tag> .
# Checked here by hadolint and tests/unit/test_deploy_manifests.py; never built in CI (no Docker engine).
# CUDA 13: PyPI's torch 2.13.0 and onnxruntime-gpu 1.31 are CUDA 13 builds (tensorrt-cu13 to match).
# Python is Ubuntu 24.04's 3.12 (the code needs >= 3.11).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

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
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# A batch image: each pod runs one step and exits; the pod's activeDeadlineSeconds bounds it.
HEALTHCHECK NONE
ENTRYPOINT ["python"]
