"""Two ASGI server processes (daphne; uvicorn where the server makes a difference) sharing one
database and the Redis channel layer."""

from __future__ import annotations

import asyncio
import threading
import contextlib
import itertools
import json
import os
import time
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from channels.db import database_sync_to_async
from django.db import connection
from django.utils import timezone

from django_agent_session.models import AgentEvent, AgentRun, LiveOwnership, RunStatus
from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from tests.helpers.live_server import (
    ServerProcess,
    create_chat,
    server_processes,
    session_cookie,
    wait_until,
    ws_path,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_passwords")]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")


def server_env(server: LoopbackMessagesServer, prefix: str, **extra: str) -> dict[str, str]:
    return {"AGENT_LIVE_DB_NAME": str(connection.settings_dict["NAME"]),
            "AGENT_LIVE_REDIS_URL": REDIS_URL, "AGENT_LIVE_REDIS_PREFIX": prefix,
            "AGENT_LIVE_LOOPBACK_URL": server.base_url, **extra}


@asynccontextmanager
async def ws(server: ServerProcess, conversation_id: Any, cookie: str):
    async with websockets.connect(server.url(ws_path(conversation_id)), origin=server.origin,
                                  additional_headers={"Cookie": cookie}, open_timeout=10,
                                  close_timeout=2) as socket:
        yield socket


async def receive_until(socket: Any, until: Any, timeout: float = 15.0) -> list[dict]:
    frames: list[dict] = []

    async def read() -> None:
        while True:
            frames.append(json.loads(await socket.recv()))
            if until(frames[-1]):
                return
    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out; got {frames}") from None
    return frames


def frame(kind: str, **match: Any):
    return lambda f: f["type"] == kind and all(f.get(k) == v for k, v in match.items())


@database_sync_to_async
def leases() -> list[LiveOwnership]:
    return list(LiveOwnership.objects.all())


@database_sync_to_async
def runs(session) -> list[AgentRun]:
    return list(AgentRun.objects.filter(session_id=session.pk).order_by("started_at"))


def text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(
        b.get("text", "") for b in content if b.get("type") == "text")


SERVERS = pytest.mark.parametrize("server", ["daphne", "uvicorn"])


@SERVERS
async def test_viewers_on_two_processes_share_the_stream_and_one_owner_runs_the_turn(
        user, redis_prefix, server):
    with LoopbackMessagesServer([Reply.text("Streamed across two processes", delay=0.03)]) \
            as loopback, \
            server_processes(2, server_env(loopback, redis_prefix), server) as (a, b):
        session = await create_chat(user)
        cookie = await session_cookie(user)
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        async with ws(a, session.pk, cookie) as on_a:
            await receive_until(on_a, frame("session.state"))
            (lease,) = await leases()  # the first viewer's process elected its live session
            async with ws(b, session.pk, cookie) as on_b:
                state_b = (await receive_until(on_b, frame("session.state")))[-1]
                assert state_b["live"] and state_b["presence"]["count"] == 2
                await on_b.send(json.dumps({"type": "message", "input": "Hi", "ref": "m1"}))
                done = frame("run.status", ref="m1", status="completed")
                streams = await asyncio.gather(receive_until(on_a, done),
                                               receive_until(on_b, done))
        for frames in streams:
            deltas = [f["text"] for f in frames if f["type"] == "delta"]
            assert len(deltas) > 1 and "".join(deltas) == "Streamed across two processes"
            (message,) = [f for f in frames if f["type"] == "message"]
            assert text(message) == "Streamed across two processes"
        assert streams[0][-1] == streams[1][-1]
        assert len(loopback.message_requests) == 1  # executed once
        assert [r.status for r in await runs(session)] == [RunStatus.COMPLETED]
        assert [x.owner_channel for x in await leases()] == [lease.owner_channel]


