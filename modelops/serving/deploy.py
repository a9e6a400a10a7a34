"""Load a published deployment into the serving Triton, prove it answers correctly, then route to it.

Order matters for "a failed run leaves serving untouched": verify manifest -> load -> ready ->
smoke inference compared with the validated candidate and the source -> only then the routes file
changes (conditional write). Any failure before the routes write unloads the new deployment and
raises :class:`DeployError` with one line.

Triton's model control is locked behind an admin header: ``client`` must send it on load/unload (the
:class:`~modelops.serving.triton.admin.AdminClient` that ``TritonHook.get_client`` returns); a client without it
is refused with 403 and the deploy fails saying so. The token is never logged.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelops.contracts.naming import deployment_uri
from modelops.evaluation.metrics import top1_agreement
from modelops.serving.drain import retire
from modelops.serving.publish import InvalidDeployment, verify_deployment
from modelops.serving.routes import Routes, RoutesConflict, canary_weights, read_routes, write_routes
from modelops.serving.triton import client as triton_client
from modelops.storage import Storage

log = logging.getLogger(__name__)

ROUTES_ATTEMPTS = 4  # the first conditional write and 3 retries from a fresh read


class DeployError(Exception):
    """The deployment could not be served; routes were not changed."""


@dataclass
class SmokeReport:
    max_abs_diff_vs_candidate: float
    max_abs_diff_vs_source: float
    agreement_vs_source: float | None
    batch: int


def load_npz(storage: Storage, uri: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def triton_infer(client: Any, model: str, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
    """One HTTP inference through ``tritonclient.http`` (see :func:`modelops.serving.triton.client.infer`)."""
    return triton_client.infer(client, model, inputs, output_names)


def smoke_test(
    client: Any,
    deployment: str,
    samples: dict[str, np.ndarray],
    candidate_outputs: dict[str, np.ndarray],
    *,
    atol: float = 1e-4,
) -> SmokeReport:
    """Infer the export's sample inputs and compare with what the candidate gave under ONNX Runtime."""
    inputs = {k: v for k, v in samples.items() if not k.startswith("output:")}
    sources = {k[len("output:") :]: v for k, v in samples.items() if k.startswith("output:")}
    got = triton_infer(client, deployment, inputs, list(candidate_outputs))
    diff_cand = max(float(np.max(np.abs(got[n].astype(np.float64) - candidate_outputs[n]))) for n in got)
    if not diff_cand <= atol:
        raise DeployError(f"Triton's answer for {deployment} differs from the validated candidate by {diff_cand:.3g}")
    diff_src, agreement = 0.0, None
    for name, ref in sources.items():
        if name in got:
            diff_src = max(diff_src, float(np.max(np.abs(got[name].astype(np.float64) - ref))))
            if ref.ndim == 2 and ref.shape[1] > 1 and np.issubdtype(ref.dtype, np.floating) and not _is_embedding(name):
                agreement = top1_agreement(got[name], ref)
    batch = int(next(iter(inputs.values())).shape[0])
    return SmokeReport(diff_cand, diff_src, agreement, batch)


@dataclass
class LLMSmokeReport:
    text: str
    completion_tokens: int
    finish_reason: str
    seconds: float


