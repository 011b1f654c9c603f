"""OpenTelemetry spans of turns, model calls and tool calls (GenAI semantic conventions),
recorded by the SDK's in-memory exporter through real turns against the loopback Messages
API, and linked across the submit -> executor boundary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from django_agent_session import exceptions as exc
from django_agent_session.engine import telemetry
from django_agent_session.models import AgentRun, RunStatus
from django_agent_session.runs.executors import inline_executor
from django_agent_session.testing.loopback import Reply
from tests.helpers.loopback import loopback_settings
from tests.helpers.otel import named, ours, recording
from tests.testapp.models import ChatAgent, Order, ToolAgent

ARGS = {"company_name": "Acme"}
USAGE = {"input_tokens": 11, "output_tokens": 7, "cache_creation_input_tokens": 5,
         "cache_read_input_tokens": 3}
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def spans():
    with recording() as exporter:
        yield exporter


def tool_turn(loopback, user):
    Order.objects.create(number=7, status="shipped", customer="c")
    loopback.enqueue(Reply.tool_use("lookup_order", {"number": 7}, id="toolu_7", usage=USAGE),
                     Reply.text("It shipped.", usage=USAGE))
    return ToolAgent.objects.start_session("where is 7?", instruction_args=ARGS, owner=user)


@pytest.mark.django_db
class TestATurn:
    def test_a_turn_with_a_tool_call_has_one_span_per_turn_model_call_and_tool_call(
            self, loopback, spans, user):
        session = tool_turn(loopback, user)
        found = ours(spans)
        [turn] = named(found, "invoke_agent ")
        chats = named(found, "chat ")
        [tool] = named(found, "execute_tool ")
        assert turn.name == "invoke_agent ToolAgent" and len(chats) == 2
        assert tool.name == "execute_tool lookup_order"
        # one trace: the model and tool calls are children of the turn
        assert {s.parent.span_id for s in [*chats, tool]} == {turn.context.span_id}
        assert turn.parent is None
        run_id = str(session.last_turn.run_id)
        assert turn.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert turn.attributes["gen_ai.provider.name"] == "anthropic"
        assert turn.attributes["gen_ai.system"] == "anthropic"
        assert turn.attributes["gen_ai.agent.name"] == "ToolAgent"
        assert turn.attributes["gen_ai.request.model"] == "claude-sonnet-5-5"
        assert turn.attributes["gen_ai.conversation.id"] == str(session.pk)
        assert turn.attributes[telemetry.RUN_ID] == run_id
        assert turn.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
        # the turn's tokens are its two calls'; input counts cached tokens too
        assert turn.attributes["gen_ai.usage.output_tokens"] == 14
        assert turn.attributes["gen_ai.usage.input_tokens"] == 2 * (11 + 5 + 3)
        assert turn.attributes["gen_ai.usage.cache_read.input_tokens"] == 6
        assert turn.attributes["gen_ai.usage.cache_creation.input_tokens"] == 10
        first, second = chats
        assert first.name == "chat claude-sonnet-5-5"
        assert first.attributes["gen_ai.operation.name"] == "chat"
        assert first.attributes["gen_ai.request.model"] == "claude-sonnet-5-5"
        assert first.attributes["gen_ai.response.model"] == "claude-sonnet-5-5"
        assert first.attributes["gen_ai.request.max_tokens"] == 1024
        assert first.attributes["gen_ai.response.finish_reasons"] == ("tool_use",)
        assert second.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
        assert first.attributes["gen_ai.usage.input_tokens"] == 19
        assert first.attributes["gen_ai.usage.output_tokens"] == 7
        assert first.attributes["gen_ai.usage.cache_read.input_tokens"] == 3
        assert first.attributes["gen_ai.conversation.id"] == str(session.pk)
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool.attributes["gen_ai.tool.name"] == "lookup_order"
        assert tool.attributes["gen_ai.tool.call.id"] == "toolu_7"
        assert tool.status.status_code == StatusCode.UNSET
        # the SDK's own HTTP span of each call nests under our chat span
        sdk = [s for s in spans.get_finished_spans() if s not in found
               and s.parent is not None and s.parent.span_id == first.context.span_id]
        assert sdk, "the SDK's span of the call is not a child of the chat span"

    def test_content_is_left_out_unless_the_setting_allows_it(self, loopback, spans, user):
        tool_turn(loopback, user)
        for span in ours(spans):
            assert not {k for k in span.attributes if k in (
                "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
                "gen_ai.tool.call.arguments", "gen_ai.tool.call.result")}, span.name
        spans.clear()
        with override_settings(AGENT_SESSION=loopback_settings(
                loopback, TELEMETRY_CAPTURE_CONTENT=True)):
            Order.objects.all().delete()
            tool_turn(loopback, user)
        found = ours(spans)
        first = named(found, "chat ")[0]
        assert "where is 7?" in first.attributes["gen_ai.input.messages"]
        assert "Acme" in first.attributes["gen_ai.system_instructions"]
        assert "lookup_order" in first.attributes["gen_ai.output.messages"]
        [tool] = named(found, "execute_tool ")
        assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"number": 7}
        assert "shipped" in tool.attributes["gen_ai.tool.call.result"]
        [turn] = named(found, "invoke_agent ")
        assert "It shipped." in turn.attributes["gen_ai.output.messages"]

    def test_a_failing_model_call_fails_its_span_and_the_turns(self, loopback, spans):
        loopback.enqueue(Reply.bad_request("nope"))
        with pytest.raises(exc.ModelBadRequest) as caught:
            ChatAgent.objects.start_session("hi", instruction_args=ARGS)
        error_type = "django_agent_session.exceptions.ModelBadRequest"
        found = ours(spans)
        [turn], [chat] = named(found, "invoke_agent "), named(found, "chat ")
        for span in (turn, chat):
            assert span.status.status_code == StatusCode.ERROR
            assert span.attributes["error.type"] == error_type
            assert [e.name for e in span.events] == ["exception"]
        assert turn.attributes[telemetry.RUN_ID] == str(caught.value.turn.run_id)
        run = AgentRun.objects.get(pk=caught.value.turn.run_id)
        assert run.status == RunStatus.FAILED

    def test_a_failing_tool_fails_its_span_only(self, loopback, spans, user):
        loopback.enqueue(Reply.tool_use("lookup_order", {"number": 404}, id="toolu_x"),
                         Reply.text("No such order."))
        ToolAgent.objects.start_session("where is 404?", instruction_args=ARGS, owner=user)
        found = ours(spans)
        [tool] = named(found, "execute_tool ")
        assert tool.status.status_code == StatusCode.ERROR
        assert tool.attributes["error.type"] == "LookupError"
        [turn] = named(found, "invoke_agent ")
        assert turn.status.status_code == StatusCode.UNSET  # the model was told; it went on

    def test_a_turn_paused_for_approval_is_no_error(self, loopback, spans, user):
        from tests.testapp.models import ApprovalAgent

        loopback.enqueue(Reply.tool_use("send_email", {"to": "a@b.c", "body": "hi"}))
        ApprovalAgent.objects.start_session("mail", instruction_args=ARGS, owner=user)
        [turn] = named(ours(spans), "invoke_agent ")
        assert turn.status.status_code == StatusCode.UNSET
        assert turn.attributes[telemetry.RUN_STATUS] == "awaiting_approval"


@pytest.mark.django_db(transaction=True)
async def test_the_async_path_records_the_same_spans(loopback, spans):
    loopback.enqueue(Reply.text("hello", usage=USAGE))
    session = await ChatAgent.objects.astart_session("hi", instruction_args=ARGS)
    found = ours(spans)
    [turn], [chat] = named(found, "invoke_agent "), named(found, "chat ")
    assert chat.parent.span_id == turn.context.span_id
    assert turn.attributes["gen_ai.conversation.id"] == str(session.pk)
    assert chat.attributes["gen_ai.usage.output_tokens"] == 7


@pytest.mark.django_db(transaction=True)
def test_a_durable_run_is_linked_to_the_request_that_submitted_it(loopback, spans):
    loopback.enqueue("first")
    session = ChatAgent.objects.start_session("first", instruction_args=ARGS)
    spans.clear()
    loopback.enqueue("queued answer")
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /continue") as request:
        run = ChatAgent.objects.continue_session(session.pk, "later", wait=False)
    assert inline_executor().join(30)  # a drain thread: a fresh context, no span of its own
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    carrier = run.origin[telemetry.ORIGIN_KEY]
    assert carrier["traceparent"].split("-")[1] == format(request.context.trace_id, "032x")
    [turn] = named(ours(spans), "invoke_agent ")
    assert turn.attributes[telemetry.RUN_ID] == str(run.pk)
    [link] = turn.links
    assert link.context.span_id == request.context.span_id
    assert link.context.trace_id == request.context.trace_id
    # the executor had no span: the turn continues the submitter's trace
    assert turn.parent.span_id == request.context.span_id
    assert turn.context.trace_id == request.context.trace_id


@pytest.mark.django_db
def test_no_trace_context_is_stored_without_a_current_span(loopback, recording):
    loopback.enqueue("first")
    session = ChatAgent.objects.start_session("first", instruction_args=ARGS)
    run = ChatAgent.objects.continue_session(session.pk, "later", wait=False)
    assert telemetry.ORIGIN_KEY not in run.origin


def test_without_opentelemetry_nothing_is_imported_and_every_helper_is_a_no_op():
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if not installed
        "import django; django.setup()\n"
        "from django_agent_session.engine import telemetry, turn\n"
        "from django_agent_session.store import manager\n"
        "assert not telemetry.enabled()\n"
        "assert telemetry.turn(None, 1, 2) is telemetry.NOOP\n"
        "assert telemetry.model_call('anthropic', None) is telemetry.NOOP\n"
        "assert telemetry.tool_call('t', 'id', {}) is telemetry.NOOP\n"
        "origin = {'surface': 'rest'}\n"
        "assert telemetry.with_trace(origin) is origin\n"
        "print('ok')\n")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_until_a_tracer_provider_is_set_no_span_is_made(monkeypatch):
    """The API alone hands out a proxy provider whose spans record nothing: the helpers skip
    them; once a provider is set they make spans."""
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    assert telemetry.enabled()
    assert telemetry.turn(None, 1, 2) is telemetry.NOOP
    assert telemetry.model_call("anthropic", None) is telemetry.NOOP
    assert telemetry.tool_call("t", "id", {}) is telemetry.NOOP
    monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)
    assert telemetry.turn(None, 1, 2) is telemetry.NOOP
    monkeypatch.undo()
    with recording():  # the SDK's provider, set
        assert telemetry.tool_call("t", "id", {}) is not telemetry.NOOP
