"""The Anthropic client through the real SDK against the loopback Messages API server."""

from __future__ import annotations

import json

import anthropic
import pytest
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.clients.registry import get_client
from django_agent_session.engine.context import INTERRUPTED_TOOL_RESULT, Context
from django_agent_session.models import RunStatus
from django_agent_session.store.turns import SessionStore
from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from tests.helpers.loopback import uncached
from tests.testapp.models import (
    ChatAgent,
    Order,
    PlainAgent,
    StructuredAgent,
    ToolAgent,
)

pytestmark = pytest.mark.django_db

ARGS = {"company_name": "Acme"}


@pytest.fixture
def server():
    with LoopbackMessagesServer() as srv:
        with override_settings(AGENT_SESSION={"ANTHROPIC": {
                "BASE_URL": srv.base_url, "API_KEY": "test-key", "MAX_RETRIES": 0,
                "TIMEOUT": 5.0}}):
            yield srv


def retries(server, count: int):
    return override_settings(AGENT_SESSION={"ANTHROPIC": {
        "BASE_URL": server.base_url, "API_KEY": "test-key", "MAX_RETRIES": count}})


class TestTurns:
    def test_plain_turn(self, server):
        server.enqueue(Reply.text("Hello from Claude"))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        assert session.last_output == {"content": "Hello from Claude"}
        body = server.last_request.body
        assert body["model"] == "claude-sonnet-5-5"
        # prompt caching is on by default: breakpoints on the system prompt and the last
        # user message (tests/clients/test_caching.py has the rest)
        assert body["system"] == [{"type": "text", "text": "You are a helpful assistant for Acme.",
                                   "cache_control": {"type": "ephemeral"}}]
        assert body["messages"] == [{"role": "user", "content": [
            {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}]
        assert body["max_tokens"] == 1024
        assert "stream" not in body or body["stream"] is False
        assert server.last_request.headers["authorization"] == "Bearer test-key"

    def test_streamed_turn(self, server):
        text = "One two three four five six seven"
        server.enqueue(Reply.text(text, chunk_size=4))
        deltas = []
        session = ChatAgent.objects.start_session(
            "Hi", instruction_args=ARGS,
            on_progress=lambda kind, data: deltas.append((kind, data)))
        assert server.last_request.stream is True
        texts = [d["text"] for kind, d in deltas if kind == "delta" and d["kind"] == "text"]
        assert len(texts) == len(range(0, len(text), 4))
        assert "".join(texts) == text == session.last_output["content"]
        stored = session.get_context().messages[-1]["content"]
        assert stored == [{"type": "text", "text": text}]

    def test_tool_turn(self, server, user):
        Order.objects.create(number=7, status="packed", customer="alice")
        server.enqueue(Reply.tool_use("lookup_order", {"number": 7}, text="Let me look."),
                       Reply.text("Order 7 is packed."))
        calls = []
        session = ToolAgent.objects.start_session(
            "Where is 7?", instruction_args=ARGS, owner=user,
            on_progress=lambda kind, data: calls.append(kind))
        assert session.last_output == {"content": "Order 7 is packed."}
        first, second = server.message_requests
        assert first.body["tools"][0]["name"] == "lookup_order"
        assert first.body["tools"][0]["input_schema"]["properties"] == {
            "number": {"type": "integer"}}
        tool_use = second.body["messages"][1]["content"][1]
        result = second.body["messages"][2]["content"][0]
        assert tool_use["type"] == "tool_use" and tool_use["input"] == {"number": 7}
        assert result["type"] == "tool_result" and result["tool_use_id"] == tool_use["id"]
        assert json.loads(result["content"]) == {"number": 7, "status": "packed", "owner": "alice"}
        assert "tool.call" in calls and "tool.result" in calls
        run = session.runs.get()
        assert run.iterations == 2
        assert list(session.events.filter(type__startswith="tool").values_list(
            "type", flat=True)) == ["tool.call", "tool.result"]

    def test_tool_error_is_shown_to_the_model(self, server):
        server.enqueue(Reply.tool_use("lookup_order", {"number": 404}),
                       Reply.text("No such order."))
        session = ToolAgent.objects.start_session("Where is 404?", instruction_args=ARGS)
        result = server.message_requests[1].body["messages"][-1]["content"][0]
        assert result["is_error"] is True
        assert "LookupError: no order 404" in result["content"]
        assert session.last_output == {"content": "No such order."}

    def test_invalid_tool_input_is_an_error_result(self, server):
        server.enqueue(Reply.tool_use("lookup_order", {"number": "seven"}), Reply.text("Sorry."))
        ToolAgent.objects.start_session("x", instruction_args=ARGS)
        result = server.message_requests[1].body["messages"][-1]["content"][0]
        assert result["is_error"] is True and "A valid integer is required" in result["content"]

    def test_structured_output_with_one_corrective_retry(self, server):
        server.enqueue(Reply.json({"content": "Hi", "mood": "ecstatic"}),
                       Reply.json({"content": "Hi", "mood": "happy"}))
        session = StructuredAgent.objects.start_session("Hi", instruction_args=ARGS)
        assert session.last_output == {"content": "Hi", "mood": "happy"}
        first, second = server.message_requests
        schema = first.body["output_config"]["format"]
        assert schema["type"] == "json_schema"
        assert schema["schema"]["properties"]["mood"] == {"enum": ["happy", "neutral", "sad"]}
        correction = second.body["messages"][-1]["content"][0]["text"]
        assert "did not match the required JSON schema" in correction and "mood" in correction
        # the invalid attempt is not kept in the stored conversation
        messages = session.get_context().messages
        assert len(messages) == 2 and json.loads(messages[1]["content"][0]["text"])["mood"] == "happy"
        assert session.events.filter(type="output.invalid").count() == 1

    def test_structured_output_fails_after_retry(self, server):
        server.enqueue(Reply.json({"mood": "happy"}), Reply.text("not json"))
        with pytest.raises(exc.InvalidModelOutput) as info:
            StructuredAgent.objects.start_session("Hi", instruction_args=ARGS)
        assert info.value.code == "invalid_output"
        assert info.value.session.get_context().messages == []

    def test_thinking_blocks_are_kept_and_sent_back(self, server):
        with override_settings(AGENT_SESSION={"ANTHROPIC": {
                "BASE_URL": server.base_url, "API_KEY": "k", "MAX_RETRIES": 0}}):
            Order.objects.create(number=1, status="late", customer="c")
            server.enqueue(Reply.tool_use("lookup_order", {"number": 1}, thinking="Look it up."),
                           Reply.text("It is late.", thinking="Summarise."),
                           Reply.text("Bye."))
            session = ToolAgent.objects.start_session("1?", instruction_args=ARGS)
            stored = session.get_context().messages
            ToolAgent.objects.continue_session(session, "thanks")
        last = uncached(server.message_requests[-1].body["messages"])
        # the second turn's request carries the first turn's blocks exactly as stored
        assert last[:4] == stored
        thinking = stored[1]["content"][0]
        assert thinking["type"] == "thinking" and thinking["signature"]
        assert [b["type"] for b in stored[1]["content"]] == ["thinking", "tool_use"]
        assert stored[2]["content"][0]["type"] == "tool_result"


class TestFailures:
    def _started(self, server):
        server.enqueue(Reply.text("first"))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        return session, ChatAgent.objects.filter(pk=session.pk).values_list(
            "context", flat=True).get()

    def _assert_unchanged(self, session, stored, code):
        row = ChatAgent.objects.get(pk=session.pk)
        assert row.context == stored
        run = row.runs.get(status=RunStatus.FAILED)
        assert run.error["code"] == code
        return run

    @pytest.mark.parametrize("reply, error, code, retryable", [
        (Reply.server_error(), exc.ModelUnavailable, "model_unavailable", True),
        (Reply.overloaded(), exc.ModelOverloaded, "model_overloaded", True),
        (Reply.rate_limited(), exc.ModelRateLimited, "model_rate_limited", True),
        (Reply.bad_request("bad"), exc.ModelBadRequest, "model_bad_request", False),
        (Reply.unauthorized("who"), exc.ModelAuthenticationError, "model_authentication_error",
         False),
    ], ids=["500", "529", "429", "400", "401"])
    def test_status_errors(self, server, reply, error, code, retryable):
        session, stored = self._started(server)
        server.enqueue(reply)
        with pytest.raises(error) as info:
            ChatAgent.objects.continue_session(session, "Again")
        assert info.value.retryable is retryable
        assert info.value.request_id == server.last_request.request_id
        run = self._assert_unchanged(session, stored, code)
        assert run.error["request_id"] == server.last_request.request_id

    def test_rate_limit_then_success_through_sdk_retry(self, server):
        session, _ = self._started(server)
        server.enqueue(Reply.rate_limited(retry_after=0), Reply.text("second"))
        with retries(server, 2):
            session = ChatAgent.objects.continue_session(session, "Again")
        assert session.last_output == {"content": "second"}
        assert len(server.message_requests) == 3
        assert session.runs.filter(status=RunStatus.COMPLETED).count() == 2

    def test_timeout(self, server):
        session, stored = self._started(server)
        server.enqueue(Reply.stall(3, then="late"))
        with override_settings(AGENT_SESSION={"ANTHROPIC": {
                "BASE_URL": server.base_url, "API_KEY": "k", "MAX_RETRIES": 0, "TIMEOUT": 0.3}}):
            with pytest.raises(exc.ModelTimeout) as info:
                ChatAgent.objects.continue_session(session, "Again")
        assert info.value.retryable
        self._assert_unchanged(session, stored, "model_timeout")

    def test_dropped_stream(self, server):
        session, stored = self._started(server)
        server.enqueue(Reply.text("a b c d e f g h", chunk_size=2, drop_after=2))
        seen = []
        with pytest.raises(exc.ModelConnectionError):
            ChatAgent.objects.continue_session(
                session, "Again",
                on_progress=lambda kind, data: kind == "delta" and seen.append(data))
        run = self._assert_unchanged(session, stored, "model_connection_error")
        # the partial reply is reported on the run, not stored in the context
        assert run.output == {"partial_text": "".join(d["text"] for d in seen)}
        assert session.events.get(type="run.failed").data["partial_text"]

    def test_error_event_mid_stream(self, server):
        session, stored = self._started(server)
        server.enqueue(Reply.text("a b c d", chunk_size=2, error_after=1))
        with pytest.raises(exc.ModelOverloaded):
            ChatAgent.objects.continue_session(session, "Again", on_progress=lambda *a: None)
        self._assert_unchanged(session, stored, "model_overloaded")


class TestContextAndUsage:
    def test_dangling_tool_use_is_repaired(self, server):
        context = Context(system="s", instruction_args=ARGS, messages=[
            {"role": "user", "content": [{"type": "text", "text": "Where is 9?"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "lookup_order",
                 "input": {"number": 9}}]},
        ], turns=1)
        session = ToolAgent.objects.create(context=context.to_dict())
        server.enqueue(Reply.text("Sorry, that was interrupted."))
        session = ToolAgent.objects.continue_session(session, "Hello?")
        sent = uncached(server.last_request.body["messages"])
        assert sent[2] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
             "content": INTERRUPTED_TOOL_RESULT},
            {"type": "text", "text": "Hello?"}]}
        assert session.get_context().messages[2] == sent[2]

    def test_usage_totals_include_cache_tokens_and_match_runs(self, server):
        server.enqueue(
            Reply.text("a", usage={"input_tokens": 11, "output_tokens": 3,
                                   "cache_creation_input_tokens": 100,
                                   "cache_read_input_tokens": 0}),
            Reply.text("b", usage={"input_tokens": 5, "output_tokens": 4,
                                   "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 100}),
        )
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        session = ChatAgent.objects.continue_session(session, "Again")
        expected = {"input_tokens": 16, "output_tokens": 7,
                    "cache_creation_input_tokens": 100, "cache_read_input_tokens": 100}
        assert session.usage == expected
        assert session.get_context().usage == expected
        fresh = ChatAgent.objects.get(pk=session.pk)
        assert fresh.usage == expected
        totals = {k: sum(getattr(r, k) for r in fresh.runs.all()) for k in expected}
        assert totals == expected

    def test_token_budget_warn(self, server):
        PlainAgent.agent_options.budget_strategy = "warn"
        try:
            server.enqueue(Reply.text("a", usage={"input_tokens": 85, "output_tokens": 0}),
                           Reply.text("b", usage={"input_tokens": 50, "output_tokens": 0}))
            seen = []
            session = PlainAgent.objects.start_session(
                "Hi", on_progress=lambda kind, data: seen.append(kind))
            assert "budget.warning" in seen
            session = PlainAgent.objects.continue_session(session, "Over budget, but warn only")
            assert session.last_output == {"content": "b"}
        finally:
            PlainAgent.agent_options.budget_strategy = "halt"


@pytest.mark.django_db(transaction=True)
class TestAsync:
    async def test_async_path_uses_async_sdk(self, server):
        server.enqueue(Reply.text("streamed reply", chunk_size=3), Reply.text("plain"))
        deltas = []

        async def on_progress(kind, data):
            if kind == "delta":
                deltas.append(data["text"])

        session = await ChatAgent.objects.astart_session(
            "Hi", instruction_args=ARGS, on_progress=on_progress)
        assert "".join(deltas) == "streamed reply"
        session = await ChatAgent.objects.acontinue_session(session, "Again")
        assert session.last_output == {"content": "plain"}
        client = get_client("anthropic")
        assert client._sync is None  # the sync SDK client was never built
        sdk_clients = [sdk for _, sdk in client._async.values()]
        assert len(sdk_clients) == 1 and isinstance(sdk_clients[0], anthropic.AsyncAnthropic)

    async def test_async_failure(self, server):
        server.enqueue(Reply.overloaded())
        with pytest.raises(exc.ModelOverloaded):
            await ChatAgent.objects.astart_session("Hi", instruction_args=ARGS)


def test_cache_switch_thinking_and_temperature_reach_the_api(server):
    from django_agent_session.clients.anthropic import AnthropicClient
    from tests.helpers.engine import USER, engine_for

    server.enqueue(Reply.text("ok", thinking="hmm"))
    engine = engine_for([], cache=False, thinking="adaptive", temperature=0.2)
    result = engine.run(Context(system="s"), USER, AnthropicClient())
    body = server.last_request.body
    assert "cache_control" not in json.dumps(body)  # no breakpoint anywhere
    assert body["thinking"] == {"type": "adaptive"}
    assert body["temperature"] == 0.2
    assert [b["type"] for b in result.messages[-1]["content"]] == ["thinking", "text"]


def _refused_unless_plain(fail):
    """``SessionStore.fail`` as if the database refused what the turn carried: the full
    record raises, the plain one (``plain=True``) is written."""
    from django.db import DataError

    def refusing(store, *args, plain=False, **kwargs):
        if not plain:
            raise DataError("unsupported Unicode escape sequence")
        return fail(store, *args, plain=plain, **kwargs)

    return refusing


class TestUnstorableCharacters:
    """U+0000 and lone surrogates in the model's own text or the user's: PostgreSQL's jsonb
    cannot store them, so a streamed turn that carried one could neither commit nor record its
    failure, and the session stayed ``running`` for the whole lease; SQLite stored a lone
    surrogate, and every later turn then failed encoding the request (found by the soak run,
    #19). Every text a turn stores is now made storable."""

    def test_streamed_reply_with_nul_is_stored(self, server):
        server.enqueue(Reply.text("a\x00b c\x00d", chunk_size=2))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS,
                                                  on_progress=lambda *a: None)
        stored = ChatAgent._base_manager.get(pk=session.pk)
        assert stored.status == "idle" and stored.lease_token is None
        assert stored.get_context().messages[-1]["content"] == [
            {"type": "text", "text": "a\ufffdb c\ufffdd"}]
        assert stored.last_output == {"content": "a\ufffdb c\ufffdd"}
        assert session.runs.get().status == RunStatus.COMPLETED

    def test_failed_stream_with_nul_records_the_failure(self, server):
        server.enqueue(Reply.text("first"))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        server.enqueue(Reply.text("x\x00y z\x00w", chunk_size=2, drop_after=2))
        with pytest.raises(exc.ModelConnectionError):
            ChatAgent.objects.continue_session(session, "Again", on_progress=lambda *a: None)
        row = ChatAgent._base_manager.get(pk=session.pk)
        assert row.status == "failed" and row.lease_token is None  # not wedged as running
        run = session.runs.get(status=RunStatus.FAILED)
        assert "\x00" not in run.output["partial_text"] and "\ufffd" in run.output["partial_text"]
        assert "\x00" not in session.events.get(type="run.failed").data["partial_text"]

    @pytest.mark.parametrize("stream", [False, True])
    def test_lone_surrogates_in_the_reply_leave_the_session_usable(self, server, stream):
        progress = {"on_progress": lambda *a: None} if stream else {}
        server.enqueue(Reply.nasty_text("a lone \ud800 surrogate \udfff", chunk_size=3))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS, **progress)
        assert session.runs.get().status == RunStatus.COMPLETED
        assert session.last_output == {"content": "a lone \ufffd surrogate \ufffd"}
        server.enqueue(Reply.text("still here"))
        session = ChatAgent.objects.continue_session(session, "Again", **progress)
        assert session.last_output == {"content": "still here"}
        sent = server.last_request.body["messages"][1]["content"]
        assert sent[0]["text"] == "a lone \ufffd surrogate \ufffd"  # what the model gets back
        row = ChatAgent._base_manager.get(pk=session.pk)
        assert row.status == "idle" and row.lease_token is None and row.version == 2

    def test_a_lone_surrogate_in_the_input_is_refused(self, server):
        with pytest.raises(exc.InvalidInput, match="message: Surrogate characters"):
            ChatAgent.objects.start_session(json.loads('"hi \\ud83d there"'),
                                            instruction_args=ARGS)
        assert not ChatAgent._base_manager.exists() and not server.requests

    def test_a_failure_that_cannot_be_recorded_still_frees_the_session(self, server,
                                                                         monkeypatch):
        """Should the database refuse the failure record itself, the failure is recorded
        plainly and the lease released, instead of the session staying ``running`` until
        its lease expires."""
        server.enqueue(Reply.text("first"))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        monkeypatch.setattr(SessionStore, "fail", _refused_unless_plain(SessionStore.fail))
        server.enqueue(Reply.overloaded())
        with pytest.raises(exc.AgentSessionError) as raised:
            ChatAgent.objects.continue_session(session, "Again")
        assert raised.value.code == "internal_error"
        assert "model_overloaded" in str(raised.value) and "DataError" in str(raised.value)
        row = ChatAgent._base_manager.get(pk=session.pk)
        assert row.status == "failed" and row.lease_token is None and row.version == 1
        run = session.runs.get(status=RunStatus.FAILED)
        assert run.error["code"] == "internal_error" and run.ended_at is not None
        assert session.events.filter(type="run.failed").get().data["run_id"] == str(run.pk)
        assert list(session.events.values_list("seq", flat=True)) == list(
            range(1, row.event_seq + 1))  # no gap
        monkeypatch.undo()
        server.enqueue(Reply.text("back"))
        assert ChatAgent.objects.continue_session(session, "Again").last_output == {
            "content": "back"}

    def test_a_failure_recorded_plainly_keeps_what_the_turn_spent(self, server, monkeypatch):
        """The plain record drops the turn's strings, never its numbers: a budget still
        counts the tokens of the calls the turn made before it failed."""
        monkeypatch.setattr(SessionStore, "fail", _refused_unless_plain(SessionStore.fail))
        server.enqueue(Reply.tool_use("lookup_order", {"number": 7},
                                      usage={"input_tokens": 120, "output_tokens": 30}),
                       Reply.overloaded())
        with pytest.raises(exc.AgentSessionError) as raised:
            ToolAgent.objects.start_session("Where is order 7?", instruction_args=ARGS)
        run = raised.value.session.runs.get()
        assert run.status == RunStatus.FAILED and run.error["code"] == "internal_error"
        # two model calls: the tool call, then the one that failed
        assert (run.input_tokens, run.output_tokens, run.iterations) == (120, 30, 2)
        assert run.output is None and run.stop_reason == ""  # the turn's strings are not
        spent = SessionStore(ToolAgent).spent_outside_context(run.session_id)
        assert spent.usage["input_tokens"] == 120

    def test_a_first_turn_whose_failure_cannot_be_recorded_keeps_the_librarys_events(
            self, server, monkeypatch):
        monkeypatch.setattr(SessionStore, "fail", _refused_unless_plain(SessionStore.fail))
        server.enqueue(Reply.overloaded())
        with pytest.raises(exc.AgentSessionError) as raised:
            ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        session = raised.value.session
        row = ChatAgent._base_manager.get(pk=session.pk)
        assert row.status == "failed" and row.lease_token is None
        assert list(session.events.order_by("seq").values_list("seq", "type")) == [
            (1, "session.started"), (2, "run.started"), (3, "run.failed")]
        assert session.runs.get().error == {
            "code": "internal_error", "retryable": False,
            "message": raised.value.args[0].encode("ascii", "backslashreplace").decode()}


