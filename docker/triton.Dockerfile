# GPU Triton image: NVIDIA's Triton Inference Server (NGC) with its onnxruntime, tensorrt and python
# backends, the packages this repository's python-backend models import, and the repository reconciler
# (`modelops serving reconcile --watch`, run as a sidecar of every replica from this same image).
# Build from the repository root:  docker build -f docker/triton.Dockerfile -t modelops/triton:<tag> .
# Checked here by hadolint and tests/unit/test_deploy_manifests.py; never built in CI (no Docker engine).
FROM nvcr.io/nvidia/tritonserver:25.10-py3

# Ubuntu 24.04 marks its Python externally managed; this image is that Python's only user.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/modelops
COPY docker/requirements-triton-python.txt docker/requirements-serving.txt ./docker/
RUN pip install --no-cache-dir -r docker/requirements-triton-python.txt -r docker/requirements-serving.txt
COPY pyproject.toml ./
# the core library only: a deployment is self-contained (its model.py and helpers ship in it)
COPY modelops ./modelops
RUN pip install --no-cache-dir --no-deps . \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin modelops

# tritonserver needs no root: models come from S3, the ports are above 1024.
USER 10001:10001
EXPOSE 8000 8001 8002
# Liveness only (the process answers): readiness is per model and strict readiness is off.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/live"]
