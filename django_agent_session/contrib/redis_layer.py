"""A channels-redis layer whose process-local receive costs a future, not three tasks.

channels-redis' ``RedisChannelLayer.receive`` on a process-local channel (``specific.…!…``,
the channel of every consumer and live session) waits with two tasks of its own, one on a lock
shared by the process's receivers and one on an ``asyncio.Queue`` per channel, under an
``asyncio.wait``; whoever gets the lock pops the process's inbox and hands messages out through
those queues. That is three tasks, a queue and a wait per idle channel (about 16 KiB per open
conversation, which has two channels), and about a dozen loop callbacks, a cancelled task and
its ``CancelledError`` per delivered message, which made 50 viewers of one conversation slow
and kept the garbage collector busy.

:class:`RedisChannelLayer` keeps everything else of channels-redis (sending, groups, the wire
format, the inbox key, the backup queue that makes a popped message survive a cancelled
receive) and replaces only that: one reader task per event loop pops the inbox with
channels-redis' own ``receive_single`` and hands each message to the first waiter of its
channel (a future), or buffers it until the channel is received on again (bounded by
``capacity``, the oldest dropped, as channels-redis drops them). As there, a receive that is
cancelled drops what its channel had buffered (its consumer is going away), and two event loops
may not receive at once; a loop that receives after another (``async_to_sync``) takes over what
that one buffered. Use it through :func:`~.redis.redis_channel_layer`.

A message for a channel of this very process (a live session's frames to the viewers it
hosts) is not sent through Redis at all: it is handed over in memory, copied through the wire
format as Redis would give it back. The rest is sent in fewer round trips, with the same
effect: ``send`` is one script (channels-redis: four commands, each awaited), ``group_send``
reads the group in one pipelined round trip and expires, checks and appends each inbox in one
script (channels-redis: four round trips). Every frame of a run is a ``group_send``, so this is
on the path of every delta.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer

logger = logging.getLogger("django_agent_session.live")


class _Inbox:
    """One event loop's waiters and buffered messages, by process-local channel name."""

    __slots__ = ("buffers", "loop", "reader", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: futures of the receives waiting on each channel, first come first served
        self.waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        #: messages that arrived while nobody waited on their channel
        self.buffers: dict[str, collections.deque[dict[str, Any]]] = {}
        self.reader: asyncio.Task[None] | None = None


#: ``send``: expire old messages, refuse when full, append (ARGV: message, now, capacity,
#: expiry cutoff, key expiry); 0 when the channel is full
SEND_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[4])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[3]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

