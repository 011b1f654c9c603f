"""Graceful shutdown of a process: running turns get a grace period, then are recorded
interrupted; queued runs stay queued for the next process; no lease is left to expire."""

from __future__ import annotations

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async

from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.runs.executors import inline_executor
from django_agent_session.runs.shutdown import shutdown, with_lifespan
from django_agent_session.testing.loopback import Reply
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)

ARGS = {"company_name": "Acme"}


@pytest.fixture
def executor():
    executor = inline_executor()
    yield executor
    executor.reopen()


@database_sync_to_async
def status_of(run) -> str:
    return AgentRun.objects.get(pk=run.pk).status


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def running_with_queue(loopback, reply):
    """A session whose first queued run is running on this loop, with two more queued."""
    loopback.enqueue(reply)
    run = await ChatAgent.objects.astart_session("long one", instruction_args=ARGS, wait=False)

    async def streaming() -> bool:
        requests = loopback.message_requests
        return bool(requests) and bool(requests[0].events("content_block_delta"))
    await until(streaming)
    queued = [await ChatAgent.objects.acontinue_session(run.session_id, word, wait=False)
              for word in ("two", "three")]
    return run, queued


async def test_a_turn_still_running_after_the_grace_is_recorded_interrupted(
        loopback, executor):
    run, queued = await running_with_queue(loopback, Reply.text("slow " * 200, delay=0.05))

    await shutdown(grace=0.2)

    assert await status_of(run) == RunStatus.FAILED
    stored = await AgentRun.objects.aget(pk=run.pk)
    assert stored.error["code"] == "interrupted" and stored.error["retryable"] is True
    session = await ChatAgent._base_manager.aget(pk=run.session_id)
    assert session.lease_token is None and session.turn_count == 0  # no lease to wait out
    assert [await status_of(q) for q in queued] == [RunStatus.QUEUED] * 2  # left for the next
    assert await AgentEvent.objects.filter(run_id=run.pk, type="run.failed").acount() == 1

    # a closed executor starts nothing; the next process (here: reopened) takes the queue
    await ChatAgent.objects.acontinue_session(run.session_id, "four", wait=False)
    await asyncio.sleep(0.2)
    assert [await status_of(q) for q in queued] == [RunStatus.QUEUED] * 2
    executor.reopen()
    loopback.enqueue("re two", "re three", "re four")
    await database_sync_to_async(executor.dispatch)(ChatAgent, run.session_id)

    async def drained() -> bool:
        return not await AgentRun.objects.filter(
            session_id=run.session_id, status__in=["queued", "running"]).aexists()
    await until(drained)
    assert [r.user_text for r in loopback.message_requests[1:]] == ["two", "three", "four"]


async def test_a_turn_that_ends_within_the_grace_completes(loopback, executor):
    # the reply goes on only once the shutdown has begun: a turn that ended before it would
    # let the drain claim the next run, which is not what this test is about
    begun = threading.Event()
    run, queued = await running_with_queue(
        loopback, Reply.text("short reply", delay=0.05).held_after(1, until=begun))

    stopping = asyncio.create_task(shutdown(grace=10))
    while not executor.closed:
        await asyncio.sleep(0)
    begun.set()
    await stopping

    assert await status_of(run) == RunStatus.COMPLETED
    assert [await status_of(q) for q in queued] == [RunStatus.QUEUED] * 2  # not claimed


async def test_lifespan_shutdown_runs_it(executor):
    sent = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message["type"])

    async def http_app(scope, receive, send):
        raise AssertionError("a lifespan scope never reaches the application")

    await with_lifespan(http_app)({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert executor.closed


async def test_sigterm_during_a_database_call_still_shuts_down_cleanly(executor, monkeypatch):
    """The signal lands in whatever task runs: here one inside ``database_sync_to_async``
    (asgiref marks that in a context variable). The shutdown must not inherit that context,
    or its own database calls refuse to run ("would deadlock") and leases stay held."""
    import signal

    from asgiref.sync import SyncToAsync

    from django_agent_session.runs import shutdown as module

    passed_on, ran = asyncio.Event(), []

    def previous(signum, frame):  # the server's own handler
        passed_on.set()

    async def release_something():
        ran.append(await database_sync_to_async(lambda: "released")())

    monkeypatch.setattr(module, "_installed", False)
    monkeypatch.setattr(module, "_callbacks", [release_something])
    saved = signal.signal(signal.SIGTERM, previous)
    try:
        module.install_signal_handler()
        handler = signal.getsignal(signal.SIGTERM)

        async def inside_a_database_call():
            SyncToAsync.deadlock_context.set(True)  # as while awaiting a thread-sensitive call
            handler(signal.SIGTERM, None)

        await asyncio.create_task(inside_a_database_call())
        await asyncio.wait_for(passed_on.wait(), 10)
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert ran == ["released"]
