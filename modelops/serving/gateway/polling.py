"""A background poll loop for the gateway's watchers (routes, rollout states): one poll at start, then every
``poll_s`` seconds until stopped. Subclasses implement :meth:`Poller.poll_once` (which must not raise)."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any


class Poller(ABC):
    """``start()`` polls once (so the first requests see fresh data), then polls in a named background task."""

    poll_s: float
    task_name = "modelops-gateway-poll"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def poll_once(self) -> Any:
        """Read the source once and apply it; must not raise (keep the last good state on failure)."""

    async def start(self) -> None:
        """One poll now, then poll in the background."""
        await self.poll_once()
        self._task = asyncio.create_task(self._loop(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.poll_once()
