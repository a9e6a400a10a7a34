"""The variant registry: every candidate the pipeline can build, what builds it and what serves it.

One table (:data:`VARIANTS`) is read by the DAG's ``variants`` Param, resolve's validation, the optimize
and compile steps (which variants are theirs, what an engine is built from), validate and benchmark
(which candidates this Triton can run) and publish (the manifest's backend and device). A variant whose
serving backend is not available on a device is marked here, once: :meth:`Variant.backend_on`.

Pure data: no heavy import (the DAG file reads it at parse time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class BuildStep(StrEnum):
    """The heavy step that builds a variant's artifact."""

    OPTIMIZE = "optimize"
    COMPILE = "compile"


class ArtifactFormat(StrEnum):
    ONNX = "onnx"  # a plain (graph-optimized or integer-quantized) ONNX model
    ONNX_QDQ = "onnx_qdq"  # ONNX with QuantizeLinear/DequantizeLinear pairs (explicit quantization)
    TENSORRT_PLAN = "tensorrt_plan"  # a serialized TensorRT engine (GPU model and TensorRT version specific)
    ONNX_GENAI = "onnx_genai"  # an ONNX Runtime GenAI model folder (decoder ONNX + genai_config.json + tokenizer)


class Runtime(StrEnum):
    """What executes the artifact."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    ONNXRUNTIME_GENAI = "onnxruntime-genai"
    OPENVINO = "openvino"


class Family(StrEnum):
    """What kind of model a variant is built from: tensor models (ONNX export) or generative LLMs."""

    TENSOR = "tensor"
    LLM = "llm"


class Device(StrEnum):
    CPU = "cpu"
    GPU = "gpu"


# Triton backends (the ``backend`` field of config.pbtxt)
PYTHON_BACKEND = "python"  # our python-backend model running ONNX Runtime on CPU (the embedded stack)
ONNXRUNTIME_BACKEND = "onnxruntime"
TENSORRT_BACKEND = "tensorrt"


@dataclass(frozen=True)
class Variant:
    """One buildable candidate.

    Attributes:
        name: the contract name (``variants`` param, run artifact folder, deployment name suffix).
        built_by: the step that builds it.
        artifact: the format of what is built.
        runtime: what executes it.
        target_device: the device it is meant to be served on (and benchmarked on).
        backends: the Triton backend that serves it, per device; a device that is absent cannot serve it.
        source: the variant it is built from (engines from Q/DQ candidates); None = export's ONNX model.
        summary: one line for the UI and the README.
        family: the models it applies to (tensor models or LLMs of a text-generation recipe).
        options: builder options (the LLM builder's precision and extra options).
        calibrated: built from calibration rows (static INT8/FP8): skipped when a run's data is synthetic.
    """

    name: str
    built_by: BuildStep
    artifact: ArtifactFormat
    runtime: Runtime
    target_device: Device
    backends: dict[Device, str] = field(default_factory=dict)
    source: str | None = None
    summary: str = ""
    family: Family = Family.TENSOR
    options: dict[str, str] = field(default_factory=dict)
    calibrated: bool = False

    def backend_on(self, device: Device | str) -> str | None:
        """The Triton backend that serves this variant on ``device``; None when it cannot be served there."""
        return self.backends.get(Device(device))

    def servable_on(self, device: Device | str) -> bool:
        return self.backend_on(device) is not None

    def not_servable_reason(self, device: Device | str) -> str:
        """Why this variant is not validated/benchmarked/served on ``device`` (one line)."""
        where = ", ".join(f"{b} on {d}" for d, b in self.backends.items()) or "no Triton backend"
        return f"{self.name} runs on {self.runtime} ({where}); not served by a {Device(device)} Triton"


_ORT_SERVING = {Device.CPU: PYTHON_BACKEND, Device.GPU: ONNXRUNTIME_BACKEND}
_QDQ_SERVING = {Device.GPU: ONNXRUNTIME_BACKEND}  # with the TensorRT execution accelerator
_PLAN_SERVING = {Device.GPU: TENSORRT_BACKEND}
_LLM_SERVING = {Device.CPU: PYTHON_BACKEND, Device.GPU: PYTHON_BACKEND}  # onnxruntime-genai (CUDA build on GPU)
_OV_SERVING = {Device.CPU: PYTHON_BACKEND}  # OpenVINO in our python-backend models (NGC Triton has a native backend)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("ort_fp32", BuildStep.OPTIMIZE, ArtifactFormat.ONNX, Runtime.ONNXRUNTIME, Device.CPU, _ORT_SERVING,
                summary="ONNX Runtime graph-optimized fp32 (transformer optimizer for BERT-like models)"),
        Variant("ort_int8_dynamic", BuildStep.OPTIMIZE, ArtifactFormat.ONNX, Runtime.ONNXRUNTIME, Device.CPU,
                _ORT_SERVING, summary="ONNX Runtime dynamic per-channel INT8"),
        Variant("ort_int8_static", BuildStep.OPTIMIZE, ArtifactFormat.ONNX_QDQ, Runtime.ONNXRUNTIME, Device.CPU,
                _ORT_SERVING, calibrated=True, summary="ONNX Runtime calibrated QDQ INT8, sensitive layers kept in fp32"),
        Variant("modelopt_int8", BuildStep.OPTIMIZE, ArtifactFormat.ONNX_QDQ, Runtime.TENSORRT, Device.GPU,
                _QDQ_SERVING, calibrated=True, summary="NVIDIA ModelOpt INT8 Q/DQ for TensorRT (make modelopt)"),
        Variant("modelopt_fp8", BuildStep.OPTIMIZE, ArtifactFormat.ONNX_QDQ, Runtime.TENSORRT, Device.GPU,
                _QDQ_SERVING, calibrated=True, summary="NVIDIA ModelOpt FP8 Q/DQ for TensorRT (make modelopt)"),
        Variant("trt_fp16", BuildStep.COMPILE, ArtifactFormat.TENSORRT_PLAN, Runtime.TENSORRT, Device.GPU,
                _PLAN_SERVING, summary="TensorRT engine, fp16 kernels where faster (GPU only)"),
        Variant("trt_int8", BuildStep.COMPILE, ArtifactFormat.TENSORRT_PLAN, Runtime.TENSORRT, Device.GPU,
                _PLAN_SERVING, source="modelopt_int8", summary="TensorRT INT8 engine from the ModelOpt Q/DQ model"),
        Variant("trt_fp8", BuildStep.COMPILE, ArtifactFormat.TENSORRT_PLAN, Runtime.TENSORRT, Device.GPU,
                _PLAN_SERVING, source="modelopt_fp8", summary="TensorRT FP8 engine from the ModelOpt Q/DQ model"),
        # OpenVINO on CPU (modelops.optimization.openvino): ``precision`` is the compile-time inference precision hint
        Variant("openvino_bf16", BuildStep.OPTIMIZE, ArtifactFormat.ONNX, Runtime.OPENVINO, Device.CPU, _OV_SERVING,
                options={"precision": "bf16"}, summary="OpenVINO, the fp32 ONNX run in bf16 (needs AMX/AVX512-BF16)"),
        Variant("openvino_int8", BuildStep.OPTIMIZE, ArtifactFormat.ONNX_QDQ, Runtime.OPENVINO, Device.CPU,
                _OV_SERVING, options={"precision": "f32"}, calibrated=True,
                summary="OpenVINO, NNCF post-training INT8 (calibrated Q/DQ)"),
        # LLMs (text_generation recipe): ONNX Runtime GenAI's model builder, weight-only MatMulNBits, served by a
        # decoupled python-backend model running onnxruntime-genai (the source, hf_eager, is the baseline)
        Variant("ort_genai_int8", BuildStep.OPTIMIZE, ArtifactFormat.ONNX_GENAI, Runtime.ONNXRUNTIME_GENAI,
                Device.CPU, _LLM_SERVING, family=Family.LLM, options={"precision": "int8", "accuracy_level": "4"},
                summary="LLMs: ONNX Runtime GenAI, INT8 weight-only (MatMulNBits), KV cache, fused attention"),
        Variant("ort_genai_int4", BuildStep.OPTIMIZE, ArtifactFormat.ONNX_GENAI, Runtime.ONNXRUNTIME_GENAI,
                Device.CPU, _LLM_SERVING, family=Family.LLM, options={"precision": "int4", "accuracy_level": "4"},
                summary="LLMs: ONNX Runtime GenAI, INT4 weight-only (MatMulNBits, block 32), KV cache"),
    )
}  # fmt: skip

VARIANT_NAMES: list[str] = list(VARIANTS)


class ModelKind(StrEnum):
    """The model family a recipe serves; it picks the variants a run builds when the user names none."""

    IMAGE = "image"  # CNN image models: calibrated INT8 (QDQ static, OpenVINO) are the known CPU wins
    TEXT_ENCODER = "text_encoder"  # transformer encoders: dynamic INT8 of the MatMuls, OpenVINO INT8
    TABULAR = "tabular"  # scikit-learn models: small graphs, dynamic INT8 where they have MatMuls
    GENERIC = "generic"  # anything else with a tensor signature
    LLM = "llm"  # generative LLMs (ONNX Runtime GenAI)


KIND_DEFAULTS: dict[ModelKind, tuple[str, ...]] = {
    ModelKind.IMAGE: ("ort_fp32", "ort_int8_static", "openvino_int8"),
    ModelKind.TEXT_ENCODER: ("ort_fp32", "ort_int8_dynamic", "openvino_int8"),
    ModelKind.TABULAR: ("ort_fp32", "ort_int8_dynamic"),
    ModelKind.GENERIC: ("ort_fp32", "ort_int8_dynamic"),
    ModelKind.LLM: ("ort_genai_int8", "ort_genai_int4"),
}
# what a generic model got before defaults were per family (an explicit request of exactly these on an LLM is
# still taken as "the defaults": REST clients and model tags written then send it)
DEFAULT_VARIANTS: list[str] = list(KIND_DEFAULTS[ModelKind.GENERIC])
LLM_DEFAULT_VARIANTS: list[str] = list(KIND_DEFAULTS[ModelKind.LLM])


def default_variants(kind: ModelKind | str) -> list[str]:
    """The variants a model of ``kind`` gets when the run names none (:data:`KIND_DEFAULTS`)."""
    return list(KIND_DEFAULTS[ModelKind(kind)])


class UnknownVariant(ValueError):
    """A variant name that is not in the registry (one line, lists the known names)."""


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownVariant(f"unknown variant {name!r}; known: {VARIANT_NAMES}") from None


def check_variants(names: list[str]) -> list[str]:
    """``names`` unchanged when every one is known and there is at least one; else :class:`UnknownVariant`."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UnknownVariant(f"unknown variant(s) {unknown}; known: {VARIANT_NAMES}")
    if not names:
        raise UnknownVariant(f"no variants requested; known: {VARIANT_NAMES}")
    return names


def variants_for(names: list[str] | None, kind: ModelKind | str) -> list[str]:
    """The variants a model of ``kind`` gets for the requested ``names``.

    No names (the DAG's default, ``[]``): the family's :func:`default_variants`. The pre-family default request
    (:data:`DEFAULT_VARIANTS`) on an LLM becomes the LLM defaults, and the LLM defaults on a tensor model the
    family's; any other request with variants of the other family is refused.

    Raises:
        UnknownVariant: one line naming the variants that do not apply to this kind of model.
    """
    kind = ModelKind(kind)
    family = Family.LLM if kind == ModelKind.LLM else Family.TENSOR
    other_defaults = DEFAULT_VARIANTS if family == Family.LLM else LLM_DEFAULT_VARIANTS
    if not names or list(names) == other_defaults:
        return default_variants(kind)
    wrong = [n for n in check_variants(list(names)) if VARIANTS[n].family != family]
    if wrong:
        fits = [n for n in VARIANT_NAMES if VARIANTS[n].family == family]
        raise UnknownVariant(f"variant(s) {wrong} do not apply to {family} models; use some of {fits}")
    return list(names)


def built_by(step: BuildStep | str, names: list[str] | None = None) -> list[str]:
    """The variants (of ``names``, default all, in registry order) that ``step`` builds."""
    wanted = VARIANT_NAMES if names is None else names
    return [n for n in VARIANT_NAMES if n in wanted and VARIANTS[n].built_by == BuildStep(step)]


def optimize_targets(names: list[str]) -> list[str]:
    """What optimize builds for a request, in registry order: the requested optimize variants plus the
    sources the requested compile variants are built from."""
    wanted = set(built_by(BuildStep.OPTIMIZE, names))
    wanted |= {VARIANTS[n].source for n in built_by(BuildStep.COMPILE, names) if VARIANTS[n].source}
    return [n for n in VARIANT_NAMES if n in wanted]
