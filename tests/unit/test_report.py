"""The HTML report: rendering from a synthetic summary, and record_run logging it (MLflow client faked)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from modelops.evaluation.selection import select
from modelops.tracking.record import gate_metrics, record_run
from modelops.tracking.report import render_report, why_not_chosen

FAILED = {
    "expectation": "expect_column_mean_to_be_between", "column": "agree", "observed": 0.93,
    "expected": "min_value=0.99", "detail": "observed 0.93",
}  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\nfake"


def _pt(c: int, thr: float, p99: float) -> dict[str, Any]:
    return {"concurrency": c, "throughput": thr, "p50_ms": p99 / 2, "p99_ms": p99}


def _results(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """validate + benchmark results of a run where fp32 wins, int8 fails the gate, fp8 needs TensorRT."""
    gate_dir = tmp_path / "run" / "ort_int8_dynamic"
    gate_dir.mkdir(parents=True)
    (gate_dir / "comparison.csv").write_text("sample,agree\n0,1\n")
    (gate_dir / "expectations.json").write_text(json.dumps({"success": False}))
    ok = {"success": True, "failed": [], "suite": "accuracy_gate.classification.agree>=0.99", "evaluated": 3}
    validate = {
        "metric_name": "accuracy", "source_metric": 0.97, "accuracy_tolerance": 0.01,
        "candidates": {
            "ort_fp32": {"status": "accepted", "metric": 0.97, "agreement": 1.0, "max_abs_diff": 1e-6,
                         "extra_metrics": {"top5_agreement": 1.0}, "expectations": ok},
            "ort_int8_dynamic": {
                "status": "rejected", "metric": 0.968, "agreement": 0.93, "extra_metrics": {"top5_agreement": 0.99},
                "reason": "failed expectations: expect_column_mean_to_be_between(agree): observed 0.93",
                "expectations": {"success": False, "failed": [FAILED], "suite": ok["suite"], "evaluated": 3,
                                 "uri": str(gate_dir / "expectations.json")},
                "comparison": str(gate_dir / "comparison.csv"),
            },
            "trt_fp8": {"status": "skipped", "metric": None, "reason": "needs TensorRT (GPU) to run",
                        "expectations": None, "extra_metrics": {}},
        },
    }  # fmt: skip
    benchmark = {
        "variants": {
            "baseline": {"status": "done", "points": [_pt(1, 100, 10), _pt(4, 150, 30)]},
            "ort_fp32": {"status": "done", "points": [_pt(1, 200, 5), _pt(4, 400, 12)]},
            "ort_int8_dynamic": {"status": "done", "points": [_pt(1, 300, 4), _pt(4, 700, 9)]},
        }
    }
    optimize = {
        "candidates": {
            "ort_fp32": {"status": "done"},
            "trt_int8": {"status": "skipped", "reason": "TensorRT needs an NVIDIA GPU"},
        }
    }
    return {"optimize": optimize, "validate": validate, "benchmark": benchmark}


def _summary(tmp_path: Path) -> dict[str, Any]:
    res = _results(tmp_path)
    client = FakeMlflow()
    spec = {"run_id": "r1", "model_name": "digits", "model_version": "3", "latency_slo_ms": 50.0, "run_prefix": "x"}
    selection = select(res["validate"], res["benchmark"], 50.0).to_json()
    return record_run(client, _LocalStorage(), spec, res, selection, {"deployment": "digits--v3-ort_fp32"})


class _LocalStorage:
    def download_file(self, uri: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(uri).read_bytes())
        return dest


class FakeMlflow:
    """The MlflowClient calls record_run makes; artifacts are copied so tests can read them after tmp cleanup."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.artifacts: dict[str, bytes] = {}

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        self.metrics[key] = value

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.artifacts[f"{artifact_path + '/' if artifact_path else ''}{Path(path).name}"] = Path(path).read_bytes()

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        for p in Path(local_dir).rglob("*"):
            if p.is_file():
                rel = p.relative_to(local_dir).as_posix()
                self.artifacts[f"{artifact_path + '/' if artifact_path else ''}{rel}"] = p.read_bytes()

    def set_model_version_tag(self, *args: Any) -> None: ...
    def delete_model_version_tag(self, *args: Any) -> None: ...
    def set_tag(self, *args: Any) -> None: ...
    def set_terminated(self, *args: Any, **kwargs: Any) -> None: ...


