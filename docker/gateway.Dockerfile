# Serving gateway image: `python -m modelops.serving.gateway` (Starlette on uvicorn), the only way in for
# inference. Stateless: routes come from S3, API keys from the keys database on a mounted volume.
# Build from the repository root:  docker build -f docker/gateway.Dockerfile -t modelops/gateway:<tag> .
# Checked here by hadolint and tests/unit/test_deploy_manifests.py; never built in CI (no Docker engine).
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/modelops
COPY docker/requirements-serving.txt ./docker/
COPY constraints/orchestrator.txt ./constraints/
# the orchestrator environment's lock: the gateway's transitive packages are the versions its tests ran on
RUN pip install --no-cache-dir -c constraints/orchestrator.txt -r docker/requirements-serving.txt
COPY pyproject.toml ./
# the core library only: a deployment is self-contained (its model.py and helpers ship in it)
COPY modelops ./modelops
RUN pip install --no-cache-dir --no-deps . \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/modelops/gateway \
    && chown gateway /var/lib/modelops/gateway

ENV MODELOPS_GATEWAY_KEYS_DB=/var/lib/modelops/gateway/keys.db
USER 10001:10001
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9000/v2/health/live', timeout=2)"]
# In a container the gateway listens on every interface of its own network namespace (the Service or
# the compose network is what exposes it).
ENTRYPOINT ["python", "-m", "modelops.serving.gateway", "--host", "0.0.0.0", "--port", "9000"]
