"""perf_analyzer CSV parsing and command building (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelops.evaluation.perf import (
    PerfAnalyzerError,
    PerfSettings,
    concurrency_range,
    parse_perf_csv,
    perf_analyzer_command,
)

DATA = Path(__file__).parent / "data" / "perf_analyzer.csv"


def test_parse_real_csv():
    points = parse_perf_csv(DATA.read_text())
    assert [p["concurrency"] for p in points] == [1, 4]
    first = points[0]
    assert set(first) == {"concurrency", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms"}
    assert first["throughput"] == pytest.approx(2426.93)
    assert first["p50_ms"] == pytest.approx(0.361)  # CSV is microseconds
    assert first["p99_ms"] == pytest.approx(1.808)
    assert all(p["p50_ms"] <= p["p90_ms"] <= p["p95_ms"] <= p["p99_ms"] for p in points)


def test_parse_ignores_trailing_server_section_and_sorts():
    header, *rows = DATA.read_text().strip().splitlines()
    text = "\n".join([header, *reversed(rows)]) + "\n\nServer metrics\nfoo,bar\n1,2\n"
    assert [p["concurrency"] for p in parse_perf_csv(text)] == [1, 4]


def test_parse_missing_columns():
    with pytest.raises(PerfAnalyzerError, match="lacks columns"):
        parse_perf_csv("Concurrency,Inferences/Second\n1,10\n")


@pytest.mark.parametrize(
    ("levels", "expected"),
    [([1], "1:1:1"), ([1, 4], "1:4:3"), ([1, 2, 3], "1:3:1"), ([1, 2, 8], None), ([4, 1], None)],
)
def test_concurrency_range(levels, expected):
    assert concurrency_range(levels) == expected


def test_concurrency_range_rejects_zero():
    with pytest.raises(ValueError):
        concurrency_range([0, 1])


def test_command():
    settings = PerfSettings.from_spec(
        {"concurrency": [1, 4], "batch_size": 2, "measurement_interval_ms": 500, "max_trials": 4}
    )
    cmd = perf_analyzer_command(
        "/bin/pa",
        model="m",
        url="127.0.0.1:8000",
        settings=settings,
        concurrency="1:4:3",
        csv_path=Path("/tmp/x.csv"),
        shapes={"ids": [8]},
    )
    joined = " ".join(cmd)
    assert cmd[0] == "/bin/pa"
    for part in (
        "-m m",
        "-u 127.0.0.1:8000",
        "-i http",
        "--concurrency-range 1:4:3",
        "-b 2",
        "--measurement-interval 500",
        "--max-trials 4",
        "-f /tmp/x.csv",
        "--shape ids:8",
    ):
        assert part in joined


def test_settings_from_spec_ignores_unknown_keys():
    s = PerfSettings.from_spec({"concurrency": ["2"], "threads": 1, "something": True})
    assert s.concurrency == [2] and s.threads == 1
    assert s.as_dict()["batch_size"] == 1


FAKE_PA = """#!/bin/sh
# fake perf_analyzer: a range aborts; level 4 is only stable with a relaxed threshold
args="$*"
out=$(echo "$args" | sed -n 's/.*-f \\([^ ]*\\).*/\\1/p')
level=$(echo "$args" | sed -n 's/.*--concurrency-range \\([0-9]*\\):\\([0-9]*\\):.*/\\1 \\2/p')
set -- $level
if [ "$1" != "$2" ]; then echo "Failed to obtain stable measurement within 4 measurement windows"; exit 2; fi
case "$args" in *"--stability-percentage 50 "*) if [ "$1" = 4 ]; then echo "Failed to obtain stable measurement"; exit 2; fi;; esac
printf 'Concurrency,Inferences/Second,p50 latency,p90 latency,p95 latency,p99 latency\\n%s,100,1000,2000,3000,4000\\n' "$1" > "$out"
"""


def test_run_falls_back_per_level_and_relaxes(tmp_path, monkeypatch):
    from modelops.evaluation.perf import run_perf_analyzer
    from modelops.settings import Settings

    fake = tmp_path / "perf_analyzer"
    fake.write_text(FAKE_PA)
    fake.chmod(0o755)
    monkeypatch.setenv("MODELOPS_PERF_ANALYZER", str(fake))
    notes: list[str] = []
    csv_path = tmp_path / "perf.csv"
    points = run_perf_analyzer(
        model="m",
        url="127.0.0.1:1",
        settings=PerfSettings(concurrency=[1, 4]),
        csv_path=csv_path,
        tools=Settings.from_env(),
        notes=notes,
    )
    assert [p["concurrency"] for p in points] == [1, 4]
    assert points[1]["p99_ms"] == pytest.approx(4.0)
    assert len(notes) == 1 and notes[0].startswith("concurrency 4: unstable")
    assert parse_perf_csv(csv_path.read_text()) == points
