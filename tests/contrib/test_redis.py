"""The recommended Redis layer keeps an idle receive alive (redis-py 8's read timeout)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer

from django_agent_session.contrib.redis_layer import RedisChannelLayer
from django_agent_session.layers import redis_channel_layer
from django_agent_session.runs.stream import RedisBuffer, buffer_for
from tests.helpers.live_server import wait_until
from tests.helpers.redis import REDIS, executed, layer


def another_process(redis: RedisChannelLayer) -> RedisChannelLayer:
    """A layer on the same Redis keys with a client prefix of its own, as another process's:
    what it sends to ``redis``'s channels goes through Redis."""
    return RedisChannelLayer(**redis_channel_layer(REDIS, prefix=redis.prefix.removesuffix(":"),
                                                   capacity=redis.capacity)["CONFIG"])


async def test_idle_receive_outlives_the_client_read_timeout():
    """A live session's channel may be idle for minutes; its receive must not time out."""
    redis = layer()
    channel = await redis.new_channel()

    async def later():
        await asyncio.sleep(6)  # longer than redis-py 8's default 5 s socket timeout
        await another_process(redis).send(channel, {"type": "live.ping"})

    sender = asyncio.create_task(later())
    try:
        assert await asyncio.wait_for(redis.receive(channel), 10) == {"type": "live.ping"}
    finally:
        await sender
        await redis.flush()


def test_config_shape():
    config = redis_channel_layer("redis://h:1/0", prefix="p", expiry=30)
    assert config["BACKEND"] == "django_agent_session.contrib.redis_layer.RedisChannelLayer"
    assert config["CONFIG"] == {"hosts": [{"address": "redis://h:1/0", "socket_timeout": None}],
                                "prefix": "p", "capacity": 5000, "expiry": 30}


@pytest.mark.parametrize("capacity", [1000])
async def test_capacity_is_applied(capacity):
    assert layer(capacity=capacity).capacity == capacity


def test_backend_is_channels_redis_and_buffers_runs_in_redis():
    """The subclass is still channels-redis: runs buffer their frames in Redis with it."""
    redis = layer()
    assert isinstance(redis, ChannelsRedisLayer)
    assert isinstance(buffer_for(redis), RedisBuffer)


def _pending(redis: RedisChannelLayer) -> int:
    """Tasks of the layer's reader still running in this loop."""
    return sum(1 for task in asyncio.all_tasks()
               if getattr(task.get_coro(), "__qualname__", "") == "RedisChannelLayer._read")


async def test_many_local_channels_share_one_reader_and_all_get_a_group_message():
    redis = layer()
    channels = [await redis.new_channel() for _ in range(30)]
    try:
        for channel in channels:
            await redis.group_add("g", channel)
        receives = [asyncio.create_task(redis.receive(c)) for c in channels]
        await asyncio.sleep(0.05)
        tasks_before = len(asyncio.all_tasks())
        assert _pending(redis) == 1  # one reader, no task per waiting receive
        await redis.group_send("g", {"type": "live.frame", "text": "x"})
        got = await asyncio.wait_for(asyncio.gather(*receives), 5)
        assert got == [{"type": "live.frame", "text": "x"}] * 30
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) < tasks_before
        # handed over in memory: the reader, mid-pop, is not cancelled (cancelled between
        # its pop and channels-redis' backup it would lose a message); it still delivers
        assert _pending(redis) == 1
        other = another_process(redis)
        await other.group_send("g", {"type": "live.frame", "text": "y"})
        assert await asyncio.wait_for(redis.receive(channels[0]), 5) == \
            {"type": "live.frame", "text": "y"}
        await redis.flush()  # a teardown stops a reader nobody waits for
        assert _pending(redis) == 0
    finally:
        await redis.flush()


async def test_messages_wait_for_the_next_receive_in_order():
    """A channel not being received on (its consumer is busy) keeps its messages, in order."""
    redis = layer()
    busy, other = await redis.new_channel(), await redis.new_channel()
    try:
        waiting = asyncio.create_task(redis.receive(other))
        await asyncio.sleep(0.05)
        for i in range(3):
            await redis.send(busy, {"type": "m", "i": i})
        await redis.send(other, {"type": "m", "i": "o"})
        assert (await asyncio.wait_for(waiting, 5))["i"] == "o"
        assert [(await asyncio.wait_for(redis.receive(busy), 5))["i"] for _ in range(3)] == \
            [0, 1, 2]
    finally:
        await redis.flush()


