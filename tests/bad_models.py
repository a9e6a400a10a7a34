"""Models the pipeline must refuse with a clear reason, shared by the worker and the integration tests.

- ``unexportable``: a PyTorch model calling ``torch.linalg.svdvals``, which has no ONNX conversion; export
  must fail naming the operator.
- ``pyfunc``: a plain ``mlflow.pyfunc`` model (flavor ``python_function`` only), which no recipe takes;
  resolve must fail naming the flavor and what is supported.
- ``probe``: a pickled PyTorch module whose pickle runs code on load, as a hostile one would: it writes what it
  could reach (its uid, whether ``--secret`` and its parent's environment are readable) to
  ``<--probe-dir>/uid-<uid>.json``. Resolve must refuse it without ``modelops.allow_pickle``; with it, the step
  that loads it must run as the step user and reach nothing.

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

KINDS = ("unexportable", "pyfunc", "probe")

PROBE = """
import json, os
seen = {"uid": os.getuid()}
for what, path in (("secret", %(secret)r), ("parent_environ", f"/proc/{os.getppid()}/environ")):
    try:
        open(path, "rb").read(16)
        seen[what] = "read"
    except OSError as exc:
        seen[what] = type(exc).__name__
with open(os.path.join(%(out)r, f"uid-{os.getuid()}.json"), "w") as fh:
    json.dump(seen, fh)
"""


class _Probe:
    """Unpickles to ``exec(PROBE)``: the code a hostile pickle runs the moment it is loaded."""

    def __init__(self, out: str, secret: str) -> None:
        self.code = PROBE % {"out": out, "secret": secret}

    def __reduce__(self):
        return exec, (self.code,)


def _probe_args(out: str, secret: str) -> dict[str, Any]:
    """``mlflow.pytorch.log_model`` arguments of the probe: a pickled Linear(4, 3) carrying a :class:`_Probe`."""
    import torch
    from mlflow.models import infer_signature
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    model.probe = _Probe(out, secret)  # a plain attribute: pickled with the module, None once loaded
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    with torch.inference_mode():
        y = model(torch.from_numpy(x)).numpy()
    return {"pytorch_model": model, "signature": infer_signature(x, y), "serialization_format": "pickle",
            "pip_requirements": ["torch"]}


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


def register(kind: str, name: str, alias: str | None = None, probe: tuple[str, str] | None = None) -> dict[str, Any]:
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
        elif kind == "probe":
            import mlflow.pytorch

            if probe is None:
                raise ValueError("the probe model needs --probe-dir and --secret")
            info = mlflow.pytorch.log_model(name="model", registered_model_name=name, **_probe_args(*probe))
            serialization = "pickle"
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
    reg.add_argument("--probe-dir", help="probe: the folder its findings go to (writable by the step user)")
    reg.add_argument("--secret", help="probe: a file the step must not be able to read (the stack's stack.json)")
    args = parser.parse_args(argv)
    probe = (args.probe_dir, args.secret) if args.kind == "probe" else None
    print(json.dumps(register(args.kind, args.name, args.alias, probe)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
