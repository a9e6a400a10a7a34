"""Per-model caps of the OpenAI API: ``max_tokens``, prompt length, embeddings input length, stream deadline.

The gateway's defaults come from settings (``MODELOPS_GATEWAY_MAX_TOKENS``, ``..._MAX_PROMPT_CHARS``,
``..._MAX_INPUT_CHARS``, ``..._STREAM_DEADLINE_S``); a registered model may set its own with the MLflow tags
``modelops.max_tokens``, ``modelops.max_prompt_chars``, ``modelops.max_input_chars`` (positive integers, set by
whoever administers the registry; other values are ignored). A request over a cap is 400 naming the cap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from modelops.serving.gateway.openai_schema import OpenAIError

if TYPE_CHECKING:
    from modelops.serving.gateway.openai_schema import ChatCompletionRequest, EmbeddingRequest

TAGS = {"modelops.max_tokens": "max_tokens", "modelops.max_prompt_chars": "max_prompt_chars",
        "modelops.max_input_chars": "max_input_chars"}


def tag_caps(tags: dict[str, str]) -> dict[str, int]:
    """The caps a registered model's tags set (positive integers only)."""
    caps = {}
    for tag, name in TAGS.items():
        value = tags.get(tag, "").strip()
        if value.isdigit() and int(value) > 0:
            caps[name] = int(value)
    return caps


@dataclass(frozen=True)
class Caps:
    """Caps of one model (the gateway's defaults, or with the model's own from :func:`tag_caps`)."""

    max_tokens: int = 4096
    max_prompt_chars: int = 100_000
    max_input_chars: int = 20_000
    stream_deadline_s: float = 600.0

    def for_model(self, overrides: dict[str, int] | None) -> Caps:
        return replace(self, **overrides) if overrides else self

    def check_chat(self, body: ChatCompletionRequest) -> None:
        """Raises: OpenAIError: 400 for ``max_tokens`` (or ``max_completion_tokens``) or a prompt over its cap."""
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > self.max_tokens:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise OpenAIError(400, f"invalid '{param}': {asked} is over model {body.model!r}'s cap of "
                                   f"{self.max_tokens} tokens", param=param)
        chars = sum(len(m.text()) for m in body.messages)
        if chars > self.max_prompt_chars:
            raise OpenAIError(400, f"invalid 'messages': {chars} characters are over model {body.model!r}'s cap of "
                                   f"{self.max_prompt_chars}", param="messages")

    def check_embeddings(self, body: EmbeddingRequest) -> None:
        """Raises: OpenAIError: 400 for an input over its cap (the first one, by index)."""
        for i, text in enumerate(body.texts):
            if len(text) > self.max_input_chars:
                raise OpenAIError(400, f"invalid 'input[{i}]': {len(text)} characters are over model "
                                       f"{body.model!r}'s cap of {self.max_input_chars}", param="input")