class TestTheSDKsOwnSpans:
    """The SDK builds its span of each call (attributes read from the request) even when the
    span can record nothing; so its tracing is off until a tracer provider is set."""

    def test_they_are_off_until_a_tracer_provider_is_set_then_the_client_is_built_again(
            self, server, monkeypatch):
        from opentelemetry import trace

        from django_agent_session.clients.anthropic import AnthropicClient
        from tests.helpers.otel import recording

        client = AnthropicClient()
        monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
        untraced = client.sdk
        assert untraced.open_telemetry["traces"]["enabled"] is False
        assert client.sdk is untraced  # built once while nothing changes
        monkeypatch.undo()
        with recording():  # the OpenTelemetry SDK's provider, set
            traced = client.sdk
            assert traced is not untraced
            assert traced.open_telemetry["traces"]["enabled"] is True

    async def test_so_are_the_async_clients(self, server, monkeypatch):
        from opentelemetry import trace

        from django_agent_session.clients.anthropic import AnthropicClient
        from tests.helpers.otel import recording

        client = AnthropicClient()
        monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)
        untraced = client.async_sdk
        assert untraced.open_telemetry["traces"]["enabled"] is False
        assert client.async_sdk is untraced
        monkeypatch.undo()
        with recording():
            assert client.async_sdk.open_telemetry["traces"]["enabled"] is True
