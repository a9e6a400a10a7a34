"""The gateway's configuration, taken from the ``gateway`` group of :mod:`modelops.settings` in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelops.serving.gateway.caps import Caps
from modelops.settings import Settings

MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    """What one gateway process needs.

    Args:
        triton_url: Triton's HTTP endpoint (``http://host:port``).
        routes_uri: ``s3://bucket/routes`` or a local directory of routes files.
        keys_db: the SQLite key store.
        max_body_bytes: larger request bodies get 413.
        routes_poll_s: seconds between routes polls.
        upstream_timeout_s: timeout of one request to Triton.
        key_ttl_s: how long a key lookup is cached (a revoked key works at most this long).
        max_connections: size of the pooled HTTP client to Triton.
        mlflow_url: MLflow's base URL for model descriptions on ``/v1/models`` (empty: none are shown).
        registry_ttl_s: how long an MLflow answer is cached.
        mlflow_auth: ``(username, password)`` sent to MLflow as basic auth (None: anonymous).
        max_in_flight: requests admitted at once over all keys (0: no cap); more get 429.
        invalid_key_rate: failed key lookups per client address and second (burst 4x); more get 429.
        usage_flush_s: seconds between writes of the keys' usage to the key store.
        caps: the OpenAI API's default caps (max_tokens, prompt and input length, stream deadline).
        embed_parallel: Triton calls one embeddings request makes at once.
    """

    triton_url: str
    routes_uri: str
    keys_db: Path
    max_body_bytes: int = 16 * MIB
    routes_poll_s: float = 0.5
    upstream_timeout_s: float = 60.0
    key_ttl_s: float = 1.0
    max_connections: int = 512
    mlflow_url: str = ""
    registry_ttl_s: float = 30.0
    mlflow_auth: tuple[str, str] | None = field(default=None, repr=False)
    max_in_flight: int = 1024
    invalid_key_rate: float = 5.0
    usage_flush_s: float = 5.0
    caps: Caps = field(default_factory=Caps)
    embed_parallel: int = 8

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> GatewayConfig:
        """The configuration of ``settings`` (default: the environment's)."""
        settings = settings or Settings.from_env()
        return cls(
            triton_url=settings.gateway_triton_url,
            routes_uri=settings.gateway_routes_uri,
            keys_db=settings.gateway_keys_db,
            max_body_bytes=int(settings.gateway.max_body_mb * MIB),
            routes_poll_s=settings.gateway.routes_poll_s,
            upstream_timeout_s=settings.gateway.upstream_timeout_s,
            mlflow_url=settings.gateway_mlflow_url,
            mlflow_auth=_mlflow_auth(settings),
            max_in_flight=settings.gateway.max_in_flight,
            invalid_key_rate=settings.gateway.invalid_key_rate,
            usage_flush_s=settings.gateway.usage_flush_s,
            caps=Caps(settings.gateway.max_tokens, settings.gateway.max_prompt_chars, settings.gateway.max_input_chars,
                      settings.gateway.stream_deadline_s),
            embed_parallel=settings.gateway.embed_parallel,
        )


def _mlflow_auth(settings: Settings) -> tuple[str, str] | None:
    """``(username, password)`` of ``MODELOPS_GATEWAY_MLFLOW_USERNAME``/``PASSWORD``, or None when unset."""
    gw = settings.gateway
    if not gw.mlflow_username:
        return None
    return gw.mlflow_username, gw.mlflow_password.get_secret_value() if gw.mlflow_password else ""
