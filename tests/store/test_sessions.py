"""The three session operations, sync and async, and the turn guarantees."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_agent_session import exceptions as exc
from django_agent_session.engine.context import Context
from django_agent_session.models import AgentEvent, AgentRun, RunStatus, SessionStatus
from django_agent_session.store import SessionStore
from django_agent_session.store.statements import Statements
from django_agent_session.testing import json_reply, text_reply, tool_reply
from tests.testapp.models import ChatAgent, Order, PlainAgent, SupportAgent

pytestmark = pytest.mark.django_db

ARGS = {"company_name": "Acme"}


def reply(mood: str = "happy", content: str = "Hi!") -> object:
    return json_reply({"content": content, "mood": mood})


class TestDesignExample:
    """A model declared exactly like DESIGN.md: start, continue, get_context."""

    def test_start_continue_get_context(self, scripted, user):
        Order.objects.create(number=42, status="shipped", customer="alice")
        scripted.enqueue(
            reply(content="Hello, how can I help?"),
            tool_reply("lookup_order", {"number": 42}),
            reply(content="Order 42 has shipped."),
        )
        session = SupportAgent.objects.start_session(
            {"message": "Hi"}, instruction_args=ARGS, owner=user)
        assert session.status == SessionStatus.IDLE
        assert session.last_output == {"content": "Hello, how can I help?", "mood": "happy"}
        assert session.owner == user

        session = SupportAgent.objects.continue_session(session.pk, {"message": "Where is 42?"})
        assert session.last_output["content"] == "Order 42 has shipped."

        # the second turn's request carries the first turn's messages
        second = scripted.requests[1]
        assert second.messages[0] == {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
        assert second.messages[1]["role"] == "assistant"
        assert second.messages[1]["content"][0]["text"].startswith('{"content": "Hello')
        # the system prompt is rendered with the instruction args
        assert second.system == "You are a helpful assistant for Acme."
        # the tool result reached the model
        third = scripted.requests[2]
        result = third.messages[-1]["content"][0]
        assert result["type"] == "tool_result" and '"status": "shipped"' in result["content"]
        assert '"owner": "alice"' in result["content"]  # the tool acted for the session's owner

        context = SupportAgent.objects.get_context(session.pk)
        assert isinstance(context, Context)
        assert context.system == "You are a helpful assistant for Acme."
        assert context.instruction_args == ARGS
        assert context.turns == 2
        assert [m["role"] for m in context.messages] == [
            "user", "assistant", "user", "assistant", "user", "assistant"]
        assert context.last_output == session.last_output
        assert context.to_dict()["version"] == 1
        assert context.usage["input_tokens"] == 30 and context.usage["output_tokens"] == 15

    @pytest.mark.django_db(transaction=True)
    async def test_async_twins(self, scripted, user):
        scripted.enqueue(reply(content="one"), reply(content="two"))
        session = await SupportAgent.objects.astart_session(
            "Hi", instruction_args=ARGS, owner=user)
        assert session.last_output["content"] == "one"
        session = await SupportAgent.objects.acontinue_session(session, "Again")
        assert session.last_output["content"] == "two"
        context = await SupportAgent.objects.aget_context(session.pk)
        assert context.turns == 2
        assert len(scripted.requests[1].messages) == 3

    def test_events_and_runs_are_recorded(self, scripted):
        scripted.enqueue("a", "b")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        session = ChatAgent.objects.continue_session(session, "Again")
        types = list(session.events.order_by("seq").values_list("seq", "type"))
        assert [seq for seq, _ in types] == list(range(1, len(types) + 1))
        assert [t for _, t in types] == [
            "session.started", "run.started", "message.user", "message.assistant", "usage",
            "run.completed", "run.started", "message.user", "message.assistant", "usage",
            "run.completed"]
        runs = list(session.runs.order_by("started_at"))
        assert [r.status for r in runs] == [RunStatus.COMPLETED] * 2
        assert runs[1].output == {"content": "b"} and runs[1].input == {"message": "Again"}
        assert runs[0].input_tokens == 10 and runs[0].duration_ms is not None
        assert session.event_seq == 11
        assert session.turn_count == 2 and session.title == "Hi"


class TestValidation:
    """Bad input never reaches the model and writes nothing."""

    def _nothing_written(self, scripted):
        assert scripted.requests == []
        assert ChatAgent.objects.count() == 0
        assert AgentRun.objects.count() == 0 and AgentEvent.objects.count() == 0

    def test_invalid_input(self, scripted):
        with pytest.raises(exc.InvalidInput) as info:
            ChatAgent.objects.start_session({"message": ""}, instruction_args=ARGS)
        assert "message" in info.value.errors
        with pytest.raises(exc.InvalidInput) as info:
            ChatAgent.objects.start_session({"wrong": "x"}, instruction_args=ARGS)
        assert info.value.errors == {"message": ["This field is required."]}
        with pytest.raises(exc.InvalidInput):
            ChatAgent.objects.start_session(["not", "an", "object"], instruction_args=ARGS)
        self._nothing_written(scripted)

    def test_invalid_instruction_args(self, scripted):
        with pytest.raises(exc.InvalidInstructionArgs) as info:
            ChatAgent.objects.start_session("Hi", instruction_args={})
        assert info.value.errors == {"company_name": ["This field is required."]}
        with pytest.raises(exc.InvalidInstructionArgs) as info:
            ChatAgent.objects.start_session("Hi", instruction_args={"company_name": "x" * 101})
        assert "company_name" in info.value.errors
        self._nothing_written(scripted)

    def test_deeply_nested_input_is_invalid_not_a_recursion_error(self, scripted):
        """Regression: 100,000 levels reached DRF's ``str()`` of the value and raised
        ``RecursionError`` out of the manager instead of a clear validation error."""
        deep: dict = {}
        node = deep
        for _ in range(100_000):
            node["a"] = {}
            node = node["a"]
        with pytest.raises(exc.InvalidInstructionArgs) as info:
            ChatAgent.objects.start_session("Hi", instruction_args={"company_name": deep})
        assert info.value.errors == {"non_field_errors": ["Nested deeper than 100 levels."]}
        with pytest.raises(exc.InvalidInput) as info:
            ChatAgent.objects.start_session({"message": deep}, instruction_args=ARGS)
        assert info.value.errors == {"non_field_errors": ["Nested deeper than 100 levels."]}
        self._nothing_written(scripted)

    def test_missing_and_extra_template_variable(self, scripted):
        # PlainAgent has no instruction_schema: the template alone decides
        with pytest.raises(exc.InvalidInstructionArgs) as info:
            PlainAgent.objects.start_session("Hi", instruction_args={"surprise": 1})
        assert info.value.errors == {"surprise": ["The instruction template has no such variable."]}
        assert PlainAgent.objects.count() == 0

    def test_invalid_input_on_continue_writes_nothing(self, scripted):
        scripted.enqueue("a")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        before = ChatAgent.objects.get(pk=session.pk)
        with pytest.raises(exc.InvalidInput):
            ChatAgent.objects.continue_session(session, {"message": None})
        after = ChatAgent.objects.get(pk=session.pk)
        assert after.context == before.context and after.version == before.version
        assert AgentRun.objects.count() == 1 and len(scripted.requests) == 1

    @override_settings(AGENT_SESSION={"MAX_INPUT_CHARS": 10})
    def test_oversized_input(self, scripted):
        with pytest.raises(exc.InvalidInput) as info:
            PlainAgent.objects.start_session("x" * 11)
        assert "limit is 10" in str(info.value.errors)
        assert PlainAgent.objects.count() == 0

    def test_unknown_session(self, scripted):
        with pytest.raises(exc.SessionNotFound):
            ChatAgent.objects.continue_session(uuid.uuid4(), "Hi")
        with pytest.raises(exc.SessionNotFound):
            ChatAgent.objects.get_context(uuid.uuid4())
        with pytest.raises(exc.SessionNotFound):
            ChatAgent.objects.get_context("not-a-uuid")


class TestFailure:
    """A failing model call leaves the stored context exactly as it was."""

    @pytest.mark.parametrize("error", [
        exc.ModelOverloaded("busy"), exc.ModelRateLimited("slow down"),
        exc.ModelBadRequest("no"), exc.ModelTimeout("late"),
    ])
    def test_failed_call_keeps_context(self, scripted, error):
        scripted.enqueue("first", error)
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        stored = ChatAgent.objects.filter(pk=session.pk).values_list("context", flat=True).get()
        raw_before = _raw_context(session)

        with pytest.raises(type(error)) as info:
            ChatAgent.objects.continue_session(session.pk, "Again")
        assert info.value.retryable is error.retryable
        assert info.value.session.pk == session.pk

        row = ChatAgent.objects.get(pk=session.pk)
        assert row.context == stored
        assert _raw_context(session) == raw_before  # byte for byte
        assert row.status == SessionStatus.FAILED
        assert row.lease_token is None and row.turn_count == 1
        failed = row.runs.get(status=RunStatus.FAILED)
        assert failed.error["code"] == error.code
        assert failed.error["retryable"] is error.retryable
        assert failed.input == {"message": "Again"}
        assert list(row.events.order_by("seq").values_list("type", flat=True))[-3:] == [
            "run.started", "message.user", "run.failed"]

        # the session is usable again
        scripted.enqueue("recovered")
        session = ChatAgent.objects.continue_session(session.pk, "Third")
        assert session.status == SessionStatus.IDLE
        assert [m["role"] for m in session.get_context().messages] == ["user", "assistant"] * 2

    def test_failed_start_records_failed_session(self, scripted):
        scripted.enqueue(exc.ModelOverloaded("busy"))
        with pytest.raises(exc.ModelOverloaded) as info:
            ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        session = ChatAgent.objects.get(pk=info.value.session.pk)
        assert session.status == SessionStatus.FAILED
        assert session.get_context().messages == []
        assert session.runs.get().status == RunStatus.FAILED

    def test_unexpected_exception_is_typed(self, scripted):
        scripted.enqueue("a", RuntimeError("boom"))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        with pytest.raises(exc.AgentSessionError) as info:
            ChatAgent.objects.continue_session(session, "x")
        assert info.value.code == "internal_error"
        assert isinstance(info.value.__cause__, RuntimeError)
        assert session.runs.filter(status=RunStatus.FAILED).count() == 1

    @pytest.mark.django_db(transaction=True)
    async def test_async_failure_keeps_context(self, scripted):
        scripted.enqueue("first", exc.ModelUnavailable("500"))
        session = await ChatAgent.objects.astart_session("Hi", instruction_args=ARGS)
        with pytest.raises(exc.ModelUnavailable):
            await ChatAgent.objects.acontinue_session(session.pk, "Again")
        context = await ChatAgent.objects.aget_context(session.pk)
        assert len(context.messages) == 2 and context.turns == 1


def _raw_context(session) -> str:
    table = session._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT context FROM {table} WHERE id = %s",
                       [session._meta.pk.get_db_prep_value(session.pk, connection)])
        return cursor.fetchone()[0]


class TestProcessExit:
    def test_system_exit_is_not_turned_into_an_error(self, scripted):
        """``SystemExit`` in a turn propagates as is; the run is recorded as cancelled and the
        lease freed."""
        scripted.enqueue("first", SystemExit(3))
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        with pytest.raises(SystemExit):
            ChatAgent.objects.continue_session(session.pk, "Again")
        row = ChatAgent.objects.get(pk=session.pk)
        assert row.lease_token is None and len(row.get_context().messages) == 2
        assert row.runs.filter(status=RunStatus.CANCELLED).count() == 1


class TestLease:
    def _abandoned_turn(self, session):
        """What a process killed mid-turn leaves: a held lease and a running run."""
        store = SessionStore(ChatAgent)
        return store.try_begin(session.pk, input={"message": "lost"},
                               user_blocks=[{"type": "text", "text": "lost"}])

    @override_settings(AGENT_SESSION={"TURN_WAIT_SECONDS": 0, "TURN_LEASE_SECONDS": 60})
    def test_busy_session_raises_session_busy(self, scripted):
        scripted.enqueue("a")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        self._abandoned_turn(session)
        with pytest.raises(exc.SessionBusy) as info:
            ChatAgent.objects.continue_session(session, "Again")
        assert info.value.retryable and info.value.retry_after >= 1
        assert len(scripted.requests) == 1

    def test_killed_turn_does_not_block_beyond_lease(self, scripted):
        scripted.enqueue("a", "b")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        with override_settings(AGENT_SESSION={"TURN_LEASE_SECONDS": 0.5,
                                              "TURN_WAIT_SECONDS": 10}):
            turn = self._abandoned_turn(session)
            session = ChatAgent.objects.continue_session(session, "Again")
        assert session.last_output == {"content": "b"}
        stale = AgentRun.objects.get(pk=turn.run_id)
        assert stale.status == RunStatus.FAILED and stale.error["code"] == "interrupted"
        failed = session.events.get(type="run.failed")
        assert failed.run_id == turn.run_id
        # the abandoned input never reached the context
        texts = [b["text"] for m in session.get_context().messages for b in m["content"]]
        assert "lost" not in texts

    def test_expired_lease_is_taken_immediately(self, scripted):
        scripted.enqueue("a", "b")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        self._abandoned_turn(session)
        ChatAgent.objects.filter(pk=session.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1))
        with override_settings(AGENT_SESSION={"TURN_WAIT_SECONDS": 0}):
            session = ChatAgent.objects.continue_session(session, "Again")
        assert session.status == SessionStatus.IDLE

    def test_lost_lease_saves_nothing(self, scripted):
        """A turn whose lease was taken over cannot commit over the new holder."""
        scripted.enqueue("a")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)

        def steal(request):
            ChatAgent.objects.filter(pk=session.pk).update(lease_token=uuid.uuid4())
            return "late reply"
        scripted.enqueue(steal)
        with pytest.raises(exc.LeaseLost):
            ChatAgent.objects.continue_session(session, "Again")
        row = ChatAgent.objects.get(pk=session.pk)
        assert len(row.get_context().messages) == 2
        assert row.runs.filter(status=RunStatus.FAILED).count() == 1


class TestBeginFailures:
    def test_a_lease_naming_no_run_is_taken_over(self, scripted):
        """Regression: a process that died between taking the lease and inserting its run
        (two autocommit statements before they became one transaction) left a lease naming
        no run; the next turn's commit then failed on the run foreign key of its
        ``run.failed`` event. Such a lease is now taken over like any expired one."""
        scripted.enqueue("first", "second")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        ChatAgent.objects.filter(pk=session.pk).update(
            lease_token=uuid.uuid4(), status=SessionStatus.RUNNING,
            lease_expires_at=timezone.now() - timedelta(seconds=1))
        with override_settings(AGENT_SESSION={"TURN_WAIT_SECONDS": 0}):
            session = ChatAgent.objects.continue_session(session.pk, "Again")
        assert session.last_output == {"content": "second"}
        row = ChatAgent.objects.get(pk=session.pk)
        assert row.lease_token is None and row.status == SessionStatus.IDLE
        assert not session.events.filter(type="run.failed").exists()
        assert list(session.runs.values_list("status", flat=True)) == [RunStatus.COMPLETED] * 2

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

        real = Statements._run_params

        def null_input(self, *args, **kwargs):
            params = real(self, *args, **kwargs)
            # input is NOT NULL: the run's INSERT fails in the database, after the lease's
            # UPDATE ran (in its transaction on SQLite, in its statement on PostgreSQL)
            params[[f.name for f in self._run_fields].index("input")] = None
            return params
        monkeypatch.setattr(Statements, "_run_params", null_input)
        with pytest.raises(IntegrityError):
            ChatAgent.objects.continue_session(session.pk, "Again")
        assert ChatAgent.objects.get(pk=session.pk).lease_token is None
        with pytest.raises(IntegrityError):
            ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        assert ChatAgent.objects.count() == 1  # no session born holding an orphan lease


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


class TestTitle:
    def test_a_title_set_during_the_first_turn_is_kept(self, scripted, user):
        """Regression: the automatic title (from the first message) overwrote a title set
        through REST or the admin while the first turn ran."""
        session = ChatAgent.objects.create_session(instruction_args=ARGS, owner=user)

        def rename_meanwhile(request):
            ChatAgent.objects.filter(pk=session.pk).update(title="Chosen by the user")
            return "reply"
        scripted.enqueue(rename_meanwhile)
        ChatAgent.objects.continue_session(session.pk, "What is the weather like?")
        assert ChatAgent.objects.get(pk=session.pk).title == "Chosen by the user"

    def test_an_untitled_session_is_named_by_its_first_message(self, scripted):
        scripted.enqueue("reply")
        session = ChatAgent.objects.start_session("What is the weather like?",
                                                  instruction_args=ARGS)
        assert session.title == "What is the weather like?"
        assert ChatAgent.objects.get(pk=session.pk).title == "What is the weather like?"


class TestQueries:
    def _session_with_history(self, n_messages: int):
        messages = []
        for i in range(n_messages):
            role = "user" if i % 2 == 0 else "assistant"
            messages.append({"role": role, "content": [{"type": "text", "text": "x" * 200}]})
        context = Context(system="s", instruction_args=ARGS, messages=messages, turns=n_messages // 2)
        return ChatAgent.objects.create(context=context.to_dict())

    def _count(self, scripted, session) -> int:
        scripted.enqueue("reply")
        # a process's first turn also looks the model's ContentType up (cached after): the
        # count is of a turn in a running process, whichever test ran before
        ContentType.objects.get_for_model(ChatAgent)
        with CaptureQueriesContext(connection) as queries:
            ChatAgent.objects.continue_session(session.pk, "Hi")
        return len([q for q in queries.captured_queries
                    if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))])

    def test_query_count_is_constant_and_small(self, scripted):
        small = self._count(scripted, self._session_with_history(10))
        large = self._count(scripted, self._session_with_history(1000))
        assert small == large
        # store/statements.py: the lease taken with the row read, the run inserted; then the
        # context, the run and the events written; PostgreSQL fuses each transaction into one
        assert small == (2 if connection.vendor == "postgresql" else 5)

    def test_continue_with_instance_costs_the_same(self, scripted):
        session = self._session_with_history(10)
        scripted.enqueue("reply")
        with CaptureQueriesContext(connection) as queries:
            ChatAgent.objects.continue_session(session, "Hi")
        control = [q for q in queries.captured_queries
                   if q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
        assert len(queries) - len(control) <= 8
        # two transactions: taking the lease with its run, and the commit
        assert len(control) == 4


@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="the fused commit: PostgreSQL only")
def test_the_fused_commit_stores_events_as_insert_events_does():
    """The fused commit sends a turn's events as one JSON array: each event's data is encoded
    on its own and stored as the separate INSERT stores it, a JSON null included."""
    hot = Statements(ChatAgent, "default")
    session = ChatAgent.objects.create(context={})
    run_id, now = uuid.uuid4(), timezone.now()
    AgentRun.objects.create(id=run_id, session_type=ContentType.objects.get_for_model(ChatAgent),
                            session_id=session.pk, status=RunStatus.RUNNING, input={})
    ChatAgent.objects.filter(pk=session.pk).update(lease_token=run_id)
    data = [{"price": Decimal("1.10"), "at": now, "id": run_id, "text": "café ✓",
             "big": 2**70},  # beyond 64 bits: the codec's fallback encodes this one
            {"x": float("nan")},  # orjson: null (the fallback would write NaN)
            None]
    rows = [(1, "a", run_id, data[0]), (2, "b", None, data[1]), (3, "c", run_id, data[2])]
    assert hot.commit_turn(session.pk, run_id=run_id, context={"messages": []}, now=now,
                           usage={}, base=0, version=session.version, title=None, output=None,
                           model="m", iterations=1, duration_ms=1, events=rows, run_usage={},
                           stop_reason=None, cost=None)
    other = ChatAgent.objects.create(context={})
    hot.insert_events(other.pk, rows, now)

    def stored(pk):
        return [(e.seq, e.type, e.run_id, e.data, e.created_at)
                for e in AgentEvent.objects.filter(session_id=pk).order_by("seq")]

    assert stored(session.pk) == stored(other.pk)
    assert stored(session.pk)[0][3]["big"] == 2**70 and stored(session.pk)[1][3] == {"x": None}
    assert stored(session.pk)[2][3] is None and stored(session.pk)[1][2] is None


@pytest.mark.skipif(connection.vendor != "postgresql",
                    reason="psycopg's prepared statements: PostgreSQL only")
class TestPreparedStatements:
    """With ``OPTIONS["prepare_threshold"]`` the hot path's statements are prepared on the
    server (statements.py ``Statements.cursor``); without it nothing is."""

    @pytest.fixture
    def threshold(self):
        connection.ensure_connection()
        raw = connection.connection
        before = raw.prepare_threshold
        yield lambda value: setattr(raw, "prepare_threshold", value)
        raw.prepare_threshold = before
        raw.execute("DEALLOCATE ALL")  # psycopg sees it and forgets its prepared statements

    def _prepared(self) -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            return [row[0] for row in cursor.fetchall()]

    def _turns(self, scripted, session, n: int) -> None:
        for i in range(n):
            scripted.enqueue(f"reply {i}")
            ChatAgent.objects.continue_session(session.pk, f"message {i}")

    def test_turns_are_prepared_once_and_store_the_same(self, scripted, threshold):
        threshold(0)
        scripted.enqueue("reply")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        self._turns(scripted, session, 3)
        prepared = self._prepared()
        # the fused begin (lease, run) and commit (context, run, events) of statements.py
        assert any(s.startswith('WITH s AS (UPDATE "testapp_chatagent" SET "lease_token"')
                   for s in prepared)
        assert any(s.startswith('WITH s AS (UPDATE "testapp_chatagent" SET "context"')
                   for s in prepared)
        assert len(prepared) == len(set(prepared))
        session.refresh_from_db()
        texts = [m["content"][0]["text"] for m in session.context["messages"]]
        assert texts == ["Hi", "reply", "message 0", "reply 0", "message 1", "reply 1",
                         "message 2", "reply 2"]
        assert session.turn_count == 4 and session.lease_token is None
        runs = AgentRun.objects.filter(session_id=session.pk, status=RunStatus.COMPLETED)
        assert runs.count() == 4
        seqs = list(AgentEvent.objects.filter(session_id=session.pk).values_list("seq", flat=True)
                    .order_by("seq"))
        assert seqs == list(range(1, len(seqs) + 1))

    def test_one_commit_statement_whatever_the_number_of_events(self, scripted, threshold):
        """The fused commit sends its events as one JSON array: a turn with a tool call writes more
        events than a plain one through the same prepared statement, each event's data
        stored as a JSON object."""
        threshold(0)
        Order.objects.create(number=42, status="shipped", customer="alice")
        scripted.enqueue(reply(content="Hello"), tool_reply("lookup_order", {"number": 42}),
                         reply(content="Shipped."), reply(content="Bye"))
        session = SupportAgent.objects.start_session({"message": "Hi"}, instruction_args=ARGS)
        counts = []
        for text in ("Where is 42?", "Thanks"):
            before = session.event_seq
            session = SupportAgent.objects.continue_session(session.pk, {"message": text})
            counts.append(session.event_seq - before)
        assert counts[0] > counts[1]  # the tool call and its result are events of their own
        # (the first turn's commit, which also sets the title, is a statement of its own)
        commits = [s for s in self._prepared()
                   if s.startswith('WITH s AS (UPDATE "testapp_supportagent" SET "context"')
                   and '"title"' not in s]
        assert len(commits) == 1 and "jsonb_to_recordset(" in commits[0]
        events = list(AgentEvent.objects.filter(session_id=session.pk).order_by("seq"))
        assert [e.seq for e in events] == list(range(1, session.event_seq + 1))
        assert all(isinstance(e.data, dict) for e in events)
        assert {e.run_id for e in events if e.type == "tool.result"} == {
            session.runs.get(input={"message": "Where is 42?"}).pk}
        result = next(e for e in events if e.type == "tool.result")
        assert result.data["name"] == "lookup_order" and result.session_type_id == ContentType.objects \
            .get_for_model(SupportAgent).pk

    def test_nothing_is_prepared_by_default(self, scripted, threshold):
        threshold(None)
        scripted.enqueue("reply")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        self._turns(scripted, session, 3)
        assert self._prepared() == []

    def test_logged_queries_show_their_sql(self, scripted, threshold):
        threshold(0)
        scripted.enqueue("reply", "again")
        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        with CaptureQueriesContext(connection) as queries:
            ChatAgent.objects.continue_session(session.pk, "again")
        sql = [q["sql"] for q in queries.captured_queries
               if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
        assert len(sql) == 2  # the fused begin and commit, each with its values
        assert all('"again"' in statement for statement in sql)


class TestContextField:
    def test_custom_context_field_and_budget(self, scripted):
        scripted.enqueue(text_reply("a", usage={"input_tokens": 60, "output_tokens": 50}))
        session = PlainAgent.objects.start_session("Hi")
        assert session.state["messages"][1]["content"] == [{"type": "text", "text": "a"}]
        assert session.last_output == {"content": "a"}
        # token_budget = 100 is used up: the next turn is refused before the model is called
        with pytest.raises(exc.TokenBudgetExceeded):
            PlainAgent.objects.continue_session(session, "More")
        assert len(scripted.requests) == 1
        run = session.runs.get(status=RunStatus.FAILED)
        assert run.error["code"] == "token_budget_exceeded"


class TestPublicHelpers:
    def test_create_session_without_a_turn(self, scripted, user):
        session = ChatAgent.objects.create_session(instruction_args=ARGS, owner=user,
                                                   title="Support")
        assert scripted.requests == []
        assert session.get_context().system == "You are a helpful assistant for Acme."
        assert list(session.events.values_list("seq", "type")) == [(1, "session.started")]
        scripted.enqueue("hello")
        session = ChatAgent.objects.continue_session(session, "Hi")
        assert session.title == "Support" and session.event_seq == 6
        with pytest.raises(exc.InvalidInstructionArgs):
            ChatAgent.objects.create_session(instruction_args={})

    def test_validate_input_and_initial_context(self):
        assert ChatAgent.objects.validate_input("hi") == {"message": "hi"}
        with pytest.raises(exc.InvalidInput):
            ChatAgent.objects.validate_input({"message": ""})
        assert ChatAgent.objects.initial_context(ARGS).instruction_args == ARGS

    def test_turn_records(self, scripted):
        seen = []
        scripted.enqueue("a", exc.ModelOverloaded("x"))
        session = ChatAgent.objects.start_session(
            "Hi", instruction_args=ARGS, on_progress=lambda kind, data: seen.append((kind, data)))
        record = session.last_turn
        assert seen[0] == ("run.started", {"run_id": str(record.run_id)})
        assert record.status == "completed" and record.seq == session.event_seq
        assert record.event("message.assistant")["data"]["content"][0]["text"] == "a"
        assert [e["seq"] for e in record.events] == list(range(1, 7))
        with pytest.raises(exc.ModelOverloaded) as info:
            ChatAgent.objects.continue_session(session, "again")
        failed = info.value.turn
        assert failed.status == "failed" and failed.event("run.failed")["seq"] == failed.seq
        assert session.runs.get(pk=failed.run_id).status == RunStatus.FAILED


class TestProgressFailures:
    """A failing progress callback (a gone viewer, a full layer) never fails the turn."""

    def test_sync(self, scripted):
        scripted.enqueue(text_reply("a b c"))

        def broken(kind, data):
            raise ConnectionError("viewer gone")

        session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS,
                                                  on_progress=broken)
        assert session.last_output == {"content": "a b c"}

    @pytest.mark.django_db(transaction=True)
    async def test_async(self, scripted):
        scripted.enqueue(text_reply("a b c"))

        async def broken(kind, data):
            raise ConnectionError("layer down")

        session = await ChatAgent.objects.astart_session("Hi", instruction_args=ARGS,
                                                         on_progress=broken)
        assert session.last_output == {"content": "a b c"}


def test_a_plain_failure_record_keeps_only_numbers_its_columns_hold():
    """``fail(plain=True)`` runs after the database refused the full record, so the numbers
    it writes are clamped to their columns (a negative or oversized count, a cost out of
    range) rather than refused in turn."""
    from decimal import Decimal

    from django_agent_session.store.turns import _storable_numbers

    numbers = {"iterations": 2**40, "cost": Decimal("1e12"), "input_tokens": -5,
               "output_tokens": 2**70, "cache_creation_input_tokens": 3,
               "cache_read_input_tokens": 0}
    assert _storable_numbers(numbers) == {
        "iterations": 2**31 - 1, "cost": None, "input_tokens": 0, "output_tokens": 2**63 - 1,
        "cache_creation_input_tokens": 3, "cache_read_input_tokens": 0}
    kept = {**numbers, "iterations": 2, "cost": Decimal("0.25"), "input_tokens": 7,
            "output_tokens": 1}
    assert _storable_numbers(kept) == kept
    assert _storable_numbers({**kept, "cost": None})["cost"] is None
