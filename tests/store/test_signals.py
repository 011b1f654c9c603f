"""The turn signals: when they are sent (once, after what they report is stored: for a turn run
by the caller and for a durable run on the executor; never for input refused before a run), with
what, and that a receiver cannot break a turn."""

from __future__ import annotations

import logging

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentEvent, AgentRun, EventType, RunStatus
from django_agent_session.runs.drain import drain
from django_agent_session.signals import turn_completed, turn_failed
from django_agent_session.testing import text_reply
from tests.helpers.executors import Recording
from tests.testapp.models import ChatAgent, PlainAgent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def received():
    calls: list[tuple[str, dict]] = []

    def on_completed(sender, **kwargs):
        # sent after the commit: the run is already stored as completed
        kwargs["stored_status"] = AgentRun.objects.get(pk=kwargs["run_id"]).status
        calls.append(("completed", {"sender": sender, **kwargs}))

    def on_failed(sender, **kwargs):
        kwargs["stored_status"] = AgentRun.objects.get(pk=kwargs["run_id"]).status
        calls.append(("failed", {"sender": sender, **kwargs}))

    turn_completed.connect(on_completed, sender=PlainAgent)
    turn_failed.connect(on_failed, sender=PlainAgent)
    yield calls
    turn_completed.disconnect(on_completed, sender=PlainAgent)
    turn_failed.disconnect(on_failed, sender=PlainAgent)


def test_turn_completed_is_sent_after_the_commit(scripted, received):
    scripted.enqueue(text_reply("Hello"))
    session = PlainAgent.objects.start_session("Hi")

    assert [kind for kind, _ in received] == ["completed"]
    data = received[0][1]
    assert data["sender"] is PlainAgent
    assert data["session"] is session
    assert data["run_id"] == session.last_turn.run_id
    assert data["output"] == {"content": "Hello"}
    assert data["stored_status"] == RunStatus.COMPLETED


def test_receivers_of_other_models_are_not_called(scripted, received):
    scripted.enqueue(text_reply("Hello"))
    ChatAgent.objects.start_session("Hi", instruction_args={"company_name": "Acme"})
    assert received == []


def test_turn_failed_carries_the_typed_error(scripted, received):
    scripted.enqueue(text_reply("Hello"))
    session = PlainAgent.objects.start_session("Hi")
    received.clear()
    scripted.enqueue(exc.ModelOverloaded("busy"))

    with pytest.raises(exc.ModelOverloaded) as raised:
        PlainAgent.objects.continue_session(session.pk, "Again")

    assert [kind for kind, _ in received] == ["failed"]
    data = received[0][1]
    assert data["error"] is raised.value
    assert data["run_id"] == raised.value.turn.run_id
    assert data["stored_status"] == RunStatus.FAILED


async def test_async_turns_send_from_a_thread_where_the_orm_works(scripted, received):
    scripted.enqueue(text_reply("Hello"))
    session = await PlainAgent.objects.astart_session("Hi")
    # the receiver queried AgentRun: it ran where synchronous ORM access is allowed
    assert received[0][1]["run_id"] == session.last_turn.run_id
    assert received[0][1]["stored_status"] == RunStatus.COMPLETED


