"""The configuration search on a deterministic measure function: it stops early, never re-measures, keeps every point;
and the (variant, configuration) choice flows through select, the spec and the rendered config.pbtxt."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from modelops.contracts.spec import RunSpec
from modelops.evaluation.config_search import (
    SearchSpace,
    ServingConfig,
    coordinate_search,
    measure_top_down,
    plot_search,
    write_csv,
)
from modelops.evaluation.selection import select
from modelops.serving.triton.config_proto import parse
from modelops.serving.triton.model_dir import render_config

CPU_SPACE = SearchSpace.for_cpu(2, 64, [1, 4])
# the algorithm's tests use every axis, max_batch_size included (the CPU space keeps the model's)
SPACE = SearchSpace(placements=CPU_SPACE.placements, max_queue_delay_us=CPU_SPACE.max_queue_delay_us,
                    preferred_batch_sizes=CPU_SPACE.preferred_batch_sizes, max_batch_size=(4, 64))
START = ServingConfig(instance_count=1, threads=2, max_batch_size=64)


def landscape(config: ServingConfig) -> list[dict[str, float]]:
    """A unimodal CPU-like surface: 2x1 is best, a 500 us queue delay helps, 2000 us adds only latency."""
    base = {(1, 1): 60.0, (1, 2): 100.0, (2, 1): 130.0, (2, 2): 90.0}[config.placement]
    delay_gain = {0: 1.0, 500: 1.1, 2000: 0.9}[config.max_queue_delay_us]
    pref_gain = 1.05 if config.preferred_batch_sizes else 1.0
    thr = base * delay_gain * pref_gain
    p99 = 400.0 / thr + config.max_queue_delay_us / 1000.0
    return [{"concurrency": 1, "throughput": thr / 2, "p99_ms": p99 / 2}, {"concurrency": 4, "throughput": thr, "p99_ms": p99}]


class Counting:
    def __init__(self, fn=landscape, fail=lambda config: False):
        self.fn, self.fail, self.calls = fn, fail, Counter()

    def __call__(self, config: ServingConfig):
        self.calls[config] += 1
        if self.fail(config):
            raise RuntimeError(f"Triton refused {config.key()}\nsecond line")
        return self.fn(config)


class Clock:
    """Each measurement takes ``step`` seconds of fake time."""

    def __init__(self, step: float = 0.0):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step / 2  # the search reads the clock before and after each measurement
        return self.now


def test_space_on_two_cores():
    assert CPU_SPACE.placements == ((1, 1), (1, 2), (2, 1), (2, 2))
    assert CPU_SPACE.max_queue_delay_us == (0, 500, 2000)
    # max_batch_size is the model's: a smaller one would refuse clients' (and deploy's smoke test's) batches
    assert CPU_SPACE.preferred_batch_sizes == ((), (4,)) and CPU_SPACE.max_batch_size == (64,)
    assert CPU_SPACE.size == 24 == len(set(CPU_SPACE.all_configs()))
    assert all(c.max_batch_size == 64 for c in CPU_SPACE.all_configs())
    assert SPACE.size == 48 == len(set(SPACE.all_configs()))


def test_finds_the_optimum_without_trying_every_point_and_never_remeasures():
    measure = Counting()
    result = coordinate_search(measure, SPACE, START, slo_ms=100.0, budget_s=1e9)
    optimum = max(SPACE.all_configs(), key=lambda c: landscape(c)[-1]["throughput"])
    assert result.best.config.placement == optimum.placement == (2, 1)
    assert result.best.config.max_queue_delay_us == 500 and result.best.config.preferred_batch_sizes == (4,)
    assert max(measure.calls.values()) == 1, "a configuration was measured twice"
    assert len(measure.calls) < SPACE.size / 2, f"measured {len(measure.calls)} of {SPACE.size}"
    # every measured point is kept, in measurement order, with its perf points
    assert [t.config for t in result.trials] == list(measure.calls)
    assert [t.order for t in result.trials] == list(range(len(result.trials)))
    assert all(len(t.points) == 2 for t in result.trials)
    assert result.stopped == "converged" and result.space_size == 48


def test_a_dominated_point_stops_its_direction():
    measure = Counting()
    result = coordinate_search(measure, SPACE, START, slo_ms=100.0, budget_s=1e9)
    by_key = {t.config.key(): t for t in result.trials}
    # placements are unordered: all four are tried; 2x2 is marked dominated by 2x1 (lower throughput, higher p99)
    assert {t.config.placement for t in result.trials} == set(SPACE.placements)
    assert by_key["i2xt2-d0-pnone-b64"].dominated_by == "i2xt1-d0-pnone-b64"
    assert by_key["i2xt1-d2000-pnone-b64"].dominated_by is not None

    # an ordered axis: delay 500 is dominated, so 2000 (better on this surface) is never measured: the early stop
    def dip(config: ServingConfig) -> list[dict[str, float]]:
        thr = {0: 100.0, 500: 80.0, 2000: 120.0}[config.max_queue_delay_us]
        return [{"concurrency": 4, "throughput": thr, "p99_ms": 1000.0 / thr}]

    measure = Counting(dip)
    result = coordinate_search(measure, SPACE, START, slo_ms=100.0, budget_s=1e9)
    delays = {c.max_queue_delay_us for c in measure.calls}
    assert delays == {0, 500} and result.stopped == "converged"
    assert next(t for t in result.trials if t.config.max_queue_delay_us == 500).dominated_by == START.key()
    # the SLO excludes points: with a tight SLO the winner must meet it
    tight = coordinate_search(Counting(), SPACE, START, slo_ms=3.5, budget_s=1e9)
    assert tight.best.meets_slo and tight.best.p99_ms <= 3.5


def test_budget_stops_the_search_and_the_start_is_always_measured():
    measure = Counting()
    result = coordinate_search(measure, SPACE, START, slo_ms=100.0, budget_s=25.0, clock=Clock(step=10.0))
    assert result.stopped == "budget"
    assert 1 <= len(measure.calls) <= 3 and result.seconds <= 40
    zero = coordinate_search(Counting(), SPACE, START, slo_ms=100.0, budget_s=0.0, clock=Clock(step=10.0))
    assert [t.config for t in zero.trials] == [START] and zero.best.config == START



def test_gains_within_the_noise_margin_do_not_move_the_incumbent():
    """A flat surface with +2% noise-sized bumps and one real gain (2x1, +30%): with a 5% margin the search takes the
    real gain only; without one each bump moves it too, at the cost of more points."""

    def flat(config: ServingConfig) -> list[dict[str, float]]:
        bump = 1.0 + 0.02 * (config.max_queue_delay_us > 0) + 0.02 * bool(config.preferred_batch_sizes)
        thr = 100.0 * bump * (1.3 if config.placement == (2, 1) else 1.0)
        return [{"concurrency": 4, "throughput": thr, "p99_ms": 40.0}]

    plain, margin = Counting(flat), Counting(flat)
    moved = coordinate_search(plain, SPACE, START, slo_ms=100.0, budget_s=1e9)
    held = coordinate_search(margin, SPACE, START, slo_ms=100.0, budget_s=1e9, min_gain=0.05)
    assert held.best.config == START.with_axis("placement", (2, 1)) and held.stopped == "converged"
    assert moved.best.config.max_queue_delay_us > 0 and moved.best.config.preferred_batch_sizes  # moved on bumps
    assert len(margin.calls) < len(plain.calls)
    # meeting the SLO where the incumbent does not is never a matter of margin
    slow = lambda c: [{"concurrency": 4, "throughput": 100.0, "p99_ms": 50.0 if c.placement == (1, 1) else 150.0}]
    assert coordinate_search(Counting(slow), SPACE, START, slo_ms=100.0, budget_s=1e9, min_gain=0.5).best.meets_slo


def test_a_failing_configuration_is_kept_with_its_reason_and_the_search_goes_on():
    bad = ServingConfig(instance_count=2, threads=1, max_batch_size=64)
    result = coordinate_search(Counting(fail=lambda c: c.placement == (2, 1)), SPACE, START, slo_ms=100.0, budget_s=1e9)
    failed = next(t for t in result.trials if t.config == bad)
    assert failed.error == "Triton refused i2xt1-d0-pnone-b64" and not failed.points
    assert failed.dominated_by == START.key()  # a failure counts as dominated (it ends an ordered axis' direction)
    assert result.best.config.placement == (1, 2)  # every 2x1 failed; the next best placement is kept
    assert result.best.error is None


def test_csv_and_plot_keep_every_point(tmp_path):
    result = coordinate_search(Counting(), SPACE, START, slo_ms=100.0, budget_s=1e9)
    rows = list(csv.DictReader(write_csv(result, tmp_path / "search.csv").open()))
    assert len(rows) == 2 * len(result.trials)
    assert {r["config"] for r in rows} == {t.config.key() for t in result.trials}
    png = plot_search({"ort_fp32": result.to_json()}, 100.0, tmp_path / "search.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert plot_search({"ort_fp32": None}, 100.0, tmp_path / "none.png") is None


def test_select_chooses_the_best_variant_and_configuration():
    fast = ServingConfig(instance_count=2, threads=1, max_queue_delay_us=500).as_dict()
    default = START.as_dict()

    def pts(thr: float, p99: float) -> list[dict[str, float]]:
        return [{"concurrency": 4, "throughput": thr, "p50_ms": p99 / 2, "p99_ms": p99}]

    bench = {"variants": {
        "baseline": {"status": "done", "points": pts(50, 10)},
        "ort_fp32": {"status": "done", "points": pts(120, 9), "config": fast,
                     "configs": [{"config": default, "points": pts(100, 8)}, {"config": fast, "points": pts(120, 9)}]},
        "ort_int8_dynamic": {"status": "done", "points": pts(110, 7), "config": default,
                             "configs": [{"config": default, "points": pts(110, 7)}]},
    }}  # fmt: skip
    validate = {"candidates": {v: {"status": "accepted"} for v in ("ort_fp32", "ort_int8_dynamic")}}
    chosen = select(validate, bench, slo_ms=100.0).to_json()
    assert chosen["chosen"] == "ort_fp32" and chosen["config"] == fast and chosen["speedup"] == 2.4
    # under a tighter SLO the searched configuration misses it: the default configuration of another variant wins
    tight = select(validate, bench, slo_ms=8.5).to_json()
    assert tight["chosen"] == "ort_int8_dynamic" and tight["config"] == default
    # a result without configurations (before the search existed) still selects, with no configuration
    del bench["variants"]["ort_fp32"]["configs"], bench["variants"]["ort_fp32"]["config"]
    assert select(validate, bench, slo_ms=100.0).to_json()["config"] is None


def test_the_chosen_configuration_renders_into_config_pbtxt():
    io = {"inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
          "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}]}  # fmt: skip
    text = render_config(name="m", kind="onnxruntime", io=io, max_batch_size=8, instance_count=2, threads=1,
                         preferred_batch_sizes=[4], max_queue_delay_us=500)  # fmt: skip
    config = parse(text)
    assert config.instance_group[0].count == 2 and config.parameters["intra_op_threads"].string_value == "1"
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500 and config.max_batch_size == 8


def test_spec_defaults_and_bounds():
    bench = RunSpec().benchmark
    assert bench.config_search is True and bench.config_search_budget_s == 60.0
    with pytest.raises(ValueError, match="config_search_budget_s"):
        RunSpec.parse({"benchmark": {"config_search_budget_s": -1}})
    assert ServingConfig.from_dict(START.as_dict()) == START


def test_publish_renders_the_chosen_configuration(tmp_path):
    from modelops.serving.publish import _serving_kwargs
    from modelops.serving.triton.model_dir import build_model_dir

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read by the renderer")
    io = {"inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
          "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}]}  # fmt: skip
    chosen = ServingConfig(instance_count=2, threads=1, max_queue_delay_us=2000, preferred_batch_sizes=(4,),
                           max_batch_size=16).as_dict()  # fmt: skip
    root = build_model_dir(tmp_path / "m", name="m", kind="onnxruntime", model_path=onnx, io=io,
                           **_serving_kwargs(chosen, 64))  # fmt: skip
    config = parse((root / "config.pbtxt").read_text())
    assert (config.instance_group[0].count, config.max_batch_size) == (2, 16)
    assert config.parameters["intra_op_threads"].string_value == "1"
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    # no configuration (a selection from before the search): the default rendering, the model's max_batch_size
    assert _serving_kwargs(None, 64) == {"max_batch_size": 64}


def test_record_logs_every_searched_point_as_csv_and_plot(tmp_path):
    from modelops.tracking.record import record_run
    from tests.unit.test_report import FakeMlflow, _LocalStorage, _results

    res = _results(tmp_path)
    search = coordinate_search(Counting(), SPACE, START, slo_ms=100.0, budget_s=1e9)
    res["benchmark"]["variants"]["ort_fp32"]["config_search"] = {
        **search.to_json(), "csv": str(write_csv(search, tmp_path / "ort_fp32" / "config_search.csv"))}
    client = FakeMlflow()
    spec = {"run_id": "r1", "model_name": "digits", "model_version": "3", "latency_slo_ms": 50.0, "run_prefix": "x"}
    record_run(client, _LocalStorage(), spec, res, select(res["validate"], res["benchmark"], 50.0).to_json(), None)
    assert client.artifacts["config_search.png"][:4] == b"\x89PNG"
    rows = client.artifacts["perf_analyzer/ort_fp32.config_search.csv"].decode().splitlines()
    assert len(rows) == 1 + 2 * len(search.trials)
    assert client.artifacts["report.html"].decode().count("data:image/png;base64,") == 3


def test_search_windows_hold_enough_requests_for_a_p99():
    from modelops.evaluation.perf import PerfSettings
    from modelops.evaluation.triton_bench import search_window_ms

    perf = PerfSettings(measurement_interval_ms=1000)
    fast = [{"concurrency": 1, "throughput": 1500.0}, {"concurrency": 4, "throughput": 3000.0}]
    slow = [{"concurrency": 1, "throughput": 52.0}, {"concurrency": 4, "throughput": 80.0}]
    assert search_window_ms(fast, perf) == 100  # digits: the shortest window already holds 150 requests
    assert search_window_ms(slow, perf) == 961  # MiniLM under load: ~50 requests at concurrency 1
    assert search_window_ms([{"concurrency": 1, "throughput": 5.0}], perf) == 1000  # never above the full window
    assert search_window_ms([], perf) == 1000
    assert search_window_ms([{"concurrency": 1, "throughput": 400.0}], perf) == 125  # 50 requests need 125 ms


def _measured(thr_p99: list[tuple[float, float]], status: str = "done") -> dict:
    return {"status": status, "points": [{"concurrency": 1 + i, "throughput": t, "p99_ms": p} for i, (t, p) in
                                         enumerate(thr_p99)]}  # fmt: skip


def test_only_contenders_are_searched_best_first():
    from modelops.evaluation.triton_bench import CONTENDER_FRACTION, contenders

    results = {
        "baseline": _measured([(5000.0, 1.0)]),  # the reference: never searched, however fast
        "ort_fp32": _measured([(800.0, 2.0), (1000.0, 9.0)]),
        "ort_int8_dynamic": _measured([(1000.0, 3.0), (1500.0, 80.0)]),  # 1500 under the 100 ms SLO
        "openvino_int8": _measured([(1400.0, 50.0)]),
        "ort_int8_static": _measured([], status="failed"),
    }
    assert CONTENDER_FRACTION * 1500 > 1000
    assert contenders(results, slo_ms=100.0) == ["ort_int8_dynamic", "openvino_int8"]
    # the SLO class comes first: under a 20 ms SLO only ort_fp32 (1000/s at 9 ms) and the int8 points at 3 ms count
    assert contenders(results, slo_ms=20.0) == ["ort_fp32", "ort_int8_dynamic"]
    # none meets the SLO: ranked at their lowest-p99 points (800, 1000, 1400/s; a searched configuration may bring
    # one under it)
    assert contenders(results, slo_ms=0.5) == ["openvino_int8"]
    assert contenders({"baseline": results["baseline"]}, slo_ms=100.0) == []


def test_a_search_point_measures_the_top_concurrency_first_and_lower_ones_only_while_the_slo_is_missed():
    p99 = {1: 20.0, 4: 60.0, 16: 240.0}  # a saturated server: p99 grows with the queue

    def run(slo_ms: float) -> tuple[list[int], list[dict]]:
        asked: list[int] = []

        def level(c: int) -> list[dict]:
            asked.append(c)
            return [{"concurrency": c, "throughput": 10.0 * min(c, 4), "p99_ms": p99[c]}]

        return asked, measure_top_down(level, [4, 1, 16, 4], slo_ms)

    asked, points = run(slo_ms=500.0)  # the top level meets it: nothing below can beat its throughput
    assert asked == [16] and [p["concurrency"] for p in points] == [16]
    asked, points = run(slo_ms=100.0)  # 16 misses, 4 meets: 1 is never measured
    assert asked == [16, 4] and [p["concurrency"] for p in points] == [4, 16]
    asked, points = run(slo_ms=5.0)  # none meets: every level, so summarize can fall back to the lowest p99
    assert asked == [16, 4, 1] and [p["concurrency"] for p in points] == [1, 4, 16]
