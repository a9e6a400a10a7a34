"""Loading that runs the model's own code is refused without ``modelops.allow_pickle``; MLflow's gate follows the spec.

The ``MLmodel`` flavors below are what MLflow 3.17's ``save_model`` writes (checked against real saves).
"""

from __future__ import annotations

import json
import os

import pytest

from modelops.contracts.naming import TAG_ALLOW_PICKLE
from modelops.recipes.trust import assess, loader_gate
from modelops.steps._common import run_step
from tests.unit.test_contracts import MINIMAL

PYTORCH = {"flavors": {"pytorch": {"code": None, "model_data": "data", "pytorch_version": "2.13.0+cpu"},
                       "python_function": {"loader_module": "mlflow.pytorch", "data": "data"}}}
PT2_FILES = ["MLmodel", "conda.yaml", "data/model.pt2", "input_example.json", "requirements.txt"]
PICKLE_FILES = ["MLmodel", "conda.yaml", "data/model.pth", "data/pickle_module_info.txt", "requirements.txt"]


def sklearn(fmt: str, trusted: list[str] | None = None) -> dict:
    return {"flavors": {"sklearn": {"code": None, "pickled_model": f"model.{fmt}", "serialization_format": fmt,
                                    "sklearn_version": "1.9.1", "skops_trusted_types": trusted}}}


def test_pt2_and_onnx_load_without_running_model_code():
    pt2 = assess(PYTORCH, "pytorch", PT2_FILES, {})
    assert pt2.risks == () and not pt2.refused and pt2.allow_pickle is False  # MLflow's gate stays closed
    onnx = assess({"flavors": {"onnx": {"data": "model.onnx"}}}, "onnx", ["MLmodel", "model.onnx"], {})
    assert not onnx.refused and onnx.allow_pickle is False


def test_a_pickled_pytorch_module_is_refused_in_one_line_naming_the_tag():
    trust = assess(PYTORCH, "pytorch", PICKLE_FILES, {})
    assert trust.refused
    line = trust.reason("wine_mlp", "3")
    assert line == ("model wine_mlp version 3 runs code from its own files when loaded: its PyTorch module is "
                    "pickled (log it with serialization_format='pt2'); an MLflow admin who trusts it sets the tag "
                    "modelops.allow_pickle=true on the version")
    assert "\n" not in line


@pytest.mark.parametrize("value", ["true", "True", " yes ", "1"])
def test_the_opt_in_opens_mlflows_gate_for_that_run(value):
    trust = assess(PYTORCH, "pytorch", PICKLE_FILES, {TAG_ALLOW_PICKLE: value})
    assert trust.risks and not trust.refused and trust.allow_pickle is True


@pytest.mark.parametrize("value", ["", "false", "no", "maybe"])
def test_anything_but_a_yes_is_no_opt_in(value):
    assert assess(PYTORCH, "pytorch", PICKLE_FILES, {TAG_ALLOW_PICKLE: value}).refused


@pytest.mark.parametrize(("fmt", "trusted", "refused"), [
    ("pickle", None, True),
    ("cloudpickle", None, True),
    ("skops", ["sklearn.tree._tree.Tree"], True),  # the file itself asks to trust it: unchecked node indices
    ("skops", None, False),  # skops' own safe defaults
])
def test_sklearn_formats(fmt, trusted, refused):
    trust = assess(sklearn(fmt, trusted), "sklearn", ["MLmodel", f"model.{fmt}"], {})
    assert trust.refused is refused
    assert trust.allow_pickle is (not refused)  # MLflow gates every sklearn format, skops included
    if refused:
        assert fmt in trust.reason("m", "1") or "sklearn.tree._tree.Tree" in trust.reason("m", "1")


def test_code_paths_and_remote_modeling_code_count_too():
    with_code = {"flavors": {"pytorch": {**PYTORCH["flavors"]["pytorch"], "code": "code"}}}
    trust = assess(with_code, "pytorch", [*PT2_FILES, "code/my_layers.py"], {})
    assert trust.refused and "code_paths" in trust.risks[0]
    hf = {"flavors": {"transformers": {"pipeline_model_type": "MPTForCausalLM", "source_model_name": "x"}}}
    remote = assess(hf, "transformers", ["MLmodel", "model/config.json", "model/modeling_mpt.py"], {})
    assert remote.refused and "trust_remote_code" in remote.reason("mpt", "1")
    plain = assess(hf, "transformers", ["MLmodel", "model/config.json", "model/model.safetensors"], {})
    assert not plain.refused


def test_both_risks_are_counted_in_the_line():
    with_code = {"flavors": {"pytorch": {**PYTORCH["flavors"]["pytorch"], "code": "code"}}}
    trust = assess(with_code, "pytorch", [*PICKLE_FILES, "code/x.py"], {})
    assert "(and 1 more)" in trust.reason("m", "1")


def test_loader_gate_follows_the_spec_and_a_hand_written_spec_leaves_the_environment():
    assert loader_gate(True) == {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    assert loader_gate(False) == {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    assert loader_gate(None) == {}


@pytest.mark.parametrize(("allow", "seen"), [(False, "false"), (True, "true")])
def test_a_step_loads_under_the_gate_its_spec_sets(tmp_path, monkeypatch, allow, seen):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "unset-by-test")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**MINIMAL, "run_prefix": str(tmp_path / "run"), "allow_pickle": allow}))
    gates = []
    rc = run_step("optimize", lambda s, st: gates.append(os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"]) or {
        "candidates": {}}, ["--spec", str(spec), "--result", str(tmp_path / "r.json")])
    assert rc == 0 and gates == [seen]
