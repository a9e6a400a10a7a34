"""The run spec: everything a step reads, written once by ``resolve`` and never patched afterwards.

``resolve`` builds a :class:`RunSpec` and writes it to ``<run prefix>/spec.json``; every step CLI
(``python -m modelops.steps.<step> --spec ...``) validates it with :meth:`RunSpec.parse` before doing any
work, so a hand-edited or stale spec fails with one line naming the field. Each block a step reads
(``benchmark``, ``static_quant``, ``modelopt``, ``engine``) is present with its defaults, so a step never
guesses a default of its own and ``<step>/spec.json`` shows exactly what ran.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelops.contracts.data import EvalDataSpec
from modelops.contracts.variants import DEFAULT_VARIANTS, Device, check_variants


class SpecError(ValueError):
    """The spec is not a valid run spec; the message is one line naming the field."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchmarkSpec(_Block):
    """How benchmark measures each candidate (perf_analyzer)."""

    concurrency: list[int] = Field(default_factory=lambda: [1, 4], min_length=1)
    batch_size: int = Field(1, ge=1)
    measurement_interval_ms: int = Field(1000, ge=100, description="perf_analyzer's window at most: a fast model gets "
                                         "a shorter one holding 200 requests at concurrency 1 (250 ms at least)")
    max_trials: int = Field(6, ge=1)
    stability_percentage: int = Field(50, ge=1, le=100)
    protocol: Literal["http", "grpc"] = "http"
    input_data: str = "random"
    threads: int = Field(2, ge=1)
    config_search: bool = Field(True, description="search each candidate's serving configuration (instances x "
                                "threads, dynamic batching); false: the fixed default configuration only")
    config_search_budget_s: float = Field(60.0, ge=0, le=3600, description="wall time of the configuration search "
                                          "per benchmark step, shared by its contenders")


class StaticQuantSpec(_Block):
    """Knobs of ``ort_int8_static`` (calibrated QDQ with automatic sensitive-layer exclusion)."""

    per_channel: bool = True
    activation_type: Literal["QUInt8", "QInt8"] = "QUInt8"
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    calibrate_method: Literal["MinMax", "Entropy", "Percentile", "Distribution"] = "MinMax"
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    calibration_rows: int = Field(128, ge=1)
    calibration_batch: int = Field(16, ge=1)
    sensitivity_rows: int = Field(32, ge=1)
    sensitivity_budget_s: float = Field(300.0, gt=0)
    max_excluded: int | None = Field(None, ge=0, description="None: a quarter of the quantizable nodes, at least 1")


class ModelOptSpec(_Block):
    """NVIDIA ModelOpt Q/DQ (``modelopt_int8``/``modelopt_fp8``)."""

    nodes_to_exclude: list[str] | None = Field(
        None, description="None: INT8 keeps the nodes ort_int8_static found too sensitive; FP8 excludes none"
    )


class EngineSpec(_Block):
    """TensorRT optimization profile of the compile step."""

    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(8, ge=1)
    max_batch: int | None = Field(None, ge=1, description="None: the model's max_batch_size")
    variable_dim: tuple[int, int, int] | None = Field(
        None, description="min/opt/max of non-batch dynamic dims; None: the recipe's sequence lengths"
    )
    timing_cache_prefix: str | None = Field(
        None, description="where timing caches are kept and reused; None: <run prefix>/compile"
    )


# what each heavy step reads of the identity fields (every spec resolve writes has them all)
STEP_NEEDS: dict[str, tuple[str, ...]] = {
    "export": ("run_prefix", "source_uri", "recipe"),
    "optimize": ("run_prefix",),
    "compile": (),
    "validate": ("run_prefix", "recipe"),
    "benchmark": ("run_prefix",),
}


DEFAULT_ROLLOUT_STEPS: tuple[int, ...] = (10, 50, 100)


def check_rollout_steps(steps: list[int]) -> list[int]:
    """Rollout steps: integers in 1..100, strictly ascending, the last one 100.

    Raises:
        ValueError: one line naming what is wrong (pydantic reports it on the field).
    """
    steps = [int(s) for s in steps]
    if not steps:
        raise ValueError("rollout steps need at least one step (e.g. [100])")
    if any(not 1 <= s <= 100 for s in steps):
        raise ValueError(f"rollout steps must be percents in 1..100, got {steps}")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"rollout steps must be strictly ascending, got {steps}")
    if steps[-1] != 100:
        raise ValueError(f"the last rollout step must be 100, got {steps}")
    return steps


