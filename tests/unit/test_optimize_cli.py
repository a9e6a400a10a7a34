"""``modelops optimize`` / ``modelops.optimize``: what is checked before anything runs (the run itself: integration)."""

from __future__ import annotations

import pytest

import modelops
from modelops.local.cli import main
from modelops.runs.local import OptimizeError, optimize, parse_model_uri


def test_model_uris_by_version_or_alias():
    assert parse_model_uri("models:/digits_cnn/3") == ("digits_cnn", "3", None)
    assert parse_model_uri("models:/my.model-x@champion") == ("my.model-x", None, "champion")
    for bad in ("models:/digits_cnn", "runs:/abc/model", "models:/a/b/c", "models:/a@", "digits_cnn/3", ""):
        with pytest.raises(OptimizeError, match="is not models:/<name>/<version> or models:/<name>@<alias>"):
            parse_model_uri(bad)


def test_the_python_entry_point_is_modelops_optimize(monkeypatch):
    assert modelops.optimize is optimize
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(OptimizeError, match="no MLflow: set MLFLOW_TRACKING_URI"):
        optimize("models:/m/1")
    with pytest.raises(AttributeError):
        modelops.no_such_thing  # noqa: B018


def test_the_cli_refuses_a_bad_uri_and_unknown_variants_in_one_line(capsys):
    assert main(["optimize", "models:/m"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: model URI 'models:/m' is not models:/<name>/<version> or models:/<name>@<alias>")
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", "models:/m/1", "--variants", "ort_fp32,fast"])
    assert exit_info.value.code == 2
    assert "unknown variant(s) ['fast']" in capsys.readouterr().err


def test_the_variants_table_lists_what_optimize_did_not_build_and_the_eval_data():
    from rich.console import Console

    from modelops.local.demo import eval_data_line, summary_table

    summary = {"model": "m", "model_version": "1", "rows": [
        {"variant": "ort_fp32", "metric": 1.0, "p50_ms": 1.0, "p99_ms": 2.0, "throughput": 10.0, "speedup": 2.0,
         "status": "chosen", "reason": None}],
        "not_built": {"ort_int8_static": {"status": "skipped", "reason": "no real data to calibrate on"}},
        "eval_data": {"source": "synthetic", "origin": "seeded random inputs", "note": "the gate ran on synthetic inputs"}}
    console = Console(width=200, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "ort_int8_static" in text and "skipped: no real data to calibrate on" in text
    assert eval_data_line(summary).startswith("eval data: synthetic (seeded random inputs)")
