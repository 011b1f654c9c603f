"""A turn keeps its lease while a model call or a tool is in flight.

Regression: the lease was renewed only between model calls, so one call longer than
``TURN_LEASE_SECONDS`` was taken over by the next caller and its paid-for reply thrown away as
``LeaseLost``; the taker also wrote ``run.failed interrupted`` for a run that was still alive.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.db import connection
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.store.turns import SessionStore
from django_agent_session.testing import text_reply
from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)  # the contender runs in its own thread

ARGS = {"company_name": "Acme"}
LEASE = 1.5  # renewed every 0.5 s: a beat may be 1 s late on a loaded runner
CALL = 3 * LEASE  # one model call that lasts three leases


def contend(session_pk, attempts: list) -> None:
    """Another caller trying the session while the long call runs (every 0.2 s; the
    settings in force, with ``TURN_WAIT_SECONDS`` 0, are the test's)."""
    try:
        deadline = time.monotonic() + CALL - 0.3
        while time.monotonic() < deadline:
            try:
                ChatAgent.objects.continue_session(session_pk, "intruder")
                attempts.append("ran")
            except exc.SessionBusy:
                attempts.append("busy")
            time.sleep(0.2)
    finally:
        connection.close()


def terminal_events(run_id) -> list[AgentEvent]:
    return list(AgentEvent.objects.filter(
        data__run_id=str(run_id), type__in=["run.completed", "run.failed", "run.cancelled"]))


def start_when_running(contender: threading.Thread):
    """A progress callback that starts ``contender`` once the turn holds the lease."""
    def on_progress(kind, data):
        if kind == "run.started":
            contender.start()
    return on_progress


def test_a_model_call_of_three_leases_completes_and_is_stored(scripted):
    scripted.enqueue("first")
    session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
    # streamed in 6 deltas LEASE / 2 apart: one call of three leases
    scripted.enqueue(text_reply("one two three four five six", delay=CALL / 6))
    attempts: list[str] = []
    with override_settings(AGENT_SESSION={"TURN_LEASE_SECONDS": LEASE, "TURN_WAIT_SECONDS": 0}):
        contender = threading.Thread(target=contend, args=(session.pk, attempts))
        session = ChatAgent.objects.continue_session(session.pk, "Long one",
                                                     on_progress=start_when_running(contender))
        contender.join()
    assert session.last_output == {"content": "one two three four five six"}
    assert attempts and set(attempts) == {"busy"}  # never taken over
    assert [e.type for e in terminal_events(session.last_turn.run_id)] == ["run.completed"]
    assert AgentRun.objects.get(pk=session.last_turn.run_id).status == RunStatus.COMPLETED
    assert len(ChatAgent.objects.get_context(session.pk).messages) == 4


def test_async_model_call_through_the_sdk_keeps_its_lease():
    with LoopbackMessagesServer() as server:
        settings = {"TURN_LEASE_SECONDS": LEASE, "TURN_WAIT_SECONDS": 0, "ANTHROPIC": {
            "BASE_URL": server.base_url, "API_KEY": "k", "MAX_RETRIES": 0, "TIMEOUT": 30.0}}
        with override_settings(AGENT_SESSION=settings):
            server.enqueue(Reply.text("first"))
            session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
            server.enqueue(Reply.stall(CALL, then=Reply.text("worth the wait")))
            attempts: list[str] = []
            contender = threading.Thread(target=contend, args=(session.pk, attempts))

            session = asyncio.run(ChatAgent.objects.acontinue_session(
                session.pk, "Long one", on_progress=start_when_running(contender)))
            contender.join()
    assert session.last_output == {"content": "worth the wait"}
    assert attempts and set(attempts) == {"busy"}
    assert [e.type for e in terminal_events(session.last_turn.run_id)] == ["run.completed"]


def test_a_turn_that_lost_its_lease_adds_no_second_terminal_event(scripted):
    """If a process stalls past its lease and the run was failed by the taker, the stalled
    turn's own failure writes nothing more: one run, one terminal event."""
    scripted.enqueue("first")
    session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
    store = SessionStore(ChatAgent)

    def taken_over(request):
        # what a taker does to a dead lease: fail the run (interrupted) and take the lease
        run_id = ChatAgent._base_manager.get(pk=session.pk).lease_token
        AgentRun.objects.filter(pk=run_id).update(status=RunStatus.FAILED,
                                                  error={"code": "interrupted"})
        store.append_events(session.pk, [("run.failed", {"run_id": str(run_id),
                                                          "error": {"code": "interrupted"}})])
        ChatAgent._base_manager.filter(pk=session.pk).update(lease_token=None)
        return "late reply"
    scripted.enqueue(taken_over)
    with pytest.raises(exc.LeaseLost) as info:
        ChatAgent.objects.continue_session(session.pk, "Again")
    run_id = info.value.turn.run_id
    assert [e.data["error"]["code"] for e in terminal_events(run_id)] == ["interrupted"]
    assert AgentRun.objects.get(pk=run_id).error == {"code": "interrupted"}
