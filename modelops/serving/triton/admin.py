"""Triton's model control behind an admin header: the server flags and a client that sends the header.

Triton 2.51 restricts API groups per protocol with ``--http-restricted-api=<apis>:<header>=<value>`` and
``--grpc-restricted-protocol=<apis>:<key>=<value>``. Over HTTP the header name is matched case-insensitively;
over gRPC Triton expects the metadata key ``triton-grpc-protocol-<key>`` (gRPC keys are lower-case), see
:func:`grpc_metadata`. A refused call answers HTTP 403 (gRPC UNAVAILABLE) naming the expected header.

Inference, health, metadata and statistics stay open: the gateway is the authenticated entrance for
inference, and Prometheus/perf_analyzer read statistics. The token is a secret: never log it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

ADMIN_HEADER = "X-ModelOps-Admin"
# The serving Triton's locked API groups (every group that changes the server or exposes its internals).
RESTRICTED_APIS: tuple[str, ...] = ("model-repository", "model-config", "shared-memory", "trace", "logging")
# The methods of ``tritonclient.http.InferenceServerClient`` that belong to the restricted groups.
_ADMIN_METHODS = frozenset({
    "load_model", "unload_model", "get_model_repository_index", "get_model_config",
    "get_system_shared_memory_status", "register_system_shared_memory", "unregister_system_shared_memory",
    "get_cuda_shared_memory_status", "register_cuda_shared_memory", "unregister_cuda_shared_memory",
    "get_trace_settings", "update_trace_settings", "get_log_settings", "update_log_settings",
})  # fmt: skip


def new_token() -> str:
    """A fresh random admin token (43 url-safe characters, no ``,``/``:``/``=`` that the flags parse)."""
    return secrets.token_urlsafe(32)


def _check(header: str, token: str) -> None:
    if not header or any(c in header for c in ",:= ") or not token or any(c in token for c in ",:= "):
        raise ValueError("the Triton admin header and token must be non-empty and free of ',', ':', '=' and spaces")


def restricted_args(header: str, token: str, apis: Iterable[str] = RESTRICTED_APIS) -> list[str]:
    """The tritonserver flags that lock ``apis`` behind ``header: token`` on HTTP and gRPC.

    Raises:
        ValueError: an empty header or token, or one holding a character the flag syntax uses.
    """
    _check(header, token)
    groups = ",".join(apis)
    return [
        f"--http-restricted-api={groups}:{header}={token}",
        f"--grpc-restricted-protocol={groups}:{header.lower()}={token}",
    ]


def admin_headers(header: str, token: str) -> dict[str, str]:
    """The HTTP headers that open the restricted APIs."""
    _check(header, token)
    return {header: token}


def grpc_metadata(header: str, token: str) -> dict[str, str]:
    """The gRPC metadata that opens the restricted protocols (Triton prefixes the key)."""
    _check(header, token)
    return {f"triton-grpc-protocol-{header.lower()}": token}


class AdminClient:
    """A ``tritonclient.http.InferenceServerClient`` that sends the admin header on model-control calls.

    Every other attribute (inference, readiness, metadata, ``close``) is the wrapped client's. The token is
    kept out of ``repr``.

    Args:
        client: the ``tritonclient.http`` client to wrap.
        headers: the admin headers (:func:`admin_headers`).
    """

    def __init__(self, client: Any, headers: Mapping[str, str]) -> None:
        self._client = client
        self._headers = dict(headers)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in _ADMIN_METHODS:
            return attr

        def call(*args: Any, headers: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
            return attr(*args, headers={**(headers or {}), **self._headers}, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"AdminClient({self._client!r}, headers=[{', '.join(self._headers)}])"


def with_admin(client: Any, header: str | None, token: str | None) -> Any:
    """``client`` wrapped in :class:`AdminClient` when a token is given, else ``client`` itself."""
    if not token:
        return client
    return AdminClient(client, admin_headers(header or ADMIN_HEADER, token))
