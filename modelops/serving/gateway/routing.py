"""Picking a deployment for a public model name from the weights of its routes file.

A :class:`RouteTable` is an immutable snapshot of one routes file (see :mod:`modelops.serving.routes`);
the watcher replaces it as a whole when the file changes, so a request always picks from one consistent
table. Without a session the pick is a smooth weighted round robin (nginx's algorithm: over any 100
consecutive picks each deployment gets exactly its weight, interleaved); with an ``X-Session-Id`` the
session is hashed onto the cumulative weights, so one session keeps its deployment while the weights
stay the same.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from modelops.serving.routes import InvalidRoutes, routes_weights


@dataclass
class RouteTable:
    """The live deployments of ``model`` with their integer weights (zero weights are dropped)."""

    model: str
    revision: int
    deployments: tuple[str, ...]
    weights: tuple[int, ...]
    _cumulative: list[int] = field(default_factory=list, repr=False)
    _current: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        total = 0
        for weight in self.weights:
            total += weight
            self._cumulative.append(total)
        self._current = [0] * len(self.weights)

    @property
    def total(self) -> int:
        return self._cumulative[-1] if self._cumulative else 0

    def pick(self, session: str | None = None) -> str | None:
        """One deployment for a request, or ``None`` when no deployment has a weight."""
        total = self.total
        if total <= 0:
            return None
        if len(self.deployments) == 1:
            return self.deployments[0]
        if session:
            point = int.from_bytes(hashlib.blake2b(session.encode(), digest_size=8).digest(), "big") % total
            return self.deployments[bisect.bisect_right(self._cumulative, point)]
        # Smooth weighted round robin; runs on the event loop only, so no lock is needed.
        current = self._current
        best = 0
        for i, weight in enumerate(self.weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= total
        return self.deployments[best]


class RoutesFileError(ValueError):
    """A routes file that cannot be served (bad JSON or weights); the previous table is kept."""


def parse_routes(model: str, data: bytes) -> RouteTable:
    """The :class:`RouteTable` of a routes file's bytes.

    Raises:
        RoutesFileError: not JSON, not a routes document, or weights that break the routes contract. An
            empty ``routes`` list is valid here: the model exists but has no deployment (503).
    """
    try:
        doc: Any = json.loads(data)
        weights = routes_weights(doc["routes"])
        revision = int(doc.get("revision", 0))
    except InvalidRoutes as exc:  # an InvalidRoutes is a ValueError too: first
        raise RoutesFileError(f"routes file of {model!r}: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise RoutesFileError(f"routes file of {model!r} is not a routes document: {exc}") from None
    live = [(d, w) for d, w in weights.items() if w > 0]
    return RouteTable(
        model=model,
        revision=revision,
        deployments=tuple(d for d, _ in live),
        weights=tuple(w for _, w in live),
    )
