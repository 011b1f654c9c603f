"""Concurrent turns: serialized on one session, nothing lost; independent across sessions."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from django_agent_session.engine.context import Context, message_text
from django_agent_session.models import AgentEvent, RunStatus
from django_agent_session.testing import text_reply
from tests.helpers.threads import in_thread
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)

THREADS, TURNS = 8, 25


def echo(request):
    """Reply naming the message it answers, so order can be checked afterwards."""
    return text_reply(f"re: {message_text(request.messages[-1])}")



def test_concurrent_continues_lose_nothing(scripted):
    scripted.default = echo
    session = ChatAgent.objects.create(
        context=Context(system="s", instruction_args={"company_name": "A"}).to_dict())

    @in_thread
    def writer(i: int) -> None:
        for j in range(TURNS):
            ChatAgent.objects.continue_session(session.pk, f"t{i}-{j}")

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(writer, range(THREADS)))

    row = ChatAgent.objects.get(pk=session.pk)
    messages = row.get_context().messages
    assert len(messages) == 2 * THREADS * TURNS
    users = [message_text(m) for m in messages[0::2]]
    replies = [message_text(m) for m in messages[1::2]]
    assert {m["role"] for m in messages[0::2]} == {"user"}
    assert {m["role"] for m in messages[1::2]} == {"assistant"}
    assert replies == [f"re: {u}" for u in users]  # every reply follows its own question
    assert sorted(users) == sorted(f"t{i}-{j}" for i in range(THREADS) for j in range(TURNS))
    for i in range(THREADS):  # each writer's turns are in its own order
        mine = [u for u in users if u.startswith(f"t{i}-")]
        assert mine == [f"t{i}-{j}" for j in range(TURNS)]
    assert row.turn_count == THREADS * TURNS and row.get_context().turns == THREADS * TURNS

    seqs = list(AgentEvent.objects.filter(session_id=session.pk).order_by("seq")
                .values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1)) and row.event_seq == len(seqs)
    events = AgentEvent.objects.filter(session_id=session.pk)
    assert events.filter(type="message.user").count() == THREADS * TURNS
    assert events.filter(type="message.assistant").count() == THREADS * TURNS
    assert row.runs.filter(status=RunStatus.COMPLETED).count() == THREADS * TURNS
    assert not row.runs.exclude(status=RunStatus.COMPLETED).exists()


def test_turns_on_different_sessions_do_not_block_each_other(scripted):
    a = ChatAgent.objects.create(context=Context(system="a").to_dict())
    b = ChatAgent.objects.create(context=Context(system="b").to_dict())
    release, entered = threading.Event(), threading.Event()

    def slow_then_echo(request):
        if request.system == "a":
            entered.set()
            assert release.wait(20), "never released"
        return echo(request)

    scripted.default = slow_then_echo
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(in_thread(ChatAgent.objects.continue_session), a.pk, "slow")
        assert entered.wait(20)
        # session A's turn is in the middle of its model call; B runs a full turn meanwhile
        done = ChatAgent.objects.continue_session(b.pk, "fast")
        assert done.last_output == {"content": "re: fast"}
        assert not slow.done()
        release.set()
        assert slow.result(timeout=20).last_output == {"content": "re: slow"}
