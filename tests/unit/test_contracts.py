"""The typed contracts: the run spec, step results, the Status vocabulary and the variant registry."""

from __future__ import annotations

import json

import pytest

from modelops.contracts import RunSpec, SpecError, Status, check_result
from modelops.contracts.results import ResultError
from modelops.contracts.status import VERSION_STATUSES
from modelops.contracts.variants import (
    VARIANT_NAMES,
    VARIANTS,
    BuildStep,
    Device,
    Family,
    UnknownVariant,
    built_by,
    check_variants,
    optimize_targets,
)
from modelops.steps._common import run_step

MINIMAL = {"model_name": "digits", "model_version": 3, "source_uri": "s3://mlflow/m", "recipe": "digits_cnn",
           "run_prefix": "s3://artifacts/runs/digits/3/r1"}  # fmt: skip


def test_spec_is_complete_after_parse_every_block_a_step_reads_is_written():
    doc = RunSpec.parse(MINIMAL).to_json()
    assert doc["model_version"] == "3"  # versions are text everywhere (MLflow, S3 layout)
    for block, key in (("benchmark", "concurrency"), ("static_quant", "calibration_rows"),
                       ("modelopt", "nodes_to_exclude"), ("engine", "timing_cache_prefix")):  # fmt: skip
        assert key in doc[block]
    assert doc["rollout"] == 100 and doc["serving_device"] == "cpu" and doc["variants"] == ["ort_fp32", "ort_int8_dynamic"]
    assert RunSpec.parse(json.dumps(doc)).to_json() == doc  # a round trip changes nothing


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": ["ort_fp32", "magic"]}, "variants: unknown variant(s) ['magic']"),
        ({"rollout": 0}, "rollout: Input should be greater than or equal to 1"),
        ({"static_quant": {"calibraton_rows": 8}}, "static_quant.calibraton_rows: Extra inputs are not permitted"),
        ({"triton_bucket_name": "x"}, "triton_bucket_name: Extra inputs are not permitted"),
        ({"benchmark": {"concurrency": []}}, "benchmark.concurrency: List should have at least 1 item"),
        ({"recipe": ""}, "recipe: String should have at least 1 character"),
    ],
)
def test_bad_spec_fails_with_one_line_naming_the_field(change, message):
    with pytest.raises(SpecError) as err:
        RunSpec.parse({**MINIMAL, **change})
    text = str(err.value)
    assert "\n" not in text and message in text, text


def test_a_spec_written_by_hand_needs_only_what_its_step_reads():
    assert RunSpec.parse({"variants": ["trt_fp16"]}, "compile").variants == ["trt_fp16"]  # skips before reading
    with pytest.raises(SpecError, match=r"^invalid run spec: export needs source_uri, recipe$"):
        RunSpec.parse({"run_prefix": "/tmp/run"}, "export")


def test_spec_that_is_not_an_object_is_refused():
    with pytest.raises(SpecError, match="must be a JSON object"):
        RunSpec.parse("[1, 2]")


def test_step_refuses_an_invalid_spec_before_any_work(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**MINIMAL, "run_prefix": str(tmp_path / "run"), "variants": ["trt_fp64"]}))
    called = []
    rc = run_step("optimize", lambda s, st: called.append(s) or {}, ["--spec", str(spec), "--result", str(tmp_path / "r")])
    assert rc == 1 and not called and not (tmp_path / "run").exists()
    assert capsys.readouterr().err.strip().startswith("optimize: error: invalid run spec: variants: unknown variant")


def test_step_whose_result_breaks_its_contract_fails_and_writes_no_result(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**MINIMAL, "run_prefix": str(tmp_path / "run")}))
    bad = {"candidates": {"ort_fp32": {"status": "done"}}}  # optimize candidate without its runtime
    rc = run_step("optimize", lambda s, st: dict(bad), ["--spec", str(spec), "--result", str(tmp_path / "r.json")])
    assert rc == 1 and not (tmp_path / "r.json").exists()
    assert "optimize result breaks its contract: candidates.ort_fp32.runtime: Field required" in capsys.readouterr().err


def test_a_failed_step_leaves_its_one_line_reason_as_the_termination_message(tmp_path, capsys, monkeypatch):
    from modelops.steps._common import StepError

    log = tmp_path / "termination-log"
    monkeypatch.setenv("MODELOPS_TERMINATION_LOG", str(log))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**MINIMAL, "run_prefix": str(tmp_path / "run")}))

    def fails(_spec, _storage):
        raise StepError("parity failed: output 'y' differs from the source by 3.2\n(details)")

    rc = run_step("export", fails, ["--spec", str(spec), "--result", str(tmp_path / "r.json")])
    assert rc == 1
    assert log.read_text() == "export: error: parity failed: output 'y' differs from the source by 3.2"
    assert capsys.readouterr().err.strip() == log.read_text()  # the task log says the same line


def test_result_models_accept_a_skipped_result_and_refuse_an_unknown_status():
    assert check_result("compile", {"status": "skipped", "reason": "no NVIDIA GPU"})["status"] == "skipped"
    with pytest.raises(ResultError, match="status: Input should be"):
        check_result("validate", {"status": "finished"})


