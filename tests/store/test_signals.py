"""The turn signals: when they are sent, with what, and that a receiver cannot break a turn."""

from __future__ import annotations

import logging

import pytest

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentRun, RunStatus
from django_agent_session.signals import turn_completed, turn_failed
from django_agent_session.testing import text_reply
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
