# Airflow image (api-server, scheduler, dag-processor, triggerer and, with the KubernetesExecutor, the
# task pods): the official Airflow 3 image, this repository's providers (requirements.txt) and code.
# Build from the repository root:  docker build -f docker/airflow.Dockerfile -t modelops/airflow:<tag> .
# Checked here by hadolint and tests/unit/test_deploy_manifests.py; never built in CI (no Docker engine).
FROM apache/airflow:3.3.2-python3.11 AS cluster

# The official image installs as the unprivileged `airflow` user (uid 50000); pip refuses to run as root.
USER 50000:0
COPY --chown=airflow:root requirements.txt pyproject.toml /opt/modelops/
COPY --chown=airflow:root constraints/orchestrator.txt /opt/modelops/constraints/
# apache-airflow stays at the base image's version: requirements.txt pins the same 3.3.2; the lock
# (constraints/orchestrator.txt) pins every other package to what the embedded stack's tests ran on.
RUN pip install --no-cache-dir -c /opt/modelops/constraints/orchestrator.txt "apache-airflow==3.3.2" \
        -r /opt/modelops/requirements.txt
COPY --chown=airflow:root modelops /opt/modelops/modelops
COPY --chown=airflow:root model_recipes /opt/modelops/model_recipes
COPY --chown=airflow:root operators /opt/modelops/operators
COPY --chown=airflow:root modelops_airflow /opt/modelops/modelops_airflow
COPY --chown=airflow:root triton_repo_templates /opt/modelops/triton_repo_templates
COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
# the pool sizing CronJob's script (deploy/airflow/gpu-capacity-cronjob.yaml)
COPY --chown=airflow:root deploy/gpu_capacity.py /opt/modelops/deploy/gpu_capacity.py
RUN pip install --no-cache-dir --no-deps -e /opt/modelops

# Heavy steps run as KubernetesPodOperator pods in the worker image (deploy/airflow/values.yaml); the
# compose file overrides this for one node.
ENV MODELOPS_EXECUTION=kubernetes \
    PYTHONUNBUFFERED=1
# One image, several roles: the compose file and the Helm chart give each component its own probe
# (`airflow jobs check` for scheduler/triggerer/dag-processor, /api/v2/monitor/health for the api-server).
HEALTHCHECK NONE

# `local-gpu`: the one-node compose file (docker/compose.yaml). The LocalExecutor runs the heavy steps as
# subprocesses of the scheduler, in a worker environment with the GPU builds (the wheels bring their CUDA
# libraries; the NVIDIA Container Toolkit brings the driver). The cluster image above stays lean.
FROM cluster AS local-gpu
COPY --chown=airflow:root requirements-worker.txt requirements-worker-nodeps.txt /opt/modelops/
COPY --chown=airflow:root docker/requirements-worker-gpu.txt /opt/modelops/docker/
RUN python -m venv /opt/airflow/worker-venv \
    && grep -vE '^(onnxruntime|onnxruntime-genai)==' /opt/modelops/requirements-worker.txt > /tmp/requirements-cpu-less.txt \
    && /opt/airflow/worker-venv/bin/pip install --no-cache-dir -r /tmp/requirements-cpu-less.txt \
        -r /opt/modelops/docker/requirements-worker-gpu.txt \
    && /opt/airflow/worker-venv/bin/pip install --no-cache-dir --no-deps -r /opt/modelops/requirements-worker-nodeps.txt \
    && /opt/airflow/worker-venv/bin/pip install --no-cache-dir --no-deps -e /opt/modelops \
    && rm /tmp/requirements-cpu-less.txt
ENV MODELOPS_EXECUTION=local \
    MODELOPS_WORKER_PYTHON=/opt/airflow/worker-venv/bin/python
HEALTHCHECK NONE
