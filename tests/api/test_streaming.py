"""SSE under ASGI: events reach the client while the model is still replying, a client that
goes away leaves the turn running, and a follower resumes with ``Last-Event-ID``."""

from __future__ import annotations

import asyncio
import threading
import json
import time
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.asgi import get_asgi_application
from django.test import Client, override_settings

from django_agent_session import exceptions as exc
from django_agent_session.api.streaming import KEEPALIVE, SETTLE_SECONDS, afollow, astream
from django_agent_session.models import AgentRun, RunStatus, SessionStatus
from django_agent_session.runs.stream import buffer_for, frame_message, group_name
from django_agent_session.testing import text_reply
from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from tests.helpers.api import ARGS, CHAT, parse_sse
from tests.helpers.live_server import wait_until
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


async def three_deltas_then_gone(session_cookie) -> tuple[list, str, list[int]]:
    """Start a streamed turn, read it up to its third word, then disconnect: the events
    seen, the run's id and the SSE ids received. (Words, not delta events: deltas that
    arrive while one is published go out merged.)"""
    communicator, _ = await open_stream(
        f"{CHAT}stream/", session_cookie,
        {"input": {"message": "long"}, "instruction_args": ARGS})

    def three_words(chunks: list[Chunk]) -> bool:
        text = "".join(d["text"] for c in chunks for name, d in parse_sse(c.body)
                       if name == "delta")
        return len(text.split()) >= 3
    chunks = await read_chunks(communicator, stop=three_words)
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(timeout=10)
    seen = [event for chunk in chunks for event in parse_sse(chunk.body)]
    assert seen[0] == ("run.started", {"run_id": seen[0][1]["run_id"]})
    ids = [int(line[4:]) for c in chunks for line in c.body.decode().splitlines()
           if line.startswith("id: ")]
    assert ids == list(range(1, len(ids) + 1)) and ids
    return seen, seen[0][1]["run_id"], ids


async def open_follower(run, session_cookie, after: int) -> ApplicationCommunicator:
    """``GET …/runs/{id}/stream/`` with ``Last-Event-ID: after``, its answer started."""
    follower = ApplicationCommunicator(get_asgi_application(), {
        **http_scope(f"{CHAT}{run.session_id}/runs/{run.pk}/stream/", session_cookie, 0),
        "method": "GET", "headers": [
            (b"host", b"testserver"), (b"accept", b"text/event-stream"),
            (b"last-event-id", str(after).encode()),
            (b"cookie", f"sessionid={session_cookie}".encode())]})
    await follower.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await follower.receive_output(timeout=10)
    assert start["status"] == 200
    return follower


def events_of(chunks: list[Chunk]) -> list:
    return [event for chunk in chunks for event in parse_sse(chunk.body)]


async def follow(run, session_cookie, after: int) -> list:
    """Every event of a run's stream after ``after``, to the end."""
    return events_of(await read_chunks(await open_follower(run, session_cookie, after)))


async def test_a_client_disconnect_leaves_the_turn_running_and_get_resumes_it(
        session_cookie):
    """Regression: a disconnect cancelled the turn. The turn is a queued run the executor
    runs; the response only follows it, and ``GET …/runs/{id}/stream/`` with
    ``Last-Event-ID`` picks up after the last event the client got."""
    words = "a b c d e f g h i j k l"
    # held after three words until the client has gone, and after six until it follows
    # again, so it resumes a running run: its buffered frames, then live ones
    gone, back = threading.Event(), threading.Event()
    reply = Reply.text(words, delay=0.02).held_after(3, until=gone).held_after(6, until=back)
    with LoopbackMessagesServer([reply]) as server, \
            override_settings(AGENT_SESSION=loopback_settings(server)):
        seen, run_id, ids = await three_deltas_then_gone(session_cookie)
        run = await database_sync_to_async(AgentRun.objects.get)(pk=run_id)
        assert run.status == RunStatus.RUNNING  # still running after the disconnect
        gone.set()
        follower = await open_follower(run, session_cookie, after=ids[-1])
        first = await read_chunks(follower, stop=bool)
        back.set()
        rest = events_of(first + await read_chunks(follower))

    deltas = [d["text"] for name, d in seen + rest if name == "delta"]
    assert "".join(deltas) == words  # nothing missed, nothing twice
    assert rest[-1][0] == "message" and rest[-1][1]["output"] == {"content": words}
    run = await database_sync_to_async(AgentRun.objects.get)(pk=run_id)
    assert run.status == RunStatus.COMPLETED
    session = await database_sync_to_async(ChatAgent.objects.get)(pk=run.session_id)
    assert session.turn_count == 1 and session.last_output == {"content": words}


