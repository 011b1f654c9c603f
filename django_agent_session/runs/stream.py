"""What viewers see of a run while it runs: frames to the conversation's group, and a buffer.

Whoever runs a queued run (the inline executor, a task worker) publishes its progress through a
:class:`RunStream`: every frame goes to the conversation's channel-layer group, so viewers on any
process receive it. Progress frames (deltas, tool calls, results) carry the ``run_id`` and a
per-run index ``n`` (1, 2, 3...) and are also appended to a bounded per-run buffer, so a viewer
who connects mid-run is sent the frames it missed, then the live ones, and can drop duplicates by
``n``. Deltas are never stored as events; the buffer expires shortly after the run ends. A run
that pauses for approvals is not over: its buffer stays, and when it resumes its frames go on
numbering after those it sent before the pause (the count is kept with the pause).

Buffers: with the channels-redis layer, a Redis stream per running run (on the layer's first
host, under its prefix, with a TTL), readable from every process; otherwise an in-process
buffer, which is enough for the in-memory layer (one process).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models

from .. import exceptions as exc
from ..records import AgentEvent, EventType, RunStatus
from ..store import codec
from ..store.lease import INTERRUPTED
from ..store.turns import Turn, TurnRecord

logger = logging.getLogger("django_agent_session.runs")

#: frames kept per run (a longer run keeps its latest frames; ``running.partial_text`` in the
#: state still has the whole text)
MAX_FRAMES = 20_000
#: seconds a buffer outlives its run (a running run's buffer is refreshed as it grows)
TTL_SECONDS = 60 * 60
FINISHED_TTL_SECONDS = 60


def group_name(model: type[models.Model], conversation_id: Any) -> str:
    """The channel-layer group of a conversation (ASCII alnum, ``-_.``, under 100 chars)."""
    label = model._meta.label_lower
    if len(label) > 50 or not re.fullmatch(r"[a-z0-9_.]+", label):
        label = hashlib.sha1(label.encode()).hexdigest()[:16]
    return f"agent_session.{label}.{uuid.UUID(str(conversation_id)).hex}"


# -- group messages ---------------------------------------------------------------------------

def frame_message(frame: dict[str, Any]) -> dict[str, Any]:
    """The channel-layer message carrying ``frame`` to a conversation's viewers.

    The frame is encoded to JSON once, here, and every viewer's consumer sends that text as
    is: encoding per viewer (and the in-memory layer's deep copy of a nested frame per
    viewer) was most of the cost of fanning a delta out to 50 viewers. ``kind``, ``run_id``
    and ``n`` are copied next to it for the consumer's bookkeeping; :func:`frame_of` gives
    the frame back.
    """
    return {"type": "live.frame", "text": codec.dumps(frame), "kind": frame.get("type"),
            "run_id": frame.get("run_id"), "n": frame.get("n")}


def frame_of(message: dict[str, Any]) -> dict[str, Any]:
    """The frame a ``live.frame`` message carries (decoded from its text)."""
    if "frame" in message:  # sent by an older version of this library during an upgrade
        return dict(message["frame"])
    return dict(codec.loads(message["text"]))


# -- buffers ----------------------------------------------------------------------------------

class LocalBuffer:
    """Per-run frame lists in this process (for the in-memory layer)."""

    def __init__(self) -> None:
        self._runs: dict[str, list[dict[str, Any]]] = {}
        self._expiry: dict[str, float] = {}

    async def append(self, run_id: str, frame: dict[str, Any]) -> None:
        frames = self._runs.setdefault(run_id, [])
        frames.append(frame)
        if len(frames) > MAX_FRAMES:
            del frames[: len(frames) - MAX_FRAMES]
        self._expiry[run_id] = time.monotonic() + TTL_SECONDS

    async def read(self, run_id: str) -> list[dict[str, Any]]:
        self._expire()
        return list(self._runs.get(run_id, ()))

    async def finish(self, run_id: str) -> None:
        if run_id in self._runs:
            self._expiry[run_id] = time.monotonic() + FINISHED_TTL_SECONDS
        self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        for run_id in [r for r, at in self._expiry.items() if at <= now]:
            self._runs.pop(run_id, None)
            self._expiry.pop(run_id, None)


class RedisBuffer:
    """A Redis stream per run, through the channels-redis layer's own connection."""

    #: the index of the layer's Redis host that holds the buffers
    HOST = 0

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    def _key(self, run_id: str) -> str:
        return f"{self.layer.prefix}:agent_session:run:{run_id}"

    async def append(self, run_id: str, frame: dict[str, Any]) -> None:
        async with self.layer.connection(self.HOST).pipeline(transaction=False) as pipe:
            self.queue(pipe, run_id, codec.dumps(frame))
            await pipe.execute()

    def queue(self, pipe: Any, run_id: str, text: str) -> None:
        """Queue the commands appending a frame (its JSON ``text``) on a pipeline of
        :attr:`HOST`."""
        key = self._key(run_id)
        pipe.xadd(key, {"f": text}, maxlen=MAX_FRAMES, approximate=True)
        pipe.expire(key, TTL_SECONDS)

    async def read(self, run_id: str) -> list[dict[str, Any]]:
        """The run's frames, each once: redis-py retries a pipeline that lost its connection,
        which may append a frame twice."""
        entries = await self.layer.connection(self.HOST).xrange(self._key(run_id))
        frames, seen = [], set()
        for _, fields in entries:
            frame = codec.loads(fields[b"f"])
            n = frame.get("n")
            if n is None or n not in seen:
                seen.add(n)
                frames.append(frame)
        return frames

    async def finish(self, run_id: str) -> None:
        await self.layer.connection(self.HOST).expire(self._key(run_id),
                                                      FINISHED_TTL_SECONDS)


