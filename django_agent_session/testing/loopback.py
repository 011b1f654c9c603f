"""A loopback HTTP server that speaks the Anthropic Messages API, for tests.

Point the real ``anthropic`` SDK at it through ``base_url`` and script what
"Claude" answers; nothing inside the SDK is patched, so retries, timeouts,
streaming, error mapping and request ids all go through the SDK's own code::

    import anthropic
    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply

    def test_agent_turn():
        with LoopbackMessagesServer([Reply.text("Hello!")]) as server:
            client = anthropic.Anthropic(**server.client_kwargs(max_retries=0))
            message = client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=100,
                messages=[{"role": "user", "content": "Hi"}],
            )
            assert message.content[0].text == "Hello!"
            assert server.requests[0].messages[0]["content"] == "Hi"

What it serves, on ``127.0.0.1`` and a free port:

``POST /v1/messages``
    The next scripted :class:`Reply`.  A JSON ``Message`` when the request body
    has no ``"stream": true``; otherwise a Server-Sent Events stream with the
    real event sequence (``message_start``, ``ping``, then for each content
    block ``content_block_start`` / ``content_block_delta``... /
    ``content_block_stop``, then ``message_delta`` and ``message_stop``).  Every
    event is written and flushed on its own, in its own HTTP chunk, so the
    client really receives them one by one.
``POST /v1/messages/count_tokens``
    ``{"input_tokens": <rough estimate>}``; does not consume the script.
Anything else
    A 404 ``not_found_error`` in the API's error shape.

Replies come from the *script*: a list of replies consumed one per
``/v1/messages`` request, then, once the list is empty, the *responder*
callable if one is set.  A request that finds neither is answered with a 500
``api_error`` explaining that the script is exhausted (with
``x-should-retry: false`` so the SDK does not retry it) and is recorded in
:attr:`LoopbackMessagesServer.exhausted`.

Every response carries a ``request-id`` header (``req_loopback_<n>``), so the
SDK's ``message._request_id``, ``stream.request_id`` and
``APIStatusError.request_id`` are populated.  Message ids are
``msg_loopback_<n>`` and tool-use ids ``toolu_loopback_<n>``; ``model`` echoes
the request's model unless the reply overrides it.

Only the standard library is used; nothing here needs Django or the SDK.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import re
import selectors
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_SIGNATURE",
    "LoopbackMessagesServer",
    "RecordedRequest",
    "Reply",
    "ReplyLike",
    "Responder",
    "SentEvent",
    "anthropic_client_kwargs",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "claude-loopback"
"""Model reported when neither the reply nor the request names one."""

DEFAULT_SIGNATURE = "sig_loopback_thinking_signature"
"""Signature given to scripted thinking blocks unless another is passed."""

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

# Error ``type`` the real API uses for each status, used when none is given.
_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_DEFAULT_ERROR_MESSAGES: dict[str, str] = {
    "invalid_request_error": "Invalid request (loopback).",
    "authentication_error": "invalid x-api-key (loopback).",
    "billing_error": "Billing error (loopback).",
    "permission_error": "Permission denied (loopback).",
    "not_found_error": "Not found (loopback).",
    "timeout_error": "Request timed out (loopback).",
    "conflict_error": "Conflict (loopback).",
    "request_too_large": "Request too large (loopback).",
    "rate_limit_error": "Rate limited (loopback).",
    "api_error": "Internal server error (loopback).",
    "overloaded_error": "Overloaded",
}

_REASON_PHRASES: dict[int, str] = {529: "Site Overloaded"}

_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout)


# ---------------------------------------------------------------------------
# Scripted replies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A canned answer to one ``POST /v1/messages`` request.

    Build replies with the classmethods (:meth:`text`, :meth:`json`,
    :meth:`tool_use`, :meth:`thinking`, :meth:`message`, :meth:`error` and its
    helpers, :meth:`stall`) rather than the constructor.  A reply is an
    immutable value: the same instance may be queued several times, and ids
    (tool-use ids included, unless given) are assigned afresh on each use.

    The same reply serves both modes: a non-streaming request gets the whole
    ``Message`` as JSON, a ``"stream": true`` request gets it as SSE events.

    Streaming knobs shared by the message-building constructors:

    ``chunk_size``
        Characters per delta for text, thinking and tool-input JSON.  By
        default text and thinking are split into words (or, for a single
        word, about three pieces) and tool-input JSON into about four pieces.
    ``delay``
        Seconds slept before writing each ``content_block_delta`` (text,
        input JSON, thinking and signature deltas alike).  Sleeping is cut
        short by :meth:`LoopbackMessagesServer.stop`.
    ``drop_after``
        Write this many ``content_block_delta`` events, then close the
        connection abruptly: no further events, no ``message_stop``, no
        final HTTP chunk.  For a non-streaming request the connection is
        closed without any response at all.
    ``error_after``
        Write this many ``content_block_delta`` events, then an
        ``event: error`` with an ``overloaded_error`` body and end the
        stream, as the real API does when it fails mid-stream.  Only
        affects streaming requests.
    ``usage``
        Token counts.  Missing keys default to deterministic non-zero
        estimates (``input_tokens`` from the size of the request's
        ``system``/``messages``/``tools``, ``output_tokens`` from the size of
        the reply) and ``0`` for ``cache_creation_input_tokens`` and
        ``cache_read_input_tokens``; extra keys are passed through.  The full
        usage appears in the JSON message and in the streamed
        ``message_delta`` (the API's counts there are cumulative totals);
        ``message_start`` carries the same usage with ``output_tokens``
        capped at 1.
    """

    content: tuple[Mapping[str, Any], ...] = ()
    """Content blocks in the API's JSON shape (``tool_use`` ids may be ``None``)."""
    stop_reason: str | None = "end_turn"
    stop_sequence: str | None = None
    usage: Mapping[str, Any] | None = None
    model: str | None = None
    status: int = 200
    """HTTP status; anything other than 200 makes this an error reply."""
    error_type: str | None = None
    error_message: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers."""
    chunk_size: int | None = None
    delay: float = 0.0
    stall_seconds: float = 0.0
    """Seconds the server waits, after reading the request, before answering."""
    drop_after: int | None = None
    error_after: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError("chunk_size must be a positive number of characters")
        if self.delay < 0 or self.stall_seconds < 0:
            raise ValueError("delay and stall seconds cannot be negative")
        for name in ("drop_after", "error_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} cannot be negative")
        if self.status != 200 and self.status < 400:
            raise ValueError("a Reply's status is 200 (a message) or an error status >= 400")

    @property
    def is_error(self) -> bool:
        """Whether this reply is an HTTP error response."""
        return self.status >= 400

    # -- messages ----------------------------------------------------------

    @classmethod
    def message(
        cls,
        content: Sequence[Mapping[str, Any]],
        *,
        stop_reason: str | None = "end_turn",
        stop_sequence: str | None = None,
        usage: Mapping[str, Any] | None = None,
        model: str | None = None,
        chunk_size: int | None = None,
        delay: float = 0.0,
        drop_after: int | None = None,
        error_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An assistant message made of raw content blocks in the API's JSON shape.

        The general form behind the other constructors, e.g. for parallel tool
        calls::

            Reply.message(
                [
                    {"type": "tool_use", "name": "a", "input": {}},
                    {"type": "tool_use", "name": "b", "input": {"x": 1}},
                ],
                stop_reason="tool_use",
            )

        ``text``, ``thinking`` and ``tool_use`` blocks are streamed with their
        proper deltas (a ``tool_use`` block without an ``id`` gets
        ``toolu_loopback_<n>``); any other block type is sent whole in its
        ``content_block_start`` event.
        """
        blocks = tuple(dict(block) for block in content)
        for block in blocks:
            if "type" not in block:
                raise ValueError(f"content block without a 'type': {block!r}")
        return cls(
            content=blocks,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            usage=dict(usage) if usage is not None else None,
            model=model,
            chunk_size=chunk_size,
            delay=delay,
            drop_after=drop_after,
            error_after=error_after,
            headers=_header_items(headers),
        )

    @classmethod
    def text(
        cls,
        text: str,
        *,
        usage: Mapping[str, Any] | None = None,
        stop_reason: str | None = "end_turn",
        model: str | None = None,
        chunk_size: int | None = None,
        delay: float = 0.0,
        thinking: str | None = None,
        signature: str = DEFAULT_SIGNATURE,
        drop_after: int | None = None,
        error_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An assistant reply with one text block.

        With ``thinking``, a ``thinking`` block (with ``signature``) comes first.
        """
        blocks: list[dict[str, Any]] = []
        if thinking is not None:
            blocks.append(_thinking_block(thinking, signature))
        blocks.append({"type": "text", "text": text})
        return cls.message(
            blocks,
            stop_reason=stop_reason,
            usage=usage,
            model=model,
            chunk_size=chunk_size,
            delay=delay,
            drop_after=drop_after,
            error_after=error_after,
            headers=headers,
        )

    @classmethod
    def json(
        cls,
        obj: Any,
        *,
        usage: Mapping[str, Any] | None = None,
        stop_reason: str | None = "end_turn",
        model: str | None = None,
        chunk_size: int | None = None,
        delay: float = 0.0,
        drop_after: int | None = None,
        error_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """A structured-output answer: one text block holding ``json.dumps(obj)``.

        That is how the API answers a request with
        ``output_config={"format": {"type": "json_schema", ...}}``, and what
        ``client.messages.parse(output_format=...)`` parses into
        ``parsed_output``.
        """
        return cls.text(
            json.dumps(obj),
            usage=usage,
            stop_reason=stop_reason,
            model=model,
            chunk_size=chunk_size,
            delay=delay,
            drop_after=drop_after,
            error_after=error_after,
            headers=headers,
        )

    @classmethod
    def tool_use(
        cls,
        name: str,
        input: Mapping[str, Any],
        *,
        id: str | None = None,
        text: str | None = None,
        thinking: str | None = None,
        signature: str = DEFAULT_SIGNATURE,
        usage: Mapping[str, Any] | None = None,
        model: str | None = None,
        chunk_size: int | None = None,
        delay: float = 0.0,
        drop_after: int | None = None,
        error_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """A reply calling tool ``name`` with ``input``; ``stop_reason`` is ``"tool_use"``.

        Optional leading blocks: ``thinking`` (with ``signature``), then
        ``text``.  ``id`` defaults to ``toolu_loopback_<n>``.  When streamed,
        the input arrives as ``input_json_delta`` events: an empty
        ``partial_json`` first, as the real API sends, then the JSON text in
        several pieces.
        """
        blocks: list[dict[str, Any]] = []
        if thinking is not None:
            blocks.append(_thinking_block(thinking, signature))
        if text is not None:
            blocks.append({"type": "text", "text": text})
        blocks.append({"type": "tool_use", "id": id, "name": name, "input": dict(input)})
        return cls.message(
            blocks,
            stop_reason="tool_use",
            usage=usage,
            model=model,
            chunk_size=chunk_size,
            delay=delay,
            drop_after=drop_after,
            error_after=error_after,
            headers=headers,
        )

    @classmethod
    def thinking(
        cls,
        thinking: str,
        text: str,
        *,
        signature: str = DEFAULT_SIGNATURE,
        usage: Mapping[str, Any] | None = None,
        model: str | None = None,
        chunk_size: int | None = None,
        delay: float = 0.0,
        drop_after: int | None = None,
        error_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """A ``thinking`` block (streamed as ``thinking_delta`` then ``signature_delta``), then text."""
        return cls.text(
            text,
            thinking=thinking,
            signature=signature,
            usage=usage,
            model=model,
            chunk_size=chunk_size,
            delay=delay,
            drop_after=drop_after,
            error_after=error_after,
            headers=headers,
        )

    # -- errors ------------------------------------------------------------

    @classmethod
    def error(
        cls,
        status: int,
        *,
        error_type: str | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An HTTP error with the API's body shape.

        The body is ``{"type": "error", "error": {"type": error_type,
        "message": message}, "request_id": "req_loopback_<n>"}``.
        ``error_type`` defaults to the API's type for ``status``
        (``api_error`` for unknown 5xx, ``invalid_request_error`` for unknown
        4xx).
        """
        if status < 400:
            raise ValueError(f"error status must be >= 400, got {status}")
        if error_type is None:
            error_type = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        if message is None:
            message = _DEFAULT_ERROR_MESSAGES.get(error_type, f"Error {status} (loopback).")
        return cls(
            status=status,
            error_type=error_type,
            error_message=message,
            stop_reason=None,
            headers=_header_items(headers),
        )

    @classmethod
    def rate_limited(cls, retry_after: float = 0.0, *, message: str | None = None) -> Reply:
        """A 429 ``rate_limit_error`` asking the client to retry after ``retry_after`` seconds.

        Sends ``retry-after`` (whole seconds, rounded up, as the API does) and
        ``retry-after-ms``, which the SDK prefers.  The SDK ignores a wait of
        zero and falls back to its own exponential backoff (0.5 s and up), so
        ``retry_after=0`` sends ``retry-after-ms: 1`` to keep tests fast.
        """
        if retry_after < 0:
            raise ValueError("retry_after cannot be negative")
        headers = {
            "retry-after": str(math.ceil(retry_after)),
            "retry-after-ms": str(max(1, round(retry_after * 1000))),
        }
        return cls.error(429, message=message, headers=headers)

    @classmethod
    def server_error(cls, *, message: str | None = None, headers: Mapping[str, str] | None = None) -> Reply:
        """A 500 ``api_error`` (the SDK raises ``InternalServerError``)."""
        return cls.error(500, message=message, headers=headers)

    @classmethod
    def overloaded(cls, *, message: str | None = None, headers: Mapping[str, str] | None = None) -> Reply:
        """A 529 ``overloaded_error`` (the SDK raises ``OverloadedError``)."""
        return cls.error(529, message=message, headers=headers)

    @classmethod
    def bad_request(cls, message: str | None = None, *, headers: Mapping[str, str] | None = None) -> Reply:
        """A 400 ``invalid_request_error`` (the SDK raises ``BadRequestError``)."""
        return cls.error(400, message=message, headers=headers)

    @classmethod
    def unauthorized(cls, message: str | None = None, *, headers: Mapping[str, str] | None = None) -> Reply:
        """A 401 ``authentication_error`` (the SDK raises ``AuthenticationError``)."""
        return cls.error(401, message=message, headers=headers)

    # -- timing ------------------------------------------------------------

    @classmethod
    def stall(cls, seconds: float, then: ReplyLike | None = None) -> Reply:
        """Accept the request, wait ``seconds``, then answer with ``then``.

        ``then`` defaults to ``Reply.text("(stalled reply)")``.  Use it with a
        short client ``timeout`` to provoke ``anthropic.APITimeoutError``.  The
        wait ends early when the server stops, in which case the connection is
        closed without an answer.
        """
        base = _coerce_reply(then) if then is not None else cls.text("(stalled reply)")
        return dataclasses.replace(base, stall_seconds=seconds)


def _thinking_block(thinking: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": thinking, "signature": signature}


def _header_items(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in (headers or {}).items())


ReplyLike = Reply | str
"""A :class:`Reply`, or a plain string as shorthand for ``Reply.text(string)``."""


def _coerce_reply(value: ReplyLike) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Reply.text(value)
    raise TypeError(f"expected a Reply or str, got {type(value).__name__}: {value!r}")


# ---------------------------------------------------------------------------
# Recorded requests
# ---------------------------------------------------------------------------


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

    @property
    def user_text(self) -> str:
        """The text of the last message if it is a user turn (text blocks joined), else ``""``."""
        last = self.last_message
        if not last or last.get("role") != "user":
            return ""
        content = last.get("content")
        if isinstance(content, str):
            return content
        return "".join(
            block.get("text", "") for block in content or () if isinstance(block, dict) and block.get("type") == "text"
        )

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The ``tool_result`` blocks of the last message if it is a user turn, else ``[]``."""
        last = self.last_message
        if not last or last.get("role") != "user" or not isinstance(last.get("content"), list):
            return []
        return [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]

    def events(self, name: str | None = None) -> list[SentEvent]:
        """The SSE events sent for this request, optionally only those named ``name``."""
        events = list(self.sent_events)
        return events if name is None else [e for e in events if e.event == name]


Responder = Callable[[RecordedRequest], ReplyLike]
"""A function choosing the reply to a ``/v1/messages`` request."""


# ---------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------


class _ConnectionDropped(Exception):
    """Raised inside a handler to abandon the current response and close the socket."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() joins the handler threads itself, with a deadline
    timeout = 0.0  # handle_request() never waits: serve() only calls it once a connection is pending

    def __init__(self, address: tuple[str, int], owner: LoopbackMessagesServer) -> None:
        self.owner = owner
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._closing = False
        self._thread_ids = itertools.count(1)
        self._serving = True
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._wake_r.close()
            self._wake_w.close()
            raise

    def serve(self) -> None:
        """Accept connections until :meth:`stop_serving`; unlike ``serve_forever`` it stops without polling."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while self._serving:
                for key, _ in selector.select():
                    if key.fileobj is self and self._serving:
                        self.handle_request()  # returns at once: the socket is ready and `timeout` is 0

    def stop_serving(self) -> None:
        self._serving = False
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind() calls socket.getfqdn(), a reverse DNS lookup
        # that can take seconds on machines without a resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"loopback-messages-handler-{next(self._thread_ids)}",
            daemon=True,
        )
        with self._conn_lock:
            if self._closing:
                self.shutdown_request(request)
                return
            self._connections.add(request)
            self._handler_threads.add(thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._connections.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("loopback server: error while handling %s", client_address, exc_info=True)

    def abort_connections(self) -> list[threading.Thread]:
        """Refuse new connections, unblock every open one; return the handler threads."""
        with self._conn_lock:
            self._closing = True
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return threads


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackMessages/1.0"
    sys_version = ""
    timeout = 60  # socket timeout, so an idle or silent client cannot pin a thread forever
    server: _HTTPServer

    def do_POST(self) -> None:
        self.close_connection = True  # one request per connection: every answer says Connection: close
        try:
            self.server.owner._handle(self)
        except _ConnectionDropped:
            self._drop()
        except _CONNECTION_ERRORS:
            logger.debug("loopback server: client went away", exc_info=True)
        except Exception as exc:  # a bug here must not pass silently: surface it via server.errors
            logger.exception("loopback server: failed while answering %s %s", self.command, self.path)
            self.server.owner._record_error(exc)
            self._drop()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("loopback server: " + format, *args)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def start_response(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.send_response(status, _REASON_PHRASES.get(status))
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()

    def send_json(self, status: int, payload: Any, headers: Sequence[tuple[str, str]]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.start_response(
            status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers],
        )
        self.wfile.write(data)
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class LoopbackMessagesServer:
    """An Anthropic Messages API double on ``127.0.0.1``, for the real SDK to talk to.

    ``script`` is either a sequence of replies, consumed one per
    ``/v1/messages`` request in order, or a responder function
    ``fn(request: RecordedRequest) -> Reply``.  Both can be combined:
    queued replies (:meth:`enqueue`) are used first, then :attr:`responder`.
    A string anywhere a reply is expected means ``Reply.text(string)``.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`
    (:meth:`stop` is idempotent and returns promptly even while a handler
    is stalling or streaming)::

        with LoopbackMessagesServer([Reply.rate_limited(), Reply.text("ok")]) as server:
            client = anthropic.Anthropic(base_url=server.base_url, api_key="test-key")
            ...

    Each connection is served by its own daemon thread, one request per
    connection (``Connection: close``).  Streamed answers use chunked
    transfer encoding, so a dropped stream is seen by the client as a
    truncated body rather than a clean end.
    """

    def __init__(
        self,
        script: Sequence[ReplyLike] | Responder | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_model: str = DEFAULT_MODEL,
    ) -> None:
        self._host = host
        self._requested_port = port
        self.default_model = default_model
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[Reply] = deque()
        self._responder: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._exhausted: list[RecordedRequest] = []
        self._errors: list[BaseException] = []
        self._request_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._tool_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._stopped = False
        if callable(script):
            self._responder = script
        elif script is not None:
            if isinstance(script, (str, Reply)):
                raise TypeError("script must be a sequence of replies or a callable, not a single reply")
            self.enqueue(*script)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> LoopbackMessagesServer:
        """Bind the port and start serving in a background thread; returns ``self``."""
        with self._lock:
            if self._httpd is not None or self._stopped:
                raise RuntimeError("LoopbackMessagesServer can only be started once")
            self._httpd = _HTTPServer((self._host, self._requested_port), self)
        self._serve_thread = threading.Thread(
            target=self._httpd.serve,
            name=f"loopback-messages-server-{self.port}",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait (up to ``timeout`` seconds) for handler threads to end.

        Stalls and inter-delta delays are interrupted; open connections are
        shut down.  Safe to call more than once, or without :meth:`start`.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            httpd = self._httpd
        self._stopping.set()
        if httpd is None:
            return
        deadline = time.monotonic() + timeout
        httpd.stop_serving()
        if self._serve_thread is not None and self._serve_thread is not threading.current_thread():
            self._serve_thread.join(timeout)
        threads = httpd.abort_connections()
        httpd.server_close()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> LoopbackMessagesServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None and not self._stopped

    # -- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("LoopbackMessagesServer is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, to pass as the SDK's ``base_url``."""
        return f"http://{self._host}:{self.port}"

    def client_kwargs(self, *, api_key: str = "test-key", **extra: Any) -> dict[str, Any]:
        """Keyword arguments for ``anthropic.Anthropic(...)`` / ``AsyncAnthropic(...)``.

        ``{"base_url": self.base_url, "api_key": api_key, **extra}``, e.g.
        ``anthropic.Anthropic(**server.client_kwargs(max_retries=0))``.
        """
        return {"base_url": self.base_url, "api_key": api_key, **extra}

    # -- script ------------------------------------------------------------

    def enqueue(self, *replies: ReplyLike) -> None:
        """Append replies to the script."""
        coerced = [_coerce_reply(reply) for reply in replies]
        with self._lock:
            self._queue.extend(coerced)

    @property
    def responder(self) -> Responder | None:
        """Called for ``/v1/messages`` requests once the queued replies run out."""
        return self._responder

    @responder.setter
    def responder(self, fn: Responder | None) -> None:
        if fn is not None and not callable(fn):
            raise TypeError("responder must be callable or None")
        self._responder = fn

    @property
    def pending(self) -> int:
        """How many queued replies have not been used yet."""
        with self._lock:
            return len(self._queue)

    # -- what happened -------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received, in arrival order (all paths)."""
        with self._lock:
            return list(self._requests)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """A snapshot of the ``POST /v1/messages`` requests only."""
        return [r for r in self.requests if r.method == "POST" and r.path == MESSAGES_PATH]

    @property
    def last_request(self) -> RecordedRequest | None:
        with self._lock:
            return self._requests[-1] if self._requests else None

    @property
    def exhausted(self) -> list[RecordedRequest]:
        """Requests that arrived when there was no reply queued and no responder."""
        with self._lock:
            return list(self._exhausted)

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised while answering.

        A responder's exception is answered with a 500 ``api_error`` (and
        ``x-should-retry: false``); any other failure closes the connection.
        """
        with self._lock:
            return list(self._errors)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least ``count`` requests arrived; return them. Raises ``TimeoutError``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"expected {count} request(s) within {timeout}s, got {len(self._requests)}")
            return list(self._requests)

    def assert_script_consumed(self) -> None:
        """Fail if replies are left over, the script ran out, or the responder raised."""
        problems = []
        if self.pending:
            problems.append(f"{self.pending} scripted reply(ies) were never requested")
        if self.exhausted:
            problems.append(f"{len(self.exhausted)} request(s) arrived after the script was exhausted")
        if self.errors:
            problems.append(f"errors were raised while answering: {self.errors!r}")
        if problems:
            raise AssertionError("; ".join(problems))

    # -- request handling (runs in handler threads) -----------------------------

    def _handle(self, h: _Handler) -> None:
        path, _, query = h.path.partition("?")
        headers: dict[str, str] = {}
        for name, value in h.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raw_body = h.read_body()
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        with self._changed:
            number = next(self._request_ids)
            record = RecordedRequest(
                index=len(self._requests),
                method=h.command,
                path=path,
                query=query,
                headers=headers,
                raw_body=raw_body,
                body=body,
                request_id=f"req_loopback_{number}",
                received_at=time.monotonic(),
            )
            self._requests.append(record)
            self._changed.notify_all()

        if h.command == "POST" and path == MESSAGES_PATH:
            if not isinstance(body, dict):
                self._send_error(h, record, Reply.bad_request("Request body must be a JSON object."))
                return
            self._answer(h, record, self._next_reply(record))
        elif h.command == "POST" and path == COUNT_TOKENS_PATH:
            if not isinstance(body, dict):
                self._send_error(h, record, Reply.bad_request("Request body must be a JSON object."))
                return
            record.status = 200
            h.send_json(200, {"input_tokens": _estimate_input_tokens(body)}, [("request-id", record.request_id)])
        else:
            self._send_error(
                h, record, Reply.error(404, message=f"The loopback server does not serve {h.command} {path}.")
            )

    def _next_reply(self, record: RecordedRequest) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            responder = self._responder
        if responder is None:
            with self._lock:
                self._exhausted.append(record)
            return Reply.error(
                500,
                message=(
                    f"LoopbackMessagesServer script exhausted: request #{record.index} "
                    f"({record.method} {record.path}) arrived with no reply queued and no responder set; "
                    "queue more with server.enqueue(...)."
                ),
                headers={"x-should-retry": "false"},
            )
        try:
            return _coerce_reply(responder(record))
        except Exception as exc:  # reported to the test through server.errors
            logger.exception("loopback server: responder raised")
            self._record_error(exc)
            return Reply.error(
                500,
                message=f"LoopbackMessagesServer responder raised {exc.__class__.__name__}: {exc}",
                headers={"x-should-retry": "false"},
            )

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _answer(self, h: _Handler, record: RecordedRequest, reply: Reply) -> None:
        record.reply = reply
        if reply.stall_seconds and self._stopping.wait(reply.stall_seconds):
            raise _ConnectionDropped
        if reply.is_error:
            self._send_error(h, record, reply)
            return
        if not record.stream and reply.drop_after is not None:
            raise _ConnectionDropped
        message = self._render_message(reply, record)
        if record.stream:
            self._stream(h, record, reply, message)
        else:
            record.status = 200
            h.send_json(200, message, [("request-id", record.request_id), *reply.headers])

    def _send_error(self, h: _Handler, record: RecordedRequest, reply: Reply) -> None:
        payload = {
            "type": "error",
            "error": {"type": reply.error_type, "message": reply.error_message},
            "request_id": record.request_id,
        }
        record.status = reply.status
        h.send_json(reply.status, payload, [("request-id", record.request_id), *reply.headers])

    def _render_message(self, reply: Reply, record: RecordedRequest) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for block in reply.content:
            block = dict(block)
            if block["type"] == "tool_use" and not block.get("id"):
                with self._lock:
                    block["id"] = f"toolu_loopback_{next(self._tool_ids)}"
            content.append(block)
        usage: dict[str, Any] = {
            "input_tokens": _estimate_input_tokens(record.body),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": _estimate_output_tokens(content),
        }
        usage.update(reply.usage or {})
        with self._lock:
            message_id = f"msg_loopback_{next(self._message_ids)}"
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": reply.model or record.model or self.default_model,
            "content": content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "usage": usage,
        }

    def _stream(self, h: _Handler, record: RecordedRequest, reply: Reply, message: dict[str, Any]) -> None:
        record.status = 200
        h.start_response(
            200,
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Cache-Control", "no-cache"),
                ("Transfer-Encoding", "chunked"),
                ("request-id", record.request_id),
                *reply.headers,
            ],
        )
        deltas = 0
        for name, data, is_delta in _sse_events(message, reply.chunk_size):
            if is_delta:
                if reply.drop_after is not None and deltas >= reply.drop_after:
                    raise _ConnectionDropped
                if reply.error_after is not None and deltas >= reply.error_after:
                    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                    self._write_event(h, record, "error", error)
                    h.end_chunks()
                    return
                if reply.delay and self._stopping.wait(reply.delay):
                    raise _ConnectionDropped
                deltas += 1
            if self._stopping.is_set():
                raise _ConnectionDropped
            self._write_event(h, record, name, data)
        h.end_chunks()

    @staticmethod
    def _write_event(h: _Handler, record: RecordedRequest, name: str, data: Mapping[str, Any]) -> None:
        record.sent_events.append(SentEvent(name, data, time.monotonic()))
        h.write_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    def __repr__(self) -> str:
        where = self.base_url if self.running else ("stopped" if self._stopped else "not started")
        return f"<LoopbackMessagesServer {where} pending={self.pending} requests={len(self._requests)}>"


def anthropic_client_kwargs(server: LoopbackMessagesServer, **extra: Any) -> dict[str, Any]:
    """``{"base_url": server.base_url, "api_key": "test-key", **extra}`` for the SDK's clients."""
    return server.client_kwargs(**extra)


# ---------------------------------------------------------------------------
# Wire format helpers
# ---------------------------------------------------------------------------


def _sse_events(message: Mapping[str, Any], chunk_size: int | None) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Yield ``(event name, data, is_content_block_delta)`` for a whole streamed message."""
    usage = dict(message["usage"])
    start_usage = {**usage, "output_tokens": min(1, int(usage.get("output_tokens") or 0))}
    yield (
        "message_start",
        {
            "type": "message_start",
            "message": {
                **message,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            },
        },
        False,
    )
    yield "ping", {"type": "ping"}, False
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _split_text(block["text"], chunk_size)]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": piece}
                for piece in _split_text(block.get("thinking", ""), chunk_size)
            ]
            deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
        elif kind == "tool_use":
            start = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in ["", *_split_json(json.dumps(block.get("input", {})), chunk_size)]
            ]
        else:
            start, deltas = dict(block), []
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}, False
        for delta in deltas:
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}, True
        yield "content_block_stop", {"type": "content_block_stop", "index": index}, False
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
            "usage": usage,
        },
        False,
    )
    yield "message_stop", {"type": "message_stop"}, False


def _split_text(text: str, chunk_size: int | None) -> list[str]:
    if not text:
        return []
    if chunk_size:
        return [text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]
    pieces = re.findall(r"\S+\s*|\s+", text)
    if len(pieces) < 2 and len(text) > 1:
        size = math.ceil(len(text) / min(3, len(text)))
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
    return pieces


def _split_json(text: str, chunk_size: int | None) -> list[str]:
    size = chunk_size or max(1, math.ceil(len(text) / 4))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _estimate_tokens(text: str) -> int:
    """A rough, deterministic token count: about four characters per token, at least one."""
    return _tokens_for_chars(len(text))


def _tokens_for_chars(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def _estimate_input_tokens(body: Any) -> int:
    if not isinstance(body, dict):
        return 1
    relevant = [body.get("system"), body.get("messages"), body.get("tools")]
    return _estimate_tokens(json.dumps(relevant, separators=(",", ":"), ensure_ascii=False))


def _estimate_output_tokens(content: Sequence[Mapping[str, Any]]) -> int:
    size = 0
    for block in content:
        if block.get("type") == "text":
            size += len(block.get("text", ""))
        elif block.get("type") == "thinking":
            size += len(block.get("thinking", ""))
        elif block.get("type") == "tool_use":
            size += len(json.dumps(block.get("input", {})))
        else:
            size += len(json.dumps(block))
    return _tokens_for_chars(size)
