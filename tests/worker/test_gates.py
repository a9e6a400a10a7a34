"""The accuracy gate's great-expectations suite on synthetic comparison tables (worker environment: GX)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("great_expectations")

from modelops.evaluation.gates import GateThresholds, comparison_table, import_in_background, validate_table


def _scores(n: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 10)).astype(np.float32)


def test_identical_outputs_pass_every_suite():
    src = _scores()
    table = comparison_table({"o": src.copy()}, {"o": src})
    for th in (GateThresholds("classification", min_agreement=0.99), GateThresholds("embedding", min_cosine=0.99)):
        result = validate_table(table, th)
        assert result.success and result.failed == [] and result.reason() is None
        assert result.evaluated >= 3 and result.suite == th.suite_name
        json.dumps(result.raw)  # the expectations.json artifact


def test_low_agreement_fails_the_classification_suite():
    src = _scores()
    cand = src.copy()
    cand[:10] = -cand[:10]  # 10 of 200 rows flip their top-1 class: agreement 0.95
    result = validate_table(
        comparison_table({"o": cand}, {"o": src}), GateThresholds("classification", min_agreement=0.99)
    )
    assert not result.success
    assert [(f["expectation"], f["column"], f["observed"]) for f in result.failed] == [
        ("expect_column_mean_to_be_between", "agree", pytest.approx(0.95))
    ]


def test_cosine_mostly_and_nan_rows():
    src = _scores()
    cand = src + 0.05 * _scores(seed=1)
    cand[0, 0] = np.nan
    table = comparison_table({"o": cand}, {"o": src})
    result = validate_table(table, GateThresholds("embedding", min_cosine=0.99, mostly=0.99))
    by_column = {(f["expectation"], f["column"]) for f in result.failed}
    # the NaN row fails "finite" and "not null"; the noisy rows are fine for cosine >= 0.99 at mostly 0.99
    assert by_column == {
        ("expect_column_values_to_be_in_set", "is_finite"),
        ("expect_column_values_to_not_be_null", "cosine"),
    }
    strict = validate_table(table, GateThresholds("embedding", min_cosine=0.9999, mostly=0.99))
    assert ("expect_column_values_to_be_between", "cosine") in {(f["expectation"], f["column"]) for f in strict.failed}


def test_regression_relative_error():
    src = np.linspace(1, 2, 100).reshape(-1, 1)
    ok = validate_table(comparison_table({"y": src * 1.01}, {"y": src}), GateThresholds("regression", max_rel_err=0.05))
    bad = validate_table(comparison_table({"y": src * 1.2}, {"y": src}), GateThresholds("regression", max_rel_err=0.05))
    assert ok.success and not bad.success and bad.failed[0]["column"] == "rel_err"


def test_gx_is_imported_in_the_background_and_its_info_chatter_stays_out_of_the_step_log(caplog):
    """validate starts GX's import beside the source model's run; GX's ~100 INFO lines per context ("Skipping
    registering function ...") would otherwise fill every validate task log."""
    import_in_background().join()
    caplog.set_level(logging.INFO)
    src = _scores()
    result = validate_table(comparison_table({"o": src.copy()}, {"o": src}), GateThresholds("embedding", min_cosine=0.99))
    assert result.success
    gx_info = [r for r in caplog.records if r.name.startswith("great_expectations") and r.levelno < logging.WARNING]
    assert not gx_info, gx_info[:3]