def test_a_raising_receiver_is_logged_and_the_turn_stands(scripted, caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    turn_completed.connect(broken, sender=PlainAgent)
    try:
        scripted.enqueue(text_reply("Hello"))
        with caplog.at_level(logging.ERROR, logger="django.dispatch"):
            session = PlainAgent.objects.start_session("Hi")
    finally:
        turn_completed.disconnect(broken, sender=PlainAgent)

    assert session.last_output == {"content": "Hello"}
    assert AgentRun.objects.get(pk=session.last_turn.run_id).status == RunStatus.COMPLETED
    logged = [r for r in caplog.records if r.name == "django.dispatch" and r.exc_info]
    assert [str(r.exc_info[1]) for r in logged] == ["receiver bug"]


# -- exactly once, with the documented arguments, after the data is stored --------------------

@pytest.fixture
def sent():
    """Each signal sent for PlainAgent: ``(name, kwargs, what the database held then)``."""
    calls: list[tuple[str, dict, dict]] = []

    def stored(run_id) -> dict:
        run = AgentRun.objects.get(pk=run_id)
        ends = list(AgentEvent.objects.filter(run_id=run_id, type__in=(
            EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED))
            .values_list("type", flat=True))
        return {"status": run.status, "ends": ends}

    def on_completed(sender, **kwargs):
        calls.append(("completed", {"sender": sender, **kwargs}, stored(kwargs["run_id"])))

    def on_failed(sender, **kwargs):
        calls.append(("failed", {"sender": sender, **kwargs}, stored(kwargs["run_id"])))

    turn_completed.connect(on_completed, sender=PlainAgent)
    turn_failed.connect(on_failed, sender=PlainAgent)
    yield calls
    turn_completed.disconnect(on_completed, sender=PlainAgent)
    turn_failed.disconnect(on_failed, sender=PlainAgent)


@pytest.fixture
def recording():
    """Queued runs wait until the test drains them, as an executor would (runs.drain)."""
    Recording.calls.clear()
    with override_settings(AGENT_SESSION={"EXECUTOR": "tests.helpers.executors.Recording"}):
        yield Recording


def test_a_completed_turn_sends_turn_completed_once_with_the_documented_arguments(
        scripted, sent):
    scripted.enqueue(text_reply("Hello"))
    session = PlainAgent.objects.start_session("Hi")

    assert len(sent) == 1
    name, kwargs, stored = sent[0]
    assert name == "completed"
    assert set(kwargs) == {"sender", "signal", "session", "run_id", "output"}
    assert kwargs["signal"] is turn_completed and kwargs["sender"] is PlainAgent
    assert kwargs["session"] is session and kwargs["session"].last_turn.run_id == kwargs["run_id"]
    assert kwargs["output"] == {"content": "Hello"}
    assert stored == {"status": RunStatus.COMPLETED, "ends": [EventType.RUN_COMPLETED]}


def test_a_failed_turn_sends_turn_failed_once_with_the_documented_arguments(scripted, sent):
    session = PlainAgent.objects.create_session()
    scripted.enqueue(exc.ModelOverloaded("busy"))

    with pytest.raises(exc.ModelOverloaded) as raised:
        PlainAgent.objects.continue_session(session.pk, "Hi")

    assert len(sent) == 1
    name, kwargs, stored = sent[0]
    assert name == "failed"
    assert set(kwargs) == {"sender", "signal", "session", "run_id", "error"}
    assert kwargs["signal"] is turn_failed
    assert kwargs["session"].pk == session.pk
    assert kwargs["error"] is raised.value and kwargs["run_id"] == raised.value.turn.run_id
    assert stored == {"status": RunStatus.FAILED, "ends": [EventType.RUN_FAILED]}


def test_a_durable_run_sends_its_signal_where_the_executor_runs_it(scripted, sent, recording):
    run = PlainAgent.objects.start_session("Hi", wait=False)
    assert run.status == RunStatus.QUEUED and sent == []  # queued: nothing ran yet

    scripted.enqueue(text_reply("Later"))
    async_to_sync(drain)(PlainAgent, run.session_id)  # what every executor runs

    assert [(name, kwargs["run_id"], kwargs["output"]) for name, kwargs, _ in sent] == [
        ("completed", run.pk, {"content": "Later"})]
    assert sent[0][1]["session"].pk == run.session_id
    assert sent[0][2] == {"status": RunStatus.COMPLETED, "ends": [EventType.RUN_COMPLETED]}


def test_a_durable_run_that_fails_sends_turn_failed_once(scripted, sent, recording):
    session = PlainAgent.objects.create_session()
    run = PlainAgent.objects.submit(session, "Hi").run
    scripted.enqueue(exc.ModelOverloaded("busy"))
    async_to_sync(drain)(PlainAgent, session.pk)

    assert [(name, kwargs["run_id"]) for name, kwargs, _ in sent] == [("failed", run.pk)]
    assert isinstance(sent[0][1]["error"], exc.ModelOverloaded)
    assert sent[0][2] == {"status": RunStatus.FAILED, "ends": [EventType.RUN_FAILED]}


def test_rejected_input_sends_no_signal(scripted, sent):
    session = PlainAgent.objects.create_session()
    with pytest.raises(exc.InvalidInput):
        PlainAgent.objects.start_session({"message": ""})
    with pytest.raises(exc.InvalidInput):
        PlainAgent.objects.continue_session(session, {"nope": 1})
    with override_settings(AGENT_SESSION={"MAX_INPUT_CHARS": 5}), \
            pytest.raises(exc.InvalidInput):
        PlainAgent.objects.continue_session(session, "far too long")

    assert sent == []
    assert not AgentRun.objects.filter(session_id=session.pk).exists()


def test_a_queued_run_cancelled_before_it_ran_sends_no_signal(scripted, sent, recording):
    session = PlainAgent.objects.create_session()
    run = PlainAgent.objects.submit(session, "Hi").run
    assert PlainAgent.objects.cancel_run(run.pk).status == RunStatus.CANCELLED
    async_to_sync(drain)(PlainAgent, session.pk)
    assert sent == []