async def test_a_cancelled_receive_leaves_other_channels_alone_and_stops_the_reader():
    redis = layer()
    gone, staying = await redis.new_channel(), await redis.new_channel()
    try:
        cancelled = asyncio.create_task(redis.receive(gone))
        kept = asyncio.create_task(redis.receive(staying))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert _pending(redis) == 1  # still needed by the other receive
        await redis.send(staying, {"type": "m"})
        assert await asyncio.wait_for(kept, 5) == {"type": "m"}
        last = asyncio.create_task(redis.receive(staying))
        await asyncio.sleep(0.05)
        last.cancel()
        await asyncio.gather(last, return_exceptions=True)
        await asyncio.sleep(0)
        assert _pending(redis) == 0
        # a message popped by nobody stays in Redis for the next receive
        await redis.send(staying, {"type": "later"})
        assert await asyncio.wait_for(redis.receive(staying), 5) == {"type": "later"}
    finally:
        await redis.flush()


def _buffered(redis: RedisChannelLayer, channel: str) -> list[int]:
    """The ``i`` of the messages the process's reader holds for ``channel``."""
    inbox = redis._inbox
    return [] if inbox is None else [m["i"] for m in inbox.buffers.get(channel, ())]


async def test_a_channel_nobody_reads_keeps_only_capacity_messages():
    redis = layer(capacity=3)
    sender = another_process(redis)
    idle, other = await redis.new_channel(), await redis.new_channel()
    try:
        waiting = asyncio.create_task(redis.receive(other))  # keeps the reader popping
        await asyncio.sleep(0.05)
        for i in range(5):
            await sender.send(idle, {"type": "m", "i": i})
            # popped into the process's buffer, one at a time (a full Redis inbox would refuse)
            await wait_until(lambda i=i: _buffered(redis, idle)[-1:] == [i], timeout=5,
                             interval=0.005)
        # the reader buffered 5 messages for ``idle``; the oldest two were dropped
        assert [(await asyncio.wait_for(redis.receive(idle), 5))["i"] for _ in range(3)] == \
            [2, 3, 4]
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    finally:
        await redis.flush()


async def test_send_refuses_a_full_channel_and_keeps_order():
    from channels.exceptions import ChannelFull

    redis = layer(capacity=2)
    try:
        await redis.send("work", {"type": "m", "i": 1})
        await redis.send("work", {"type": "m", "i": 2})
        with pytest.raises(ChannelFull):
            await redis.send("work", {"type": "m", "i": 3})
        assert [(await asyncio.wait_for(redis.receive("work"), 5))["i"] for _ in range(2)] == \
            [1, 2]
    finally:
        await redis.flush()


async def test_group_send_skips_a_full_inbox_without_failing():
    redis = layer(capacity=1)
    channel = await redis.new_channel()
    try:
        await redis.group_add("g", channel)
        await redis.group_send("g", {"type": "m", "i": 1})
        await redis.group_send("g", {"type": "m", "i": 2})  # the process's inbox is full
        assert (await asyncio.wait_for(redis.receive(channel), 5))["i"] == 1
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(redis.receive(channel), 0.3)
        await redis.group_discard("g", channel)
        await redis.group_send("g", {"type": "m", "i": 3})  # nobody in the group any more
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(redis.receive(channel), 0.3)
    finally:
        await redis.flush()


async def test_expired_messages_are_not_delivered():
    redis = layer(expiry=1)
    try:
        await redis.send("work", {"type": "m", "i": "old"})
        await asyncio.sleep(2.1)
        await redis.send("work", {"type": "m", "i": "new"})
        assert (await asyncio.wait_for(redis.receive("work"), 5))["i"] == "new"
    finally:
        await redis.flush()


async def test_receives_waiting_on_one_channel_are_served_first_come_first_served():
    redis = layer()
    channel = await redis.new_channel()
    try:
        first = asyncio.create_task(redis.receive(channel))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(redis.receive(channel))
        await asyncio.sleep(0.05)
        await redis.send(channel, {"type": "m", "i": 1})
        await redis.send(channel, {"type": "m", "i": 2})
        assert (await asyncio.wait_for(first, 5))["i"] == 1
        assert (await asyncio.wait_for(second, 5))["i"] == 2
    finally:
        await redis.flush()


