"""The recommended Redis layer keeps an idle receive alive (redis-py 8's read timeout)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from channels_redis.core import RedisChannelLayer

from django_agent_session.layers import redis_channel_layer

REDIS = "redis://127.0.0.1:6379"


def layer(**config) -> RedisChannelLayer:
    return RedisChannelLayer(**redis_channel_layer(REDIS, prefix=f"t{uuid.uuid4().hex}",
                                                   **config)["CONFIG"])


async def test_idle_receive_outlives_the_client_read_timeout():
    """A live session's channel may be idle for minutes; its receive must not time out."""
    redis = layer()
    channel = await redis.new_channel()

    async def later():
        await asyncio.sleep(6)  # longer than redis-py 8's default 5 s socket timeout
        await redis.send(channel, {"type": "live.ping"})

    sender = asyncio.create_task(later())
    try:
        assert await asyncio.wait_for(redis.receive(channel), 10) == {"type": "live.ping"}
    finally:
        await sender
        await redis.flush()


def test_config_shape():
    config = redis_channel_layer("redis://h:1/0", prefix="p", expiry=30)
    assert config["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert config["CONFIG"] == {"hosts": [{"address": "redis://h:1/0", "socket_timeout": None}],
                                "prefix": "p", "capacity": 5000, "expiry": 30}


@pytest.mark.parametrize("capacity", [1000])
async def test_capacity_is_applied(capacity):
    assert layer(capacity=capacity).capacity == capacity
