"""perf_analyzer: build its command line, run it, parse its CSV report into latency/throughput points.

Latencies in perf_analyzer's CSV are microseconds; points carry milliseconds.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import signal
import subprocess
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from modelops.contracts.spec import BenchmarkSpec
from modelops.process_tree import die_with_parent
from modelops.settings import Settings

log = logging.getLogger("modelops.evaluation.perf")

_PERCENTILES = (
    ("p50_ms", "p50 latency"),
    ("p90_ms", "p90 latency"),
    ("p95_ms", "p95 latency"),
    ("p99_ms", "p99 latency"),
)


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer failed or wrote no usable CSV; the message is one line."""


class PerfSettings(BenchmarkSpec):
    """What a benchmark measures: the run spec's ``benchmark`` block, read leniently (unknown keys ignored).

    ``stability_percentage`` may exceed 100 here: a level that never stabilises is re-measured accepting any
    spread (noted in the result).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    stability_percentage: int = Field(50, ge=1)

    @classmethod
    def from_spec(cls, spec_benchmark: dict[str, Any] | None) -> PerfSettings:
        return cls.model_validate(dict(spec_benchmark or {}))

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_perf_csv(text: str) -> list[dict[str, float]]:
    """Parse perf_analyzer's ``-f`` CSV into points sorted by concurrency.

    Args:
        text: the CSV text (with or without ``--verbose-csv`` columns; a trailing blank-line-separated
            section, as written with server-side metrics, is ignored).

    Returns:
        ``[{"concurrency", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms"}]``.

    Raises:
        PerfAnalyzerError: a required column is missing.
    """
    table = text.strip().split("\n\n", 1)[0]
    reader = csv.DictReader(io.StringIO(table))
    required = ["Concurrency", "Inferences/Second"] + [col for _, col in _PERCENTILES]
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise PerfAnalyzerError(f"perf_analyzer CSV lacks columns {missing}; has {reader.fieldnames}")
    points = []
    for row in reader:
        if not (row.get("Concurrency") or "").strip():
            continue
        point = {"concurrency": int(float(row["Concurrency"])), "throughput": float(row["Inferences/Second"])}
        for key, col in _PERCENTILES:
            point[key] = float(row[col]) / 1000.0
        points.append(point)
    return sorted(points, key=lambda p: p["concurrency"])


def concurrency_range(levels: list[int]) -> str | None:
    """``start:end:step`` when ``levels`` is an increasing arithmetic series, else None."""
    if not levels or any(c < 1 for c in levels):
        raise ValueError(f"concurrency levels must be positive integers, got {levels}")
    if len(levels) == 1:
        return f"{levels[0]}:{levels[0]}:1"
    step = levels[1] - levels[0]
    if step > 0 and all(b - a == step for a, b in pairwise(levels)):
        return f"{levels[0]}:{levels[-1]}:{step}"
    return None


def perf_analyzer_command(
    binary: Path | str,
    *,
    model: str,
    url: str,
    settings: PerfSettings,
    concurrency: str,
    csv_path: Path,
    shapes: dict[str, list[int]] | None = None,
) -> list[str]:
    """The perf_analyzer argv for one concurrency range (pure)."""
    cmd = [
        str(binary),
        "-m", model,
        "-u", url,
        "-i", settings.protocol,
        "--concurrency-range", concurrency,
        "-b", str(settings.batch_size),
        "--measurement-interval", str(settings.measurement_interval_ms),
        "--max-trials", str(settings.max_trials),
        "--stability-percentage", str(settings.stability_percentage),
        "--input-data", settings.input_data,
        "-f", str(csv_path),
        "--verbose-csv",
    ]  # fmt: skip
    for name, dims in (shapes or {}).items():
        cmd += ["--shape", f"{name}:{','.join(str(d) for d in dims)}"]
    return cmd


def _run_once(
    cmd: list[str], env: dict[str, str], part: Path, timeout_s: float, log_path: Path | None
) -> tuple[list[str] | None, str]:
    """Run one perf_analyzer command; ``(csv lines or None, last output line)``."""
    part.unlink(missing_ok=True)
    log.info("running %s", " ".join(cmd))
    try:
        # in the step's process group (a killed task stops it with the step) and killed if the step dies first
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
                              preexec_fn=die_with_parent(signal.SIGKILL))
    except subprocess.TimeoutExpired:
        return None, f"ran past {timeout_s:.0f} s"
    if log_path is not None:
        with log_path.open("a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    failures = [ln for ln in lines if ln.startswith(("Failed", "error", "Error"))]
    last = (failures or lines or [f"exit code {proc.returncode}"])[-1]
    if not part.exists() or not part.read_text().strip():
        return None, f"exit code {proc.returncode}: {last}"
    table = part.read_text().strip().split("\n\n", 1)[0].splitlines()
    part.unlink()
    return table, last


def run_perf_analyzer(
    *,
    model: str,
    url: str,
    settings: PerfSettings,
    csv_path: Path,
    tools: Settings | None = None,
    shapes: dict[str, list[int]] | None = None,
    log_path: Path | None = None,
    timeout_s: float = 300.0,
    notes: list[str] | None = None,
) -> list[dict[str, float]]:
    """Measure ``model`` at every concurrency level; writes one combined CSV at ``csv_path``.

    Levels forming an arithmetic series first run as one ``--concurrency-range``. perf_analyzer aborts
    a whole range when one level never stabilizes; then each level runs alone, and a level that is still
    unstable is measured once more with a relaxed stability threshold (recorded in ``notes``).

    Raises:
        PerfAnalyzerError: a level could not be measured at all.
    """
    tools = tools or Settings.from_env()
    env = dict(os.environ)
    if tools.tool_library_path:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (tools.tool_library_path, env.get("LD_LIBRARY_PATH")) if p)

    def command(conc: str, part: Path, perf: PerfSettings) -> list[str]:
        return perf_analyzer_command(
            tools.perf_analyzer_bin, model=model, url=url, settings=perf, concurrency=conc, csv_path=part, shapes=shapes
        )

    part = csv_path.with_name(f"{csv_path.stem}.part.csv")
    rng = concurrency_range(settings.concurrency)
    table, _ = _run_once(command(rng, part, settings), env, part, timeout_s, log_path) if rng else (None, "")
    if table is None or len(table) - 1 < len(settings.concurrency):
        header, rows = "", []
        # Last resort on a busy machine: accept whatever the trials measured (the spread is recorded in notes),
        # rather than losing the variant. The CSV still carries perf_analyzer's own numbers.
        relaxed = settings.model_copy(update={"stability_percentage": 10000})
        for level in settings.concurrency:
            conc = f"{level}:{level}:1"
            one, why = _run_once(command(conc, part, settings), env, part, timeout_s, log_path)
            if one is None:
                one, why2 = _run_once(command(conc, part, relaxed), env, part, timeout_s, log_path)
                if one is None:
                    raise PerfAnalyzerError(f"perf_analyzer failed at concurrency {level}: {why2}")
                note = (
                    f"concurrency {level}: unstable at {settings.stability_percentage}% ({why}); "
                    f"measured with stability {relaxed.stability_percentage}%"
                )
                log.warning(note)
                if notes is not None:
                    notes.append(note)
            header = header or one[0]
            rows.extend(one[1:])
        table = [header, *rows]
    text = "\n".join(table) + "\n"
    csv_path.write_text(text)
    return parse_perf_csv(text)
