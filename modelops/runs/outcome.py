"""A run's outcome: select the winner of the gated, benchmarked candidates, and publish it to the Triton repository.

The bodies of ``optimize_model``'s ``select`` and ``publish`` tasks and of ``modelops optimize`` (``--publish``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelops.storage import Storage

log = logging.getLogger(__name__)


def select_run(storage: Storage, spec: dict[str, Any]) -> dict[str, Any]:
    """Pick the fastest accurate candidate under the SLO (the TTFT SLO for LLMs); written to ``select/result.json``."""
    from modelops.evaluation.selection import select as select_winner
    from modelops.steps._common import load_result

    # LLMs: points carry output tokens/s as throughput and TTFT as latency, bounded by the TTFT SLO
    llm = bool(load_result(storage, spec, "export").get("generative"))
    slo_ms = float(spec.get("ttft_slo_ms") or 2000.0) if llm else spec["latency_slo_ms"]
    selection = select_winner(load_result(storage, spec, "validate"), load_result(storage, spec, "benchmark"),
                              slo_ms).to_json()  # fmt: skip
    selection["slo_ms"], selection["generative"] = slo_ms, llm
    storage.write_json(f"{spec['run_prefix']}/select/result.json", selection)
    if selection["chosen"]:
        log.info("chosen: %s (%.2fx the PyTorch baseline)", selection["chosen"], selection["speedup"] or 0)
    else:
        log.warning("nothing chosen: %s", selection["reason"])
    return selection


def publish_run(storage: Storage, spec: dict[str, Any], selection: dict[str, Any]) -> dict[str, Any]:
    """Publish the chosen candidate as an immutable deployment; ``{"deployment", "uri", "reused"}``.

    Raises:
        PublishError: nothing chosen, or the candidate cannot be published (one line).
    """
    from modelops.serving.publish import PublishError, publish_candidate
    from modelops.steps._common import load_result

    if not selection.get("chosen"):
        raise PublishError(f"nothing to publish: {selection.get('reason')}")
    export, optimize = load_result(storage, spec, "export"), load_result(storage, spec, "optimize")
    if export.get("generative"):
        out = _publish_llm(storage, spec, selection["chosen"], optimize)
    else:
        out = publish_candidate(storage, spec, selection["chosen"], export, optimize, spec["triton_bucket"],
                                serving_config=selection.get("config"))  # benchmark's configuration search
    return {"deployment": out["deployment"], "uri": out["uri"], "reused": out["reused"]}


def _publish_llm(storage: Storage, spec: dict[str, Any], variant: str, optimize: dict[str, Any]) -> dict[str, Any]:
    """Publish the chosen ORT GenAI build of an LLM as a decoupled python-backend deployment."""
    import tempfile
    from pathlib import Path

    from modelops.serving.publish import PublishError
    from modelops.serving.triton.llm_dir import publish_llm

    with tempfile.TemporaryDirectory(prefix="modelops-publish-llm-") as tmp:
        model_dir = storage.download_dir(optimize["candidates"][variant]["artifacts"]["model_dir"], Path(tmp) / "m")
        try:
            return publish_llm(storage, model_dir=model_dir, model_name=spec["model_name"],
                               model_version=spec["model_version"], triton_bucket=spec["triton_bucket"],
                               variant=variant, model_uri=spec.get("model_uri") or None, run_id=spec["run_id"],
                               recipe=spec.get("recipe") or "text_generation",
                               device=str(spec.get("serving_device") or "cpu"))  # fmt: skip
        except ValueError as exc:
            raise PublishError(f"cannot publish {variant}: {exc}") from None
