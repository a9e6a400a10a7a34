"""Triton python-backend model: the scikit-learn baseline, the MLflow sklearn model copied to ``1/model/``.

Loaded with ``mlflow.sklearn.load_model`` (skops, pickle or cloudpickle, as its MLmodel says). Outputs
are produced by name, as the modelops sklearn recipe declares them: ``label`` (``predict``, int64),
``probabilities`` (``predict_proba``, float32) or ``prediction`` (``predict`` of a regressor, ``[N, 1]``).
Requests of one dynamic batch run as a single call.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# scikit-learn's OpenMP/BLAS pools busy-wait by default; next to the server's threads that starves the stub
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        threads = params.get("intra_op_threads") or ""
        if threads and threads != "0":
            # read by the OpenMP runtime scikit-learn loads at the import below (numpy's BLAS is already up)
            os.environ.setdefault("OMP_NUM_THREADS", threads)
            os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)
        import mlflow.sklearn

        path = os.path.join(args["model_repository"], args["model_version"], "model")
        self.model = mlflow.sklearn.load_model(path)
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"]), [int(d) for d in t["dims"]])
            for t in config["output"]
        ]
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def _run(self, x):
        rows = len(x)
        results = []
        for name, dtype, dims in self.outputs:
            if name == "probabilities":
                out = self.model.predict_proba(x)
            else:
                out = np.asarray(self.model.predict(x))
            out = np.asarray(out).astype(dtype, copy=False)
            # Triton shapes are [batch, *dims]; a per-row scalar (label) is declared as dims [1]
            if self.batched and dims == [1]:
                out = out.reshape(rows, 1)
            results.append(out)
        return results

    def execute(self, requests):
        feeds = [
            pb_utils.get_input_tensor_by_name(r, self.inputs[0][0]).as_numpy().astype(self.inputs[0][1], copy=False)
            for r in requests
        ]
        if self.batched and len(feeds) > 1:
            sizes = [len(f) for f in feeds]
            results = self._run(np.concatenate(feeds))
            bounds = np.cumsum(sizes)[:-1]
            per_request = list(zip(*[np.split(res, bounds) for res in results]))
        else:
            per_request = [self._run(f) for f in feeds]
        responses = []
        for outs in per_request:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out)) for (name, _, _), out in zip(self.outputs, outs)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.model = None