def test_status_is_a_string_everywhere_it_is_written():
    assert json.dumps({"s": Status.DEPLOYED}) == '{"s": "deployed"}'
    assert str(Status.REJECTED) == "rejected" and f"{Status.FAILED}" == "failed"
    # the model-version tag values fixed by ARCHITECTURE.md
    assert [str(s) for s in VERSION_STATUSES] == ["optimizing", "canary", "deployed", "rolled_back", "failed",
                                                  "rejected"]


def test_registry_names_are_the_contract_names_and_each_step_has_its_builders():
    from modelops.steps import compile as compile_step
    from modelops.steps import optimize

    assert VARIANT_NAMES == ["ort_fp32", "ort_int8_dynamic", "ort_int8_static", "modelopt_int8", "modelopt_fp8",
                             "trt_fp16", "trt_int8", "trt_fp8", "openvino_bf16", "openvino_int8", "ort_genai_int8",
                             "ort_genai_int4"]  # fmt: skip
    # tensor variants have an ONNX builder; LLM variants are built by the model builder (steps/llm_build.py)
    tensor_optimize = {n for n in built_by(BuildStep.OPTIMIZE) if VARIANTS[n].family == Family.TENSOR}
    assert set(optimize.BUILDERS) == tensor_optimize
    assert {n for n, v in VARIANTS.items() if v.family == Family.LLM} == {"ort_genai_int8", "ort_genai_int4"}
    assert set(compile_step.ENGINES) == set(built_by(BuildStep.COMPILE))
    for variant in VARIANTS.values():  # an engine's source is a variant optimize builds
        assert variant.source is None or VARIANTS[variant.source].built_by == BuildStep.OPTIMIZE


def test_what_the_cpu_triton_cannot_serve_is_said_by_the_registry():
    cpu = {name for name, v in VARIANTS.items() if v.servable_on(Device.CPU)}
    assert cpu == {"ort_fp32", "ort_int8_dynamic", "ort_int8_static", "openvino_bf16", "openvino_int8",
                   "ort_genai_int8", "ort_genai_int4"}  # fmt: skip
    assert VARIANTS["openvino_int8"].backend_on("cpu") == "python" and not VARIANTS["openvino_int8"].servable_on("gpu")
    assert VARIANTS["ort_fp32"].backend_on("cpu") == "python" and VARIANTS["ort_fp32"].backend_on("gpu") == "onnxruntime"
    assert VARIANTS["trt_int8"].backend_on(Device.GPU) == "tensorrt"
    assert "not served by a cpu Triton" in VARIANTS["modelopt_int8"].not_servable_reason(Device.CPU)


def test_optimize_builds_the_sources_of_requested_engines_in_registry_order():
    assert optimize_targets(["trt_int8", "ort_fp32"]) == ["ort_fp32", "modelopt_int8"]
    assert optimize_targets(["trt_fp16"]) == []
    with pytest.raises(UnknownVariant, match="no variants requested"):
        check_variants([])


def test_dag_variants_param_is_the_registry():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "dags" / "optimize_model.py"
    spec = importlib.util.spec_from_file_location("optimize_model_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema = module.PARAMS["variants"].schema
    assert schema["items"]["enum"] == VARIANT_NAMES
    # empty by default: the recipe's family defaults, which the form's description lists
    assert module.PARAMS["variants"].value is None and "minItems" not in schema
    assert schema["examples"] == VARIANT_NAMES  # the form renders a multi-select
    assert "Leave empty for the recipe's defaults" in module.PARAMS["variants"].description
    assert "image: ort_fp32 + ort_int8_static + openvino_int8" in module.PARAMS["variants"].description
    assert module.PARAMS["recipe"].value is None  # empty: the recipe is picked from the MLflow flavor


def test_compile_by_hand_with_a_partial_spec_is_skipped_on_a_machine_without_gpu(tmp_path, monkeypatch):
    from modelops.steps import EXIT_SKIPPED
    from modelops.steps import compile as compile_step

    monkeypatch.setattr(compile_step, "detect_gpu", lambda: None)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"variants": ["trt_fp16"]}))
    rc = run_step("compile", compile_step.run, ["--spec", str(spec), "--result", str(tmp_path / "r.json")])
    assert rc == EXIT_SKIPPED and json.loads((tmp_path / "r.json").read_text())["status"] == "skipped"


def test_rollout_steps_are_ascending_percents_ending_at_100():
    from modelops.contracts.spec import RunSpec, SpecError, check_rollout_steps, rollout_steps_from_params

    assert check_rollout_steps([10, 50, 100]) == [10, 50, 100]
    for bad in ([], [0, 100], [50, 10, 100], [10, 50], [10, 10, 100], [10, 101]):
        with pytest.raises(ValueError):
            check_rollout_steps(bad)
    # the older `rollout` param is a shortcut: N -> [N, 100], 100 -> replace at once
    assert rollout_steps_from_params(None, None) == [10, 50, 100]
    assert rollout_steps_from_params(None, 100) == [100]
    assert rollout_steps_from_params(None, 30) == [30, 100]
    assert rollout_steps_from_params([25, 100], None) == [25, 100]
    with pytest.raises(SpecError, match="rollout_steps"):
        RunSpec.parse({"rollout_steps": [50, 20]})
