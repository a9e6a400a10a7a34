"""Triton python-backend model: raw text in, sentence embedding out; tokenizer + ``1/model.onnx`` on ONNX Runtime.

Rendered into a deployment by modelops.triton.model_dir (kind ``onnxruntime_text``). The input is one
TYPE_STRING tensor (``dims: [1]``, batched): one UTF-8 text per row. ``1/tokenizer/tokenizer.json`` and
``serving.json`` (max_seq_length, pad id) come from the text-embedding recipe's export; the ONNX model
already pools and normalises, so its output is the embedding. All texts of one dynamic batch are
tokenized together, right-padded to the longest (truncated at max_seq_length), and run as one ORT call.
The tokenization repeats ``model_recipes.text_embedding.tokenize`` (a deployment imports nothing from
this repository); the tests check both give the same ids.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import tokenizers
import triton_python_backend_utils as pb_utils


def load_tokenizer(directory):
    """(tokenizers.Tokenizer without padding, truncating at max_seq_length; pad id; serving config)."""
    with open(os.path.join(directory, "serving.json")) as fh:
        config = json.load(fh)
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(config["max_seq_length"]))
    return tokenizer, int(config.get("pad_token_id", 0)), config


def tokenize(tokenizer, pad_id, texts):
    encodings = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def texts_of(request, name):
    """The request's texts (one per row of its ``[batch, 1]`` BYTES tensor) as str."""
    values = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


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
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer, self.pad_id, _ = load_tokenizer(os.path.join(version_dir, "tokenizer"))
        path = os.path.join(version_dir, "model.onnx")
        self.session = ort_session(path, params)
        self.feeds = [i.name for i in self.session.get_inputs()]
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])

    def execute(self, requests):
        per_request = [texts_of(r, self.input_name) for r in requests]
        texts = [t for batch in per_request for t in batch]
        tokens = tokenize(self.tokenizer, self.pad_id, texts)
        # BERT-style encoders may also take token_type_ids (all zeros for a single text)
        feeds = {n: tokens[n] if n in tokens else np.zeros_like(tokens["input_ids"]) for n in self.feeds}
        (embeddings,) = self.session.run(None, feeds)
        bounds = np.cumsum([len(b) for b in per_request])[:-1]
        responses = []
        for part in np.split(embeddings, bounds):
            tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(part.astype(self.output_dtype)))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.session = None
