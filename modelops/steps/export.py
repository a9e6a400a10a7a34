"""Export step: MLflow pytorch model -> single-file ONNX with a dynamic batch axis, parity-checked.

``python -m modelops.steps.export --spec spec.json --result result.json``. Writes
``<run prefix>/export/{model.onnx, samples.npz, source_model/}``. The dynamo exporter handles both
``torch.export`` programs (MLflow ``pt2``) and pickled ``nn.Module``s; the legacy TorchScript exporter
is the fallback for plain modules the dynamo exporter cannot trace.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelops.contracts.status import Status
from modelops.optimization import ort_cpu
from modelops.steps._common import StepError, download_source, first_line, main, step_prefix
from modelops.storage import Storage, join

log = logging.getLogger("modelops.steps.export")

OPSET = 18
PARITY_TOLERANCE = 1e-3
PARITY_SAMPLES = 8


@dataclass
class ExportOutcome:
    onnx_path: Path
    samples_path: Path
    io: Any  # modelops.recipes.IOSpec
    parity_max_abs_diff: float
    exporter: str
    baseline_kind: str  # Triton model kind serving the source model in its own framework
    versions: dict[str, str]
    # recipes whose clients see other tensors than the ONNX model (text in): Recipe.write_serving_artifacts
    serving: dict[str, Any] | None = None


def read_mlmodel(model_dir: Path) -> dict[str, Any]:
    import yaml

    path = Path(model_dir) / "MLmodel"
    if not path.exists():
        raise StepError(f"no MLmodel file in {model_dir}: not an MLflow model directory")
    return yaml.safe_load(path.read_text())


def _complete_io(io: Any, outputs: list[np.ndarray]) -> Any:
    """Name/shape outputs from what the model really returns when the signature does not match."""
    from modelops.recipes import IOSpec, TensorSpec

    if len(io.outputs) == len(outputs):
        return io
    names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    specs = tuple(
        TensorSpec(n, str(o.dtype), tuple(o.shape[1:] if io.max_batch_size > 0 else o.shape))
        for n, o in zip(names, outputs, strict=True)
    )
    return IOSpec(inputs=io.inputs, outputs=specs, max_batch_size=io.max_batch_size)


def _as_single_file(path: Path) -> None:
    """Fold any external data back into the .onnx (deployments ship one model file)."""
    import onnx

    if not any(p != path for p in path.parent.glob(path.name + "*")):
        return
    model = onnx.load(str(path), load_external_data=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    for extra in path.parent.glob(path.name + ".*"):
        extra.unlink()


def export_model(
    model_dir: Path,
    recipe_name: str,
    out_dir: Path,
    *,
    mlmodel: dict[str, Any] | None = None,
    opset: int = OPSET,
    tolerance: float = PARITY_TOLERANCE,
    source_label: str | None = None,
    recipe: Any = None,
) -> ExportOutcome:
    """Load an MLflow pytorch model directory, export ONNX, compare ORT with torch on sample inputs.

    Args:
        model_dir: local MLflow model directory (holds ``MLmodel``).
        recipe_name: an installed recipe (``modelops.recipes.known_recipes()``).
        out_dir: where ``model.onnx`` and ``samples.npz`` are written.
        mlmodel: the parsed MLmodel (read from ``model_dir`` when None).
        opset: ONNX opset.
        tolerance: largest accepted max abs difference between ORT and torch outputs.
        source_label: how the source is named in error messages (its URI).
        recipe: the recipe object (bound to the run's rows: parity and tracing on the user's inputs); None: the
            installed ``recipe_name`` with its own sample inputs.

    Raises:
        StepError: the model cannot be loaded or exported, or parity fails.
    """
    import onnx

    from modelops.recipes import get_recipe

    recipe = recipe if recipe is not None else get_recipe(recipe_name)
    mlmodel = mlmodel or read_mlmodel(model_dir)
    try:
        # recipes that read I/O from the model file itself (onnx_generic) override io_from_model_dir
        io = recipe.io_from_model_dir(model_dir, mlmodel)
    except (ValueError, FileNotFoundError) as exc:
        raise StepError(f"cannot read the model's tensor signature: {exc}") from exc
    try:
        model = recipe.load(model_dir)
    except Exception as exc:
        raise StepError(f"cannot load model artifact from {source_label or model_dir}: {first_line(exc)}") from exc

    samples = recipe.sample_inputs(io, PARITY_SAMPLES)
    try:
        reference = recipe.predict(model, io, samples)
    except StepError:
        raise
    except Exception as exc:
        raise StepError(
            f"model fails on sample inputs of shapes {[a.shape for a in samples.values()]}: {first_line(exc)}"
        ) from exc
    io = _complete_io(io, reference)

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    try:
        exporter = recipe.export_onnx(model, io, samples, onnx_path, opset)
    except StepError:
        raise
    except Exception as exc:
        raise StepError(f"cannot export to ONNX: {first_line(exc)}") from exc
    _as_single_file(onnx_path)
    onnx.checker.check_model(str(onnx_path))

    # parity on the sample batch and on a batch of one (the dynamic axis must really be dynamic)
    worst, worst_name = 0.0, io.output_names[0]
    for batch in (samples, {k: v[:1] for k, v in samples.items()}):
        ref = reference if batch is samples else [r[:1] for r in reference]
        got = ort_cpu.run_list(onnx_path, batch)
        for name, r, g in zip(io.output_names, ref, got, strict=True):
            if r.shape != g.shape:
                raise StepError(
                    f"parity failed: output {name!r} has shape {g.shape} in ONNX Runtime, {r.shape} in the source"
                )
            diff = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))) if r.size else 0.0
            if not np.isfinite(diff) or diff > worst:
                worst, worst_name = diff, name
    if not np.isfinite(worst) or worst > tolerance:
        raise StepError(
            f"parity failed: output {worst_name!r} differs from the source by {worst:.3g} (tolerance {tolerance:g})"
        )

    samples_path = out_dir / "samples.npz"
    np.savez(samples_path, **samples, **{f"output:{n}": r for n, r in zip(io.output_names, reference, strict=True)})
    log.info("exported with the %s exporter, parity max abs diff %.3g", exporter, worst)
    serving = recipe.write_serving_artifacts(model, reference, out_dir / "serving")
    return ExportOutcome(
        onnx_path, samples_path, io, worst, exporter, recipe.baseline_kind, recipe.library_versions(), serving
    )


def run(spec: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """The step: download the source model, export, parity-check, upload."""
    from modelops.data.bound import bind
    from modelops.recipes import get_recipe
    from modelops.steps import llm_build

    llm = llm_build.generative_recipe(spec)
    if llm is not None:  # a generative recipe: the LLM path (HF source, ORT GenAI builds, next-token gate)
        return llm_build.export(spec, storage, llm)
    prefix = step_prefix(spec, "export")
    source_uri = spec["source_uri"]
    with tempfile.TemporaryDirectory(prefix="modelops-export-") as tmp:
        model_dir = download_source(storage, source_uri, Path(tmp) / "source_model")
        outcome = export_model(
            model_dir, spec["recipe"], Path(tmp) / "out", mlmodel=spec.get("mlmodel"), source_label=source_uri,
            recipe=bind(get_recipe(spec["recipe"]), spec, storage),  # parity on the user's rows when there are some
        )
        onnx_uri = storage.upload_file(outcome.onnx_path, join(prefix, "model.onnx"))
        samples_uri = storage.upload_file(outcome.samples_path, join(prefix, "samples.npz"))
        source_model_uri = join(prefix, "source_model")
        storage.upload_dir(model_dir, source_model_uri)
        serving = _upload_serving(storage, prefix, outcome.serving)
    serving_outputs = serving.pop("serving_outputs", {})
    return {
        "status": Status.DONE,
        "outputs": {"onnx": onnx_uri, "samples": samples_uri, "source_model": source_model_uri, **serving_outputs},
        "metrics": {"parity_max_abs_diff": outcome.parity_max_abs_diff},
        "io": outcome.io.to_dict(),
        "max_batch_size": outcome.io.max_batch_size,
        "opset": OPSET,
        "exporter": outcome.exporter,
        "recipe": spec["recipe"],
        "baseline_kind": outcome.baseline_kind,
        "versions": outcome.versions,
        **serving,
    }


def _upload_serving(storage: Storage, prefix: str, serving: dict[str, Any] | None) -> dict[str, Any]:
    """Upload a recipe's serving artifacts; returns the extra result keys (none for tensor-in recipes).

    ``serving_kind`` (the Triton model kind of the candidates), ``serving_io`` (what clients send and get)
    and under ``outputs``: ``serving_assets`` (directory shipped at ``1/tokenizer/``), ``serving_samples``
    (npz of client inputs, e.g. ``text`` bytes ``[n, 1]``, with the source outputs ``output:<name>``) and
    ``perf_input_data`` (perf_analyzer's ``--input-data`` JSON).
    """
    if not serving:
        return {}
    base = join(prefix, "serving")
    storage.upload_dir(serving["assets"], join(base, "assets"))
    return {
        "serving_kind": serving["serving_kind"],
        "serving_io": serving["serving_io"],
        "serving_outputs": {
            "serving_assets": join(base, "assets"),
            "serving_samples": storage.upload_file(serving["samples"], join(base, "serving_samples.npz")),
            "perf_input_data": storage.upload_file(serving["perf_input_data"], join(base, "perf_input_data.json")),
        },
    }


if __name__ == "__main__":
    main("export", run)
