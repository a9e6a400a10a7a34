"""Build a Triton model directory: ``config.pbtxt`` + ``1/model.py`` + the model file(s).

Rendering is pure (:func:`render_config`); :func:`build_model_dir` only copies files. The directory
is self-contained, so Triton can load it from a local repository or download it from S3.

Layout::

    <name>/config.pbtxt
    <name>/1/model.py          python-backend model (onnxruntime or pytorch runtime)
    <name>/1/modelops_serving.py  the helpers every model.py imports (config, batching, sessions, text)
    <name>/1/model.onnx        kind "onnxruntime"
    <name>/1/model/...         kind "pytorch": the MLflow model directory (MLmodel, data/...)
    <name>/1/tokenizer/...     kinds "onnxruntime_text"/"transformers_text": tokenizer.json + serving.json
"""

from __future__ import annotations

import shutil
from pathlib import Path
from string import Template
from typing import Any

from modelops.settings import REPO_ROOT

TEMPLATES_DIR = REPO_ROOT / "triton_repo_templates"
PYTHON_TEMPLATES = TEMPLATES_DIR / "python"
SERVING_HELPERS = "modelops_serving.py"  # shipped next to every model.py (a deployment imports nothing else)

# kind -> python-backend model file in triton_repo_templates/python
MODEL_KINDS: dict[str, str] = {
    "onnxruntime": "onnxruntime_model.py",
    "pytorch": "pytorch_model.py",
    "sklearn": "sklearn_model.py",
    "onnxruntime_text": "onnxruntime_text_model.py",  # raw text in: tokenizer + ONNX Runtime encoder
    "transformers_text": "transformers_text_model.py",  # raw text in: tokenizer + the MLflow model in PyTorch eager
}
# kinds whose model is a single ONNX file at 1/model.onnx; every other kind ships an MLflow model
# directory at 1/model/ (the source model served in its own framework).
ONNX_FILE_KINDS: frozenset[str] = frozenset({"onnxruntime", "onnxruntime_text"})
# kinds that also ship assets (a tokenizer: tokenizer.json + serving.json), copied to 1/<ASSETS_DIR>/
ASSET_KINDS: frozenset[str] = frozenset({"onnxruntime_text", "transformers_text"})
ASSETS_DIR = "tokenizer"

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


def triton_dtype(dtype: str) -> str:
    """Triton's ``TYPE_*`` for a numpy dtype name (``float32`` -> ``TYPE_FP32``)."""
    try:
        return TRITON_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} has no Triton type; known: {sorted(TRITON_DTYPES)}") from None


def runtime_parameters(variant: str) -> dict[str, str]:
    """The config.pbtxt parameters a variant's runtime needs beyond its kind's; {} for ONNX Runtime and the baseline.

    OpenVINO variants (``Runtime.OPENVINO``) run in the same templates as ONNX Runtime (``engine: openvino``),
    with their precision hint (``ov_inference_precision``) and ``ov_performance_hint`` LATENCY: one python-backend
    instance runs one (dynamically batched) request at a time, which THROUGHPUT's several streams would split.
    """
    from modelops.contracts.variants import VARIANTS, Runtime

    info = VARIANTS.get(variant)
    if info is None or info.runtime != Runtime.OPENVINO:
        return {}
    precision = info.options.get("precision", "f32")
    return {"engine": "openvino", "ov_inference_precision": precision, "ov_performance_hint": "LATENCY"}


def _parameters_block(parameters: dict[str, str] | None) -> str:
    return "".join(
        f',\n  {{\n    key: "{k}"\n    value: {{ string_value: "{v}" }}\n  }}' for k, v in (parameters or {}).items()
    )


def _tensor_block(field: str, tensors: list[dict[str, Any]]) -> str:
    if not tensors:
        raise ValueError(f"a model needs at least one {field}")
    items = []
    for t in tensors:
        dims = ", ".join(str(int(d)) for d in t["dims"]) or "1"  # Triton wants at least one dim
        items.append(
            f'  {{\n    name: "{t["name"]}"\n    data_type: {triton_dtype(str(t["dtype"]))}\n    dims: [ {dims} ]\n  }}'
        )
    return f"{field} [\n" + ",\n".join(items) + "\n]"


