"""Two ASGI server processes (daphne) sharing one database and the Redis channel layer."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from channels.db import database_sync_to_async
from django.db import connection
from django.utils import timezone

from django_agent_session.models import AgentRun, LiveOwnership, RunStatus
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


@pytest.fixture
async def redis_prefix():
    """A Redis key prefix of this test only; its keys are deleted afterwards."""
    import redis.asyncio as redis

    prefix = f"agent-live-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


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


async def test_viewers_on_two_processes_share_the_stream_and_one_owner_runs_the_turn(
        user, redis_prefix):
    with LoopbackMessagesServer([Reply.text("Streamed across two processes", delay=0.03)]) \
            as loopback, server_processes(2, server_env(loopback, redis_prefix)) as (a, b):
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
            await wait_until(lambda: _expired(lease.session_id), timeout=10)
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
def _expired(session_id) -> bool:
    return not LiveOwnership.objects.filter(session_id=session_id,
                                            expires_at__gt=timezone.now()).exists()