async def test_a_client_back_after_its_run_ended_still_gets_what_it_missed(session_cookie):
    """Regression: a run that ended while the client was away answered ``Last-Event-ID``
    with its outcome only; the missed deltas are in the run's buffer for a while after."""
    words = "a b c d e f g h i j k l"
    back = threading.Event()
    with LoopbackMessagesServer([Reply.text(words).held_after(3, until=back)]) as server, \
            override_settings(AGENT_SESSION=loopback_settings(server)):
        seen, run_id, ids = await three_deltas_then_gone(session_cookie)
        back.set()

        ended = database_sync_to_async(lambda: AgentRun.objects.get(pk=run_id).finished)
        await wait_until(ended, timeout=10, interval=0.02)
        run = await AgentRun.objects.aget(pk=run_id)
        assert run.status == RunStatus.COMPLETED
        rest = await follow(run, session_cookie, after=ids[-1])

    deltas = [d["text"] for name, d in seen + rest if name == "delta"]
    assert "".join(deltas) == words  # nothing missed, nothing twice
    assert [name for name, _ in rest][-1] == "message"
    assert rest[-1][1]["output"] == {"content": words}


class TestResumingJustAfterTheEnd:
    """A run's row is committed as ended before the frames still being published reach its
    buffer and its group: a client resuming just then listens for them (``SETTLE_SECONDS``
    after the end at most), then gets the outcome."""

    @staticmethod
    async def ended_run(scripted) -> tuple[Any, Any]:
        scripted.enqueue("done")
        session = await ChatAgent.objects.astart_session("go", instruction_args=ARGS)
        run = await AgentRun.objects.aget(pk=session.last_turn.run_id)
        layer = get_channel_layer()
        for n, word in enumerate(["a ", "b "], start=1):
            await buffer_for(layer).append(str(run.pk), delta(run, n, word))
        return run, layer

    @staticmethod
    def follow_from(run, after: int):
        return afollow(ChatAgent, run, lambda run: [("message", {"status": run.status})],
                       keepalive=5.0, after=after)

    @pytest.mark.usefixtures("live_layer")
    async def test_frames_published_after_the_row_ended_are_not_missed(self, scripted):
        run, layer = await self.ended_run(scripted)
        events = self.follow_from(run, after=1)
        assert parse_sse(await anext(events)) == [("delta", delta_data("b "))]  # buffered
        # the run's publisher, a moment late: its last delta, then its final status
        group = group_name(ChatAgent, run.session_id)
        await layer.group_send(group, frame_message(delta(run, 3, "c")))
        await layer.group_send(group, frame_message({
            "type": "run.status", "status": "completed", "ref": run.ref,
            "run_id": str(run.pk)}))
        rest = [event for chunk in [chunk async for chunk in events]
                for event in parse_sse(chunk)]
        assert rest == [("delta", delta_data("c")), ("message", {"status": "completed"})]

    @pytest.mark.usefixtures("live_layer")
    async def test_a_follower_waits_no_longer_than_the_settle_window(self, scripted):
        run, _ = await self.ended_run(scripted)
        started = time.monotonic()
        events = [event async for chunk in self.follow_from(run, after=1)
                  for event in parse_sse(chunk)]
        assert events == [("delta", delta_data("b ")), ("message", {"status": "completed"})]
        assert time.monotonic() - started < SETTLE_SECONDS + 2


def delta(run, n: int, text: str) -> dict:
    return {"type": "delta", "ref": run.ref, "run_id": str(run.pk), "n": n, **delta_data(text)}


def delta_data(text: str) -> dict:
    return {"kind": "text", "index": 0, "text": text, "iteration": 1}


async def test_a_quiet_model_gets_keep_alive_comments_and_errors_end_the_stream():
    answered = asyncio.Event()  # the model stays quiet until the client saw two keep-alives

    async def slow_turn(progress):
        await progress("delta", {"kind": "text", "index": 0, "text": "Hi", "iteration": 1})
        await answered.wait()
        raise exc.ModelOverloaded("busy upstream", request_id="req_1")

    frames = []
    async with asyncio.timeout(10):  # no keep-alives: the model would never answer
        async for frame in astream(slow_turn, finish=lambda s: s, keepalive=0.1):
            frames.append(frame)
            if frames.count(KEEPALIVE) == 2:
                answered.set()

    assert frames[0].startswith(b"event: delta")
    assert frames.count(KEEPALIVE) >= 2
    assert parse_sse(frames[-1]) == [("error", {
        "status": 503, "code": "model_overloaded", "detail": "busy upstream",
        "retryable": True, "request_id": "req_1"})]
