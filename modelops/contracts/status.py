"""The one vocabulary of outcomes: step results, candidates, XCom, MLflow tags and the report use it.

:class:`Status` is a ``StrEnum``: members compare equal to their strings and serialise as them, so JSON
results, XCom values and MLflow tags keep their words (``done``, ``deployed``...) while code names them.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Every outcome word the pipeline writes."""

    DONE = "done"  # a step or a candidate finished
    SKIPPED = "skipped"  # not applicable here (exit 99; e.g. a TensorRT variant without a GPU)
    FAILED = "failed"  # a step, candidate or run failed (also a model-version status)
    ACCEPTED = "accepted"  # a candidate passed the accuracy gate
    REJECTED = "rejected"  # a candidate failed the gate; or no candidate was chosen (model-version status)
    CHOSEN = "chosen"  # the candidate select picked
    OPTIMIZING = "optimizing"  # model-version status while a run is in flight
    DEPLOYED = "deployed"  # model-version status after a successful rollout
    CANARY = "canary"  # model-version status while a progressive rollout of its deployment runs
    ROLLED_BACK = "rolled_back"  # model-version status after its rollout was rolled back (modelops.error says why)
    # rows of the run report beside chosen/rejected/failed
    SOURCE = "source"  # the source model in its own framework (the baseline)
    SLOWER = "slower"  # accurate and within the SLO, but not the fastest
    EXCLUDED = "excluded"  # accurate, but its benchmark failed or it missed the latency SLO


# the values of the MLflow model-version tag ``modelops.status`` (ARCHITECTURE.md)
VERSION_STATUSES: tuple[Status, ...] = (
    Status.OPTIMIZING,
    Status.CANARY,
    Status.DEPLOYED,
    Status.ROLLED_BACK,
    Status.FAILED,
    Status.REJECTED,
)
# what a step result's or a built candidate's ``status`` may be
STEP_STATUSES: tuple[Status, ...] = (Status.DONE, Status.SKIPPED, Status.FAILED)
