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
import re
import signal
import subprocess
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from modelops.process_tree import die_with_parent, kill_group
from modelops.settings import GPU_PRODUCT_LABEL, KubernetesSettings, Settings
from modelops.steps import EXIT_SKIPPED, step_command
from modelops_airflow.links import STEP_LINKS

if TYPE_CHECKING:
    from airflow.sdk import Context

    from modelops.step_user import StepUser

XCOM_RESULT_PATH = "/airflow/xcom/return.json"
TRIGGER_KINDS = ("manual", "event", "nightly")  # highest priority first
# Run id prefixes of modelops.triggers.events.run_id_for: registry events (webhook, reconcile) and nightly plans.
_EVENT_PREFIX, _NIGHTLY_PREFIX = "mlflow__", "nightly__"
_GPU_RESOURCE = re.compile(r"^nvidia\.com/(gpu|mig-\d+g\.\d+gb(\+me)?)$")
# Orchestrator secrets a step never gets (it loads untrusted model files): the stack's state folder (stack.json
# holds every key), MLflow logins, the webhook secret, the gateway's MLflow login. AWS_* are replaced too.
STEP_ENV_DROPPED = frozenset({
    "MODELOPS_STACK_DIR", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "MODELOPS_WEBHOOK_SECRET", "MODELOPS_WEBHOOK_SECRET_FILE", "MODELOPS_GATEWAY_MLFLOW_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_CONFIG_PATH",
})
STEP_POD_UID = 10001  # the worker image's `modelops` user (docker/worker-gpu.Dockerfile)
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


def trigger_kind(run_id: str | None, run_type: str | None = None) -> str:
    """How a run was started: ``manual`` (Airflow UI or API by hand), ``event`` (registry) or ``nightly``.

    Registry events (webhook, ``registry_reconcile``) and ``nightly_reoptimize`` create their runs through the
    REST API, so Airflow records them as manual runs too; their deterministic run ids tell them apart
    (``mlflow__...`` and ``nightly__...``, :func:`modelops.triggers.events.run_id_for`). A backfill counts as
    nightly work, a scheduled or asset-triggered run as an event.
    """
    run_id, run_type = run_id or "", str(getattr(run_type, "value", run_type) or "").lower()
    if run_id.startswith(_NIGHTLY_PREFIX) or run_type == "backfill":
        return "nightly"
    if run_id.startswith(_EVENT_PREFIX) or run_type in ("scheduled", "asset_triggered"):
        return "event"
    return "manual"


def priority_classes(k8s_settings: KubernetesSettings) -> dict[str, str]:
    """Trigger kind -> priority class of its GPU step pods (``MODELOPS_K8S_PRIORITY_CLASS*``)."""
    return {"manual": k8s_settings.priority_class_manual, "event": k8s_settings.priority_class,
            "nightly": k8s_settings.priority_class_nightly}


def _step_pod_operator_class():
    """:class:`StepPodOperator`, built on first use (importing the provider costs ~2 s; only this mode needs it)."""
    global _STEP_POD_OPERATOR
    if _STEP_POD_OPERATOR is not None:
        return _STEP_POD_OPERATOR
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    class StepPodOperator(KubernetesPodOperator):
        """A ``KubernetesPodOperator`` whose pod gets the priority class of how its run was triggered.

        Args:
            priority_by_trigger: trigger kind (:data:`TRIGGER_KINDS`) -> priority class; without a run in the
                context (a dry run) the pod keeps ``priority_class_name``.
            gpu_product: a GPU Feature Discovery product (a mapped compile instance's): the pod selects
                ``nvidia.com/gpu.product=<product>`` (over ``MODELOPS_K8S_GPU_PRODUCT``); empty: the defaults.
        """

        operator_extra_links = (*KubernetesPodOperator.operator_extra_links, *STEP_LINKS)

        def __init__(self, *, priority_by_trigger: dict[str, str] | None = None, gpu_product: str = "",
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.priority_by_trigger = dict(priority_by_trigger or {})
            self.gpu_product = gpu_product

        def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False):
            pod = super().build_pod_request_obj(context, dry_run=dry_run)
            if self.gpu_product:
                pod.spec.node_selector = {**(pod.spec.node_selector or {}), GPU_PRODUCT_LABEL: self.gpu_product}
                pod.metadata.labels = {**(pod.metadata.labels or {}), "modelops/gpu-product": self.gpu_product}
            dag_run = (context or {}).get("dag_run")
            run_id = getattr(dag_run, "run_id", None) or (context or {}).get("run_id")
            if self.priority_by_trigger and run_id:
                kind = trigger_kind(run_id, getattr(dag_run, "run_type", None))
                pod.spec.priority_class_name = self.priority_by_trigger.get(kind, pod.spec.priority_class_name)
                pod.metadata.labels = {**(pod.metadata.labels or {}), "modelops/trigger": kind}
            return pod

    StepPodOperator.__module__, StepPodOperator.__qualname__ = __name__, "StepPodOperator"
    _STEP_POD_OPERATOR = StepPodOperator
    return StepPodOperator