def test_messages_buffered_in_one_event_loop_are_received_in_the_next():
    """``async_to_sync`` runs each receive in a new loop: a channel's buffered messages (they
    arrived while another channel was received on) are still there in the next one."""
    redis = layer()

    async def buffer_two() -> str:
        busy, other = await redis.new_channel(), await redis.new_channel()
        waiting = asyncio.create_task(redis.receive(other))
        await asyncio.sleep(0.05)
        sender = another_process(redis)  # through Redis: popped and buffered by the reader
        for i in range(2):
            await sender.send(busy, {"type": "m", "i": i})
        await sender.send(other, {"type": "m", "i": "o"})
        assert (await asyncio.wait_for(waiting, 5))["i"] == "o"
        return busy

    async def receive(channel: str) -> object:
        return (await asyncio.wait_for(redis.receive(channel), 5))["i"]

    busy = asyncio.run(buffer_two())
    try:
        assert [asyncio.run(receive(busy)) for _ in range(2)] == [0, 1]
    finally:
        asyncio.run(redis.flush())


async def test_a_receive_cancelled_as_its_read_fails_raises_cancelled_error():
    """The reader fails the oldest receive of a channel; when that receive is cancelled
    before it wakes, it ends as cancelled (not with the failure) and the channel's other
    receive goes on waiting."""
    redis = layer()
    channel = await redis.new_channel()
    gate, never = asyncio.Event(), asyncio.Event()
    calls = 0

    async def receive_single(real_channel: str) -> object:
        nonlocal calls
        calls += 1
        await (gate if calls == 1 else never).wait()
        raise ConnectionError("redis down")

    redis.receive_single = receive_single  # type: ignore[method-assign]
    first = asyncio.create_task(redis.receive(channel))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(redis.receive(channel))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.sleep(0)  # the reader fails ``first``'s future; ``first`` has not woken
    first.cancel()
    (outcome,) = await asyncio.gather(first, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    await asyncio.sleep(0.01)
    assert not second.done() and calls == 2
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)


# -- this process's channels, in memory ---------------------------------------------------------

def handed_over(redis: RedisChannelLayer) -> list[str]:
    """The channels ``redis`` hands messages to in memory, from now on."""
    handed: list[str] = []
    hand_over = redis._hand_over

    def spy(inbox, name, message):
        handed.append(name)
        return hand_over(inbox, name, message)

    redis._hand_over = spy  # type: ignore[method-assign]
    return handed


async def test_a_message_for_a_channel_of_this_process_never_goes_through_redis():
    redis = layer()
    waiting_channel, idle = await redis.new_channel(), await redis.new_channel()
    sent = redis.connection(0).eval
    scripts: list[str] = []

    async def counted(*args, **kwargs):
        scripts.append(args[0])
        return await sent(*args, **kwargs)

    try:
        waiting = asyncio.create_task(redis.receive(waiting_channel))  # this process receives
        await asyncio.sleep(0.05)
        redis.connection(0).eval = counted
        handed = handed_over(redis)
        message = {"type": "m", "items": (1, 2)}
        await redis.send(waiting_channel, message)
        got = await asyncio.wait_for(waiting, 5)
        message["type"] = "changed"  # the sender's dict is not the one received
        assert got == {"type": "m", "items": [1, 2]}  # as through Redis (msgpack)
        await redis.send(idle, {"type": "later"})  # nobody receives: kept in memory
        assert await asyncio.wait_for(redis.receive(idle), 5) == {"type": "later"}
        assert handed == [waiting_channel, idle]
        assert not [script for script in scripts if "ZADD" in script]  # nothing sent to Redis
        await redis.send(idle, {"type": "flushed"})
        await redis.flush()  # empties the memory too
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(redis.receive(idle), 0.3)
    finally:
        redis.connection(0).eval = sent
        await redis.flush()


async def test_group_send_hands_local_members_over_in_memory_and_the_rest_through_redis():
    redis = layer()
    other = another_process(redis)
    mine, theirs = await redis.new_channel(), await other.new_channel()
    try:
        waiting = asyncio.create_task(redis.receive(mine))  # this process receives
        await asyncio.sleep(0.05)
        handed = handed_over(redis)
        await redis.group_add("g", mine)
        await redis.group_add("g", theirs)
        await redis.group_send("g", {"type": "frame", "n": 1})
        assert handed == [mine]
        assert await asyncio.wait_for(waiting, 5) == {"type": "frame", "n": 1}
        assert await asyncio.wait_for(other.receive(theirs), 5) == {"type": "frame", "n": 1}
    finally:
        await other.flush()
        await redis.flush()