_local = LocalBuffer()


def buffer_for(layer: Any) -> LocalBuffer | RedisBuffer:
    """The buffer that goes with ``layer``: Redis for channels-redis, else this process's."""
    if layer is not None and any(cls.__module__.startswith("channels_redis.core")
                                 for cls in type(layer).__mro__):  # or a subclass of it
        return RedisBuffer(layer)
    return _local


# -- publishing -------------------------------------------------------------------------------

class RunStream:
    """Publishes one run: ``on_progress`` is the engine's progress callback, ``finished`` sends
    the outcome (the assistant message and the final ``run.status``)."""

    def __init__(self, model: type[models.Model], turn: Turn, layer: Any) -> None:
        self.turn, self.layer = turn, layer
        self.buffer = buffer_for(layer)
        self.group = group_name(model, turn.session.pk)
        self.run_id = str(turn.run_id)
        self.base = {"ref": turn.ref, "run_id": self.run_id}
        # a resumed run goes on numbering after the frames sent before it paused
        self.n = turn.progress_frames
        #: deltas not yet published, and the task publishing them (see ``on_progress``)
        self._deltas: list[dict[str, Any]] = []
        self._publisher: asyncio.Task | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        if self.layer is None:
            return
        try:
            await self.layer.group_send(self.group, frame_message(frame))
        except Exception:  # a full or unreachable layer must not fail the run
            logger.warning("Could not fan out %r of run %s", frame.get("type"), self.run_id,
                           exc_info=True)

    async def on_progress(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "run.started" and self.turn.stale_run_id is not None:
            # the run this one took the lease from died with its process: say how it ended
            await self.send({"type": "run.status", "status": "failed",
                             "ref": self.turn.stale_ref or str(self.turn.stale_run_id),
                             "run_id": str(self.turn.stale_run_id), "seq": None,
                             "error": INTERRUPTED})
        if kind == "run.started":
            frame = {"type": "run.status", "status": "started", **self.base,
                     "input": self.turn.input, "user_id": self.turn.origin.get("user_id")}
            if self.turn.resume is not None:  # its user message was shown before it paused
                frame["resumed"] = True
            await self.send(frame)
            return
        if kind == "delta":
            # deltas are published by a task of their own, so the model's stream is never
            # held up by the layer; the deltas that arrived while it published one frame are
            # merged into the next (a fast model's words become one frame, not one each)
            self._deltas.append(data)
            if self._publisher is None or self._publisher.done():
                self._publisher = asyncio.create_task(self._publish_deltas())
            return
        await self.flush()  # every delta before it, in order
        await self._publish(kind, data)

    async def flush(self) -> None:
        """Wait until every delta received so far is published."""
        while self._publisher is not None and not self._publisher.done():
            await asyncio.shield(self._publisher)

    async def _publish_deltas(self) -> None:
        while self._deltas:
            batch, self._deltas = self._deltas, []
            for data in merged(batch):
                await self._publish("delta", data)

    async def _publish(self, kind: str, data: dict[str, Any]) -> None:
        """Buffer a progress frame, then send it: a viewer that joins the group too late for
        the frame finds it in the buffer."""
        self.n += 1
        self.turn.progress_frames = self.n  # recorded with a pause
        frame = {"type": kind, **self.base, "n": self.n, **data}
        fused = getattr(self.layer, "group_send_after", None)
        if fused is not None and isinstance(self.buffer, RedisBuffer):
            # this library's Redis layer: buffered and sent in one round trip
            await self._publish_fused(fused, self.buffer, frame)
            return
        try:
            await self.buffer.append(self.run_id, frame)
        except Exception:
            logger.warning("Could not buffer a frame of run %s", self.run_id, exc_info=True)
        await self.send(frame)

    async def _publish_fused(self, group_send_after: Any, buffer: RedisBuffer,
                             frame: dict[str, Any]) -> None:
        try:
            message = frame_message(frame)
            results = await group_send_after(
                self.group, message,
                lambda pipe: buffer.queue(pipe, self.run_id, message["text"]),
                host=buffer.HOST)
        except Exception:  # a full or unreachable layer must not fail the run
            logger.warning("Could not fan out %r of run %s", frame.get("type"), self.run_id,
                           exc_info=True)
            return
        error = next((r for r in results if isinstance(r, Exception)), None)
        if error is not None:
            logger.warning("Could not buffer a frame of run %s", self.run_id,
                           exc_info=error)

    async def finished(self, record: TurnRecord | None, error: BaseException | None) -> None:
        """Tell the viewers how the run ended (``record``: what it wrote)."""
        base = {"type": "run.status", **self.base}
        paused = False
        try:
            await self.flush()
            if error is None and record is not None and \
                    record.status == RunStatus.AWAITING_APPROVAL:
                paused = True  # not over: its buffer is kept for the resumed run's viewers
                pending = [e["data"] for e in record.events
                           if e["type"] == EventType.TOOL_APPROVAL_REQUESTED]
                await self.send({**base, "status": "awaiting_approval", "pending": pending,
                                 "seq": record.seq})
            elif error is None and record is not None:
                message = record.event(EventType.MESSAGE_ASSISTANT) or {}
                output = ((record.event(EventType.RUN_COMPLETED) or {}).get("data", {})
                          .get("output"))
                await self.send({"type": "message", "role": "assistant", **self.base,
                                 "content": message.get("data", {}).get("content", []),
                                 "output": output, "seq": message.get("seq")})
                completed = (record.event(EventType.RUN_COMPLETED) or {}).get("data", {})
                await self.send({**base, "status": "completed", "output": output,
                                 "usage": record.usage, "seq": record.seq,
                                 "stop_reason": completed.get("stop_reason"),
                                 "cost": completed.get("cost")})
            elif record is not None and record.status == RunStatus.CANCELLED or isinstance(
                    error, (asyncio.CancelledError, exc.TurnCancelled)):
                await self.send({**base, "status": "cancelled", **outcome(record, True)})
            else:
                payload = (error.to_dict() if isinstance(error, exc.AgentSessionError) else
                           {"code": "internal_error", "retryable": False,
                            "message": "The turn failed unexpectedly."})
                # a reply cut off or refused is an outcome of its own, not a failure
                ended = record.status if record is not None and record.status in (
                    RunStatus.INCOMPLETE, RunStatus.REFUSED) else "failed"
                await self.send({**base, "status": str(ended), **outcome(record, False),
                                 "error": payload})
        finally:
            try:
                if not paused:
                    await self.buffer.finish(self.run_id)
            except Exception:
                logger.info("Could not expire the buffer of run %s", self.run_id)


def outcome(record: TurnRecord | None, cancelled: bool) -> dict[str, Any]:
    """The final seq and partial reply of a failed or cancelled run's record."""
    if record is None:
        return {"seq": None}
    info: dict[str, Any] = {"seq": record.seq}
    end = record.events[-1]["data"] if record.events else {}
    if "partial_text" in end or cancelled:
        info["partial_text"] = end.get("partial_text", "")  # reported, never stored in context
    return info


def merged(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive deltas of one content block (same ``kind``, ``index`` and ``iteration``)
    joined into one."""
    out: list[dict[str, Any]] = []
    for delta in deltas:
        last = out[-1] if out else None
        if last is not None and all(last.get(k) == delta.get(k)
                                    for k in ("kind", "index", "iteration")) and \
                isinstance(last.get("text"), str) and isinstance(delta.get("text"), str):
            out[-1] = {**last, "text": last["text"] + delta["text"]}
        else:
            out.append(delta)
    return out


def partial_text(frames: list[dict[str, Any]]) -> str:
    """The text a run's buffered frames have streamed so far."""
    return "".join(f.get("text") or "" for f in frames
                   if f.get("type") == "delta" and f.get("kind") == "text")


async def announce(layer: Any, model: type[models.Model], conversation_id: Any,
                   frame: dict[str, Any]) -> None:
    """Send ``frame`` to the conversation's viewers (a decision, a cancelled queued run)."""
    if layer is not None:
        await layer.group_send(group_name(model, conversation_id), frame_message(frame))


def decision_frame(model: type[models.Model], run: Any, tool_use_id: str, resumed: bool
                   ) -> dict[str, Any]:
    """Sync: the frame telling viewers of the decision on call ``tool_use_id`` of ``run``
    (an ``AgentRun``): its stored ``tool.approval_granted`` / ``tool.approval_denied`` event
    (``run_id``, ``tool_use_id``, ``name``, ``approved``, ``by``, ``reason``, ``input``?,
    ``at``) with its ``seq``, the run's ``ref``, and whether the run ``resumed``."""
    kinds = (EventType.TOOL_APPROVAL_GRANTED, EventType.TOOL_APPROVAL_DENIED)
    events = AgentEvent.objects.filter(
        session_type=ContentType.objects.get_for_model(model), session_id=run.session_id,
        run_id=run.pk, type__in=kinds).order_by("-seq")
    event = next((e for e in events if e.data.get("tool_use_id") == tool_use_id), None)
    if event is None:
        raise LookupError(f"No decision on tool call {tool_use_id} of run {run.pk} is stored.")
    return {"type": event.type, "ref": run.ref, **event.data, "resumed": resumed,
            "seq": event.seq}


async def announce_queued(layer: Any, model: type[models.Model], conversation_id: Any,
                          submitted: Any) -> None:
    """Tell the conversation's viewers a message was queued (``message.queued``)."""
    run = submitted.run
    if layer is None or not submitted.created:
        return
    frame = {"type": "message.queued", "ref": run.ref, "run_id": str(run.pk),
             "input": run.input, "user_id": run.origin.get("user_id"),
             "position": submitted.position, "seq": run.queued_seq}
    await layer.group_send(group_name(model, conversation_id), frame_message(frame))
