"""The live session: the one place in the cluster that runs a conversation's turns.

A :class:`LiveSession` lives in the event loop of the process that elected it (see ``api.start``)
and is not tied to any WebSocket: it listens on its own channel (named in the ownership lease),
so consumers in every process reach it through the channel layer. It

* runs turns one at a time with ``acontinue_session`` as asyncio tasks, queueing messages that
  arrive meanwhile (FIFO, bounded by ``QUEUE_MAX``) and announcing them;
* cancels the running turn on request (the core records the run as cancelled, with the partial
  reply, and leaves the context untouched);
* fans every progress callback, message, run status, presence change and its own stop out to the
  conversation's group;
* renews its ownership lease, tracks presence, and stops after ``inactivity_timeout`` seconds
  without activity or ``NO_VIEWER_GRACE_SECONDS`` without viewers.

Layer messages it receives (on its channel): ``live.message``, ``live.cancel``, ``live.join``,
``live.leave``, ``live.stop``, each handled by the method named after it, as Channels names
handlers (``live.join`` → ``live_join``). It answers the sender with ``live.ack`` and
``live.state``, and sends ``live.frame`` (a client frame) and ``live.rollcall`` to the group.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from django.db import models
from django.utils import timezone

from .. import exceptions as exc
from ..conf import agent_settings
from ..records import EventType, RunStatus
from ..store.turns import SessionStore
from . import ownership, registry
from .presence import Presence
from .protocol import NOTHING_TO_CANCEL, QUEUE_FULL, error_frame
from .routers import SessionSpec

logger = logging.getLogger("django_agent_session.live")

#: how many recently accepted message ids are remembered (a resent message runs once)
SEEN_IDS = 1000
#: bound on waiting for a cancelled turn to record itself while stopping
STOP_WAIT_SECONDS = 15.0
#: the layer messages a live session serves: ``live.<name>`` is handled by ``live_<name>``
MESSAGE_NAMESPACE = "live."


def group_name(model: type[models.Model], conversation_id: Any) -> str:
    """The channel-layer group of a conversation (ASCII alnum, ``-_.``, under 100 chars)."""
    label = model._meta.label_lower
    if len(label) > 50 or not re.fullmatch(r"[a-z0-9_.]+", label):
        label = hashlib.sha1(label.encode()).hexdigest()[:16]
    return f"agent_session.{label}.{uuid.UUID(str(conversation_id)).hex}"


def _run_info(record: Any, cancelled: bool) -> dict[str, Any]:
    """The run id, final seq and partial reply of a failed or cancelled turn's record."""
    if record is None:  # refused before a run was recorded (invalid input, busy, gone)
        return {"run_id": None, "seq": None}
    info: dict[str, Any] = {"run_id": str(record.run_id), "seq": record.seq}
    end = record.events[-1]["data"] if record.events else {}
    if "partial_text" in end or cancelled:
        info["partial_text"] = end.get("partial_text", "")  # reported, never stored in context
    return info


@dataclass
class Item:
    """A message waiting for, or running, its turn."""

    id: str
    ref: str
    input: Any
    user_id: Any
    reply_to: str | None
    announced: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    partial: list[str] = field(default_factory=list)
    deltas: int = 0
    cancelled: bool = False
    #: what the turn wrote (``TurnRecord``), from the session or the exception
    record: Any = None

    def summary(self, *, running: bool = False) -> dict[str, Any]:
        data = {"ref": self.ref, "input": self.input, "user_id": self.user_id}
        if running:
            data.update(partial_text="".join(self.partial), deltas=self.deltas)
        return data