async def test_after_the_owner_process_is_killed_another_process_answers_with_full_history(
        user, redis_prefix):
    script = [Reply.text("First answer."), Reply.text("never finished " * 80, delay=0.05),
              Reply.text("Recovered answer.")]
    env_extra = {"AGENT_LIVE_OWNER_LEASE": "1.5", "AGENT_LIVE_TURN_LEASE": "2"}
    with LoopbackMessagesServer(script) as loopback, \
            server_processes(2, server_env(loopback, redis_prefix, **env_extra)) as (a, b):
        session = await create_chat(user)
        cookie = await session_cookie(user)
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        async with ws(a, session.pk, cookie) as on_a, ws(b, session.pk, cookie) as on_b:
            await receive_until(on_a, frame("session.state"))
            (lease,) = await leases()
            await receive_until(on_b, frame("session.state"))
            # sent to a: its process runs the turns (the inline executor drains where a
            # message is submitted); b sees them through Redis
            await on_a.send(json.dumps({"type": "message", "input": "first", "ref": "m1"}))
            await receive_until(on_b, frame("run.status", ref="m1", status="completed"))
            await on_a.send(json.dumps({"type": "message", "input": "second", "ref": "m2"}))
            await receive_until(on_b, frame("delta", ref="m2"))

            a.kill()  # SIGKILL the owner's process mid-turn
            await wait_until(lambda: _released_by(lease), timeout=10)
            await on_b.send(json.dumps({"type": "message", "input": "third", "ref": "m3"}))
            frames = await receive_until(on_b, frame("run.status", ref="m3", status="completed"),
                                         timeout=20)
        assert "".join(f["text"] for f in frames if f["type"] == "delta") == "Recovered answer."
        last = loopback.message_requests[-1]
        assert [(m["role"], text(m)) for m in last.messages] == [
            ("user", "first"), ("assistant", "First answer."), ("user", "third")]
        assert len(loopback.message_requests) == 3
        statuses = [(r.input["message"], r.status) for r in await runs(session)]
        assert statuses == [("first", RunStatus.COMPLETED), ("second", RunStatus.FAILED),
                            ("third", RunStatus.COMPLETED)]
        (new_lease,) = await leases()
        assert new_lease.owner_channel != lease.owner_channel


@database_sync_to_async
def _released_by(lease: LiveOwnership) -> bool:
    """Whether ``lease``'s owner no longer holds it: it expired, or b's presence heartbeat
    already elected a new owner (which can happen between two polls of an expired lease)."""
    return not LiveOwnership.objects.filter(session_id=lease.session_id,
                                            owner_channel=lease.owner_channel,
                                            expires_at__gt=timezone.now()).exists()


# -- a killed owner's queue, viewers catching up mid-turn -------------------------------------

class Recorder:
    """Reads a socket in the background, noting when each frame arrived (``time.monotonic``)."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.frames: list[dict] = []
        self.times: list[float] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.socket:
                self.times.append(time.monotonic())
                self.frames.append(json.loads(raw))

    def matching(self, match: Any) -> list[dict]:
        return [f for f in self.frames if match(f)]

    def arrived(self, match: Any) -> float:
        """When the first frame ``match`` accepts arrived."""
        return next(t for t, f in zip(self.times, self.frames) if match(f))

    async def wait_for(self, match: Any, count: int = 1, timeout: float = 15.0) -> dict:
        """The ``count``-th frame ``match`` accepts, once it arrived."""
        try:
            await wait_until(lambda: len(self.matching(match)) >= count, timeout, interval=0.01)
        except AssertionError:
            raise AssertionError(f"timed out; got {[_brief(f) for f in self.frames]}") from None
        return self.matching(match)[count - 1]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _brief(f: dict) -> tuple:
    return (f["type"], f.get("ref"), f.get("status"), f.get("n"))


def progress(frames: list[dict], ref: str) -> list[dict]:
    """The progress frames of run ``ref`` (those with a per-run index ``n``)."""
    return [f for f in frames if f.get("ref") == ref and "n" in f]


def deltas_text(frames: list[dict]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta" and f.get("kind") == "text")


def process_env(loopback: LoopbackMessagesServer, prefix: str, api_key: str) -> dict[str, str]:
    """One process's environment: its own API key tells the loopback server which process
    made each model request; short leases, so a killed process's leases expire in seconds."""
    return server_env(loopback, prefix, AGENT_LIVE_API_KEY=api_key,
                      AGENT_LIVE_OWNER_LEASE="1.5", AGENT_LIVE_TURN_LEASE="2")


