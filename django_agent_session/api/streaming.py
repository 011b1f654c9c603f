"""Server-Sent Events for the streaming variants of start and continue.

Under ASGI the response body is an async generator: the turn runs on the event loop through
the manager's async methods, and every progress event is written as soon as it happens (no
buffering). Under WSGI an async body could only be served by collecting it first, so the
body is a sync generator that runs the turn and then writes the same events: the same
protocol, without incremental delivery. A client that disconnects cancels the turn (ASGI).

The events::

    event: run.started   {"run_id"}; first event of every turn
    event: delta         {"kind": "text"|"thinking"|"tool_input", "index", "text", "iteration"}
    event: tool.call     {"id", "name", "input"}
    event: tool.result   {"id", "name", "content", "is_error"}
    event: budget.warning {"used", "budget"}
    event: message       the turn's JSON body ({"session", "output"}); last event on success
    event: error         {"status", "code", "detail", "retryable", ...}; last event on failure
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from channels.db import database_sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from .errors import error_body

CONTENT_TYPE = "text/event-stream"

Progress = Callable[[str, dict[str, Any]], Any]
#: runs the turn with a progress callback and returns the saved session
AsyncTurn = Callable[[Progress], Awaitable[Any]]
SyncTurn = Callable[[Progress], Any]
#: the ``message`` event's data for the saved session
Finish = Callable[[Any], Any]


def sse(event: str, data: Any) -> bytes:
    """One SSE frame (``json.dumps`` never emits a newline, so one ``data:`` line suffices)."""
    payload = json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"


async def astream(turn: AsyncTurn, finish: Finish, keepalive: float) -> AsyncIterator[bytes]:
    """Run ``turn`` on the event loop and yield its events as they happen."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def on_progress(kind: str, data: dict[str, Any]) -> None:
        queue.put_nowait(sse(kind, data))

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
            yield frame
        try:
            session = task.result()
        except Exception as error:
            yield sse("error", error_body(error))
        else:
            # the body's serializer may be a project's, reading related rows
            yield sse("message", await database_sync_to_async(finish)(session))
    finally:
        if not task.done():  # the client went away: cancel the turn (recorded as cancelled)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def stream(turn: SyncTurn, finish: Finish) -> Iterator[bytes]:
    """Run ``turn`` synchronously, then yield its events (the WSGI fallback)."""
    frames: list[bytes] = []
    try:
        session = turn(lambda kind, data: frames.append(sse(kind, data)))
    except Exception as error:
        yield from frames
        yield sse("error", error_body(error))
        return
    yield from frames
    yield sse("message", finish(session))


def event_stream_response(request: HttpRequest, *, aturn: AsyncTurn, turn: SyncTurn,
                          finish: Finish, keepalive: float = 15.0) -> StreamingHttpResponse:
    """A ``text/event-stream`` response running the turn the way the server can stream it."""
    if isinstance(request, ASGIRequest):
        body: Any = astream(aturn, finish, keepalive)
    else:
        body = stream(turn, finish)
    response = StreamingHttpResponse(body, content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer this response
    return response


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
