"""Helpers of the REST API tests (tests/api): paths, bodies, SSE parsing."""

from __future__ import annotations

import json
from typing import Any

CHAT = "/api/chat-agents/"
ARGS = {"company_name": "ACME"}


def parse_sse(body: bytes | str) -> list[tuple[str, Any]]:
    """``[(event, data), ...]`` of a complete SSE body (comments skipped)."""
    text = body.decode() if isinstance(body, bytes) else body
    events = []
    for frame in text.split("\n\n"):
        name, data = "message", []
        for line in frame.splitlines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def streamed(response: Any) -> list[tuple[str, Any]]:
    assert response["Content-Type"].startswith("text/event-stream"), response["Content-Type"]
    return parse_sse(b"".join(response.streaming_content))


def start(client: Any, message: str = "Hello", path: str = CHAT, **body: Any) -> Any:
    body = {"input": {"message": message}, "instruction_args": ARGS, **body}
    return client.post(path, body, format="json")