@contextlib.contextmanager
def two_processes(loopback: LoopbackMessagesServer, prefix: str):
    """Processes ``a`` and ``b``, sending the API keys ``key-a`` and ``key-b``."""
    with contextlib.ExitStack() as stack:
        servers = []
        for name in ("a", "b"):
            server = ServerProcess(process_env(loopback, prefix, f"key-{name}"), name)
            stack.callback(server.close)
            servers.append(server)
        yield servers


@database_sync_to_async
def session_rows(session) -> tuple[Any, list[AgentRun], list[AgentEvent], Any]:
    """The session row, its runs (in queue order), its events (by seq) and its context."""
    model = type(session)
    row = model._base_manager.get(pk=session.pk)
    return (row, list(AgentRun.objects.filter(session_id=session.pk).order_by("queued_seq")),
            list(AgentEvent.objects.filter(session_id=session.pk).order_by("seq")),
            model._default_manager.get_context(session.pk))


def api_key(request: Any) -> str:
    """The API key a model request was sent with: which process sent it."""
    headers = request.headers
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")


def user_text(request: Any) -> str:
    """The last user message of a model request."""
    return text([m for m in request.messages if m["role"] == "user"][-1])


async def test_killed_owner_s_running_turn_and_three_queued_messages_each_run_once_in_order(
        user, redis_prefix):
    """kill -9 of a live owner holding a running turn and three queued messages: every queued
    message runs exactly once, in order, on another process; nothing is lost or doubled."""
    answers = {"m2": "Answer two.", "m3": "Answer three.", "m4": "Answer four."}
    script = [Reply.text("never finished " * 80, delay=0.05),
              *(Reply.text(answer, delay=0.01) for answer in answers.values())]
    inputs = {"m1": "first", "m2": "second", "m3": "third", "m4": "fourth"}
    with LoopbackMessagesServer(script) as loopback, \
            two_processes(loopback, redis_prefix) as (a, b):
        session = await create_chat(user)
        cookie = await session_cookie(user)
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        async with ws(a, session.pk, cookie) as on_a, ws(b, session.pk, cookie) as on_b:
            await receive_until(on_a, frame("session.state"))
            await receive_until(on_b, frame("session.state"))
            seen_a, seen_b = Recorder(on_a), Recorder(on_b)
            for ref, message in inputs.items():
                await on_a.send(json.dumps({"type": "message", "input": message, "ref": ref}))
            acks = [await seen_a.wait_for(frame("ack", ref=ref)) for ref in inputs]
            assert [(f["status"], f["duplicate"]) for f in acks] == [("queued", False)] * 4
            await seen_b.wait_for(frame("delta", ref="m1"))
            # three messages are queued behind the running one, on a's executor
            assert [r.status for r in await runs_in_order(session)] == [
                RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.QUEUED, RunStatus.QUEUED]

            a.kill()  # SIGKILL the owner's process mid-turn: nothing is released
            killed_at = time.monotonic()
            # nothing is sent any more: b's viewer is all that is left
            for ref in answers:
                await seen_b.wait_for(frame("run.status", ref=ref, status="completed"),
                                      timeout=25)
            done_at = time.monotonic()
            await asyncio.sleep(0.5)  # anything doubled would show up now
            # a state asked for now shows nothing running or queued, and the three turns
            await on_b.send(json.dumps({"type": "state"}))
            state = await seen_b.wait_for(frame("session.state"))
            await seen_a.stop()
            await seen_b.stop()
            first_delta = seen_b.arrived(frame("delta", ref="m2")) - killed_at
            print(f"\nkill -> first delta of the next run on b: {first_delta:.2f} s; "
                  f"kill -> last queued run completed: {done_at - killed_at:.2f} s")

        # the model was asked once per message: m1 by a, the queued ones by b, in order
        requests = loopback.message_requests
        assert [user_text(r) for r in requests] == ["first", "second", "third", "fourth"]
        assert [api_key(r) for r in requests] == ["key-a"] + ["key-b"] * 3
        assert [[(m["role"], text(m)) for m in r.messages] for r in requests[1:]] == [
            [("user", "second")],
            [("user", "second"), ("assistant", "Answer two."), ("user", "third")],
            [("user", "second"), ("assistant", "Answer two."), ("user", "third"),
             ("assistant", "Answer three."), ("user", "fourth")]]

        row, rows, events, context = await session_rows(session)
        # one run per message: the killed one failed (interrupted), the others completed
        assert [(r.ref, r.input["message"], r.status) for r in rows] == [
            ("m1", "first", RunStatus.FAILED), ("m2", "second", RunStatus.COMPLETED),
            ("m3", "third", RunStatus.COMPLETED), ("m4", "fourth", RunStatus.COMPLETED)]
        assert rows[0].error["code"] == "interrupted"
        assert [r.output for r in rows[1:]] == [{"content": t} for t in answers.values()]
        for before, after in itertools.pairwise(rows[1:]):  # one at a time, in order
            assert before.ended_at <= after.started_at
        # the context holds exactly the completed turns, in order
        assert [(m["role"], text(m)) for m in context.messages] == [
            ("user", "second"), ("assistant", "Answer two."), ("user", "third"),
            ("assistant", "Answer three."), ("user", "fourth"), ("assistant", "Answer four.")]
        assert context.turns == row.turn_count == 3
        # the events: gapless seqs, each message queued once and ended once
        assert [e.seq for e in events] == list(range(1, row.event_seq + 1))
        by_run = {str(r.pk): r.ref for r in rows}

        def of(kind: str) -> list[str]:
            return [by_run[e.data["run_id"]] for e in events if e.type == kind]
        assert of("run.queued") == ["m1", "m2", "m3", "m4"]
        assert of("run.started") == of("run.completed") == ["m2", "m3", "m4"]
        assert of("run.failed") == ["m1"]
        (failed,) = [e for e in events if e.type == "run.failed"]
        assert failed.data["error"]["code"] == "interrupted"

        # what b's viewer saw: each queued message's run once, its deltas once and in order
        frames = seen_b.frames
        for ref, answer in answers.items():
            ran = [f for f in frames if f.get("ref") == ref]
            assert [f["status"] for f in ran if f["type"] == "run.status"] == [
                "started", "completed"], ref
            steps = progress(frames, ref)
            assert [f["n"] for f in steps] == list(range(1, len(steps) + 1)), ref
            assert deltas_text(steps) == answer
            (message,) = [f for f in ran if f["type"] == "message"]
            assert text(message) == answer
        of_runs = [json.dumps(f, sort_keys=True) for f in frames if f.get("ref")]
        assert len(of_runs) == len(set(of_runs))  # no frame of a run came twice
        steps = progress(frames, "m1")  # the killed run's deltas, up to the kill
        assert [f["n"] for f in steps] == list(range(1, len(steps) + 1))
        assert ("never finished " * 80).startswith(deltas_text(steps))
        # the drain that took the dead run's lease over tells the viewers how it ended, before
        # the next run starts; a new state agrees (nothing running or queued, three turns)
        ended = [f for f in frames if f["type"] == "run.status" and f.get("ref") == "m1"
                 and f["status"] != "started"]
        assert [(f["status"], f["error"]["code"]) for f in ended] == [("failed", "interrupted")]
        assert frames.index(ended[0]) < frames.index(next(
            f for f in frames if f["type"] == "run.status" and f.get("ref") == "m2"))
        assert state["running"] is None and state["queue"] == [] and state["turns"] == 3
        assert [(m["role"], text(m)) for m in state["messages"]] == [
            (m["role"], text(m)) for m in context.messages]


