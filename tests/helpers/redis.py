"""Redis channel layers of their own for tests, and watching what their client sends."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from django_agent_session.contrib.redis_layer import RedisChannelLayer
from django_agent_session.layers import redis_channel_layer

REDIS = "redis://127.0.0.1:6379"


def layer(backend: type[Any] = RedisChannelLayer, **config: object) -> Any:
    """A ``backend`` layer configured by ``redis_channel_layer`` under a prefix of its own
    (``flush()`` removes its keys)."""
    return backend(**redis_channel_layer(REDIS, prefix=f"t{uuid.uuid4().hex}",
                                         **config)["CONFIG"])


def executed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[str]]]:
    """Each pipelined round trip from now on: the Redis database it went to and its commands."""
    from redis.asyncio.client import Pipeline

    trips: list[tuple[int, list[str]]] = []
    execute = Pipeline.execute

    async def spy(pipe, *args, **kwargs):  # type: ignore[no-untyped-def]
        db = pipe.connection_pool.connection_kwargs.get("db", 0)
        trips.append((db, [str(command[0][0]) for command in pipe.command_stack]))
        return await execute(pipe, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", spy)
    return trips