#: ``group_send``, per inbox: expire old messages, append unless full (ARGV: N messages, N
#: capacities, now, key expiry, expiry cutoff); how many inboxes were full
GROUP_SEND_LUA = """
local n = #KEYS
local now, expiry, cutoff = ARGV[2 * n + 1], ARGV[2 * n + 2], ARGV[2 * n + 3]
local over_capacity = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + n]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""


class RedisChannelLayer(ChannelsRedisLayer):
    """channels-redis with a lighter receive on process-local channels and fewer round trips
    per send (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox: _Inbox | None = None

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """channels-redis' ``send`` (expiry, capacity, ``ChannelFull``) as one script; to a
        channel of this process, handed over in memory (see :meth:`_here`)."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        inbox = self._here(channel)
        if inbox is not None:
            if not self._hand_over(inbox, channel, self._copy(message)):
                raise ChannelFull()
            return
        non_local = channel
        if "!" in channel:
            message = {**message, "__asgi_channel__": channel}
            non_local = self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        now = time.time()
        added = await self.connection(index).eval(
            SEND_LUA, 1, self.prefix + non_local, self.serialize(message), now,
            self.get_capacity(channel), int(now) - int(self.expiry), int(self.expiry))
        if not added:
            raise ChannelFull()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """channels-redis' ``group_send`` (one message per inbox, capacity, expiry) in two
        round trips: the group's members, then one script per Redis host."""
        await self.group_send_after(group, message)

    async def group_send_after(self, group: str, message: dict[str, Any],
                               commands: Callable[[Any], None] | None = None, *,
                               host: int = 0) -> list[Any]:
        """:meth:`group_send`, after ``commands(pipeline)`` ran on Redis host ``host``; their
        results, an error as an exception object (never raised: the message is sent anyway).

        On the group's own host (every single-host deployment) the commands go in the round
        trip that reads the group, ahead of it, so a channel that joins the group too late to
        receive the message sees what the commands wrote. This is how a run's frame is
        buffered and sent at once (``runs/stream.py``): one round trip per frame, not two.
        (So a subclass that overrides :meth:`group_send` does not see a run's progress frames;
        override this method too.)
        """
        assert self.require_valid_group_name(group), "Group name not valid"
        key = self._group_key(group)
        index = self.consistent_hash(group)
        results: list[Any] = []
        if commands is not None and host != index:
            try:
                async with self.connection(host).pipeline(transaction=False) as pipe:
                    commands(pipe)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as error:  # that host is down: the message still goes out
                results = [error]
            commands = None
        async with self.connection(index).pipeline(transaction=False) as pipe:
            if commands is not None:
                commands(pipe)
            queued = len(pipe)
            pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
            pipe.zrange(key, 0, -1)
            replies = await pipe.execute(raise_on_error=False)
        if queued:
            results = replies[:queued]
        for reply in replies[queued:]:
            if isinstance(reply, Exception):
                raise reply
        await self._send_to_members(group, message,
                                    [member.decode("utf8") for member in replies[-1]])
        return results

    async def _send_to_members(self, group: str, message: dict[str, Any],
                               channel_names: list[str]) -> None:
        """Deliver a group's message to its members: in memory to this process's, by one
        script per Redis host to the others'."""
        inbox = self._here()
        if inbox is not None:
            mine: list[str] = []
            others: list[str] = []
            for name in channel_names:
                (mine if self._is_mine(name) else others).append(name)
            if mine:
                copy = self._copy(message)  # one copy for all, as one popped from Redis
                full = sum(not self._hand_over(inbox, name, copy) for name in mine)
                if full:
                    logger.info("%s of %s channels over capacity in group %s", full,
                                len(channel_names), group)
                if not others:
                    return
                channel_names = others
        by_connection, messages, capacities = self._map_channel_keys_to_connection(
            channel_names, message)
        for index, keys in by_connection.items():
            now = time.time()
            over_capacity = await self.connection(index).eval(
                GROUP_SEND_LUA, len(keys), *keys, *(messages[k] for k in keys),
                *(capacities[k] for k in keys), now, self.expiry,
                int(now) - int(self.expiry))
            if over_capacity > 0:
                logger.info("%s of %s channels over capacity in group %s", over_capacity,
                            len(channel_names), group)

    async def flush(self) -> None:
        """channels-redis' ``flush``, and what this process holds for its channels."""
        if self._inbox is not None:
            self._inbox.buffers.clear()
            if self._inbox.loop is asyncio.get_running_loop():
                self._stop_reader_if_idle(self._inbox)
        await super().flush()

    # -- this process's channels, in memory ----------------------------------------------------

    def _is_mine(self, channel: str) -> bool:
        """Whether ``channel`` is a process-local channel of this layer (``new_channel``)."""
        return "!" in channel and self.non_local_name(channel).endswith(self.client_prefix + "!")

    def _here(self, channel: str | None = None) -> _Inbox | None:
        """The inbox of this event loop, when a message for ``channel`` (one of this layer's
        channels, if given) can be handed over in memory: its receives run on this loop.

        Through Redis such a message costs the send's script, then the reader's pop and the
        clean-up of channels-redis' backup queue: three round trips and a task. A sender on
        another loop (``async_to_sync`` in a thread of its own), or before this process's
        first receive, still goes through Redis, so each sender's messages keep their order."""
        if channel is not None and not self._is_mine(channel):
            return None
        inbox = self._inbox  # made by a receive: a sender never makes or takes one over
        return inbox if inbox is not None and inbox.loop is asyncio.get_running_loop() else None

    def _copy(self, message: dict[str, Any]) -> dict[str, Any]:
        """What a receiver gets through Redis: the message through the layer's wire format
        (msgpack), so a sender that reuses its dict changes nothing, and tuples arrive as
        lists as they would (no encryption: it never leaves the process)."""
        serializer = self._serializer
        return cast("dict[str, Any]", serializer.from_bytes(serializer.as_bytes(message)))

    def _hand_over(self, inbox: _Inbox, channel: str, message: dict[str, Any]) -> bool:
        """Give ``message`` to ``channel``'s first waiter or its buffer; ``False`` when the
        buffer is full (the message is dropped, as Redis refuses it)."""
        buffered = inbox.buffers.get(channel)
        if buffered is not None and len(buffered) >= self.get_capacity(channel):
            return False
        # (the reader is left alone even if nobody waits now: cancelled between its pop and
        # channels-redis' backup of what it popped, it would lose another process's message)
        self._deliver(inbox, channel, message)
        return True

    def _local_inbox(self) -> _Inbox:
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is not None and inbox.loop is not loop:
            if inbox.waiters and not inbox.loop.is_closed():
                raise RuntimeError(
                    "Two event loops are trying to receive() on one channel layer at once!")
            # the old loop is gone or idle: the messages it buffered are this loop's now
            # (an ``async_to_sync`` receive runs each call in a new loop)
            buffers = inbox.buffers
            inbox = self._inbox = _Inbox(loop)
            inbox.buffers = buffers
        if inbox is None:
            inbox = self._inbox = _Inbox(loop)
        return inbox

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message of ``channel``; process-local channels share one reader."""
        if "!" not in channel:
            return await super().receive(channel)
        assert self.require_valid_channel_name(channel)
        real_channel = self.non_local_name(channel)
        assert real_channel.endswith(self.client_prefix + "!"), "Wrong client prefix"
        inbox = self._local_inbox()
        buffered = inbox.buffers.get(channel)
        if buffered:
            message = buffered.popleft()
            if not buffered:
                del inbox.buffers[channel]
            return message
        future: asyncio.Future[dict[str, Any]] = inbox.loop.create_future()
        inbox.waiters.setdefault(channel, []).append(future)
        if inbox.reader is None:
            inbox.reader = inbox.loop.create_task(self._read(inbox, real_channel))
        try:
            return await future
        except asyncio.CancelledError:
            self._forget(inbox, channel, future)
            raise

    def _forget(self, inbox: _Inbox, channel: str, future: asyncio.Future[Any]) -> None:
        """A cancelled receive: give a message it was just handed to the channel's next
        waiter; drop the channel's buffer if nobody else waits (as channels-redis does); stop
        the reader once no receive waits (a pending reader must not outlive its loop)."""
        waiters = inbox.waiters.get(channel, [])
        if future in waiters:
            waiters.remove(future)
        elif (future.done() and not future.cancelled() and future.exception() is None
              and waiters):
            # (a failure meant for this receive is dropped with it: it raises CancelledError)
            self._deliver(inbox, channel, future.result())
        if not waiters:
            inbox.waiters.pop(channel, None)
            inbox.buffers.pop(channel, None)
        self._stop_reader_if_idle(inbox)

    @staticmethod
    def _stop_reader_if_idle(inbox: _Inbox) -> None:
        """Stop the reader once no receive waits: a pending reader must not outlive its loop
        (a message it has not popped stays in Redis for the next one)."""
        if not inbox.waiters and inbox.reader is not None:
            inbox.reader.cancel()
            inbox.reader = None

    def _deliver(self, inbox: _Inbox, channel: str, message: dict[str, Any]) -> None:
        waiters = inbox.waiters.get(channel)
        while waiters:
            future = waiters.pop(0)
            if not waiters:
                del inbox.waiters[channel]
            if not future.done():
                future.set_result(message)
                return
        buffer = inbox.buffers.setdefault(channel, collections.deque())
        if len(buffer) >= self.get_capacity(channel):  # a channel nobody reads: drop its oldest
            buffer.popleft()
        buffer.append(message)

    async def _read(self, inbox: _Inbox, real_channel: str) -> None:
        """Pop the process's inbox while anyone waits; a failure fails the oldest waiter
        (channels-redis fails the receive that was reading) and the others go on."""
        try:
            while inbox.waiters:
                try:
                    target, message = await self.receive_single(real_channel)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    self._fail_one(inbox, error)
                    continue
                for name in target if isinstance(target, list) else (target,):
                    self._deliver(inbox, name, message)
        finally:
            if inbox.reader is asyncio.current_task():
                inbox.reader = None

    @staticmethod
    def _fail_one(inbox: _Inbox, error: Exception) -> None:
        for channel, waiters in list(inbox.waiters.items()):
            future = waiters.pop(0)
            if not waiters:
                del inbox.waiters[channel]
                inbox.buffers.pop(channel, None)
            if not future.done():
                future.set_exception(error)
                return


__all__ = ["RedisChannelLayer"]