@database_sync_to_async
def runs_in_order(session) -> list[AgentRun]:
    return list(AgentRun.objects.filter(session_id=session.pk).order_by("queued_seq"))


REPLY = " ".join(f"word{i:03d}" for i in range(200))
#: where the reconnect test's reply waits for its last viewer to catch up
HELD_AT = 150


def caught_up(frames: list[dict], ref: str) -> tuple[dict, list[dict]]:
    """A viewer's ``session.state`` and the progress frames of ``ref`` it got after it."""
    (at,) = [i for i, f in enumerate(frames) if f["type"] == "session.state"]
    return frames[at], progress(frames[at + 1:], ref)


def assert_every_delta_once(state: dict, steps: list[dict], ref: str) -> None:
    """The state shows the run's partial text; the frames after it (its buffered ones, then
    the live ones) number 1..N without gap or duplicate and spell the whole reply once."""
    running = state["running"]
    assert running["ref"] == ref
    count = running["deltas"]
    assert count > 5 and running["partial_text"] == deltas_text(steps[:count])
    numbers = [f["n"] for f in steps]
    assert numbers == list(range(1, len(steps) + 1)), (
        f"caught up {count}; doubled {sorted({n for n in numbers if numbers.count(n) > 1})}, "
        f"missing {sorted(set(range(1, max(numbers) + 1)) - set(numbers))}, "
        f"out of order {numbers != sorted(numbers)}")
    assert deltas_text(steps) == REPLY
    assert len(steps) > count  # some came live, after the catch-up


