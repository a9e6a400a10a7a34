"""``rollout_model``'s params: checked beyond what the Param schema can say, and turned into thresholds."""

from __future__ import annotations

import itertools
from typing import Any

THRESHOLD_KEYS = ("min_success_rate", "max_p99_ms", "max_p99_regression", "min_requests")


def _fail(message: str) -> Exception:
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """The rollout's settings from the DAG params, checked beyond what the Param schema can say.

    Raises:
        AirflowFailException: one line naming the bad param.
    """
    steps = [int(s) for s in params.get("steps") or []]
    if not steps or any(not 1 <= s <= 100 for s in steps):
        raise _fail(f"steps must be percents in 1..100, got {steps}")
    if any(b <= a for a, b in itertools.pairwise(steps)) or steps[-1] != 100:
        raise _fail(f"steps must be strictly ascending and end at 100, got {steps}")
    if not (params.get("deployment") or "").strip():
        raise _fail("deployment is required: the published deployment to roll out")
    mode = params.get("mode") or "canary"
    if mode not in ("canary", "ab"):
        raise _fail(f"mode must be 'canary' or 'ab', got {mode!r}")
    ab_weight = int(params.get("ab_weight") or 50)
    if mode == "ab" and not 1 <= ab_weight <= 99:
        raise _fail(f"ab_weight must be in 1..99, got {ab_weight}")
    return {
        "model": str(params["model_name"]).strip(),
        "deployment": str(params["deployment"]).strip(),
        # A/B: one held step at ab_weight for ab_duration_s, then 100 for the winner
        "steps": [ab_weight, 100] if mode == "ab" else steps,
        "interval_s": float(params["ab_duration_s"] if mode == "ab" else params["interval_s"]),
        "mode": mode,
        "thresholds": {k: params.get(k) for k in THRESHOLD_KEYS},
        "require_approval": bool(params.get("require_approval")),
    }


def thresholds(values: dict[str, Any]) -> Any:
    from modelops.rollout.analysis import Thresholds

    given = {k: v for k, v in values.items() if k in THRESHOLD_KEYS and v is not None}
    if "min_requests" in given:
        given["min_requests"] = int(given["min_requests"])
    return Thresholds(**given)
