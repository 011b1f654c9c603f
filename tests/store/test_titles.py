"""Titles written by a model after the first turn: off the turn's path, recorded as a run, and
never over a title a person set."""

from __future__ import annotations

import threading

import pytest

from django_agent_session.models import AgentEvent, AgentRun, RunKind, RunStatus
from django_agent_session.store import titles
from django_agent_session.store.sessions import update_fields
from django_agent_session.testing.loopback import Reply
from tests.helpers.engine import declared
from tests.helpers.loopback import system_text
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)

ARGS = {"company_name": "Acme"}
QUESTION = "My order is late, what can I do about it?"


@pytest.fixture
def gated(loopback):
    """Turns are answered at once; the title call waits until ``release`` is set."""
    release = threading.Event()

    def respond(request):
        if system_text(request) == titles.TITLE_SYSTEM:
            assert release.wait(10)
            return Reply.text('"Late order help."', usage={"input_tokens": 30,
                                                           "output_tokens": 5})
        return Reply.text("Hello.", usage={"input_tokens": 10, "output_tokens": 2})

    loopback.responder = respond
    yield release
    release.set()
    titles.wait()


def test_a_model_title_replaces_the_automatic_one_after_the_turn(loopback, gated):
    with declared(ChatAgent, title="model"):
        session = ChatAgent.objects.start_session(QUESTION, instruction_args=ARGS)
        # the turn returned while the title call still waits: it is off the critical path
        assert session.title == QUESTION
        loopback.wait_for_requests(2)
        session.refresh_from_db()
        assert session.title == QUESTION
        gated.set()
        titles.wait()
    session.refresh_from_db()
    assert session.title == "Late order help"  # quotes and the final period cleaned off
    title_call = loopback.message_requests[1]
    assert QUESTION in title_call.messages[0]["content"][0]["text"]
    assert "stream" not in title_call.body or title_call.body["stream"] is False
    run = AgentRun.objects.get(kind=RunKind.TITLE)
    assert run.status == RunStatus.COMPLETED and run.session_id == session.pk
    assert run.output == {"title": "Late order help"}
    assert (run.input_tokens, run.output_tokens) == (30, 5)
    assert (session.input_tokens, session.output_tokens) == (40, 7)  # the turn's and the title's
    event = AgentEvent.objects.get(session_id=session.pk, type="session.titled")
    assert event.data["title"] == "Late order help" and event.data["by"] == "model"


def test_a_title_a_person_set_meanwhile_is_kept(loopback, gated):
    with declared(ChatAgent, title="model"):
        session = ChatAgent.objects.start_session(QUESTION, instruction_args=ARGS)
        loopback.wait_for_requests(2)
        session.title = "Mine"
        update_fields(session, ["title"])
        gated.set()
        titles.wait()
    session.refresh_from_db()
    assert session.title == "Mine"
    assert AgentRun.objects.filter(kind=RunKind.TITLE).count() == 1  # its tokens were spent
    assert not AgentEvent.objects.filter(type="session.titled").exists()


def test_only_the_first_turn_asks_and_a_given_title_is_never_replaced(loopback, gated):
    gated.set()
    with declared(ChatAgent, title="model"):
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS, title="Given")
        ChatAgent.objects.continue_session(session, "Again")
        titles.wait()
    assert len(loopback.message_requests) == 2
    assert not AgentRun.objects.filter(kind=RunKind.TITLE).exists()


def test_by_default_the_first_message_is_the_title(loopback, gated):
    session = ChatAgent.objects.start_session(QUESTION, instruction_args=ARGS)
    titles.wait()
    assert session.title == QUESTION and len(loopback.message_requests) == 1
