"""Server-Sent Events: the streaming variants of start and continue, and following a run.

Under ASGI a streamed turn is submitted like any other (a queued run, run by the executor) and
the response *follows* it (:func:`afollow`): it joins the conversation's channel-layer group,
sends what the run's buffer already holds, then the live frames, each progress event with an
``id`` (its per-run index). The client going away only stops the following: the run goes on,
and ``GET …/runs/{id}/stream/`` with ``Last-Event-ID`` resumes after the last event it got. A
run that pauses for approvals ends the following with its turn body (``awaiting_approval``);
following it again after the decision goes on with its next events.
Under WSGI an async body could only be served by collecting it first, so the body is a sync
generator that runs the turn and then writes the same events, without incremental delivery.

The events::

    event: run.started   {"run_id"}; first event of every turn
    event: delta         {"kind": "text"|"thinking"|"tool_input", "index", "text", "iteration"}
    event: tool.call     {"id", "name", "input"}
    event: tool.result   {"id", "name", "content", "is_error"}
    event: budget.warning {"used", "budget"}
    event: tool.approval_requested {"tool_use_id", "name", "input"}; the turn pauses
    event: message       the turn's JSON body ({"session", "output", "run_id", "status",
                         "pending"}); last event on success, or when the turn paused for
                         approvals (``status: "awaiting_approval"``)
    event: error         {"status", "code", "detail", "retryable", ...}; last event on failure

Those are the native frames. With ``?protocol=ai-sdk`` or ``?protocol=ag-ui`` the same events
go through a :class:`~.protocols.StreamProtocol` that writes that protocol's frames instead
(see :mod:`.protocols`); every function here takes the response's ``protocol`` instance.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from rest_framework.renderers import BaseRenderer

from ..records import AgentRun, RunStatus
from ..runs.stream import buffer_for, frame_of, group_name
from .errors import error_body
from .protocols import NativeStream, StreamProtocol, sse

__all__ = ["CONTENT_TYPE", "KEEPALIVE", "EventStreamRenderer", "afollow", "astream",
           "event_stream", "event_stream_response", "sse", "stream"]

CONTENT_TYPE = "text/event-stream"
#: how long after a run's end a resuming follower listens for its last frames: the run's row
#: is committed before the frames still being published reach the buffer and the group
SETTLE_SECONDS = 1.0

Progress = Callable[[str, dict[str, Any]], Any]
#: runs the turn with a progress callback and returns the saved session
AsyncTurn = Callable[[Progress], Awaitable[Any]]
SyncTurn = Callable[[Progress], Any]
#: the ``message`` event's data for the saved session
Finish = Callable[[Any], Any]


KEEPALIVE = b": keep-alive\n\n"


async def astream(turn: AsyncTurn, finish: Finish, keepalive: float,
                  protocol: StreamProtocol | None = None) -> AsyncIterator[bytes]:
    """Run ``turn`` on the event loop and yield its events as they happen."""
    encode = protocol or NativeStream()
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()

    async def on_progress(kind: str, data: dict[str, Any]) -> None:
        queue.put_nowait((kind, data))

    task = asyncio.ensure_future(turn(on_progress))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), keepalive)
            except TimeoutError:
                yield KEEPALIVE  # keeps proxies from closing an idle connection
                continue
            if frame is None:
                break
            yield encode.event(*frame)
        try:
            session = task.result()
        except Exception as error:
            yield encode.event("error", error_body(error))
        else:
            encode.bind(thread_id=getattr(session, "pk", None))
            # the body's serializer may be a project's, reading related rows
            yield encode.event("message", await database_sync_to_async(finish)(session))
        if tail := encode.close():
            yield tail
    finally:
        if not task.done():  # the client went away: cancel the turn (recorded as cancelled)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def stream(turn: SyncTurn, finish: Finish,
           protocol: StreamProtocol | None = None) -> Iterator[bytes]:
    """Run ``turn`` synchronously, then yield its events (the WSGI fallback)."""
    encode = protocol or NativeStream()
    events: list[tuple[str, Any]] = []
    try:
        session = turn(lambda kind, data: events.append((kind, data)))
    except Exception as error:
        body = error_body(error)
        encode.bind(thread_id=body.get("session_id"))
        events.append(("error", body))
    else:
        # encoded once the turn is over, when a new session's id (a thread's) is known
        encode.bind(thread_id=getattr(session, "pk", None))
        events.append(("message", finish(session)))
    for kind, data in events:
        yield encode.event(kind, data)
    if tail := encode.close():
        yield tail


#: the outcome of a followed run: its events after the progress, ``[(name, data)]``
#: (``"message"`` or ``"error"``)
Outcome = Callable[[Any], list[tuple[str, Any]]]


async def afollow(model: Any, run: Any, outcome: Outcome, keepalive: float,
                  after: int = 0, protocol: StreamProtocol | None = None
                  ) -> AsyncIterator[bytes]:
    """Follow ``run`` (an ``AgentRun``) to its end: its buffered progress after index
    ``after``, then the live frames, then ``outcome(run)``. Never cancels the run.

    A client resuming (``after`` > 0) gets what it missed of a run that has ended too, from
    its buffer, and listens for frames still being published just after the end."""
    encode = protocol or NativeStream()
    encode.bind(thread_id=run.session_id, run_id=run.pk)
    layer = get_channel_layer()
    run_id = str(run.pk)
    channel = None
    if layer is not None:
        channel = await layer.new_channel()
        await layer.group_add(group_name(model, run.session_id), channel)
    try:
        run = await AgentRun.objects.aget(pk=run.pk)
        last, started = after, after > 0
        # a run's row says it ended before its last frames are published; a client resuming
        # (``after``) just then listens for them, up to SETTLE_SECONDS after the end
        settle_for = 0.0
        if after > 0 and run.finished and run.ended_at is not None:
            settle_for = SETTLE_SECONDS - (timezone.now() - run.ended_at).total_seconds()
        loop = asyncio.get_running_loop()
        settle_until = loop.time() + settle_for if settle_for > 0 else None
        # a paused run's frames so far, too; and, for a client resuming, those of a run that
        # ended while it was away, while its buffer is kept (FINISHED_TTL_SECONDS)
        if not run.finished or after > 0:
            if run.status == RunStatus.RUNNING and not started:
                started = True
                yield encode.event("run.started", {"run_id": run_id})
            for frame in await buffer_for(layer).read(run_id) if layer is not None else []:
                if frame["n"] > last:
                    last = frame["n"]
                    yield encode.event(*_progress(frame))
        while settle_until is not None or not _settled(run):
            wait = keepalive if settle_until is None else max(settle_until - loop.time(), 0.0)
            got = await _next_frame(layer, channel, run_id, wait)
            if got is None:  # quiet: keep the connection open, and look at the row
                if settle_until is not None:  # its last frames went out before this listened
                    break
                yield KEEPALIVE
                run = await AgentRun.objects.aget(pk=run.pk)
                continue
            frame = got
            if frame["type"] == "run.status":
                if frame["status"] == "started" and not started:
                    started = True
                    yield encode.event("run.started", {"run_id": run_id})
                elif frame["status"] != "started":
                    settle_until = None  # sent after every progress frame of the run
                    run = await AgentRun.objects.aget(pk=run.pk)
            elif frame.get("n") is not None and frame["n"] > last:
                last = frame["n"]
                yield encode.event(*_progress(frame))
        for name, data in await database_sync_to_async(outcome)(run):
            yield encode.event(name, data)
        if tail := encode.close():
            yield tail
    finally:
        if channel is not None:
            with contextlib.suppress(Exception):
                await layer.group_discard(group_name(model, run.session_id), channel)


def _settled(run: AgentRun) -> bool:
    """Whether a followed run has an outcome: it ended, or it paused for approvals (a person
    may decide much later; following it again after the decision goes on)."""
    return run.finished or run.status == RunStatus.AWAITING_APPROVAL


async def _next_frame(layer: Any, channel: str | None, run_id: str, timeout: float
                      ) -> dict[str, Any] | None:
    """The next group frame of run ``run_id``; ``None`` after ``timeout`` without one."""
    if layer is None or channel is None:
        await asyncio.sleep(min(timeout, 0.5))
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(layer.receive(channel), remaining)
        except TimeoutError:
            return None
        if message.get("type") != "live.frame":
            continue
        # "frame": from an older version of this library during a rolling upgrade
        if (message.get("run_id") or message.get("frame", {}).get("run_id")) == run_id:
            return frame_of(message)
    return None


def _progress(frame: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """A buffered or live progress frame as an event: its name, its data and its ``id``."""
    data = {k: v for k, v in frame.items() if k not in ("type", "ref", "run_id", "n")}
    return frame["type"], data, frame["n"]


def event_stream(body: Any, protocol: StreamProtocol | None = None) -> StreamingHttpResponse:
    """A ``text/event-stream`` response with ``body`` (proxies told not to buffer it), with
    the ``protocol``'s headers."""
    response = StreamingHttpResponse(body, content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer this response
    for name, value in (protocol.headers if protocol is not None else {}).items():
        response[name] = value
    return response


def event_stream_response(request: HttpRequest, *, aturn: AsyncTurn, turn: SyncTurn,
                          finish: Finish, keepalive: float = 15.0,
                          protocol: StreamProtocol | None = None) -> StreamingHttpResponse:
    """A ``text/event-stream`` response running the turn the way the server can stream it."""
    if isinstance(request, ASGIRequest):
        body: Any = astream(aturn, finish, keepalive, protocol)
    else:
        body = stream(turn, finish, protocol)
    return event_stream(body, protocol)


class EventStreamRenderer(BaseRenderer):
    """Lets ``Accept: text/event-stream`` negotiate; renders an error answer as one event."""

    media_type = CONTENT_TYPE
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: Mapping[str, Any] | None = None) -> bytes:
        response = (renderer_context or {}).get("response")
        status = getattr(response, "status_code", 200)
        body = data if isinstance(data, dict) else {"detail": data}
        return sse("error" if status >= 400 else "message", {"status": status, **body})
