"""What every ``mlflow.pytorch`` recipe of this repository shares: :class:`TorchRecipe`.

The recipe interface itself (:class:`modelops.recipes.Recipe`, :class:`~modelops.recipes.IOSpec`, ...)
lives in core; this module adds the PyTorch defaults (loading through ``mlflow.pytorch``, running the
module, exporting with ``torch.onnx``) and the demo registration helper. Heavy libraries (torch, mlflow)
are imported inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelops.recipes import IOSpec, Recipe

if TYPE_CHECKING:
    import numpy as np
    import torch


class TorchRecipe(Recipe):
    """Base recipe for ``mlflow.pytorch`` models with a tensor signature (I/O from the signature).

    Subclasses set ``name``/``metric_name`` and implement :meth:`eval_data` and :meth:`metric`; the
    baseline benchmark serves the source module with Triton's PyTorch (python backend) model.
    """

    framework = "pytorch"
    baseline_kind = "pytorch"

    def load(self, model_dir: Path) -> torch.nn.Module:
        """Load an MLflow pytorch model directory (pt2 or pickle serialization) on CPU, in eval mode."""
        import mlflow.pytorch

        model = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
        try:
            model.eval()
        except (NotImplementedError, RuntimeError):
            # torch.export modules (pt2) refuse train()/eval(); they are already in inference form
            pass
        return model

    def predict(self, model: Any, io: IOSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the source model in its own framework; outputs in ``io.outputs`` order."""
        from model_recipes.torch_export import torch_outputs

        return torch_outputs(model, io, inputs)

    def export_onnx(self, model: Any, io: IOSpec, samples: dict[str, np.ndarray], path: Path, opset: int) -> str:
        """Write a single-file ONNX model with a dynamic batch axis; return the exporter's name."""
        from model_recipes.torch_export import export_torch

        return export_torch(model, io, samples, path, opset)

    def library_versions(self) -> dict[str, str]:
        """Versions of what produced and will run the ONNX model (recorded in manifests)."""
        import onnx
        import onnxruntime
        import torch

        return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def registration_record(
    info: Any, run: Any, name: str, alias: str | None, *, accuracy: float | None, serialization: str | None
) -> dict[str, Any]:
    """Point ``alias`` at the version ``log_model`` registered and describe it (what demo registration prints)."""
    from mlflow import MlflowClient

    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version)
    return {
        "name": name,
        "version": version,
        "alias": alias,
        "accuracy": accuracy,
        "run_id": run.info.run_id,
        "serialization": serialization,
    }


def dataset_frame(x: Any, y: Any = None, column: str | None = None) -> Any:
    """Rows as a user's table: a 2-D ``x`` one scalar column per feature (``f0``, ``f1``, ...), anything else one
    list-valued column named ``column`` (default ``input``); ``y``, when given, the ``label`` column."""
    import numpy as np
    import pandas as pd

    x = np.asarray(x)
    if x.ndim == 2 and column is None:
        frame = pd.DataFrame({f"f{i}": x[:, i] for i in range(x.shape[1])})
    else:
        frame = pd.DataFrame({column or "input": [row.reshape(-1).tolist() for row in x]})
    if y is not None:
        frame["label"] = np.asarray(y)
    return frame


def log_datasets(splits: dict[str, tuple[Any, Any]], name: str, column: str | None = None) -> dict[str, str]:
    """Log a demo model's data the way a user would, inside the active MLflow run; ``{context: file URI}``.

    Each ``context -> (x, y)`` split is written as a Parquet file to the artifacts bucket
    (``s3://<MODELOPS_ARTIFACTS_BUCKET>/datasets/<name>/<context>.parquet``, with the S3 credentials of the
    environment) and logged as a dataset input of the run (``mlflow.log_input(mlflow.data.from_pandas(frame,
    source=<that URI>), context=...)``; MLflow reads no dataset source from its proxied ``mlflow-artifacts:`` store).
    The frames are :func:`dataset_frame`'s. Resolve reads them back (``modelops.eval_data=mlflow_dataset``).
    """
    import io

    import mlflow
    import mlflow.data

    from modelops.settings import Settings
    from modelops.storage import Storage

    storage, bucket = Storage(), Settings.from_env().artifacts_bucket
    uris = {}
    for context, (x, y) in splits.items():
        frame = dataset_frame(x, y, column)
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        uri = f"s3://{bucket}/datasets/{name}/{context}.parquet"
        storage.write_bytes(uri, buf.getvalue())
        dataset = mlflow.data.from_pandas(frame, source=uri, name=f"{name}-{context}",
                                          targets="label" if y is not None else None)  # fmt: skip
        mlflow.log_input(dataset, context=context)
        uris[context] = uri
    return uris
