"""ModelOps core library: MLflow registry -> optimized Triton deployments. Importable without Airflow.

``modelops.optimize(model_uri, ...)`` runs one optimization outside Airflow (:func:`modelops.runs.local.optimize`);
it is imported on first use, so ``import modelops`` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "optimize"]


def __getattr__(name: str) -> Any:
    if name == "optimize":
        from modelops.runs.local import optimize

        return optimize
    raise AttributeError(f"module 'modelops' has no attribute {name!r}")
