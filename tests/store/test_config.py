"""Per-conversation configuration through the manager: ``start_session(config=)`` and
``create_session(config=)`` set one conversation's model, instruction args, tools and limits;
checked up front, stored with the conversation, applied to its turns (queued ones too) and
recorded on each run."""

from __future__ import annotations

import pytest

from django_agent_session import exceptions as exc
from django_agent_session.exceptions import InvalidConfig
from django_agent_session.models import AgentRun, RunStatus
from django_agent_session.store.sessions import reset_context
from django_agent_session.testing.loopback import Reply
from tests.helpers.engine import declared
from tests.helpers.loopback import system_text
from tests.testapp.models import ChatAgent, Order, ToolAgent

pytestmark = pytest.mark.django_db

ARGS = {"company_name": "Acme"}


def test_start_session_applies_and_records_the_config(loopback, user):
    loopback.enqueue("configured")
    config = {"model": "claude-haiku-9", "max_tokens": 222, "temperature": 0.2,
              "instruction_args": {"company_name": "Config Co"}}
    session = ChatAgent.objects.start_session("hi", instruction_args=ARGS, owner=user,
                                              config=config)
    request = loopback.message_requests[0]
    assert request.model == "claude-haiku-9" and request.body["max_tokens"] == 222
    assert request.body["temperature"] == 0.2
    assert system_text(request) == "You are a helpful assistant for Config Co."
    context = ChatAgent.objects.get_context(session.pk)
    assert context.config == config and context.instruction_args == {"company_name": "Config Co"}
    run = AgentRun.objects.get(pk=session.last_turn.run_id)
    assert run.model == "claude-haiku-9" and run.origin == {"config": config}

    loopback.enqueue("again")  # later turns too, after a reset
    assert reset_context(session)
    ChatAgent.objects.continue_session(session.pk, "more")
    assert loopback.message_requests[1].model == "claude-haiku-9"


def test_a_tools_subset_and_a_limit(loopback, user):
    Order.objects.create(number=1, status="open", customer="c")
    loopback.enqueue(Reply.tool_use("lookup_order", {"number": 1}), "never")
    with pytest.raises(exc.MaxIterationsExceeded) as caught:
        ToolAgent.objects.start_session("go", instruction_args=ARGS, owner=user,
                                        config={"max_iterations": 1})
    assert AgentRun.objects.get(pk=caught.value.turn.run_id).status == RunStatus.FAILED
    assert len(loopback.message_requests) == 1

    loopback.enqueue("no tools here")
    ToolAgent.objects.start_session("go", instruction_args=ARGS, config={"tools": []})
    assert "tools" not in loopback.message_requests[-1].body
    loopback.enqueue("one tool")
    ToolAgent.objects.start_session("go", instruction_args=ARGS,
                                    config={"tools": ["lookup_order"]})
    assert [t["name"] for t in loopback.message_requests[-1].body["tools"]] == ["lookup_order"]


@pytest.mark.django_db(transaction=True)  # the drain reads in another thread
def test_a_queued_first_turn_runs_with_the_config(loopback, recording):
    loopback.enqueue("from the executor")
    run = ChatAgent.objects.start_session("hi", instruction_args=ARGS, wait=False,
                                          config={"model": "claude-haiku-9"})
    assert ChatAgent.objects.drain(run.session_id) == 1
    assert loopback.message_requests[0].model == "claude-haiku-9"
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.origin["config"] == {
        "model": "claude-haiku-9"}


def test_create_session_takes_a_config_too(loopback):
    session = ChatAgent.objects.create_session(instruction_args=ARGS,
                                               config={"max_tokens": 100})
    loopback.enqueue("ok")
    ChatAgent.objects.continue_session(session.pk, "hi")
    assert loopback.message_requests[0].body["max_tokens"] == 100


@pytest.mark.parametrize(("config", "message"), [
    ({"tools": ["nope"]}, "ToolAgent config: tools: Not a tool of ToolAgent: nope; its "
                          "tools: lookup_order."),
    ({"max_iterations": 0}, "ToolAgent config: max_iterations: Must be a positive int, got 0."),
    ({"max_tokens": "many"}, "ToolAgent config: max_tokens: Must be a positive int, got str."),
    ({"model": 5}, 'ToolAgent config: model: Must be a model id or "provider:model", got 5.'),
    ({"model": "nowhere:x"}, "ToolAgent config: model: No client for provider 'nowhere'"),
    ({"cost_budget": "free"},
     "ToolAgent config: cost_budget: Must be an amount in USD, got 'free'."),
    ({"limit": 1}, "ToolAgent config: Unknown key(s) limit; known: model, instruction_args"),
    ("tools", "ToolAgent config: Expected an object."),
])
def test_a_bad_config_is_refused_before_anything_is_stored(loopback, config, message):
    with pytest.raises(InvalidConfig) as caught:
        ToolAgent.objects.start_session("go", instruction_args=ARGS, config=config)
    assert str(caught.value).startswith(message)
    assert caught.value.code == "invalid_config"
    assert not ToolAgent.objects.exists() and loopback.message_requests == []


def test_a_configuration_the_agent_outgrew_fails_the_turn_cleanly(loopback):
    loopback.enqueue("first")
    session = ToolAgent.objects.start_session("go", instruction_args=ARGS,
                                              config={"tools": ["lookup_order"]})
    before = ToolAgent.objects.get_context(session.pk)
    with declared(ToolAgent, tools=[]), pytest.raises(InvalidConfig) as caught:
        ToolAgent.objects.continue_session(session.pk, "again")
    run = AgentRun.objects.get(pk=caught.value.turn.run_id)
    assert run.status == RunStatus.FAILED and run.error["code"] == "invalid_config"
    assert ToolAgent.objects.get_context(session.pk) == before
    assert len(loopback.message_requests) == 1
