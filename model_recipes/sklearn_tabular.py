"""Recipe for ``mlflow.sklearn`` models (skops serialization by default) through skl2onnx, plus its demo.

Tensors as ONNX and Triton see them (one float32 feature matrix in; dims exclude the batch):

- classifier: ``input`` float32 ``[F]`` -> ``label`` int64 ``[1]`` (one class id per row) and ``probabilities``
  float32 ``[C]`` (skl2onnx with ``zipmap=False``; ``C`` is ``-1`` in the I/O spec because the MLflow
  signature does not carry the class count);
- regressor: ``input`` float32 ``[F]`` -> ``prediction`` float32 ``[1]``.

A model is a classifier when its signature output is an integer or boolean tensor/column and a regressor
when it is a float; string class labels are refused (encode classes as integers before logging).
The source is run with ``predict``/``predict_proba``; parity compares every output (labels exactly).

Eval data: the recipe ships none (``ships_data=False``): the gate and calibration score the rows the user gave
(``eval_data_uri``, the datasets logged on the version's run, the input example; ``modelops.data``), with their
labels; with none of them, seeded standard-normal rows (``modelops.eval_data=synthetic``). The demo logs the
held-out 30% of breast_cancer (:func:`demo_split`) as its evaluation dataset, as a user would. Metric
``agreement``: share of eval rows where the candidate's label equals the source's (regressors: rows within
``1e-3`` relative). ``extra_metrics`` adds ``accuracy`` against the true labels when the rows have them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model_recipes.base import registration_record
from modelops.evaluation import metrics
from modelops.recipes import IOSpec, Recipe, TensorSpec

RECIPE_NAME = "sklearn_tabular"
TEST_SIZE = 0.3
SPLIT_SEED = 0
EVAL_SEED = 1
CALIBRATION_SEED = 2
RANDOM_EVAL_ROWS = 256
ML_OPSET = 3  # ai.onnx.ml: TreeEnsembleClassifier/LinearClassifier v3 run in every ORT >= 1.10
REGRESSION_RTOL = 1e-3
# what the demo's GradientBoosting pipeline needs beyond skops' default safe types (the tree node storage)
DEMO_TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)
CLASSIFIER_OUTPUTS = ("label", "probabilities")
REGRESSOR_OUTPUT = "prediction"


def demo_split(dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)`` of scikit-learn's bundled ``dataset`` (``breast_cancer``, ``wine``,
    ``diabetes``...): 30% held out, classification sets stratified; the split the demo trains and logs."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    data = getattr(sklearn.datasets, f"load_{dataset}")()
    x = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target)
    stratify = y if y.dtype.kind in "iu" else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=stratify
    )
    return x_train, x_test, y_train, y_test


def _signature_part(mlmodel: dict[str, Any], part: str) -> list[dict[str, Any]]:
    raw = (mlmodel.get("signature") or {}).get(part)
    if not raw:
        return []
    return list(json.loads(raw) if isinstance(raw, str) else raw)


def _feature_count(inputs: list[dict[str, Any]]) -> int:
    """Features per row from a tensor spec ``[-1, F]`` or from numeric columns (one feature each)."""
    if len(inputs) == 1 and inputs[0].get("type") == "tensor":
        shape = inputs[0]["tensor-spec"]["shape"]
        if len(shape) != 2 or shape[1] < 1:
            raise ValueError(f"sklearn input tensor must be [rows, features], got shape {shape}")
        return int(shape[1])
    kinds = {item.get("type") for item in inputs}
    if kinds <= {"double", "float", "long", "integer", "boolean"}:
        return len(inputs)
    raise ValueError(f"sklearn inputs must be one 2-D tensor or numeric columns; got types {sorted(map(str, kinds))}")


def _output_kind(outputs: list[dict[str, Any]]) -> str:
    """``"classifier"`` (integer/bool labels) or ``"regressor"`` (float) from the signature output."""
    if len(outputs) != 1:
        raise ValueError(f"expected one signature output (the model's predict), got {len(outputs)}")
    item = outputs[0]
    dtype = item["tensor-spec"]["dtype"] if item.get("type") == "tensor" else item.get("type")
    if dtype in ("string", "str", "object"):
        raise ValueError("string class labels are not supported: encode the classes as integers before logging")
    kind = np.dtype(
        {"long": "int64", "integer": "int32", "double": "float64", "boolean": "bool"}.get(dtype, dtype)
    ).kind
    return "regressor" if kind == "f" else "classifier"


def _finish_outputs(model: Any, names: list[str]) -> None:
    """Rename the graph outputs to ``names`` and make 1-D outputs (skl2onnx's label) ``[N, 1]``.

    Triton declares every output with at least one dim after the batch, and its ONNX backends check
    shapes: a per-row label must be ``[N, 1]`` to match ``dims: [ 1 ]`` without a ``reshape`` block.
    """
    from onnx import TensorProto, helper

    if len(model.graph.output) != len(names):
        raise ValueError(f"converter produced {len(model.graph.output)} outputs, expected {names}")
    for out, name in zip(model.graph.output, names, strict=True):
        old, rank = out.name, len(out.type.tensor_type.shape.dim)
        inner = f"{name}_1d" if rank == 1 else name
        for node in model.graph.node:
            node.output[:] = [inner if o == old else o for o in node.output]
            node.input[:] = [inner if i == old else i for i in node.input]
        out.name = name
        if rank == 1:
            axes = f"{name}_unsqueeze_axes"
            model.graph.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [1]))
            model.graph.node.append(helper.make_node("Unsqueeze", [inner, axes], [name], name=f"{name}_to_2d"))
            out.type.tensor_type.shape.dim.add().dim_value = 1


def _dedupe_opsets(model: Any) -> None:
    """Keep one ``opset_import`` per domain (the highest version).

    skl2onnx 1.20 lists the default domain twice for regressors (``LinearRegressor``/``TreeEnsembleRegressor``,
    no ``ai.onnx`` node); ONNX Runtime's quantizer then refuses the model ("Failed to find proper ai.onnx domain").
    """
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        versions[domain] = max(versions.get(domain, 0), opset.version)
    if len(versions) == len(model.opset_import):
        return
    del model.opset_import[:]
    for domain, version in versions.items():
        model.opset_import.add(domain=domain, version=version)


class SklearnTabular(Recipe):
    """``mlflow.sklearn`` classifiers and regressors on a float feature matrix; baseline served by scikit-learn."""

    name = RECIPE_NAME
    metric_name = "agreement"
    framework = "sklearn"
    baseline_kind = "sklearn"

    def load(self, model_dir: Path) -> Any:
        """``mlflow.sklearn.load_model`` (skops, pickle or cloudpickle, as the MLmodel says)."""
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(model_dir))

    def io(self, mlmodel: dict[str, Any]) -> IOSpec:
        """One float32 ``input [F]``; ``label``/``probabilities`` or ``prediction`` out (module docstring)."""
        inputs, outputs = _signature_part(mlmodel, "inputs"), _signature_part(mlmodel, "outputs")
        if not inputs:
            raise ValueError("sklearn model has no signature inputs: log it with mlflow.models.infer_signature(X, y)")
        if not outputs:
            raise ValueError("sklearn model has no signature outputs: cannot tell a classifier from a regressor")
        features = _feature_count(inputs)
        if _output_kind(outputs) == "classifier":
            outs = (TensorSpec("label", "int64", (1,)), TensorSpec("probabilities", "float32", (-1,)))
        else:
            outs = (TensorSpec(REGRESSOR_OUTPUT, "float32", (1,)),)
        return IOSpec(inputs=(TensorSpec("input", "float32", (features,)),), outputs=outs)

    def predict(self, model: Any, io: IOSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``predict`` (+ ``predict_proba`` for classifiers) on the float32 rows, in ``io.outputs`` order."""
        x = inputs[io.input_names[0]]
        if io.output_names == list(CLASSIFIER_OUTPUTS):
            labels = np.asarray(model.predict(x)).astype(np.int64).reshape(len(x), 1)
            return [labels, np.asarray(model.predict_proba(x), np.float32)]
        return [np.asarray(model.predict(x), dtype=np.float32).reshape(len(x), 1)]

    def export_onnx(self, model: Any, io: IOSpec, samples: dict[str, np.ndarray], path: Path, opset: int) -> str:
        """skl2onnx with a dynamic row count and ``zipmap=False``; outputs named and shaped as ``io.outputs``."""
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        final = model.steps[-1][1] if hasattr(model, "steps") else model
        classifier = io.output_names == list(CLASSIFIER_OUTPUTS)
        options = {id(final): {"zipmap": False}} if classifier else None
        onx = to_onnx(
            model,
            initial_types=[(io.input_names[0], FloatTensorType([None, io.inputs[0].dims[0]]))],
            target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
            options=options,
        )
        _finish_outputs(onx, io.output_names)
        _dedupe_opsets(onx)
        path.write_bytes(onx.SerializeToString())
        return "skl2onnx"

    def library_versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime
        import skl2onnx
        import sklearn

        return {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        }

    def _random(self, io: IOSpec, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((RANDOM_EVAL_ROWS, io.inputs[0].dims[0])).astype(np.float32)

    def sample_inputs(self, io: IOSpec, n: int = 8) -> dict[str, np.ndarray]:
        """``n`` seeded standard-normal rows (parity and smoke checks; the user's rows come through the spec)."""
        return {io.input_names[0]: self._random(io, self.sample_seed)[:n]}

    def eval_data(self, io: IOSpec) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Synthetic rows, no labels: what the gate scores when the user gave no data of their own."""
        return {io.input_names[0]: self._random(io, EVAL_SEED)}, None

    def calibration_data(self, io: IOSpec) -> dict[str, np.ndarray]:
        return {io.input_names[0]: self._random(io, CALIBRATION_SEED)}

    def metric(self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray) -> float:
        """Share of rows where the candidate's first output agrees with the source's."""
        cand, src = np.asarray(outputs), np.asarray(source_outputs)
        if cand.dtype.kind == "f":
            if cand.ndim == 2 and cand.shape[1] > 1:  # probabilities first: compare the arg-max class
                return metrics.top1_agreement(cand, src)
            c, s = cand.reshape(len(cand), -1), src.reshape(len(src), -1)
            return float(np.all(np.abs(c - s) <= REGRESSION_RTOL * (1.0 + np.abs(s)), axis=1).mean())
        return float((cand.reshape(len(cand)) == src.reshape(len(src))).mean())

    def extra_metrics(
        self, outputs: np.ndarray, labels: np.ndarray | None, source_outputs: np.ndarray
    ) -> dict[str, float]:
        """``accuracy`` of the candidate's labels against the dataset's true labels, when there are both."""
        cand = np.asarray(outputs)
        if labels is None or cand.dtype.kind == "f" or np.asarray(labels).dtype.kind not in "iub":
            return {}
        return {"accuracy": float((cand.reshape(len(cand)) == np.asarray(labels)).mean())}


RECIPE = SklearnTabular()


def train_demo() -> tuple[Any, float, np.ndarray]:
    """StandardScaler + GradientBoosting on breast_cancer's training split: ``(pipeline, held-out acc, X_test)``."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = demo_split("breast_cancer")
    model = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=100, random_state=SPLIT_SEED))
    model.fit(x_train, y_train.astype(np.int64))
    return model, float(model.score(x_test, y_test)), x_test