def test_render_report_table_plots_and_reasons(tmp_path):
    summary = _summary(tmp_path)
    page = render_report(summary, {"Throughput vs p99 latency": PNG, "Accuracy vs throughput": PNG})
    assert page.startswith("<!DOCTYPE html>") and "digits version 3" in page
    assert "Chosen <b>ort_fp32</b> at 2.67× the baseline" in page
    for variant in ("baseline", "ort_fp32", "ort_int8_dynamic", "trt_fp8"):
        assert f"<td class='l'>{variant}</td>" in page
    assert "top5_agreement=0.99" in page  # extra metrics in the table
    assert page.count(f"data:image/png;base64,{base64.b64encode(PNG).decode()}") == 2
    why = page.split("Why the others were not chosen")[1]
    assert "<b>ort_int8_dynamic</b> (rejected): failed expectations: expect_column_mean_to_be_between(agree)" in why
    assert "<code>expect_column_mean_to_be_between</code></td><td class='l'>agree</td><td>0.93</td>" in why
    assert "<b>trt_fp8</b> (skipped): needs TensorRT (GPU) to run" in why
    assert "<b>trt_int8</b> (skipped in optimize): TensorRT needs an NVIDIA GPU" in why
    assert "<b>ort_fp32</b>" not in why and "<b>baseline</b>" not in why


def test_report_escapes_and_explains_slower_variants():
    rows = [
        {"variant": "baseline", "status": "source", "throughput": 10.0},
        {"variant": "a", "status": "chosen", "throughput": 30.0},
        {"variant": "<b>", "status": "slower", "throughput": 20.0, "reason": None},
    ]
    page = render_report({"model": "m&m", "model_version": "1", "chosen": "a", "speedup": 3.0, "rows": rows})
    assert "m&amp;m" in page and "<td class='l'>&lt;b&gt;</td>" in page and "<b><b></b>" not in page
    assert why_not_chosen(rows[2], rows[1]) == (
        "accurate and within the latency SLO, but slower than a: 20 vs 30 infer/s"
    )
    empty = render_report({"model": "m", "model_version": "1", "chosen": None, "reason": "no candidate", "rows": []})
    assert "No variant chosen: no candidate" in empty and "No benchmark points to plot." in empty


def test_record_run_logs_report_plots_gate_artifacts_and_metrics(tmp_path):
    res = _results(tmp_path)
    client = FakeMlflow()
    spec = {"run_id": "r1", "model_name": "digits", "model_version": "3", "latency_slo_ms": 50.0, "run_prefix": "x"}
    selection = select(res["validate"], res["benchmark"], 50.0).to_json()
    summary = record_run(client, _LocalStorage(), spec, res, selection, None)
    assert {"report.html", "throughput_vs_p99.png", "accuracy_vs_throughput.png", "summary.json"} <= set(
        client.artifacts
    )
    assert client.artifacts["accuracy/ort_int8_dynamic/comparison.csv"] == b"sample,agree\n0,1\n"
    assert "accuracy/ort_int8_dynamic/expectations.json" in client.artifacts
    report = client.artifacts["report.html"].decode()
    assert len(re.findall(r"data:image/png;base64,", report)) == 2
    assert client.metrics["ort_int8_dynamic.gate_passed"] == 0.0 and client.metrics["ort_fp32.gate_passed"] == 1.0
    assert client.metrics["ort_int8_dynamic.gate.expect_column_mean_to_be_between.agree"] == 0.93
    assert client.metrics["ort_fp32.top5_agreement"] == 1.0
    int8 = next(r for r in summary["rows"] if r["variant"] == "ort_int8_dynamic")
    assert int8["status"] == "rejected" and int8["expectations"]["failed"] == [FAILED]
    assert "uri" not in int8["expectations"]
    assert summary["metric_name"] == "accuracy" and summary["latency_slo_ms"] == 50.0


def test_gate_metrics_without_gate_results():
    assert gate_metrics({"candidates": {"v": {"status": "failed", "expectations": None}}}) == {}


def test_the_report_says_where_the_eval_data_came_from(tmp_path):
    summary = _summary(tmp_path)
    synthetic = {"source": "synthetic", "origin": "seeded random inputs", "eval_rows": 0, "calibration_rows": 0,
                 "note": "the gate ran on synthetic inputs (no dataset, eval_data_uri, recipe data or input example): "
                         "calibrated variants skipped"}
    page = render_report({**summary, "eval_data": synthetic})
    assert "Eval data: <b>synthetic</b> (seeded random inputs)." in page
    assert "<b>Note:</b> the gate ran on synthetic inputs" in page
    logged = {"source": "mlflow_dataset", "origin": "wine-evaluation@ab12", "eval_rows": 54, "calibration_rows": 124,
              "labels": True, "note": ""}
    page = render_report({**summary, "eval_data": logged})
    assert ("Eval data: <b>mlflow_dataset</b> (wine-evaluation@ab12): 54 gate rows with labels, 124 calibration rows "
            "(never the gate's).") in page
    assert "Note:" not in page
