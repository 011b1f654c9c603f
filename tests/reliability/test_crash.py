"""kill -9 in the middle of a turn, repeatedly: nothing is lost, nothing stays stuck.

Two kinds of victim, three kills each, on the test's database with a one-second turn lease:

``process``
    a plain process running ``continue_session`` (plain, streamed, async);
``asgi``
    a daphne process serving the live layer, driven by a WebSocket client.

The test waits until the turn is really in flight (the model request reached the loopback
server; for streamed turns, deltas were already sent), kills the process with SIGKILL and checks:
every session still loads, the context is byte-for-byte what it was, the dead run is still
``running``; then the next turn waits out the dead lease, fails the interrupted run and succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings

from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.live_server import make_session_cookie
from tests.helpers.loopback import loopback_settings
from tests.helpers.state import raw_context
from tests.helpers.threads import in_thread
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)  # the child must see committed rows

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 1.0
ARGS = {"company_name": "Acme"}


def _env(base_url: str) -> dict[str, str]:
    return {**os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.reliability.crash_settings",
            "RELIABILITY_DB_NAME": str(connection.settings_dict["NAME"]),
            "RELIABILITY_BASE_URL": base_url,
            "RELIABILITY_LEASE_SECONDS": str(LEASE_SECONDS),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}


def _mid_turn(server, count: int, child: subprocess.Popen, deltas: int) -> bool:
    assert child.poll() is None, child.stdout.read().decode(errors="replace")[-3000:]
    requests = server.message_requests
    return len(requests) >= count and \
        len(requests[count - 1].events("content_block_delta")) >= deltas


def _wait_mid_turn(server, count: int, child: subprocess.Popen, deltas: int) -> None:
    """Until the child's model request arrived (and ``deltas`` deltas were sent to it)."""
    deadline = time.monotonic() + 60
    while not _mid_turn(server, count, child, deltas):
        assert time.monotonic() < deadline, "the child's turn never reached the model"
        time.sleep(0.02)


def _kill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL


