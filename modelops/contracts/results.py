"""One result model per step: what ``<run prefix>/<step>/result.json`` holds and later steps read.

The fields declared here are the contract: a step's result is validated against its model before it is
written (``run_step``) and again when a later step or task reads it (``load_result``), so a step that
drops or misspells a field fails where it writes, not three steps later. Diagnostics beyond the contract
(timings, notes, library details) are allowed as extra keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelops.contracts.spec import one_line
from modelops.contracts.status import Status


class ResultError(ValueError):
    """A step result does not match its contract (one line naming the field)."""


class _Open(BaseModel):
    """Declared fields are checked; other keys are kept (diagnostics)."""

    model_config = ConfigDict(extra="allow")


class StepResult(_Open):
    status: Status
    reason: str | None = None
    step: str | None = None
    seconds: float | None = None


class TensorInfo(_Open):
    name: str
    dtype: str
    dims: list[int]


class IOInfo(_Open):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo] = Field(default_factory=list)


class ExportOutputs(_Open):
    onnx: str | None  # None for generative recipes (the source stays a Hugging Face directory)
    samples: str
    source_model: str
    serving_assets: str | None = None
    serving_samples: str | None = None
    perf_input_data: str | None = None


class ExportResult(StepResult):
    outputs: ExportOutputs
    metrics: dict[str, float | None]
    io: IOInfo
    max_batch_size: int = Field(ge=0)
    opset: int | None  # None for generative recipes (no ONNX export)
    exporter: str
    recipe: str
    baseline_kind: str
    versions: dict[str, str]
    serving_kind: str | None = None
    serving_io: IOInfo | None = None


class Candidate(_Open):
    """One optimize candidate."""

    status: Status
    reason: str | None = None
    onnx: str | None = None
    runtime: str
    size_bytes: int = 0
    artifacts: dict[str, str] = Field(default_factory=dict)


class OptimizeResult(StepResult):
    candidates: dict[str, Candidate]
    source_size_bytes: int = 0


class Engine(_Open):
    status: Status
    reason: str | None = None
    plan: str | None = None


class CompileResult(StepResult):
    engines: dict[str, Engine]
    timing_cache: str | None = None


class Verdict(_Open):
    """The accuracy gate's verdict on one candidate."""

    status: Status  # accepted | rejected | failed | skipped
    metric: float | None = None
    source_metric: float | None = None
    reason: str | None = None
    sample_outputs: str | None = None
    comparison: str | None = None
    expectations: dict[str, Any] | None = None


class ValidateResult(StepResult):
    source_metric: float
    metric_name: str
    accuracy_tolerance: float
    candidates: dict[str, Verdict]


class PerfPoint(_Open):
    concurrency: float
    throughput: float
    p50_ms: float | None = None
    p99_ms: float | None = None


class Measurement(_Open):
    """One benchmarked target (the baseline or a candidate)."""

    status: Status
    kind: str
    points: list[PerfPoint] = Field(default_factory=list)
    reason: str | None = None
    csv: str | None = None


class BenchmarkResult(StepResult):
    variants: dict[str, Measurement]
    settings: dict[str, Any] = Field(default_factory=dict)


RESULT_MODELS: dict[str, type[StepResult]] = {
    "export": ExportResult,
    "optimize": OptimizeResult,
    "compile": CompileResult,
    "validate": ValidateResult,
    "benchmark": BenchmarkResult,
}


def check_result(step: str, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` unchanged when it matches ``step``'s model (a skipped result only needs status and reason).

    Raises:
        ResultError: one line naming the step and the first bad field.
    """
    model = RESULT_MODELS.get(step, StepResult)
    if result.get("status") == Status.SKIPPED:
        model = StepResult
    try:
        model.model_validate(result)
    except ValidationError as exc:
        raise ResultError(f"{step} result breaks its contract: {one_line(exc)}") from None
    return result
