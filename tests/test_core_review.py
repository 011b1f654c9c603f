"""Regression tests for bugs found reviewing the turn path (store, managers, engine, context)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import threading
import time

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.context import Context
from django_agent_session.models import AgentEvent, AgentRun, RunStatus, SessionStatus
from django_agent_session.store import SessionStore
from django_agent_session.testing import (
    ScriptedClient,
    json_reply,
    text_reply,
    tool_reply,
)
from django_agent_session.tools import Halt
from tests.test_tools import USER, engine_for
from tests.testapp.models import ChatAgent, SupportAgent, ToolAgent

ARGS = {"company_name": "Acme"}


def _gate(monkeypatch, name: str):
    """Hold ``SessionStore.<name>`` in its thread until released; returns (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    real = getattr(SessionStore, name)

    def gated(self, *args, **kwargs):
        entered.set()
        assert release.wait(10), "never released"
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SessionStore, name, gated)
    return entered, release


async def _cancel_inside(task: asyncio.Task, entered: threading.Event,
                         release: threading.Event) -> BaseException:
    """Cancel ``task`` while it waits for a gated store call, then let the call finish."""
    for _ in range(500):
        if entered.is_set():
            break
        await asyncio.sleep(0.01)
    assert entered.is_set()
    task.cancel()
    await asyncio.sleep(0.05)  # the cancellation reaches the awaiting coroutine first
    release.set()
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    return info.value


@pytest.mark.django_db(transaction=True)
class TestCancellationAtDatabaseCalls:
    """A cancellation that arrives while a store call runs in its thread: the call completes
    anyway, so what it did (a commit, a lease) must be accounted for."""

    async def test_cancel_during_commit_keeps_completed_run(self, scripted, monkeypatch):
        scripted.enqueue("first", "second")
        session = await ChatAgent.objects.astart_session("Hi", instruction_args=ARGS)
        entered, release = _gate(monkeypatch, "commit")
        task = asyncio.ensure_future(ChatAgent.objects.acontinue_session(session.pk, "Again"))
        error = await _cancel_inside(task, entered, release)

        row = await ChatAgent.objects.aget(pk=session.pk)
        assert len(row.get_context().messages) == 4  # the commit happened
        runs = [r async for r in AgentRun.objects.filter(session_id=session.pk)]
        assert sorted(r.status for r in runs) == [RunStatus.COMPLETED] * 2
        types = [t async for t in AgentEvent.objects.filter(session_id=session.pk)
                 .order_by("seq").values_list("type", flat=True)]
        assert "run.cancelled" not in types and types[-1] == "run.completed"
        assert row.status == SessionStatus.IDLE and row.lease_token is None
        assert error.turn.status == RunStatus.COMPLETED  # what the turn wrote

    async def test_cancel_during_lease_take_releases_it(self, scripted, monkeypatch):
        scripted.enqueue("first", "second")
        session = await ChatAgent.objects.astart_session("Hi", instruction_args=ARGS)
        entered, release = _gate(monkeypatch, "try_begin")
        task = asyncio.ensure_future(ChatAgent.objects.acontinue_session(session.pk, "Again"))
        await _cancel_inside(task, entered, release)
        monkeypatch.undo()

        row = await ChatAgent.objects.aget(pk=session.pk)
        assert row.lease_token is None
        assert not await AgentRun.objects.filter(session_id=session.pk,
                                                 status=RunStatus.RUNNING).aexists()
        with override_settings(AGENT_SESSION={"TURN_WAIT_SECONDS": 0}):
            session = await ChatAgent.objects.acontinue_session(session.pk, "Next")
        assert session.last_output == {"content": "second"}

    async def test_cancel_during_session_create_releases_lease(self, scripted, monkeypatch):
        scripted.enqueue("unused")
        entered, release = _gate(monkeypatch, "create")
        task = asyncio.ensure_future(ChatAgent.objects.astart_session(
            "Hi", instruction_args=ARGS))
        await _cancel_inside(task, entered, release)

        row = await ChatAgent.objects.aget()
        assert row.lease_token is None
        run = await AgentRun.objects.aget(session_id=row.pk)
        assert run.status == RunStatus.CANCELLED


@pytest.mark.django_db
class TestBeginFailures:
    def test_unreadable_context_does_not_keep_the_lease(self, scripted):
        """A context the library cannot load (e.g. written by a newer version) fails the turn
        and frees the lease, instead of locking the session until the lease expires."""
        session = ChatAgent.objects.create(context={"version": 99, "messages": []})
        with override_settings(AGENT_SESSION={"TURN_WAIT_SECONDS": 0}):
            for _ in range(2):  # the second try is not SessionBusy
                with pytest.raises(exc.AgentSessionError) as info:
                    ChatAgent.objects.continue_session(session.pk, "Hi")
                assert info.value.code == "internal_error"
        row = ChatAgent.objects.get(pk=session.pk)
        assert row.lease_token is None and row.context == {"version": 99, "messages": []}
        assert list(row.runs.values_list("status", flat=True)) == [RunStatus.FAILED] * 2
        assert scripted.requests == []

    def test_failed_run_insert_leaves_no_lease(self, scripted, monkeypatch):
        """Taking the lease and inserting its run happen together, or not at all."""
        scripted.enqueue("first")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)

        def broken(self, turn):
            raise RuntimeError("database went away")
        monkeypatch.setattr(SessionStore, "_insert_run", broken)
        with pytest.raises(RuntimeError):
            ChatAgent.objects.continue_session(session.pk, "Again")
        assert ChatAgent.objects.get(pk=session.pk).lease_token is None
        with pytest.raises(RuntimeError):
            ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        assert ChatAgent.objects.count() == 1  # no session born holding an orphan lease


