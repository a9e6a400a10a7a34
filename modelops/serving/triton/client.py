"""Triton's HTTP API through ``tritonclient.http``: one client factory, one inference helper, one error text.

Used by the deploy step (the serving Triton) and by :class:`~modelops.serving.triton.local_server.TritonProcess`
(a benchmark's own server). ``tritonclient`` is imported when a function is called, so importing this
module stays cheap.
"""

from __future__ import annotations

from http.client import HTTPException
from typing import Any

import numpy as np

#: What a lost Triton raises through ``tritonclient.http`` (geventhttpclient): a refused or reset socket, a
#: timeout (``OSError``), or a connection closed before the answer (``HTTPConnectionClosed``, an ``HTTPException``).
UNREACHABLE: tuple[type[BaseException], ...] = (OSError, HTTPException)


def http_client(url: str, timeout_s: float = 60.0) -> Any:
    """A ``tritonclient.http.InferenceServerClient`` for ``host:port`` whose connect and read timeouts are ``timeout_s``.

    Args:
        url: ``host:port`` (no scheme), as Triton's clients take it.
        timeout_s: connection and network timeout in seconds.
    """
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)


def infer(
    client: Any, model: str, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
) -> dict[str, np.ndarray]:
    """One inference (binary tensors): numpy arrays in, numpy arrays out.

    Args:
        client: a ``tritonclient.http.InferenceServerClient``.
        model: the model (deployment) name.
        inputs: input name -> array; object arrays of ``str``/``bytes`` are sent as BYTES.
        output_names: outputs to ask for; None: every output the model has.

    Returns:
        Output name -> array (BYTES outputs as object arrays of ``bytes``).

    Raises:
        tritonclient.utils.InferenceServerException: the server refused the request.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    request = []
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        request.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n) for n in output_names] if output_names is not None else None
    response = client.infer(model, request, outputs=outputs)
    names = output_names if output_names is not None else [o["name"] for o in response.get_response()["outputs"]]
    return {n: response.as_numpy(n) for n in names}


def error_text(exc: BaseException) -> str:
    """The server's message of an ``InferenceServerException`` (its ``str`` repeats the status), else ``str(exc)``."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return (text or type(exc).__name__).strip()


def error_status(exc: BaseException) -> str:
    """The HTTP status an ``InferenceServerException`` carries (``"400"``), or ``"0"`` when none (no connection)."""
    status = getattr(exc, "status", None)
    return str((status() if callable(status) else None) or 0)
