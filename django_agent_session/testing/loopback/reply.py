"""What "Claude" answers: the :class:`Reply` value and its constructors.

A test scripts the loopback server with replies, so this module is the part of
the kit a test author actually writes against: an immutable description of one
answer (content blocks, stop reason, usage, error status, streaming knobs and
scripted faults) with no knowledge of HTTP, SSE or the server that will send
it.  Everything else in the package reads a :class:`Reply`; nothing here
imports the rest of the package.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SIGNATURE = "sig_loopback_thinking_signature"
"""Signature given to scripted thinking blocks unless another is passed."""

HANG_SECONDS = 24 * 3600.0
"""How long :meth:`Reply.hang` waits: longer than any test (it ends when the server stops)."""

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


@dataclass(frozen=True)
class Reply:
    """A canned answer to one ``POST /v1/messages`` request.

    Build replies with the classmethods (:meth:`text`, :meth:`json`,
    :meth:`tool_use`, :meth:`thinking`, :meth:`message`, the stop-reason
    constructors :meth:`max_tokens`, :meth:`refusal` and :meth:`pause_turn`,
    :meth:`error` and its helpers, :meth:`stall`, :meth:`hang`, :meth:`garbage`,
    :meth:`nasty_text`) rather than the constructor.  A reply is an
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
        Token counts.  Missing keys default to deterministic estimates, the
        same ones ``count_tokens`` gives: ``output_tokens`` from the size of
        the reply, and the request's input (its ``system``/``messages``/
        ``tools``, from the last ``compaction`` block on) split the way the
        API splits it between ``cache_read_input_tokens`` (the longest prefix
        an earlier request wrote to the server's simulated prompt cache),
        ``cache_creation_input_tokens`` (what this request's ``cache_control``
        breakpoints add to it) and ``input_tokens`` (the rest).  Without
        breakpoints both cache counts are ``0``.  Keys set here win over the
        estimates; extra keys are passed through.  The full usage appears in
        the JSON message and in the streamed ``message_delta`` (the API's
        counts there are cumulative totals); ``message_start`` carries the
        same usage with ``output_tokens`` capped at 1.

    The server may answer differently from the script: a request over its
    ``context_window`` gets a ``400 prompt is too long`` without consuming a
    reply, and a request past its server-side compaction trigger gets a
    ``compaction`` block before the reply's content (or, with
    ``pause_after_compaction``, instead of the reply, which stays queued).
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
    garbage_body: bytes | None = None
    """Sent as the body of a 200 (an SSE stream's or a JSON answer's) instead of the message."""
    holds: tuple[tuple[int, threading.Event], ...] = dataclasses.field(default=(), compare=False)
    """``(deltas, event)`` pairs: after that many ``content_block_delta`` events the stream
    waits for the event (see :meth:`held_after`)."""

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
        for deltas, release in self.holds:
            if deltas < 0:
                raise ValueError("a hold's count of deltas cannot be negative")
            if not isinstance(release, threading.Event):  # an asyncio.Event would not block
                raise TypeError(f"a hold waits for a threading.Event, not {release!r}")

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
        ``toolu_loopback_<n>``); a ``compaction`` block starts empty and gets
        its whole summary in one ``compaction_delta``, as the API streams it;
        any other block type is sent whole in its ``content_block_start`` event.
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
        return cls.message(
            _leading_blocks(thinking, signature, text),
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
        stop_reason: str | None = "tool_use",
    ) -> Reply:
        """A reply calling tool ``name`` with ``input``; ``stop_reason`` is ``"tool_use"``
        (``"max_tokens"`` scripts a call cut off by the output limit).

        Optional leading blocks: ``thinking`` (with ``signature``), then
        ``text``.  ``id`` defaults to ``toolu_loopback_<n>``.  When streamed,
        the input arrives as ``input_json_delta`` events: an empty
        ``partial_json`` first, as the real API sends, then the JSON text in
        several pieces.
        """
        return cls.message(
            [
                *_leading_blocks(thinking, signature, text),
                {"type": "tool_use", "id": id, "name": name, "input": dict(input)},
            ],
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

    # -- stop reasons --------------------------------------------------------

    @classmethod
    def max_tokens(cls, text: str, **knobs: Any) -> Reply:
        """A text reply cut off by the request's ``max_tokens``: ``stop_reason`` ``"max_tokens"``.

        ``knobs`` are those of :meth:`text` (``usage``, ``chunk_size``, ``delay``...).
        """
        return cls.text(text, stop_reason="max_tokens", **knobs)

    @classmethod
    def refusal(cls, text: str = "", **knobs: Any) -> Reply:
        """The model declining to answer: ``stop_reason`` ``"refusal"``, with the text it
        wrote before it stopped (none by default)."""
        content = [{"type": "text", "text": text}] if text else []
        return cls.message(content, stop_reason="refusal", **knobs)

    @classmethod
    def pause_turn(cls, content: str | Sequence[Mapping[str, Any]], **knobs: Any) -> Reply:
        """A long turn paused by the server (``stop_reason`` ``"pause_turn"``), e.g. in a
        server tool loop: the client sends the paused message back for the model to go on.
        ``content`` is a text or raw content blocks."""
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        return cls.message(blocks, stop_reason="pause_turn", **knobs)

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
        base = coerce_reply(then) if then is not None else cls.text("(stalled reply)")
        return dataclasses.replace(base, stall_seconds=seconds)

    def held_after(self, deltas: int, until: threading.Event) -> Reply:
        """This reply, held after ``deltas`` ``content_block_delta`` events until ``until`` is
        set: a turn that is certainly still streaming while a test acts on it, however slow
        the machine (a ``delay`` only makes that likely). Holds add up (``.held_after(10,
        a).held_after(50, b)``). A non-streaming request waits for every hold's event before
        its answer; an error or garbage reply is never held, nor is a stream at a count it
        does not reach (``deltas`` must be below the reply's number of deltas). The wait ends
        early when the server stops, which closes the connection without the rest.

        A synchronous turn notices a cancel only between deltas: release a held one once the
        cancel is asked for."""
        return dataclasses.replace(self, holds=(*self.holds, (deltas, until)))

    @classmethod
    def hang(cls) -> Reply:
        """Accept the request and never answer (until the server stops): a model that hangs,
        for the client's ``timeout`` to end."""
        return cls.stall(HANG_SECONDS)

    # -- broken answers ------------------------------------------------------

    @classmethod
    def garbage(cls, body: bytes = b"\x00\xff{\"type\": \"mess") -> Reply:
        """A 200 whose body is ``body`` instead of a message: broken JSON for a plain
        request, broken SSE for a streamed one (sent after the stream's headers)."""
        return cls(garbage_body=bytes(body))

    @classmethod
    def nasty_text(cls, text: str = "nul\x00 and lone \ud800 surrogates \udfff", **knobs: Any
                   ) -> Reply:
        """A text reply holding characters storage may choke on: NUL and lone surrogates
        (valid JSON escapes, so the SDK hands them over as they are). ``knobs`` are those of
        :meth:`text`."""
        return cls.text(text, **knobs)


def _leading_blocks(thinking: str | None, signature: str, text: str | None) -> list[dict[str, Any]]:
    """The optional ``thinking`` (with ``signature``) and ``text`` blocks, in the order the API sends them."""
    blocks: list[dict[str, Any]] = []
    if thinking is not None:
        blocks.append({"type": "thinking", "thinking": thinking, "signature": signature})
    if text is not None:
        blocks.append({"type": "text", "text": text})
    return blocks


def _header_items(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in (headers or {}).items())


ReplyLike = Reply | str
"""A :class:`Reply`, or a plain string as shorthand for ``Reply.text(string)``."""


def coerce_reply(value: ReplyLike) -> Reply:
    """``value`` as a :class:`Reply`; a string means ``Reply.text(value)``."""
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Reply.text(value)
    raise TypeError(f"expected a Reply or str, got {type(value).__name__}: {value!r}")
