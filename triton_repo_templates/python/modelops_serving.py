"""Helpers shared by the python-backend models; shipped next to each one as ``1/modelops_serving.py``.

A deployment imports nothing from the modelops repository: ``modelops.serving.triton.model_dir`` copies this file
into every version directory (the python backend's stub imports ``model.py`` with that directory on
``sys.path``), and the manifest covers it like any other file.

- config: :func:`parse_args` (config, string parameters, version directory), :func:`tensor_specs`;
- batching: :func:`read_inputs` -> :func:`run_batched` (the requests of one dynamic batch as one call,
  split back per request) -> :func:`responses`;
- runtimes: :func:`ort_session` (ONNX Runtime, tuned by parameters), :func:`model_session` (ONNX Runtime or
  OpenVINO, by the ``engine`` parameter), :func:`torch_threads`;
- raw text in: :func:`load_tokenizer`, :func:`tokenize` (repeats ``model_recipes.text_embedding.tokenize``;
  the tests check both give the same ids), :func:`texts_of`, :func:`embed_requests`.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


# -- config -----------------------------------------------------------------------------------------------
def parse_args(args):
    """``(config, params, version_dir)``: the parsed config.pbtxt, its string parameters, ``<model>/<version>``."""
    config = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    return config, params, os.path.join(args["model_repository"], args["model_version"])


def tensor_specs(config, key):
    """``[(name, numpy dtype)]`` of the config's ``input`` or ``output`` tensors."""
    return [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config[key]]


def is_batched(config):
    return int(config.get("max_batch_size", 0)) > 0


# -- batching ---------------------------------------------------------------------------------------------
def read_inputs(requests, inputs):
    """Per request, its input arrays in ``inputs`` order, cast to the declared dtypes."""
    return [
        [pb_utils.get_input_tensor_by_name(r, name).as_numpy().astype(dtype, copy=False) for name, dtype in inputs]
        for r in requests
    ]


def run_batched(feeds, run, batched):
    """``run(arrays) -> outputs`` once over all requests (concatenated on the batch axis) when ``batched``.

    Returns, per request, its slice of every output.
    """
    if batched and len(feeds) > 1:
        sizes = [len(f[0]) for f in feeds]
        results = run([np.concatenate([f[i] for f in feeds]) for i in range(len(feeds[0]))])
        bounds = np.cumsum(sizes)[:-1]
        return list(zip(*[np.split(res, bounds) for res in results]))
    return [run(f) for f in feeds]


def responses(per_request, outputs):
    """One ``InferenceResponse`` per request from its output arrays, cast to the declared dtypes."""
    return [
        pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(out.astype(dtype, copy=False)))
                for (name, dtype), out in zip(outputs, outs)
            ]
        )
        for outs in per_request
    ]


