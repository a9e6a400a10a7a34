"""Triton python-backend model: the PyTorch eager baseline, the MLflow model copied to ``1/model/``.

Loaded with ``mlflow.pytorch.load_model`` (pt2 or pickle) and run under ``torch.inference_mode`` with
``torch.set_num_threads`` from config.pbtxt. Requests of one dynamic batch run as a single call.
"""

import os

import numpy as np
from modelops_serving import is_batched, parse_args, read_inputs, responses, run_batched, tensor_specs, torch_threads

# libgomp busy-waits by default; next to the server's polling threads on a small CPU that made every
# torch call ~30x slower inside the stub (measured: 64x64 matmul 2 ms instead of 0.02 ms). It is read
# when torch loads, so it must be set before the import in initialize().
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class TritonPythonModel:
    def initialize(self, args):
        import mlflow.pytorch
        import torch

        config, params, version_dir = parse_args(args)
        torch_threads(torch, params)
        self.torch = torch
        self.model = mlflow.pytorch.load_model(os.path.join(version_dir, "model"), map_location="cpu")
        try:
            self.model.eval()
        except (NotImplementedError, RuntimeError):  # torch.export modules (pt2) have no eval(): nothing to switch
            pass
        self.inputs, self.outputs = tensor_specs(config, "input"), tensor_specs(config, "output")
        self.batched = is_batched(config)

    def _run(self, arrays):
        with self.torch.inference_mode():
            out = self.model(*(self.torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        if isinstance(out, dict):
            out = list(out.values())
        elif not isinstance(out, (list, tuple)):
            out = [out]
        return [o.detach().cpu().numpy() for o in out]

    def execute(self, requests):
        per_request = run_batched(read_inputs(requests, self.inputs), self._run, self.batched)
        return responses(per_request, self.outputs)

    def finalize(self):
        self.model = None
