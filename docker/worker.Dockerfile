# GPU worker image: runs `python -m modelops.steps.<step>` in KubernetesPodOperator pods.
# Production adds onnxruntime-gpu and TensorRT from NVIDIA's base image; the CPU build below mirrors
# the local worker environment (requirements-worker.txt) exactly.
# Not built in CI: this workplace has no Docker engine.
ARG BASE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${BASE}
WORKDIR /opt/modelops
COPY requirements-worker.txt pyproject.toml ./
RUN pip install --no-cache-dir -r requirements-worker.txt
COPY modelops ./modelops
COPY model_recipes ./model_recipes
COPY operators ./operators
COPY triton_repo_templates ./triton_repo_templates
RUN pip install --no-cache-dir --no-deps -e . && mkdir -p /airflow/xcom
ENV MODELOPS_EXECUTION=kubernetes \
    MODELOPS_TRITONSERVER=/opt/tritonserver/bin/tritonserver \
    MODELOPS_TRITON_BACKENDS=/opt/tritonserver/backends \
    MODELOPS_PERF_ANALYZER=/usr/local/bin/perf_analyzer \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["python"]
