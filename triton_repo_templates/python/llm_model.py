"""Triton python-backend model: a chat LLM, decoupled (one response per generated chunk).

Rendered by ``modelops.serving.triton.llm_dir``; config.pbtxt's ``runtime`` parameter picks the runtime:

- ``hf_eager``: transformers eager; ``1/model/`` holds the HF model directory (config, safetensors, tokenizer with
  its chat template); ``torch.set_num_threads`` from ``intra_op_threads``.
- ``ort_genai``: ONNX Runtime GenAI (e.g. the INT4 build of ``onnxruntime_genai.models.builder``); ``1/model/``
  holds the GenAI folder (genai_config.json, model.onnx, tokenizer files); the decoder session's
  ``intra_op_num_threads`` from ``intra_op_threads`` (a config overlay; the files stay as built).

The serving contract shared with the gateway:

- inputs ``messages_json`` (the OpenAI ``messages`` list as JSON) and ``params_json`` (a JSON object, every key
  optional: ``max_tokens`` 128, ``temperature`` 0.7 (0 = greedy), ``top_p`` 1.0, ``stop`` (strings), ``seed``);
- one response per decoded chunk with ``text`` (new text), ``finish_reason`` "", ``prompt_tokens`` and
  ``completion_tokens`` (counts so far), then a final response (flag ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``)
  with the held-back text, ``finish_reason`` "stop" | "length" and the final counts.

Concurrency: above 1, ``max_concurrency`` (llm_dir renders 4, measured best on the 2-core CPU) makes ``execute``
hand each request to a pool of that many threads and return at once; each thread streams with its request's
response sender (both runtimes release the GIL while they compute), further requests wait in the pool's queue.
With 1 (or the parameter absent) ``execute`` generates each request before returning, and Triton queues the rest
(and spreads them over ``instance_count`` instances): a queued request then waits for whole answers.

The generation itself is :func:`generate_chunks` (hf_eager) and :func:`generate_chunks_genai` (ort_genai), plain
functions with no Triton import, so the worker tests run them against ``transformers.generate`` and
onnxruntime_genai's own generation loop. Both share the stop-string and hold-back logic (:class:`StopText`).
"""

import importlib.util
import inspect
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# libgomp busy-waits by default; next to the server's threads on a small CPU that made torch calls far slower
# inside the stub (see pytorch_model.py). Read when torch loads: set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the Hub


def hide_shadowing_triton():
    """Make ``import triton`` fail when it would find a bare directory named ``triton`` (a namespace package).

    The stub's ``sys.path`` starts with its working directory; the embedded stack runs Triton in its state dir,
    which holds a ``triton/`` folder. torch._dynamo (imported by transformers' generation code) takes any
    importable ``triton`` for the OpenAI Triton compiler and fails on ``triton.language``.
    """
    try:
        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        return
    if spec is not None and spec.origin in (None, "namespace"):
        sys.modules["triton"] = None  # import triton -> ImportError: torch sees no Triton compiler


DEFAULTS = {"max_tokens": 128, "temperature": 0.7, "top_p": 1.0, "stop": [], "seed": None}
MAX_STOP_STRINGS = 4


@dataclass
class Chunk:
    """One step of a generation: the new text, ``finish_reason`` ("" until the last chunk) and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def parse_params(raw):
    """Validated generation parameters from ``params_json`` (a JSON object string, or "" for the defaults).

    Raises:
        ValueError: one line naming the bad field.
    """
    try:
        given = json.loads(raw) if raw and raw.strip() else {}
    except ValueError as exc:
        raise ValueError(f"params_json is not valid JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ValueError("params_json must be a JSON object")  # noqa: TRY004 - callers catch ValueError
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"params_json: unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    params = dict(DEFAULTS)
    params.update({k: v for k, v in given.items() if v is not None})
    max_tokens, temperature, top_p, stop = params["max_tokens"], params["temperature"], params["top_p"], params["stop"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ValueError(f"temperature must be a number in [0, 2], got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a non-empty string or a list of up to {MAX_STOP_STRINGS} non-empty strings")
    seed = params["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    params.update(temperature=float(temperature), top_p=float(top_p), stop=stop)
    return params


def parse_messages(raw):
    """The OpenAI ``messages`` list from ``messages_json``; every message needs a string ``role`` and ``content``.

    Raises:
        ValueError: one line saying what is wrong.
    """
    try:
        messages = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"messages_json is not valid JSON: {exc}") from None
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages_json must be a non-empty JSON list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with string 'role' and 'content'")  # noqa: TRY004
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _held_back(text, stops):
    """How many trailing characters of ``text`` may still become the start of a stop string."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                keep = max(keep, n)
                break
    return keep


