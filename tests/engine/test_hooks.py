"""``Agent.hooks`` through real turns against the loopback Messages API: what each hook may
change (and what it may not), sync and async hooks on both paths, and a raising hook failing
the turn cleanly."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from django_agent_session import exceptions as exc
from django_agent_session.clients.base import ModelRequest
from django_agent_session.engine.hooks import HOOK_FAILED, ModelCall, Rendered, TurnError
from django_agent_session.models import AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.engine import declared
from tests.helpers.loopback import system_text, uncached
from tests.testapp.models import ChatAgent, Order, ToolAgent

ARGS = {"company_name": "Acme"}


def texts(messages):
    return [m["content"] if isinstance(m["content"], str) else
            "".join(b.get("text", "") for b in m["content"] if b.get("type") == "text")
            for m in messages]


@pytest.mark.django_db
class TestBeforeCall:
    def test_it_changes_what_is_sent_never_what_is_stored(self, loopback, user):
        seen: list[ModelCall] = []

        def before(call: ModelCall) -> None:
            seen.append(call)
            call.request.system += " Today is Monday."
            call.request.messages.insert(0, {"role": "user", "content": "Retrieved: 42."})
            call.request.messages.insert(1, {"role": "assistant", "content": "Noted."})
            call.request.messages[-1]["content"][0]["text"] = "edited"
            call.request.max_tokens = 50
            call.request.tools = []

        loopback.enqueue("ok")
        with declared(ToolAgent, hooks={"before_call": before}):
            session = ToolAgent.objects.start_session("where?", instruction_args=ARGS,
                                                      owner=user)
        request = loopback.message_requests[0]
        assert system_text(request) == "You are a helpful assistant for Acme. Today is Monday."
        assert texts(uncached(request.messages)) == ["Retrieved: 42.", "Noted.", "edited"]
        assert request.body["max_tokens"] == 50 and "tools" not in request.body
        [call] = seen
        assert call.model is ToolAgent and call.session.pk == session.pk
        assert call.run_id == session.last_turn.run_id and call.iteration == 1
        context = ToolAgent.objects.get_context(session.pk)  # stored as the user said it
        assert context.system == "You are a helpful assistant for Acme."
        assert texts(context.messages) == ["where?", "ok"]

    def test_it_may_return_another_request_and_runs_before_every_call(self, loopback, user):
        Order.objects.create(number=3, status="open", customer="c")
        iterations = []

        def before(call: ModelCall) -> ModelRequest:
            iterations.append(call.iteration)
            return dataclasses.replace(call.request, model="claude-other-2")

        loopback.enqueue(Reply.tool_use("lookup_order", {"number": 3}), "done")
        with declared(ToolAgent, hooks={"before_call": [before]}):
            ToolAgent.objects.start_session("go", instruction_args=ARGS, owner=user)
        assert iterations == [1, 2]
        assert [r.model for r in loopback.message_requests] == ["claude-other-2"] * 2


@pytest.mark.django_db
def test_after_render_changes_the_stored_system_prompt(loopback):
    def render(rendered: Rendered) -> str:
        assert rendered.model is ChatAgent and rendered.instruction_args == ARGS
        return rendered.system + " Answer in French."

    loopback.enqueue("oui")
    with declared(ChatAgent, hooks={"after_render": render}):
        session = ChatAgent.objects.start_session("hi", instruction_args=ARGS)
    expected = "You are a helpful assistant for Acme. Answer in French."
    assert system_text(loopback.message_requests[0]) == expected
    assert ChatAgent.objects.get_context(session.pk).system == expected


@pytest.mark.django_db
def test_after_call_sees_the_response_and_cannot_change_the_stored_reply(loopback):
    seen = []

    def after(call: ModelCall) -> str:
        seen.append((call.request.max_tokens, call.response.text, call.response.stop_reason))
        call.response.content[0]["text"] = "tampered"
        call.request.messages[0]["content"][0]["text"] = "tampered too"  # what is stored
        call.request.messages.append({"role": "user", "content": "extra"})
        return "ignored"

    loopback.enqueue("the reply")
    with declared(ChatAgent, hooks={"after_call": after}):
        session = ChatAgent.objects.start_session("hi", instruction_args=ARGS)
    assert seen == [(1024, "the reply", "end_turn")]
    assert session.last_output == {"content": "the reply"}
    assert texts(ChatAgent.objects.get_context(session.pk).messages) == ["hi", "the reply"]


@pytest.mark.django_db
def test_on_error_observes_and_cannot_swallow(loopback, caplog):
    seen: list[TurnError] = []

    def observe(failure: TurnError) -> None:
        seen.append(failure)

    def broken(failure: TurnError) -> None:
        raise RuntimeError("observer down")

    loopback.enqueue(Reply.overloaded())
    with declared(ChatAgent, hooks={"on_error": [broken, observe]}), \
            caplog.at_level(logging.ERROR, "django_agent_session"), \
            pytest.raises(exc.ModelOverloaded) as caught:
        ChatAgent.objects.start_session("hi", instruction_args=ARGS)
    [failure] = seen  # the second hook ran although the first failed
    assert failure.error is caught.value and failure.model is ChatAgent
    assert failure.run_id == caught.value.turn.run_id
    assert "on_error hook" in caplog.text and "observer down" in caplog.text
    assert AgentRun.objects.get(pk=failure.run_id).error["code"] == "model_overloaded"


@pytest.mark.django_db
class TestARaisingHookFailsTheTurnCleanly:
    @pytest.mark.parametrize("point", ["before_call", "after_call"])
    def test_any_exception(self, loopback, point):
        loopback.enqueue("first", "second")
        session = ChatAgent.objects.start_session("hi", instruction_args=ARGS)
        before = ChatAgent.objects.get_context(session.pk)

        def boom(call: ModelCall) -> None:
            raise ValueError("bad hook")

        with declared(ChatAgent, hooks={point: boom}), \
                pytest.raises(exc.AgentSessionError) as caught:
            ChatAgent.objects.continue_session(session.pk, "again")
        error = caught.value
        assert error.code == HOOK_FAILED
        assert str(error).startswith(f"ChatAgent.Agent.hooks {point} hook ")
        assert "ValueError: bad hook" in str(error)
        run = AgentRun.objects.get(pk=error.turn.run_id)
        assert run.status == RunStatus.FAILED and run.error["code"] == HOOK_FAILED
        assert ChatAgent.objects.get_context(session.pk) == before
        # before_call failed before the call: the second reply was never asked for
        assert len(loopback.message_requests) == (1 if point == "before_call" else 2)

    def test_a_library_error_is_the_turns_error_as_it_is(self, loopback):
        def refuse(call: ModelCall) -> None:
            raise exc.InvalidInput({"message": ["Not on Sundays."]})

        with declared(ChatAgent, hooks={"before_call": refuse}), \
                pytest.raises(exc.InvalidInput) as caught:
            ChatAgent.objects.start_session("hi", instruction_args=ARGS)
        assert caught.value.errors == {"message": ["Not on Sundays."]}
        assert AgentRun.objects.get(pk=caught.value.turn.run_id).error["code"] == "invalid_input"

    def test_a_bad_answer_fails_the_turn(self, loopback):
        with declared(ChatAgent, hooks={"before_call": lambda call: "not a request"}), \
                pytest.raises(exc.AgentSessionError, match="must return None or a ModelRequest"):
            ChatAgent.objects.start_session("hi", instruction_args=ARGS)
        assert loopback.message_requests == []

    def test_after_render_raising_creates_nothing(self, loopback):
        def boom(rendered: Rendered) -> None:
            raise KeyError("x")

        with declared(ChatAgent, hooks={"after_render": boom}), \
                pytest.raises(exc.AgentSessionError, match="after_render hook"):
            ChatAgent.objects.start_session("hi", instruction_args=ARGS)
        assert not ChatAgent.objects.exists()


@pytest.mark.django_db
def test_an_async_hook_on_the_sync_path(loopback):
    async def before(call: ModelCall) -> None:
        call.request.system = "async system"

    loopback.enqueue("ok")
    with declared(ChatAgent, hooks={"before_call": before}):
        ChatAgent.objects.start_session("hi", instruction_args=ARGS)
    assert system_text(loopback.message_requests[0]) == "async system"


@pytest.mark.django_db(transaction=True)
async def test_sync_and_async_hooks_on_the_async_path(loopback):
    seen = []

    def sync_before(call: ModelCall) -> None:  # in the tool pool: the ORM is allowed
        call.request.system = f"{Order.objects.count()} orders"

    async def async_after(call: ModelCall) -> None:
        seen.append(call.response.text)

    async def async_render(rendered: Rendered) -> None:
        rendered.system = "rendered by an async hook"

    loopback.enqueue("fine")
    with declared(ChatAgent, hooks={"before_call": sync_before, "after_call": async_after,
                                    "after_render": async_render}):
        session = await ChatAgent.objects.astart_session("hi", instruction_args=ARGS)
    assert system_text(loopback.message_requests[0]) == "0 orders"
    assert seen == ["fine"]
    context = await ChatAgent.objects.aget_context(session.pk)
    assert context.system == "rendered by an async hook"
