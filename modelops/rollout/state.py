"""The rollout state document ``s3://<triton bucket>/rollouts/<model>.json``: the latest rollout of a model.

Every change is a conditional write on the ETag that was read (:func:`update`), re-read and re-applied when
another writer got there first, so a retried Airflow task and the rollout DAG never lose each other's
changes. Earlier rollouts of the model are kept as summaries in ``history`` (newest first, at most 20).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from modelops.storage import PreconditionFailed, Storage

STATUSES = ("running", "waiting_approval", "promoted", "rolled_back", "aborted")
FINISHED = ("promoted", "rolled_back", "aborted")
MODES = ("canary", "ab")
HISTORY_MAX = 20
WRITE_ATTEMPTS = 5


class RolloutError(Exception):
    """A rollout cannot go on (one line); the DAG fails with it."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def rollout_uri(triton_bucket: str, model: str) -> str:
    return f"s3://{triton_bucket}/rollouts/{model}.json"


@dataclass
class RolloutState:
    """One rollout of ``deployment`` for the public model name ``model``."""

    model: str
    deployment: str
    stable: list[str]
    steps: list[int]
    step_index: int  # -1 = not started
    mode: str  # "canary" | "ab"
    status: str  # "running" | "waiting_approval" | "promoted" | "rolled_back" | "aborted"
    run_id: str
    started_at: str
    updated_at: str
    thresholds: dict[str, Any]
    interval_s: float
    routes_revision: int
    analysis: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def weight(self) -> int | None:
        """The canary's percent at the current step (None before the first step)."""
        return self.steps[self.step_index] if 0 <= self.step_index < len(self.steps) else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RolloutState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """What ``history`` keeps of a finished (or abandoned) rollout."""
        return {
            "run_id": self.run_id,
            "deployment": self.deployment,
            "stable": list(self.stable),
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.updated_at,
            "error": self.error,
        }


def read(storage: Storage, triton_bucket: str, model: str) -> tuple[RolloutState | None, str | None]:
    """The stored state and its ETag; ``(None, None)`` when the model never had a rollout."""
    data, etag = storage.read_with_etag(rollout_uri(triton_bucket, model))
    if etag is None:
        return None, None
    try:
        return RolloutState.from_json(json.loads(data)), etag
    except (ValueError, TypeError) as exc:
        raise RolloutError(f"{rollout_uri(triton_bucket, model)} is unreadable: {exc}") from None


def update(
    storage: Storage,
    triton_bucket: str,
    model: str,
    change: Callable[[RolloutState | None], RolloutState],
) -> RolloutState:
    """Read the stored state, apply ``change`` to it and write the result conditionally; retry on a lost race.

    ``change`` gets a fresh copy each attempt (None when nothing is stored) and returns the state to store
    (it may raise :class:`RolloutError` to refuse). ``updated_at`` is set here.
    """
    uri = rollout_uri(triton_bucket, model)
    for _ in range(WRITE_ATTEMPTS):
        current, etag = read(storage, triton_bucket, model)
        new = change(current)
        new.updated_at = now()
        body = json.dumps(new.to_json(), indent=2).encode()
        try:
            if etag is None:
                storage.write_bytes(uri, body, if_none_match=True)
            else:
                storage.write_bytes(uri, body, if_match=etag)
        except PreconditionFailed:
            continue
        return new
    raise RolloutError(f"{uri} kept changing under {WRITE_ATTEMPTS} conditional writes; try again")
