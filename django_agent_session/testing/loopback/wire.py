"""How a :class:`~.reply.Reply` looks on the wire: the JSON ``Message``, the SSE event sequence, the error body.

The Messages API has one message shape, two ways to deliver it (a JSON body or
a stream of Server-Sent Events) and one error shape.  This module turns a
scripted reply into those payloads as plain data (and an event into its SSE
bytes) without touching a socket, so the event order and delta splitting can
be read, and reasoned about, in one place; writing them out, with the reply's
faults, is :mod:`.responses`' job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .recording import RecordedRequest
from .reply import Reply
from .tokens import estimate_input_tokens, estimate_output_tokens


def render_message(
    reply: Reply,
    record: RecordedRequest,
    *,
    message_id: str,
    new_tool_id: Callable[[], str],
    default_model: str,
    input_total: int | None = None,
    cache: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The API's ``Message`` for ``reply`` answering ``record``.

    ``tool_use`` blocks without an id get ``new_tool_id()``; usage keys the
    reply does not set are estimated (``input_total`` is the request's input,
    ``cache`` the tokens of it read from and written to the prompt cache, which
    the API does not count in ``input_tokens``); ``model`` is the reply's, else
    the request's, else ``default_model``.
    """
    content: list[dict[str, Any]] = []
    for block in reply.content:
        block = dict(block)
        if block["type"] == "tool_use" and not block.get("id"):
            block["id"] = new_tool_id()
        content.append(block)
    total = estimate_input_tokens(record.body) if input_total is None else input_total
    read, written = cache
    usage: dict[str, Any] = {
        "input_tokens": max(0, total - read - written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": estimate_output_tokens(content),
    }
    usage.update(reply.usage or {})
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": reply.model or record.model or default_model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": usage,
    }


def error_body(error_type: str | None, message: str | None) -> dict[str, Any]:
    """The API's error shape, ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


def sse_frame(name: str, data: Mapping[str, Any]) -> bytes:
    """One Server-Sent Event, ``event: <name>`` and its JSON ``data``, as bytes."""
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def sse_events(message: Mapping[str, Any], chunk_size: int | None) -> Iterator[tuple[str, dict[str, Any], bool]]:
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
        elif kind == "compaction":
            start, deltas = _compaction_events(block)
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


def _compaction_events(block: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``compaction`` block as the API streams it: started empty, then its whole summary in one delta.

    The summary is not split (whatever ``chunk_size`` says): the SDK's beta
    accumulator *replaces* the block's ``content`` and ``encrypted_content``
    with each ``compaction_delta``'s rather than appending, so only a single
    delta carrying both rebuilds the block.
    """
    start = {**block, "content": None}
    delta: dict[str, Any] = {"type": "compaction_delta", "content": block.get("content")}
    if "encrypted_content" in block:
        start["encrypted_content"] = None
        delta["encrypted_content"] = block["encrypted_content"]
    return start, [delta]


def _split_text(text: str, chunk_size: int | None) -> list[str]:
    """Text or thinking as deltas: ``chunk_size`` characters each, else words (a lone word in about three pieces)."""
    if not text:
        return []
    if chunk_size:
        return _chunks(text, chunk_size)
    pieces = re.findall(r"\S+\s*|\s+", text)
    if len(pieces) < 2 and len(text) > 1:
        pieces = _chunks(text, math.ceil(len(text) / min(3, len(text))))
    return pieces


def _split_json(text: str, chunk_size: int | None) -> list[str]:
    """Tool-input JSON as deltas: ``chunk_size`` characters each, else about four pieces."""
    return _chunks(text, chunk_size or max(1, math.ceil(len(text) / 4)))


def _chunks(text: str, size: int) -> list[str]:
    """``text`` cut into consecutive pieces of ``size`` characters (the last may be shorter)."""
    return [text[i : i + size] for i in range(0, len(text), size)]
