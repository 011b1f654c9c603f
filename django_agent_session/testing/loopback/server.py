"""The loopback Messages API server itself: :class:`LoopbackMessagesServer`.

This is the object a test holds.  It owns the lifecycle (start on a free port,
stop promptly even mid-stream), the script (queued replies, then a responder),
the record of what arrived and went wrong, and the routing of each request to
an answer.  Reply values, request records, wire encoding, HTTP plumbing and
fault handling live in the sibling modules it imports; nothing imports it
back except the package ``__init__``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from .cache import (
    MIN_CACHE_TOKENS,
    PromptCache,
    compacted_body,
    compaction_edit,
    compaction_trigger,
    input_tokens,
)
from .httpd import LoopbackHandler, LoopbackHTTPServer
from .media import media_error
from .recording import RecordedRequest, Responder, decode_json_body, lowercase_headers
from .reply import Reply, ReplyLike, coerce_reply
from .responses import answer, send_error, send_json
from .tokens import estimate_output_tokens
from .wire import render_message

logger = logging.getLogger(__package__)  # "django_agent_session.testing.loopback", one logger for the package

DEFAULT_MODEL = "claude-loopback"
"""Model reported when neither the reply nor the request names one."""

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


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
    connection (``Connection: close``), or, with ``keep_alive=True``, as many
    as the client sends on it, as the real API serves them (the benchmarks
    use that, so a turn does not pay for a new TCP connection).  Streamed answers use chunked
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
        context_window: int | None = None,
        cache_min_tokens: int = MIN_CACHE_TOKENS,
        keep_alive: bool = False,
    ) -> None:
        self._host = host
        self._keep_alive = keep_alive
        #: input tokens a request may have with its ``max_tokens`` (None: no limit)
        self.context_window = context_window
        #: the simulated prompt cache (:mod:`.cache`); ``clear()`` empties it
        self.cache = PromptCache(cache_min_tokens)
        #: the text of the ``compaction`` blocks of server-side compaction (None: a default)
        self.compaction_summary: str | None = None
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
        self._httpd: LoopbackHTTPServer | None = None
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
            self._httpd = LoopbackHTTPServer(
                (self._host, self._requested_port), on_request=self._handle, on_error=self._record_error,
                keep_alive=self._keep_alive,
            )
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
        coerced = [coerce_reply(reply) for reply in replies]
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

    def _handle(self, h: LoopbackHandler) -> None:
        path, _, query = h.path.partition("?")
        headers = lowercase_headers(h.headers.items())
        raw_body = h.read_body()
        body = decode_json_body(raw_body)
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

        if h.command != "POST" or path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
            send_error(h, record, Reply.error(404, message=f"The loopback server does not serve {h.command} {path}."))
        elif not isinstance(body, dict):
            send_error(h, record, Reply.bad_request("Request body must be a JSON object."))
        elif (bad_media := media_error(body)) is not None:  # as the API checks image/document blocks
            send_error(h, record, Reply.bad_request(bad_media))
        elif path == MESSAGES_PATH:
            too_long = self._too_long(body)
            # refused before the script is consulted; the refusal is kept as the record's reply
            reply = Reply.bad_request(too_long) if too_long is not None else self._compacting(body, record)
            answer(h, record, reply, render=self._render_message, stopping=self._stopping)
        else:  # COUNT_TOKENS_PATH; does not consume the script
            send_json(h, record, 200, {"input_tokens": input_tokens(body)})

    def _too_long(self, body: dict[str, Any]) -> str | None:
        """The API's error message for a request over :attr:`context_window`, or None."""
        if self.context_window is None:
            return None
        tokens = input_tokens(body)
        max_tokens = body.get("max_tokens")
        needed = tokens + (max_tokens if isinstance(max_tokens, int) else 0)
        if needed <= self.context_window:
            return None
        return f"prompt is too long: {needed} tokens > {self.context_window} maximum"

    def _compacting(self, body: dict[str, Any], record: RecordedRequest) -> Reply:
        """The reply to a request, preceded by a ``compaction`` block when the request asks
        for server-side compaction and its input reached the trigger."""
        edit = compaction_edit(body)
        tokens = input_tokens(body)
        if edit is None or tokens < compaction_trigger(edit):
            return self._next_reply(record)
        messages = compacted_body(body).get("messages") or []
        # everything before the block is summarised: the API reads nothing of it again
        summary = self.compaction_summary or f"Summary of the {len(messages)} earlier messages (loopback)."
        block = {"type": "compaction", "content": summary}
        usage = {"type": "compaction", "input_tokens": tokens,
                 "output_tokens": estimate_output_tokens([{"type": "text", "text": summary}]),
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if edit.get("pause_after_compaction"):
            reply = Reply.message([block], stop_reason="compaction")
        else:
            reply = self._next_reply(record)
            if reply.is_error:
                return reply
            reply = dataclasses.replace(reply, content=(block, *reply.content))
        return dataclasses.replace(reply, usage={**(reply.usage or {}), "iterations": [usage]})

    def _next_reply(self, record: RecordedRequest) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            responder = self._responder
        if responder is None:
            with self._lock:
                self._exhausted.append(record)
            return _unretryable_error(
                f"LoopbackMessagesServer script exhausted: request #{record.index} "
                f"({record.method} {record.path}) arrived with no reply queued and no responder set; "
                "queue more with server.enqueue(...)."
            )
        try:
            return coerce_reply(responder(record))
        except Exception as exc:  # reported to the test through server.errors
            logger.exception("loopback server: responder raised")
            self._record_error(exc)
            return _unretryable_error(f"LoopbackMessagesServer responder raised {exc.__class__.__name__}: {exc}")

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _render_message(self, reply: Reply, record: RecordedRequest) -> dict[str, Any]:
        read, written = self.cache.usage(record.body)
        return render_message(
            reply,
            record,
            message_id=self._next_id("msg_loopback_", self._message_ids),
            new_tool_id=lambda: self._next_id("toolu_loopback_", self._tool_ids),
            default_model=self.default_model,
            input_total=input_tokens(record.body),
            cache=(read, written),
        )

    def clear_cache(self) -> None:
        """Forget every cached prompt prefix."""
        self.cache.clear()

    def _next_id(self, prefix: str, counter: Iterator[int]) -> str:
        with self._lock:
            return f"{prefix}{next(counter)}"

    def __repr__(self) -> str:
        where = self.base_url if self.running else ("stopped" if self._stopped else "not started")
        return f"<LoopbackMessagesServer {where} pending={self.pending} requests={len(self._requests)}>"


def anthropic_client_kwargs(server: LoopbackMessagesServer, **extra: Any) -> dict[str, Any]:
    """``{"base_url": server.base_url, "api_key": "test-key", **extra}`` for the SDK's clients."""
    return server.client_kwargs(**extra)


def _unretryable_error(message: str) -> Reply:
    """A 500 ``api_error`` with ``x-should-retry: false``, so the SDK reports it at once instead of retrying."""
    return Reply.error(500, message=message, headers={"x-should-retry": "false"})
