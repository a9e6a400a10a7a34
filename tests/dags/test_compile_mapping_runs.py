"""The mapped compile in a real Airflow run (dag.test on a private SQLite home): skipped instances, merge, validate.

The DAG below wires compile, a merge and validate as optimize_model does (the real mapped step operator, the real
LocalStepOperator and merge_compile_results); the worker's Python is a stand-in that skips (exit 99, as compile
does without a GPU) or writes a compile result, so the run needs no stack and no GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_WORKER = """#!/bin/bash
# stand-in for the worker's python: -m modelops.steps.compile --spec S --result R
mode=$(cat "$FAKE_DIR/mode")
if [ "$mode" = mixed ] && [ ! -e "$FAKE_DIR/first" ]; then touch "$FAKE_DIR/first"; mode=skip; fi
if [ "$mode" = skip ]; then echo "compile: skipped: no NVIDIA GPU visible" >&2; exit 99; fi
n=$(ls "$FAKE_DIR" | grep -c built); touch "$FAKE_DIR/built$n"
cc="8.$n"
cat > "$6" <<JSON
{"status": "done", "gpu_product": "GPU$n", "engines": {"trt_fp16": {"status": "done", "gpu_product": "GPU$n",
 "compute_capability": "$cc", "plan": "s3://a/GPU$n/model.plan", "plans": {"$cc": "s3://a/GPU$n/model.plan"}}}}
JSON
"""

DAG = '''
from __future__ import annotations
from airflow.sdk import dag, task
from modelops_airflow.operators.step_operator import mapped_step_operator

@dag(dag_id="compile_mapping", schedule=None)
def compile_mapping():
    @task
    def compile_targets() -> list[str]:
        import os
        from modelops.settings import Settings
        from modelops_airflow.operators.compile_tasks import compile_targets as targets
        engines = open(os.path.join(os.environ["FAKE_DIR"], "engines")).read().split()
        planned = Settings.from_env({"MODELOPS_EXECUTION": "kubernetes"})  # the products as a cluster maps them
        return targets({"gpu_products": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"]}, planned, engine_variants=engines)

    @task(trigger_rule="none_failed")
    def merge_compile(results) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException
        from modelops_airflow.operators.compile_tasks import merge_compile_results
        merged = merge_compile_results([results[i] for i in range(len(results))])
        if merged is None:
            raise AirflowSkipException("no compile instance built engines")
        return merged

    @task(trigger_rule="none_failed")
    def validate() -> str:
        return "ran"

    compiled = mapped_step_operator("compile", "s3://b/spec.json", compile_targets(), renew_lease=False)  # no S3 here
    checked = validate()
    compiled >> checked
    merge_compile(compiled.output) >> checked

compile_mapping()
'''

RUN = '''
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags["compile_mapping"].test()
states = {f"{ti.task_id}[{ti.rendered_map_index}]" if ti.map_index >= 0 else ti.task_id: ti.state
          for ti in run.get_task_instances()}
merged = next((ti.xcom_pull(task_ids="merge_compile") for ti in run.get_task_instances()
               if ti.task_id == "validate"), None)
print("RESULT " + json.dumps({"run": run.state, "states": states, "merged": merged}))
'''


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    (home / "dags" / "compile_mapping.py").write_text(DAG)
    fake = home / "fake_python"
    fake.write_text(FAKE_WORKER)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MODELOPS_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
               PYTHONPATH=str(REPO), MODELOPS_WORKER_PYTHON=str(fake), MODELOPS_STEP_USER="-",  # a private stand-in
               MODELOPS_EXECUTION="local", FAKE_DIR=str(home / "fake"),
               AIRFLOW_CONN_S3_DEFAULT="aws://AK:SK@/?endpoint_url=http%3A%2F%2F127.0.0.1%3A9")  # never called
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    return home, env


def _run(airflow_home, mode: str, engines: str = "trt_fp16") -> dict:
    home, env = airflow_home
    fake_dir = home / "fake"
    subprocess.run(["rm", "-rf", str(fake_dir)], check=True)
    fake_dir.mkdir()
    (fake_dir / "mode").write_text(mode)
    (fake_dir / "engines").write_text(engines)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN), str(home / "dags")], env=env, text=True,
                          capture_output=True, timeout=300, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line.removeprefix("RESULT "))


def test_every_instance_skipped_skips_the_merge_and_validate_still_runs(airflow_home):
    out = _run(airflow_home, "skip")  # a CPU machine: no GPU, exit 99 on every instance
    assert out["run"] == "success", out
    assert out["states"]["compile[NVIDIA-H100-80GB-HBM3]"] == out["states"]["compile[NVIDIA-L4]"] == "skipped"
    assert out["states"]["merge_compile"] == "skipped" and out["states"]["validate"] == "success"


def test_a_skipped_instance_leaves_the_others_plans_merged(airflow_home):
    out = _run(airflow_home, "mixed")  # the instance that runs first skips (its node had no TensorRT), the other builds
    assert out["run"] == "success", out
    assert sorted(out["states"][f"compile[{p}]"] for p in ("NVIDIA-H100-80GB-HBM3", "NVIDIA-L4")) == ["skipped", "success"]
    assert out["states"]["merge_compile"] == "success" and out["states"]["validate"] == "success"
    assert out["merged"]["engines"]["trt_fp16"]["plans"] == {"8.0": "s3://a/GPU0/model.plan"}



def test_no_engine_variant_requested_maps_compile_over_nothing_and_validate_still_runs(airflow_home):
    out = _run(airflow_home, "mixed", engines="")  # the fake worker would build, but it must never be started
    assert out["run"] == "success", out
    assert not any(k.startswith("compile[") for k in out["states"]), out["states"]  # zero instances
    assert out["states"]["compile"] == "skipped"
    assert out["states"]["merge_compile"] == "skipped" and out["states"]["validate"] == "success"
    assert not list((airflow_home[0] / "fake").glob("built*")) and not (airflow_home[0] / "fake" / "first").exists()