def kill_plain_process(server, session, mode: str, deltas: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.crash_child", mode, str(session.pk)],
        cwd=ROOT, env=_env(server.base_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_mid_turn(server, len(server.message_requests) + 1, child, deltas)
        _assert_in_flight(session)
        _kill(child)
    finally:
        _reap(child)


def kill_asgi_process(server, session, mode: str, deltas: int) -> None:
    """A daphne process runs the turn for a WebSocket viewer; it is killed mid-stream."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "tests.asgi:application"],
        cwd=ROOT, env=_env(server.base_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cookie = make_session_cookie(session.owner)
    count = len(server.message_requests) + 1

    async def drive() -> None:
        from websockets.asyncio.client import connect

        url = f"ws://127.0.0.1:{port}/ws/agent-sessions/testapp.chatagent/{session.pk}/"
        deadline = time.monotonic() + 60
        while True:  # until daphne listens
            assert child.poll() is None, child.stdout.read().decode(errors="replace")[-3000:]
            try:
                ws = await connect(url, additional_headers={
                    "Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"})
                break
            except OSError:
                assert time.monotonic() < deadline, "daphne never listened"
                await asyncio.sleep(0.1)
        try:
            assert json.loads(await ws.recv())["type"] == "session.state"
            # a ref names one message (resending it would not run it again): one per round
            await ws.send(json.dumps({"type": "message", "input": "doomed turn",
                                      "ref": f"d{count}"}))
            while not _mid_turn(server, count, child, deltas):
                assert time.monotonic() < deadline, "the turn never reached the model"
                await asyncio.sleep(0.02)
            await asyncio.to_thread(in_thread(_assert_in_flight), session)
            _kill(child)
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    try:
        asyncio.run(drive())
    finally:
        _reap(child)


def _assert_in_flight(session) -> None:
    row = ChatAgent._base_manager.get(pk=session.pk)
    assert row.status == "running" and row.lease_token is not None
    assert AgentRun.objects.get(pk=row.lease_token).status == RunStatus.RUNNING



def _reap(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()
    child.stdout.close()


KINDS = {
    "process": (kill_plain_process, ["sync", "stream", "async"]),
    "asgi": (kill_asgi_process, ["live", "live", "live"]),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_kill_dash_nine_mid_turn_repeatedly(loopback, user, kind):
    kill, modes = KINDS[kind]
    settings = loopback_settings(loopback, TURN_LEASE_SECONDS=LEASE_SECONDS,
                                 TURN_WAIT_SECONDS=30.0)
    with override_settings(AGENT_SESSION=settings):
        loopback.enqueue(Reply.text("first answer"), Reply.text("other answer"))
        session = ChatAgent.objects.start_session("first question", instruction_args=ARGS,
                                                  owner=user)
        bystander = ChatAgent.objects.start_session("unrelated", instruction_args=ARGS,
                                                    owner=user)
        bystander_raw = raw_context(ChatAgent, bystander.pk)

        for round_no, mode in enumerate(modes):
            raw = raw_context(ChatAgent, session.pk)
            messages = ChatAgent.objects.get_context(session.pk).messages
            if mode == "sync":  # killed while waiting for the model's answer
                loopback.enqueue(Reply.stall(60))
                deltas = 0
            else:  # killed in the middle of a streamed reply
                loopback.enqueue(Reply.text("x" * 2000, chunk_size=1, delay=0.02))
                deltas = 3
            kill(loopback, session, mode, deltas)
            stale_id = ChatAgent._base_manager.get(pk=session.pk).lease_token

            # every session still loads; nothing of the dead turn reached any context
            assert raw_context(ChatAgent, session.pk) == raw
            assert raw_context(ChatAgent, bystander.pk) == bystander_raw
            for pk in ChatAgent.objects.values_list("pk", flat=True):
                ChatAgent.objects.get_context(pk)
            stale = AgentRun.objects.get(pk=stale_id)
            assert stale.status == RunStatus.RUNNING

            # the next turn waits out the dead lease, fails the interrupted run, and succeeds
            loopback.enqueue(Reply.text(f"recovered {round_no}"))
            after = ChatAgent.objects.continue_session(session.pk, f"after crash {round_no}")
            assert after.last_output == {"content": f"recovered {round_no}"}
            stale.refresh_from_db()
            assert stale.status == RunStatus.FAILED and stale.error["code"] == "interrupted"
            assert stale.ended_at is not None
            stored = ChatAgent.objects.get_context(session.pk).messages
            assert stored[:-2] == messages and len(stored) == len(messages) + 2
            failed = AgentEvent.objects.filter(session_id=session.pk, type="run.failed")
            assert [e.data["run_id"] for e in failed][-1] == str(stale.pk)

        row = ChatAgent._base_manager.get(pk=session.pk)
        assert row.status == "idle" and row.lease_token is None and row.turn_count == 4
        assert not AgentRun.objects.filter(status=RunStatus.RUNNING).exists()
        seqs = list(AgentEvent.objects.filter(session_id=session.pk).order_by("seq")
                    .values_list("seq", flat=True))
        assert seqs == list(range(1, row.event_seq + 1))


@pytest.mark.skipif(connection.vendor == "postgresql", reason=(
    "PostgreSQL takes the lease and inserts the run in one statement (store/statements.py): "
    "there is no moment between them to die in"))
def test_dying_between_lease_and_run_leaves_no_lease(loopback, user):
    """Regression: taking the lease and inserting the run were two autocommit statements; a
    process that died between them left a lease naming no run. They are one transaction."""
    with override_settings(AGENT_SESSION=loopback_settings(loopback)):
        loopback.enqueue(Reply.text("first answer"))
        session = ChatAgent.objects.start_session("first question", instruction_args=ARGS,
                                                  owner=user)
        raw = raw_context(ChatAgent, session.pk)
        child = subprocess.run(
            [sys.executable, "-m", "tests.reliability.crash_child", "begin", str(session.pk)],
            env=_env(loopback.base_url), cwd=ROOT, capture_output=True, timeout=60)
        assert child.returncode == 9, child.stderr.decode()

        row = ChatAgent._base_manager.get(pk=session.pk)
        assert row.lease_token is None and row.status == "idle"  # the UPDATE was rolled back
        assert raw_context(ChatAgent, session.pk) == raw
        assert AgentRun.objects.filter(session_id=session.pk).count() == 1
        loopback.enqueue(Reply.text("next answer"))
        after = ChatAgent.objects.continue_session(session.pk, "next question")
        assert after.last_output == {"content": "next answer"}


def test_a_paused_turn_survives_kill_dash_nine_and_completes_on_another_process(loopback, user):
    """A turn paused for an approval keeps nothing in memory: its process is killed, the call
    is approved and the turn resumed by this process."""
    from tests.testapp.models import REFUNDS, ApprovalAgent

    REFUNDS.clear()
    with override_settings(AGENT_SESSION=loopback_settings(loopback)):
        session = ApprovalAgent.objects.create_session(instruction_args=ARGS, owner=user)
        loopback.enqueue(Reply.tool_use("refund", {"order": 7, "amount": 900}, id="t9"))
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.crash_child", "pause", str(session.pk)],
            cwd=ROOT, env=_env(loopback.base_url), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not AgentRun.objects.filter(session_id=session.pk,
                                              status=RunStatus.AWAITING_APPROVAL).exists():
                assert child.poll() is None, child.stdout.read().decode(errors="replace")
                assert time.monotonic() < deadline, "the child never paused"
                time.sleep(0.05)
            _kill(child)
        finally:
            _reap(child)

        assert ApprovalAgent._base_manager.get(pk=session.pk).lease_token is None
        (call,) = ApprovalAgent.objects.pending_tool_calls(session.pk)
        assert call["tool_use_id"] == "t9"
        loopback.enqueue("Refunded 900.")
        ApprovalAgent.objects.approve_tool_call(session.pk, "t9", by=user)
        deadline = time.monotonic() + 20  # the inline executor resumes it in this process
        while (run := AgentRun.objects.get(session_id=session.pk)).status != "completed":
            assert time.monotonic() < deadline, run.status
            time.sleep(0.05)
    assert REFUNDS == [(7, 900.0)]  # the tool ran here, once
    assert ApprovalAgent.objects.get(pk=session.pk).last_output == {"content": "Refunded 900."}



@pytest.mark.parametrize("lease", ["free", "held"])
def test_a_process_that_queues_a_message_and_exits_does_not_lose_it(loopback, user, lease):
    """Regression (soak run, #19): a process that submitted with ``wait=False`` and then
    exited failed the queued run ("cannot schedule new futures after interpreter shutdown"):
    its drain thread was running the turn while the interpreter shut down. Now the exiting
    process finishes the turn it runs (lease ``free``: it claimed the run itself), and claims
    nothing when another process holds the lease (``held``), which runs it after its own."""
    with override_settings(AGENT_SESSION=loopback_settings(loopback, TURN_WAIT_SECONDS=30.0)):
        session = ChatAgent.objects.create_session(instruction_args=ARGS, owner=user)
        child_done = threading.Event()  # "held": this process's turn waits for the child
        first = Reply.text("first answer")
        if lease == "held":
            first = first.held_after(0, until=child_done)
        loopback.enqueue(first, Reply.text("second answer", delay=0.3))
        thread = threading.Thread(target=in_thread(ChatAgent.objects.continue_session),
                                  args=(session.pk, "first"))
        thread.start()
        if lease == "held":  # the child submits while this process's turn is in flight
            deadline = time.monotonic() + 30
            while not loopback.message_requests:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        else:
            thread.join(30)
        try:
            child = subprocess.run(
                [sys.executable, "-m", "tests.reliability.crash_child", "submit",
                 str(session.pk)],
                cwd=ROOT, env=_env(loopback.base_url), capture_output=True, text=True,
                timeout=60)
        finally:
            child_done.set()
        assert child.returncode == 0 and "queued:" in child.stdout, child.stdout + child.stderr
        thread.join(30)
        deadline = time.monotonic() + 30
        while AgentRun.objects.filter(session_id=session.pk,
                                      status__in=("queued", "running")).exists():
            assert time.monotonic() < deadline, "the queued run was never run"
            time.sleep(0.05)
        runs = list(AgentRun.objects.filter(session_id=session.pk).order_by("started_at")
                    .values("status", "error"))
        assert runs == [{"status": "completed", "error": None}] * 2
        assert ChatAgent.objects.get(pk=session.pk).last_output == {"content": "second answer"}


def test_an_exiting_process_interrupts_a_turn_that_outlasts_the_grace(loopback, user):
    """The exiting process waits ``SHUTDOWN_GRACE_SECONDS`` for the turn its drain thread
    runs, then records it interrupted and frees the lease: no lease is left to expire."""
    with override_settings(AGENT_SESSION=loopback_settings(loopback)):
        session = ChatAgent.objects.create_session(instruction_args=ARGS, owner=user)
        # by text: on a slow machine the child may be interrupted before its request is sent
        loopback.responder = lambda request: (Reply.stall(30.0, "too late")
                                              if request.user_text.startswith("queued")
                                              else Reply.text("after"))
        started = time.monotonic()
        child = subprocess.run(
            [sys.executable, "-m", "tests.reliability.crash_child", "submit", str(session.pk)],
            cwd=ROOT, env={**_env(loopback.base_url), "RELIABILITY_SHUTDOWN_GRACE": "1"},
            capture_output=True, text=True, timeout=60)
        assert child.returncode == 0 and "queued:" in child.stdout, child.stdout + child.stderr
        assert time.monotonic() - started < 25, child.stdout + child.stderr  # the grace
        run = AgentRun.objects.get(session_id=session.pk)
        assert run.status == RunStatus.FAILED and run.error["code"] == "interrupted", run.error
        assert run.error["retryable"] is True
        row = ChatAgent._base_manager.get(pk=session.pk)
        assert row.lease_token is None and row.version == 0
        assert ChatAgent.objects.continue_session(session, "again").last_output == {
            "content": "after"}
