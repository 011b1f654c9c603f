"""What a stream protocol is: a per-response translator of this library's stream events.

The streaming views produce one sequence of events, whatever the client reads: ``run.started``,
``delta``, ``tool.call``, ``tool.result``, ``tool.approval_requested``, ``budget.warning``,
``context.compacted``, then ``message`` (the turn body) or ``error`` (the error body). Progress
events carry an ``id`` (the run's frame index ``n``), which ``Last-Event-ID`` resumes after.

A :class:`StreamProtocol` turns each event into bytes. The native protocol writes it as one SSE
frame; a chat-UI protocol may write several frames for one event, or none, and keeps state
across events (which text block is open, whether its run was announced). So one instance serves
one response, and every response is a well-formed stream of its protocol on its own, also when
it resumes after a ``Last-Event-ID``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django.core.serializers.json import DjangoJSONEncoder


def dumps(data: Any) -> str:
    """Compact JSON on one line (``json.dumps`` never emits a newline)."""
    return json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":"))


def sse(event: str, data: Any, id: int | None = None) -> bytes:
    """One SSE frame of the native protocol: an ``event:`` line and one ``data:`` line."""
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\ndata: {dumps(data)}\n\n".encode()


def data_frames(payloads: list[Any], id: int | None = None) -> bytes:
    """Unnamed SSE frames (``data: {json}``), as both chat-UI protocols send them.

    The ``id`` goes on the last frame, so a client that resumes with it gets none of them again.
    With no payloads, an ``id``-only frame still moves the client's last event id on (the SSE
    spec sets it without dispatching an event; parsers that track no ids ignore it).
    """
    frames = [f"data: {dumps(payload)}\n\n" for payload in payloads]
    if id is not None:
        if frames:
            frames[-1] = f"id: {id}\n{frames[-1]}"
        else:
            frames.append(f"id: {id}\n\n")
    return "".join(frames).encode()


class StreamProtocol:
    """Encodes one response's events. Subclasses override :meth:`event` and :meth:`close`."""

    #: the ``?protocol=`` value that selects it
    name: ClassVar[str] = ""
    #: extra response headers
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, *, thread_id: str | None = None, run_id: str | None = None) -> None:
        self.thread_id, self.run_id = thread_id, run_id

    def bind(self, *, thread_id: Any = None, run_id: Any = None) -> None:
        """Learn the conversation's or run's id once known (a WSGI start learns the
        conversation's only after its turn)."""
        if thread_id is not None:
            self.thread_id = str(thread_id)
        if run_id is not None:
            self.run_id = str(run_id)

    def event(self, name: str, data: Any, id: int | None = None) -> bytes:
        raise NotImplementedError

    def close(self) -> bytes:
        """Bytes after the last event (``b""``: nothing)."""
        return b""


class NativeStream(StreamProtocol):
    """This library's own events, one ``event:``/``data:`` frame each (the default)."""

    def event(self, name: str, data: Any, id: int | None = None) -> bytes:
        return sse(name, data, id)
