"""Routes files: which deployments serve a public model name, with integer weights summing to 100.

``s3://<triton bucket>/routes/<model>.json``::

    {"model": "digits_cnn", "revision": 3, "updated_at": "...", "updated_by": "<run id>",
     "routes": [{"deployment": "digits_cnn--v3-ort_int8_dynamic", "weight": 100}]}

Every update is a conditional write (If-Match on the ETag that was read, If-None-Match for the first
revision), so two rollouts can never silently overwrite each other: the loser gets
:class:`RoutesConflict` and must re-read. A write that boto3 retried after its first attempt landed is not
a conflict (:meth:`~modelops.storage.Storage.write_bytes` recognizes its own write id after the 412).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelops.contracts.naming import is_deployment_name, routes_uri
from modelops.storage import PreconditionFailed, Storage


class RoutesConflict(Exception):
    """The routes file changed between read and write."""


class InvalidRoutes(ValueError):
    """Weights that do not sum to 100, negative weights, duplicates, an empty list or a bad deployment name."""


@dataclass
class Routes:
    model: str
    revision: int = 0
    routes: list[dict[str, Any]] = field(default_factory=list)
    updated_at: str | None = None
    updated_by: str | None = None
    etag: str | None = None  # of the object this was read from; None = does not exist yet

    def weights(self) -> dict[str, int]:
        return {r["deployment"]: int(r["weight"]) for r in self.routes}

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "revision": self.revision,
            "routes": self.routes,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


def validate_weights(weights: dict[str, int]) -> None:
    """The routes contract: deployment names of :func:`~modelops.contracts.naming.is_deployment_name` (they go
    into Triton URLs and headers), integer weights in 0..100 summing to 100.

    The gateway checks every routes file it loads with this too (a file that breaks it keeps the previous table).
    """
    if not weights:
        raise InvalidRoutes("routes need at least one deployment")
    names = [d for d in weights if not is_deployment_name(d)]
    if names:
        raise InvalidRoutes(f"bad deployment name {names[0]!r}: not <model>--v<version>-<variant> in [a-z0-9_-]")
    bad = {d: w for d, w in weights.items() if isinstance(w, bool) or not isinstance(w, int) or w < 0 or w > 100}
    if bad:
        raise InvalidRoutes(f"weights must be integers in 0..100, got {bad}")
    total = sum(weights.values())
    if total != 100:
        raise InvalidRoutes(f"weights must sum to 100, got {total} ({weights})")


def routes_weights(entries: list[dict[str, Any]]) -> dict[str, int]:
    """``{deployment: weight}`` of a routes document's ``routes`` entries, checked against the contract
    (:func:`validate_weights`; an empty list is valid: a model with no deployment). Read by the pipeline
    (:func:`read_routes`) and by the gateway (``routing.parse_routes``) alike.

    Raises:
        InvalidRoutes: a deployment listed twice, a bad name or bad weights.
        KeyError, TypeError: an entry without ``deployment`` or ``weight``, or not an object.
    """
    names = [r["deployment"] for r in entries]
    weights = {d: r["weight"] for d, r in zip(names, entries, strict=True)}
    if len(weights) != len(names):
        dup = next(d for d in names if names.count(d) > 1)
        raise InvalidRoutes(f"deployment {dup!r} is listed twice")
    if weights:
        validate_weights(weights)
    return weights


def read_routes(storage: Storage, triton_bucket: str, model: str) -> Routes:
    """The routes file of ``model`` (an empty :class:`Routes` when there is none).

    Raises:
        InvalidRoutes: not a routes document, a duplicate or bad deployment name, or weights that break the
            contract (:func:`validate_weights`; an empty list is valid); one line naming the model and the file.
    """
    uri = routes_uri(triton_bucket, model)
    data, etag = storage.read_with_etag(uri)
    if etag is None:
        return Routes(model=model)
    try:
        doc = json.loads(data)
        routes = [dict(r) for r in doc["routes"]]
        out = Routes(model=doc["model"], revision=int(doc["revision"]), routes=routes, updated_at=doc.get("updated_at"),
                     updated_by=doc.get("updated_by"), etag=etag)  # fmt: skip
        routes_weights(routes)
    except InvalidRoutes as exc:
        raise InvalidRoutes(f"routes file {uri} of model {model!r}: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        line = f"routes file {uri} of model {model!r} is not a routes document: {type(exc).__name__}: {exc}"
        raise InvalidRoutes(" ".join(line.split())) from None
    return out


def write_routes(storage: Storage, triton_bucket: str, current: Routes, weights: dict[str, int], *, by: str) -> Routes:
    """Replace the routes of ``current.model`` with ``weights``, conditional on ``current`` being unchanged."""
    validate_weights(weights)
    new = Routes(
        model=current.model,
        revision=current.revision + 1,
        routes=[{"deployment": d, "weight": w} for d, w in sorted(weights.items(), key=lambda kv: -kv[1]) if w > 0],
        updated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        updated_by=by,
    )
    body = json.dumps(new.to_json(), indent=2).encode()
    try:
        if current.etag is None:
            new.etag = storage.write_bytes(routes_uri(triton_bucket, current.model), body, if_none_match=True)
        else:
            new.etag = storage.write_bytes(routes_uri(triton_bucket, current.model), body, if_match=current.etag)
    except PreconditionFailed:
        raise RoutesConflict(
            f"routes of {current.model!r} changed since revision {current.revision} was read; re-read and retry"
        ) from None
    return new


def canary_weights(previous: dict[str, int], new: str, percent: int) -> dict[str, int]:
    """``percent`` of the traffic to ``new``; the rest split over the previous deployments in proportion.

    With no previous deployment (or ``percent == 100``) ``new`` takes everything. Largest-remainder
    rounding keeps the weights integers that sum to exactly 100.
    """
    if not 1 <= percent <= 100:
        raise InvalidRoutes(f"rollout percent must be in 1..100, got {percent}")
    rest = {d: w for d, w in previous.items() if d != new and w > 0}
    if percent == 100 or not rest:
        return {new: 100}
    remaining = 100 - percent
    total = sum(rest.values())
    exact = {d: remaining * w / total for d, w in rest.items()}
    weights = {d: int(v) for d, v in exact.items()}
    short = remaining - sum(weights.values())
    for d in sorted(exact, key=lambda d: exact[d] - weights[d], reverse=True)[:short]:
        weights[d] += 1
    return {new: percent, **{d: w for d, w in weights.items() if w > 0}}