class LiveSession:
    """One conversation's live session, hosted by this process (see the module docstring)."""

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
        self.queue_max = int(agent_settings.QUEUE_MAX)
        self.queue: deque[Item] = deque()
        self.current: Item | None = None
        self.presence = Presence(stale_after=self.lease_seconds)
        self.state = "new"
        self.stop_reason: str | None = None
        self.stopped = asyncio.Event()
        now = time.monotonic()
        self.last_activity = now
        self.no_viewers_since: float | None = now
        remaining = (lease_expires_at - timezone.now()).total_seconds()
        self.lease_deadline = now + remaining
        self.next_renew = now + self.lease_seconds / 3
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._tasks: list[asyncio.Task] = []
        self._turn_runner: asyncio.Task | None = None
        self._stop_task: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<LiveSession {self.model.__name__} {self.key} {self.state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.state == "running"

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.queue)

    async def start(self) -> None:
        self.state = "running"
        self._tasks = [asyncio.create_task(self._receive_loop(), name=f"live-recv-{self.key}"),
                       asyncio.create_task(self._ticker(), name=f"live-tick-{self.key}")]
        await self.layer.group_send(self.group, {"type": "live.rollcall",
                                                 "owner": self.channel_name})
        await self.broadcast({"type": "session.started"})

    def request_stop(self, reason: str) -> asyncio.Task:
        """Schedule the stop (idempotent); the task can be awaited."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(reason), name=f"live-stop-{self.key}")
        return self._stop_task

    async def stop(self, reason: str) -> None:
        await asyncio.shield(self.request_stop(reason))

    async def _stop(self, reason: str) -> None:
        self.state, self.stop_reason = "stopping", reason
        dropped = list(self.queue)
        self.queue.clear()
        for item in dropped:
            item.announced.set()
        data = {"reason": reason, "dropped": [item.ref for item in dropped]}
        seq = None
        try:
            current = self.current
            if current is not None:
                current.cancelled = True
                if current.task is not None:
                    current.task.cancel()
            if self._turn_runner is not None:
                await asyncio.wait([self._turn_runner], timeout=STOP_WAIT_SECONDS)
            me = asyncio.current_task()
            others = [task for task in self._tasks if task is not me]
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
            self.stopped.set()

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

    async def _ack(self, message: dict[str, Any], **result: Any) -> None:
        await self._reply(message.get("reply_to"), {"type": "live.ack", "id": message.get("id"),
                                                     **result})

    async def broadcast(self, frame: dict[str, Any]) -> None:
        try:
            await self.layer.group_send(self.group, {"type": "live.frame", "frame": frame})
        except Exception:
            logger.exception("Live session %s could not fan out %r", self.key, frame.get("type"))

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    # -- messages and turns -------------------------------------------------------------------

    async def live_message(self, message: dict[str, Any]) -> None:
        msg_id = str(message.get("id") or uuid.uuid4().hex)
        if msg_id in self._seen:  # a resend of a message we already took
            await self._ack(message, ok=True)
            return
        if self.state != "running":
            await self._ack(message, ok=False, retry=True)
            return
        ref = message.get("ref") or msg_id
        idle = not self.busy
        if not idle and len(self.queue) >= self.queue_max:
            await self._ack(message, ok=False, frame=error_frame(
                QUEUE_FULL, f"{self.queue_max} messages are already waiting; try again later.",
                ref=ref))
            return
        self._remember(msg_id)
        item = Item(msg_id, ref, message.get("input"), message.get("user_id"),
                    message.get("reply_to"))
        self.touch()
        self.queue.append(item)
        if idle:
            item.announced.set()
            self._next()
            await self._ack(message, ok=True)
            return
        position = len(self.queue)
        await self._ack(message, ok=True)
        try:
            data = {"ref": ref, "input": item.input, "user_id": item.user_id,
                    "position": position}
            seq = await self._append_event(EventType.MESSAGE_QUEUED, data)
            await self.broadcast({"type": "message.queued", **data, "seq": seq})
        finally:
            item.announced.set()

    def _remember(self, msg_id: str) -> None:
        self._seen[msg_id] = None
        while len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)

    def _next(self) -> None:
        """Start the next queued turn if none runs (no await: the check and start are atomic)."""
        if self.current is None and self.queue and self.state == "running":
            self.current = item = self.queue.popleft()
            self._turn_runner = asyncio.create_task(self._run(item), name=f"live-turn-{self.key}")

    async def _run(self, item: Item) -> None:
        try:
            await item.announced.wait()
            if item.cancelled or self.state != "running":
                await self._dropped(item)
                return
            await self.broadcast({"type": "run.status", "status": "started",
                                  **item.summary()})
            item.task = asyncio.create_task(self._turn(item))
            await asyncio.wait([item.task])
            await self._report(item)
        except Exception:
            logger.exception("Live session %s failed to run a turn", self.key)
        finally:
            self.current = None
            self.touch()
            self._next()

    async def _turn(self, item: Item) -> Any:
        async def on_progress(kind: str, data: dict[str, Any]) -> None:
            if kind == "run.started":  # viewers already got run.status "started"
                return
            frame = {"type": kind, "ref": item.ref, **data}
            if kind == "delta":
                item.deltas += 1
                frame["n"] = item.deltas
                if data.get("kind") == "text":
                    item.partial.append(data.get("text") or "")
            self.touch()
            await self.broadcast(frame)

        try:
            session = await self.model._default_manager.acontinue_session(
                self.conversation_id, item.input, on_progress=on_progress)
        except (asyncio.CancelledError, Exception) as error:
            item.record = getattr(error, "turn", None)  # set by the store when a run was recorded
            raise
        item.record = session.last_turn
        return session

    async def _report(self, item: Item) -> None:
        task = item.task
        assert task is not None
        base = {"type": "run.status", "ref": item.ref}
        record = item.record
        if task.cancelled() and not (record and record.status == RunStatus.COMPLETED):
            await self.broadcast({**base, "status": "cancelled", **_run_info(record, True)})
            return
        # a cancel that came while the turn was committing: the turn completed
        error = None if task.cancelled() else task.exception()
        if error is None:
            message = record.event(EventType.MESSAGE_ASSISTANT) or {}
            output = (record.event(EventType.RUN_COMPLETED) or {}).get("data", {}).get("output")
            await self.broadcast({"type": "message", "role": "assistant", "ref": item.ref,
                                  "run_id": str(record.run_id),
                                  "content": message.get("data", {}).get("content", []),
                                  "output": output, "seq": message.get("seq")})
            await self.broadcast({**base, "status": "completed", "run_id": str(record.run_id),
                                  "output": output, "usage": record.usage, "seq": record.seq})
            return
        if isinstance(error, exc.AgentSessionError):
            payload = error.to_dict()
        else:
            logger.error("Turn of %s raised", self.key, exc_info=error)
            payload = {"code": "internal_error", "message": "The turn failed unexpectedly.",
                       "retryable": False}
        await self.broadcast({**base, "status": "failed", **_run_info(record, False),
                              "error": payload})
        if isinstance(error, exc.SessionNotFound):
            self.request_stop("deleted")

    async def _dropped(self, item: Item) -> None:
        """Tell the group a queued message was cancelled before its turn began."""
        await self.broadcast({"type": "run.status", "status": "cancelled", "ref": item.ref,
                              "run_id": None, "queued": True})

    async def _append_event(self, kind: str, data: dict[str, Any]) -> int | None:
        def append() -> int:
            return SessionStore(self.model).append_events(self.conversation_id,
                                                          [(kind, data)])[0].seq
        try:
            return await database_sync_to_async(append)()
        except exc.SessionNotFound:
            return None

    # -- cancel, presence, stop --------------------------------------------------------------

    async def live_cancel(self, message: dict[str, Any]) -> None:
        ref = message.get("ref")
        self.touch()
        current = self.current
        if current is not None and ref in (None, current.ref):
            if current.task is not None:
                current.task.cancel()
            else:  # its turn has not begun: it never reaches the model
                current.cancelled = True
            await self._ack(message, ok=True)
            return
        for item in list(self.queue):
            if item.ref == ref:
                self.queue.remove(item)
                item.announced.set()
                await self._ack(message, ok=True)
                await self._dropped(item)
                return
        await self._ack(message, ok=False, frame=error_frame(
            NOTHING_TO_CANCEL, "No running turn or queued message matches.", ref=ref))

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
        """The live part of ``session.state``: running turn, queue, presence."""
        return {
            "running": self.current.summary(running=True) if self.current else None,
            "queue": [dict(item.summary(), position=i) for i, item in enumerate(self.queue, 1)],
            "presence": self.presence.snapshot(),
        }

    # -- timers ------------------------------------------------------------------------------

    def _tick_seconds(self) -> float:
        spans = [self.lease_seconds / 3, self.grace]
        if self.timeout is not None:
            spans.append(self.timeout)
        return min(max(min(spans) / 4, 0.05), 1.0)

    async def _ticker(self) -> None:
        tick = self._tick_seconds()
        while self.state == "running":
            await asyncio.sleep(tick)
            try:
                if not await self._tick(time.monotonic()):
                    return
            except Exception:
                logger.exception("Live session %s: timer failed", self.key)
                if time.monotonic() >= self.lease_deadline:  # cannot prove ownership
                    self.request_stop("lease_lost")
                    return

    async def _tick(self, now: float) -> bool:
        """Renew the lease, expire presence, apply the timeouts; False once stopping."""
        if now >= self.next_renew and not await self._renew(now):
            return False
        if self.presence.expire():
            await self._publish_presence(now)
        if self.busy:
            return True
        if self.timeout is not None and now - self.last_activity >= self.timeout:
            self.request_stop("inactivity")
            return False
        if self.no_viewers_since is not None and now - self.no_viewers_since >= self.grace:
            self.request_stop("no_viewers")
            return False
        return True

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
        return True
