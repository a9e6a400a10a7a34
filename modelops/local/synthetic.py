"""Synthetic deployments for rollout tests and load benchmarks: ``y = x + k`` with a chosen misbehaviour.

A real deployment in the S3 Triton repository (config, python-backend model, manifest), so the gateway,
Triton, the reconciler and the rollout DAGs treat it like any published model, but tiny and with a
behaviour the caller picks:

- ``ok``: answers ``x + k``;
- ``fail``: answers ``x + k``, except that a request whose first element is at least ``trigger`` fails
  (Triton answers 500 for the whole request, the gateway passes on 502): what a broken canary does;
- ``slow``: sleeps ``delay_ms`` before answering requests at or above ``trigger``: a canary that is correct
  but slower than the stable deployment.

Requests below ``trigger`` always succeed at once, so a smoke test with small inputs passes and only real
load shows the problem, as with a canary whose bug depends on the data.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from modelops.contracts.naming import deployment_uri
from modelops.serving.publish import MANIFEST, file_table
from modelops.storage import Storage, join

BEHAVIOURS = ("ok", "fail", "slow")

_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters: [
  {{ key: "k" value: {{ string_value: "{k}" }} }},
  {{ key: "behaviour" value: {{ string_value: "{behaviour}" }} }},
  {{ key: "trigger" value: {{ string_value: "{trigger}" }} }},
  {{ key: "delay_ms" value: {{ string_value: "{delay_ms}" }} }}
]
"""

_MODEL = '''"""Synthetic ModelOps deployment: y = x + k, failing or slow at and above a trigger value (see config)."""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.k = np.float32(params["k"])
        self.behaviour = params["behaviour"]
        self.trigger = float(params["trigger"])
        self.delay_s = float(params["delay_ms"]) / 1000.0

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            hit = x.size > 0 and float(x.flat[0]) >= self.trigger
            if hit and self.behaviour == "fail":
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("synthetic failure: first element at or above the trigger")))
                continue
            if hit and self.behaviour == "slow":
                time.sleep(self.delay_s)
            y = (x + self.k).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
        return responses
'''


def publish_synthetic(
    storage: Storage,
    triton_bucket: str,
    model: str,
    deployment: str,
    *,
    k: float = 1.0,
    behaviour: str = "ok",
    trigger: float = 10.0,
    delay_ms: float = 200.0,
) -> str:
    """Publish the synthetic deployment ``deployment`` of ``model`` (manifest last); returns its URI.

    Raises:
        ValueError: an unknown behaviour.
    """
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown synthetic behaviour {behaviour!r}; known: {', '.join(BEHAVIOURS)}")
    uri = deployment_uri(triton_bucket, deployment)
    with tempfile.TemporaryDirectory(prefix="modelops-synthetic-") as tmp:
        root = Path(tmp) / deployment
        (root / "1").mkdir(parents=True)
        (root / "config.pbtxt").write_text(
            _CONFIG.format(name=deployment, k=k, behaviour=behaviour, trigger=trigger, delay_ms=delay_ms))
        (root / "1" / "model.py").write_text(_MODEL)
        files = file_table(root)
        for rel in files:
            storage.upload_file(root / rel, join(uri, rel))
    manifest = {
        "deployment": deployment, "model": model, "model_version": "0", "variant": f"synthetic_{behaviour}",
        "recipe": "synthetic", "backend": "python/numpy", "target_device": "cpu", "files": files,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_bytes(join(uri, MANIFEST), json.dumps(manifest, indent=2).encode())
    return uri


def request_body(value: float, batch: int = 1) -> bytes:
    """A KServe v2 JSON request for the synthetic model: ``batch`` rows of four ``value``s."""
    return json.dumps({"inputs": [{"name": "x", "shape": [batch, 4], "datatype": "FP32",
                                   "data": [float(value)] * (4 * batch)}]}).encode()