def _log_kwargs(model: Any, x_test: np.ndarray) -> dict[str, Any]:
    import sklearn
    from mlflow.models import infer_signature

    example = x_test[:4]
    return {
        "signature": infer_signature(example, model.predict(example).astype(np.int64)),
        "input_example": example,
        "serialization_format": "skops",
        # skops refuses types outside its safe list unless told; we trained this model ourselves
        "skops_trusted_types": list(DEMO_TRUSTED_TYPES),
        # skipping requirement inference saves ~10 s of loading the model in a subprocess
        "pip_requirements": [f"scikit-learn=={sklearn.__version__}", "skops"],
    }


def save_local(path: str, serialization: str | None = None) -> float:
    """Train and ``mlflow.sklearn.save_model`` to a local directory (no server; tests). Returns held-out accuracy."""
    import mlflow.sklearn

    model, acc, x_test = train_demo()
    kwargs = _log_kwargs(model, x_test)
    kwargs["serialization_format"] = serialization or "skops"
    mlflow.sklearn.save_model(model, path, **kwargs)
    return acc


def register_demo(name: str, alias: str | None = None, serialization: str | None = None) -> dict[str, Any]:
    """Train the breast_cancer pipeline, log it with ``mlflow.sklearn`` (skops), register it, set ``alias``.

    Args:
        name: registered model name.
        alias: alias for the new version, or None.
        serialization: ``"skops"`` (default), ``"pickle"`` or ``"cloudpickle"``.

    Returns:
        ``{"name", "version", "alias", "accuracy", "run_id", "serialization"}``; accuracy on the held-out 30%.
    """
    import mlflow
    import mlflow.sklearn

    from model_recipes.base import log_datasets

    serialization = serialization or "skops"
    model, acc, x_test = train_demo()
    kwargs = _log_kwargs(model, x_test)
    kwargs["serialization_format"] = serialization
    x_train, _, y_train, y_test = demo_split("breast_cancer")
    mlflow.set_experiment(f"demo/{name}")
    with mlflow.start_run(run_name="train-tabular") as run:
        mlflow.log_params({"kind": "tabular", "dataset": "breast_cancer", "seed": SPLIT_SEED})
        mlflow.log_metric("heldout_accuracy", acc)
        # like a user: the training and held-out rows as the run's datasets (the gate scores the held-out ones)
        log_datasets({"training": (x_train, y_train), "evaluation": (x_test, y_test)}, name)
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name, **kwargs)
    return registration_record(info, run, name, alias, accuracy=round(acc, 4), serialization=serialization)
