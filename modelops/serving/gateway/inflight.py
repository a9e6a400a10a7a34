"""Requests in flight per deployment: what a rollout waits on before it unloads a replaced deployment.

A deployment removed from the routes gets no new request, but requests already sent to it finish. The
rollout side (issue 9, point 9) stops routing to the old deployment, then waits until
:meth:`InFlight.count` is 0 (in-process: :meth:`InFlight.wait_idle`; from outside: the
``modelops_gateway_in_flight{deployment=...}`` gauge of ``/metrics``), and only then unloads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    """Counters of requests in flight per deployment; used from the event loop only."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._idle: dict[str, asyncio.Event] = {}

    def count(self, deployment: str) -> int:
        return self._counts.get(deployment, 0)

    def snapshot(self) -> dict[str, int]:
        """Deployments with requests in flight now."""
        return {d: n for d, n in self._counts.items() if n}

    @contextmanager
    def track(self, deployment: str) -> Iterator[None]:
        """Count one request to ``deployment`` for the duration of the block."""
        self._counts[deployment] = self._counts.get(deployment, 0) + 1
        try:
            yield
        finally:
            left = self._counts[deployment] - 1
            if left:
                self._counts[deployment] = left
            else:
                del self._counts[deployment]
                event = self._idle.pop(deployment, None)
                if event is not None:
                    event.set()

    async def wait_idle(self, deployment: str, timeout_s: float | None = None) -> bool:
        """Wait until ``deployment`` has no request in flight; ``False`` when ``timeout_s`` passed first."""
        if not self.count(deployment):
            return True
        event = self._idle.setdefault(deployment, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
