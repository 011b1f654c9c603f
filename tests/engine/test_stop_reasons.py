"""Every stop reason through the real SDK and the loopback Messages API: what is stored,
what the run records, what the caller is told."""

from __future__ import annotations

import pytest

from django_agent_session import exceptions as exc
from django_agent_session.engine.turn import CONTINUE_PROMPT
from django_agent_session.models import AgentEvent, AgentRun, RunStatus, SessionStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.engine import declared
from tests.helpers.loopback import uncached
from tests.testapp.models import ChatAgent, ToolAgent

pytestmark = pytest.mark.django_db

ARGS = {"company_name": "Acme"}


def text(message):
    return "".join(b.get("text", "") for b in message["content"] if b.get("type") == "text")


def first_turn(loopback, model=ChatAgent):
    loopback.enqueue(Reply.text("Hello."))
    return model.objects.start_session("Hi", instruction_args=ARGS)


def runs(session):
    return list(AgentRun.objects.filter(session_id=session.pk).order_by("started_at"))


class TestStopReasonIsPersisted:
    def test_a_completed_run_records_end_turn(self, loopback):
        session = first_turn(loopback)
        (run,) = runs(session)
        assert run.status == RunStatus.COMPLETED and run.stop_reason == "end_turn"
        completed = AgentEvent.objects.get(session_id=session.pk, type="run.completed")
        assert completed.data["stop_reason"] == "end_turn"

    def test_a_tool_loop_records_its_last_stop_reason(self, loopback):
        loopback.enqueue(Reply.tool_use("lookup_order", {"number": 1}),
                         Reply.text("No such order.", stop_reason="stop_sequence"))
        session = ToolAgent.objects.start_session("Order 1?", instruction_args=ARGS)
        (run,) = runs(session)
        assert run.stop_reason == "stop_sequence" and run.iterations == 2


class TestMaxTokens:
    def test_by_default_the_run_is_incomplete_and_the_context_unchanged(self, loopback):
        session = first_turn(loopback)
        before = session.get_context().messages
        loopback.enqueue(Reply.max_tokens("The answer is a long story that"))
        with pytest.raises(exc.ReplyIncomplete) as caught:
            ChatAgent.objects.continue_session(session, "Tell me everything")
        assert "max_tokens" in str(caught.value) and 'on_max_tokens = "continue"' in str(
            caught.value)
        session.refresh_from_db()
        assert session.get_context().messages == before  # never passed off as an answer
        assert session.status == SessionStatus.IDLE  # the session goes on
        run = runs(session)[-1]
        assert run.status == RunStatus.INCOMPLETE and run.stop_reason == "max_tokens"
        assert run.output == {"partial_text": "The answer is a long story that"}
        assert run.error["code"] == "incomplete"
        failed = AgentEvent.objects.get(session_id=session.pk, type="run.failed")
        assert failed.data["error"]["code"] == "incomplete"
        assert failed.data["stop_reason"] == "max_tokens"
        assert failed.data["partial_text"] == "The answer is a long story that"

    def test_streamed_the_partial_text_is_what_the_viewer_saw(self, loopback):
        session = first_turn(loopback)
        seen = []
        loopback.enqueue(Reply.max_tokens("Cut off right in the"))
        with pytest.raises(exc.ReplyIncomplete):
            ChatAgent.objects.continue_session(
                session, "Go", on_progress=lambda kind, data: seen.append(data.get("text", ""))
                if kind == "delta" else None)
        assert "".join(seen) == "Cut off right in the"
        assert runs(session)[-1].output == {"partial_text": "Cut off right in the"}

    def test_continue_asks_for_the_rest_and_stores_one_reply(self, loopback):
        session = first_turn(loopback)
        loopback.enqueue(Reply.max_tokens("First half, "), Reply.text("second half."))
        with declared(ChatAgent, on_max_tokens="continue"):
            session = ChatAgent.objects.continue_session(session, "Both halves please")
        follow_up = loopback.message_requests[-1]
        assert [m["role"] for m in follow_up.messages] == ["user", "assistant", "user",
                                                          "assistant", "user"]
        assert uncached(follow_up.messages[-2]) == {
            "role": "assistant", "content": [{"type": "text", "text": "First half, "}]}
        assert text(follow_up.messages[-1]) == CONTINUE_PROMPT
        stored = session.get_context().messages
        assert len(stored) == 4  # the continuation request is not part of the conversation
        assert stored[-1] == {"role": "assistant", "content": [
            {"type": "text", "text": "First half, second half."}]}
        assert session.last_output == {"content": "First half, second half."}
        run = runs(session)[-1]
        assert run.status == RunStatus.COMPLETED and run.stop_reason == "end_turn"
        assert run.iterations == 2  # the cut-off call and its continuation
        assert AgentEvent.objects.filter(session_id=session.pk, type="reply.continued").count() == 1

    def test_continuations_are_bounded(self, loopback):
        session = first_turn(loopback)
        loopback.enqueue(Reply.max_tokens("a "), Reply.max_tokens("b "))
        with declared(ChatAgent, on_max_tokens="continue", max_continuations=1), \
                pytest.raises(exc.ReplyIncomplete) as caught:
            ChatAgent.objects.continue_session(session, "Go")
        assert "after 1 continuation" in str(caught.value)
        assert runs(session)[-1].output == {"partial_text": "a b "}
        loopback.assert_script_consumed()

    def test_a_tool_call_cut_off_is_never_run(self, loopback):
        loopback.enqueue(Reply.tool_use("lookup_order", {"number": 1}, stop_reason="max_tokens"))
        with declared(ToolAgent, on_max_tokens="continue"), \
                pytest.raises(exc.ReplyIncomplete, match="inside a tool call"):
            ToolAgent.objects.start_session("Order 1?", instruction_args=ARGS)
        assert len(loopback.message_requests) == 1
        assert not AgentEvent.objects.filter(type="tool.call").exists()


class TestRefusal:
    def test_a_refusal_is_a_typed_outcome_and_is_not_stored(self, loopback):
        session = first_turn(loopback)
        before = session.get_context().messages
        loopback.enqueue(Reply.refusal("I can't help with that"))
        with pytest.raises(exc.ModelRefused) as caught:
            ChatAgent.objects.continue_session(session, "Something bad")
        assert caught.value.code == "refused"
        session.refresh_from_db()
        assert session.get_context().messages == before
        run = runs(session)[-1]
        assert run.status == RunStatus.REFUSED and run.stop_reason == "refusal"
        assert run.finished
        # the next message is sent without the refused exchange
        loopback.enqueue(Reply.text("Sure."))
        ChatAgent.objects.continue_session(session, "Something fine")
        assert [text(m) for m in loopback.message_requests[-1].messages] == [
            "Hi", "Hello.", "Something fine"]


class TestPauseTurn:
    def test_a_paused_turn_is_sent_back_and_stored_as_one_reply(self, loopback):
        paused = [{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                   "input": {"query": "weather"}}, {"type": "text", "text": "Searching... "}]
        loopback.enqueue(Reply.pause_turn(paused), Reply.text("It is sunny."))
        session = ChatAgent.objects.start_session("Weather?", instruction_args=ARGS)
        first, second = loopback.message_requests
        assert uncached(second.messages[-1]) == {"role": "assistant", "content": paused}
        assert len(second.messages) == 2  # no prompt: the API goes on with the paused message
        stored = session.get_context().messages
        assert stored[-1] == {"role": "assistant", "content": [
            paused[0], {"type": "text", "text": "Searching... It is sunny."}]}
        assert runs(session)[-1].stop_reason == "end_turn"
