"""Triton python-backend model: the text-embedding baseline, the MLflow model at ``1/model/`` in PyTorch eager.

Kind ``transformers_text``: same text-in/embedding-out contract and the same tokenization
(``1/tokenizer/``) as ``onnxruntime_text``, so a benchmark compares the encoder runtimes and nothing
else. A sentence-transformers model is loaded with ``mlflow.sentence_transformers`` and run through its
own modules (Transformer, Pooling, Normalize); a transformers model with ``mlflow.transformers``, pooled
as ``serving.json`` says. ``torch.set_num_threads`` comes from config.pbtxt.
"""

import os

from modelops_serving import embed_requests, load_tokenizer, parse_args, torch_threads

# libgomp busy-waits by default; next to the server's polling threads on a small CPU that made every
# torch call ~30x slower inside the stub (see pytorch_model.py). Read when torch loads: set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the Hub


class TritonPythonModel:
    def initialize(self, args):
        import torch
        import yaml

        self.config, params, version_dir = parse_args(args)
        torch_threads(torch, params)
        self.torch = torch
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
        return embed_requests(requests, self.config, self.tokenizer, self.pad_id, self._embed)

    def finalize(self):
        self.model = None
