"""Triton python-backend model: the text-embedding baseline, the MLflow model at ``1/model/`` in PyTorch eager.

Kind ``transformers_text``: same text-in/embedding-out contract and the same tokenization
(``1/tokenizer/``) as ``onnxruntime_text``, so a benchmark compares the encoder runtimes and nothing
else. A sentence-transformers model is loaded with ``mlflow.sentence_transformers`` and run through its
own modules (Transformer, Pooling, Normalize); a transformers model with ``mlflow.transformers``, pooled
as ``serving.json`` says. ``torch.set_num_threads`` comes from config.pbtxt.
"""

import json
import os

import numpy as np
import tokenizers
import triton_python_backend_utils as pb_utils

# libgomp busy-waits by default; next to the server's polling threads on a small CPU that made every
# torch call ~30x slower inside the stub (see pytorch_model.py). Read when torch loads: set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the Hub


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


class TritonPythonModel:
    def initialize(self, args):
        import torch
        import yaml

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
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer, self.pad_id, serving = load_tokenizer(os.path.join(version_dir, "tokenizer"))
        path = os.path.join(version_dir, "model")
        with open(os.path.join(path, "MLmodel")) as fh:
            flavors = yaml.safe_load(fh).get("flavors") or {}
        if "sentence_transformers" in flavors:
            import mlflow.sentence_transformers

            self.model = mlflow.sentence_transformers.load_model(path).to("cpu").eval()
            self.sentence_transformer = True
        else:
            import mlflow.transformers

            parts = mlflow.transformers.load_model(path, return_type="components", device="cpu")
            self.model = parts["model"].eval()
            self.sentence_transformer = False
        self.pooling = serving.get("pooling", "mean")
        self.normalize = bool(serving.get("normalize", True))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])

    def _embed(self, tokens):
        torch = self.torch
        ids = torch.from_numpy(tokens["input_ids"])
        mask = torch.from_numpy(tokens["attention_mask"])
        with torch.inference_mode():
            if self.sentence_transformer:
                features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
                return self.model(features)["sentence_embedding"].float().numpy()
            hidden = self.model(input_ids=ids, attention_mask=mask)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled.float().numpy()

    def execute(self, requests):
        per_request = [texts_of(r, self.input_name) for r in requests]
        texts = [t for batch in per_request for t in batch]
        embeddings = self._embed(tokenize(self.tokenizer, self.pad_id, texts))
        bounds = np.cumsum([len(b) for b in per_request])[:-1]
        responses = []
        for part in np.split(embeddings, bounds):
            tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(part.astype(self.output_dtype)))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.model = None
