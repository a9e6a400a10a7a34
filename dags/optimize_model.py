"""optimize_model: one registered MLflow model version -> the fastest accurate Triton deployment.

resolve -> export -> optimize -> compile -> validate -> benchmark -> select -> publish -> deploy -> record
-> start_rollout (when the new deployment got only its first step: triggers rollout_model, run id
``rollout__<deployment>``, which moves the traffic step by step, judged on live metrics)

compile is mapped, one instance per GPU product engines are built for (``gpu_products``; each pod selects its
``nvidia.com/gpu.product``), and merge_compile writes their plans as one compile result; ``serving_device`` (cpu |
gpu, default MODELOPS_SERVING_DEVICE) picks the Triton that benchmark measures on and publish renders for.

Heavy steps (export, optimize, compile, validate, benchmark) run through the step operator (local subprocess
in the worker environment, or a GPU pod with MODELOPS_EXECUTION=kubernetes). This file is wiring only:
every import here is cheap, the work happens in ``modelops_airflow.operators.pipeline_tasks`` (operators/) at run time.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, AssetAlias, Param, dag, task

from modelops.contracts.naming import asset_uri
from modelops.contracts.spec import DEFAULT_ROLLOUT_STEPS
from modelops.contracts.variants import KIND_DEFAULTS, VARIANT_NAMES, VARIANTS
from modelops_airflow.decorators import modelops_serving_task, modelops_task
from modelops_airflow.operators.pipeline_tasks import on_failure
from modelops_airflow.operators.step_operator import mapped_step_operator, step_operator

SPEC = "{{ ti.xcom_pull(task_ids='resolve')['spec_uri'] }}"
# Asset events (x-modelops://published/<model>, x-modelops://deployed/<model>): a DAG with
# schedule=[Asset("x-modelops://deployed/my_model")] runs after each deployment of my_model
PUBLISHED, DEPLOYED = AssetAlias("modelops_published"), AssetAlias("modelops_deployed")

# the form's sections after the model and its data (Airflow's open "Run Parameters"), each folded until opened
CANDIDATES, SERVING, ROLLOUT = "Candidates and gates", "Benchmark and serving", "Rollout"

PARAMS = {
    "model_name": Param(
        "digits_cnn",
        type="string",
        minLength=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        title="Registered model",
        description="Name of the model in the MLflow registry.",
    ),
    "model_version": Param(
        None,
        type=["null", "string", "integer"],
        pattern=r"^[0-9]+$",
        minimum=1,
        title="Model version",
        description="Version number. Leave empty to follow the alias below.",
    ),
    "model_alias": Param(
        "champion",
        type=["null", "string"],
        title="Model alias",
        description="MLflow alias to resolve (e.g. champion) when no version is given. A version given above "
        "wins over the default champion; another alias beside a version must point at that version.",
    ),
    "eval_data_uri": Param(
        None,
        type=["null", "string"],
        title="Evaluation data (optional)",
        description="s3:// URI or local path of a Parquet, CSV, JSON-lines or .npz file whose columns are named after "
        "the signature's inputs (optional 'label' column): the accuracy gate and INT8 calibration use its rows (split, "
        "never overlapping). Leave empty to use the datasets logged on the version's run (mlflow.log_input), else the "
        "recipe's data, else the logged input example, else synthetic inputs (calibrated variants are then skipped). "
        "The choice is recorded as the model-version tag modelops.eval_data.",
    ),
    "recipe": Param(
        None,
        type=["null", "string"],
        pattern=r"^[a-z0-9_]+$",
        title="Recipe",
        description="Leave empty to pick the recipe from the MLflow flavor; or name one registered in the "
        "modelops.recipes entry-point group (e.g. a recipe installed from another package).",
    ),
    "variants": Param(
        None,
        type=["null", "array"],
        items={"type": "string", "enum": VARIANT_NAMES},
        examples=VARIANT_NAMES,  # the form's multi-select (the items' enum validates a REST request)
        values_display={v.name: f"{v.name}: {v.summary}" for v in VARIANTS.values()},
        uniqueItems=True,
        title="Variants",
        description="Optimized candidates to build, validate and benchmark against the source model. Leave empty "
        "for the recipe's defaults, chosen by model family: "
        + "; ".join(f"{kind}: {' + '.join(names)}" for kind, names in KIND_DEFAULTS.items())
        + ".",
        section=CANDIDATES,
    ),
    "accuracy_tolerance": Param(
        0.01,
        type="number",
        minimum=0,
        maximum=1,
        title="Accuracy tolerance",
        description="Largest allowed drop of the recipe's metric (e.g. accuracy) below the source model.",
        section=CANDIDATES,
    ),
    "latency_slo_ms": Param(
        100.0,
        type="number",
        exclusiveMinimum=0,
        maximum=60000,
        title="Latency SLO (p99, ms)",
        description="Only candidates whose perf_analyzer p99 is within this bound can win.",
        section=CANDIDATES,
    ),
    "ttft_slo_ms": Param(
        2000.0,
        type="number",
        exclusiveMinimum=0,
        maximum=600000,
        title="Time-to-first-token SLO (p99, ms; LLMs)",
        description="LLMs only: among accurate candidates, the most output tokens/s whose TTFT p99 is within this "
        "bound wins.",
        section=CANDIDATES,
    ),
    "config_search": Param(
        True,
        type="boolean",
        title="Search the serving configuration",
        description="Benchmark searches the contending candidates' Triton configuration (instances x intra-op threads, dynamic "
        "batching queue delay and preferred batch, max_batch_size) by coordinate descent, and the chosen "
        "(variant, configuration) is published. Off: every candidate is served with the one default configuration.",
        section=SERVING,
    ),
    "config_search_budget_s": Param(
        60,
        type="number",
        minimum=0,
        maximum=3600,
        title="Configuration search budget (s)",
        description="Wall time of the configuration search per run, shared by the contenders (the candidates within 75% of "
        "the best one's default throughput), best first.",
        section=SERVING,
    ),
    "serving_device": Param(
        None,
        type=["null", "string"],
        enum=[None, "cpu", "gpu"],
        title="Serving device",
        description="Device of the Triton that benchmarks and serves: cpu (python backend, the embedded stack) or "
        "gpu (onnxruntime_onnx and TensorRT engines on a GPU Triton, in the GPU worker image; text-in recipes are "
        "refused). Leave empty for MODELOPS_SERVING_DEVICE (default cpu).",
        section=SERVING,
    ),
    "gpu_products": Param(
        None,
        type=["null", "array"],
        items={"type": "string", "pattern": r"^[A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?$"},
        uniqueItems=True,
        title="GPU products (TensorRT engines)",
        description="GPU Feature Discovery products (nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3) to build "
        "TensorRT engines for: one compile pod per product, plans merged by compute capability. Leave empty for "
        "MODELOPS_GPU_PRODUCTS, else MODELOPS_K8S_GPU_PRODUCT. Local execution builds on its own GPU only.",
        section=SERVING,
    ),
    "rollout_steps": Param(
        list(DEFAULT_ROLLOUT_STEPS),
        type="array",
        items={"type": "integer", "minimum": 1, "maximum": 100},
        minItems=1,
        title="Rollout steps",
        description="Traffic percent of the new deployment per step, ascending, ending at 100. Deploy routes the "
        "first step, then the rollout_model DAG (run id rollout__<deployment>) judges each step on live metrics and "
        "promotes or rolls back. [100] replaces at once; a model's first deployment always takes 100 at once.",
        section=ROLLOUT,
    ),
    "rollout_interval_s": Param(
        60,
        type="number",
        minimum=5,
        maximum=86400,
        title="Rollout step interval (s)",
        description="How long rollout_model holds and judges each step on live metrics before the next one.",
        section=ROLLOUT,
    ),
    "rollout": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=100,
        title="Rollout percent (shortcut)",
        description="Older shortcut: N = rollout steps [N, 100]; 100 = replace at once. Leave empty to use the "
        "rollout steps above.",
        section=ROLLOUT,
    ),
}


# Light network tasks retry a transient failure (S3, MLflow, Triton hiccups) with exponential backoff (15 s, 30 s,
# 60 s); deterministic failures raise AirflowFailException and never retry. Each is safe to run again: resolve
# re-takes its own lease (same owner) and writes a fresh spec, select rewrites its result, publish is
# content-addressed and resumable, deploy reloads (idempotent) and recomputes the same weights, record re-logs
# the same values. The heavy steps (minutes to hours of CPU/GPU) keep retries 0.
LIGHT_RETRIES = {"retries": 3, "retry_delay": timedelta(seconds=15), "retry_exponential_backoff": 2.0,
                 "max_retry_delay": timedelta(minutes=2)}


@dag(
    dag_id="optimize_model",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["modelops", "triton", "mlflow"],
    max_active_runs=4,
    default_args={"retries": 0, "on_failure_callback": on_failure, "execution_timeout": timedelta(hours=2)},
    doc_md=__doc__,
)
def optimize_model():
    @modelops_task(**LIGHT_RETRIES)
    def resolve(params=None, run_id=None, connections=None) -> dict:
        from modelops_airflow.operators import pipeline_tasks

        return pipeline_tasks.resolve(dict(params), run_id, connections)

    @modelops_task(**LIGHT_RETRIES)
    def select(meta: dict, connections=None) -> dict:
        from modelops_airflow.operators import pipeline_tasks

        return pipeline_tasks.select(meta["spec_uri"], connections)

    @modelops_task(outlets=[PUBLISHED], **LIGHT_RETRIES)
    def publish(meta: dict, selection: dict, outlet_events=None, connections=None) -> dict:
        from modelops_airflow.operators import pipeline_tasks

        out = pipeline_tasks.publish(meta["spec_uri"], selection, connections)
        outlet_events[PUBLISHED].add(Asset(asset_uri("published", meta["model_name"])), extra={
            "model_name": meta["model_name"], "model_version": str(meta["model_version"]),
            "variant": selection["chosen"], "deployment": out["deployment"], "uri": out["uri"]})  # fmt: skip
        return out

    @modelops_serving_task(outlets=[DEPLOYED], **LIGHT_RETRIES)
    def deploy(meta: dict, selection: dict, publication: dict, outlet_events=None, connections=None) -> dict:
        from modelops_airflow.operators import pipeline_tasks

        out = pipeline_tasks.deploy(meta["spec_uri"], selection, publication, connections)
        outlet_events[DEPLOYED].add(Asset(asset_uri("deployed", meta["model_name"])), extra={
            "model_name": meta["model_name"], "model_version": str(meta["model_version"]),
            "deployment": publication["deployment"], "routes": out.get("routes") or {},
            "rollout": bool(out.get("rollout"))})  # fmt: skip
        return out

    @modelops_task(trigger_rule="none_failed", **LIGHT_RETRIES)
    def record(meta: dict, selection: dict, deployment: dict | None = None, connections=None) -> dict:
        from modelops_airflow.operators import pipeline_tasks

        return pipeline_tasks.record(meta["spec_uri"], selection, deployment, connections)

    @task
    def rollout_conf(deployment: dict) -> dict:
        """The rollout_model conf when deploy routed only the first step; skipped when it routed 100%."""
        from airflow.exceptions import AirflowSkipException

        if not deployment.get("rollout"):
            raise AirflowSkipException("the new deployment took 100% of the traffic: no rollout to run")
        return deployment["rollout"]

    @task
    def compile_targets(meta: dict, params=None) -> list[str]:
        """The GPU products compile is mapped over (one pod per product; [""]: one on any GPU; []: no engine variant
        requested, compile is skipped)."""
        from modelops_airflow.operators.compile_tasks import compile_targets as targets

        try:
            return targets(dict(params or {}), engine_variants=meta.get("engine_variants"))
        except ValueError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from None

    @modelops_task(trigger_rule="none_failed", **LIGHT_RETRIES)
    def merge_compile(meta: dict, results, connections=None) -> dict:
        """The mapped compile instances' plans as one compile result; skipped when none built an engine."""
        from modelops_airflow.operators.compile_tasks import merge_compile as merge

        return merge(meta["spec_uri"], results, connections)

    meta = resolve()
    # TensorRT engines, one mapped instance per GPU product (none when the run requests no engine variant): each
    # skipped (exit 99) where there is no GPU or no TensorRT; merge_compile combines their plans; validate runs
    # either way.
    compiled = mapped_step_operator("compile", SPEC, compile_targets(meta))
    heavy = [
        step_operator("export", SPEC),
        step_operator("optimize", SPEC),
        compiled,
        step_operator("validate", SPEC, trigger_rule="none_failed"),
        step_operator("benchmark", SPEC),
    ]
    meta >> heavy[0]
    for upstream, downstream in itertools.pairwise(heavy):
        upstream >> downstream
    merge_compile(meta, compiled.output) >> heavy[3]
    selection = select(meta)
    heavy[-1] >> selection
    publication = publish(meta, selection)
    deployment = deploy(meta, selection, publication)
    @modelops_task(trigger_rule="none_failed")
    def refresh_openwebui(deployment: dict | None = None, connections=None) -> dict:
        """After a deployment that took 100% at once, Open WebUI lists it (a rollout refreshes when it ends)."""
        from airflow.exceptions import AirflowSkipException

        from modelops_airflow.operators import openwebui_tasks

        if not deployment or deployment.get("rollout"):
            raise AirflowSkipException("nothing changed for Open WebUI yet (no deployment, or a rollout follows)")
        return openwebui_tasks.refresh_openwebui(connections)

    recorded = record(meta, selection, deployment)
    recorded >> refresh_openwebui(deployment)
    conf = rollout_conf(deployment)
    recorded >> conf
    TriggerDagRunOperator(
        task_id="start_rollout",
        trigger_dag_id="rollout_model",
        trigger_run_id="rollout__{{ ti.xcom_pull(task_ids='deploy')['deployment'] }}",
        conf=conf,
        reset_dag_run=True,  # a deployment rolled out again (after a rollback) reuses its run id
        wait_for_completion=False,
        fail_when_dag_is_paused=True,  # a paused rollout_model would leave the canary at its first step silently
    )


optimize_model()
