"""A recipe from another package, found only through its ``modelops.recipes`` entry point, end to end.

The fixture builds a throwaway distribution (``pyproject.toml`` with an entry point, a light descriptor
module, a numpy/onnxruntime implementation) and installs it with the worker env's pip into a temp
``--target`` folder, which goes on ``sys.path`` here and on ``PYTHONPATH`` for step subprocesses. The
model is an ONNX file logged under a flavor of its own (``tiny_onnx``) that no recipe of this repo knows.
Then export -> optimize -> validate run with it, and the recipe's hooks show in the results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from modelops import recipes
from tests.worker.stepkit import step, write_spec

REPO = Path(__file__).resolve().parents[2]

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "tiny-onnx-recipe"
version = "0.1.0"

[project.entry-points."modelops.recipes"]
tiny_onnx = "tiny_onnx_recipe:INFO"

[tool.setuptools]
packages = ["tiny_onnx_recipe"]
"""

DESCRIPTOR = '''
"""Light: what selection needs (no numpy, no onnx)."""
from modelops.recipes import RecipeInfo

INFO = RecipeInfo("tiny_onnx_recipe.impl:RECIPE", flavors=("tiny_onnx",), description="ONNX files of the tiny flavor")
'''

IMPLEMENTATION = '''
"""Heavy: the recipe itself, written only against modelops.recipes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from modelops.recipes import IOSpec, Recipe, StepError, TensorSpec, random_inputs


class TinyOnnx(Recipe):
    name = "tiny_onnx"
    metric_name = "tiny_agreement"
    task = "classification"

    def io_from_model_dir(self, model_dir, mlmodel):
        import onnx

        graph = onnx.load(str(Path(model_dir) / "model.onnx")).graph
        def spec(v):
            return TensorSpec(v.name, "float32", tuple(d.dim_value for d in v.type.tensor_type.shape.dim[1:]))
        return IOSpec(tuple(spec(v) for v in graph.input), tuple(spec(v) for v in graph.output))

    def load(self, model_dir):
        import onnxruntime as ort

        path = Path(model_dir) / "model.onnx"
        if not path.exists():
            raise StepError(f"no model.onnx in {model_dir}")
        return path, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def predict(self, model, io, inputs):
        return model[1].run(io.output_names, {n: inputs[n] for n in io.input_names})

    def export_onnx(self, model, io, samples, path, opset):
        shutil.copyfile(model[0], path)
        return "tiny-copy"

    def library_versions(self):
        return {**super().library_versions(), "tiny_onnx_recipe": "0.1.0"}

    def eval_data(self, io):
        return random_inputs(io, 64, seed=7), None

    def metric(self, outputs, labels, source_outputs):
        return float((np.argmax(outputs, 1) == np.argmax(source_outputs, 1)).mean())

    def extra_metrics(self, outputs, labels, source_outputs):
        return {"tiny_max_abs_diff": float(np.abs(outputs - source_outputs).max())}


RECIPE = TinyOnnx()
'''


def tiny_model(model_dir: Path) -> dict:
    """A 16 -> 32 -> 4 MLP as ONNX, logged (by hand) under the ``tiny_onnx`` flavor."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((16, 32)).astype(np.float32), rng.standard_normal((32, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["scores"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir.mkdir(parents=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    mlmodel = {"flavors": {"tiny_onnx": {"data": "model.onnx"}, "python_function": {"loader_module": "tiny"}}}
    (model_dir / "MLmodel").write_text(json.dumps(mlmodel))  # JSON is YAML
    return mlmodel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """pip-install the throwaway recipe package into a folder; put it on sys.path and PYTHONPATH."""
    root = tmp_path_factory.mktemp("tiny-recipe")
    src = root / "src"
    (src / "tiny_onnx_recipe").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "tiny_onnx_recipe" / "__init__.py").write_text(DESCRIPTOR)
    (src / "tiny_onnx_recipe" / "impl.py").write_text(textwrap.dedent(IMPLEMENTATION))
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(src)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (next(site.glob("tiny_onnx_recipe-0.1.0.dist-info")) / "entry_points.txt").is_file()
    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(REPO), old_path) if p)
    sys.path.insert(0, str(site))
    recipes.refresh()
    yield site
    sys.path.remove(str(site))
    if old_path is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old_path
    recipes.refresh()


def test_selected_by_its_flavor_and_by_name(installed, tmp_path):
    mlmodel = tiny_model(tmp_path / "model")
    assert "tiny_onnx" in recipes.known_recipes()
    assert recipes.select_recipe(mlmodel) == "tiny_onnx"
    assert recipes.source_flavor(mlmodel) == "tiny_onnx"
    assert recipes.select_recipe({"flavors": {"sklearn": {}}}, explicit="tiny_onnx") == "tiny_onnx"
    assert type(recipes.get_recipe("tiny_onnx")).__module__ == "tiny_onnx_recipe.impl"


def test_export_optimize_validate_with_the_plugin_recipe(installed, tmp_path):
    mlmodel = tiny_model(tmp_path / "model")
    spec = {
        "model_name": "tiny", "model_version": "1", "source_uri": str(tmp_path / "model"), "flavor": "tiny_onnx",
        "recipe": recipes.select_recipe(mlmodel), "mlmodel": mlmodel, "variants": ["ort_fp32", "ort_int8_dynamic"],
        "accuracy_tolerance": 0.05, "run_id": "t1", "run_prefix": str(tmp_path / "run"),
    }  # fmt: skip
    spec_path = write_spec(tmp_path, spec)

    # export as its CLI runs in a pod: a fresh interpreter that must find the entry point by itself
    result_path = tmp_path / "export.result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "modelops.steps.export", "--spec", str(spec_path), "--result", str(result_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    export = json.loads(result_path.read_text())
    assert export["exporter"] == "tiny-copy" and export["baseline_kind"] == "onnxruntime"  # hook + API default
    assert export["versions"]["tiny_onnx_recipe"] == "0.1.0"
    assert export["io"]["inputs"] == [{"name": "x", "dtype": "float32", "dims": [16]}]

    optimize = step("optimize", spec_path)
    assert {v: c["status"] for v, c in optimize["candidates"].items()} == {"ort_fp32": "done", "ort_int8_dynamic": "done"}

    validate = step("validate", spec_path)
    assert validate["metric_name"] == "tiny_agreement" and validate["source_metric"] == 1.0
    fp32 = validate["candidates"]["ort_fp32"]
    assert fp32["status"] == "accepted" and fp32["metric"] == 1.0
    assert set(fp32["extra_metrics"]) == {"tiny_max_abs_diff"} and fp32["extra_metrics"]["tiny_max_abs_diff"] < 1e-4
    assert fp32["expectations"]["suite"].startswith("accuracy_gate.classification")  # the recipe's declared task
