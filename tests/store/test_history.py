"""Fork and rewind: turn boundaries, events, the lease, and continuing through the real SDK."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_agent_session import exceptions as exc
from django_agent_session.history import (
    afork_session,
    arewind_session,
    count_turns,
    fork_session,
    messages_upto,
    rewind_session,
    turn_starts,
)
from django_agent_session.models import AgentEvent, AgentRun, EventType, RunStatus
from django_agent_session.testing import json_reply, text_reply
from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from tests.helpers.loopback import uncached
from tests.testapp.models import ChatAgent, Order, StructuredAgent, ToolAgent

pytestmark = pytest.mark.django_db

ARGS = {"company_name": "Acme"}


def umsg(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def amsg(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


TOOL_USE = {"role": "assistant", "content": [
    {"type": "tool_use", "id": "t1", "name": "lookup_order", "input": {"number": 1}}]}
TOOL_RESULT = {"type": "tool_result", "tool_use_id": "t1", "content": "{\"ok\": true}"}


def events_of(session, kind: str) -> list[dict]:
    return list(AgentEvent.objects.filter(session_id=session.pk, type=kind)
                .order_by("seq").values_list("data", flat=True))


# -- turn boundaries -------------------------------------------------------------------------

def test_a_turn_keeps_its_tool_loop():
    messages = [umsg("q1"), TOOL_USE, {"role": "user", "content": [TOOL_RESULT]},
                amsg("a1"), umsg("q2"), amsg("a2")]
    assert turn_starts(messages) == [(0, 0), (4, 0)]
    assert count_turns(messages) == 2
    assert messages_upto(messages, 1) == messages[:4]
    assert messages_upto(messages, 0) == []
    assert messages_upto(messages, 2) == messages and messages_upto(messages, 2) is not messages


def test_a_halted_turn_shares_its_results_message_with_the_next_question():
    merged = {"role": "user", "content": [TOOL_RESULT, {"type": "text", "text": "q2"}]}
    messages = [umsg("q1"), TOOL_USE, merged, amsg("a2")]
    assert turn_starts(messages) == [(0, 0), (2, 1)]
    assert messages_upto(messages, 1) == [umsg("q1"), TOOL_USE,
                                          {"role": "user", "content": [TOOL_RESULT]}]
    assert merged["content"][1]["text"] == "q2"  # the original is not mutated


def test_string_contents_count_as_turns():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "again"}]
    assert count_turns(messages) == 2
    assert messages_upto(messages, 1) == messages[:2]


# -- fork ------------------------------------------------------------------------------------

@pytest.fixture
def three_turns(scripted, user):
    scripted.enqueue("a1", "a2", "a3")
    s = ChatAgent.objects.start_session("q1", instruction_args=ARGS, owner=user,
                                        title="Original")
    s = ChatAgent.objects.continue_session(s, "q2")
    s = ChatAgent.objects.continue_session(s, "q3")
    ChatAgent.objects.filter(pk=s.pk).update(metadata={"tags": ["x"]}, pinned=True)
    s.refresh_from_db()
    return s


def test_fork_copies_the_first_turns_into_a_new_session(three_turns, user):
    source = three_turns
    before = source.get_context()

    fork = fork_session(source, upto_turn=2)

    assert fork.pk != source.pk and isinstance(fork, ChatAgent)
    ctx = fork.get_context()
    assert ctx.messages == before.messages[:4]
    assert (ctx.turns, fork.turn_count) == (2, 2)
    assert ctx.last_output == {"content": "a2"}
    assert ctx.system == before.system and ctx.instruction_args == ARGS
    assert ctx.usage == before.usage  # the budget keeps counting what the talk has cost
    assert fork.owner_id == user.pk and fork.title == "Original"
    assert fork.metadata == {"tags": ["x"]} and fork.pinned is False
    assert fork.runs.count() == 0 and fork.input_tokens == 0
    assert events_of(fork, EventType.SESSION_FORKED) == [
        {"from_session": str(source.pk), "upto_turn": 2}]
    assert events_of(source, EventType.SESSION_FORKED) == [
        {"to_session": str(fork.pk), "upto_turn": 2}]
    assert ChatAgent.objects.get(pk=fork.pk).event_seq == fork.event_seq == 1
    # the source is untouched apart from its log
    source.refresh_from_db()
    assert source.get_context() == before and source.turn_count == 3


def test_fork_defaults_and_choices(three_turns, other_user):
    whole = fork_session(three_turns)
    assert whole.get_context().messages == three_turns.get_context().messages
    assert whole.get_context().last_output == {"content": "a3"}
    empty = fork_session(three_turns, upto_turn=0, owner=other_user, title="Fresh")
    assert empty.get_context().messages == [] and empty.get_context().last_output is None
    assert empty.owner_id == other_user.pk and empty.title == "Fresh"
    assert fork_session(three_turns, owner=None).owner_id is None
    for bad in (4, -1, "1", True):
        with pytest.raises(exc.InvalidInput) as info:
            fork_session(three_turns, upto_turn=bad)
        assert "upto_turn" in info.value.errors


def test_fork_recovers_structured_output(scripted):
    scripted.enqueue(json_reply({"content": "one", "mood": "happy"}),
                     json_reply({"content": "two", "mood": "sad"}))
    s = StructuredAgent.objects.start_session("a", instruction_args=ARGS)
    s = StructuredAgent.objects.continue_session(s, "b")
    assert fork_session(s, upto_turn=1).last_output == {"content": "one", "mood": "happy"}


def test_fork_and_rewind_keep_what_the_conversation_spent(three_turns, scripted):
    from decimal import Decimal

    from tests.helpers.engine import declared

    context = three_turns.get_context()
    context.cost, context.compactions = Decimal("0.75"), 2
    ChatAgent.objects.filter(pk=three_turns.pk).update(context=context.to_dict())
    three_turns.refresh_from_db()

    fork = fork_session(three_turns, upto_turn=1)
    rewound = rewind_session(three_turns, 2)
    for session in (fork, rewound):
        kept = session.get_context()
        assert (kept.cost, kept.compactions, kept.usage) == (
            Decimal("0.75"), 2, context.usage)
        assert kept.tokens is None  # shorter now: measured again by the next reply
    # so neither is a way around the budget
    with declared(ChatAgent, cost_budget=Decimal("0.50"), budget_strategy="halt"):
        for session in (fork, rewound):
            with pytest.raises(exc.CostBudgetExceeded):
                ChatAgent.objects.continue_session(session, "more")


@pytest.mark.django_db(transaction=True)
async def test_async_twins(three_turns):
    fork = await afork_session(three_turns, upto_turn=1)
    rewound = await arewind_session(fork, 0)
    assert rewound.get_context().messages == []


# -- rewind ----------------------------------------------------------------------------------

def test_rewind_truncates_and_records(three_turns, scripted):
    s = three_turns
    before = s.get_context()
    version = s.version

    rewound = rewind_session(s, 1)

    assert rewound is s
    ctx = s.get_context()
    assert ctx.messages == before.messages[:2]
    assert (ctx.turns, s.turn_count, s.version) == (1, 1, version + 1)
    assert s.last_output == {"content": "a1"}
    assert events_of(s, EventType.SESSION_REWOUND) == [
        {"from_turn": 3, "to_turn": 1, "removed_messages": 4}]
    assert AgentRun.objects.filter(session_id=s.pk).count() == 3  # the log keeps history

    scripted.enqueue("a2'")
    s = ChatAgent.objects.continue_session(s, "q2'")
    assert scripted.requests[-1].messages == [*before.messages[:2], umsg("q2'")]
    assert s.turn_count == 2 and s.get_context().turns == 2
    seqs = list(AgentEvent.objects.filter(session_id=s.pk).values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_rewind_validates_the_turn(three_turns):
    for bad in (4, -1, None):
        with pytest.raises(exc.InvalidInput) as info:
            rewind_session(three_turns, bad)
        assert "to_turn" in info.value.errors
    rewind_session(three_turns, 3)  # a no-op rewind is allowed and recorded
    assert three_turns.turn_count == 3


def test_rewind_refuses_a_held_lease_and_takes_an_expired_one(three_turns, scripted):
    s = three_turns
    token = uuid.uuid4()
    ChatAgent.objects.filter(pk=s.pk).update(
        lease_token=token, lease_expires_at=timezone.now() + timedelta(seconds=90))
    with pytest.raises(exc.SessionBusy) as info:
        rewind_session(s, 1)
    assert info.value.retry_after > 1
    assert ChatAgent.objects.get(pk=s.pk).turn_count == 3

    # a crashed turn's expired lease does not block; the next turn still cleans it up
    AgentRun.objects.create(id=token, session_type=s.content_type, session_id=s.pk)
    ChatAgent.objects.filter(pk=s.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1))
    rewind_session(s, 1)
    assert s.turn_count == 1 and s.lease_token == token
    scripted.enqueue("again")
    ChatAgent.objects.continue_session(s, "next")
    assert AgentRun.objects.get(pk=token).status == "failed"


@pytest.mark.django_db(transaction=True)
def test_rewind_never_races_a_running_turn(scripted):
    """A turn in flight (its model call blocked) makes rewind refuse; after it, rewind works."""
    entered, release = threading.Event(), threading.Event()

    def blocking(request):
        entered.set()
        assert release.wait(10)
        return text_reply("late answer")

    scripted.enqueue("a1", blocking)
    s = ChatAgent.objects.start_session("q1", instruction_args=ARGS)
    errors: list[BaseException] = []

    def turn() -> None:
        try:
            ChatAgent.objects.continue_session(s.pk, "q2")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=turn)
    thread.start()
    try:
        assert entered.wait(10)
        with pytest.raises(exc.SessionBusy):
            rewind_session(s, 0)
    finally:
        release.set()
        thread.join(10)
    assert not errors
    s.refresh_from_db()
    assert s.turn_count == 2  # the turn committed over an untouched context
    rewind_session(s, 0)
    assert s.get_context().messages == [] and s.turn_count == 0


def test_commit_does_not_overwrite_a_rewind_made_after_the_lease_expired(scripted):
    """``rewind_session`` may write once a lease has expired (it leaves the lease in
    place); a turn still running under that lease must not commit over the rewind."""
    from django.utils import timezone

    from django_agent_session.history import rewind_session

    scripted.enqueue("first", "second")
    session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
    session = ChatAgent.objects.continue_session(session, "Again")

    def rewind_meanwhile(request):
        ChatAgent.objects.filter(pk=session.pk).update(lease_expires_at=timezone.now())
        rewind_session(ChatAgent.objects.get(pk=session.pk), 0)
        return "late"
    scripted.enqueue(rewind_meanwhile)
    with pytest.raises(exc.LeaseLost):
        ChatAgent.objects.continue_session(session.pk, "Third")
    row = ChatAgent.objects.get(pk=session.pk)
    assert row.get_context().messages == [] and row.turn_count == 0
    assert row.runs.filter(status=RunStatus.FAILED).count() == 1


def test_rewind_missing_session(three_turns):
    ChatAgent.objects.filter(pk=three_turns.pk).delete()
    with pytest.raises(exc.SessionNotFound):
        rewind_session(three_turns, 1)


# -- the real SDK path -----------------------------------------------------------------------

def test_fork_and_rewind_continue_through_the_real_sdk(user):
    """The requests the Messages API receives after a fork/rewind carry exactly the kept
    messages plus the new question (with a tool loop inside the first turn)."""
    Order.objects.create(number=7, status="shipped", customer="Ann")
    replies = [Reply.tool_use("lookup_order", {"number": 7}, id="toolu_7"),
               Reply.text("Order 7 has shipped."), Reply.text("No order 8."),
               Reply.text("Bye!"), Reply.text("Order 9 is late."), Reply.text("Sure, 8 again."),
               Reply.text("Hello again.")]
    with LoopbackMessagesServer(replies) as server, override_settings(AGENT_SESSION={
            "ANTHROPIC": {"BASE_URL": server.base_url, "API_KEY": "test", "MAX_RETRIES": 0}}):
        s = ToolAgent.objects.start_session("Where is order 7?", instruction_args=ARGS,
                                            owner=user)
        s = ToolAgent.objects.continue_session(s, "And order 8?")
        s = ToolAgent.objects.continue_session(s, "Thanks")
        first, tool_loop, second, third = server.message_requests
        assert [m["role"] for m in third.messages] == ["user", "assistant", "user",
                                                       "assistant", "user", "assistant", "user"]

        fork = fork_session(s, upto_turn=1)
        fork = ToolAgent.objects.continue_session(fork, "What about order 9?")
        sent = server.message_requests[-1]
        assert uncached(sent.messages) == uncached([*second.messages[:-1],
                                                    umsg("What about order 9?")])
        assert sent.messages[2]["content"][0]["type"] == "tool_result"
        assert sent.system == first.system and sent.tools == first.tools
        assert fork.get_context().messages == [*uncached(sent.messages),
                                               amsg("Order 9 is late.")]
        assert fork.turn_count == 2

        s = rewind_session(s, 2)
        s = ToolAgent.objects.continue_session(s, "Order 8, again?")
        sent = server.message_requests[-1]
        assert uncached(sent.messages) == uncached([*third.messages[:-1],
                                                    umsg("Order 8, again?")])
        assert s.get_context().turns == 3 and s.last_output == {"content": "Sure, 8 again."}

        fresh = fork_session(s, upto_turn=0)
        ToolAgent.objects.continue_session(fresh, "Hi")
        assert uncached(server.message_requests[-1].messages) == [umsg("Hi")]
        server.assert_script_consumed()
