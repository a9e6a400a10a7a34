"""The contracts every part of the pipeline shares: statuses, the variant registry, the run spec, step
results and the names fixed by ARCHITECTURE.md. Light to import (pydantic and the standard library)."""

from modelops.contracts.results import RESULT_MODELS, ResultError, check_result
from modelops.contracts.spec import BenchmarkSpec, EngineSpec, ModelOptSpec, RunSpec, SpecError, StaticQuantSpec
from modelops.contracts.status import Status
from modelops.contracts.variants import (
    DEFAULT_VARIANTS,
    VARIANT_NAMES,
    VARIANTS,
    BuildStep,
    Device,
    Runtime,
    UnknownVariant,
    Variant,
    get_variant,
)

__all__ = [
    "DEFAULT_VARIANTS",
    "RESULT_MODELS",
    "VARIANTS",
    "VARIANT_NAMES",
    "BenchmarkSpec",
    "BuildStep",
    "Device",
    "EngineSpec",
    "ModelOptSpec",
    "ResultError",
    "RunSpec",
    "Runtime",
    "SpecError",
    "StaticQuantSpec",
    "Status",
    "UnknownVariant",
    "Variant",
    "check_result",
    "get_variant",
]
