"""Desired state: every deployment named in a routes file is loaded in Triton, also after a restart.

The routes files (``s3://<triton bucket>/routes/*.json``) are the desired state. :func:`reconcile` reads
them all and, for each routed deployment Triton does not report ready, verifies its manifest
(:func:`~modelops.serving.publish.verify_deployment`: a deployment without a valid manifest is never
loaded) and loads it through the repository API with the admin header. It is idempotent (a ready
deployment is left alone), never unloads anything (a rollout owns unloading: it stops routing first and
drains), logs one line per action and returns what it did.

One reconcile serves one Triton. Where it runs:

- locally, ``modelops stack up`` runs it once Triton is healthy (a Triton that died and was restarted by
  ``up`` is repopulated without any DAG run), and ``modelops serving reconcile [--watch SECONDS]`` runs it by
  hand or in a loop;
- in Kubernetes, each Triton replica's pod carries a sidecar running
  ``modelops serving reconcile --triton 127.0.0.1:8000 --admin-token-file /var/run/secrets/triton-admin/token
  --watch 15`` (S3 credentials from the pod's ``AWS_*`` environment or IRSA): it talks to its own replica
  over the pod's loopback, so a replica that restarts (or a new replica of a scaled-out Deployment) loads
  the routed deployments within one interval, and its readiness gate can wait for the first pass.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from modelops.contracts.naming import deployment_uri, is_deployment_name
from modelops.serving.publish import InvalidDeployment, verify_deployment
from modelops.serving.triton import client as triton_client
from modelops.storage import Storage

log = logging.getLogger(__name__)

READY, LOADED, INVALID, FAILED = "ready", "loaded", "invalid", "failed"


@dataclass(frozen=True)
class Action:
    """What reconcile did for one routed deployment.

    Attributes:
        deployment: the Triton model name.
        models: the public model names whose routes name it.
        action: ``ready`` (left alone), ``loaded``, ``invalid`` (not a deployment name, or the manifest check
            failed; not loaded) or ``failed``.
        detail: one line: why it is invalid or failed, or how long the load took.
    """

    deployment: str
    models: tuple[str, ...]
    action: str
    detail: str = ""

    def line(self) -> str:
        """The one-line log of this action."""
        text = f"reconcile: {self.deployment} ({', '.join(self.models)}): {self.action}"
        return f"{text}: {self.detail}" if self.detail else text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "models": list(self.models)}


def routed_deployments(storage: Storage, triton_bucket: str) -> dict[str, tuple[str, ...]]:
    """Deployment -> public model names, over every ``routes/*.json`` with a positive weight.

    An unreadable routes file is skipped with a warning: one broken file must not keep the others unloaded.
    """
    wanted: dict[str, list[str]] = {}
    for uri in storage.list(f"s3://{triton_bucket}/routes/"):
        if not uri.endswith(".json"):
            continue
        try:
            doc = json.loads(storage.read_bytes(uri))
            model = str(doc["model"])
            routes = [(str(r["deployment"]), int(r["weight"])) for r in doc["routes"]]
        except FileNotFoundError:
            continue  # deleted between list and read
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("reconcile: skipping unreadable routes file %s: %s", uri, exc)
            continue
        for deployment, weight in routes:
            if weight > 0:
                wanted.setdefault(deployment, []).append(model)
    return {d: tuple(sorted(set(models))) for d, models in sorted(wanted.items())}


def _ready(client: Any, deployment: str) -> bool:
    try:
        return bool(client.is_model_ready(deployment))
    except Exception:  # noqa: BLE001 - unknown model, or the server is briefly unreachable: not ready
        return False


def _converge(client: Any, storage: Storage, triton_bucket: str, deployment: str, models: tuple[str, ...]) -> Action:
    if not is_deployment_name(deployment):  # it would go into Triton's URLs: never asked about, never loaded
        return Action(repr(deployment), models, INVALID, "not a deployment name (<model>--v<version>-<variant>)")
    if _ready(client, deployment):
        return Action(deployment, models, READY)
    try:
        verify_deployment(storage, deployment_uri(triton_bucket, deployment))
    except InvalidDeployment as exc:
        return Action(deployment, models, INVALID, str(exc).splitlines()[0])
    started = time.monotonic()
    try:
        client.load_model(deployment)
    except Exception as exc:  # noqa: BLE001 - InferenceServerException or a connection error: report, go on
        text = triton_client.error_text(exc).splitlines()[0][:300]
        return Action(deployment, models, FAILED, f"({triton_client.error_status(exc)}) {text}")
    return Action(deployment, models, LOADED, f"in {time.monotonic() - started:.1f} s")


def reconcile(
    client: Any, storage: Storage, triton_bucket: str, *, say: Callable[[str], None] | None = None
) -> list[Action]:
    """Load every routed deployment that ``client``'s Triton does not report ready.

    Args:
        client: a ``tritonclient.http`` client whose model-control calls carry the admin header
            (:class:`~modelops.serving.triton.admin.AdminClient`).
        storage: the store holding the Triton bucket.
        triton_bucket: the bucket that is Triton's model repository and holds ``routes/``.
        say: where the one-line report of each action goes besides the module logger (e.g. stderr).

    Returns:
        One :class:`Action` per routed deployment, sorted by deployment name.
    """
    actions = []
    # One deployment after the other: a tritonclient.http client (gevent) must stay on the thread that made it.
    for deployment, models in routed_deployments(storage, triton_bucket).items():
        action = _converge(client, storage, triton_bucket, deployment, models)
        level = logging.INFO if action.action in (READY, LOADED) else logging.WARNING
        log.log(level, "%s", action.line())
        if say is not None:
            say(action.line())
        actions.append(action)
    return actions


def admin_client(url: str, header: str, token: str, timeout_s: float = 120.0) -> Any:
    """A ``tritonclient.http`` client for ``host:port`` that sends ``header: token`` on model control."""
    from modelops.serving.triton.admin import with_admin

    return with_admin(triton_client.http_client(url, timeout_s), header, token)


def reconcile_stack(status: Mapping[str, Any], *, say: Callable[[str], None] | None = None) -> list[Action]:
    """:func:`reconcile` against the embedded stack that ``status`` (``modelops stack status --json``) describes."""
    from modelops.storage import S3Config

    s3, triton = status["s3"], status["triton"]
    keys = (s3.get("identities") or {}).get("serving") or s3  # read-only on the Triton bucket; else the admin's
    storage = Storage(S3Config(endpoint_url=s3["endpoint"], access_key=keys["access_key"],
                               secret_key=keys["secret_key"], region=s3.get("region", "us-east-1")))
    client = admin_client(triton["http"].removeprefix("http://"), triton["admin_header"], triton["admin_token"])
    try:
        return reconcile(client, storage, s3["triton_bucket"], say=say)
    finally:
        client.close()


def watch(run: Callable[[], list[Action]], interval_s: float, stop: threading.Event | None = None) -> None:
    """Call ``run`` every ``interval_s`` seconds until ``stop`` is set (the sidecar loop); a failed pass is
    logged and retried at the next interval."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - S3 or Triton briefly away: try again next time
            log.warning("reconcile pass failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        stop.wait(interval_s)
