"""Triton python-backend model: serve ``1/model.onnx`` with ONNX Runtime on CPU.

Rendered into a deployment by modelops.triton.model_dir; reads tensor names, dtypes and the thread
count from config.pbtxt. Requests of one dynamic batch run as a single ORT call.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("intra_op_threads") or 0)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
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
