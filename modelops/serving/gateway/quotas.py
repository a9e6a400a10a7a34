"""Limits at the entrance: per-key rate and concurrency, a global concurrency cap, and failed lookups per client.

- A key's ``rate_limit`` (requests per second) is a token bucket holding one second's worth (at least one request);
  above it the gateway answers 429 with ``Retry-After`` (whole seconds until the next token).
- A key's ``max_concurrency`` and the gateway's ``max_in_flight`` count requests from admission until their
  response has been sent (a stream until its last chunk): above them, 429 with ``Retry-After: 1``.
- Failed key lookups (unknown id or wrong secret) are a token bucket per client address (``miss_rate`` per second,
  burst ``miss_burst``): a client spraying random keys gets 429 before each guess costs a key-store lookup.

All of it is per gateway process: with N replicas a key may get up to N times its rate; the limits live where the
requests are (no shared store on the request path). Usage (requests, last use) is counted here and written to the
key store in batches by the gateway.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from datetime import UTC, datetime

from modelops.serving.gateway.errors import GatewayError
from modelops.serving.gateway.keys import ApiKey

SCOPE_KEY = "modelops.lease"  # where an admitted request's lease waits for the end of its response


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored; starts full."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self) -> float:
        """Seconds until a token is there (0: one is)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> float:
        """Take a token: 0 when taken, else the seconds until one is there (nothing taken)."""
        wait = self.wait_s()
        if wait == 0:
            self.tokens -= 1
        return wait


def retry_after(wait_s: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(wait_s)))}


class Lease:
    """One admitted request's hold on its key's and the gateway's concurrency; :meth:`release` once it is done."""

    def __init__(self, quotas: Quotas, key_id: str):
        self._quotas, self._key_id, self._held = quotas, key_id, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._quotas._release(self._key_id)


class Quotas:
    """The limits of one gateway process (used from its event loop only).

    Args:
        max_in_flight: requests admitted at once over all keys (0: no global cap).
        miss_rate, miss_burst: failed key lookups allowed per client address.
        max_clients: client addresses remembered (least recently seen forgotten first).
    """

    def __init__(self, max_in_flight: int = 0, miss_rate: float = 5.0, miss_burst: float = 20.0,
                 max_clients: int = 10_000):
        self.max_in_flight = max_in_flight
        self.miss_rate, self.miss_burst, self.max_clients = miss_rate, miss_burst, max_clients
        self.in_flight: Counter[str] = Counter()
        self.total_in_flight = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._misses: OrderedDict[str, TokenBucket] = OrderedDict()
        self._usage: dict[str, tuple[int, str]] = {}

    # -- keys -----------------------------------------------------------------------------------
    def admit(self, key: ApiKey) -> Lease:
        """Admit one request of ``key`` or refuse it.

        Raises:
            GatewayError: 429 with ``Retry-After`` (rate, key concurrency or gateway concurrency).
        """
        if self.max_in_flight and self.total_in_flight >= self.max_in_flight:
            raise GatewayError(429, f"the gateway is at its limit of {self.max_in_flight} requests in flight; retry",
                               headers=retry_after(1))
        if key.max_concurrency is not None and self.in_flight[key.id] >= key.max_concurrency:
            raise GatewayError(429, f"API key {key.name!r} has {key.max_concurrency} request(s) in flight, its "
                                    "limit", headers=retry_after(1))
        if key.rate_limit is not None:
            bucket = self._buckets.get(key.id)
            if bucket is None or bucket.rate != key.rate_limit:
                bucket = self._buckets[key.id] = TokenBucket(key.rate_limit, max(1.0, key.rate_limit))
            wait = bucket.take()
            if wait:
                raise GatewayError(429, f"API key {key.name!r} is over its rate limit of {key.rate_limit:g} "
                                        "request(s)/s", headers=retry_after(wait))
        self.in_flight[key.id] += 1
        self.total_in_flight += 1
        count, _ = self._usage.get(key.id, (0, ""))
        self._usage[key.id] = (count + 1, datetime.now(UTC).isoformat(timespec="seconds"))
        return Lease(self, key.id)

    def _release(self, key_id: str) -> None:
        self.in_flight[key_id] -= 1
        if self.in_flight[key_id] <= 0:
            del self.in_flight[key_id]
        self.total_in_flight -= 1

    def take_usage(self) -> dict[str, tuple[int, str]]:
        """The requests and last use per key id since the last call (for :meth:`KeyStore.record_usage`)."""
        usage, self._usage = self._usage, {}
        return usage

    # -- failed lookups ---------------------------------------------------------------------------
    def _miss_bucket(self, client: str) -> TokenBucket:
        bucket = self._misses.get(client)
        if bucket is None:
            bucket = self._misses[client] = TokenBucket(self.miss_rate, self.miss_burst)
            while len(self._misses) > self.max_clients:
                self._misses.popitem(last=False)
        self._misses.move_to_end(client)
        return bucket

    def check_client(self, client: str) -> None:
        """Refuse a client whose failed lookups ran out, before its key is looked up.

        Raises:
            GatewayError: 429 with ``Retry-After``.
        """
        wait = self._miss_bucket(client).wait_s()
        if wait:
            raise GatewayError(429, "too many requests with invalid API keys from this address; retry later",
                               headers=retry_after(wait))

    def charge_miss(self, client: str) -> None:
        """Count one failed lookup (unknown id or wrong secret) of ``client``."""
        self._miss_bucket(client).take()
