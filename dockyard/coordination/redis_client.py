"""A Redis client from Distribution's ``redis`` section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dockyard.config.model import Redis as RedisConfig

if TYPE_CHECKING:  # redis is imported only where a redis section is set
    import redis.asyncio as aioredis

# A Python worker can pause longer than a Go process (a collection, a busy event loop);
# timeouts copied from Distribution's examples (10ms) would fail requests for that alone.
MINIMUM_TIMEOUT = 0.5
DEFAULT_TIMEOUT = 5.0


def _seconds(value: object, default: float) -> float:
    seconds = getattr(value, "total_seconds", None)
    if seconds is None:
        return default
    return max(float(seconds()), MINIMUM_TIMEOUT)


def connect(config: RedisConfig) -> aioredis.Redis:
    """A pooled client; connections open on first use, so nothing blocks here."""
    import redis.asyncio as aioredis

    tls = config.tls
    ca_data = "".join(Path(path).read_text() for path in tls.clientcas) or None
    read_timeout = max(
        _seconds(config.readtimeout, DEFAULT_TIMEOUT),
        _seconds(config.writetimeout, DEFAULT_TIMEOUT),
    )
    return aioredis.Redis(
        host=config.host,
        port=config.port,
        db=config.db,
        username=config.username,
        password=config.password,
        socket_connect_timeout=_seconds(config.dialtimeout, DEFAULT_TIMEOUT),
        socket_timeout=read_timeout,
        max_connections=config.max_connections,
        ssl=tls.active,
        ssl_certfile=tls.certificate,
        ssl_keyfile=tls.key,
        ssl_ca_data=ca_data,
        client_name="dockyard",
    )
