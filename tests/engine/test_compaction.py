"""Context limits and compaction: where the cut falls, what is sent and stored afterwards,
what the logs keep, and a request that cannot fit."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.engine.compaction import (
    COMPACTED_OPENING,
    SUMMARY_PREFIX,
    SUMMARY_SYSTEM,
    split,
)
from django_agent_session.models import AgentEvent, AgentRun, RunKind, RunStatus
from django_agent_session.testing.loopback import COUNT_TOKENS_PATH, Reply
from django_agent_session.testing.loopback.tokens import estimate_input_tokens
from tests.helpers.engine import declared
from tests.helpers.loopback import loopback_settings, system_text, uncached
from tests.testapp.models import ChatAgent, Order, ToolAgent

ARGS = {"company_name": "Acme"}


def user(text):
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def tool_call(tool_id):
    return {"role": "assistant", "content": [
        {"type": "tool_use", "id": tool_id, "name": "lookup_order", "input": {"number": 7}}]}


def tool_result(tool_id):
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "shipped"}


def tool_pairs_intact(messages):
    """Every tool_use is answered in the next message, and every result answers one."""
    for i, message in enumerate(messages):
        blocks = message["content"] if isinstance(message["content"], list) else []
        for block in blocks:
            if block.get("type") == "tool_use":
                answer = messages[i + 1]["content"]
                if not any(b.get("tool_use_id") == block["id"] for b in answer):
                    return False
            if block.get("type") == "tool_result":
                before = messages[i - 1]["content"] if i else []
                if not any(b.get("id") == block["tool_use_id"] for b in before):
                    return False
    return True


class TestSplit:
    def test_the_cut_keeps_the_last_turns_and_every_tool_pair_on_one_side(self):
        messages = [user("one"), assistant("1"),
                    user("two"), tool_call("t1"), {"role": "user", "content": [tool_result("t1")]},
                    assistant("2"), user("three")]
        cut = split(messages, keep_turns=2)
        assert cut.old == messages[:2]
        assert cut.recent == messages[2:]
        assert tool_pairs_intact(cut.recent)
        cut = split(messages, keep_turns=1)
        assert cut.old == messages[:6] and cut.recent == [user("three")]

    def test_results_sharing_a_message_with_the_next_question_stay_with_their_call(self):
        messages = [user("one"), tool_call("t1"),
                    {"role": "user", "content": [tool_result("t1"),
                                                 {"type": "text", "text": "two"}]}]
        cut = split(messages, keep_turns=1)
        assert cut.old == [user("one"), tool_call("t1"),
                           {"role": "user", "content": [tool_result("t1")]}]
        assert cut.recent == [user("two")]

    def test_nothing_to_cut(self):
        assert split([user("only")], keep_turns=1) is None
        assert split([user("one"), assistant("1"), user("two")], keep_turns=2) is None


@pytest.mark.django_db
class TestCompactionThroughTheSdk:
    def test_older_turns_become_a_summary_and_nothing_is_lost(self, loopback):
        Order.objects.create(number=7, status="shipped", customer="Ann")
        long_question = "Tell me about our history. " + "We sell anvils. " * 400
        loopback.enqueue(Reply.text("A long answer."),
                         Reply.tool_use("lookup_order", {"number": 7}), Reply.text("Shipped."))
        with declared(ToolAgent, compaction={"keep_turns": 2, "threshold": 0.5,
                                             "instructions": "Keep order numbers."}):
            session = ToolAgent.objects.start_session(long_question, instruction_args=ARGS)
            session = ToolAgent.objects.continue_session(session, "Where is order 7?")
            measured = session.get_context().tokens
            assert measured and not AgentEvent.objects.filter(type="context.compacted").exists()
            # a window this size puts the conversation past the threshold (half of it)
            loopback.enqueue(Reply.text("Anvils, and order 7 shipped.",
                                        usage={"input_tokens": 40, "output_tokens": 12}),
                             Reply.text("You're welcome."))
            with override_settings(AGENT_SESSION=loopback_settings(
                    loopback, CONTEXT_WINDOWS={"claude-sonnet-5-5": 2 * measured})):
                session = ToolAgent.objects.continue_session(session, "Thanks")

        summary_call, sent = loopback.message_requests[-2:]
        assert system_text(summary_call) == SUMMARY_SYSTEM
        asked = summary_call.messages[0]["content"][0]["text"]
        assert "We sell anvils." in asked and "Keep order numbers." in asked
        assert "Where is order 7?" not in asked  # the kept turns are not summarized

        messages = uncached(sent.messages)
        opening = messages[0]["content"]
        assert opening[0]["text"] == SUMMARY_PREFIX + "Anvils, and order 7 shipped."
        assert opening[1]["text"] == "Where is order 7?"
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant",
                                                 "user"]
        assert tool_pairs_intact(messages)
        assert messages[1]["content"][0]["type"] == "tool_use"

        context = session.get_context()
        assert context.messages == [*messages, assistant("You're welcome.")]
        assert context.compactions == 1
        # nothing is lost: the event log still has every message ever said
        full = ToolAgent.objects.get_context(session.pk, full_history=True).messages
        assert full[0]["content"][0]["text"] == long_question.strip()  # as validated
        assert [m["role"] for m in full] == ["user", "assistant", "user", "assistant", "user",
                                             "assistant", "user", "assistant"]
        assert tool_pairs_intact(full)
        # recorded as an event and as a run of its own
        event = AgentEvent.objects.get(type="context.compacted")
        assert event.data["replaced"] == 2 and event.data["kept"] == 5
        assert event.data["summary"] == "Anvils, and order 7 shipped."
        run = AgentRun.objects.get(kind=RunKind.COMPACTION)
        assert run.status == RunStatus.COMPLETED and run.session_id == session.pk
        assert run.input_tokens == 40 and run.output_tokens == 12
        assert run.output["summary"] == "Anvils, and order 7 shipped."
        turn = AgentRun.objects.filter(kind=RunKind.TURN).latest("started_at")
        assert run.input == {"run_id": str(turn.pk)}
        session.refresh_from_db()
        assert session.input_tokens == sum(r.input_tokens for r in AgentRun.objects.all())

    def test_compaction_waits_for_the_threshold(self, loopback):
        loopback.enqueue(Reply.text("One."), Reply.text("Two."))
        with declared(ChatAgent, compaction=True):
            session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
            ChatAgent.objects.continue_session(session, "Hello again")
        assert len(loopback.message_requests) == 2  # no summary call
        assert not AgentEvent.objects.filter(type="context.compacted").exists()
        assert not [r for r in loopback.requests if r.path == COUNT_TOKENS_PATH]


@pytest.mark.django_db
class TestContextWindow:
    def test_a_request_that_cannot_fit_is_never_sent(self, loopback):
        loopback.enqueue(Reply.text("Hi."))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        before = session.get_context().messages
        with override_settings(AGENT_SESSION=loopback_settings(
                loopback, CONTEXT_WINDOWS={"claude-sonnet-5-5": 1500})), \
                pytest.raises(exc.ContextWindowExceeded) as caught:
            ChatAgent.objects.continue_session(session, "x" * 4000)
        error = caught.value
        assert "compaction = True" in str(error)
        assert error.details["window"] == 1500 and error.details["limit"] == 1500 - 1024
        assert error.details["tokens"] > error.details["limit"]
        counted = [r for r in loopback.requests if r.path == COUNT_TOKENS_PATH]
        assert len(counted) == 1  # the estimate was checked against the API's count
        assert error.details["tokens"] == estimate_input_tokens(counted[0].body)
        assert len(loopback.message_requests) == 1  # only the first turn's
        session.refresh_from_db()
        assert session.get_context().messages == before
        run = AgentRun.objects.latest("started_at")
        assert run.status == RunStatus.FAILED and run.error["code"] == "context_window_exceeded"

    def test_with_compaction_an_overflowing_request_is_compacted_first(self, loopback):
        loopback.enqueue(Reply.text("First answer. " * 50))
        with declared(ChatAgent, compaction={"keep_turns": 1}):
            session = ChatAgent.objects.start_session("First question. " * 100,
                                                      instruction_args=ARGS)
            loopback.enqueue(Reply.text("Earlier: a question and an answer."),
                             Reply.text("Done."))
            with override_settings(AGENT_SESSION=loopback_settings(
                    loopback, CONTEXT_WINDOWS={"claude-sonnet-5-5": 1400})):
                session = ChatAgent.objects.continue_session(session, "Short one")
        messages = session.get_context().messages
        assert messages[0]["content"][0]["text"].startswith(SUMMARY_PREFIX)
        assert messages[0]["content"][1]["text"] == "Short one"
        assert len(messages) == 2


@pytest.mark.django_db
class TestServerSideCompaction:
    def test_the_api_compacts_and_the_context_keeps_only_what_it_reads(self, loopback):
        loopback.compaction_summary = "The user asked about anvils at length."
        loopback.enqueue(Reply.text("Anvils are heavy."), Reply.text("Yes, heavy."))
        with declared(ChatAgent, compaction={"strategy": "server", "threshold": 0.5}), \
                override_settings(AGENT_SESSION=loopback_settings(
                    loopback, CONTEXT_WINDOWS={"claude-sonnet-5-5": 4000})):
            session = ChatAgent.objects.start_session("Tell me about anvils. " * 400,
                                                      instruction_args=ARGS)
            sent = loopback.message_requests[0]
            assert sent.path == "/v1/messages"
            assert "compact-2026-01-12" in sent.headers["anthropic-beta"]
            assert sent.body["context_management"] == {"edits": [{
                "type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 2000}}]}
            context = session.get_context()
            assert context.messages[0]["content"][0]["text"] == COMPACTED_OPENING
            assert context.messages[1]["content"] == [
                {"type": "compaction", "content": "The user asked about anvils at length."},
                {"type": "text", "text": "Anvils are heavy."}]
            assert context.compactions == 1
            session = ChatAgent.objects.continue_session(session, "Heavy?")
        # the compaction block is sent back as the API asks; the long question is not
        second = uncached(loopback.message_requests[1].messages)
        assert second[1]["content"][0]["type"] == "compaction"
        assert "anvils" not in second[0]["content"][0]["text"]
        assert len(second) == 3
        run = AgentRun.objects.get(kind=RunKind.COMPACTION)
        assert run.output["strategy"] == "server" and run.input_tokens >= 2000
        event = AgentEvent.objects.get(type="context.compacted")
        assert event.data["summary"] == "The user asked about anvils at length."
        full = ChatAgent.objects.get_context(session.pk, full_history=True).messages
        assert full[0]["content"][0]["text"].startswith("Tell me about anvils.")


@pytest.mark.django_db
class TestCompactionDuringARetry:
    def test_the_invalid_attempt_and_the_request_to_retry_are_not_stored(self, loopback):
        from tests.testapp.models import StructuredAgent

        first_question = "Tell me about anvils. " * 60
        loopback.enqueue(Reply.text('{"content": "Anvils.", "mood": "happy"}'))
        with declared(StructuredAgent, compaction={"keep_turns": 2, "threshold": 0.95}):
            session = StructuredAgent.objects.start_session(first_question,
                                                            instruction_args=ARGS)
            # the invalid attempt makes the request to retry too long for the window: the
            # engine compacts the first turn away in the middle of the retry
            loopback.enqueue(Reply.text("Not JSON at all. " * 60),
                             Reply.text("The user asked about anvils."),
                             Reply.text('{"content": "Still anvils.", "mood": "neutral"}'))
            with override_settings(AGENT_SESSION=loopback_settings(
                    loopback, CONTEXT_WINDOWS={"claude-sonnet-5-5": 1024 + 700})):
                session = StructuredAgent.objects.continue_session(session, "And now?")
        assert AgentEvent.objects.filter(type="context.compacted").count() == 1
        assert session.last_output == {"content": "Still anvils.", "mood": "neutral"}
        messages = session.get_context().messages
        assert [m["role"] for m in messages] == ["user", "assistant"]
        opening = messages[0]["content"]
        assert opening[0]["text"] == SUMMARY_PREFIX + "The user asked about anvils."
        assert [b["text"] for b in opening[1:]] == ["And now?"]
        assert messages[1]["content"][0]["text"] == (
            '{"content": "Still anvils.", "mood": "neutral"}')