async def test_a_full_local_channel_refuses_a_send_and_skips_a_group_send():
    from channels.exceptions import ChannelFull

    redis = layer(capacity=2)
    channel = await redis.new_channel()
    keeper = asyncio.create_task(redis.receive(await redis.new_channel()))  # receives here
    await asyncio.sleep(0.05)
    handed = handed_over(redis)
    try:
        await redis.group_add("g", channel)
        for i in range(2):
            await redis.send(channel, {"type": "m", "i": i})
        with pytest.raises(ChannelFull):
            await redis.send(channel, {"type": "m", "i": 2})
        await redis.group_send("g", {"type": "m", "i": "g"})  # dropped, no error
        assert [(await asyncio.wait_for(redis.receive(channel), 5))["i"] for _ in range(2)] == \
            [0, 1]
        await redis.group_send("g", {"type": "m", "i": "g2"})  # room again
        assert (await asyncio.wait_for(redis.receive(channel), 5))["i"] == "g2"
        assert set(handed) == {channel}  # all of it in memory
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await redis.flush()


async def test_a_sender_on_another_event_loop_goes_through_redis():
    """``async_to_sync`` from a thread of its own runs a loop of its own: its message goes
    through Redis (its loop cannot hand it over) and still arrives."""
    redis = layer()
    channel = await redis.new_channel()
    handed: list[str] = []
    hand_over = redis._hand_over
    redis._hand_over = lambda inbox, name, message: (  # type: ignore[method-assign]
        handed.append(name) or hand_over(inbox, name, message))
    try:
        waiting = asyncio.create_task(redis.receive(channel))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(asyncio.run, redis.send(channel, {"type": "from a thread"}))
        assert await asyncio.wait_for(waiting, 5) == {"type": "from a thread"}
        assert handed == []  # not in memory: through Redis
        await redis.send(channel, {"type": "from this loop"})
        assert handed == [channel]
    finally:
        await redis.flush()


# -- commands ahead of a group send -------------------------------------------------------------

async def test_commands_run_ahead_of_the_group_read_in_its_round_trip(monkeypatch):
    redis = layer()
    channel = await redis.new_channel()
    key = f"{redis.prefix}:stream"
    try:
        await redis.group_add("g", channel)
        trips = executed(monkeypatch)
        results = await redis.group_send_after(
            "g", {"type": "frame", "n": 1}, lambda pipe: pipe.xadd(key, {"f": "1"}))
        assert [names for _, names in trips] == [["XADD", "ZREMRANGEBYSCORE", "ZRANGE"]]
        assert len(results) == 1 and not isinstance(results[0], Exception)
        assert await asyncio.wait_for(redis.receive(channel), 5) == {"type": "frame", "n": 1}
        assert len(await redis.connection(0).xrange(key)) == 1
    finally:
        await redis.connection(0).delete(key)
        await redis.flush()


async def test_a_failing_command_is_returned_and_the_message_still_sent():
    redis = layer()
    channel = await redis.new_channel()
    key = f"{redis.prefix}:stream"
    try:
        await redis.connection(0).set(key, "not a stream")
        await redis.group_add("g", channel)
        results = await redis.group_send_after(
            "g", {"type": "frame"}, lambda pipe: pipe.xadd(key, {"f": "1"}))
        assert len(results) == 1 and "WRONGTYPE" in str(results[0])
        assert await asyncio.wait_for(redis.receive(channel), 5) == {"type": "frame"}
    finally:
        await redis.connection(0).delete(key)
        await redis.flush()


async def test_commands_for_another_host_than_the_groups_run_first_on_their_own(monkeypatch):
    """With two hosts (here two databases of one server), a group that hashes to the second
    still has the first host's commands done before it is read."""
    prefix = f"t{uuid.uuid4().hex}"
    hosts = [{"address": f"{REDIS}/{db}", "socket_timeout": None} for db in (0, 1)]
    redis = RedisChannelLayer(hosts=hosts, prefix=prefix)
    group = next(g for g in (f"g{i}" for i in range(100)) if redis.consistent_hash(g) == 1)
    channel = await redis.new_channel()
    key = f"{redis.prefix}:stream"
    try:
        await redis.group_add(group, channel)
        trips = executed(monkeypatch)
        results = await redis.group_send_after(
            group, {"type": "frame"}, lambda pipe: pipe.xadd(key, {"f": "1"}), host=0)
        assert trips == [(0, ["XADD"]), (1, ["ZREMRANGEBYSCORE", "ZRANGE"])]
        assert len(results) == 1 and not isinstance(results[0], Exception)
        assert await asyncio.wait_for(redis.receive(channel), 5) == {"type": "frame"}
    finally:
        await redis.connection(0).delete(key)
        await redis.flush()
