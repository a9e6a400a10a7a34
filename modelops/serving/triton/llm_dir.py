"""Chat LLM deployments: a decoupled (streaming) Triton python-backend model directory, and its publication.

Layout (Triton loads it from S3 like every deployment)::

    <name>/config.pbtxt      python backend, max_batch_size 0, model_transaction_policy { decoupled: true },
                             parameters runtime (hf_eager | ort_genai), intra_op_threads, max_concurrency
    <name>/1/model.py        triton_repo_templates/python/llm_model.py (one response per chunk)
    <name>/1/model/...       the model files: for ``hf_eager`` an MLflow transformers model's ``model/`` +
                             ``components/tokenizer/`` flattened into one HF directory; for ``ort_genai_*`` an
                             ONNX Runtime GenAI folder (genai_config.json, model.onnx(+.data), tokenizer files)

The variants (:data:`LLM_VARIANTS`) map to the runtime llm_model.py uses. The tensors are the LLM serving contract
(:data:`LLM_IO`): ``messages_json`` + ``params_json`` in, ``text``, ``finish_reason``, ``prompt_tokens``,
``completion_tokens`` out. :func:`publish_llm` writes the deployment with
:func:`modelops.serving.publish.publish_content`, the identity rules of ``publish_candidate``: files first,
``manifest.json`` (sha256 per file, ``content_digest``) last, the plain name ``<model>--v<version>-<variant>``
reused when it holds the same bytes, claimed with ``publish-claim.json`` when free, and ``<plain>-<digest8>``
otherwise (a claim on the same bytes is completed at once, without waiting for its claimer).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from modelops.contracts.naming import deployment_name
from modelops.serving.publish import file_table, publish_content
from modelops.serving.triton.config_proto import model_config, to_text
from modelops.serving.triton.model_dir import PYTHON_TEMPLATES
from modelops.storage import Storage

LLM_TEMPLATE = "llm_model.py"
LLM_VARIANT = "hf_eager"  # the source model in transformers eager: the LLM baseline
# variant -> the ``runtime`` parameter of llm_model.py
LLM_VARIANTS: dict[str, str] = {"hf_eager": "hf_eager", "ort_genai_int8": "ort_genai", "ort_genai_int4": "ort_genai"}
LLM_BACKEND = "python/transformers"
LLM_BACKENDS: dict[str, str] = {"hf_eager": LLM_BACKEND, "ort_genai": "python/onnxruntime-genai"}
# Requests one instance generates at once (the threads of its pool, see llm_model.py). Measured in a real Triton on
# the shared 2-core CPU (SmolLM2-135M, 64 tokens, greedy, 4 concurrent clients): one instance with a pool of 4 cuts
# TTFT p50 from ~4.7 s to ~0.45 s (ort_genai, 1 intra-op thread; 40 -> 56 output tokens/s) and from ~20 s to ~1.4 s
# (hf_eager; ~9-10 tokens/s either way), where two instances of one request each still queue whole answers (TTFT
# 4 s / 18 s). ort_genai runs best with 1 intra-op thread per instance here (2 spin against each other: ~3x slower).
DEFAULT_MAX_CONCURRENCY: dict[str, int] = {"hf_eager": 4, "ort_genai": 4}
DEFAULT_THREADS: dict[str, int] = {"hf_eager": 2, "ort_genai": 1}  # intra-op threads per instance (None = these)
LLM_IO: dict[str, list[dict[str, Any]]] = {
    "inputs": [
        {"name": "messages_json", "dtype": "object", "dims": [1]},
        {"name": "params_json", "dtype": "object", "dims": [1]},
    ],
    "outputs": [
        {"name": "text", "dtype": "object", "dims": [1]},
        {"name": "finish_reason", "dtype": "object", "dims": [1]},
        {"name": "prompt_tokens", "dtype": "int32", "dims": [1]},
        {"name": "completion_tokens", "dtype": "int32", "dims": [1]},
    ],
}
# files of an HF model directory the serving model needs (weights, config, generation config, tokenizer)
HF_REQUIRED = ("config.json", "tokenizer.json")
# files of an ONNX Runtime GenAI folder (the output of ``onnxruntime_genai.models.builder``)
GENAI_REQUIRED = ("genai_config.json", "model.onnx", "tokenizer.json")


def runtime_of(variant: str) -> str:
    """The llm_model.py runtime of a variant.

    Raises:
        ValueError: an unknown variant (one line, naming the known ones).
    """
    if variant not in LLM_VARIANTS:
        raise ValueError(f"unknown LLM variant {variant!r}; known: {sorted(LLM_VARIANTS)}")
    return LLM_VARIANTS[variant]


def render_llm_config(
    *,
    name: str,
    variant: str = LLM_VARIANT,
    instance_count: int = 1,
    threads: int | None = None,
    max_concurrency: int | None = None,
    device: str = "cpu",
) -> str:
    """``config.pbtxt`` of a decoupled python-backend LLM (``params_json`` optional).

    Args:
        name: the deployment name (Triton requires it to equal the directory name).
        variant: a key of :data:`LLM_VARIANTS`; its runtime goes into the ``runtime`` parameter.
        instance_count: model instances (KIND_CPU).
        threads: intra-op threads per instance (torch or onnxruntime; 0 = the runtime's default).
        max_concurrency: requests one instance generates at once (default: the runtime's measured best).
        device: ``cpu`` (KIND_CPU) or ``gpu`` (KIND_GPU: the GPU worker image's onnxruntime-genai CUDA build, whose
            provider the model folder's genai_config.json names).
    """
    runtime = runtime_of(variant)
    concurrency = DEFAULT_MAX_CONCURRENCY[runtime] if max_concurrency is None else max_concurrency
    threads = DEFAULT_THREADS[runtime] if threads is None else threads
    if instance_count < 1 or threads < 0 or concurrency < 1:
        raise ValueError("instance_count >= 1, threads >= 0 and max_concurrency >= 1 are required")
    # params_json may be left out (all defaults): optional
    parameters = {"runtime": runtime, "intra_op_threads": int(threads), "max_concurrency": int(concurrency)}
    config = model_config(name=name, backend="python", io=LLM_IO, max_batch_size=0, instance_count=instance_count,
                          parameters=parameters, decoupled=True, optional_inputs=frozenset({"params_json"}),
                          device=device)  # fmt: skip
    return to_text(config, f"Rendered by modelops.serving.triton.llm_dir ({variant}); do not edit by hand.")


def hf_files(model_dir: Path) -> dict[str, Path]:
    """``{relative name in 1/model/: source file}`` of an MLflow transformers model or a plain HF directory.

    An MLflow transformers model keeps the weights in ``model/`` and the tokenizer in ``components/tokenizer/``;
    both are flattened into one HF directory. A directory without ``MLmodel`` is taken as an HF directory.

    Raises:
        ValueError: the directory holds no HF causal LM with a tokenizer.
    """
    model_dir = Path(model_dir)
    if (model_dir / "MLmodel").is_file():
        sources = [model_dir / "model", model_dir / "components" / "tokenizer"]
    else:
        sources = [model_dir]
    files: dict[str, Path] = {}
    for src in sources:
        if src.is_dir():
            files.update({p.name: p for p in sorted(src.iterdir()) if p.is_file()})
    missing = [name for name in HF_REQUIRED if name not in files]
    if missing or not any(name.endswith(".safetensors") for name in files):
        raise ValueError(f"{model_dir} is not an HF causal LM with a tokenizer: missing {missing or ['*.safetensors']}")
    return files


def genai_files(model_dir: Path) -> dict[str, Path]:
    """``{relative name in 1/model/: source file}`` of an ONNX Runtime GenAI folder (every file in it, recursively).

    Raises:
        ValueError: the folder lacks genai_config.json, model.onnx or tokenizer.json (one line).
    """
    model_dir = Path(model_dir)
    files = {p.relative_to(model_dir).as_posix(): p for p in sorted(model_dir.rglob("*")) if p.is_file()}
    missing = [name for name in GENAI_REQUIRED if name not in files]
    if missing:
        raise ValueError(f"{model_dir} is not an ONNX Runtime GenAI model folder: missing {missing}")
    return files


def build_llm_model_dir(
    dest: Path,
    *,
    name: str,
    model_dir: Path,
    variant: str = LLM_VARIANT,
    instance_count: int = 1,
    threads: int | None = None,
    max_concurrency: int | None = None,
    device: str = "cpu",
) -> Path:
    """Write a complete decoupled LLM model directory at ``dest`` (replaced if it exists).

    Args:
        dest: ``<repository>/<name>``; its last component must be ``name``.
        name: the deployment name.
        model_dir: for ``hf_eager`` an MLflow transformers model directory (or a plain HF model directory); for
            ``ort_genai_*`` an ONNX Runtime GenAI folder.
        variant: a key of :data:`LLM_VARIANTS`.
        instance_count: CPU instances.
        threads: intra-op threads per instance.
        max_concurrency: requests one instance generates at once (default: the runtime's measured best).
        device: ``cpu`` or ``gpu``: the instance kind (:func:`render_llm_config`).

    Returns:
        ``dest``.
    """
    dest = Path(dest)
    if dest.name != name:
        raise ValueError(f"Triton needs the model directory to be named like the model: {dest.name!r} != {name!r}")
    config = render_llm_config(name=name, variant=variant, instance_count=instance_count, threads=threads,
                               max_concurrency=max_concurrency, device=device)  # fmt: skip
    files = genai_files(model_dir) if runtime_of(variant) == "ort_genai" else hf_files(model_dir)
    if dest.exists():
        shutil.rmtree(dest)
    target = dest / "1" / "model"
    target.mkdir(parents=True)
    (dest / "config.pbtxt").write_text(config)
    shutil.copyfile(PYTHON_TEMPLATES / LLM_TEMPLATE, dest / "1" / "model.py")
    for rel, src in files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target / rel)
    return dest


def genai_version() -> str:
    """The onnxruntime-genai version that serves the model: installed here, else the worker pin.

    Triton's python models run with the worker environment, pinned in requirements-worker.txt; the orchestrator
    environment that may publish does not install it. Empty when neither is known.
    """
    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        pass
    pins = Path(__file__).resolve().parents[3] / "requirements-worker.txt"
    found = re.search(r"^onnxruntime-genai==([^\s#]+)", pins.read_text(), re.MULTILINE) if pins.is_file() else None
    return found.group(1) if found else ""


def library_versions(model_dir: Path, variant: str = LLM_VARIANT) -> dict[str, str]:
    """Versions the model was saved with or is served by.

    ``hf_eager``: from its MLmodel (transformers, mlflow); empty for a plain HF directory. ``ort_genai_*``:
    ``onnxruntime-genai`` (:func:`genai_version`).
    """
    if runtime_of(variant) == "ort_genai":
        version = genai_version()
        return {"onnxruntime-genai": version} if version else {}
    mlmodel = Path(model_dir) / "MLmodel"
    if not mlmodel.is_file():
        return {}
    import yaml

    meta = yaml.safe_load(mlmodel.read_text()) or {}
    versions = {"mlflow": str(meta.get("mlflow_version", ""))}
    transformers = (meta.get("flavors") or {}).get("transformers") or {}
    if transformers.get("transformers_version"):
        versions["transformers"] = str(transformers["transformers_version"])
    return {k: v for k, v in versions.items() if v}


def publish_llm(
    storage: Storage,
    *,
    model_dir: Path,
    model_name: str,
    model_version: str | int,
    triton_bucket: str,
    variant: str = LLM_VARIANT,
    model_uri: str | None = None,
    run_id: str | None = None,
    recipe: str = "text_generation",
    threads: int | None = None,
    instance_count: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Render and upload the ``<model>--v<N>-<variant>`` deployment of a chat model; manifest last.

    Args:
        storage: S3 access.
        model_dir: the downloaded MLflow transformers model (or HF directory) for ``hf_eager``; the ONNX Runtime
            GenAI folder for ``ort_genai_*``.
        model_name: registered model name.
        model_version: its MLflow version.
        triton_bucket: the Triton repository bucket.
        variant: a key of :data:`LLM_VARIANTS`.
        model_uri: source model URI recorded in the manifest (default ``models:/<name>/<version>``).
        run_id: the run publishing it (recorded; a retry of the same run completes its own claim).
        recipe: recipe name recorded in the manifest.
        threads: intra-op threads per instance.
        instance_count: CPU instances.
        device: the run spec's ``serving_device`` (``cpu`` | ``gpu``): the instance kind rendered, and the manifest's
            ``target_device`` (read back from the rendered config.pbtxt).

    Returns:
        ``{"deployment", "uri", "manifest", "reused", "content_digest"}`` as ``publish_candidate``.

    Raises:
        ValueError: an unknown variant, or one the registry does not serve on ``device``.
    """
    from modelops.contracts.variants import VARIANTS
    from modelops.serving.triton.model_dir import rendered_target

    runtime = runtime_of(variant)
    if device not in ("cpu", "gpu"):
        raise ValueError(f"unknown device {device!r}; known: ['cpu', 'gpu']")
    if variant in VARIANTS and not VARIANTS[variant].servable_on(device):
        raise ValueError(VARIANTS[variant].not_servable_reason(device))
    plain = deployment_name(model_name, model_version, variant)
    with tempfile.TemporaryDirectory(prefix="modelops-publish-llm-") as tmp:

        def render(name: str) -> Path:
            return build_llm_model_dir(Path(tmp) / name, name=name, model_dir=model_dir, variant=variant,
                                       threads=threads, instance_count=instance_count, device=device)  # fmt: skip

        def manifest_for(root: Path, name: str) -> dict[str, Any]:
            return {
                "deployment": name,
                "model": model_name,
                "model_version": str(model_version),
                "variant": variant,
                "recipe": recipe,
                "source_model_uri": model_uri or f"models:/{model_name}/{model_version}",
                "run_id": run_id,
                "backend": LLM_BACKENDS[runtime],
                "target_device": rendered_target(root)[1],
                "serving": {"decoupled": True, "io": LLM_IO},
                "library_versions": library_versions(model_dir, variant),
                "files": file_table(root),
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }

        # a claim on the same bytes (a retry, or a publisher that died) is completed at once, without waiting
        return publish_content(storage, triton_bucket, plain, render, manifest_for, model_name=model_name,
                               variant=variant, run_id=run_id, claim_wait_s=None)  # fmt: skip


def publish_registered(
    storage: Storage, *, model_name: str, model_version: str | int, triton_bucket: str, threads: int | None = None
) -> dict[str, Any]:
    """Download ``models:/<name>/<version>`` from MLflow (``MLFLOW_TRACKING_URI``) and :func:`publish_llm` it."""
    import mlflow.artifacts

    uri = f"models:/{model_name}/{model_version}"
    with tempfile.TemporaryDirectory(prefix="modelops-llm-src-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        return publish_llm(storage, model_dir=local, model_name=model_name, model_version=model_version,
                           triton_bucket=triton_bucket, model_uri=uri, threads=threads)  # fmt: skip