@pytest.mark.django_db
class TestProcessExit:
    def test_system_exit_is_not_turned_into_an_error(self, scripted):
        scripted.enqueue("first", SystemExit(3))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        with pytest.raises(SystemExit):
            ChatAgent.objects.continue_session(session.pk, "Again")
        row = ChatAgent.objects.get(pk=session.pk)
        assert row.lease_token is None and len(row.get_context().messages) == 2
        assert row.runs.filter(status=RunStatus.CANCELLED).count() == 1


@pytest.mark.django_db
class TestStructuredRetryThenTools:
    def test_retry_followed_by_tool_use_drops_the_invalid_attempt(self, scripted):
        scripted.enqueue(
            text_reply("not json"),
            tool_reply("lookup_order", {"number": 7}, id="toolu_1"),
            json_reply({"content": "done", "mood": "happy"}),
        )
        session = SupportAgent.objects.start_session("Where is 7?", instruction_args=ARGS)
        messages = session.get_context().messages
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[1]["content"][0]["type"] == "tool_use"
        assert messages[2]["content"][0]["type"] == "tool_result"
        texts = [b.get("text", "") for m in messages for b in m["content"]]
        assert "not json" not in texts
        assert not any("did not match" in t for t in texts)
        assert session.last_output == {"content": "done", "mood": "happy"}


@pytest.mark.django_db(transaction=True)
class TestAsyncToolTimeout:
    async def test_timed_out_sync_tool_does_not_hold_the_orm_thread(self):
        """On the async path, a sync tool that timed out keeps running in its thread; it must
        not be the thread every ``database_sync_to_async`` call (commit, fail) waits for."""
        release = threading.Event()

        def stuck() -> str:
            release.wait(10)
            return "late"

        engine = engine_for([stuck], tool_timeout=0.1)
        client = ScriptedClient().enqueue(tool_reply("stuck", {}), "gave up")
        try:
            result = await engine.arun(Context(system="s"), USER, client)
            assert result.output == {"content": "gave up"}
            started = time.monotonic()
            await asyncio.wait_for(database_sync_to_async(lambda: None)(), 3)
            assert time.monotonic() - started < 1
        finally:
            release.set()


@pytest.mark.django_db
class TestHaltOutputIsJSON:
    def test_halt_value_is_stored_as_returned(self, scripted, monkeypatch):
        """A ``Halt`` value becomes the output as the database stores it (no Decimal in
        memory and a string in the row, and no crash on a context field without encoder)."""
        tool = ToolAgent.agent_options.tools["lookup_order"]
        when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
        monkeypatch.setattr(tool, "fn", lambda ctx, number: Halt(
            {"total": decimal.Decimal("1.50"), "at": when}))
        scripted.enqueue(tool_reply("lookup_order", {"number": 1}))
        session = ToolAgent.objects.start_session("Total?", instruction_args=ARGS)
        stored = ToolAgent.objects.get(pk=session.pk)
        assert session.last_output == stored.last_output
        assert AgentRun.objects.get(session_id=session.pk).output == session.last_output


class TestContextLoading:
    def test_repair_does_not_mutate_the_stored_data(self):
        data = {"version": 1, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x",
                                               "input": {}}]},
            {"role": "user", "content": "next"},
        ]}
        ctx = Context.from_dict(data)
        assert ctx.repaired
        assert data["messages"][2] == {"role": "user", "content": "next"}
        assert ctx.messages[2]["content"][0]["type"] == "tool_result"


@pytest.mark.django_db
class TestCommitChecksVersion:
    def test_commit_does_not_overwrite_a_rewind_made_after_the_lease_expired(self, scripted):
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


@pytest.mark.django_db(transaction=True)
class TestToolPoolConnections:
    def test_timed_sync_tool_does_not_leave_its_connection_open(self):
        """A sync tool with a timeout runs in a pool thread; the database connection it
        opened there is closed after the call (as Django does after a request), instead of
        staying open, and eventually stale, for the life of the process."""
        from django.db import connections

        opened = []

        def count() -> int:
            opened.append(connections["default"])
            return ChatAgent.objects.count()

        engine = engine_for([count], tool_timeout=5)
        client = ScriptedClient().enqueue(tool_reply("count", {}), "done")
        engine.run(Context(system="s"), USER, client)
        assert len(opened) == 1 and opened[0] is not connections["default"]
        assert opened[0].connection is None


@pytest.mark.django_db
class TestNulInToolResult:
    def test_tool_result_with_nul_character_is_storable(self, scripted, monkeypatch):
        """PostgreSQL's jsonb rejects ``\\u0000``: a tool returning it (file contents, say)
        failed every such turn at commit."""
        tool = ToolAgent.agent_options.tools["lookup_order"]
        monkeypatch.setattr(tool, "fn", lambda ctx, number: "a\x00b")
        scripted.enqueue(tool_reply("lookup_order", {"number": 1}), "done")
        session = ToolAgent.objects.start_session("Read it", instruction_args=ARGS)
        assert session.last_output == {"content": "done"}
        stored = ToolAgent.objects.get(pk=session.pk).get_context().messages
        assert stored[2]["content"][0]["content"] == "a\ufffdb"
