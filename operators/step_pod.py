"""The Kubernetes mode of the step operator: one ``KubernetesPodOperator`` pod per heavy step.

:class:`StepPodOperator` runs ``python -m modelops.steps.<step>`` in the worker image with GPU resources (a full GPU
or a MIG profile), GPU Feature Discovery node selectors, the ``nvidia.com/gpu`` toleration, a pool,
``activeDeadlineSeconds`` and deferrable waiting; its priority class is picked when the pod is built, from how the
run was triggered (:func:`trigger_kind`). The pod runs as a non-root user without a service-account token, and the
run's optimization lease is renewed before it starts (a run that lost it starts no pod).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from modelops.settings import GPU_PRODUCT_LABEL, KubernetesSettings
from modelops.steps import EXIT_SKIPPED, step_command
from modelops_airflow.links import STEP_LINKS

if TYPE_CHECKING:
    from airflow.sdk import Context

XCOM_RESULT_PATH = "/airflow/xcom/return.json"
TRIGGER_KINDS = ("manual", "event", "nightly")  # highest priority first
# Run id prefixes of modelops.triggers.events.run_id_for: registry events (webhook, reconcile) and nightly plans.
_EVENT_PREFIX, _NIGHTLY_PREFIX = "mlflow__", "nightly__"
_GPU_RESOURCE = re.compile(r"^nvidia\.com/(gpu|mig-\d+g\.\d+gb(\+me)?)$")
STEP_POD_UID = 10001  # the worker image's `modelops` user (docker/worker-gpu.Dockerfile)


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


def step_pod_operator_class():
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
            spec_uri: the run spec the pod's step reads (templated): names the run's lease.
            aws_conn_id: the pipeline's S3 connection, which renews the run's optimization lease before the pod
                starts (``renew_lease``; a run that lost it starts no pod).
        """

        operator_extra_links = (*KubernetesPodOperator.operator_extra_links, *STEP_LINKS)
        template_fields = (*KubernetesPodOperator.template_fields, "spec_uri")

        def __init__(self, *, priority_by_trigger: dict[str, str] | None = None, gpu_product: str = "",
                     spec_uri: str = "", aws_conn_id: str = "s3_default", renew_lease: bool = True,
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.priority_by_trigger = dict(priority_by_trigger or {})
            self.gpu_product = gpu_product
            self.spec_uri, self.aws_conn_id, self.renew_lease = spec_uri, aws_conn_id, renew_lease

        def execute(self, context: Context) -> Any:
            if self.renew_lease and self.spec_uri:
                from airflow.sdk.exceptions import AirflowFailException

                from modelops.runs.lease_keeper import for_run
                from modelops.runs.resolve import RunRefused
                from modelops_airflow.hooks import ModelOpsS3Hook

                keeper = for_run(ModelOpsS3Hook(aws_conn_id=self.aws_conn_id).storage(), self.spec_uri,
                                 context.get("run_id"), self.log.error)  # fmt: skip
                try:
                    if keeper is not None:
                        keeper.renew_now()
                except RunRefused as exc:
                    raise AirflowFailException(str(exc)) from None
            return super().execute(context)

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


def __getattr__(name: str) -> Any:  # modelops_airflow.operators.step_pod.StepPodOperator, imported on first use
    if name == "StepPodOperator":
        return step_pod_operator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kubernetes_step(step: str, spec: str, k8s_settings: KubernetesSettings, *, gpu: bool = True, **kwargs: Any):
    """The same step as a :class:`StepPodOperator` (a ``KubernetesPodOperator``); see :func:`pod_kwargs`."""
    return step_pod_operator_class()(**pod_kwargs(step, spec, k8s_settings, gpu=gpu, **kwargs))


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
        spec_uri=spec,
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
