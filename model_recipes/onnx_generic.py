"""Recipe for ``mlflow.onnx`` models: the ONNX file is taken as is, then optimized like any export.

- load: the ``.onnx`` file named by the MLmodel's ``flavors.onnx.data`` (MLflow saves large tensors as
  external data next to it by default; ONNX Runtime reads them from the model directory).
- I/O: from the ONNX graph (:func:`io_from_graph`): a symbolic or unknown first dimension on every input
  means "batch" (Triton ``max_batch_size`` > 0), other symbolic dims become ``-1``. The MLflow signature
  is only the fallback (:meth:`OnnxGeneric.io`) for callers that do not pass the model directory.
- predict: ONNX Runtime on the original file (CPU).
- export: a copy (exporter ``"as-is"``), folded into one file when the original has external data; the
  graph, its opset and its tensor names are unchanged, so parity is exactly 0.
- baseline: kind ``onnxruntime`` serving that as-is copy (the original graph, unoptimized).
- eval data: seeded random inputs (standard normal for floats); metric ``cosine`` to the source outputs;
  ``extra_metrics`` adds ``top1_agreement`` when the first output looks like class scores ``[N, C > 1]``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_recipes.base import registration_record
from modelops.evaluation import metrics
from modelops.evaluation.metrics import mean_cosine
from modelops.recipes import DEFAULT_MAX_BATCH_SIZE, IOSpec, Recipe, TensorSpec, io_from_signature, random_inputs

RECIPE_NAME = "onnx_generic"
EVAL_SAMPLES = 256
EVAL_SEED = 1
CALIBRATION_SEED = 2
DEFAULT_DATA = "model.onnx"


@dataclass
class OnnxSource:
    """The original model: its file and an ONNX Runtime session on it."""

    path: Path
    session: Any  # onnxruntime.InferenceSession


def onnx_model_path(model_dir: Path) -> Path:
    """The ``.onnx`` file of an MLflow onnx model directory (``flavors.onnx.data`` in MLmodel)."""
    import yaml

    mlmodel_path = Path(model_dir) / "MLmodel"
    if not mlmodel_path.is_file():
        raise FileNotFoundError(f"no MLmodel file in {model_dir}: not an MLflow model directory")
    flavor = (yaml.safe_load(mlmodel_path.read_text()).get("flavors") or {}).get("onnx")
    if flavor is None:
        raise ValueError(f"{model_dir} has no onnx flavor")
    path = Path(model_dir) / str(flavor.get("data") or DEFAULT_DATA)
    if not path.is_file():
        raise FileNotFoundError(f"the onnx flavor names {path.name}, which is not in {model_dir}")
    return path


def _value_specs(values: Any) -> list[tuple[str, str, list[int | None]]]:
    """``(name, numpy dtype name, shape)`` per graph value; ``None`` for a symbolic or unknown dim."""
    from onnx import helper

    out = []
    for value in values:
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ValueError(f"graph value {value.name!r} is not a tensor (sequences and maps are not supported)")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
        shape = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        out.append((value.name, dtype, shape))
    return out


def io_from_graph(path: Path, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> IOSpec:
    """Build the I/O spec from the graph's inputs (minus initializers) and outputs.

    The model batches iff every input and output has a non-fixed first dimension; then that dimension is
    dropped from ``dims``. Every other symbolic dimension is ``-1``.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = _value_specs([v for v in graph.input if v.name not in initializers])
    outputs = _value_specs(graph.output)
    if not inputs or not outputs:
        raise ValueError(f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs; needs at least one each")
    batched = all(shape and shape[0] is None for _, _, shape in inputs + outputs)

    def spec(name: str, dtype: str, shape: list[int | None]) -> TensorSpec:
        dims = [-1 if d is None else int(d) for d in (shape[1:] if batched else shape)]
        return TensorSpec(name, dtype, tuple(dims))

    return IOSpec(
        inputs=tuple(spec(*v) for v in inputs),
        outputs=tuple(spec(*v) for v in outputs),
        max_batch_size=max_batch_size if batched else 0,
    )


class OnnxGeneric(Recipe):
    """Any ``mlflow.onnx`` model: served as is by ONNX Runtime as the baseline, then optimized."""

    name = RECIPE_NAME
    metric_name = "cosine"
    framework = "onnx"
    baseline_kind = "onnxruntime"

    def io(self, mlmodel: dict[str, Any]) -> IOSpec:
        """Fallback without the model file: the MLflow tensor signature (names must match the graph's)."""
        return io_from_signature(mlmodel)

    def io_from_model_dir(self, model_dir: Path, mlmodel: dict[str, Any] | None = None) -> IOSpec:
        """The I/O spec from the ONNX graph itself (what export uses when it has the model directory)."""
        return io_from_graph(onnx_model_path(model_dir))

    def load(self, model_dir: Path) -> OnnxSource:
        from modelops.optimization import ort_cpu

        path = onnx_model_path(model_dir)
        return OnnxSource(path, ort_cpu.session(path))  # the baseline deployment's session options

    def predict(self, model: OnnxSource, io: IOSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """ONNX Runtime on the original file; outputs in ``io.outputs`` order."""
        return model.session.run(io.output_names, {n: inputs[n] for n in io.input_names})

    def export_onnx(self, model: OnnxSource, io: IOSpec, samples: dict[str, np.ndarray], path: Path, opset: int) -> str:
        """Copy the original (``opset`` is ignored: the model keeps its own); fold external data into one file."""
        import onnx

        proto = onnx.load(str(model.path), load_external_data=False)
        external = any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
        if external:
            proto = onnx.load(str(model.path), load_external_data=True)
            onnx.save_model(proto, str(path), save_as_external_data=False)
        else:
            shutil.copyfile(model.path, path)
        return "as-is"

    def library_versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        return random_inputs(io, EVAL_SAMPLES, EVAL_SEED), None

    def calibration_data(self, io: IOSpec) -> dict[str, np.ndarray]:
        """Random inputs from another seed than the eval data (the gate never scores them)."""
        return random_inputs(io, EVAL_SAMPLES, CALIBRATION_SEED)

    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        return mean_cosine(outputs, source_outputs)

    def extra_metrics(
        self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray
    ) -> dict[str, float]:
        """``top1_agreement`` for class-score outputs ``[N, C > 1]``; nothing otherwise."""
        if not metrics.is_class_scores(outputs):
            return {}
        return {"top1_agreement": metrics.top1_agreement(outputs, source_outputs)}


RECIPE = OnnxGeneric()


def demo_onnx_model() -> tuple[Any, np.ndarray, float]:
    """The demo digits CNN trained in seconds and exported to ONNX (legacy exporter, dynamic batch).

    Returns:
        ``(onnx.ModelProto, a few example inputs, held-out accuracy)``.
    """
    import io as _io

    import onnx
    import torch

    from model_recipes.demo_models import train

    trained = train("digits")
    buffer = _io.BytesIO()
    torch.onnx.export(
        trained.model,
        (torch.from_numpy(trained.example),),
        buffer,
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=17,
    )
    return onnx.load_model_from_string(buffer.getvalue()), trained.example, trained.accuracy


def _signature(model: Any, example: np.ndarray) -> Any:
    import onnxruntime as ort
    from mlflow.models import infer_signature

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return infer_signature({"input": example}, {"output": session.run(None, {"input": example})[0]})


def save_local(path: str) -> float:
    """``mlflow.onnx.save_model`` of the demo model (external data, MLflow's default); held-out accuracy."""
    import mlflow.onnx

    model, example, accuracy = demo_onnx_model()
    mlflow.onnx.save_model(model, path, signature=_signature(model, example), pip_requirements=["onnxruntime"])
    return accuracy


def register_demo(name: str, alias: str | None = None, serialization: str | None = None) -> dict[str, Any]:
    """Train the digits CNN, export it to ONNX, log it with ``mlflow.onnx``, register it and set ``alias``.

    Args:
        name: registered model name.
        alias: alias for the new version, or None.
        serialization: ignored (ONNX has one format); reported as ``"onnx"``.

    Returns:
        ``{"name", "version", "alias", "accuracy", "run_id", "serialization"}``; accuracy of the PyTorch
        model on the held-out digits (the ONNX file computes the same function).
    """
    import mlflow
    import mlflow.onnx

    model, example, accuracy = demo_onnx_model()
    mlflow.set_experiment(f"demo/{name}")
    with mlflow.start_run(run_name="train-onnx") as run:
        mlflow.log_params({"kind": "onnx", "architecture": "digits_cnn", "opset": 17})
        mlflow.log_metric("heldout_accuracy", accuracy)
        info = mlflow.onnx.log_model(
            model,
            name="model",
            registered_model_name=name,
            signature=_signature(model, example),
            pip_requirements=["onnxruntime"],
        )
    return registration_record(info, run, name, alias, accuracy=round(accuracy, 4), serialization="onnx")
