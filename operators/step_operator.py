"""The step operator: every heavy step runs through here, as a local subprocess or as a Kubernetes pod.

Both modes run the same command, ``python -m modelops.steps.<step> --spec <uri> --result <path>``:

- ``local`` (the embedded default): :class:`LocalStepOperator` runs it with the worker environment's
  Python, streams its output into the task log, reads the result JSON and returns it (XCom).
- ``kubernetes``: a ``KubernetesPodOperator`` (:class:`StepPodOperator`) in the worker image with GPU
  resources (a full GPU or a MIG profile), GPU Feature Discovery node selectors, the ``nvidia.com/gpu``
  toleration, a pool, ``activeDeadlineSeconds`` and deferrable waiting; its priority class is picked when
  the pod is built, from how the run was triggered (:func:`trigger_kind`: by hand > registry event >
  nightly, as ``deploy/priority-classes.yaml`` orders them). The pod writes its result to
  ``/airflow/xcom/return.json``.

In both, exit code 99 means "not applicable here" and becomes a skipped task. :func:`mapped_step_operator` maps a
step over GPU products (``optimize_model``'s compile: one pod per ``nvidia.com/gpu.product``).
"""

from __future__ import annotations

import contextlib
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
from modelops.settings import Settings
from modelops.steps import EXIT_SKIPPED, step_command
from modelops_airflow.links import STEP_LINKS
from modelops_airflow.operators.step_pod import (  # noqa: F401 - the Kubernetes mode, importable from here too
    STEP_POD_UID,
    TRIGGER_KINDS,
    XCOM_RESULT_PATH,
    kubernetes_step,
    pod_kwargs,
    priority_classes,
    step_pod_operator_class,
    trigger_kind,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from modelops.step_user import StepUser

# Orchestrator secrets a step never gets (it loads untrusted model files): the stack's state folder (stack.json
# holds every key), MLflow logins, the webhook secret, the gateway's MLflow login. AWS_* are replaced too.
STEP_ENV_DROPPED = frozenset({
    "MODELOPS_STACK_DIR", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "MODELOPS_WEBHOOK_SECRET", "MODELOPS_WEBHOOK_SECRET_FILE", "MODELOPS_GATEWAY_MLFLOW_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_CONFIG_PATH",
})
# Steps that need no accelerator even in a GPU cluster (none yet: export/optimize may build TensorRT).
CPU_ONLY_STEPS: frozenset[str] = frozenset()


class LocalStepOperator(BaseOperator):
    """Run one step in the worker environment as a subprocess (the embedded stack's executor).

    Args:
        step: one of ``modelops.steps.HEAVY_STEPS``.
        spec: the run spec's URI (templated).
        aws_conn_id: the aws connection whose endpoint and keys the step gets as ``AWS_*`` variables (a DAG
            may set it for every step in ``default_args``) when ``worker_aws_conn_id`` does not exist.
        worker_aws_conn_id: the connection of the worker S3 identity (the embedded stack's ``s3_worker``: read
            MLflow's models, write run artifacts, nothing on the Triton repository). Steps load untrusted model
            files, so they get that identity and none of the orchestrator's secrets (:data:`STEP_ENV_DROPPED`).
        gpu_product: the GPU product a mapped compile instance is for (names the instance; a local step runs on
            this machine's GPU, whatever it is).
        renew_lease: renew the run's optimization lease (through ``aws_conn_id``) when the step starts and while
            it runs, and stop the step if it was lost (:mod:`modelops.runs.lease_keeper`).
    """

    template_fields = ("spec",)
    ui_color = "#d9ecf2"
    operator_extra_links = STEP_LINKS  # the run's MLflow run and report

    def __init__(self, *, step: str, spec: str, aws_conn_id: str = "s3_default",
                 worker_aws_conn_id: str = "s3_worker", gpu_product: str = "", renew_lease: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.renew_lease = renew_lease
        self.gpu_product = gpu_product
        self.step = step
        self.spec = spec
        self.aws_conn_id = aws_conn_id
        self.worker_aws_conn_id = worker_aws_conn_id

    def _step_aws_conn_id(self) -> str:
        """``worker_aws_conn_id`` when that connection exists, else ``aws_conn_id``."""
        from airflow.sdk import BaseHook

        try:
            BaseHook.get_connection(self.worker_aws_conn_id)
        except Exception:  # noqa: BLE001 - AirflowNotFoundException: a deployment with one S3 connection
            return self.aws_conn_id
        return self.worker_aws_conn_id

    def _env(self, settings: Settings | None = None) -> dict[str, str]:
        from modelops_airflow.hooks import ModelOpsS3Hook

        settings = settings or Settings.from_env()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "AWS_")) and k not in STEP_ENV_DROPPED}
        env.update(MLFLOW_HTTP_REQUEST_TIMEOUT=str(settings.mlflow_timeout_s),
                   MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(settings.mlflow_max_retries))
        env.update(ModelOpsS3Hook(aws_conn_id=self._step_aws_conn_id()).s3_config().as_env())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(settings.repo_root), env.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

        from modelops.runs.resolve import RunRefused
        from modelops.step_user import StepUserError, ensure_can_run, step_user

        settings = Settings.from_env()
        if not settings.worker_python.exists():
            raise AirflowException(f"worker environment not found at {settings.worker_python}: run `make worker`")
        try:  # as root, the step (untrusted model code) runs as an unprivileged user of its own
            user = step_user(settings.step_user)
            granted = ensure_can_run(user, settings.worker_python) if user else []
        except StepUserError as exc:
            raise AirflowException(str(exc)) from None
        if granted:
            self.log.info("step user %s may now search %s (POSIX ACL) to start %s", user.name, ", ".join(granted),
                          settings.worker_python)
        with tempfile.TemporaryDirectory(prefix=f"modelops-{self.step}-") as tmp:
            result_path = Path(tmp) / "result.json"
            cmd = [str(settings.worker_python), *step_command(self.step, self.spec, str(result_path))]
            env = self._env(settings)
            if user is not None:
                os.chown(tmp, user.uid, user.gid)  # its only writable place on this machine
                env.update(user.env(tmp))
            self.log.info("running %s%s", " ".join(cmd), f" as {user.name} (uid {user.uid})" if user else "")
            # cwd is a fresh directory: `python -m` puts the cwd first on sys.path, and a stray folder there
            # (e.g. the stack's "triton" state dir) would shadow real packages in the worker environment.
            keeper = self._lease_keeper(context)
            try:
                with keeper or contextlib.nullcontext():  # the run's lease: renewed now and while the step works
                    rc, last_error = self._run(cmd, env, cwd=tmp, timeout_s=settings.step_timeout_s,
                                               grace_s=settings.step_kill_grace_s, user=user)
            except TimeoutError as exc:
                raise AirflowException(str(exc)) from None
            except RunRefused as exc:  # lost before the step started
                raise AirflowFailException(str(exc)) from None
            if keeper is not None and keeper.lost:
                raise AirflowFailException(f"{self.step} stopped: {keeper.lost}")
            if rc == EXIT_SKIPPED:
                raise AirflowSkipException(last_error or f"{self.step} does not apply here")
            if rc != 0:
                raise AirflowException(last_error or f"{self.step} failed with exit code {rc}")
            return json.loads(result_path.read_text())

    def _lease_keeper(self, context: Context | None):
        """The run's :class:`~modelops.runs.lease_keeper.LeaseKeeper` (None: ``renew_lease`` off, or no run)."""
        if not self.renew_lease:
            return None
        from modelops.runs.lease_keeper import for_run
        from modelops_airflow.hooks import ModelOpsS3Hook

        storage = ModelOpsS3Hook(aws_conn_id=self.aws_conn_id).storage()  # the pipeline's: leases live by Triton's
        return for_run(storage, self.spec, (context or {}).get("run_id"), self._lease_lost)

    def _lease_lost(self, reason: str) -> None:
        self.log.error("%s: %s; stopping the step", self.step, reason)
        self.on_kill()

    def _run(self, cmd: list[str], env: dict[str, str], cwd: str, timeout_s: float | None = None,
             grace_s: float = 10.0, user: StepUser | None = None) -> tuple[int, str]:
        """Stream stdout and stderr into the task log; return the exit code and the last stderr line.

        The step runs in a session (process group) of its own and gets SIGTERM if this process dies; a timeout,
        an exception (Airflow's execution timeout) or :meth:`on_kill` stops the whole group (SIGTERM, then
        SIGKILL after ``grace_s``), so nothing the step started outlives the task.

        Raises:
            TimeoutError: the step ran past ``timeout_s`` (its process group is gone by then).
        """
        self._grace_s = grace_s
        # stdin /dev/null, not the task's (a socket to Airflow's supervisor): nothing below may read it, and a
        # `bash -c` further down (Triton's python stubs) would source ~/.bashrc when stdin is a socket
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, **(user.popen_kwargs() if user else {}),
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


