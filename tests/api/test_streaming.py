"""SSE under ASGI: events reach the client while the model is still replying (acceptance 4),
and a client that goes away cancels the turn."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from django.core.asgi import get_asgi_application
from django.test import Client, override_settings

from django_agent_session import exceptions as exc
from django_agent_session.api.streaming import KEEPALIVE, astream
from django_agent_session.models import AgentRun, RunStatus, SessionStatus
from django_agent_session.testing import text_reply
from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from tests.helpers.api import ARGS, CHAT, parse_sse
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)

CSRF = "k" * 32


@pytest.fixture
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def http_scope(path: str, cookie: str, length: int) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [
            (b"host", b"testserver"), (b"content-type", b"application/json"),
            (b"content-length", str(length).encode()),
            (b"accept", b"text/event-stream"), (b"x-csrftoken", CSRF.encode()),
            (b"cookie", f"sessionid={cookie}; csrftoken={CSRF}".encode()),
        ],
    }


class Chunk:
    def __init__(self, body: bytes) -> None:
        self.body, self.at = body, time.monotonic()


async def open_stream(path: str, cookie: str, body: dict) -> tuple[ApplicationCommunicator, dict]:
    payload = json.dumps(body).encode()
    communicator = ApplicationCommunicator(get_asgi_application(),
                                           http_scope(path, cookie, len(payload)))
    await communicator.send_input({"type": "http.request", "body": payload, "more_body": False})
    start = await communicator.receive_output(timeout=10)
    assert start["type"] == "http.response.start"
    return communicator, start


async def read_chunks(communicator: ApplicationCommunicator, stop=None) -> list[Chunk]:
    """Body chunks as they arrive, timestamped; until the body ends or ``stop(chunks)``."""
    chunks: list[Chunk] = []
    while True:
        message = await communicator.receive_output(timeout=10)
        assert message["type"] == "http.response.body"
        if message.get("body"):
            chunks.append(Chunk(message["body"]))
        if not message.get("more_body") or (stop and stop(chunks)):
            return chunks


async def test_first_delta_arrives_before_the_model_finishes(session_cookie):
    words = "one two three four five six"
    with LoopbackMessagesServer([Reply.text(words, delay=0.25)]) as server, \
            override_settings(AGENT_SESSION=loopback_settings(server)):
        communicator, start = await open_stream(
            f"{CHAT}stream/", session_cookie,
            {"input": {"message": "count"}, "instruction_args": ARGS})
        assert start["status"] == 200
        assert dict(start["headers"])[b"Content-Type"] == b"text/event-stream"
        chunks = await read_chunks(communicator)
        sent = server.message_requests[0]

    events = [event for chunk in chunks for event in parse_sse(chunk.body)]
    names = [name for name, _ in events]
    assert names[-1] == "message" and names.count("delta") >= 6
    assert "".join(data["text"] for name, data in events if name == "delta") == words
    assert events[-1][1]["output"] == {"content": words}
    # every event was its own chunk, and the first delta reached the client before the
    # model (the loopback server) had even written the end of its reply
    first_delta = next(c for c in chunks if b"event: delta" in c.body)
    message_stop = sent.events("message_stop")[0]
    assert first_delta.at < message_stop.at
    last_delta = [c for c in chunks if b"event: delta" in c.body][-1]
    assert last_delta.at - first_delta.at > 0.5  # spread out, not delivered in one burst
    session = await database_sync_to_async(ChatAgent.objects.get)(pk=events[-1][1]["session"]["id"])
    assert session.turn_count == 1 and session.last_output == {"content": words}


async def test_continue_stream_under_asgi(session_cookie, user, scripted):
    scripted.enqueue("First.", text_reply("Second reply streamed", delay=0.05))
    session = await database_sync_to_async(ChatAgent.objects.start_session)(
        "first", instruction_args=ARGS, owner=user)

    communicator, start = await open_stream(f"{CHAT}{session.pk}/continue/stream/",
                                            session_cookie, {"input": {"message": "again"}})
    chunks = await read_chunks(communicator)

    assert start["status"] == 200
    events = [event for chunk in chunks for event in parse_sse(chunk.body)]
    assert [n for n, _ in events].count("delta") == 3
    assert events[-1][0] == "message" and events[-1][1]["session"]["turn_count"] == 2


async def test_a_client_disconnect_cancels_the_turn(session_cookie):
    with LoopbackMessagesServer([Reply.text("a b c d e f g h i j k l", delay=0.3)]) as server, \
            override_settings(AGENT_SESSION=loopback_settings(server)):
        communicator, _ = await open_stream(
            f"{CHAT}stream/", session_cookie,
            {"input": {"message": "long"}, "instruction_args": ARGS})
        await read_chunks(communicator, stop=lambda chunks: len(chunks) >= 1)
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(timeout=10)

        run = None
        for _ in range(100):  # the cancellation is recorded by the turn, just after
            run = await database_sync_to_async(AgentRun.objects.first)()
            if run.status != RunStatus.RUNNING:
                break
            await asyncio.sleep(0.05)
    assert run.status == RunStatus.CANCELLED
    session = await database_sync_to_async(ChatAgent.objects.get)(pk=run.session_id)
    assert session.status == SessionStatus.IDLE and session.turn_count == 0
    assert session.lease_token is None


async def test_a_quiet_model_gets_keep_alive_comments_and_errors_end_the_stream():
    async def slow_turn(progress):
        await progress("delta", {"kind": "text", "index": 0, "text": "Hi", "iteration": 1})
        await asyncio.sleep(0.35)
        raise exc.ModelOverloaded("busy upstream", request_id="req_1")

    frames = [frame async for frame in astream(slow_turn, finish=lambda s: s, keepalive=0.1)]

    assert frames[0].startswith(b"event: delta")
    assert frames.count(KEEPALIVE) >= 2
    assert parse_sse(frames[-1]) == [("error", {
        "status": 503, "code": "model_overloaded", "detail": "busy upstream",
        "retryable": True, "request_id": "req_1"})]
