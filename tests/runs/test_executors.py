"""The inline executor outside a server loop (a shell, a WSGI view, a management command):
its drains run in threads, one per session at a time."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from django_agent_session.models import AgentRun, RunStatus, SessionStatus
from django_agent_session.runs import drain
from django_agent_session.runs.executors import inline_executor
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)  # the drain threads see committed rows

ARGS = {"company_name": "Acme"}


def drain_threads(session) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"agent-drain-{session.pk}"]


def test_a_session_has_one_drain_thread_however_often_it_is_dispatched(loopback, monkeypatch):
    """Every submission (and every turn that ends with runs queued behind it) dispatches.
    Outside a server loop each dispatch used to start a thread: a contended session gathered
    one per turn (183 in a run of 8 writers), each polling the lease with a connection of its
    own. A dispatch to a session whose drain waits behind a lease wakes that drain instead."""
    # a drain behind a lease looks again only when woken (or after a minute)
    monkeypatch.setattr(drain, "LOOK_AGAIN_MAX", 60.0)
    loopback.enqueue("first answer")
    session = ChatAgent.objects.start_session("first", instruction_args=ARGS)
    held = ChatAgent._base_manager.filter(pk=session.pk)
    held.update(lease_token=uuid.uuid4(), status=SessionStatus.RUNNING,
                lease_expires_at=timezone.now() + timedelta(seconds=60))  # another process's
    try:
        runs = [ChatAgent.objects.continue_session(session.pk, f"m{i}", wait=False)
                for i in range(4)]
        assert len(drain_threads(session)) == 1
        loopback.enqueue(*(f"re m{i}" for i in range(4)))
    finally:
        held.update(lease_token=None, status=SessionStatus.IDLE, lease_expires_at=None)
    inline_executor().dispatch(ChatAgent, session.pk)  # e.g. the holder's turn ended
    assert inline_executor().join(20)  # it drained the queue in time: it was woken
    assert [AgentRun.objects.get(pk=run.pk).status for run in runs] == [
        RunStatus.COMPLETED] * 4
    assert [r.user_text for r in loopback.message_requests[1:]] == ["m0", "m1", "m2", "m3"]
    assert drain_threads(session) == []


def test_a_drain_thread_that_cannot_start_does_not_stop_the_sessions_next_one(
        loopback, monkeypatch):
    """A thread the system refuses ("can't start new thread") must not stay registered as
    the session's drain: later dispatches would only ask it to look again, and nothing would
    ever drain the session in this process."""
    loopback.enqueue("first answer")
    session = ChatAgent.objects.start_session("first", instruction_args=ARGS)

    def refuse(self):
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError):
            inline_executor().dispatch(ChatAgent, session.pk)
    loopback.enqueue("re later")
    run = ChatAgent.objects.continue_session(session.pk, "later", wait=False)
    assert inline_executor().join(20)
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.COMPLETED