def render_config(
    *,
    name: str,
    kind: str,
    io: dict[str, Any],
    max_batch_size: int,
    instance_count: int = 1,
    threads: int = 2,
    parameters: dict[str, str] | None = None,
) -> str:
    """Render ``config.pbtxt`` for a python-backend CPU model.

    Args:
        name: model name; must equal the directory name Triton loads it from.
        kind: ``"onnxruntime"`` or ``"pytorch"``.
        io: ``{"inputs": [{"name","dtype","dims"}], "outputs": [...]}``, dims without the batch dim.
        max_batch_size: Triton's max_batch_size (0 = the model does not batch; no dynamic batching).
        instance_count: model instances (KIND_CPU).
        threads: intra-op threads per instance (ORT ``intra_op_num_threads`` / ``torch.set_num_threads``).
        parameters: more string parameters for the model (e.g. :func:`runtime_parameters`).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    if max_batch_size < 0 or instance_count < 1 or threads < 0:
        raise ValueError("max_batch_size >= 0, instance_count >= 1 and threads >= 0 are required")
    template = Template((PYTHON_TEMPLATES / "config.pbtxt.tmpl").read_text())
    return template.substitute(
        name=name,
        kind=kind,
        max_batch_size=int(max_batch_size),
        inputs=_tensor_block("input", io["inputs"]),
        outputs=_tensor_block("output", io["outputs"]),
        dynamic_batching="dynamic_batching { }" if max_batch_size > 0 else "",
        instance_count=int(instance_count),
        threads=int(threads),
        parameters=_parameters_block(parameters),
    )


def build_model_dir(
    dest: Path,
    *,
    name: str,
    kind: str,
    model_path: Path,
    io: dict[str, Any],
    max_batch_size: int,
    instance_count: int = 1,
    threads: int = 2,
    assets: Path | None = None,
    parameters: dict[str, str] | None = None,
) -> Path:
    """Write a complete Triton model directory at ``dest`` (whose last component must be ``name``).

    Args:
        dest: the model directory to create, e.g. ``<repository>/<name>``; replaced if it exists.
        name: Triton model name (Triton requires it to equal the directory name).
        kind: ``"onnxruntime"`` (``model_path`` is an .onnx file) or ``"pytorch"`` (``model_path`` is an
            MLflow pytorch model directory, copied to ``1/model/``).
        model_path: the model file or directory.
        io: tensor specs as in :func:`render_config`.
        max_batch_size: Triton's max_batch_size.
        instance_count: CPU instances.
        threads: intra-op threads per instance.
        assets: for :data:`ASSET_KINDS`, the directory copied to ``1/tokenizer/`` (export's
            ``outputs.serving_assets``: ``tokenizer.json`` + ``serving.json``).
        parameters: more config.pbtxt string parameters (:func:`runtime_parameters` of the variant served).

    Returns:
        ``dest``.
    """
    dest, model_path = Path(dest), Path(model_path)
    if dest.name != name:
        raise ValueError(f"Triton needs the model directory to be named like the model: {dest.name!r} != {name!r}")
    config = render_config(
        name=name, kind=kind, io=io, max_batch_size=max_batch_size, instance_count=instance_count, threads=threads,
        parameters=parameters,
    )  # fmt: skip
    if kind in ONNX_FILE_KINDS and not model_path.is_file():
        raise ValueError(f"kind {kind!r} needs an .onnx file, got {model_path}")
    if kind not in ONNX_FILE_KINDS and not (model_path / "MLmodel").is_file():
        raise ValueError(f"kind {kind!r} needs an MLflow model directory (with MLmodel), got {model_path}")
    if kind in ASSET_KINDS and (assets is None or not (Path(assets) / "tokenizer.json").is_file()):
        raise ValueError(f"kind {kind!r} needs assets with a tokenizer.json (export's serving_assets), got {assets}")
    if dest.exists():
        shutil.rmtree(dest)
    version_dir = dest / "1"
    version_dir.mkdir(parents=True)
    (dest / "config.pbtxt").write_text(config)
    shutil.copyfile(PYTHON_TEMPLATES / MODEL_KINDS[kind], version_dir / "model.py")
    shutil.copyfile(PYTHON_TEMPLATES / SERVING_HELPERS, version_dir / SERVING_HELPERS)
    if kind in ONNX_FILE_KINDS:
        shutil.copyfile(model_path, version_dir / "model.onnx")
    else:
        shutil.copytree(model_path, version_dir / "model")
    if kind in ASSET_KINDS and assets is not None:
        shutil.copytree(assets, version_dir / ASSETS_DIR)
    return dest
