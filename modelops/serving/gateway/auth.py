"""``Authorization: Bearer <key>`` checked against the key store, without blocking the event loop.

Lookups by key id run in a worker thread and are cached for ``ttl_s`` (so a revoked key is refused
within that time); the secret is compared with the stored salted digest in constant time. Neither the key
nor its secret is ever logged or put in an error message.
"""

from __future__ import annotations

import asyncio

from modelops.serving.gateway.errors import GatewayError
from modelops.serving.gateway.keys import ApiKey, KeyCache, KeyStore, split_key


class Authenticator:
    """Turns an ``Authorization`` header into the :class:`ApiKey` it names, or a 401."""

    def __init__(self, store: KeyStore, ttl_s: float = 1.0):
        self.store = store
        self.cache = KeyCache(ttl_s)

    async def authenticate(self, header: str | None) -> ApiKey:
        """The active key of ``header``.

        Raises:
            GatewayError: 401 when the header is missing, malformed, or names an unknown or revoked key.
        """
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
            stored = await asyncio.to_thread(self.store.lookup, key_id)
            self.cache.put(key_id, stored)
        if stored is None or not self.store.verify(stored, secret):
            raise GatewayError(401, "invalid or revoked API key")
        return stored.key

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
