"""Keep a run's optimization lease alive while a heavy step works, and stop the step the moment it is lost.

Resolve takes the (model, version) lease for ``OPTIMIZE_LOCK_TTL_S`` (6 h); select, publish and deploy renew it
as a fence (:func:`modelops.runs.resolve.fence_optimization`). Between them the heavy steps may run for hours, so
each step operator renews it when the step starts and then every ``interval_s`` while it runs. A renewal that finds
the lease lost (expired, taken over by another run) stops the step: its work could only be published beside the
other run's, so it is not worth finishing.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from modelops.runs.resolve import OPTIMIZE_LOCK_TTL_S, RunRefused, fence_optimization

if TYPE_CHECKING:
    from modelops.storage import Storage

log = logging.getLogger(__name__)

RENEW_EVERY_S = OPTIMIZE_LOCK_TTL_S / 6  # a lost renewal (S3 away) is retried next time, long before expiry


class LeaseKeeper:
    """Renew through ``renew`` now and every ``interval_s`` until closed; ``on_lost`` runs once when it is lost.

    Args:
        renew: renews the lease; raises :class:`RunRefused` when it was lost (any other error is a failed attempt,
            logged and retried at the next interval).
        on_lost: called from the keeper's thread with the one-line reason (the operator stops the step).
        interval_s: seconds between renewals.

    Raises (on enter):
        RunRefused: the lease is already lost: the step never starts.
    """

    def __init__(self, renew: Callable[[], None], on_lost: Callable[[str], None],
                 interval_s: float = RENEW_EVERY_S) -> None:  # fmt: skip
        self._renew, self._on_lost, self._interval_s = renew, on_lost, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None
        self.renewals = 0

    def renew_now(self) -> None:
        """Renew once (before a step starts). Raises :class:`RunRefused` when the lease was lost."""
        self._renew()
        self.renewals += 1

    def __enter__(self) -> LeaseKeeper:
        self.renew_now()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._renew()
                self.renewals += 1
            except RunRefused as exc:
                self.lost = str(exc)
                self._on_lost(self.lost)
                return
            except Exception as exc:  # noqa: BLE001 - S3 briefly away: the lease outlives several missed renewals
                log.warning("lease renewal failed, retrying in %.0f s: %s", self._interval_s,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def for_run(storage: Storage, spec_uri: str, owner: str | None, on_lost: Callable[[str], None],
            interval_s: float = RENEW_EVERY_S) -> LeaseKeeper | None:  # fmt: skip
    """The keeper of the run whose spec is at ``spec_uri``, held by ``owner`` (the Airflow run id).

    None without an owner (a step run by hand) or for a spec that names no model version (a hand-written one).
    """
    if not owner:
        return None
    spec = storage.read_json(spec_uri)
    if not spec.get("model_name") or not spec.get("model_version"):
        return None
    renew = functools.partial(fence_optimization, storage, spec.get("triton_bucket") or "triton", spec["model_name"],
                              spec["model_version"], owner)  # fmt: skip
    return LeaseKeeper(renew, on_lost, interval_s)
