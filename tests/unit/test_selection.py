from __future__ import annotations

from modelops.evaluation.selection import best_point, select


def _bench(points_by_variant):
    return {"variants": {v: {"status": "done", "points": pts} for v, pts in points_by_variant.items()}}


def _pt(c, thr, p99, p50=None):
    return {"concurrency": c, "throughput": thr, "p99_ms": p99, "p50_ms": p50 or p99 / 2}


def test_best_point_respects_slo():
    points = [_pt(1, 100, 5), _pt(4, 300, 20), _pt(8, 320, 80)]
    assert best_point(points, 50)["throughput"] == 300
    assert best_point(points, 100)["throughput"] == 320
    assert best_point(points, 1) is None


def test_select_picks_fastest_accurate_candidate_and_measures_speedup():
    validate = {"candidates": {"ort_fp32": {"status": "accepted"}, "ort_int8_dynamic": {"status": "accepted"}}}
    bench = _bench({
        "baseline": [_pt(1, 100, 10), _pt(4, 150, 30)],
        "ort_fp32": [_pt(1, 200, 5), _pt(4, 400, 12)],
        "ort_int8_dynamic": [_pt(1, 300, 4), _pt(4, 600, 60)],
    })
    sel = select(validate, bench, slo_ms=50)
    assert sel.chosen == "ort_fp32"  # int8's best point under 50 ms is 300 < 400
    assert sel.speedup == round(400 / 150, 3)
    sel = select(validate, bench, slo_ms=100)
    assert sel.chosen == "ort_int8_dynamic"
    assert sel.speedup == 4.0


def test_rejected_candidate_is_never_chosen_even_if_fastest():
    validate = {"candidates": {"ort_fp32": {"status": "accepted"},
                               "ort_int8_dynamic": {"status": "rejected", "reason": "accuracy 0.5 below 0.97"}}}
    bench = _bench({"baseline": [_pt(1, 100, 10)], "ort_fp32": [_pt(1, 150, 8)], "ort_int8_dynamic": [_pt(1, 900, 1)]})
    sel = select(validate, bench, slo_ms=50)
    assert sel.chosen == "ort_fp32"
    assert "accuracy 0.5" in sel.scores["ort_int8_dynamic"].reason


def test_nothing_meets_slo_gives_reason():
    validate = {"candidates": {"ort_fp32": {"status": "accepted"}}}
    bench = _bench({"baseline": [_pt(1, 100, 10)], "ort_fp32": [_pt(1, 150, 80)]})
    sel = select(validate, bench, slo_ms=50)
    assert sel.chosen is None and sel.speedup is None
    assert "p99 80.00 ms > SLO 50 ms" in sel.reason


def test_baseline_outside_slo_still_gives_a_speedup():
    validate = {"candidates": {"ort_fp32": {"status": "accepted"}}}
    bench = _bench({"baseline": [_pt(1, 100, 200)], "ort_fp32": [_pt(1, 250, 20)]})
    sel = select(validate, bench, slo_ms=50)
    assert sel.chosen == "ort_fp32" and sel.speedup == 2.5
