"""``Authorization: Bearer <key>`` checked against the key store, without blocking the event loop.

Lookups by key id run in a worker thread and are cached for ``ttl_s`` (so a revoked key is refused
within that time); the secret is compared with the stored salted digest in constant time. Neither the key
nor its secret is ever logged or put in an error message. Given the request, a key that passes is admitted by
:class:`~modelops.serving.gateway.quotas.Quotas` (rate, concurrency) and its lease is left in the request's scope
for :class:`ReleaseLeases` to give back when the response is sent; failed lookups count against the client's
address.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from modelops.serving.gateway.errors import GatewayError
from modelops.serving.gateway.keys import ApiKey, KeyCache, KeyStore, split_key
from modelops.serving.gateway.quotas import SCOPE_KEY, Quotas


class Authenticator:
    """Turns an ``Authorization`` header into the :class:`ApiKey` it names, or a 401 (or 429)."""

    def __init__(self, store: KeyStore, ttl_s: float = 1.0, quotas: Quotas | None = None):
        self.store = store
        self.cache = KeyCache(ttl_s)
        self.quotas = quotas or Quotas()

    async def authenticate(self, header: str | None, request: Request | None = None) -> ApiKey:
        """The active key of ``header``; with ``request``, admitted under its limits.

        Raises:
            GatewayError: 401 when the header is missing, malformed, or names an unknown, revoked or expired key;
                429 (with ``Retry-After``) over the key's rate or concurrency, the gateway's concurrency, or the
                client address's failed lookups.
        """
        client = request.client.host if request is not None and request.client else ""
        key = await self._verify(header, client)
        if key.expired():
            raise GatewayError(401, f"API key {key.name!r} expired at {key.expires_at}")
        if request is not None and SCOPE_KEY not in request.scope:
            request.scope[SCOPE_KEY] = self.quotas.admit(key)
        return key

    async def _verify(self, header: str | None, client: str) -> ApiKey:
        """The key of ``header``; a store lookup (a cache miss) is refused (429) for a client whose failed lookups
        ran out, and every failure counts against it. A key id found valid before (cached, even past its TTL) is
        never held up by that: it is looked up again (a revocation still shows) whatever its address sprayed."""
        if not header:
            raise GatewayError(401, "missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GatewayError(401, "missing API key: send 'Authorization: Bearer <key>'")
        parts = split_key(token.strip())
        if parts is None:
            raise GatewayError(401, "invalid API key")
        key_id, secret = parts
        hit, stored = self.cache.get(key_id)
        if not hit:
            if client and not self.cache.known(key_id):
                self.quotas.check_client(client)
            stored = await asyncio.to_thread(self.store.lookup, key_id)
            self.cache.put(key_id, stored)
        if stored is None or not self.store.verify(stored, secret):
            if client:
                self.quotas.charge_miss(client)
            raise GatewayError(401, "invalid or revoked API key")
        return stored.key

    async def check_active(self, key: ApiKey) -> None:
        """Raise 401 when ``key`` was revoked or expired since it was admitted (a long stream asks this).

        Raises:
            GatewayError: 401 naming the revocation or the expiry.
        """
        hit, stored = self.cache.get(key.id)
        if not hit:
            stored = await asyncio.to_thread(self.store.lookup, key.id)
            self.cache.put(key.id, stored)
        if stored is None:
            raise GatewayError(401, f"API key {key.name!r} was revoked during the request")
        if stored.key.expired():
            raise GatewayError(401, f"API key {key.name!r} expired at {stored.key.expires_at} during the request")

    async def flush_usage(self) -> None:
        """Write the requests and last use counted since the last flush to the key store."""
        usage = self.quotas.take_usage()
        if usage:
            await asyncio.to_thread(self.store.record_usage, usage)

    @staticmethod
    def authorize(key: ApiKey, model: str, exists: bool) -> None:
        """403 for a model the key is not granted; 404 for an unknown model, but only to a ``*`` key.

        A narrower key gets the same 403 for a model that does not exist as for one it may not use, so it
        cannot probe which models exist.

        Raises:
            GatewayError: 403 or 404.
        """
        if key.grants_all:
            if not exists:
                raise GatewayError(404, f"unknown model {model!r}")
            return
        if not exists or not key.grants(model):
            raise GatewayError(403, f"API key {key.name!r} is not granted model {model!r}")


class ReleaseLeases:
    """ASGI middleware: give back the lease an admitted request left in its scope once its response is sent (a
    stream's once its last chunk is), however the request ends."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            lease = scope.pop(SCOPE_KEY, None)
            if lease is not None:
                lease.release()
