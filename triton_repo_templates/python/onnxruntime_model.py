"""Triton python-backend model: serve ``1/model.onnx`` with ONNX Runtime on CPU.

Rendered into a deployment by modelops.triton.model_dir; reads tensor names, dtypes and the thread
count from config.pbtxt. Requests of one dynamic batch run as a single ORT call.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def ort_session(path, params):
    """A CPU ONNX Runtime session tuned by the deployment's config.pbtxt parameters.

    - ``intra_op_threads``: ORT intra-op threads (0 = ORT's default).
    - ``ort_allow_spinning`` (default 0): ORT's intra-op threads spin between kernels by default. Next to the
      server's threads and clients on a small shared CPU that halved throughput (MiniLM INT8 in Triton,
      2 cores under load: ~50/s spinning, ~105/s not); on a quiet box spinning gains ~10%.
    - ``ort_disabled_optimizers`` (default ``SkipLayerNormFusion``, comma-separated, "none" for none): ORT's
      SkipLayerNormalization CPU kernel was ~7x slower than the Add + LayerNormalization it replaces here
      (MiniLM, 2 threads, ORT 1.32: dynamic INT8 at batch 8 went 222 -> 248 sentences/s without it).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(params.get("intra_op_threads") or 0)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", params.get("ort_allow_spinning") or "0")
    disabled = params.get("ort_disabled_optimizers") or "SkipLayerNormFusion"
    disabled = [] if disabled == "none" else [d.strip() for d in disabled.split(",") if d.strip()]
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort_session(path, params)
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests):
        feeds = [
            {
                name: pb_utils.get_input_tensor_by_name(r, name).as_numpy().astype(dtype, copy=False)
                for name, dtype in self.inputs
            }
            for r in requests
        ]
        if self.batched and len(feeds) > 1:
            sizes = [len(f[self.inputs[0][0]]) for f in feeds]
            merged = {name: np.concatenate([f[name] for f in feeds]) for name, _ in self.inputs}
            results = self.session.run([n for n, _ in self.outputs], merged)
            bounds = np.cumsum(sizes)[:-1]
            per_request = list(zip(*[np.split(res, bounds) for res in results]))
        else:
            per_request = [self.session.run([n for n, _ in self.outputs], f) for f in feeds]
        responses = []
        for outs in per_request:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out.astype(dtype, copy=False)))
                for (name, dtype), out in zip(self.outputs, outs)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.session = None
