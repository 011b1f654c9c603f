"""What the server received: :class:`RecordedRequest`, :class:`SentEvent` and the :data:`Responder` type.

Tests assert on what the SDK actually put on the wire, so every request is
kept as a :class:`RecordedRequest` (method, path, lower-cased headers, raw and
decoded body, the status and reply it got, the SSE events written back) with
read-only helpers for the fields a test asks about most.  This module holds
that record and how a raw request becomes one; it knows replies only as values
and nothing of sockets or threads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .media import decoded, media_blocks
from .reply import Reply, ReplyLike


@dataclass(frozen=True)
class SentEvent:
    """One SSE event the server wrote: its name, its JSON data and when it started writing it."""

    event: str
    data: Mapping[str, Any]
    at: float
    """``time.monotonic()`` just before the event was written to the socket."""


@dataclass
class RecordedRequest:
    """An HTTP request the server received, as seen on the wire.

    Instances are appended to :attr:`LoopbackMessagesServer.requests` as
    soon as the request is read, before it is answered; a responder receives
    the same instance.
    """

    index: int
    """Position in :attr:`LoopbackMessagesServer.requests` (0-based)."""
    method: str
    path: str
    """The path without the query string, e.g. ``/v1/messages``."""
    query: str
    """The raw query string, or ``""``."""
    headers: dict[str, str]
    """Request headers with lower-case names (repeated headers joined by ``", "``)."""
    raw_body: bytes
    body: Any
    """The JSON-decoded body (a dict for API calls), or ``None`` if empty or not JSON."""
    request_id: str
    """The ``request-id`` the server answered this request with."""
    received_at: float
    """``time.monotonic()`` when the request had been read."""
    status: int | None = None
    """HTTP status of the answer, set just before it is written (``None`` if none was sent)."""
    reply: Reply | None = None
    """The reply used to answer, for ``/v1/messages`` requests."""
    sent_events: list[SentEvent] = field(default_factory=list)
    """SSE events written for this request, in order (streaming requests only)."""

    def _field(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default) if isinstance(self.body, dict) else default

    @property
    def stream(self) -> bool:
        """Whether the body asked for a streamed answer (``"stream": true``)."""
        return self._field("stream") is True

    @property
    def model(self) -> str | None:
        """The ``model`` sent, or ``None``."""
        model = self._field("model")
        return model if isinstance(model, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``messages`` list sent, or ``[]``."""
        return list(self._field("messages") or [])

    @property
    def system(self) -> Any:
        """The ``system`` prompt sent (a string or a list of text blocks), or ``None``."""
        return self._field("system")

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The ``tools`` list sent, or ``[]``."""
        return list(self._field("tools") or [])

    @property
    def last_message(self) -> dict[str, Any] | None:
        messages = self.messages
        return messages[-1] if messages else None

    def _last_user_content(self) -> Any:
        """The ``content`` of the last message if it is a user turn, else ``None``."""
        last = self.last_message
        if not last or last.get("role") != "user":
            return None
        return last.get("content")

    @property
    def user_text(self) -> str:
        """The text of the last message if it is a user turn (text blocks joined), else ``""``."""
        content = self._last_user_content()
        if isinstance(content, str):
            return content
        return "".join(
            block.get("text", "") for block in content or () if isinstance(block, dict) and block.get("type") == "text"
        )

    @property
    def attachments(self) -> list[dict[str, Any]]:
        """Every base64 ``image`` and ``document`` block of the messages, in order, as
        ``{"type", "media_type", "data": <the decoded bytes>, "base64": <as sent>}``."""
        found = []
        for _, block in media_blocks(self.body):
            source = block.get("source") or {}
            data = decoded(block)
            if data is not None:
                found.append({"type": block["type"], "media_type": source.get("media_type"),
                              "data": data, "base64": source.get("data")})
        return found

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The ``tool_result`` blocks of the last message if it is a user turn, else ``[]``."""
        content = self._last_user_content()
        if not isinstance(content, list):
            return []
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]

    def events(self, name: str | None = None) -> list[SentEvent]:
        """The SSE events sent for this request, optionally only those named ``name``."""
        events = list(self.sent_events)
        return events if name is None else [e for e in events if e.event == name]


Responder = Callable[[RecordedRequest], ReplyLike]
"""A function choosing the reply to a ``/v1/messages`` request."""


def lowercase_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers keyed by lower-case name, repeated ones joined by ``", "`` (:attr:`RecordedRequest.headers`)."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def decode_json_body(raw_body: bytes) -> Any:
    """The JSON-decoded body, or ``None`` if it is empty or not JSON (see :attr:`RecordedRequest.body`)."""
    try:
        return json.loads(raw_body) if raw_body else None
    except ValueError:
        return None