# -- runtimes ---------------------------------------------------------------------------------------------
def ort_session(path, params):
    """A CPU ONNX Runtime session tuned by the deployment's config.pbtxt parameters.

    - ``intra_op_threads``: ORT intra-op threads (0 = ORT's default).
    - ``ort_allow_spinning`` (default 0): ORT's intra-op threads spin between kernels by default. Next to the
      server's threads and clients on a small shared CPU that halved throughput (MiniLM INT8 in Triton,
      2 cores under load: ~50/s spinning, ~105/s not); on a quiet box spinning gains ~10%.
    - ``ort_disabled_optimizers`` (default ``SkipLayerNormFusion``, comma-separated, "none" for none): ORT's
      SkipLayerNormalization CPU kernel was ~7x slower than the Add + LayerNormalization it replaces here
      (MiniLM, 2 threads, ORT 1.32: dynamic INT8 at batch 8 went 222 -> 248 sentences/s without it).
      ``modelops.optimization.ort_cpu`` scores candidates with the same default.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(params.get("intra_op_threads") or 0)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", params.get("ort_allow_spinning") or "0")
    disabled = params.get("ort_disabled_optimizers") or "SkipLayerNormFusion"
    disabled = [] if disabled == "none" else [d.strip() for d in disabled.split(",") if d.strip()]
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def model_session(path, params):
    """The session that runs ``path``: :func:`ort_session`, or :class:`OpenVINOSession` when ``engine`` is ``openvino``."""
    if (params.get("engine") or "onnxruntime") == "openvino":
        return OpenVINOSession(path, params)
    return ort_session(path, params)


class _Named:
    def __init__(self, name):
        self.name = name


class OpenVINOSession:
    """An OpenVINO compiled model (CPU) behind ONNX Runtime's ``get_inputs()``/``run(names, feeds)``.

    Parameters (``modelops.serving.triton.model_dir.runtime_parameters``; ``modelops.optimization.openvino``
    scores candidates with the same properties): ``intra_op_threads`` -> ``INFERENCE_NUM_THREADS`` (0: all
    cores), ``ov_inference_precision`` -> ``INFERENCE_PRECISION_HINT`` (``f32``/``bf16``), ``ov_performance_hint``
    -> ``PERFORMANCE_HINT`` (default ``LATENCY``: one stream for the one request an instance runs at a time),
    ``ov_cpu_pinning`` (``0``/``1``) -> ``ENABLE_CPU_PINNING``.
    """

    def __init__(self, path, params):
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": params.get("ov_inference_precision") or "f32",
            "PERFORMANCE_HINT": params.get("ov_performance_hint") or "LATENCY",
        }
        if int(params.get("intra_op_threads") or 0):
            config["INFERENCE_NUM_THREADS"] = int(params["intra_op_threads"])
        if params.get("ov_cpu_pinning"):  # "0"/"1"; unset: OpenVINO's default
            config["ENABLE_CPU_PINNING"] = params["ov_cpu_pinning"] == "1"
        self.compiled = ov.Core().compile_model(path, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [_Named(i.get_any_name()) for i in self.compiled.inputs]
        self.outputs = {name: o for o in self.compiled.outputs for name in o.get_names()}

    def get_inputs(self):
        return self.inputs

    def run(self, names, feeds):
        """Outputs ``names`` (None: all, in graph order) as arrays the next call does not overwrite."""
        result = self.request.infer(feeds)
        outputs = self.compiled.outputs if names is None else [self.outputs[n] for n in names]
        return [np.array(result[o]) for o in outputs]


def torch_threads(torch, params):
    """``torch.set_num_threads`` from ``intra_op_threads`` (0: torch's default) and one inter-op thread."""
    threads = int(params.get("intra_op_threads") or 0)
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


# -- raw text in ------------------------------------------------------------------------------------------
def load_tokenizer(directory):
    """(tokenizers.Tokenizer without padding, truncating at max_seq_length; pad id; serving config)."""
    import tokenizers

    with open(os.path.join(directory, "serving.json")) as fh:
        config = json.load(fh)
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(config["max_seq_length"]))
    return tokenizer, int(config.get("pad_token_id", 0)), config


def tokenize(tokenizer, pad_id, texts):
    """Token ids and attention mask (int64), right-padded to the longest text."""
    encodings = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def texts_of(request, name):
    """The request's texts (one per row of its ``[batch, 1]`` BYTES tensor) as str.

    Raises:
        UnicodeDecodeError: a row is not UTF-8 (the caller answers that request alone with an error).
    """
    values = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def client_error(message):
    """A ``TritonError`` for a client's mistake: INVALID_ARG, which Triton answers with HTTP 400 (the default,
    INTERNAL, would be a 500). ``pb_utils.TritonError`` exists only once the stub runs, not at import."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def embed_requests(requests, config, tokenizer, pad_id, embed):
    """Tokenize the texts of all requests together, ``embed(tokens) -> [N, dim]`` once, answer per request.

    A request whose text is not UTF-8 gets its own error response (Triton answers it with 400) and is left
    out of the batch: one client's bad bytes never fail the other requests of the same dynamic batch.
    """
    (input_name, _), output = tensor_specs(config, "input")[0], tensor_specs(config, "output")[0]
    texts, errors = {}, {}
    for index, request in enumerate(requests):
        try:
            texts[index] = texts_of(request, input_name)
        except UnicodeDecodeError as exc:
            message = f"input '{input_name}' is not UTF-8 text: {exc.reason} at byte {exc.start}"
            errors[index] = pb_utils.InferenceResponse(error=client_error(message))
    good = list(texts.values())
    answers = {}
    if good:
        embeddings = embed(tokenize(tokenizer, pad_id, [t for row in good for t in row]))
        bounds = np.cumsum([len(row) for row in good])[:-1]
        answers = dict(zip(texts, responses([[part] for part in np.split(embeddings, bounds)], [output])))
    return [answers[i] if i in answers else errors[i] for i in range(len(requests))]
