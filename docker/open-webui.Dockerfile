# Open WebUI, the chat UI: the upstream image pinned to the version the embedded stack runs
# (requirements-openwebui.txt, 0.12.4), with the offline settings ModelOps uses. Its connection to the
# gateway, model list and group grants are managed by the refresh task (operators/openwebui_tasks.py).
# Build from the repository root:  docker build -f docker/open-webui.Dockerfile -t modelops/open-webui:<tag> .
# Checked here by hadolint and tests/unit/test_deploy_manifests.py; never built in CI (no Docker engine).
FROM ghcr.io/open-webui/open-webui:v0.12.4

# No Ollama, no model hub downloads, embeddings through the OpenAI-compatible gateway; WEBUI_SECRET_KEY and
# the admin account come from secrets at run time, never from the image.
# hadolint ignore=DL3064
ENV OFFLINE_MODE=true \
    HF_HUB_OFFLINE=1 \
    ENABLE_OLLAMA_API=false \
    ENABLE_API_KEYS=true \
    RAG_EMBEDDING_ENGINE=openai \
    BYPASS_EMBEDDING_AND_RETRIEVAL=true \
    ENABLE_SIGNUP=false
# It stays root: upstream builds non-root only from source (`--build-arg UID`), which it calls untested.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8080/health"]
