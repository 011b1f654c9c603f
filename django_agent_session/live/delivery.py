"""Reaching the live owner from a consumer: election and presence.

Messages and cancels do not go through the owner: a consumer commits them to the database
itself (see :mod:`django_agent_session.store.queue`), so an owner that dies loses nothing. The
owner only aggregates presence: the consumer announces itself (``live.join``), re-announces
periodically so presence survives owner changes, and says goodbye when it leaves.

:class:`DeliveryMixin` is mixed into :class:`~.consumers.AgentSessionConsumer`, whose
``conversation_id``, ``spec``, ``owner``, ``joined`` and ``_user_id`` it uses.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import api, ownership
from .timers import Timer

logger = logging.getLogger("django_agent_session.live")


class DeliveryMixin:
    """Forwarding to the live owner, acknowledgements and presence heartbeats of a consumer."""

    # the consumer's, used here
    channel_layer: Any
    channel_name: str
    conversation_id: uuid.UUID | None
    spec: Any
    owner: str | None
    joined: bool
    #: the presence heartbeat (see _start_heartbeat)
    _beat_interval: float = 0.0
    _heartbeat: Timer | None = None

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

    async def _activity(self) -> None:
        """Tell the owner the conversation is in use (it stops after inactivity)."""
        if self.owner:
            try:
                await self.channel_layer.send(self.owner, {"type": "live.activity"})
            except Exception:
                logger.info("Could not reach the owner of %s", self.conversation_id)

    # -- presence ----------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        """Beat every third of the owner lease until :meth:`_stop_heartbeat`. Between beats
        an open socket holds a timer handle, not a sleeping task (one per viewer adds up)."""
        self._beat_interval = max(ownership.lease_seconds() / 3, 0.1)
        self._heartbeat = Timer()
        # the first beat somewhere in the second half of the interval: viewers that connected
        # together (a page of tabs, a reconnect after a restart) do not all beat at once
        first = self._beat_interval * (0.5 + random.random() / 2)  # noqa: S311 (not secret)
        self._heartbeat.call_later(first, self._on_beat)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def _on_beat(self) -> Coroutine[Any, Any, None] | None:
        if self.joined:
            return self._beat()
        assert self._heartbeat is not None  # a timer that fires is not stopped
        self._heartbeat.call_later(self._beat_interval, self._on_beat)
        return None

    async def _beat(self) -> None:
        """Re-announce this viewer to the live owner, so presence survives owner changes. A
        watched conversation whose owner died (its lease ran out with no ``session.stopped``)
        gets a new one here, which also hands the dead process's queued runs on."""
        try:
            owner = await self._current_owner()
            if owner is None and self.owner is not None:
                # its lease expired without a ``session.stopped``: the process died
                owner = await self._elect()
            if owner is not None:
                self.owner = owner
                await self._announce(owner)
        except Exception:
            logger.info("Presence heartbeat for %s failed", self.conversation_id)
        if self._heartbeat is not None:  # (a stop cancels this task before it gets here)
            self._heartbeat.call_later(self._beat_interval, self._on_beat)

    if TYPE_CHECKING:  # provided by the consumer
        @property
        def _user_id(self) -> Any: ...
