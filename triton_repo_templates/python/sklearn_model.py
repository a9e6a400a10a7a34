"""Triton python-backend model: the scikit-learn baseline, the MLflow sklearn model copied to ``1/model/``.

Loaded with ``mlflow.sklearn.load_model`` (skops, pickle or cloudpickle, as its MLmodel says). Outputs
are produced by name, as the modelops sklearn recipe declares them: ``label`` (``predict``, int64),
``probabilities`` (``predict_proba``, float32) or ``prediction`` (``predict`` of a regressor, ``[N, 1]``).
Requests of one dynamic batch run as a single call.
"""

import os

import numpy as np
from modelops_serving import is_batched, parse_args, read_inputs, responses, run_batched, tensor_specs

# scikit-learn's OpenMP/BLAS pools busy-wait by default; next to the server's threads that starves the stub
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = parse_args(args)
        threads = params.get("intra_op_threads") or ""
        if threads and threads != "0":
            # read by the OpenMP runtime scikit-learn loads at the import below (numpy's BLAS is already up)
            os.environ.setdefault("OMP_NUM_THREADS", threads)
            os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)
        import mlflow.sklearn

        self.model = mlflow.sklearn.load_model(os.path.join(version_dir, "model"))
        self.inputs, self.outputs = tensor_specs(config, "input")[:1], tensor_specs(config, "output")
        self.dims = [[int(d) for d in t["dims"]] for t in config["output"]]
        self.batched = is_batched(config)

    def _run(self, arrays):
        (x,) = arrays
        results = []
        for (name, _), dims in zip(self.outputs, self.dims):
            out = np.asarray(self.model.predict_proba(x) if name == "probabilities" else self.model.predict(x))
            # Triton shapes are [batch, *dims]; a per-row scalar (label, prediction) is declared as dims [1]
            results.append(out.reshape(len(x), 1) if self.batched and dims == [1] else out)
        return results

    def execute(self, requests):
        per_request = run_batched(read_inputs(requests, self.inputs), self._run, self.batched)
        return responses(per_request, self.outputs)

    def finalize(self):
        self.model = None
