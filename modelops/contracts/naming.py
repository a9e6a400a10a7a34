"""Names fixed by the contracts in ARCHITECTURE.md: deployments, run prefixes, routes."""

from __future__ import annotations

import re

_INVALID = re.compile(r"[^a-z0-9_-]+")
# what deployment_name and digest_name produce: <model>--v<version>-<variant>[-<digest>], all in [a-z0-9_-]
DEPLOYMENT_PATTERN = re.compile(r"^[a-z0-9_-]+--v[a-z0-9_-]+$")


def slug(text: str) -> str:
    """Lower-case ``text`` and replace every run of characters outside ``[a-z0-9_-]`` with ``-``."""
    out = _INVALID.sub("-", text.lower()).strip("-")
    if not out:
        raise ValueError(f"cannot derive a name from {text!r}")
    return out


def deployment_name(model: str, version: str | int, variant: str) -> str:
    """``<model>--v<mlflow version>-<variant>``, lower-case, ``[a-z0-9_-]``."""
    return f"{slug(model)}--v{slug(str(version))}-{slug(variant)}"


def is_deployment_name(name: object) -> bool:
    """Whether ``name`` is a whole deployment name (:data:`DEPLOYMENT_PATTERN`; no trailing newline slips through)."""
    return isinstance(name, str) and DEPLOYMENT_PATTERN.fullmatch(name) is not None


def run_prefix(artifacts_bucket: str, model: str, version: str | int, run_id: str) -> str:
    """``s3://<artifacts>/runs/<model>/<mlflow version>/<run id>``."""
    return f"s3://{artifacts_bucket}/runs/{model}/{version}/{run_id}"


def deployment_uri(triton_bucket: str, deployment: str) -> str:
    """Deployments live at the root of the Triton bucket: the bucket is Triton's model repository."""
    return f"s3://{triton_bucket}/{deployment}"


def routes_uri(triton_bucket: str, model: str) -> str:
    return f"s3://{triton_bucket}/routes/{model}.json"


# Airflow Asset events of optimize_model (other DAGs schedule on them): x-modelops://published/<model> when a
# deployment is published to the Triton repository, x-modelops://deployed/<model> when it is loaded and routed
ASSET_SCHEME = "x-modelops"
ASSET_EVENTS = ("published", "deployed")


def asset_uri(event: str, model: str) -> str:
    """``x-modelops://<event>/<model>``, the Asset a DAG can be scheduled on (``event``: one of ASSET_EVENTS)."""
    if event not in ASSET_EVENTS:
        raise ValueError(f"unknown asset event {event!r}; known: {ASSET_EVENTS}")
    return f"{ASSET_SCHEME}://{event}/{model}"


def experiment_name(model: str) -> str:
    return f"modelops/{model}"


# MLflow model-version tags written after a run (ARCHITECTURE.md); values of TAG_STATUS: VERSION_STATUSES
TAG_STATUS = "modelops.status"
TAG_DEPLOYMENT = "modelops.deployment"
TAG_VARIANT = "modelops.variant"
TAG_SPEEDUP = "modelops.speedup"
TAG_RUN_ID = "modelops.run_id"
TAG_ERROR = "modelops.error"
TAG_RECIPE = "modelops.recipe"  # the recipe resolve picked (also narrows nightly fingerprints)
TAG_EVAL_DATA = "modelops.eval_data"  # where the gate's and calibration's rows came from: an EvalDataSource value
TAG_LABEL_COLUMN = "modelops.label_column"  # model version or registered model: the label column (default "label")
# triggers: registered-model / model-version tags read by the webhook, reconcile and nightly runs
TAG_ALLOW_PICKLE = "modelops.allow_pickle"  # version or registered model, admin-set: loading may run its code
TAG_OPT_IN = "modelops.optimize"  # registered model (opt-in) or model version (explicit request)
TAG_ALIAS = "modelops.alias"  # registered model: which alias the nightly run follows
TAG_ALIAS_RUN = "modelops.alias_run"  # registered model, + ".<alias>": "<version>|<run id>" of the alias's last move
TAG_FINGERPRINT = "modelops.fingerprint"  # model version: fingerprint of the last nightly-started run
TAG_TASK = "modelops.task"  # registered model: its kind, one of TASKS (the gateway's /v1 API, Open WebUI refresh)
TASKS = ("chat", "embedding")
TAG_OPENWEBUI_GROUPS = "openwebui.groups"  # registered model: comma-separated Open WebUI groups that see it


DIGEST_NAME_CHARS = 8  # hex characters of the content digest in a content-addressed deployment name


def digest_name(plain: str, digest: str) -> str:
    """``<plain deployment name>-<first 8 hex of the content digest>``: the content-addressed deployment name.

    Publish uses the plain :func:`deployment_name` when it is free or already holds the same bytes; when it
    holds other bytes (a re-optimization that produced a different model), the deployment gets this name
    instead, so a deployment name never stands for two contents.
    """
    short = digest.lower()[:DIGEST_NAME_CHARS]
    if len(short) != DIGEST_NAME_CHARS or any(c not in "0123456789abcdef" for c in short):
        raise ValueError(f"content digest must be hex with at least {DIGEST_NAME_CHARS} characters, got {digest!r}")
    return f"{plain}-{short}"
