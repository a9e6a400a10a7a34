"""Names fixed by the contracts in ARCHITECTURE.md: deployments, run prefixes, routes."""

from __future__ import annotations

import re

_INVALID = re.compile(r"[^a-z0-9_-]+")


def slug(text: str) -> str:
    """Lower-case ``text`` and replace every run of characters outside ``[a-z0-9_-]`` with ``-``."""
    out = _INVALID.sub("-", text.lower()).strip("-")
    if not out:
        raise ValueError(f"cannot derive a name from {text!r}")
    return out


def deployment_name(model: str, version: str | int, variant: str) -> str:
    """``<model>--v<mlflow version>-<variant>``, lower-case, ``[a-z0-9_-]``."""
    return f"{slug(model)}--v{slug(str(version))}-{slug(variant)}"


def run_prefix(artifacts_bucket: str, model: str, version: str | int, run_id: str) -> str:
    """``s3://<artifacts>/runs/<model>/<mlflow version>/<run id>``."""
    return f"s3://{artifacts_bucket}/runs/{model}/{version}/{run_id}"


def deployment_uri(triton_bucket: str, deployment: str) -> str:
    """Deployments live at the root of the Triton bucket: the bucket is Triton's model repository."""
    return f"s3://{triton_bucket}/{deployment}"


def routes_uri(triton_bucket: str, model: str) -> str:
    return f"s3://{triton_bucket}/routes/{model}.json"


def experiment_name(model: str) -> str:
    return f"modelops/{model}"
