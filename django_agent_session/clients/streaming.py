"""Helpers shared by the offline clients (demo, scripted) to stream a canned response."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from .base import AsyncDeltaCallback, DeltaCallback, ModelResponse, maybe_await

_CHUNK = re.compile(r"\S+\s*|\s+")


def chunks(text: str) -> list[str]:
    """Split text into word-sized deltas (whitespace kept, so joining gives the text back)."""
    return _CHUNK.findall(text) or [text]


def _deltas(response: ModelResponse) -> list[dict[str, Any]]:
    out = []
    for index, block in enumerate(response.content):
        kind = block.get("type")
        if kind == "text":
            out += [{"kind": "text", "index": index, "text": c} for c in chunks(block["text"])]
        elif kind == "thinking":
            out += [{"kind": "thinking", "index": index, "text": c}
                    for c in chunks(block["thinking"])]
        elif kind == "tool_use":
            out.append({"kind": "tool_input", "index": index,
                        "text": json.dumps(block.get("input", {}))})
    return out


def stream_sync(response: ModelResponse, on_delta: DeltaCallback | None, delay: float) -> None:
    for delta in _deltas(response) if on_delta or delay else ():
        if delay:
            time.sleep(delay)
        if on_delta:
            on_delta(delta)


async def stream_async(response: ModelResponse, on_delta: AsyncDeltaCallback | None,
                       delay: float) -> None:
    for delta in _deltas(response) if on_delta or delay else ():
        if delay:
            await asyncio.sleep(delay)
        if on_delta:
            await maybe_await(on_delta(delta))


def example_for_schema(schema: dict[str, Any], text: str) -> Any:
    """A value that satisfies a (structured-output) JSON schema, using ``text`` for strings."""
    if "anyOf" in schema:
        return example_for_schema(schema["anyOf"][0], text)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_for_schema(v, text) for k, v in props.items()}
    if kind == "array":
        return [example_for_schema(schema.get("items", {}), text)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2026-01-01T00:00:00Z"
    if fmt == "date":
        return "2026-01-01"
    if fmt == "uuid":
        return "00000000-0000-4000-8000-000000000000"
    if fmt == "email":
        return "demo@example.com"
    if fmt == "uri":
        return "https://example.com/"
    return text
