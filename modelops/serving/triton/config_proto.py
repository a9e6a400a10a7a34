"""``config.pbtxt`` as Triton's own protobuf: ``ModelConfig`` messages written with ``text_format``.

Every deployment's config is built here as a ``tritonclient.grpc.model_config_pb2.ModelConfig`` (the message Triton
parses the file into), never as strings: a misspelt field or a wrong enum fails at render time, not when Triton
loads the model. ``model_config_pb2`` needs only protobuf; where tritonclient is installed without its grpc extra (the
worker environment pins ``tritonclient[http]`` and a protobuf that grpcio's pin would downgrade) the generated module
is loaded from the tritonclient package directly (:func:`pb2`).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import text_format

# numpy dtype name -> Triton data type
TRITON_DTYPES: dict[str, str] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "object": "TYPE_STRING",
}


@cache
def pb2() -> ModuleType:
    """Triton's generated ``model_config_pb2`` module (from tritonclient, with or without its grpc extra)."""
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient[http] only: tritonclient.grpc's __init__ imports grpc
        spec = importlib.util.find_spec("tritonclient")
        if spec is None or spec.origin is None:
            raise ImportError("rendering config.pbtxt needs tritonclient (model_config_pb2)") from None
        path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
        loaded = importlib.util.spec_from_file_location("modelops_triton_model_config_pb2", path)
        if loaded is None or loaded.loader is None:
            raise ImportError(f"tritonclient has no {path}") from None
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
        return module


def triton_dtype(dtype: str) -> str:
    """Triton's ``TYPE_*`` for a numpy dtype name (``float32`` -> ``TYPE_FP32``)."""
    try:
        return TRITON_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} has no Triton type; known: {sorted(TRITON_DTYPES)}") from None


def _tensors(message: Any, field: str, tensors: list[dict[str, Any]], optional: frozenset[str]) -> None:
    if not tensors:
        raise ValueError(f"a model needs at least one {field}")
    data_type = pb2().DataType
    for t in tensors:
        entry = getattr(message, field).add()
        entry.name = str(t["name"])
        entry.data_type = data_type.Value(triton_dtype(str(t["dtype"])))
        entry.dims.extend([int(d) for d in t["dims"]] or [1])  # Triton wants at least one dim
        if field == "input" and (t.get("optional") or t["name"] in optional):
            entry.optional = True


def model_config(
    *,
    name: str,
    backend: str,
    io: dict[str, Any],
    max_batch_size: int,
    platform: str = "",
    instance_count: int = 1,
    gpus: list[int] | None = None,
    device: str = "cpu",
    dynamic_batching: bool | None = None,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 0,
    parameters: dict[str, Any] | None = None,
    decoupled: bool = False,
    optional_inputs: frozenset[str] = frozenset(),
    default_model_filename: str = "",
    cc_model_filenames: dict[str, str] | None = None,
    gpu_accelerator: dict[str, str] | None = None,
) -> Any:
    """A ``ModelConfig`` message.

    Args:
        name: model name (the directory name).
        backend: Triton backend (``python``, ``onnxruntime``, ``tensorrt``).
        io: ``{"inputs": [{"name","dtype","dims"[,"optional"]}], "outputs": [...]}``, dims without the batch dim.
        max_batch_size: Triton's max_batch_size.
        platform: ``onnxruntime_onnx`` / ``tensorrt_plan`` for the native backends ("" = none).
        instance_count: instances per instance group.
        gpus: GPU ids of a KIND_GPU group (None = every GPU).
        device: ``cpu`` (KIND_CPU) or ``gpu`` (KIND_GPU).
        dynamic_batching: add ``dynamic_batching`` (default: when ``max_batch_size > 0``).
        preferred_batch_sizes: dynamic batching's preferred sizes.
        max_queue_delay_us: dynamic batching's ``max_queue_delay_microseconds`` (0 = left out).
        parameters: string parameters (values are str()-ed).
        decoupled: ``model_transaction_policy { decoupled: true }`` (streaming LLMs).
        optional_inputs: names of inputs a request may leave out.
        default_model_filename: the file in the version directory ("" = the backend's default).
        cc_model_filenames: compute capability -> file (TensorRT engines built per GPU architecture).
        gpu_accelerator: ``{"name": "tensorrt", <parameter>: <value>...}`` for ``optimization.execution_accelerators``.
    """
    if max_batch_size < 0 or instance_count < 1:
        raise ValueError("max_batch_size >= 0 and instance_count >= 1 are required")
    mc = pb2()
    config = mc.ModelConfig(name=name, backend=backend, max_batch_size=int(max_batch_size), platform=platform)
    _tensors(config, "input", io["inputs"], optional_inputs)
    _tensors(config, "output", io["outputs"], frozenset())
    if dynamic_batching if dynamic_batching is not None else max_batch_size > 0:
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.preferred_batch_size.extend(int(s) for s in preferred_batch_sizes or [])
        if max_queue_delay_us:
            config.dynamic_batching.max_queue_delay_microseconds = int(max_queue_delay_us)
    if device not in ("cpu", "gpu"):
        raise ValueError(f"unknown device {device!r}; known: ['cpu', 'gpu']")
    group = config.instance_group.add(count=int(instance_count))
    group.kind = mc.ModelInstanceGroup.KIND_GPU if device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    group.gpus.extend(int(g) for g in gpus or [])
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    if decoupled:
        config.model_transaction_policy.decoupled = True
    if default_model_filename:
        config.default_model_filename = default_model_filename
    for cc, filename in (cc_model_filenames or {}).items():
        config.cc_model_filenames[cc] = filename
    if gpu_accelerator:
        options = dict(gpu_accelerator)
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name=options.pop("name"))
        for key, value in options.items():
            accel.parameters[key] = str(value)
    return config


def to_text(config: Any, header: str = "") -> str:
    """The ``config.pbtxt`` text of a ``ModelConfig`` (``header`` becomes a leading ``#`` comment line)."""
    body = text_format.MessageToString(config)
    return f"# {header}\n{body}" if header else body


def parse(text: str) -> Any:
    """A ``config.pbtxt`` text parsed into a ``ModelConfig`` (as Triton reads it).

    Raises:
        ValueError: not a valid ModelConfig text (one line, protobuf's reason).
    """
    try:
        return text_format.Parse(text, pb2().ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"not a Triton model config: {exc}") from None


def target_of(config: Any) -> tuple[str, str]:
    """``(backend, device)`` a rendered config serves on: the backend field and its instance groups' kind."""
    kinds = {group.kind for group in config.instance_group}
    gpu = pb2().ModelInstanceGroup.KIND_GPU in kinds
    return config.backend or config.platform, "gpu" if gpu else "cpu"
