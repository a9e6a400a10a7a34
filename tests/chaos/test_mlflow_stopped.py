"""MLflow killed while the pipeline records a run (``record_run``: metrics, artifacts, then the version's tags).

MLflow is SIGKILLed right after the first metric was logged. What the run sees: the record step fails, within the
client's explicit timeout and retries (``MODELOPS_MLFLOW_TIMEOUT_S`` / ``MODELOPS_MLFLOW_MAX_RETRIES``, as the
pipeline's MLflow hook sets them), saying that MLflow cannot be reached; the version is not marked deployed by
half a record. Lost: nothing: once ``stack up`` restarted MLflow (its store is on disk), the retry of the record
(Airflow retries it) logs everything and tags the version.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


class KillAfterFirstMetric:
    """The MLflow client, except that MLflow is killed once the first metric was logged."""

    def __init__(self, client, pgid: int) -> None:
        self._client, self._pgid, self.metrics = client, pgid, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def log_metric(self, *args, **kwargs):
        out = self._client.log_metric(*args, **kwargs)
        self.metrics += 1
        if self.metrics == 1:
            os.killpg(self._pgid, signal.SIGKILL)
            time.sleep(0.5)
        return out


@pytest.fixture(scope="module")
def broken_record(stack, settings, storage, mlflow_client):
    from modelops.contracts.naming import TAG_DEPLOYMENT, TAG_STATUS
    from modelops.local import stack as stack_mod
    from modelops.tracking.record import record_run

    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.mlflow_timeout_s)  # as MlflowHook.get_client sets them
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow_max_retries)
    model = f"chaos_mlflow_{uuid.uuid4().hex[:6]}"
    mlflow_client.create_registered_model(model)
    version = mlflow_client.create_model_version(model, f"s3://mlflow/chaos/{model}").version
    experiment = mlflow_client.create_experiment(f"chaos-{model}")
    run_id = mlflow_client.create_run(experiment).info.run_id
    spec = {"run_id": run_id, "model_name": model, "model_version": version, "latency_slo_ms": 50.0}
    selection = {"chosen": "ort_fp32", "speedup": 1.5, "reason": "fastest within the gate",
                 "baseline": {"throughput": 100.0, "p50_ms": 4.0, "p99_ms": 9.0, "concurrency": 1},
                 "scores": {"ort_fp32": {"throughput": 150.0, "p50_ms": 3.0, "p99_ms": 6.0, "concurrency": 1}}}
    deployment = {"deployment": f"{model}--v{version}-ort_fp32"}

    chaotic = KillAfterFirstMetric(mlflow_client, stack_mod.status()["mlflow"]["pid"])
    started = time.monotonic()
    error: BaseException | None = None
    try:
        record_run(chaotic, storage, spec, {}, selection, deployment)
    except BaseException as exc:  # noqa: BLE001 - what the record step would fail with, asserted below
        error = exc
    failed_after = time.monotonic() - started
    stack_mod.up()  # restarts MLflow
    tags_after_failure = mlflow_client.get_model_version(model, version).tags
    summary = record_run(mlflow_client, storage, spec, {}, selection, deployment)  # the task's retry
    tags = mlflow_client.get_model_version(model, version).tags
    artifacts = {a.path for a in mlflow_client.list_artifacts(run_id)}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    print(f"\nMLflow killed during record: {type(error).__name__} after {failed_after:.1f} s: "
          f"{str(error).splitlines()[0][:300] if error else None}; retry tagged {tags.get(TAG_STATUS)}")
    yield {"error": error, "failed_after": failed_after, "tags_after_failure": tags_after_failure, "tags": tags,
           "summary": summary, "artifacts": artifacts, "deployment": deployment, "settings": settings,
           "TAG_STATUS": TAG_STATUS, "TAG_DEPLOYMENT": TAG_DEPLOYMENT}
    mlflow_client.delete_registered_model(model)


def test_the_record_fails_saying_mlflow_is_unreachable(broken_record):
    error, settings = broken_record["error"], broken_record["settings"]
    assert error is not None, "record_run went through with MLflow dead"
    text = str(error)
    assert any(word in text for word in ("Connection refused", "Max retries exceeded", "ConnectionError")), text
    # bounded by the explicit client settings (MLflow's own defaults would retry for minutes)
    bound = (settings.mlflow_max_retries + 1) * settings.mlflow_timeout_s + 2 ** (settings.mlflow_max_retries + 1)
    assert broken_record["failed_after"] < bound, broken_record["failed_after"]


def test_half_a_record_marks_nothing_deployed(broken_record):
    assert broken_record["TAG_STATUS"] not in broken_record["tags_after_failure"]


def test_the_retry_records_everything(broken_record):
    tags = broken_record["tags"]
    assert tags[broken_record["TAG_STATUS"]] == "deployed"
    assert tags[broken_record["TAG_DEPLOYMENT"]] == broken_record["deployment"]["deployment"]
    assert {"summary.json", "spec.json", "report.html"} <= broken_record["artifacts"]
