"""Compile per GPU product: the products the mapped ``compile`` task expands over, and the merge of its results.

A TensorRT plan runs only on the GPU model it was built on, so ``optimize_model`` maps ``compile`` over the GPU
Feature Discovery products engines are built for (param ``gpu_products``, else ``MODELOPS_GPU_PRODUCTS``, else
``MODELOPS_K8S_GPU_PRODUCT``, else one instance on any GPU); each Kubernetes instance selects its product's
nodes. Every instance writes ``<run prefix>/compile/result.json`` as it ends (each keeps the plans it found
there), so concurrent instances can lose each other's plans: ``merge_compile`` then writes the union of the
instances' results (their XComs) there, which validate, benchmark and publish read. Instances that were
skipped (exit 99: no GPU or no TensorRT) pushed no XCom; when none built anything the merge is skipped too and
the file stays as the step wrote it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelops.contracts.status import Status
from modelops.settings import Settings
from modelops_airflow.connections import Connections

log = logging.getLogger(__name__)

# a Kubernetes label value: what GPU Feature Discovery writes as nvidia.com/gpu.product
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


def compile_targets(
    params: Mapping[str, Any], settings: Settings | None = None, *, engine_variants: Sequence[str] | None = None
) -> list[str]:
    """The GPU products the ``compile`` task is mapped over; ``[""]`` (one instance, default selectors) when none.

    Local execution builds on this machine's GPU only: one instance, whatever the products asked. ``[]`` when the
    run requests no engine variant (``engine_variants``, from resolve; None: unknown, map as usual): Airflow then
    skips ``compile`` without starting a pod or a worker process.

    Raises:
        ValueError: a product is not a Kubernetes label value (one line naming it).
    """
    settings = settings or Settings.from_env()
    k8s = settings.kubernetes
    asked = [str(p).strip() for p in params.get("gpu_products") or () if str(p).strip()]
    products = asked or list(k8s.gpu_products) or ([k8s.gpu_product] if k8s.gpu_product else [])
    bad = [p for p in products if not _LABEL_VALUE.match(p)]
    if bad:
        raise ValueError(f"gpu_products: {bad[0]!r} is not a GPU Feature Discovery product (a label value such as "
                         "NVIDIA-H100-80GB-HBM3)")
    if engine_variants is not None and not engine_variants:
        log.info("no TensorRT engine variant requested: compile has nothing to build")
        return []
    if settings.execution != "kubernetes":
        if asked:
            log.info("local execution builds engines on this machine's GPU only (asked: %s)", ", ".join(asked))
        return [""]
    return list(dict.fromkeys(products)) or [""]


def merge_compile_results(results: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """One compile result from the mapped instances' results (in product order); None when none built anything.

    Per engine variant: the record of the first instance that built it (else the first one's, with its reason),
    ``plans`` (compute capability -> plan) the union over the instances (the first product listed keeps a
    capability two products share, as Triton's ``cc_model_filenames`` holds one plan per capability), and
    ``builds`` (GPU product -> status, reason, plan, compute capability) what each instance did.
    """
    done = [dict(r) for r in results if r and r.get("status") == Status.DONE and r.get("engines") is not None]
    if not done:
        return None
    engines: dict[str, Any] = {}
    for variant in dict.fromkeys(v for r in done for v in r["engines"]):
        records = [r["engines"][variant] for r in done if variant in r["engines"]]
        chosen = next((e for e in records if e.get("status") == Status.DONE), records[0])
        plans: dict[str, str] = {}
        for record in records:
            for capability, plan in (record.get("plans") or {}).items():
                plans.setdefault(capability, plan)
        builds = {str(e.get("gpu_product") or "unknown"): {k: e.get(k) for k in ("status", "reason", "plan",
                                                                                   "compute_capability")}
                  for e in records}  # fmt: skip
        engines[variant] = {**chosen, "plans": dict(sorted(plans.items())), "builds": builds}
    first = next((r for r in done if any(e.get("status") == Status.DONE for e in r["engines"].values())), done[0])
    return {**first, "status": Status.DONE, "engines": engines,
            "gpu_products": list(dict.fromkeys(str(r.get("gpu_product") or "unknown") for r in done))}  # fmt: skip


def merge_compile(spec_uri: str, results: Sequence[Mapping[str, Any] | None],
                  connections: Connections | None = None) -> dict[str, Any]:
    """Airflow side: write the merged result of the mapped ``compile`` instances; skipped when none built any.

    Returns:
        ``{"gpu_products", "engines": {variant: {"status", "plans"}}}`` (the full result is on S3).
    """
    from airflow.sdk.exceptions import AirflowSkipException

    from modelops.contracts.results import check_result
    from modelops.steps._common import result_uri

    # by index up to the XCom count (Airflow's lazy sequence): iterating would ask for one past the end
    merged = merge_compile_results([results[i] for i in range(len(results))] if results else [])
    if merged is None:
        raise AirflowSkipException("no compile instance built engines (each was skipped: no GPU or no TensorRT)")
    check_result("compile", merged)
    storage = (connections or Connections()).s3().storage()
    spec = storage.read_json(spec_uri)
    storage.write_json(result_uri(spec, "compile"), merged)
    summary = {v: {"status": e["status"], "plans": e["plans"]} for v, e in merged["engines"].items()}
    log.info("compile merged over %s: %s", ", ".join(merged["gpu_products"]), summary)
    return {"gpu_products": merged["gpu_products"], "engines": summary}
