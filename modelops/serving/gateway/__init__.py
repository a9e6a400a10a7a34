"""The serving gateway: one authenticated entrance that routes every public model name by its weights.

``python -m modelops.serving.gateway --port 9000`` serves KServe v2 HTTP under registered model names
(``/v2/models/<model>/infer``) on uvicorn (uvloop + httptools) and forwards each request to one Triton
deployment picked from ``s3://<triton bucket>/routes/<model>.json``. Modules: :mod:`.app` (endpoints),
:mod:`.proxy` (bodies and forwarding), :mod:`.routing` (weighted pick), :mod:`.reload` (routes hot
reload), :mod:`.keys` / :mod:`.auth` (API keys), :mod:`.inflight`, :mod:`.metrics`, :mod:`.config`;
:mod:`.keys_cli` is ``modelops keys``. The OpenAI-compatible ``/v1`` API: :mod:`.openai_api` (endpoints),
:mod:`.openai_schema` (request bodies, error shape), :mod:`.llm_stream` (Triton's generate extension -> chat
completions), :mod:`.registry_info` (MLflow descriptions).
"""

from __future__ import annotations

from modelops.serving.gateway.app import Gateway, create_app
from modelops.serving.gateway.config import GatewayConfig

__all__ = ["Gateway", "GatewayConfig", "create_app"]
