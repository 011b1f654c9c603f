"""Per-conversation configuration from the factory router: a factory's ``config`` sets one
conversation's model, instruction args, tools and limits, checked at connect, stored with the
conversation, applied to every turn wherever it runs, and recorded on each run."""

from __future__ import annotations

import uuid

import pytest
from channels.db import database_sync_to_async

from django_agent_session.live import protocol
from django_agent_session.live.routers import register_agent, unregister_agent
from django_agent_session.models import AgentRun
from django_agent_session.testing.loopback import Reply
from tests.helpers.live_server import communicator, expect, viewer
from tests.helpers.loopback import system_text
from tests.testapp.models import ToolAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_layer")]

CONFIG = {"model": "claude-haiku-9", "instruction_args": {"company_name": "Configured Co"},
          "tools": [], "max_tokens": 300, "max_iterations": 2}


@pytest.fixture
def configured():
    register_agent("configured", ToolAgent, config=CONFIG)
    yield "configured"
    unregister_agent("configured")


@database_sync_to_async
def runs_of(pk) -> list[AgentRun]:
    return list(AgentRun.objects.filter(session_id=pk).order_by("started_at"))


async def test_a_factorys_config_applies_to_every_turn_of_its_new_conversation(
        user, loopback, configured):
    loopback.enqueue(Reply.text("one"), Reply.text("two"))
    cid = uuid.uuid4()
    a, state = await viewer(user, cid, agent=configured)
    assert not state["exists"]
    # the client's args lose to the configuration's (the server's)
    await a.send_json_to({"type": "start", "instruction_args": {"company_name": "Client Co"}})
    await expect(a, "session.state", exists=True)
    await a.send_json_to({"type": "message", "input": "Hi", "ref": "m1"})
    await expect(a, "run.status", ref="m1", status="completed")

    first = loopback.message_requests[0]
    assert first.model == "claude-haiku-9"
    assert first.body["max_tokens"] == 300
    assert "tools" not in first.body  # the agent's lookup_order is not this conversation's
    assert system_text(first) == "You are a helpful assistant for Configured Co."

    # a turn run elsewhere (the Python API, no consumer) reads the configuration stored
    # with the conversation
    await ToolAgent.objects.acontinue_session(cid, "Again")
    second = loopback.message_requests[1]
    assert second.model == "claude-haiku-9" and second.body["max_tokens"] == 300
    assert "tools" not in second.body

    runs = await runs_of(cid)
    assert len(runs) == 2
    for run in runs:  # each run records what it ran with
        assert run.model == "claude-haiku-9"
        assert run.origin["config"] == CONFIG
    assert runs[0].origin["surface"] == "websocket"


async def test_an_existing_conversation_keeps_its_own_configuration(user, loopback, configured):
    loopback.enqueue("plain")
    existing = await database_sync_to_async(ToolAgent.objects.create_session)(
        instruction_args={"company_name": "Stored Co"}, owner=user)
    a, state = await viewer(user, existing.pk, agent=configured)
    assert state["exists"]
    await a.send_json_to({"type": "message", "input": "Hi", "ref": "m1"})
    await expect(a, "run.status", ref="m1", status="completed")
    request = loopback.message_requests[0]
    assert request.model == "claude-sonnet-5-5"
    assert [tool["name"] for tool in request.body["tools"]] == ["lookup_order"]
    assert system_text(request) == "You are a helpful assistant for Stored Co."
    [run] = await runs_of(existing.pk)
    assert "config" not in run.origin


@pytest.mark.parametrize(("config", "field"), [
    ({"tools": ["lookup_order", "launch_rockets"]}, "tools"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"instruction_args": {"nope": 1}}, "instruction_args"),
    ({"colour": "blue"}, "non_field_errors"),
])
async def test_a_bad_config_closes_the_socket_with_a_documented_code(
        user, loopback, config, field):
    register_agent("misconfigured", ToolAgent, config=config)
    try:
        comm = await communicator(user, uuid.uuid4(), agent="misconfigured")
        connected, _ = await comm.connect(timeout=5)
        assert connected
        frame = await comm.receive_json_from(timeout=5)
        assert frame["type"] == "error" and frame["code"] == "invalid_config"
        assert list(frame["errors"]) == [field]
        if field == "tools":  # the error names what is wrong, and what there is
            assert frame["errors"]["tools"] == [
                "Not a tool of ToolAgent: launch_rockets; its tools: lookup_order."]
        output = await comm.receive_output(timeout=5)
        assert output == {"type": "websocket.close", "code": protocol.CLOSE_SERVER_ERROR}
        assert protocol.CLOSE_SERVER_ERROR in protocol.CLOSE_CODES
    finally:
        unregister_agent("misconfigured")
    assert loopback.message_requests == []
