"""Triton python-backend model: the PyTorch eager baseline, the MLflow model copied to ``1/model/``.

Loaded with ``mlflow.pytorch.load_model`` (pt2 or pickle) and run under ``torch.inference_mode`` with
``torch.set_num_threads`` from config.pbtxt. Requests of one dynamic batch run as a single call.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# libgomp busy-waits by default; next to the server's polling threads on a small CPU that made every
# torch call ~30x slower inside the stub (measured: 64x64 matmul 2 ms instead of 0.02 ms). It is read
# when torch loads, so it must be set before the import in initialize().
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class TritonPythonModel:
    def initialize(self, args):
        import mlflow.pytorch
        import torch

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("intra_op_threads") or 0)
        if threads:
            torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass
        self.torch = torch
        path = os.path.join(args["model_repository"], args["model_version"], "model")
        self.model = mlflow.pytorch.load_model(path, map_location="cpu")
        try:
            self.model.eval()
        except (NotImplementedError, RuntimeError):  # torch.export modules (pt2) have no eval()
            pass
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def _run(self, arrays):
        with self.torch.inference_mode():
            out = self.model(*(self.torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        if isinstance(out, dict):
            out = list(out.values())
        elif not isinstance(out, (list, tuple)):
            out = [out]
        return [o.detach().cpu().numpy() for o in out]

    def execute(self, requests):
        feeds = [
            [
                pb_utils.get_input_tensor_by_name(r, name).as_numpy().astype(dtype, copy=False)
                for name, dtype in self.inputs
            ]
            for r in requests
        ]
        if self.batched and len(feeds) > 1:
            sizes = [len(f[0]) for f in feeds]
            results = self._run([np.concatenate([f[i] for f in feeds]) for i in range(len(self.inputs))])
            bounds = np.cumsum(sizes)[:-1]
            per_request = list(zip(*[np.split(res, bounds) for res in results]))
        else:
            per_request = [self._run(f) for f in feeds]
        responses = []
        for outs in per_request:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out.astype(dtype, copy=False)))
                for (name, dtype), out in zip(self.outputs, outs)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.model = None
