"""The gateway's ASGI app: KServe v2 HTTP under public model names, authenticated, routed by weights.

``POST /v2/models/{model}/infer`` authenticates the key (401), checks the grant (403, or 404 for a ``*``
key asking for an unknown model), reads the body under the size limit (413), checks the JSON header
(400), picks a deployment from the model's routes table (503 when there is none) and forwards the bytes
to Triton's ``/v2/models/<deployment>/infer`` on one pooled HTTP client. The answer carries
``X-ModelOps-Deployment``. ``GET /v2/models/{model}`` and ``.../ready`` follow the same checks; the
health endpoints and ``/metrics`` need no key. The OpenAI-compatible ``/v1`` API lives in :mod:`.openai_api`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelops.serving.gateway.auth import Authenticator, ReleaseLeases
from modelops.serving.gateway.config import GatewayConfig
from modelops.serving.gateway.errors import GatewayError, error_response
from modelops.serving.gateway.inflight import InFlight
from modelops.serving.gateway.keys import KeyStore
from modelops.serving.gateway.metrics import CONTENT_TYPE, PINNED, GatewayMetrics
from modelops.serving.gateway.openai_api import OpenAIApi
from modelops.serving.gateway.openai_schema import OpenAIError
from modelops.serving.gateway.openai_schema import error_response as openai_error_response
from modelops.serving.gateway.proxy import (
    Upstream,
    check_inference_header,
    read_body,
    response_headers,
    send,
    triton_error,
    upstream_headers,
)
from modelops.serving.gateway.quotas import Quotas
from modelops.serving.gateway.registry_info import RegistryInfo
from modelops.serving.gateway.reload import RoutesSource, RoutesWatcher
from modelops.serving.gateway.rollout_status import RolloutStatus, rollouts_root
from modelops.serving.gateway.routing import RouteTable
from modelops.storage import Storage

log = logging.getLogger("modelops.gateway")


class Gateway:
    """The gateway's state: routes watcher, key checks, in-flight counters, metrics and the Triton client.

    Args:
        config: see :class:`GatewayConfig`.
        storage: the routes files' storage (default: boto3 from the ``AWS_*`` environment).
    """

    def __init__(self, config: GatewayConfig, storage: Storage | None = None):
        self.config = config
        self.metrics = GatewayMetrics()
        self.watcher = RoutesWatcher(RoutesSource(config.routes_uri, storage), config.routes_poll_s,
                                     on_change=self.metrics.set_routes)
        self.rollouts = RolloutStatus(rollouts_root(config.routes_uri), self.metrics,  # modelops_rollout_*
                                      self.watcher.source.storage)
        self.auth = Authenticator(KeyStore(config.keys_db), config.key_ttl_s,
                                  Quotas(config.max_in_flight, config.invalid_key_rate, 4 * config.invalid_key_rate))
        self.in_flight = InFlight()
        self.registry = RegistryInfo(config.mlflow_url, config.registry_ttl_s, auth=config.mlflow_auth)  # /v1/models descriptions
        self._client: aiohttp.ClientSession | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:
            raise RuntimeError("the gateway is not started (run it under its lifespan)")
        return self._client

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Open the pooled Triton client and start the routes watcher; close both at shutdown."""
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, keepalive_timeout=30)
        # identity: answers pass through as Triton wrote them (no gzip round trip, no Content-Encoding mismatch)
        self._client = aiohttp.ClientSession(
            base_url=self.config.triton_url, connector=connector, auto_decompress=False,
            headers={"accept-encoding": "identity"}, skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s, sock_connect=5.0),
        )
        await self.watcher.start()
        await self.registry.start()
        await self.rollouts.start()
        usage = asyncio.create_task(self._flush_usage(), name="modelops-key-usage")
        log.info("gateway up: triton %s, routes %s, %d model(s)", self.config.triton_url, self.config.routes_uri,
                 len(self.watcher.tables))
        try:
            yield
        finally:
            usage.cancel()
            await asyncio.gather(usage, return_exceptions=True)
            await self._flush_once()
            await self.watcher.stop()
            await self.rollouts.stop()
            await self.registry.close()
            await self._client.close()
            self._client = None

    async def _flush_usage(self) -> None:
        """Every ``usage_flush_s``: the keys' request counts and last use into the key store."""
        while True:
            await asyncio.sleep(self.config.usage_flush_s)
            await self._flush_once()

    async def _flush_once(self) -> None:
        try:
            await self.auth.flush_usage()
        except Exception as exc:  # noqa: BLE001 - usage is bookkeeping: a locked or missing store never fails serving
            log.warning("could not write key usage: %s", exc)

    # -- shared steps ---------------------------------------------------------------------------
    async def _table(self, request: Request, model: str) -> RouteTable:
        """Authenticate and authorize; the model's routes table."""
        key = await self.auth.authenticate(request.headers.get("authorization"), request)
        table = self.watcher.get(model)
        self.auth.authorize(key, model, table is not None)
        assert table is not None  # authorize raised otherwise
        return table

    @staticmethod
    def _pick(table: RouteTable, request: Request) -> str:
        session = request.headers.get("x-session-id")
        PINNED.set(bool(session) and len(table.deployments) > 1)  # pinned traffic is not judged by rollouts
        deployment = table.pick(session)
        if deployment is None:
            raise GatewayError(503, f"model {table.model!r} has no deployment to serve it (empty routes)")
        return deployment

    async def _forward(self, model: str, deployment: str, method: str, path: str, body: bytes = b"",
                       headers: dict[str, str] | None = None) -> Upstream:
        gauge = self.metrics.in_flight.labels(model, deployment)
        with self.in_flight.track(deployment):
            gauge.inc()
            try:
                return await send(self.client, method, path, deployment, body, headers)
            finally:
                gauge.dec()

    def _error(self, err: GatewayError, model: str, deployment: str, started: float) -> Response:
        forwarded = time.perf_counter() - started if deployment else None
        self.metrics.observe(model, deployment, err.status, forwarded)
        return error_response(err.status, err.message,
                              err.with_headers({"x-modelops-deployment": deployment} if deployment else None))

    # -- endpoints ------------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        """``POST /v2/models/{model}/infer``."""
        return await self._proxied(request, "POST", "/infer")

    async def model_metadata(self, request: Request) -> Response:
        """``GET /v2/models/{model}``: the metadata of the deployment picked for this request."""
        return await self._proxied(request, "GET", "")

    async def _proxied(self, request: Request, method: str, suffix: str) -> Response:
        """Pick a deployment of ``{model}`` and forward ``<method> /v2/models/<deployment><suffix>`` to Triton;
        a POST carries the request's body (checked against the size limit and the binary-tensor header)."""
        started = time.perf_counter()
        model = request.path_params["model"]
        known, deployment = "", ""
        try:
            table = await self._table(request, model)
            known = model  # metrics label only names models that exist (no series per probed name)
            body, headers = b"", None
            if method == "POST":
                body = await read_body(request, self.config.max_body_bytes)
                check_inference_header(body, request.headers)
                headers = upstream_headers(request)
            deployment = self._pick(table, request)
            response = await self._forward(model, deployment, method, f"/v2/models/{deployment}{suffix}", body,
                                           headers)
            if response.status_code != 200:
                raise triton_error(response, deployment)
        except GatewayError as err:
            return self._error(err, known, deployment, started)
        self.metrics.observe(model, deployment, 200, time.perf_counter() - started)
        return Response(response.content, 200, headers=response_headers(response, deployment))

    async def model_ready(self, request: Request) -> Response:
        """``GET /v2/models/{model}/ready``: 200 when every routed deployment is ready, else 503."""
        model = request.path_params["model"]
        known = ""
        try:
            table = await self._table(request, model)
            known = model
            if not table.deployments:
                raise GatewayError(503, f"model {model!r} has no deployment to serve it (empty routes)")
            answers = await asyncio.gather(
                *(send(self.client, "GET", f"/v2/models/{d}/ready", d) for d in table.deployments),
                return_exceptions=True,
            )
            for deployment, answer in zip(table.deployments, answers, strict=True):
                if isinstance(answer, BaseException) or answer.status_code != 200:
                    raise GatewayError(503, f"model {model!r} is not ready: deployment {deployment!r} is not "
                                            "ready on Triton", deployment)
        except GatewayError as err:
            self.metrics.observe(known, err.deployment, err.status)
            return error_response(err.status, err.message, err.with_headers(None))
        self.metrics.observe(model, "", 200)
        return JSONResponse({"name": model, "ready": True})

    async def live(self, request: Request) -> Response:
        """``GET /v2/health/live``: the process answers."""
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        """``GET /v2/health/ready``: routes read at least once and Triton ready."""
        if not self.watcher.loaded:
            return error_response(503, f"routes not read yet: {self.watcher.last_error or 'first poll running'}")
        try:
            response = await send(self.client, "GET", "/v2/health/ready", "")
        except GatewayError as err:
            return error_response(503, err.message)
        if response.status_code != 200:
            return error_response(503, f"Triton is not ready (HTTP {response.status_code})")
        return JSONResponse({"ready": True})

    async def metrics_text(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path == "/v1" or request.url.path.startswith("/v1/"):  # OpenAI's shape, e.g. for a /v1 path that
        # no route matches (Starlette's path patterns stop at a newline: /v1/models/a%0Ab)
        detail = f"unknown endpoint {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        err = OpenAIError(exc.status_code, " ".join(detail.split()), code="unknown_url" if exc.status_code == 404 else None)
        return openai_error_response(err, exc.headers)
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: logged, answered 500 in JSON and counted (model label only for a routed model), so rollout analysis
    sees it like any other 5xx."""
    log.exception("internal error on %s %s", request.method, request.url.path)
    gateway: Gateway = request.app.state.gateway
    model = request.path_params.get("model", "")
    gateway.metrics.observe(model if model in gateway.watcher.tables else "", "", 500)
    return error_response(500, f"internal gateway error: {type(exc).__name__}")


def create_app(config: GatewayConfig | None = None, storage: Storage | None = None) -> Starlette:
    """The gateway app; ``app.state.gateway`` is its :class:`Gateway` (in-flight counters for rollouts).

    Args:
        config: default :meth:`GatewayConfig.from_settings`.
        storage: the routes files' storage (default: boto3 from the ``AWS_*`` environment).
    """
    gateway = Gateway(config or GatewayConfig.from_settings(), storage)
    routes = [
        Route("/v2/health/live", gateway.live, methods=["GET"]),
        Route("/v2/health/ready", gateway.ready, methods=["GET"]),
        Route("/v2/models/{model}", gateway.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", gateway.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/infer", gateway.infer, methods=["POST"]),
        Route("/metrics", gateway.metrics_text, methods=["GET"]),
        *OpenAIApi(gateway).routes(),  # /v1: the OpenAI-compatible API
    ]
    app = Starlette(routes=routes, lifespan=gateway.lifespan, middleware=[Middleware(ReleaseLeases)],
                    exception_handlers={HTTPException: _http_error, Exception: _internal_error})
    app.state.gateway = gateway
    return app
