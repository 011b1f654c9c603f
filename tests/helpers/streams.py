"""Helpers of the stream-protocol tests: ASGI requests, raw SSE bodies, the AI SDK's reader
(node, tests/api/js) and the AG-UI checks (the ``ag-ui-protocol`` types and sequence rules)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application

from tests.helpers.api import ARGS

JS = Path(__file__).resolve().parent.parent / "api" / "js"
INSTALL = Path(__file__).resolve().parents[2] / "scripts" / "install-node-deps.sh"
CSRF = "k" * 32


# -- ASGI ------------------------------------------------------------------------------------

def asgi_request(method: str, path: str, cookie: str, body: bytes = b"", query: str = "",
                 headers: tuple = ()) -> ApplicationCommunicator:
    return ApplicationCommunicator(get_asgi_application(), {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query.encode(), "root_path": "", "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"accept", b"text/event-stream"), (b"x-csrftoken", CSRF.encode()),
                    (b"cookie", f"sessionid={cookie}; csrftoken={CSRF}".encode()),
                    *headers]})


async def read_body(communicator: ApplicationCommunicator, body: bytes = b"",
                    stop: Any = None) -> tuple[dict, bytes]:
    """The response start and the raw body, until it ends or ``stop(raw)`` (then the client
    goes away)."""
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(timeout=10)
    assert start["type"] == "http.response.start"
    raw = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
        if stop is not None and stop(raw):
            await communicator.send_input({"type": "http.disconnect"})
            await communicator.wait(timeout=10)
            break
    return start, raw


def headers_of(start: dict) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in start["headers"]}


# -- SSE -------------------------------------------------------------------------------------

def data_events(raw: bytes) -> list[tuple[int | None, str]]:
    """``[(id, data), ...]`` of an SSE body whose frames are unnamed (no ``event:`` line);
    ``id``-only frames and comments give nothing."""
    frames = []
    for block in raw.decode().split("\n\n"):
        id, data = None, []
        for line in block.splitlines():
            assert not line.startswith("event:"), f"a named frame: {block!r}"
            if line.startswith("id: "):
                id = int(line[4:])
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            frames.append((id, "\n".join(data)))
    return frames


def ids(raw: bytes) -> list[int]:
    return [int(line[4:]) for line in raw.decode().splitlines() if line.startswith("id: ")]


# -- the AI SDK ------------------------------------------------------------------------------

def ai_sdk_chunks(raw: bytes) -> list[dict]:
    """The chunks of a UI message stream; it must end with ``[DONE]``."""
    events = data_events(raw)
    assert events and events[-1][1] == "[DONE]", raw[-200:]
    return [json.loads(data) for _, data in events[:-1]]


def read_ui_message(*bodies: bytes) -> dict:
    """The AI SDK's reading of ``bodies`` (each after the first continues the message):
    ``{"messages": [the UI message after each], "errors": [...]}``."""
    node = shutil.which("node")
    assert node is not None, "node is needed for the AI SDK tests"
    if not (JS / "node_modules" / "ai" / "package.json").exists():
        subprocess.run(["bash", str(INSTALL)], check=True, timeout=600)
    done = subprocess.run(
        [node, str(JS / "read_ui_message_stream.mjs")],
        input=json.dumps({"streams": [b.decode() for b in bodies]}).encode(),
        capture_output=True, timeout=120, cwd=JS)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def texts(message: dict, kind: str = "text") -> list[str]:
    return [part["text"] for part in message["parts"] if part["type"] == kind]


# -- AG-UI -----------------------------------------------------------------------------------

def ag_ui_events(raw: bytes) -> list[dict]:
    """The events of an AG-UI stream, each validated by the ``ag-ui-protocol`` types with no
    field they do not know."""
    from ag_ui.core import Event
    from pydantic import TypeAdapter

    adapter: TypeAdapter = TypeAdapter(Event)
    events = []
    for _, data in data_events(raw):
        payload = json.loads(data)
        event = adapter.validate_python(payload)
        assert not event.model_extra, (payload, event.model_extra)
        # what the types write back is what we sent (nothing coerced, no null written)
        assert event.model_dump(mode="json", by_alias=True) == payload
        events.append(payload)
    return events


def check_ag_ui_sequence(events: list[dict], known_calls: frozenset[str] = frozenset()
                         ) -> None:
    """AG-UI's sequence rules, as its clients verify them: the run opens first and closes
    last; a message, reasoning or tool call is started before its content and ended before
    anything else starts; a result answers a call this stream (or ``known_calls``) made."""
    assert events, "no events"
    first, last = events[0], events[-1]
    assert first["type"] in ("RUN_STARTED", "RUN_ERROR"), first
    assert last["type"] in ("RUN_FINISHED", "RUN_ERROR"), last
    assert all(e["type"] not in ("RUN_STARTED", "RUN_FINISHED", "RUN_ERROR")
               for e in events[1:-1]), [e["type"] for e in events]
    if last["type"] == "RUN_FINISHED":
        assert (last["threadId"], last["runId"]) == (first["threadId"], first["runId"])
    open_: tuple[str, str] | None = None  # (what, id)
    calls = set(known_calls)
    for event in events[1:-1]:
        kind = event["type"]
        if kind == "TEXT_MESSAGE_START":
            assert open_ is None, (open_, event)
            open_ = ("text", event["messageId"])
        elif kind in ("TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END"):
            assert open_ == ("text", event["messageId"]), (open_, event)
            if kind == "TEXT_MESSAGE_END":
                open_ = None
        elif kind == "REASONING_START":
            assert open_ is None, (open_, event)
            open_ = ("reasoning", event["messageId"])
        elif kind == "REASONING_MESSAGE_START":
            assert open_ == ("reasoning", event["messageId"]), (open_, event)
            open_ = ("reasoning-message", event["messageId"])
        elif kind in ("REASONING_MESSAGE_CONTENT", "REASONING_MESSAGE_END"):
            assert open_ == ("reasoning-message", event["messageId"]), (open_, event)
            if kind == "REASONING_MESSAGE_END":
                open_ = ("reasoning", event["messageId"])
        elif kind == "REASONING_END":
            assert open_ == ("reasoning", event["messageId"]), (open_, event)
            open_ = None
        elif kind == "TOOL_CALL_START":
            assert open_ is None, (open_, event)
            open_ = ("tool", event["toolCallId"])
            calls.add(event["toolCallId"])
        elif kind in ("TOOL_CALL_ARGS", "TOOL_CALL_END"):
            assert open_ == ("tool", event["toolCallId"]), (open_, event)
            if kind == "TOOL_CALL_END":
                open_ = None
        else:
            assert open_ is None, (open_, event)
            if kind == "TOOL_CALL_RESULT":
                assert event["toolCallId"] in calls, event
    assert open_ is None, open_


def ag_ui_text(events: list[dict]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


def post_stream(api: Any, protocol: str, path: str = "/api/approval-agents/stream/") -> Any:
    """A streamed start in ``protocol`` through DRF's test client (WSGI)."""
    return api.post(f"{path}?protocol={protocol}",
                    {"input": {"message": "hi"}, "instruction_args": ARGS},
                    format="json", HTTP_ACCEPT="text/event-stream")


def login_cookie(user: Any) -> str:
    """A session cookie of ``user`` (sync: call it through ``database_sync_to_async``)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value
