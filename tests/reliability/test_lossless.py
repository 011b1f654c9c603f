"""Lossless concurrency: 8 writers (sync threads and async tasks) over 3 sessions.

Each writer runs its turns round-robin over the sessions while an extra thread appends
out-of-turn events (as the live layer does for presence). Afterwards every context holds every
turn that landed on it, each reply right after its own question, each writer's turns in its
own order, and every event log is complete with gapless sequence numbers.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from django_agent_session.engine.context import Context, message_text
from django_agent_session.models import AgentEvent, AgentRun, EventType, RunStatus
from django_agent_session.store import SessionStore
from django_agent_session.testing import text_reply
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)

SYNC_WRITERS, ASYNC_WRITERS, SESSIONS, TURNS, APPENDS = 4, 4, 3, 20, 30


def echo(request):
    return text_reply(f"re: {message_text(request.messages[-1])}",
                      usage={"input_tokens": 3, "output_tokens": 2})


def plan(writer: int) -> list[tuple[int, str]]:
    """(session index, message) of each turn of ``writer``."""
    return [((writer + j) % SESSIONS, f"w{writer}-t{j}") for j in range(TURNS)]


def test_eight_writers_three_sessions_lose_nothing(scripted):
    scripted.default = echo
    sessions = [ChatAgent.objects.create(
        context=Context(system=f"s{k}", instruction_args={"company_name": "A"}).to_dict())
        for k in range(SESSIONS)]
    pks = [s.pk for s in sessions]
    errors: list[BaseException] = []

    def sync_writer(writer: int) -> None:
        try:
            for index, message in plan(writer):
                ChatAgent.objects.continue_session(pks[index], message)
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)
        finally:
            connection.close()

    def async_writers() -> None:
        async def writer(number: int) -> None:
            for index, message in plan(number):
                await ChatAgent.objects.acontinue_session(pks[index], message)

        async def main() -> None:
            results = await asyncio.gather(
                *(writer(SYNC_WRITERS + k) for k in range(ASYNC_WRITERS)),
                return_exceptions=True)
            errors.extend(r for r in results if isinstance(r, BaseException))
        asyncio.run(main())

    def appender() -> None:
        store = SessionStore(ChatAgent)
        try:
            for n in range(APPENDS):
                store.append_events(pks[n % SESSIONS], [(EventType.MESSAGE_QUEUED, {"n": n})])
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=async_writers), threading.Thread(target=appender)]
    for thread in threads:
        thread.start()
    with ThreadPoolExecutor(SYNC_WRITERS) as pool:
        list(pool.map(sync_writer, range(SYNC_WRITERS)))
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()
    assert errors == []

    expected: dict[int, list[str]] = {k: [] for k in range(SESSIONS)}
    for writer in range(SYNC_WRITERS + ASYNC_WRITERS):
        for index, message in plan(writer):
            expected[index].append(message)
    appended = Counter(n % SESSIONS for n in range(APPENDS))

    for index, pk in enumerate(pks):
        row = ChatAgent._base_manager.get(pk=pk)
        context = row.get_context()
        messages = context.messages
        turns = len(expected[index])
        assert len(messages) == 2 * turns
        assert [m["role"] for m in messages] == ["user", "assistant"] * turns
        questions = [message_text(m) for m in messages[0::2]]
        assert [message_text(m) for m in messages[1::2]] == [f"re: {q}" for q in questions]
        assert sorted(questions) == sorted(expected[index])
        for writer in range(SYNC_WRITERS + ASYNC_WRITERS):
            mine = [q for q in questions if q.startswith(f"w{writer}-")]
            assert mine == [m for i, m in plan(writer) if i == index]
        assert row.turn_count == context.turns == turns
        assert row.status == "idle" and row.lease_token is None
        assert row.input_tokens == 3 * turns and row.output_tokens == 2 * turns
        assert context.usage["input_tokens"] == 3 * turns

        events = list(AgentEvent.objects.filter(session_id=pk).order_by("seq"))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert row.event_seq == len(events)
        kinds = Counter(e.type for e in events)
        assert kinds["message.user"] == kinds["message.assistant"] == turns
        assert kinds["run.started"] == kinds["run.completed"] == turns
        assert kinds[EventType.MESSAGE_QUEUED] == appended[index]
        runs = AgentRun.objects.filter(session_id=pk)
        assert runs.count() == runs.filter(status=RunStatus.COMPLETED).count() == turns
        # each run's events are contiguous: started, user, assistant, usage, completed; a
        # message that waited was queued (run.queued) before that
        by_run: dict[str, list[int]] = {}
        queued_at: dict[str, int] = {}
        for event in events:
            if event.type == EventType.RUN_QUEUED:
                queued_at[str(event.run_id)] = event.seq
            elif event.run_id is not None:
                by_run.setdefault(str(event.run_id), []).append(event.seq)
        for run_id, seqs in by_run.items():
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            assert queued_at.get(run_id, 0) < seqs[0]
        assert set(queued_at) <= set(by_run)
