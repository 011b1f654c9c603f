"""kill -9 in the middle of a turn, repeatedly: nothing is lost, nothing stays stuck.

A child process (``crash_child.py``) runs a turn against the test's loopback server, on the
test's database, with a one-second turn lease. The test waits until the turn is really in
flight (the model request arrived; for streamed turns, deltas were already sent), kills the
child with SIGKILL, and checks: every session still loads, the context is byte-for-byte what it
was, and the next turn waits out the dead lease, fails the interrupted run and succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings

from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.testapp.models import ChatAgent

from .conftest import loopback_settings, raw_context

pytestmark = pytest.mark.django_db(transaction=True)  # the child must see committed rows

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 1.0
ARGS = {"company_name": "Acme"}


def _spawn(mode: str, pk: object, base_url: str) -> subprocess.Popen:
    env = {**os.environ,
           "RELIABILITY_DB_NAME": str(connection.settings_dict["NAME"]),
           "RELIABILITY_BASE_URL": base_url,
           "RELIABILITY_LEASE_SECONDS": str(LEASE_SECONDS),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.crash_child", mode, str(pk)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_mid_turn(server, count: int, child: subprocess.Popen, deltas: int) -> None:
    """Until the child's model request arrived (and ``deltas`` deltas were sent to it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert child.poll() is None, child.stdout.read().decode()
        requests = server.message_requests
        if len(requests) >= count and \
                len(requests[count - 1].events("content_block_delta")) >= deltas:
            return
        time.sleep(0.02)
    raise AssertionError("the child's turn never reached the model")


def test_kill_dash_nine_mid_turn_repeatedly(loopback):
    settings = loopback_settings(loopback, TURN_LEASE_SECONDS=LEASE_SECONDS,
                                 TURN_WAIT_SECONDS=30.0)
    with override_settings(AGENT_SESSION=settings):
        loopback.enqueue(Reply.text("first answer"), Reply.text("other answer"))
        session = ChatAgent.objects.start_session("first question", instruction_args=ARGS)
        bystander = ChatAgent.objects.start_session("unrelated", instruction_args=ARGS)
        bystander_raw = raw_context(ChatAgent, bystander.pk)

        for round_no, mode in enumerate(["sync", "stream", "async"]):
            raw = raw_context(ChatAgent, session.pk)
            messages = ChatAgent.objects.get_context(session.pk).messages
            if mode == "sync":  # killed while waiting for the model's answer
                loopback.enqueue(Reply.stall(60))
                deltas = 0
            else:  # killed in the middle of a streamed reply
                loopback.enqueue(Reply.text("x" * 2000, chunk_size=1, delay=0.02))
                deltas = 3
            child = _spawn(mode, session.pk, loopback.base_url)
            try:
                _wait_mid_turn(loopback, len(loopback.message_requests) + 1, child, deltas)
                row = ChatAgent._base_manager.get(pk=session.pk)
                assert row.status == "running" and row.lease_token is not None
                stale = AgentRun.objects.get(pk=row.lease_token)
                assert stale.status == RunStatus.RUNNING
                os.kill(child.pid, signal.SIGKILL)
                assert child.wait(30) == -signal.SIGKILL
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                child.stdout.close()

            # every session still loads; nothing of the dead turn reached any context
            assert raw_context(ChatAgent, session.pk) == raw
            assert raw_context(ChatAgent, bystander.pk) == bystander_raw
            for pk in ChatAgent.objects.values_list("pk", flat=True):
                ChatAgent.objects.get_context(pk)

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
