"""Measure how long the DAG files take to import (what the DAG processor pays on every parse).

Writes bench/results/dag_import.json: per DAG file, the median/min/max wall time of a fresh-interpreter
import over N runs, and the interpreter start-up + `import airflow.sdk` floor for comparison.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_io import write_results

REPO = Path(__file__).resolve().parent.parent
RUNS = 5


def _time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=REPO,
                   env={"PYTHONPATH": f"{REPO}:{REPO / 'plugins'}", "PATH": "/usr/bin:/bin"})
    return time.perf_counter() - start


def main() -> dict:
    floor = [_time("import airflow.sdk") for _ in range(RUNS)]
    results = {"runs": RUNS, "python": sys.version.split()[0], "floor_import_airflow_sdk_s": statistics.median(floor),
               "dags": {}}
    for dag_file in sorted((REPO / "dags").glob("*.py")):
        times = [_time(f"import runpy; runpy.run_path({str(dag_file)!r})") for _ in range(RUNS)]
        med = statistics.median(times)
        results["dags"][dag_file.name] = {
            "median_s": round(med, 3), "min_s": round(min(times), 3), "max_s": round(max(times), 3),
            "over_floor_s": round(med - results["floor_import_airflow_sdk_s"], 3),
        }
    results["floor_import_airflow_sdk_s"] = round(results["floor_import_airflow_sdk_s"], 3)
    write_results("dag_import", results)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
