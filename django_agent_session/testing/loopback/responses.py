"""Answering one recorded request on the wire, with the reply's scripted faults.

A :class:`~.reply.Reply` can ask for trouble: stall before answering, drop the
connection (before any response, or after some deltas), end a stream with a
mid-stream ``error`` event, pause between deltas, or hold until the test
releases it.  This module is where a reply is written out as a JSON body, an
SSE stream or an API error, and where each of those faults is acted on, so the
order "record, then write" and every way an answer can be cut short sit in one
place.  It works on a
:class:`~.httpd.LoopbackHandler` and a :class:`~.recording.RecordedRequest`,
and takes the message renderer and the stop signal from the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .httpd import ConnectionDropped, LoopbackHandler
from .recording import RecordedRequest, SentEvent
from .reply import Reply
from .wire import error_body, sse_events, sse_frame

#: seconds between looks at the server's stop signal while a reply is held
HOLD_POLL = 0.05

MessageRenderer = Callable[[Reply, RecordedRequest], dict[str, Any]]
"""Builds the API's ``Message`` for a reply (assigning its ids); called only once the reply will be sent."""


def answer(
    h: LoopbackHandler,
    record: RecordedRequest,
    reply: Reply,
    *,
    render: MessageRenderer,
    stopping: threading.Event,
) -> None:
    """Answer a ``/v1/messages`` request with ``reply``: stall, then an error, a JSON message or a stream.

    Raises :class:`~.httpd.ConnectionDropped` where the reply (or ``stopping``)
    says the connection is to be closed without a complete answer.
    """
    record.reply = reply
    if reply.stall_seconds and stopping.wait(reply.stall_seconds):
        raise ConnectionDropped
    if reply.is_error:
        send_error(h, record, reply)
        return
    if reply.garbage_body is not None:
        _send_garbage(h, record, reply.garbage_body)
        return
    if not record.stream and reply.drop_after is not None:
        raise ConnectionDropped
    if not record.stream:
        for _, release in reply.holds:
            _hold(release, stopping)
    message = render(reply, record)
    if record.stream:
        _stream(h, record, reply, message, stopping)
    else:
        send_json(h, record, 200, message, reply.headers)


def send_json(
    h: LoopbackHandler,
    record: RecordedRequest,
    status: int,
    payload: Any,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """Record ``status`` on ``record``, then send ``payload`` as JSON with the ``request-id`` header and ``headers``."""
    record.status = status
    h.send_json(status, payload, _answer_headers(record, headers))


def send_error(h: LoopbackHandler, record: RecordedRequest, reply: Reply) -> None:
    """Send an error ``reply`` in the API's error shape, with the request id in the body too."""
    payload = {**error_body(reply.error_type, reply.error_message), "request_id": record.request_id}
    send_json(h, record, reply.status, payload, reply.headers)


def _send_garbage(h: LoopbackHandler, record: RecordedRequest, body: bytes) -> None:
    """A 200 under the content type the request expects, with a body that is not one."""
    record.status = 200
    kind = "text/event-stream; charset=utf-8" if record.stream else "application/json"
    h.start_response(200, [("Content-Type", kind), ("Content-Length", str(len(body))),
                           *_answer_headers(record, ())])
    h.wfile.write(body)
    h.wfile.flush()


def _stream(
    h: LoopbackHandler,
    record: RecordedRequest,
    reply: Reply,
    message: dict[str, Any],
    stopping: threading.Event,
) -> None:
    record.status = 200
    h.start_response(
        200,
        [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
            *_answer_headers(record, reply.headers),
        ],
    )
    deltas = 0
    for name, data, is_delta in sse_events(message, reply.chunk_size):
        if is_delta:
            if reply.drop_after is not None and deltas >= reply.drop_after:
                raise ConnectionDropped
            if reply.error_after is not None and deltas >= reply.error_after:
                _write_event(h, record, "error", error_body("overloaded_error", "Overloaded"))
                h.end_chunks()
                return
            if reply.delay and stopping.wait(reply.delay):
                raise ConnectionDropped
            for after, release in reply.holds:
                if after == deltas:
                    _hold(release, stopping)
            deltas += 1
        if stopping.is_set():
            raise ConnectionDropped
        _write_event(h, record, name, data)
    h.end_chunks()


def _hold(release: threading.Event, stopping: threading.Event) -> None:
    """Wait for a held reply's ``release`` (see :meth:`Reply.held_after`), or the server's stop."""
    while not release.wait(HOLD_POLL):
        if stopping.is_set():
            raise ConnectionDropped


def _write_event(h: LoopbackHandler, record: RecordedRequest, name: str, data: Mapping[str, Any]) -> None:
    record.sent_events.append(SentEvent(name, data, time.monotonic()))
    h.write_chunk(sse_frame(name, data))


def _answer_headers(record: RecordedRequest, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every answer carries the request's ``request-id``, then the reply's own headers."""
    return [("request-id", record.request_id), *headers]