def rollout_steps_from_params(steps: list[int] | None, rollout: int | None) -> list[int]:
    """The steps of ``optimize_model``'s params: ``rollout_steps``, or the older ``rollout`` shortcut
    (``rollout: N`` = one canary step of N percent, then 100; ``rollout: 100`` = replace at once)."""
    if rollout is not None and int(rollout) != 100 and (steps is None or list(steps) == list(DEFAULT_ROLLOUT_STEPS)):
        return check_rollout_steps([int(rollout), 100])
    if rollout is not None and int(rollout) == 100 and steps is None:
        return [100]
    return check_rollout_steps(list(steps) if steps is not None else list(DEFAULT_ROLLOUT_STEPS))


class RunSpec(BaseModel):
    """The spec of one optimization run (ARCHITECTURE.md, step CLI contract)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Identity: resolve always writes these; a spec written by hand may leave out what its step does not read
    # (see STEP_NEEDS), e.g. compile on a CPU machine skips before it reads anything.
    model_name: str | None = Field(None, min_length=1)
    model_version: str | None = Field(None, min_length=1)
    alias: str | None = None
    model_uri: str = ""  # models:/<name>/<version>
    source_uri: str | None = Field(None, min_length=1)  # the MLflow model directory (holds MLmodel)
    flavor: str = ""
    recipe: str | None = Field(None, min_length=1)
    mlmodel: dict[str, Any] = Field(default_factory=dict)
    allow_pickle: bool | None = Field(
        None, description="MLflow's pickle gate (MLFLOW_ALLOW_PICKLE_DESERIALIZATION) while the steps load the model: "
        "resolve opens it for a version tagged modelops.allow_pickle=true or a skops file whose types it checked "
        "(modelops.recipes.trust); None (a spec written by hand) leaves the environment as it is",
    )
    variants: list[str] = Field(default_factory=lambda: list(DEFAULT_VARIANTS))
    latency_slo_ms: float = Field(100.0, gt=0)
    ttft_slo_ms: float = Field(
        2000.0, gt=0, description="LLMs: time-to-first-token p99 bound (ms) a candidate must meet to be selected"
    )
    accuracy_tolerance: float = Field(0.01, ge=0, le=1)
    rollout: int = Field(100, ge=1, le=100, description="percent of traffic for the new deployment at the first step")
    rollout_steps: list[int] = Field(
        default_factory=lambda: list(DEFAULT_ROLLOUT_STEPS),
        description="traffic percent of the new deployment per rollout step; ascending, ending at 100 "
        "([100] replaces at once; a model's first deployment always takes 100 at once)",
    )
    rollout_interval_s: float = Field(60.0, ge=5, le=86400, description="seconds each rollout step is judged over")
    run_id: str = ""  # the MLflow run
    run_prefix: str | None = Field(None, min_length=1)  # s3://<artifacts>/runs/<model>/<version>/<run id>
    triton_bucket: str = "triton"
    serving_device: Device = Field(
        Device.CPU, description="device of the Triton that benchmarks and serves (cpu: the embedded python backend)"
    )
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    static_quant: StaticQuantSpec = Field(default_factory=StaticQuantSpec)
    modelopt: ModelOptSpec = Field(default_factory=ModelOptSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    eval_data: EvalDataSpec = Field(default_factory=EvalDataSpec)

    @field_validator("model_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("rollout_steps")
    @classmethod
    def _ascending_to_100(cls, value: list[int]) -> list[int]:
        return check_rollout_steps(value)

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value: list[str]) -> list[str]:
        return check_variants(list(value))  # UnknownVariant is a ValueError: pydantic reports it on the field

    @model_validator(mode="after")
    def _mlmodel_has_flavors(self) -> RunSpec:
        if self.mlmodel and "flavors" not in self.mlmodel:
            raise ValueError("mlmodel has no 'flavors' section")
        return self

    @classmethod
    def parse(cls, data: dict[str, Any] | str | bytes, step: str | None = None) -> RunSpec:
        """Validate a spec document (dict or JSON text), and that it has what ``step`` reads.

        Raises:
            SpecError: one line naming the first invalid or missing field and why.
        """
        try:
            if isinstance(data, (str, bytes)):
                data = json.loads(data)
            if not isinstance(data, dict):
                raise SpecError(f"run spec must be a JSON object, got {type(data).__name__}")
            spec = cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"invalid run spec: {one_line(exc)}") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"run spec is not JSON: {exc}") from None
        missing = [f for f in STEP_NEEDS.get(step or "", ()) if getattr(spec, f) is None]
        if missing:
            raise SpecError(f"invalid run spec: {step} needs {', '.join(missing)}")
        return spec

    def to_json(self) -> dict[str, Any]:
        """The JSON document (what ``spec.json`` holds)."""
        return self.model_dump(mode="json")


def one_line(exc: ValidationError) -> str:
    """The first error of a pydantic ValidationError as ``field.path: message`` (plus how many more)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "spec"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}"