_STEP_POD_OPERATOR: Any = None


def __getattr__(name: str) -> Any:  # modelops_airflow.operators.step_operator.StepPodOperator, imported on first use
    if name == "StepPodOperator":
        return _step_pod_operator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kubernetes_step(step: str, spec: str, k8s_settings: KubernetesSettings, *, gpu: bool = True, **kwargs: Any):
    """The same step as a :class:`StepPodOperator` (a ``KubernetesPodOperator``); see :func:`pod_kwargs`."""
    return _step_pod_operator_class()(**pod_kwargs(step, spec, k8s_settings, gpu=gpu, **kwargs))


def pod_kwargs(step: str, spec: str, k8s_settings: KubernetesSettings, *, gpu: bool = True,
               **kwargs: Any) -> dict[str, Any]:
    """The :class:`StepPodOperator` arguments of one step (its constructor's, or ``partial``'s when mapped).

    GPU steps request ``MODELOPS_K8S_GPU_COUNT`` of ``MODELOPS_K8S_GPU_RESOURCE`` (``nvidia.com/gpu`` or a MIG
    profile such as ``nvidia.com/mig-1g.10gb``), select nodes by GPU Feature Discovery labels (the product from
    ``MODELOPS_K8S_GPU_PRODUCT``), tolerate the ``nvidia.com/gpu`` taint and take the priority class of their
    run's trigger. ``active_deadline_seconds`` and ``deferrable`` default to the settings; ``kwargs`` win.

    Raises:
        ValueError: the GPU resource is neither ``nvidia.com/gpu`` nor a MIG profile.
    """
    from kubernetes.client import models as k8s

    if gpu and not _GPU_RESOURCE.match(k8s_settings.gpu_resource):
        raise ValueError(f"MODELOPS_K8S_GPU_RESOURCE={k8s_settings.gpu_resource!r} is neither nvidia.com/gpu "
                         "nor a MIG profile such as nvidia.com/mig-1g.10gb")
    requests = {"cpu": k8s_settings.cpu, "memory": k8s_settings.memory}
    limits = {"memory": k8s_settings.memory}
    tolerations = []
    node_selector: dict[str, str] = {}
    if gpu:
        requests[k8s_settings.gpu_resource] = str(k8s_settings.gpu_count)
        limits[k8s_settings.gpu_resource] = str(k8s_settings.gpu_count)
        tolerations = [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
        node_selector = dict(k8s_settings.node_selector)
    kwargs.setdefault("active_deadline_seconds", k8s_settings.active_deadline_s or None)
    kwargs.setdefault("deferrable", k8s_settings.deferrable)
    return dict(
        name=f"modelops-{step}",
        namespace=k8s_settings.namespace,
        image=k8s_settings.image,
        cmds=["python"],
        arguments=step_command(step, spec, XCOM_RESULT_PATH),
        container_resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        node_selector=node_selector,
        tolerations=tolerations,
        priority_class_name=k8s_settings.priority_class if gpu else None,
        priority_by_trigger=priority_classes(k8s_settings) if gpu else None,
        service_account_name=k8s_settings.service_account,
        # untrusted model code: no Kubernetes API token, not root (the worker image's uid 10001), no privilege gain
        automount_service_account_token=False,
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=STEP_POD_UID,
                                                  run_as_group=STEP_POD_UID, fs_group=STEP_POD_UID,
                                                  seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        container_security_context=k8s.V1SecurityContext(allow_privilege_escalation=False,
                                                         capabilities=k8s.V1Capabilities(drop=["ALL"])),
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=k8s_settings.s3_secret))],
        env_vars=[k8s.V1EnvVar(name="MODELOPS_EXECUTION", value="kubernetes"),
                  k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
                  # the step's one-line reason becomes the pod's termination message (in the task's error)
                  k8s.V1EnvVar(name="MODELOPS_TERMINATION_LOG", value="/dev/termination-log")],
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
        cls = _step_pod_operator_class()
        partial = cls.partial(**pod_kwargs(step, spec, settings.kubernetes, gpu=True, task_id=task_id, **kwargs))
    else:
        partial = LocalStepOperator.partial(step=step, spec=spec, task_id=task_id, **kwargs)
    return partial.expand(gpu_product=gpu_products)
