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
