"""The live session: the presence and lifecycle of one conversation in the cluster.

A :class:`LiveSession` lives in the event loop of the process that elected it (see ``api.start``)
and is not tied to any WebSocket: it listens on its own channel (named in the ownership lease),
so consumers in every process reach it through the channel layer. It

* tracks who is viewing (presence) and tells the group;
* hands the conversation's stranded queue to the executor when it starts and while it runs
  (runs are rows: a message is queued in the database by the consumer that received it, and
  run by an executor, see :mod:`django_agent_session.runs`);
* renews its ownership lease, and stops after ``inactivity_timeout`` seconds without activity or
  ``NO_VIEWER_GRACE_SECONDS`` without viewers (never while a run is running or queued).

Stopping it cancels nothing: runs belong to the queue, not to the live session.

Layer messages it receives (on its channel): ``live.join``, ``live.leave``, ``live.stop`` and
``live.activity``, each handled by the method named after it, as Channels names handlers
(``live.join`` → ``live_join``). It answers a joining viewer with ``live.state``, and sends
``live.frame`` (a client frame) and ``live.rollcall`` to the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from .. import exceptions as exc
from ..conf import agent_settings
from ..records import AgentRun, EventType, RunStatus
from ..runs.drain import stranded
from ..runs.stream import frame_message, group_name
from ..store.dispatch import dispatch
from ..store.turns import SessionStore
from . import ownership, registry
from .presence import Presence
from .routers import SessionSpec
from .timers import Timer

logger = logging.getLogger("django_agent_session.live")

#: the layer messages a live session serves: ``live.<name>`` is handled by ``live_<name>``
MESSAGE_NAMESPACE = "live."


class LiveSession:
    """One conversation's live session, hosted by this process (see the module docstring).

    A process holds one per open conversation, so an idle one is kept small: slots, one task
    (the receive loop) and a timer handle, not a sleeping task, for its lease and timeouts.
    """

    __slots__ = ("_stop_task", "_stopped", "_tasks", "_ticker", "channel_name",
                 "conversation_id", "grace", "group", "key", "last_activity", "layer",
                 "lease_deadline", "lease_seconds", "model", "next_renew", "no_viewers_since",
                 "presence", "spec", "state", "stop_reason", "timeout")

    def __init__(self, spec: SessionSpec, conversation_id: uuid.UUID, layer: Any,
                 channel_name: str, lease_expires_at: datetime) -> None:
        self.spec, self.model = spec, spec.model
        self.conversation_id = conversation_id
        self.key = str(conversation_id)
        self.layer, self.channel_name = layer, channel_name
        self.group = group_name(self.model, conversation_id)
        self.lease_seconds = ownership.lease_seconds()
        self.timeout = spec.timeout
        self.grace = float(agent_settings.NO_VIEWER_GRACE_SECONDS)
        self.presence = Presence(stale_after=self.lease_seconds)
        self.state = "new"
        self.stop_reason: str | None = None
        self._stopped: asyncio.Event | None = None  # made when first awaited (see stopped)
        now = time.monotonic()
        self.last_activity = now
        self.no_viewers_since: float | None = now
        remaining = (lease_expires_at - timezone.now()).total_seconds()
        self.lease_deadline = now + remaining
        self.next_renew = now + self.lease_seconds / 3
        self._tasks: list[asyncio.Task] = []
        self._stop_task: asyncio.Task | None = None
        #: the next tick (see ``_on_timer``), or the tick running now
        self._ticker = Timer(name=f"live-tick-{self.key}")

    def __repr__(self) -> str:
        return f"<LiveSession {self.model.__name__} {self.key} {self.state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.state == "running"

    @property
    def stopped(self) -> asyncio.Event:
        """Set once the session has stopped (and released its lease). Made on first use: most
        sessions are never waited for, and an ``Event`` is not free."""
        if self._stopped is None:
            self._stopped = asyncio.Event()
            if self.state == "stopped":
                self._stopped.set()
        return self._stopped

    async def start(self) -> None:
        """Serve the conversation; a failure to announce it stops everything started here
        (the caller releases the lease), so no receive loop or lease renewal outlives it."""
        self.state = "running"
        self._tasks = [asyncio.create_task(self._receive_loop(), name=f"live-recv-{self.key}")]
        self._schedule_tick()
        try:
            await self.layer.group_send(self.group, {"type": "live.rollcall",
                                                     "owner": self.channel_name})
            await self.broadcast({"type": "session.started"})
            await self._hand_on()
        except BaseException:
            self.state = "stopped"
            self._ticker.cancel()
            for task in (*self._tasks, self._stop_task):  # (the receive loop may have asked)
                if task is not None:
                    task.cancel()
            if self._stopped is not None:
                self._stopped.set()
            raise

    def request_stop(self, reason: str) -> asyncio.Task:
        """Schedule the stop (idempotent); the task can be awaited."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(reason), name=f"live-stop-{self.key}")
        return self._stop_task

    async def stop(self, reason: str) -> None:
        await asyncio.shield(self.request_stop(reason))

    async def _stop(self, reason: str) -> None:
        self.state, self.stop_reason = "stopping", reason
        # queued and running runs are rows an executor owns: nothing is dropped
        data: dict[str, Any] = {"reason": reason, "dropped": []}
        seq = None
        try:
            me = asyncio.current_task()
            others = [task for task in (*self._tasks, *self._ticker.cancel())
                      if task is not me]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            try:
                await database_sync_to_async(ownership.release)(self.conversation_id,
                                                                self.channel_name)
            except ownership.OwnershipUnavailable:
                logger.warning("Could not release the live lease of %s; it will expire.",
                               self.key)
            seq = await self._append_event(EventType.SESSION_STOPPED, data)
        except Exception:
            logger.exception("Live session %s did not stop cleanly", self.key)
        finally:
            # announced before a successor can start here, so viewers see stop, then start
            await self.broadcast({"type": "session.stopped", **data, "seq": seq})
            registry.forget(self)
            self.state = "stopped"
            if self._stopped is not None:
                self._stopped.set()

    # -- the channel -------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel_name)
            except Exception:  # the layer is gone: nobody can reach us, let another owner start
                logger.exception("Live session %s cannot receive from its channel", self.key)
                self.request_stop("layer_error")
                return
            try:
                await self.dispatch(message)
            except Exception:  # one bad message must not end the live session
                logger.exception("Live session %s failed to handle %r", self.key,
                                 message.get("type"))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Run the handler named after the message's type, as Channels' consumers do.

        ``get_handler_name`` maps ``live.join`` to ``live_join`` (and refuses a leading
        underscore); only types in the ``live.`` namespace are served, so no other method can
        be reached by a message. Anything else is logged and ignored.
        """
        kind = message.get("type")
        handler = None
        if isinstance(kind, str) and kind.startswith(MESSAGE_NAMESPACE):
            handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            logger.warning("Live session %s ignored %r", self.key, kind)
            return
        await handler(message)

    async def _reply(self, channel: str | None, message: dict[str, Any]) -> None:
        if channel:
            try:
                await self.layer.send(channel, message)
            except Exception:  # a viewer that went away (or a full channel) is not our failure
                logger.info("Live session %s could not reply to %s", self.key, channel)

    async def broadcast(self, frame: dict[str, Any]) -> None:
        try:
            await self.layer.group_send(self.group, frame_message(frame))
        except Exception:
            logger.exception("Live session %s could not fan out %r", self.key, frame.get("type"))

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    # -- runs -------------------------------------------------------------------------------

    async def live_activity(self, message: dict[str, Any]) -> None:
        """A viewer submitted or cancelled a run: not inactive."""
        self.touch()

    async def _hand_on(self) -> None:
        """Give the conversation's queue to the executor if nobody drains it (a dead
        executor's runs, or messages queued while no process was up)."""
        try:
            if await database_sync_to_async(self._stranded)():
                await database_sync_to_async(dispatch)(self.model, self.conversation_id)
        except Exception:
            logger.exception("Live session %s could not check its queue", self.key)

    async def _append_event(self, kind: str, data: dict[str, Any]) -> int | None:
        def append() -> int:
            return SessionStore(self.model).append_events(self.conversation_id,
                                                          [(kind, data)])[0].seq
        try:
            return await database_sync_to_async(append)()
        except exc.SessionNotFound:
            return None

    def _stranded(self) -> bool:
        return bool(stranded(self.model, self.conversation_id))

    def _active(self) -> bool:
        """Sync: whether a run of the conversation is running or queued."""
        return AgentRun.objects.filter(
            session_id=self.conversation_id,
            session_type=ContentType.objects.get_for_model(self.model),
            status__in=(RunStatus.QUEUED, RunStatus.RUNNING)).exists()

    # -- cancel, presence, stop --------------------------------------------------------------

    async def live_join(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if not channel:
            return
        if self.presence.join(channel, message.get("user_id")):
            self.no_viewers_since = None
            self.touch()
            await self._publish_presence()
        if message.get("want_state"):
            await self._reply(channel, {"type": "live.state", "state": self.snapshot()})

    async def live_leave(self, message: dict[str, Any]) -> None:
        if self.presence.leave(message.get("channel") or ""):
            await self._publish_presence(time.monotonic())

    async def live_stop(self, message: dict[str, Any]) -> None:
        self.request_stop(str(message.get("reason") or "stopped"))

    async def _publish_presence(self, now: float | None = None) -> None:
        """Tell the group who is watching; with ``now``, a viewer left: when none is left, the
        no-viewer grace period starts at ``now``."""
        if now is not None and self.presence.count == 0:
            self.no_viewers_since = now
        await self.broadcast({"type": "presence", **self.presence.snapshot()})

    def snapshot(self) -> dict[str, Any]:
        """The live part of ``session.state``: presence (runs are read from the database)."""
        return {"presence": self.presence.snapshot()}

    # -- timers ------------------------------------------------------------------------------

    def _tick_seconds(self) -> float:
        spans = [self.lease_seconds / 3, self.grace]
        if self.timeout is not None:
            spans.append(self.timeout)
        return min(max(min(spans) / 4, 0.05), 1.0)

    def _schedule_tick(self) -> None:
        if self.state == "running":
            self._ticker.call_later(self._tick_seconds(), self._on_timer)

    def _on_timer(self) -> Coroutine[Any, Any, None] | None:
        """Every tick: a task only when there is work (the lease is due for renewal, a viewer
        went stale, a timeout may have passed); an idle session costs a timer handle."""
        if self.state != "running":
            return None
        now = time.monotonic()
        if self._due(now):
            return self._run_tick(now)
        self._schedule_tick()
        return None

    def _due(self, now: float) -> bool:
        """Whether ``_tick`` has anything to do at ``now`` (it checks everything again)."""
        return (now >= self.next_renew or self.presence.has_stale()
                or (self.timeout is not None and now - self.last_activity >= self.timeout)
                or (self.no_viewers_since is not None
                    and now - self.no_viewers_since >= self.grace))

    async def _run_tick(self, now: float) -> None:
        try:
            if not await self._tick(now):
                return
        except Exception:
            logger.exception("Live session %s: timer failed", self.key)
            if time.monotonic() >= self.lease_deadline:  # cannot prove ownership
                self.request_stop("lease_lost")
                return
        self._schedule_tick()

    async def _tick(self, now: float) -> bool:
        """Renew the lease, expire presence, apply the timeouts; False once stopping."""
        if now >= self.next_renew and not await self._renew(now):
            return False
        if self.presence.expire():
            await self._publish_presence(now)
        inactive = self.timeout is not None and now - self.last_activity >= self.timeout
        unwatched = self.no_viewers_since is not None and now - self.no_viewers_since >= self.grace
        if not (inactive or unwatched):
            return True
        if await database_sync_to_async(self._active)():  # a run in flight is activity
            self.touch()
            return True
        self.request_stop("no_viewers" if unwatched else "inactivity")
        return False

    async def _renew(self, now: float) -> bool:
        """Renew the ownership lease; stop (returning False) once it is lost."""
        try:
            expires = await database_sync_to_async(ownership.renew)(self.conversation_id,
                                                                    self.channel_name)
        except ownership.OwnershipUnavailable:
            if now + self._tick_seconds() * 2 < self.lease_deadline:
                self.next_renew = now + self._tick_seconds()  # retry soon
                return True
            expires = None  # cannot prove ownership any longer: another owner may start
        if expires is None:
            logger.warning("Live session %s lost its ownership lease.", self.key)
            self.request_stop("lease_lost")
            return False
        self.lease_deadline = now + self.lease_seconds
        self.next_renew = now + self.lease_seconds / 3
        await self._hand_on()
        return True
