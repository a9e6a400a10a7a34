"""Models the pipeline must refuse with a clear reason, shared by the worker and the integration tests.

- ``unexportable``: a PyTorch model calling ``torch.linalg.svdvals``, which has no ONNX conversion; export
  must fail naming the operator.
- ``pyfunc``: a plain ``mlflow.pyfunc`` model (flavor ``python_function`` only), which no recipe takes;
  resolve must fail naming the flavor and what is supported.

Saving needs the worker environment (torch). Registering on a stack, from the worker environment with the
stack's client environment (``MLFLOW_TRACKING_URI``, AWS_*)::

    python -m tests.bad_models register unexportable --name my_model [--alias champion]

prints the registration record (``name``, ``version``, ``alias``, ``run_id``) as one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("unexportable", "pyfunc")


def spectral_norm_model() -> Any:
    """An ``nn.Module`` that scales a projection by the singular values of its input (``aten::linalg_svdvals``)."""
    import torch
    from torch import nn

    class SpectralNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x).flatten(1) / torch.linalg.svdvals(x).sum(dim=1, keepdim=True)

    torch.manual_seed(0)
    return SpectralNorm().eval()


def _unexportable_args(serialization: str) -> dict[str, Any]:
    """Keyword arguments of ``mlflow.pytorch.save_model``/``log_model`` for the unexportable model."""
    import torch
    from mlflow.models import infer_signature

    model = spectral_norm_model()
    x = np.random.default_rng(0).standard_normal((3, 4, 4)).astype(np.float32)
    with torch.inference_mode():
        y = model(torch.from_numpy(x)).numpy()
    return {
        "pytorch_model": model,
        "signature": infer_signature(x, y),
        "input_example": (x,),
        "serialization_format": serialization,
        "pip_requirements": ["torch"],
    }


def _echo_model() -> Any:
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    return Echo()


def save_unexportable(path: Path, serialization: str = "pt2") -> None:
    """Save the unexportable model as an MLflow pytorch model directory (``pt2`` or ``pickle``)."""
    import mlflow.pytorch

    mlflow.pytorch.save_model(path=str(path), **_unexportable_args(serialization))


def save_pyfunc(path: Path) -> None:
    """Save a python_function-only model directory."""
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(str(path), python_model=_echo_model(), pip_requirements=["mlflow"])


def register(kind: str, name: str, alias: str | None = None) -> dict[str, Any]:
    """Log ``kind`` to the tracking server, register it as ``name`` and point ``alias`` at the new version."""
    import mlflow

    from model_recipes.base import registration_record

    if kind not in KINDS:
        raise ValueError(f"unknown bad model kind {kind!r}; known: {KINDS}")
    mlflow.set_experiment(f"tests/{name}")
    with mlflow.start_run(run_name=f"bad-{kind}") as run:
        if kind == "unexportable":
            import mlflow.pytorch

            info = mlflow.pytorch.log_model(name="model", registered_model_name=name, **_unexportable_args("pt2"))
            serialization = "pt2"
        else:
            import mlflow.pyfunc

            info = mlflow.pyfunc.log_model(
                name="model", python_model=_echo_model(), registered_model_name=name, pip_requirements=["mlflow"]
            )
            serialization = None
    return registration_record(info, run, name, alias, accuracy=None, serialization=serialization)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bad_models")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="log and register a bad model on the tracking server")
    reg.add_argument("kind", choices=KINDS)
    reg.add_argument("--name", required=True)
    reg.add_argument("--alias")
    args = parser.parse_args(argv)
    print(json.dumps(register(args.kind, args.name, args.alias)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
