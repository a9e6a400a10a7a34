"""Retire deployments without failing a request: wait for the gateways to stop using them, then unload.

A deployment the routes no longer name can still be serving: a gateway may not have reloaded the new
routes revision yet, or may be forwarding a request it picked before. :func:`retire` reads every gateway's
``/metrics`` (``modelops_gateway_routes_revision{model}`` and ``modelops_gateway_in_flight{model, deployment}``)
every 0.2 s until all gateways serve the new revision and nothing is in flight on the deployment, and only
then unloads it from Triton. A deployment still named by any routes file (another public model, or a
rollout that routed it again meanwhile) is never unloaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelops.serving.reconcile import routed_deployments
from modelops.serving.triton import client as triton_client
from modelops.storage import Storage

log = logging.getLogger(__name__)

POLL_S = 0.2
REVISION = "modelops_gateway_routes_revision"
IN_FLIGHT = "modelops_gateway_in_flight"


def metrics_url(url: str) -> str:
    """A gateway's metrics URL: ``url`` itself when it ends in ``/metrics``, else ``url + /metrics``."""
    url = url.rstrip("/")
    return url if url.endswith("/metrics") else f"{url}/metrics"


def gateway_view(text: str, model: str) -> tuple[float | None, dict[str, float]]:
    """From one gateway's exposition: the routes revision it serves for ``model`` (None if it has none) and
    the requests in flight per deployment (over all public models)."""
    revision: float | None = None
    in_flight: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REVISION and sample.labels.get("model") == model:
                revision = sample.value
            elif sample.name == IN_FLIGHT:
                dep = sample.labels.get("deployment", "")
                in_flight[dep] = in_flight.get(dep, 0.0) + sample.value
    return revision, in_flight


def _scrape(http: httpx.Client, url: str, model: str) -> tuple[float | None, dict[str, float]] | str:
    """The gateway's view, or one line saying why it could not be read."""
    try:
        resp = http.get(url)
        resp.raise_for_status()
        return gateway_view(resp.text, model)
    except (httpx.HTTPError, ValueError) as exc:
        return f"gateway metrics {url} unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _blocker(http: httpx.Client, urls: list[str], model: str, deployment: str, revision: int) -> str | None:
    """Why ``deployment`` cannot be unloaded yet (one line), or None when every gateway is done with it."""
    for url in urls:
        view = _scrape(http, url, model)
        if isinstance(view, str):
            return view
        served, in_flight = view
        if served is None or served < revision:
            have = "no routes" if served is None else f"routes revision {served:g}"
            return f"gateway {url} serves {have} of {model}, waiting for revision >= {revision}"
        if in_flight.get(deployment, 0.0) > 0:
            return f"{in_flight[deployment]:g} requests still in flight to {deployment} on gateway {url}"
    return None


def _unload(client: Any, deployment: str) -> str | None:
    """Unload; None when done (a model Triton does not have counts as unloaded), else one line why not."""
    try:
        client.unload_model(deployment)
    except Exception as exc:  # noqa: BLE001 - InferenceServerException or a connection error
        if triton_client.error_status(exc) in ("400", "404"):
            return None
        return f"unload failed ({triton_client.error_status(exc)}): {triton_client.error_text(exc).splitlines()[0]}"
    return None


def retire(
    client: Any,
    gateway_metrics_urls: list[str],
    model: str,
    deployments: Iterable[str],
    routes_revision: int,
    *,
    storage: Storage,
    triton_bucket: str,
    timeout_s: float = 60.0,
) -> dict[str, str]:
    """Unload deployments that the routes no longer name, without failing a request.

    Waits until every gateway serves routes revision >= ``routes_revision`` (its ``/metrics`` gauge
    ``modelops_gateway_routes_revision{model}``), then until ``modelops_gateway_in_flight{deployment}`` is 0 on
    every gateway, then calls ``client.unload_model(d)``. With no gateway URLs it unloads at once.

    Args:
        client: a ``tritonclient.http`` client sending the admin header.
        gateway_metrics_urls: each gateway's metrics URL (or base URL; ``/metrics`` is appended).
        model: the public model name whose routes changed.
        deployments: the deployments to retire.
        routes_revision: the routes revision that stopped naming them.
        storage: reads the routes files of ``triton_bucket``.
        triton_bucket: the Triton bucket (``routes/*.json``).
        timeout_s: how long to wait for the gateways per call; after it the deployment is unloaded anyway
            (Triton itself finishes the requests it already accepted).

    Returns:
        ``{deployment: "unloaded" | "kept: <why>" | "timeout: <why>"}``.
    """
    urls = [metrics_url(u) for u in gateway_metrics_urls or []]
    pending = list(dict.fromkeys(deployments))
    out: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s

    def still_routed() -> dict[str, tuple[str, ...]]:
        return routed_deployments(storage, triton_bucket)

    routed = still_routed()
    for dep in [d for d in pending if d in routed]:
        out[dep] = f"kept: still routed by {', '.join(routed[dep])}"
        pending.remove(dep)
    waits: dict[str, str | None] = {d: None for d in pending}
    with httpx.Client(timeout=5.0) as http:
        while urls and pending:
            waits = {d: _blocker(http, urls, model, d, routes_revision) for d in pending}
            if all(w is None for w in waits.values()) or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
    routed = still_routed() if pending else {}
    for dep in pending:
        if dep in routed:
            out[dep] = f"kept: routed again by {', '.join(routed[dep])}"
            continue
        failed = _unload(client, dep)
        if failed:
            out[dep] = f"kept: {failed}"
        elif waits.get(dep):
            out[dep] = f"timeout: {waits[dep]} after {timeout_s:g} s; unloaded anyway"
        else:
            out[dep] = "unloaded"
        log.info("retire %s (%s): %s", dep, model, out[dep])
    return out
