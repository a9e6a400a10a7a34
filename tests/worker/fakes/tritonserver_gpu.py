"""A fake GPU ``tritonserver`` (the NGC binary the GPU benchmark starts), faked at the process boundary.

It takes tritonserver's command line (``--model-repository``, ``--http-port``, ``--load-model``; the rest is accepted
and ignored), loads each model the way the native GPU backends would, and answers KServe v2 HTTP (health, model
readiness, inference with the binary tensor extension) on 127.0.0.1:

- ``config.pbtxt`` is parsed with Triton's ``model_config`` protobuf; only ``onnxruntime_onnx`` and ``tensorrt_plan``
  on KIND_GPU load (this is a GPU server: no python backend), as the real server fails a model it has no backend for;
- ``onnxruntime_onnx`` runs ``1/model.onnx`` in ONNX Runtime; ``tensorrt_plan`` runs the plan named for
  ``FAKE_GPU_CC`` in ``cc_model_filenames`` (else ``default_model_filename``) with the fake TensorRT runtime
  (``polygraphy_trt``: the ONNX a fake plan embeds).

Each load is logged as one line ``loaded <name>: platform=... kind=... max_batch_size=... file=...
accelerator=...``. A model that fails exits the server with ``failed to load`` (as Triton does with --exit-on-error).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from modelops.serving.triton.config_proto import parse, pb2
from tests.worker.fakes.polygraphy_trt import onnx_bytes

DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
          "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}  # fmt: skip
TRITON = {np.dtype(v).name: k for k, v in DTYPES.items()}


def load(repo: Path, name: str):
    import onnxruntime as ort

    config = parse((repo / name / "config.pbtxt").read_text())
    kinds = {g.kind for g in config.instance_group}
    if config.platform not in ("onnxruntime_onnx", "tensorrt_plan") or kinds != {pb2().ModelInstanceGroup.KIND_GPU}:
        raise RuntimeError(f"unable to find backend for platform '{config.platform or config.backend}' on KIND_GPU")
    filename = dict(config.cc_model_filenames).get(os.environ.get("FAKE_GPU_CC", ""), config.default_model_filename)
    data = (repo / name / "1" / filename).read_bytes()
    model = onnx_bytes(data) if config.platform == "tensorrt_plan" else data
    accel = [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
    print(f"loaded {name}: platform={config.platform} kind=KIND_GPU max_batch_size={config.max_batch_size} "
          f"file={filename} accelerator={','.join(accel) or 'none'}", flush=True)  # fmt: skip
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


class Handler(BaseHTTPRequestHandler):
    models: ClassVar[dict] = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if parts[:2] == ["v2", "health"]:
            return self._send(200)
        if len(parts) == 4 and parts[0] == "v2" and parts[1] == "models" and parts[3] == "ready":
            return self._send(200 if parts[2] in self.models else 400, {"error": "not ready"})
        return self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if not (len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "infer"):
            return self._send(404, {"error": f"no route {self.path}"})
        session = self.models.get(parts[2])
        if session is None:
            return self._send(400, {"error": f"Request for unknown model: '{parts[2]}' is not found"})
        body = self.rfile.read(int(self.headers["Content-Length"]))
        size = int(self.headers.get("Inference-Header-Content-Length") or len(body))
        header, offset, feed = json.loads(body[:size]), size, {}
        for tensor in header["inputs"]:
            dtype, shape = DTYPES[tensor["datatype"]], tensor["shape"]
            nbytes = (tensor.get("parameters") or {}).get("binary_data_size")
            if nbytes is not None:
                feed[tensor["name"]] = np.frombuffer(body[offset : offset + nbytes], dtype).reshape(shape)
                offset += nbytes
            else:
                feed[tensor["name"]] = np.asarray(tensor["data"], dtype).reshape(shape)
        outs = session.run(None, feed)
        outputs = [{"name": o.name, "datatype": TRITON[v.dtype.name], "shape": list(v.shape), "data": v.ravel().tolist()}
                   for o, v in zip(session.get_outputs(), outs, strict=True)]  # fmt: skip
        return self._send(200, {"model_name": parts[2], "outputs": outputs})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--load-model", action="append", default=[])
    args, _ = parser.parse_known_args()
    repo = Path(args.model_repository)
    for name in args.load_model:
        try:
            Handler.models[name] = load(repo, name)
        except Exception as exc:  # noqa: BLE001
            print(f"E0000 model_lifecycle.cc:1] failed to load '{name}' version 1: {exc}", flush=True)
            return 1
    server = ThreadingHTTPServer(("127.0.0.1", args.http_port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