async def test_a_viewer_reconnecting_mid_turn_on_the_other_process_gets_every_delta_once(
        user, redis_prefix):
    """A slow turn runs on a; a viewer on b leaves after a few deltas and comes back (to b)
    while it runs; another connects to b for the first time mid-turn."""
    # the reply streams on while each viewer connects and catches up, but is held twice, so
    # the turn is certainly still running when each viewer comes (a slow machine only makes
    # a viewer catch up on more of it)
    again_open, fresh_caught_up = threading.Event(), threading.Event()
    reply = (Reply.text(REPLY, delay=0.01).held_after(40, until=again_open)
             .held_after(HELD_AT, until=fresh_caught_up))
    with LoopbackMessagesServer([reply]) as loopback, \
            two_processes(loopback, redis_prefix) as (a, b):
        session = await create_chat(user)
        cookie = await session_cookie(user)
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        async with ws(a, session.pk, cookie) as on_a:
            await receive_until(on_a, frame("session.state"))
            seen_a = Recorder(on_a)
            async with ws(b, session.pk, cookie) as on_b:
                await receive_until(on_b, frame("session.state"))
                await on_a.send(json.dumps({"type": "message", "input": "Hi", "ref": "m1"}))
                before = await receive_until(on_b, frame("delta", ref="m1", n=5))
            # disconnected from b after 5 deltas; away while some more stream; back mid-turn
            await asyncio.sleep(0.5)
            async with ws(b, session.pk, cookie) as again:
                again_open.set()
                seen_again = Recorder(again)
                state = await seen_again.wait_for(frame("session.state"))
                assert state["running"]["ref"] == "m1"  # still running
                # once it gets live deltas (or the stream is held for the next viewer),
                # another viewer connects to b for the first time
                caught = state["running"]["deltas"]

                def live_or_held() -> bool:
                    written = loopback.message_requests[0].events("content_block_delta")
                    return len(written) >= HELD_AT or bool(seen_again.matching(
                        lambda f: f["type"] == "delta" and f["n"] > caught + 10))
                await wait_until(live_or_held, 15, interval=0.01)
                async with ws(b, session.pk, cookie) as fresh:
                    seen_fresh = Recorder(fresh)
                    await seen_fresh.wait_for(frame("session.state"))
                    fresh_caught_up.set()
                    done = frame("run.status", ref="m1", status="completed")
                    for seen in (seen_again, seen_fresh, seen_a):
                        await seen.wait_for(done)
                    await asyncio.sleep(0.3)  # a late duplicate would show up now
                    await seen_fresh.stop()
                await seen_again.stop()
            await seen_a.stop()
        assert REPLY.startswith(deltas_text(progress(before, "m1")))
        for seen in (seen_again, seen_fresh):
            state, steps = caught_up(seen.frames, "m1")
            assert_every_delta_once(state, steps, "m1")
            (message,) = [f for f in seen.frames if f["type"] == "message"]
            assert text(message) == REPLY
            count = state["running"]["deltas"]
            print(f"\ncaught up {count} deltas, then {len(steps) - count} live")
        # the viewer on the running process saw it all live, once
        steps = progress(seen_a.frames, "m1")
        assert [f["n"] for f in steps] == list(range(1, len(steps) + 1))
        assert deltas_text(steps) == REPLY
        assert len(loopback.message_requests) == 1


