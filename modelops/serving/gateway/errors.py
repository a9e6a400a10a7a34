"""Errors of the gateway: one exception type, answered as KServe's ``{"error": "..."}`` with its status."""

from __future__ import annotations

import json

from starlette.responses import Response


class GatewayError(Exception):
    """A request the gateway answers with ``status`` and ``{"error": message}`` (plus ``headers``, e.g. a 429's
    ``Retry-After``)."""

    def __init__(self, status: int, message: str, deployment: str = "", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.deployment = deployment
        self.headers = headers or {}

    def with_headers(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        """The error's own headers plus ``headers`` (None when both are empty)."""
        merged = {**self.headers, **(headers or {})}
        return merged or None


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error response; ``message`` is kept to one line."""
    body = json.dumps({"error": " ".join(message.split())}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)