def llm_smoke(http_url: str, deployment: str, prompt: str = "Say hello.", max_tokens: int = 16) -> LLMSmokeReport:
    """Stream one greedy answer from a decoupled LLM deployment through Triton's generate_stream.

    Raises:
        DeployError: no answer, an error event, or no text (one line).
    """
    from modelops.evaluation.llm_perf import triton_stream

    started = time.monotonic()
    text, tokens, finish = [], 0, ""
    try:
        for event in triton_stream(http_url, deployment, [{"role": "user", "content": prompt}],
                                   {"max_tokens": max_tokens, "temperature": 0}, timeout_s=120):  # fmt: skip
            text.append(event.text or "")
            tokens = event.completion_tokens or tokens
            finish = event.finish_reason or finish
    except Exception as exc:  # noqa: BLE001 - any failure of the stream is a failed smoke test
        raise DeployError(f"{deployment} did not stream an answer: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    answer = "".join(text)
    if not answer.strip() or finish not in ("stop", "length"):
        raise DeployError(f"{deployment} streamed no answer (text {answer!r}, finish_reason {finish!r})")
    return LLMSmokeReport(answer, int(tokens), finish, round(time.monotonic() - started, 3))


def _is_embedding(output_name: str) -> bool:
    """Top-1 agreement is meaningless for embeddings (argmax of a unit vector); report it for classifiers only."""
    return "embedding" in output_name.lower()


def wait_ready(client: Any, deployment: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.is_model_ready(deployment):
            return
        time.sleep(0.5)
    raise DeployError(f"{deployment} was loaded but not ready within {timeout_s:g} s")


def deploy(
    client: Any,
    storage: Storage,
    triton_bucket: str,
    model: str,
    deployment: str,
    *,
    samples_uri: str | None = None,
    candidate_outputs_uri: str | None = None,
    run_id: str,
    rollout_percent: int = 100,
    gateway_metrics_urls: list[str] | None = None,
    smoke: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Verify, load, smoke-test and route ``rollout_percent`` of ``model`` to ``deployment``.

    Deployments the new routes no longer name are retired (:func:`modelops.serving.drain.retire`): once every
    gateway in ``gateway_metrics_urls`` serves the new routes and has nothing in flight to them; with no gateway
    URLs they are unloaded at once. A lost routes write race is retried from a fresh read (3x); if it still
    fails, the new deployment is unloaded (unless the fresh routes name it).

    The smoke test compares Triton's answer on ``samples_uri`` with ``candidate_outputs_uri`` (tensor models), or
    is ``smoke()`` (e.g. an LLM streaming one greedy answer: :func:`llm_smoke`), which raises :class:`DeployError`.

    Returns a summary with the new routes revision and smoke numbers. Raises :class:`DeployError`.
    """
    if smoke is None and not (samples_uri and candidate_outputs_uri):
        raise ValueError("deploy needs samples_uri and candidate_outputs_uri, or a smoke callable")
    from tritonclient.utils import InferenceServerException

    uri = deployment_uri(triton_bucket, deployment)
    try:
        verify_deployment(storage, uri)
    except InvalidDeployment as exc:
        raise DeployError(f"refusing to load {deployment}: {exc}") from None
    before: Routes = read_routes(storage, triton_bucket, model)
    try:
        client.load_model(deployment)
        wait_ready(client, deployment)
        if smoke is not None:
            report = smoke()
        else:
            report = smoke_test(client, deployment, load_npz(storage, samples_uri),
                                load_npz(storage, candidate_outputs_uri))  # fmt: skip
    except triton_client.UNREACHABLE as exc:  # no answer from Triton (killed, restarting, network): one line
        # No unload: it would wait as long again, and a restarted Triton loads only what the routes name.
        raise DeployError(f"Triton could not serve {deployment}: Triton unreachable while loading it "
                          f"({type(exc).__name__}: {triton_client.error_text(exc).splitlines()[0]}); "
                          "routes unchanged, retry once Triton is up") from None
    except (InferenceServerException, DeployError) as exc:
        _unload_quietly(client, deployment, keep=set(before.weights()))
        first = triton_client.error_text(exc).splitlines()[0]
        if triton_client.error_status(exc) == "403":
            raise DeployError(
                f"Triton refused to load {deployment} (403): {first}; the Triton client needs the admin header "
                "(connection extras admin_header/admin_token, see `modelops stack status --json`)"
            ) from None
        raise DeployError(f"Triton could not serve {deployment}: {first}") from None
    before, after = _write_routes_retrying(client, storage, triton_bucket, before, deployment, rollout_percent, run_id)
    replaced = sorted(set(before.weights()) - set(after.weights()) - {deployment})
    if replaced:
        try:
            retired = retire(client, gateway_metrics_urls or [], model, replaced, after.revision, storage=storage,
                             triton_bucket=triton_bucket)  # fmt: skip
            log.info("retired %s", retired)
        except Exception as exc:  # noqa: BLE001 - the new routes are live; cleanup is best effort (reconcile-safe)
            log.warning("could not retire %s: %s", replaced, exc)
    log.info("routes of %s -> %s (revision %d)", model, deployment, after.revision)
    return {
        "deployment": deployment,
        "routes_revision": after.revision,
        "routes": after.weights(),
        "previous_routes": before.weights(),
        "smoke": dict(report.__dict__),
    }


def _write_routes_retrying(
    client: Any, storage: Storage, triton_bucket: str, before: Routes, deployment: str, percent: int, run_id: str
) -> tuple[Routes, Routes]:
    """Write the canary weights; on a lost race re-read and retry (3x). Returns (routes read, routes written)."""
    for attempt in range(ROUTES_ATTEMPTS):
        if attempt:
            before = read_routes(storage, triton_bucket, before.model)
        try:
            weights = canary_weights(before.weights(), deployment, percent)
            return before, write_routes(storage, triton_bucket, before, weights, by=run_id)
        except RoutesConflict:
            log.warning("routes of %s changed while deploying %s; retrying from a fresh read", before.model, deployment)
    fresh = read_routes(storage, triton_bucket, before.model)
    _unload_quietly(client, deployment, keep=set(fresh.weights()))
    raise DeployError(
        f"routes of {before.model} kept changing ({ROUTES_ATTEMPTS} conditional writes lost; now revision "
        f"{fresh.revision} by {fresh.updated_by}); {deployment} was not routed"
    )


def _unload_quietly(client: Any, deployment: str, keep: set[str]) -> None:
    if deployment in keep:
        return
    try:
        client.unload_model(deployment)
    except Exception as exc:  # noqa: BLE001 - best effort cleanup; the original error is what the user needs
        log.warning("could not unload %s: %s", deployment, exc)
