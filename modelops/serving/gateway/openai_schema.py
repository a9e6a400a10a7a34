"""OpenAI request bodies and OpenAI's error shape for the gateway's ``/v1`` API.

The request models follow OpenAI's chat-completions and embeddings specs field by field for what the gateway
serves; fields it does not act on (``user``, ``presence_penalty``, ``logprobs``...) are accepted and ignored, as
vLLM's server does, and the few it cannot honour (``n`` > 1, token-array inputs, images) are refused with 400 naming
the field. Errors read ``{"error": {"message", "type", "param", "code"}}`` with the status of the KServe side.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.responses import JSONResponse

from modelops.serving.gateway.errors import GatewayError

T = TypeVar("T", bound=BaseModel)
MAX_STOP = 4
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit per request

# status -> (OpenAI error type, code) of errors that carry no code of their own
_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "model_not_granted"),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    499: ("invalid_request_error", "client_closed_request"),
    502: ("server_error", "upstream_error"),
    503: ("server_error", "model_not_available"),
    504: ("server_error", "upstream_timeout"),
}


class OpenAIError(GatewayError):
    """A :class:`GatewayError` that names the request field at fault (``param``) and an OpenAI ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 deployment: str = ""):
        super().__init__(status, message, deployment)
        self.param = param
        self.code = code


def error_body(err: GatewayError) -> dict[str, Any]:
    """OpenAI's error object of ``err`` (message kept to one line)."""
    kind, code = _KINDS.get(err.status, ("server_error", None))
    code = getattr(err, "code", None) or code
    param = getattr(err, "param", None)
    if param is None and code == "model_not_found":
        param = "model"
    return {"error": {"message": " ".join(err.message.split()), "type": kind, "param": param, "code": code}}


def error_response(err: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    """``err`` as an OpenAI error response with its status."""
    return JSONResponse(error_body(err), status_code=err.status, headers=err.with_headers(headers))


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ContentPart(BaseModel):
    """One part of a message's content list; only text parts are served."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message of ``messages``: role and text content (a string or a list of text parts)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(value, list):
            for part in value:
                if part.type != "text" or part.text is None:
                    raise ValueError(f"content parts of type {part.type!r} are not supported (text only)")
        return value

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or ""


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return value

    def messages_json(self) -> str:
        """The ``messages_json`` input of the LLM contract: role and text of each message."""
        return json.dumps([{"role": m.role, "content": m.text()} for m in self.messages], ensure_ascii=False)

    def params_json(self) -> str:
        """The ``params_json`` input: only the parameters the client set (the model applies its defaults)."""
        params: dict[str, Any] = {}
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        for name in ("temperature", "top_p", "seed"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.stop:
            params["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return json.dumps(params)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``: text in (a string or a list of strings), floats or base64 out."""

    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not all(isinstance(v, str) for v in value):
            raise ValueError("token arrays are not supported: send text (a string or a list of strings)")
        return value

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("must not be empty")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(texts)}")
        if any(not t for t in texts):
            raise ValueError("must not contain empty strings")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse_body(model: type[T], body: bytes) -> T:
    """The request body as ``model``; 400 naming the first bad field.

    Raises:
        OpenAIError: 400 for malformed or too deeply nested JSON, a body that is not an object, or a field that
            breaks the spec.
    """
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise OpenAIError(400, "the request body is not UTF-8") from None
    except ValueError as exc:
        raise OpenAIError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise OpenAIError(400, "malformed JSON: the request body is nested deeper than the gateway accepts") from None
    if not isinstance(doc, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        item = err.errors()[0]
        param = _param(item["loc"])
        what = item["msg"].removeprefix("Value error, ")
        raise OpenAIError(400, f"invalid '{param}': {what}" if param else what, param=param or None) from None


def _param(loc: tuple[Any, ...]) -> str:
    """``("messages", 0, "role")`` -> ``messages[0].role``; pydantic's union-member names are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "float", "bool") or "[" in part or part.startswith("function-"):
            continue
        else:
            out += f".{part}" if out else part
    return out
