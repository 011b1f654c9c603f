"""Channels' in-memory layer without the per-message work that grows with the channel count.

For one process (development, a single ASGI server): ``CHANNEL_LAYERS = {"default":
{"BACKEND": "django_agent_session.contrib.memory_layer.InMemoryChannelLayer"}}``. It takes
the options of Channels' :class:`~channels.layers.InMemoryChannelLayer` and behaves as it does
(messages are copied, expire, and are refused past ``capacity``), with three costs removed from
the path of every frame a live session fans out to its viewers:

- Channels sweeps every channel's queue and every group for expired entries on each
  ``receive`` and ``group_send``, so one frame to N viewers walked the N channels N times.
  The sweep here runs at most once a second (:data:`SWEEP_EVERY`): an expired message or
  membership may outlive its expiry by that much before it is dropped.
- ``group_send`` started a task per member and waited on them all; the members' queues are
  filled directly here (a full one drops the message, as there).
- A message is deep-copied per member; a message whose values are all immutable scalars (every
  ``live.frame``: its frame is JSON text, see :func:`~django_agent_session.runs.stream.frame_message`)
  is copied as a flat dict, which is the same copy.

With 50 viewers of one conversation, a delta reached them 0.6 to 1.7 ms sooner at the median
in three alternating runs (``docs/performance.md``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from copy import deepcopy
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

__all__ = ["SWEEP_EVERY", "InMemoryChannelLayer"]

#: seconds between two sweeps for expired messages and group memberships
SWEEP_EVERY = 1.0

_SCALARS = (str, int, float, bool, bytes, type(None))


def _copier(message: dict[str, Any]) -> Callable[[Any], Any]:
    """How to copy ``message`` for a receiver: a flat dict when its values are immutable."""
    return dict if all(type(value) in _SCALARS for value in message.values()) else deepcopy


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    """Channels' in-memory layer, cheaper per message with many channels (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swept_at = float("-inf")

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._swept_at >= SWEEP_EVERY:
            self._swept_at = now
            super()._clean_expired()

    def _queue(self, channel: str) -> asyncio.Queue[Any]:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        return queue

    def _put(self, channel: str, message: dict[str, Any], copy: Callable[[Any], Any]) -> None:
        try:
            self._queue(channel).put_nowait((time.time() + self.expiry, copy(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        self._put(channel, message, _copier(message))

    async def receive(self, channel: str) -> dict[str, Any]:
        self.require_valid_channel_name(channel)
        self._clean_expired()
        queue = self._queue(channel)
        try:
            _, message = await queue.get()
        finally:
            if queue.empty():
                self.channels.pop(channel, None)
        return message

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        copy = _copier(message)  # judged once, a copy per member
        for channel in list(self.groups.get(group, ())):
            try:
                self._put(channel, message, copy)
            except ChannelFull:
                pass  # as Channels' layer: a full member misses this message
