"""Triton python-backend model: serve ``1/model.onnx`` with ONNX Runtime (or OpenVINO: ``engine``) on CPU.

Rendered into a deployment by modelops.serving.triton.model_dir; reads tensor names, dtypes and the session
parameters from config.pbtxt (see ``modelops_serving.model_session``). Requests of one dynamic batch run as
a single ORT call.
"""

import os

from modelops_serving import is_batched, model_session, parse_args, read_inputs, responses, run_batched, tensor_specs


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = parse_args(args)
        self.session = model_session(os.path.join(version_dir, "model.onnx"), params)
        self.inputs, self.outputs = tensor_specs(config, "input"), tensor_specs(config, "output")
        self.batched = is_batched(config)

    def _run(self, arrays):
        names = [name for name, _ in self.outputs]
        return self.session.run(names, {name: a for (name, _), a in zip(self.inputs, arrays)})

    def execute(self, requests):
        per_request = run_batched(read_inputs(requests, self.inputs), self._run, self.batched)
        return responses(per_request, self.outputs)

    def finalize(self):
        self.session = None
