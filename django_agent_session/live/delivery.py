"""Reaching the live owner from a consumer: forwarded frames with retries, and presence.

``message`` and ``cancel`` frames are forwarded to the conversation's live owner one at a time,
in order, each until the owner acknowledges it (``live.ack``). An owner whose process died never
answers: the frame is sent again after ``ack_timeout`` to whichever owner the lease names by
then. The consumer also re-announces itself to the owner (``live.join``) so presence survives
owner changes.

:class:`DeliveryMixin` is mixed into :class:`~.consumers.AgentSessionConsumer`, whose
``conversation_id``, ``spec``, ``owner``, ``joined``, ``_user_id``, ``_send_error`` and
``_send_safe`` it uses.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError

from .. import exceptions as exc
from . import api, ownership, protocol
from .protocol import error_frame

logger = logging.getLogger("django_agent_session.live")


class DeliveryMixin:
    """Forwarding to the live owner, acknowledgements and presence heartbeats of a consumer."""

    #: seconds to wait for the live session to acknowledge a forwarded frame before retrying
    ack_timeout = 5.0

    # the consumer's, used here
    channel_layer: Any
    channel_name: str
    conversation_id: uuid.UUID | None
    spec: Any
    owner: str | None
    joined: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks: dict[str, asyncio.Future] = {}
        self._outbox: asyncio.Queue = asyncio.Queue()

    # -- the owner ---------------------------------------------------------------------------

    async def _elect(self) -> str:
        """Make sure a live session runs somewhere; the channel of its owner."""
        result = await api.start(self.conversation_id, spec=self.spec,
                                 channel_layer=self.channel_layer)
        return result.owner_channel

    async def _current_owner(self) -> str | None:
        """The channel of the conversation's live owner, ``None`` when none runs."""
        return await api.owner_channel(self.conversation_id, self.spec.model)

    async def _announce(self, owner: str, *, want_state: bool = False) -> None:
        """Tell ``owner`` this consumer views the conversation (and ask for its state)."""
        message: dict[str, Any] = {"type": "live.join", "channel": self.channel_name,
                                   "user_id": self._user_id}
        if want_state:
            message["want_state"] = True
        await self.channel_layer.send(owner, message)

    # -- forwarding --------------------------------------------------------------------------

    async def _forward(self, payload: dict[str, Any], elect: bool) -> None:
        """Queue ``payload`` for the owner; with ``elect``, start a live session if none runs."""
        await self._outbox.put((payload, elect))

    async def _forwarder(self) -> None:
        """Deliver forwarded frames one at a time, so the live session sees them in order."""
        while True:
            payload, elect = await self._outbox.get()
            try:
                await self._deliver(payload, elect)
            except Exception:
                logger.exception("Could not forward %r", payload.get("type"))
                await self._send_safe(error_frame(protocol.INTERNAL_ERROR,
                                                  "The frame could not be delivered.",
                                                  ref=payload.get("ref")))

    async def _deliver(self, payload: dict[str, Any], elect: bool) -> None:
        """Send ``payload`` to the live owner until it acknowledges.

        An owner whose process died never answers: the message is sent again after
        ``ack_timeout``, to whichever owner the lease names by then (a new one is elected once
        the old lease expires). The owner ignores a message id it has already taken.
        """
        loop = asyncio.get_running_loop()
        ref = payload.get("ref")
        deadline = loop.time() + ownership.lease_seconds() * 2 + self.ack_timeout
        while True:
            try:
                owner = await self._elect() if elect else await self._current_owner()
            except (exc.AgentSessionError, DatabaseError) as error:
                await self._send_error(error, ref)
                return
            if owner is None:
                await self.send_json(error_frame(protocol.NOT_RUNNING, "Nothing is running.",
                                                 ref=ref))
                return
            if owner != self.owner:
                self.owner = owner
                await self._announce(owner)
            future = loop.create_future()
            self._acks[payload["id"]] = future
            reply: dict[str, Any] | None = None
            try:
                await self.channel_layer.send(owner, payload)
                reply = await asyncio.wait_for(future, self.ack_timeout)
            except asyncio.TimeoutError:
                pass
            except Exception as error:  # e.g. ChannelFull: try again like a lost owner
                logger.info("Forwarding to %s failed: %r", owner, error)
            finally:
                self._acks.pop(payload["id"], None)
            if reply is not None and not reply.get("retry"):
                if reply.get("frame"):
                    await self.send_json(reply["frame"])
                return
            if loop.time() >= deadline:
                await self.send_json(error_frame(
                    protocol.OWNER_UNAVAILABLE, "The live session did not answer; try again.",
                    ref=ref))
                return
            if reply is not None:  # the owner is stopping: wait for it to let go
                await asyncio.sleep(0.1)

    async def live_ack(self, message: dict[str, Any]) -> None:
        future = self._acks.get(message.get("id") or "")
        if future is not None and not future.done():
            future.set_result(message)

    def _cancel_acks(self) -> None:
        for future in self._acks.values():
            future.cancel()

    # -- presence ----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Re-announce this viewer to the live owner, so presence survives owner changes."""
        interval = max(ownership.lease_seconds() / 3, 0.1)
        while True:
            await asyncio.sleep(interval)
            if not self.joined:
                continue
            try:
                owner = await self._current_owner()
                if owner is not None:
                    self.owner = owner
                    await self._announce(owner)
            except Exception:
                logger.info("Presence heartbeat for %s failed", self.conversation_id)

    if TYPE_CHECKING:  # provided by the consumer
        @property
        def _user_id(self) -> Any: ...

        async def send_json(self, content: Any, close: bool = False) -> None: ...

        async def _send_safe(self, frame: dict[str, Any]) -> None: ...

        async def _send_error(self, error: Exception, ref: str | None = None) -> None: ...
