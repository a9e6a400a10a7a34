"""The step operator: every heavy step runs through here, as a local subprocess or as a Kubernetes pod.

Both modes run the same command, ``python -m modelops.steps.<step> --spec <uri> --result <path>``:

- ``local`` (the embedded default): :class:`LocalStepOperator` runs it with the worker environment's
  Python, streams its output into the task log, reads the result JSON and returns it (XCom).
- ``kubernetes``: a ``KubernetesPodOperator`` in the worker image with GPU resources, GPU Feature
  Discovery node selectors, the ``nvidia.com/gpu`` toleration, a priority class and a pool; the pod
  writes its result to ``/airflow/xcom/return.json``.

In both, exit code 99 means "not applicable here" and becomes a skipped task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from modelops.process_tree import die_with_parent, kill_group
from modelops.settings import KubernetesSettings, Settings
from modelops.steps import EXIT_SKIPPED, HEAVY_STEPS

if TYPE_CHECKING:
    from airflow.sdk import Context

XCOM_RESULT_PATH = "/airflow/xcom/return.json"
# Steps that need no accelerator even in a GPU cluster (none yet: export/optimize may build TensorRT).
CPU_ONLY_STEPS: frozenset[str] = frozenset()


def step_command(step: str, spec: str, result: str) -> list[str]:
    if step not in HEAVY_STEPS:
        raise ValueError(f"unknown step {step!r}; known: {', '.join(HEAVY_STEPS)}")
    return ["-m", f"modelops.steps.{step}", "--spec", spec, "--result", result]


class LocalStepOperator(BaseOperator):
    """Run one step in the worker environment as a subprocess (the embedded stack's executor).

    Args:
        step: one of ``modelops.steps.HEAVY_STEPS``.
        spec: the run spec's URI (templated).
        s3_conn_id: the aws connection whose endpoint and keys the step gets as ``AWS_*`` variables (a DAG
            may set it for every step in ``default_args``).
    """

    template_fields = ("spec",)
    ui_color = "#d9ecf2"

    def __init__(self, *, step: str, spec: str, s3_conn_id: str = "s3_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.spec = spec
        self.s3_conn_id = s3_conn_id

    def _env(self, settings: Settings | None = None) -> dict[str, str]:
        from modelops_airflow.hooks import ModelOpsS3Hook

        settings = settings or Settings.from_env()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
        env.update(MLFLOW_HTTP_REQUEST_TIMEOUT=str(settings.mlflow_timeout_s),
                   MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(settings.mlflow_max_retries))
        env.update(ModelOpsS3Hook(aws_conn_id=self.s3_conn_id).s3_config().as_env())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(settings.repo_root), env.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException, AirflowSkipException

        settings = Settings.from_env()
        if not settings.worker_python.exists():
            raise AirflowException(f"worker environment not found at {settings.worker_python}: run `make worker`")
        with tempfile.TemporaryDirectory(prefix=f"modelops-{self.step}-") as tmp:
            result_path = Path(tmp) / "result.json"
            cmd = [str(settings.worker_python), *step_command(self.step, self.spec, str(result_path))]
            self.log.info("running %s", " ".join(cmd))
            # cwd is a fresh directory: `python -m` puts the cwd first on sys.path, and a stray folder there
            # (e.g. the stack's "triton" state dir) would shadow real packages in the worker environment.
            try:
                rc, last_error = self._run(cmd, self._env(settings), cwd=tmp, timeout_s=settings.step_timeout_s,
                                           grace_s=settings.step_kill_grace_s)
            except TimeoutError as exc:
                raise AirflowException(str(exc)) from None
            if rc == EXIT_SKIPPED:
                raise AirflowSkipException(last_error or f"{self.step} does not apply here")
            if rc != 0:
                raise AirflowException(last_error or f"{self.step} failed with exit code {rc}")
            return json.loads(result_path.read_text())

    def _run(self, cmd: list[str], env: dict[str, str], cwd: str, timeout_s: float | None = None,
             grace_s: float = 10.0) -> tuple[int, str]:
        """Stream stdout and stderr into the task log; return the exit code and the last stderr line.

        The step runs in a session (process group) of its own and gets SIGTERM if this process dies; a timeout,
        an exception (Airflow's execution timeout) or :meth:`on_kill` stops the whole group (SIGTERM, then
        SIGKILL after ``grace_s``), so nothing the step started outlives the task.

        Raises:
            TimeoutError: the step ran past ``timeout_s`` (its process group is gone by then).
        """
        self._grace_s = grace_s
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                bufsize=1, start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))  # noqa: PLW1509 - prctl only
        self._proc = proc
        tail: deque[str] = deque(maxlen=20)

        def pump(stream, is_err: bool) -> None:
            for line in stream:
                line = line.rstrip()
                if is_err and line:
                    tail.append(line)
                self.log.info("%s", line)

        threads = [threading.Thread(target=pump, args=(proc.stdout, False), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, True), daemon=True)]
        for t in threads:
            t.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.log.error("%s ran past %.0f s: stopping its process group", self.step, timeout_s)
            kill_group(proc.pid, grace_s, leader=proc)
            raise TimeoutError(f"{self.step} ran past its timeout of {timeout_s:.0f} s "
                               "(MODELOPS_STEP_TIMEOUT_S) and was stopped") from None
        except BaseException:
            kill_group(proc.pid, grace_s, leader=proc)
            raise
        finally:
            for t in threads:
                t.join(timeout=5)  # a process outside the group could hold the pipes open
        reason = next((line for line in reversed(tail) if line.startswith(f"{self.step}:")), tail[-1] if tail else "")
        return rc, reason

    def on_kill(self) -> None:
        """Stop the step's whole process group (Airflow calls this on SIGTERM and on its execution timeout)."""
        proc = getattr(self, "_proc", None)
        if proc is not None:
            kill_group(proc.pid, getattr(self, "_grace_s", 10.0), leader=proc)


def kubernetes_step(step: str, spec: str, k8s_settings: KubernetesSettings, *, gpu: bool = True, **kwargs: Any):
    """The same step as a ``KubernetesPodOperator`` (imported here: it costs ~2 s and only this mode needs it)."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    requests = {"cpu": k8s_settings.cpu, "memory": k8s_settings.memory}
    limits = {"memory": k8s_settings.memory}
    tolerations = []
    node_selector: dict[str, str] = {}
    if gpu:
        requests[k8s_settings.gpu_resource] = str(k8s_settings.gpu_count)
        limits[k8s_settings.gpu_resource] = str(k8s_settings.gpu_count)
        tolerations = [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
        node_selector = dict(k8s_settings.node_selector)
    return KubernetesPodOperator(
        name=f"modelops-{step}",
        namespace=k8s_settings.namespace,
        image=k8s_settings.image,
        cmds=["python"],
        arguments=step_command(step, spec, XCOM_RESULT_PATH),
        container_resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        node_selector=node_selector,
        tolerations=tolerations,
        priority_class_name=k8s_settings.priority_class if gpu else None,
        service_account_name=k8s_settings.service_account,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=k8s_settings.s3_secret))],
        env_vars=[k8s.V1EnvVar(name="MODELOPS_EXECUTION", value="kubernetes"),
                  k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1")],
        labels={"app.kubernetes.io/part-of": "modelops", "modelops/step": step},
        do_xcom_push=True,
        skip_on_exit_code=EXIT_SKIPPED,
        get_logs=True,
        durable=True,
        on_finish_action="delete_succeeded_pod",
        pool=k8s_settings.pool if gpu else "default_pool",
        **kwargs,
    )


def step_operator(step: str, spec: str, *, task_id: str | None = None, settings: Settings | None = None, **kwargs: Any):
    """The operator for one heavy step in the configured execution mode (``MODELOPS_EXECUTION``)."""
    settings = settings or Settings.from_env()
    task_id = task_id or step
    if settings.execution == "kubernetes":
        return kubernetes_step(step, spec, settings.kubernetes, gpu=step not in CPU_ONLY_STEPS, task_id=task_id, **kwargs)
    if step == "benchmark" and settings.benchmark_pool:
        kwargs.setdefault("pool", settings.benchmark_pool)  # one benchmark at a time on a shared machine
    return LocalStepOperator(step=step, spec=spec, task_id=task_id, **kwargs)