class StopText:
    """Settles a growing answer text against stop strings; the part of the stop logic both runtimes share.

    :meth:`step` takes the whole text so far and returns the new settled piece: a tail that may still become a
    stop string, or an incomplete UTF-8 character (U+FFFD from a partial decode), is held back. When a stop string
    appears, the piece ends before it and ``stopped`` is True.
    """

    def __init__(self, stops):
        self.stops = stops
        self.emitted = 0

    def step(self, text):
        """``(new settled text, stopped)`` for the whole text generated so far."""
        stops, emitted = self.stops, self.emitted
        cut = min((i for i in (text.find(s, max(0, emitted - len(s))) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            self.emitted = max(emitted, cut)
            return text[emitted:cut], True
        settled = len(text) - _held_back(text, stops)
        while settled > emitted and text[settled - 1] == "\ufffd":  # a multi-byte character not complete yet
            settled -= 1
        self.emitted = max(emitted, settled)
        return text[emitted:settled], False

    def rest(self, text):
        """What is left to send once the answer ended without a stop string."""
        return text[self.emitted :]


def _next_token(torch, logits, temperature, top_p, generator):
    if temperature == 0:
        return int(torch.argmax(logits, dim=-1))
    # same order as transformers' sampling: temperature, then nucleus (top_p) filtering
    scores = logits / temperature
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[-1:] = False  # always keep the most likely token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


def generate_chunks(model, tokenizer, messages, params, torch, cancelled=None):
    """Generate an answer token by token (KV cache), yielding one :class:`Chunk` per decoded step.

    Greedy (``temperature`` 0) gives the tokens ``model.generate(do_sample=False)`` gives. Text is decoded from
    all tokens so far and only the settled part is emitted: an incomplete UTF-8 sequence, or a tail that may
    become a stop string, is held back. A stop string ends the answer before it (``finish_reason`` "stop", as an
    end-of-sequence token does); ``max_tokens`` ends it with "length". The last chunk carries ``finish_reason``.

    Args:
        model: a causal LM (eval mode).
        tokenizer: its tokenizer, with a chat template.
        messages: ``[{"role", "content"}]``.
        params: :func:`parse_params` output.
        torch: the torch module (imported by the caller).
        cancelled: optional callable; generation stops (``finish_reason`` "cancelled") when it returns True.
    """
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    input_ids = encoded["input_ids"]
    prompt_tokens = int(input_ids.shape[-1])
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    generator = None
    if params["seed"] is not None:
        generator = torch.Generator().manual_seed(int(params["seed"]))
    # transformers 5.x renamed the KV-cache argument past_key_values -> cache (the old name warns)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    stopper, tokens, past, step_input = StopText(params["stop"]), [], None, input_ids
    finish = "length"
    with torch.inference_mode():
        for _ in range(params["max_tokens"]):
            if cancelled is not None and cancelled():
                finish = "cancelled"
                break
            out = model(input_ids=step_input, use_cache=True, **{cache_kw: past})
            past = getattr(out, cache_kw)
            token = _next_token(torch, out.logits[0, -1, :].float(), params["temperature"], params["top_p"], generator)
            if token in eos_ids:
                finish = "stop"
                break
            tokens.append(token)
            step_input = torch.tensor([[token]], dtype=input_ids.dtype)
            piece, stopped = stopper.step(tokenizer.decode(tokens, skip_special_tokens=True))
            yield Chunk(piece, "stop" if stopped else "", prompt_tokens, len(tokens))
            if stopped:
                return
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokens else ""
    yield Chunk(stopper.rest(text), finish, prompt_tokens, len(tokens))


def genai_search_options(params, prompt_tokens):
    """onnxruntime_genai search options for :func:`parse_params` output (``temperature`` 0 = greedy)."""
    options = {"max_length": prompt_tokens + params["max_tokens"], "do_sample": params["temperature"] > 0}
    if options["do_sample"]:
        # top_k 0: nucleus (top_p) sampling over the whole vocabulary, as the hf_eager runtime does
        options.update(temperature=params["temperature"], top_p=params["top_p"], top_k=0)
        options["random_seed"] = -1 if params["seed"] is None else int(params["seed"])  # -1: a random seed
    return options


def generate_chunks_genai(model, tokenizer, messages, params, og, cancelled=None):
    """:func:`generate_chunks` for an ``onnxruntime_genai`` model: one :class:`Chunk` per generated token.

    The prompt is the model's chat template (``Tokenizer.apply_chat_template``); tokens come from
    ``og.Generator`` and are decoded with a ``TokenizerStream`` (which holds back incomplete characters itself).
    Greedy (``temperature`` 0) gives onnxruntime_genai's own greedy tokens. Stop strings, ``max_tokens`` and
    end-of-sequence finish the answer as in :func:`generate_chunks`.

    Args:
        model: an ``og.Model``.
        tokenizer: its ``og.Tokenizer``.
        messages: ``[{"role", "content"}]``.
        params: :func:`parse_params` output.
        og: the onnxruntime_genai module (imported by the caller).
        cancelled: optional callable; generation stops (``finish_reason`` "cancelled") when it returns True.
    """
    prompt = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    input_ids = tokenizer.encode(prompt)
    prompt_tokens = len(input_ids)
    search = og.GeneratorParams(model)
    search.set_search_options(**genai_search_options(params, prompt_tokens))
    generator = og.Generator(model, search)
    generator.append_tokens(input_ids)
    stream, eos_ids = tokenizer.create_stream(), set(tokenizer.eos_token_ids)
    stopper, text, count, finish = StopText(params["stop"]), "", 0, "length"
    while count < params["max_tokens"] and not generator.is_done():
        if cancelled is not None and cancelled():
            finish = "cancelled"
            break
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token in eos_ids:
            finish = "stop"
            break
        count += 1
        text += stream.decode(token)
        piece, stopped = stopper.step(text)
        yield Chunk(piece, "stop" if stopped else "", prompt_tokens, count)
        if stopped:
            return
    yield Chunk(stopper.rest(text), finish, prompt_tokens, count)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.runtime = params.get("runtime") or "hf_eager"
        threads = int(params.get("intra_op_threads") or 0)
        self.max_concurrency = max(1, int(params.get("max_concurrency") or 1))
        path = os.path.join(args["model_repository"], args["model_version"], "model")
        if self.runtime == "ort_genai":
            import onnxruntime_genai as og

            genai_config = og.Config(path)
            if threads > 0:
                options = {"intra_op_num_threads": threads}
                genai_config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            self.og = og
            self.model = og.Model(genai_config)
            self.tokenizer = og.Tokenizer(self.model)
        elif self.runtime == "hf_eager":
            hide_shadowing_triton()
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if threads > 0:
                torch.set_num_threads(threads)
            self.torch = torch
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        else:
            raise ValueError(f"unknown runtime {self.runtime!r}; known: hf_eager, ort_genai")
        self.pool = None
        if self.max_concurrency > 1:
            self.pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="llm")

    def _chunks(self, messages, params, cancelled):
        if self.runtime == "ort_genai":
            return generate_chunks_genai(self.model, self.tokenizer, messages, params, self.og, cancelled)
        return generate_chunks(self.model, self.tokenizer, messages, params, self.torch, cancelled)

    def _send(self, sender, chunk, final=False):
        import numpy as np
        import triton_python_backend_utils as pb_utils

        tensors = [
            pb_utils.Tensor("text", np.array([chunk.text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("finish_reason", np.array([chunk.finish_reason.encode()], dtype=np.object_)),
            pb_utils.Tensor("prompt_tokens", np.array([chunk.prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor("completion_tokens", np.array([chunk.completion_tokens], dtype=np.int32)),
        ]
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)

    def _string_input(self, request, name, required):
        import triton_python_backend_utils as pb_utils

        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            if required:
                raise ValueError(f"input {name!r} is required")
            return ""
        value = tensor.as_numpy().reshape(-1)[0]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def execute(self, requests):
        for request in requests:
            if self.pool is None:
                self._answer(request)
            else:
                self.pool.submit(self._answer, request)

    def _answer(self, request):
        """Stream one request's answer with its response sender; every failure becomes the client's error."""
        import triton_python_backend_utils as pb_utils

        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        sender = request.get_response_sender()
        try:
            messages = parse_messages(self._string_input(request, "messages_json", required=True))
            params = parse_params(self._string_input(request, "params_json", required=False))
        except ValueError as exc:
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)
            return
        try:
            cancelled = getattr(sender, "is_cancelled", None)
            last = Chunk("", "", 0, 0)
            for chunk in self._chunks(messages, params, cancelled):
                if chunk.finish_reason:
                    last = chunk
                    break
                if chunk.text:  # a step whose text is held back sends nothing
                    self._send(sender, chunk)
            if last.finish_reason == "cancelled":
                sender.send(flags=final)
            else:
                self._send(sender, last, final=True)
        except Exception as exc:  # noqa: BLE001 - the client gets the reason, the model stays up
            error = pb_utils.TritonError(f"generation failed: {type(exc).__name__}: {exc}")
            sender.send(pb_utils.InferenceResponse(error=error), flags=final)

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # answer what was accepted before the model goes
        self.model = None
