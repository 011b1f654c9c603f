"""A recommended ``CHANNEL_LAYERS`` entry for Redis, safe to import from a settings module.

Two defaults of the current stack lose live frames, so live sessions should not run on them:

- redis-py 8 reads with a 5 s socket timeout, the same as channels-redis' blocking receive:
  an idle channel's ``receive()`` then raises ``TimeoutError`` (django/channels_redis#422),
  and the live session stops. ``socket_timeout=None`` restores redis-py 7's behaviour.
- channels-redis drops, silently, what exceeds a channel's ``capacity`` (default 100); every
  consumer of a process shares one inbox, so a few dozen streaming conversations lose frames.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CAPACITY = 5000


def redis_channel_layer(url: str, *, prefix: str = "asgi", capacity: int = DEFAULT_CAPACITY,
                        **config: Any) -> dict[str, Any]:
    """``CHANNEL_LAYERS["default"]`` for channels-redis at ``url`` with live-safe settings."""
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": url, "socket_timeout": None}], "prefix": prefix,
                   "capacity": capacity, **config},
    }


__all__ = ["DEFAULT_CAPACITY", "redis_channel_layer"]