@pytest.mark.parametrize("server, stop", [
    ("daphne", "SIGTERM"),
    ("uvicorn", "SIGTERM"),
    ("uvicorn", "SIGINT"),
])
async def test_graceful_shutdown_records_the_running_turn_interrupted_and_releases_leases(
        user, redis_prefix, server, stop):
    """Graceful shutdown of a server process: the turn still running after the grace is
    recorded ``interrupted`` and nothing is left for a lease to expire (the default 120 s
    turn lease would otherwise hold the queued message for two minutes).

    On SIGTERM the library's own handler (installed with the first live session, ahead of the
    server's) does it, on daphne and on uvicorn alike, and tells the viewers first. On SIGINT,
    which the library leaves to the server, uvicorn closes the sockets and then sends
    ``lifespan.shutdown``: ``with_lifespan`` in ``tests.asgi`` does it then."""
    import signal as signals

    script = [Reply.text("never finished " * 200, delay=0.05)]
    env_extra = {"AGENT_LIVE_SHUTDOWN_GRACE": "0.5"}
    with LoopbackMessagesServer(script) as loopback, \
            server_processes(1, server_env(loopback, redis_prefix, **env_extra), server) as (a,):
        session = await create_chat(user)
        cookie = await session_cookie(user)
        await a.wait_ready()
        async with ws(a, session.pk, cookie) as on_a:
            await receive_until(on_a, frame("session.state"))
            await on_a.send(json.dumps({"type": "message", "input": "long", "ref": "m1"}))
            await receive_until(on_a, frame("delta", ref="m1"))
            await on_a.send(json.dumps({"type": "message", "input": "next", "ref": "m2"}))
            await receive_until(on_a, frame("ack", ref="m2"))
            a.proc.send_signal(getattr(signals, stop))
            if stop == "SIGTERM":
                stopped = await receive_until(on_a, frame("session.stopped"), timeout=10)
                assert stopped[-1]["reason"] == "shutdown"
            else:  # uvicorn closes the socket (1012) before the lifespan shutdown
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await receive_until(on_a, lambda f: False, timeout=10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert await asyncio.to_thread(a.proc.wait, 15) is not None  # it exited
    first, second = await runs(session)
    assert (first.status, first.error["code"], first.error["retryable"]) == (
        RunStatus.FAILED, "interrupted", True)
    assert second.status == RunStatus.QUEUED  # left for the next process, at once
    row = await database_sync_to_async(
        type(session)._base_manager.values("lease_token").get)(pk=session.pk)
    assert row["lease_token"] is None and await leases() == []
