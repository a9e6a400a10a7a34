"""Run steps in-process on local paths exactly as their CLIs do (shared by the worker tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelops.steps import benchmark, export, optimize, validate
from modelops.steps._common import run_step

STEPS = {"export": export.run, "optimize": optimize.run, "validate": validate.run, "benchmark": benchmark.run}


def write_spec(tmp: Path, spec: dict[str, Any], **overrides: Any) -> Path:
    """Write ``spec`` (with ``overrides``) to ``tmp/spec.json``."""
    path = tmp / "spec.json"
    path.write_text(json.dumps({**spec, **overrides}))
    return path


def step(name: str, spec_path: Path) -> dict[str, Any]:
    """Run one step through its ``run_step`` frame; assert it succeeded and return its result."""
    result_path = spec_path.parent / f"{name}.result.json"
    rc = run_step(name, STEPS[name], ["--spec", str(spec_path), "--result", str(result_path)])
    assert rc == 0, f"{name} exited {rc}"
    return json.loads(result_path.read_text())


def user_rows(tmp: Path, model_dir: Path, x: Any, y: Any = None) -> dict[str, Any]:
    """The spec's ``eval_data`` block for rows a user gives as ``eval_data_uri``: ``x`` (and labels ``y``) written
    as a local Parquet file, read, checked and split by ``modelops.data`` as resolve does (under ``tmp/run``)."""
    import yaml

    from model_recipes.base import dataset_frame
    from modelops.data.sources import prepare
    from modelops.storage import Storage

    path = tmp / "user_rows.parquet"
    dataset_frame(x, y).to_parquet(path, index=False)
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    block = prepare(Storage(), str(tmp / "run"), eval_data_uri=str(path), datasets=[], recipe_ships_data=False,
                    source_uri=str(model_dir), mlmodel=mlmodel)  # fmt: skip
    return block.model_dump(mode="json")


class Pipelines:
    """export -> optimize -> validate once per model, on demand, shared by every test that asks for it."""

    def __init__(self, build):
        self._build, self._done = build, {}

    def __call__(self, key: str) -> dict[str, Any]:
        if key not in self._done:
            self._done[key] = self._build(key)
        return self._done[key]


def run_spec(prefix: Path, **fields: Any) -> dict[str, Any]:
    """A run spec that keeps the contract (``RunSpec``): the required fields plus ``fields``."""
    base = {"model_name": "m", "model_version": "1", "source_uri": str(prefix.parent / "source_model"),
            "recipe": "pytorch_generic", "run_prefix": str(prefix)}  # fmt: skip
    return {**base, **fields}


def export_result(onnx: Path | str, inputs: list[dict[str, Any]], max_batch_size: int = 64) -> dict[str, Any]:
    """An export result that keeps its contract (``ExportResult``), for tests that start at optimize."""
    return {
        "status": "done",
        "outputs": {"onnx": str(onnx), "samples": str(onnx) + ".npz", "source_model": str(onnx) + ".src"},
        "metrics": {"parity_max_abs_diff": 0.0}, "io": {"inputs": inputs, "outputs": []},
        "max_batch_size": max_batch_size, "opset": 17, "exporter": "test", "recipe": "pytorch_generic",
        "baseline_kind": "pytorch", "versions": {},
    }  # fmt: skip
