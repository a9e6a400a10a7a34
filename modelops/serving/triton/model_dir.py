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
from typing import Any

from modelops.serving.triton.config_proto import TRITON_DTYPES, model_config, to_text, triton_dtype

# triton_repo_templates/, shipped in the package as modelops/serving/triton/templates (a link in the repository)
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
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
__all__ = ["TRITON_DTYPES", "triton_dtype"]  # re-exported from config_proto (where they are defined)

PYTHON_BACKEND, ONNXRUNTIME_BACKEND, TENSORRT_BACKEND = "python", "onnxruntime", "tensorrt"  # contracts.variants'
# native backends on a GPU Triton: backend -> (platform, the model file in the version directory)
NATIVE_BACKENDS: dict[str, tuple[str, str]] = {
    ONNXRUNTIME_BACKEND: ("onnxruntime_onnx", "model.onnx"),
    TENSORRT_BACKEND: ("tensorrt_plan", "model.plan"),
}
TRT_WORKSPACE_BYTES = 1 << 30  # the TensorRT execution accelerator's builder workspace


def gpu_accelerator(variant: str) -> dict[str, str] | None:
    """The TensorRT execution accelerator of an ONNX candidate served by onnxruntime on GPU; None = the CUDA EP.

    Q/DQ models built for TensorRT (``modelopt_int8``/``modelopt_fp8``: runtime tensorrt, ONNX artifact) need it to
    run their quantized kernels: INT8 precision for int8 Q/DQ, FP16 otherwise (ORT's TensorRT EP has no FP8 mode; the
    explicit FP8 Q/DQ nodes are honoured by TensorRT itself). Plain ONNX Runtime candidates run on the CUDA EP.
    """
    from modelops.contracts.variants import VARIANTS, ArtifactFormat, Runtime

    info = VARIANTS.get(variant)
    if info is None or info.runtime != Runtime.TENSORRT or info.artifact != ArtifactFormat.ONNX_QDQ:
        return None
    precision = "INT8" if "int8" in variant else "FP16"
    return {"name": "tensorrt", "precision_mode": precision, "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES)}


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


def render_config(
    *,
    name: str,
    kind: str,
    io: dict[str, Any],
    max_batch_size: int,
    instance_count: int = 1,
    threads: int = 2,
    parameters: dict[str, str] | None = None,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 0,
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
        preferred_batch_sizes: dynamic batching's preferred sizes (the configuration search's choice).
        max_queue_delay_us: dynamic batching's queue delay (0 = none).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    if max_batch_size < 0 or instance_count < 1 or threads < 0:
        raise ValueError("max_batch_size >= 0, instance_count >= 1 and threads >= 0 are required")
    params = {"runtime": kind, "intra_op_threads": int(threads), **(parameters or {})}
    config = model_config(name=name, backend=PYTHON_BACKEND, io=io, max_batch_size=max_batch_size,
                          instance_count=instance_count, parameters=params, preferred_batch_sizes=preferred_batch_sizes,
                          max_queue_delay_us=max_queue_delay_us)  # fmt: skip
    return to_text(config, f"Rendered by modelops.serving.triton.model_dir ({kind}); do not edit by hand.")


def render_onnxruntime_gpu_config(
    *,
    name: str,
    io: dict[str, Any],
    max_batch_size: int,
    instance_count: int = 1,
    gpus: list[int] | None = None,
    accelerator: dict[str, str] | None = None,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 0,
) -> str:
    """``config.pbtxt`` of an ONNX model served by Triton's native onnxruntime backend on GPU (``1/model.onnx``).

    Args:
        name: model name (the directory name).
        io: tensor specs as in :func:`render_config`.
        max_batch_size: Triton's max_batch_size (> 0 adds dynamic batching).
        instance_count: instances per GPU (KIND_GPU).
        gpus: GPU ids (None = every GPU).
        accelerator: ``{"name": "tensorrt", "precision_mode": "FP16", ...}`` (:func:`gpu_accelerator`); None = CUDA EP.
        preferred_batch_sizes: dynamic batching's preferred sizes.
        max_queue_delay_us: dynamic batching's queue delay.
    """
    platform, filename = NATIVE_BACKENDS[ONNXRUNTIME_BACKEND]
    config = model_config(name=name, backend=ONNXRUNTIME_BACKEND, platform=platform, io=io,
                          max_batch_size=max_batch_size, instance_count=instance_count, gpus=gpus, device="gpu",
                          preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
                          default_model_filename=filename, gpu_accelerator=accelerator)  # fmt: skip
    return to_text(config, "Rendered by modelops.serving.triton.model_dir (onnxruntime on GPU); do not edit by hand.")


def render_tensorrt_config(
    *,
    name: str,
    io: dict[str, Any],
    max_batch_size: int,
    instance_count: int = 1,
    gpus: list[int] | None = None,
    compute_capabilities: list[str] | None = None,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 0,
) -> str:
    """``config.pbtxt`` of a TensorRT engine served by Triton's tensorrt backend (``1/model.plan``).

    Args:
        name: model name (the directory name).
        io: tensor specs as in :func:`render_config` (the engine's bindings).
        max_batch_size: Triton's max_batch_size (> 0 adds dynamic batching; the engine's profile must allow it).
        instance_count: instances per GPU (KIND_GPU).
        gpus: GPU ids (None = every GPU).
        compute_capabilities: with several (``["8.0", "9.0"]``), one engine per capability,
            ``model_<cc>.plan``, named in ``cc_model_filenames``; ``model.plan`` stays the default.
        preferred_batch_sizes: dynamic batching's preferred sizes.
        max_queue_delay_us: dynamic batching's queue delay.
    """
    platform, filename = NATIVE_BACKENDS[TENSORRT_BACKEND]
    config = model_config(name=name, backend=TENSORRT_BACKEND, platform=platform, io=io,
                          max_batch_size=max_batch_size, instance_count=instance_count, gpus=gpus, device="gpu",
                          preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
                          default_model_filename=filename,
                          cc_model_filenames={cc: plan_filename(cc) for cc in compute_capabilities or []})  # fmt: skip
    return to_text(config, "Rendered by modelops.serving.triton.model_dir (tensorrt); do not edit by hand.")


def engine_max_batch(engine: dict[str, Any], max_batch_size: int) -> int:
    """Triton's ``max_batch_size`` for an engine: the model's, capped by the largest batch every input's optimization
    profile allows (the compile step's ``profiles``: name -> [min, opt, max] shapes); 0 stays 0 (no batch dim)."""
    tops = [int(s[2][0]) for s in (engine.get("profiles") or {}).values() if s and len(s) == 3 and s[2]]
    return min([int(max_batch_size), *tops]) if max_batch_size > 0 else 0


def plan_filename(compute_capability: str) -> str:
    """The engine file of one compute capability (``"8.9"`` -> ``model_8.9.plan``)."""
    if not compute_capability.replace(".", "", 1).isdigit():
        raise ValueError(f"compute capability {compute_capability!r} is not like '8.9'")
    return f"model_{compute_capability}.plan"


def rendered_target(model_dir: Path) -> tuple[str, str]:
    """``(backend, device)`` of a rendered model directory, read back from its config.pbtxt."""
    from modelops.serving.triton.config_proto import parse, target_of

    return target_of(parse((Path(model_dir) / "config.pbtxt").read_text()))


def _build_native(dest: Path, name: str, backend: str, model_path: Path, io: dict[str, Any], max_batch_size: int,
                  instance_count: int, accelerator: dict[str, str] | None,
                  plans: dict[str, Path] | None) -> None:  # fmt: skip
    filename = NATIVE_BACKENDS[backend][1]
    if not model_path.is_file():
        raise ValueError(f"backend {backend!r} needs a {filename.rsplit('.', 1)[1]} file, got {model_path}")
    if backend == ONNXRUNTIME_BACKEND:
        config = render_onnxruntime_gpu_config(name=name, io=io, max_batch_size=max_batch_size,
                                               instance_count=instance_count, accelerator=accelerator)  # fmt: skip
    else:
        config = render_tensorrt_config(name=name, io=io, max_batch_size=max_batch_size, instance_count=instance_count,
                                        compute_capabilities=list(plans or {}))  # fmt: skip
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "1").mkdir(parents=True)
    (dest / "config.pbtxt").write_text(config)
    shutil.copyfile(model_path, dest / "1" / filename)
    for cc, plan in (plans or {}).items():
        shutil.copyfile(plan, dest / "1" / plan_filename(cc))


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
    backend: str = PYTHON_BACKEND,
    device: str = "cpu",
    accelerator: dict[str, str] | None = None,
    plans: dict[str, Path] | None = None,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 0,
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
        backend: the Triton backend (the variant registry's ``backend_on(device)``): ``python`` (the templates, CPU),
            ``onnxruntime`` (``model_path`` an .onnx file, ``1/model.onnx``) or ``tensorrt`` (``model_path`` an
            engine, ``1/model.plan``); the native backends are GPU only and take no ``kind``/``threads``/``assets``.
        device: ``cpu`` or ``gpu``: the Triton that serves it.
        accelerator: onnxruntime on GPU: the execution accelerator (:func:`gpu_accelerator`).
        plans: tensorrt: one engine per compute capability (``{"8.9": path}``), besides ``model_path``.
        preferred_batch_sizes: python backend: dynamic batching's preferred sizes.
        max_queue_delay_us: python backend: dynamic batching's queue delay.

    Returns:
        ``dest``.
    """
    dest, model_path = Path(dest), Path(model_path)
    if dest.name != name:
        raise ValueError(f"Triton needs the model directory to be named like the model: {dest.name!r} != {name!r}")
    if backend in NATIVE_BACKENDS:
        if device != "gpu":
            raise ValueError(f"backend {backend!r} is rendered for a GPU Triton; this one serves on {device}")
        if kind in ASSET_KINDS:
            raise ValueError(f"kind {kind!r} takes raw text (tokenizer in model.py): python backend only")
        _build_native(dest, name, backend, model_path, io, max_batch_size, instance_count, accelerator, plans)
        return dest
    if backend != PYTHON_BACKEND or device != "cpu":
        raise ValueError(f"no {backend!r} backend on {device!r}; known: python on cpu, {sorted(NATIVE_BACKENDS)} on gpu")
    config = render_config(
        name=name, kind=kind, io=io, max_batch_size=max_batch_size, instance_count=instance_count, threads=threads,
        parameters=parameters, preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us,
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
