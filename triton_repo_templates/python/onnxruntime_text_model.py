"""Triton python-backend model: raw text in, sentence embedding out; tokenizer + ``1/model.onnx`` on ONNX Runtime.

Rendered into a deployment by modelops.serving.triton.model_dir (kind ``onnxruntime_text``). The input is one
TYPE_STRING tensor (``dims: [1]``, batched): one UTF-8 text per row. ``1/tokenizer/tokenizer.json`` and
``serving.json`` (max_seq_length, pad id) come from the text-embedding recipe's export; the ONNX model
already pools and normalises, so its output is the embedding. All texts of one dynamic batch are
tokenized together, right-padded to the longest (truncated at max_seq_length), and run as one ORT call.
The ``engine`` parameter ``openvino`` runs the encoder in OpenVINO instead (``modelops_serving.model_session``).
"""

import os

import numpy as np
from modelops_serving import embed_requests, load_tokenizer, model_session, parse_args


class TritonPythonModel:
    def initialize(self, args):
        self.config, params, version_dir = parse_args(args)
        self.tokenizer, self.pad_id, _ = load_tokenizer(os.path.join(version_dir, "tokenizer"))
        self.session = model_session(os.path.join(version_dir, "model.onnx"), params)
        self.feeds = [i.name for i in self.session.get_inputs()]

    def _embed(self, tokens):
        # BERT-style encoders may also take token_type_ids (all zeros for a single text)
        feeds = {n: tokens[n] if n in tokens else np.zeros_like(tokens["input_ids"]) for n in self.feeds}
        return self.session.run(None, feeds)[0]

    def execute(self, requests):
        return embed_requests(requests, self.config, self.tokenizer, self.pad_id, self._embed)

    def finalize(self):
        self.session = None