def step_operator(step: str, spec: str, *, task_id: str | None = None, settings: Settings | None = None, **kwargs: Any):
    """The operator for one heavy step in the configured execution mode (``MODELOPS_EXECUTION``)."""
    settings = settings or Settings.from_env()
    task_id = task_id or step
    if settings.execution == "kubernetes":
        return kubernetes_step(step, spec, settings.kubernetes, gpu=step not in CPU_ONLY_STEPS, task_id=task_id, **kwargs)
    if step == "benchmark" and settings.benchmark_pool:
        kwargs.setdefault("pool", settings.benchmark_pool)  # one benchmark at a time on a shared machine
    return LocalStepOperator(step=step, spec=spec, task_id=task_id, **kwargs)


def mapped_step_operator(step: str, spec: str, gpu_products: Any, *, task_id: str | None = None,
                         settings: Settings | None = None, **kwargs: Any):
    """One instance of ``step`` per GPU product (dynamic task mapping over ``gpu_products``, an XComArg or list).

    In Kubernetes mode each instance is a GPU pod selecting ``nvidia.com/gpu.product=<product>`` (an empty
    product keeps the default selectors); locally each runs the step on this machine. Exit 99 skips an
    instance like the unmapped step; the instances' results are XComs a downstream task combines.
    """
    settings = settings or Settings.from_env()
    task_id = task_id or step
    kwargs.setdefault("map_index_template", "{{ task.gpu_product or 'default GPU' }}")
    if settings.execution == "kubernetes":
        cls = step_pod_operator_class()
        partial = cls.partial(**pod_kwargs(step, spec, settings.kubernetes, gpu=True, task_id=task_id, **kwargs))
    else:
        partial = LocalStepOperator.partial(step=step, spec=spec, task_id=task_id, **kwargs)
    return partial.expand(gpu_product=gpu_products)


def __getattr__(name: str) -> Any:  # ...step_operator.StepPodOperator (DAGs serialized before step_pod existed)
    if name == "StepPodOperator":
        from modelops_airflow.operators.step_pod import StepPodOperator

        return StepPodOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
