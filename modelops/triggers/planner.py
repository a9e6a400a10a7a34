"""The nightly re-optimization plan: which opted-in models to re-optimize, and why the others are skipped.

Registry calls: one ``search_registered_models`` page per 1,000 opted-in models (the filter runs in the
registry) and at most one ``get_model_version_by_alias`` per model, whatever the number of versions:
planning is O(1) registry calls per model. The lookup is skipped when the search result already holds the
aliased version (its ``latest_versions``, tags included: the usual case of an alias on the newest version). Starting a run adds the two tag writes of :func:`record_fingerprint`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelops.contracts.naming import TAG_ALIAS, TAG_FINGERPRINT
from modelops.triggers.events import OPT_IN_FILTER, RunRequest, run_id_for
from modelops.triggers.fingerprint import FingerprintContext, changed_parts, fingerprint_inputs

log = logging.getLogger(__name__)

TAG_FINGERPRINT_INPUTS = "modelops.fingerprint_inputs"
TAG_RECIPE = "modelops.recipe"
TAG_STATUS = "modelops.status"
TAG_VARIANTS = "modelops.variants"  # registered-model overrides of the optimization settings
TAG_LATENCY_SLO = "modelops.latency_slo_ms"
TAG_TOLERANCE = "modelops.accuracy_tolerance"
DEFAULT_ALIAS = "champion"
# A version whose last run with this very fingerprint is deployed, still running or was rejected by the
# gates would give the same answer again; failed runs (possibly transient) are retried.
SETTLED_STATUSES = frozenset({"deployed", "optimizing", "rejected"})


@dataclass(frozen=True)
class OptimizeDefaults:
    """``optimize_model``'s defaults, used where a model has no override tag (no variants: the recipe's)."""

    variants: tuple[str, ...] = ()
    latency_slo_ms: float = 100.0
    accuracy_tolerance: float = 0.01

    def for_model(self, tags: Mapping[str, str]) -> dict[str, Any]:
        """Settings of one model: its ``modelops.variants`` / ``latency_slo_ms`` / ``accuracy_tolerance`` tags
        over the defaults (a malformed tag raises ValueError, reported as a skip reason)."""
        variants = [v.strip() for v in tags.get(TAG_VARIANTS, "").split(",") if v.strip()] or list(self.variants)
        return {
            "variants": variants,
            "latency_slo_ms": float(tags.get(TAG_LATENCY_SLO) or self.latency_slo_ms),
            "accuracy_tolerance": float(tags.get(TAG_TOLERANCE) or self.accuracy_tolerance),
        }


@dataclass(frozen=True)
class PlanItem:
    """The decision for one opted-in model."""

    model: str
    action: str  # start | skip | adopt (skip, and record the fingerprint as the baseline)
    reason: str
    version: str | None = None
    fingerprint: str | None = None
    request: RunRequest | None = None
    inputs: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "action": self.action, "reason": self.reason,
                "fingerprint": self.fingerprint, "run_id": self.request.run_id if self.request else None}


@dataclass
class NightlyPlan:
    """All decisions of one planning pass, with its cost."""

    items: list[PlanItem] = field(default_factory=list)
    registry_calls: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def to_start(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "start"]

    @property
    def skipped(self) -> list[PlanItem]:
        return [i for i in self.items if i.action != "start"]

    @property
    def to_record(self) -> list[PlanItem]:
        """Items whose fingerprint is written on the version: started and adopted ones."""
        return [i for i in self.items if i.action in ("start", "adopt")]

    def summary(self) -> dict[str, Any]:
        """JSON summary: counts, registry calls, and every model with its decision and reason."""
        n = len(self.items)
        calls = sum(self.registry_calls.values())
        return {
            "models": n,
            "to_start": len(self.to_start),
            "skipped": len(self.skipped),
            "registry_calls": dict(self.registry_calls),
            "registry_calls_per_model": round(calls / n, 3) if n else 0.0,
            "planning_s": round(self.seconds, 3),
            "items": [i.to_json() for i in self.items],
        }


class CountingClient:
    """Wraps an MLflow client and counts the calls made through it (by method name)."""

    def __init__(self, client: Any, counter: Counter | None = None) -> None:
        self._client = client
        self.calls: Counter = Counter() if counter is None else counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def _is_not_found(exc: Exception) -> bool:
    text = str(exc)
    return "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "INVALID_PARAMETER_VALUE" in text


def _version_from_search(rm: Any, aliases: Any, alias: str) -> Any | None:
    """The aliased version when the search result already holds it with its tags: ``latest_versions`` carries
    the newest version of each stage, and an alias usually points at the newest version."""
    if not isinstance(aliases, Mapping):
        return None
    wanted = str(aliases[alias])
    for mv in getattr(rm, "latest_versions", None) or []:
        if str(mv.version) == wanted and getattr(mv, "tags", None) is not None:
            return mv
    return None


def plan_model(rm: Any, client: Any, context: FingerprintContext, defaults: OptimizeDefaults) -> PlanItem:
    """Decide for one registered model (at most one ``get_model_version_by_alias`` call)."""
    tags = dict(getattr(rm, "tags", None) or {})
    alias = tags.get(TAG_ALIAS, "").strip() or DEFAULT_ALIAS
    try:
        settings = defaults.for_model(tags)
    except ValueError as exc:
        return PlanItem(rm.name, "skip", f"bad optimization settings tag: {exc}")
    aliases = getattr(rm, "aliases", None)
    if isinstance(aliases, Mapping) and alias not in aliases:
        return PlanItem(rm.name, "skip", f"alias {alias} is not set")
    mv = _version_from_search(rm, aliases, alias)
    if mv is None:
        try:
            mv = client.get_model_version_by_alias(rm.name, alias)
        except Exception as exc:  # noqa: BLE001 - one model's problem must not stop the plan
            if _is_not_found(exc):
                return PlanItem(rm.name, "skip", f"alias {alias} is not set")
            return PlanItem(rm.name, "skip", f"registry error: {str(exc).splitlines()[0][:200]}")
    version, vtags = str(mv.version), dict(mv.tags or {})
    inputs = fingerprint_inputs(rm.name, version, settings, context, recipe=vtags.get(TAG_RECIPE))
    digest = inputs.digest
    previous, status = vtags.get(TAG_FINGERPRINT), vtags.get(TAG_STATUS, "")
    request = RunRequest(run_id_for(rm.name, version, "fp", digest[:12], prefix="nightly"), rm.name, version,
                         f"{alias} -> v{version}, fingerprint {digest}", "nightly", settings)
    if previous == digest:
        if status in SETTLED_STATUSES:
            return PlanItem(rm.name, "skip", f"fingerprint unchanged (v{version} {status})", version, digest)
        why = f"fingerprint unchanged but the last run {status or 'left no status'}: retry"
    elif previous:
        try:
            old = json.loads(vtags.get(TAG_FINGERPRINT_INPUTS) or "null")
        except json.JSONDecodeError:
            old = None
        why = "fingerprint changed: " + ", ".join(changed_parts(old, inputs))
    elif status in ("deployed", "optimizing"):
        # Optimized by another trigger (an alias webhook, the UI) without a fingerprint: adopt the current
        # one as the baseline instead of building the same candidates a second time.
        return PlanItem(rm.name, "adopt", f"v{version} already {status} by another run; fingerprint adopted",
                        version, digest, None, inputs.to_json())
    else:
        why = f"v{version} never optimized by the nightly run"
    return PlanItem(rm.name, "start", why, version, digest, request, inputs.to_json())


def plan_nightly(
    client: Any, context: FingerprintContext, defaults: OptimizeDefaults, page_size: int = 1000
) -> NightlyPlan:
    """Plan one nightly pass over every registered model tagged ``modelops.optimize=true``.

    Args:
        client: an ``mlflow.MlflowClient`` (or anything with its ``search_registered_models`` and
            ``get_model_version_by_alias``).
        context: worker libraries, recipe hashes and target device, read once.
        defaults: ``optimize_model``'s default settings.
        page_size: models per search page.

    Returns:
        The plan; ``plan.registry_calls`` counts the calls made.
    """
    started = time.perf_counter()
    plan = NightlyPlan()
    counted = CountingClient(client, plan.registry_calls)
    token: str | None = None
    while True:
        page = counted.search_registered_models(filter_string=OPT_IN_FILTER, max_results=page_size, page_token=token)
        for rm in page:
            plan.items.append(plan_model(rm, counted, context, defaults))
        token = getattr(page, "token", None)
        if not token:
            break
    plan.seconds = time.perf_counter() - started
    return plan


def record_fingerprint(client: Any, item: PlanItem) -> None:
    """Write the fingerprint (and its inputs, to explain the next change) on the version of a started run."""
    if item.version is None or item.fingerprint is None:
        return
    client.set_model_version_tag(item.model, item.version, TAG_FINGERPRINT, item.fingerprint)
    if item.inputs is not None:
        text = json.dumps(item.inputs, sort_keys=True, separators=(",", ":"))
        client.set_model_version_tag(item.model, item.version, TAG_FINGERPRINT_INPUTS, text)
