"""What ``/v1/models`` tells about a public model from the MLflow registry: description, task, creation time.

One ``GET <mlflow>/api/2.0/mlflow/registered-models/get?name=<model>`` per model and ``ttl_s`` (30 s), on a pooled
httpx client with a short timeout; concurrent lookups of one model share one request. MLflow down or slow never
fails a request: the model is listed without a description (and that miss is cached for a few seconds so a
down MLflow is not asked on every call). The gateway never imports mlflow (its import costs more than a second).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx

from modelops.contracts.naming import TAG_TASK
from modelops.serving.gateway.caps import tag_caps

log = logging.getLogger("modelops.gateway.registry")
_MISS_TTL_S = 5.0


@dataclass(frozen=True)
class ModelInfo:
    """A registered model as ``/v1/models`` shows it."""

    description: str | None = None
    task: str | None = None  # the ``modelops.task`` tag: chat | embedding
    created: int | None = None  # seconds since the epoch
    caps: dict[str, int] = field(default_factory=dict)  # the model's own caps (:func:`.caps.tag_caps`)


class RegistryInfo:
    """Cached registered-model lookups; ``url`` empty means no MLflow (every model without info).

    Args:
        url: MLflow's base URL (``http://host:port``).
        ttl_s: how long an answer is kept.
        timeout_s: timeout of one lookup.
        auth: ``(username, password)`` sent as basic auth (None: anonymous).
    """

    def __init__(self, url: str, ttl_s: float = 30.0, timeout_s: float = 2.0,
                 auth: tuple[str, str] | None = None):
        self.url = url.rstrip("/")
        self._auth = auth  # MLflow basic auth (the stack's read-only `gateway` user)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._cache: dict[str, tuple[float, ModelInfo | None]] = {}
        self._pending: dict[str, asyncio.Future[ModelInfo | None]] = {}
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self.url:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, auth=self._auth)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def get(self, model: str) -> ModelInfo | None:
        """The registry's info on ``model``, or ``None`` (not registered, MLflow unreachable, no MLflow)."""
        if self._client is None:
            return None
        now = time.monotonic()
        hit = self._cache.get(model)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(model)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ModelInfo | None] = asyncio.get_running_loop().create_future()
        self._pending[model] = future
        try:
            info, ttl = await self._fetch(model)
            self._cache[model] = (time.monotonic() + ttl, info)
            future.set_result(info)
            return info
        except BaseException:  # cancelled: the waiters get None, the next call asks again
            future.set_result(None)
            raise
        finally:
            del self._pending[model]

    async def _fetch(self, model: str) -> tuple[ModelInfo | None, float]:
        assert self._client is not None
        try:
            response = await self._client.get("/api/2.0/mlflow/registered-models/get", params={"name": model})
        except httpx.HTTPError as exc:
            log.warning("MLflow lookup of %r failed: %s", model, type(exc).__name__)
            return None, _MISS_TTL_S
        if response.status_code == 404:
            return None, self.ttl_s
        if response.status_code != 200:
            log.warning("MLflow lookup of %r answered HTTP %d", model, response.status_code)
            return None, _MISS_TTL_S
        try:
            doc = response.json()["registered_model"]
            tags = {t["key"]: t["value"] for t in doc.get("tags", [])}
            created = doc.get("creation_timestamp")
            return ModelInfo(
                description=doc.get("description") or None,
                task=tags.get(TAG_TASK) or None,
                created=int(created) // 1000 if created is not None else None,
                caps=tag_caps(tags),
            ), self.ttl_s
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("MLflow lookup of %r: unexpected answer (%s)", model, exc)
            return None, _MISS_TTL_S
