"""The durable run queue: a message is a committed row before anyone is told; keys, order,
the multitask strategies, cancel, and who picks up a queue nobody drains."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.runs.drain import sweep
from django_agent_session.store.statements import fits as plain_model
from django_agent_session.store.statements import statements_for
from django_agent_session.testing.loopback import Reply
from tests.helpers.loopback import loopback_settings
from tests.helpers.threads import in_thread
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)  # other threads see committed rows only

ARGS = {"company_name": "Acme"}
RECORDING = "tests.helpers.executors.Recording"


def new_session(loopback, user=None):
    loopback.enqueue("first answer")
    return ChatAgent.objects.start_session("first", instruction_args=ARGS, owner=user)


def committed(run_id) -> AgentRun | None:
    """The run as another connection sees it (only what was committed)."""
    found: list = []
    thread = threading.Thread(target=in_thread(
        lambda: found.append(AgentRun.objects.filter(pk=run_id).first())))
    thread.start()
    thread.join()
    return found[0]


def user_texts(loopback) -> list[str]:
    return [r.user_text for r in loopback.message_requests]


class TestSubmission:
    def test_wait_false_commits_a_queued_run_and_hands_it_to_the_executor(
            self, loopback, recording):
        session = new_session(loopback)
        run = ChatAgent.objects.continue_session(session.pk, "later", wait=False)

        assert isinstance(run, AgentRun) and run.status == RunStatus.QUEUED
        assert committed(run.pk).status == RunStatus.QUEUED  # a row before the return
        assert recording.calls == [(ChatAgent, str(session.pk))]
        queued = AgentEvent.objects.get(session_id=session.pk, type="run.queued")
        assert queued.run_id == run.pk and queued.seq == run.queued_seq
        assert queued.data["content"] == [{"type": "text", "text": "later"}]
        assert len(loopback.message_requests) == 1  # not run

        loopback.enqueue("later answer")
        assert ChatAgent.objects.drain(session.pk) == 1
        run.refresh_from_db()
        assert run.status == RunStatus.COMPLETED and run.output == {"content": "later answer"}
        assert ChatAgent.objects.get_context(session.pk).turns == 2

    def test_start_session_wait_false_creates_the_session_with_its_message_queued(
            self, loopback, recording):
        run = ChatAgent.objects.start_session("hello", instruction_args=ARGS, wait=False)
        session = ChatAgent.objects.get(pk=run.session_id)
        assert session.status == "idle" and session.lease_token is None
        assert [e.type for e in session.events.order_by("seq")] == ["session.started",
                                                                    "run.queued"]
        loopback.enqueue("hi there")
        ChatAgent.objects.drain(session.pk)
        assert ChatAgent.objects.get(pk=session.pk).last_output == {"content": "hi there"}

    def test_a_key_names_one_message_resubmitting_returns_the_same_run(
            self, loopback, recording):
        session = new_session(loopback)
        first = ChatAgent.objects.submit(session.pk, "once", idempotency_key="k1")
        again = ChatAgent.objects.submit(session.pk, "once", idempotency_key="k1")
        assert first.created and not again.created and again.run.pk == first.run.pk
        assert recording.calls == [(ChatAgent, str(session.pk))]  # dispatched once
        assert AgentEvent.objects.filter(session_id=session.pk, type="run.queued").count() == 1

        loopback.enqueue("answered once")
        ChatAgent.objects.drain(session.pk)
        # a waiting resubmission after the run finished gets its outcome; nothing runs again
        done = ChatAgent.objects.continue_session(session.pk, "once", idempotency_key="k1")
        assert done.last_output == {"content": "answered once"}
        assert done.last_turn.run_id == first.run.pk
        assert user_texts(loopback) == ["first", "once"]
        # the same key on another session is another message
        other = new_session(loopback)
        assert ChatAgent.objects.submit(other.pk, "once", idempotency_key="k1").created

    def test_queued_runs_run_in_submission_order(self, loopback, recording):
        session = new_session(loopback)
        for word in ("one", "two", "three"):
            ChatAgent.objects.continue_session(session.pk, word, wait=False)
            loopback.enqueue(f"re {word}")
        assert ChatAgent.objects.drain(session.pk) == 3
        assert user_texts(loopback) == ["first", "one", "two", "three"]
        runs = AgentRun.objects.filter(session_id=session.pk).order_by("queued_seq")
        assert [r.input["message"] for r in runs if r.queued_seq] == ["one", "two", "three"]

    def test_a_full_queue_is_refused(self, loopback, recording):
        session = new_session(loopback)
        with override_settings(AGENT_SESSION=loopback_settings(
                loopback, EXECUTOR=RECORDING, QUEUE_MAX=2)):
            ChatAgent.objects.continue_session(session.pk, "a", wait=False)
            ChatAgent.objects.continue_session(session.pk, "b", wait=False)
            with pytest.raises(exc.QueueFull):
                ChatAgent.objects.continue_session(session.pk, "c", wait=False)
        assert AgentRun.objects.filter(status=RunStatus.QUEUED).count() == 2

    def test_a_message_queued_during_a_turn_is_handed_on_when_it_ends(
            self, loopback, recording):
        """The turn that held the lease looks for runs queued meanwhile (only when events were
        appended while it ran: a quiet turn pays no extra statement)."""
        session = new_session(loopback)
        loopback.enqueue("re running", "re meanwhile")
        submitted = []

        def on_progress(kind, data):
            if kind == "run.started":
                submitted.append(ChatAgent.objects.submit(session.pk, "meanwhile"))
        ChatAgent.objects.continue_session(session.pk, "running", on_progress=on_progress)
        # the submission's own dispatch found the lease held; the turn handed the queue on
        assert recording.calls == [(ChatAgent, str(session.pk))] * 2
        assert ChatAgent.objects.drain(session.pk) == 1
        assert user_texts(loopback) == ["first", "running", "meanwhile"]

    def test_wait_true_behind_a_queue_runs_after_it(self, loopback, recording):
        """The fast path is taken only when nothing is queued: FIFO holds for every caller."""
        session = new_session(loopback)
        ChatAgent.objects.continue_session(session.pk, "queued first", wait=False)
        loopback.enqueue("re queued", "re waiting")
        after = ChatAgent.objects.continue_session(session.pk, "waiting")
        assert after.last_output == {"content": "re waiting"}
        assert user_texts(loopback) == ["first", "queued first", "waiting"]


def hold_lease(loopback, session) -> threading.Thread:
    """A real turn in another thread, its stream held after two words until the test sets
    the thread's ``release`` (once it has asked for the cancel: a sync turn notices one
    between deltas), so the session's lease is held until then."""
    release = threading.Event()
    loopback.enqueue(Reply.text("slow " * 30, delay=0.05).held_after(2, until=release))
    errors: list = []
    streaming = threading.Event()

    def on_progress(kind, data) -> None:
        if kind == "delta":
            streaming.set()

    def run() -> None:
        try:
            ChatAgent.objects.continue_session(session.pk, "running", on_progress=on_progress)
        except exc.AgentSessionError as error:
            errors.append(error)
    thread = threading.Thread(target=in_thread(run))
    thread.errors = errors  # type: ignore[attr-defined]
    thread.release = release  # type: ignore[attr-defined]
    thread.start()
    assert streaming.wait(10), "the turn never streamed"
    return thread


class TestOwnerCheck:
    """``submit(owner_check=...)``: a surface's access rule asked under the row lock, in the
    transaction that would queue the message (the WebSocket consumer's, per message)."""

    @staticmethod
    def snapshot(pk):
        row = ChatAgent.objects.filter(pk=pk).values("event_seq", "updated_at").get()
        return row, AgentRun.objects.filter(session_id=pk).count(), \
            AgentEvent.objects.filter(session_id=pk).count()

    @pytest.mark.parametrize("queued_before", [False, True], ids=["fixed-sql", "orm"])
    def test_a_refused_owner_writes_nothing(self, loopback, recording, user, other_user,
                                            queued_before):
        session = new_session(loopback, user)
        if queued_before:  # a run waiting: the ORM path decides
            ChatAgent.objects.submit(session.pk, "waiting", idempotency_key="k0")
        before = self.snapshot(session.pk)
        seen = []

        def check(owner_id):
            seen.append(owner_id)
            return owner_id == other_user.pk

        # a new key, none, and (when a run waits) the key of a message already queued: a
        # duplicate does not get its run back past the check
        keys = [None, "k1"] + (["k0"] if queued_before else [])
        for key in keys:
            with pytest.raises(PermissionDenied):
                ChatAgent.objects.submit(session.pk, "not yours", idempotency_key=key,
                                         owner_check=check)
        assert seen == [user.pk] * len(keys)
        assert self.snapshot(session.pk) == before

    @pytest.mark.parametrize("queued_before", [False, True], ids=["fixed-sql", "orm"])
    def test_an_accepted_owner_queues_as_usual(self, loopback, recording, user,
                                               queued_before):
        session = new_session(loopback, user)
        if queued_before:
            ChatAgent.objects.submit(session.pk, "waiting")
        submitted = ChatAgent.objects.submit(session.pk, "mine",
                                             owner_check=lambda owner_id: owner_id == user.pk)
        assert submitted.created and submitted.position == (2 if queued_before else 1)
        assert AgentRun.objects.get(pk=submitted.run.pk).input == {"message": "mine"}

    def test_a_session_without_owner_is_checked_with_none(self, loopback, recording):
        session = new_session(loopback)
        with pytest.raises(PermissionDenied):
            ChatAgent.objects.submit(session.pk, "x", owner_check=lambda owner_id: owner_id)
        assert ChatAgent.objects.submit(
            session.pk, "x", owner_check=lambda owner_id: owner_id is None).created


class TestMultitask:
    def test_reject_refuses_while_a_run_is_running_or_queued(self, loopback, recording):
        session = new_session(loopback)
        ChatAgent.objects.continue_session(session.pk, "queued", wait=False)
        for wait in (True, False):
            with pytest.raises(exc.SessionBusy):
                ChatAgent.objects.continue_session(session.pk, "no", wait=wait,
                                                   multitask="reject")
        assert not AgentRun.objects.filter(input__message="no").exists()

    def test_rollback_drops_the_queue_and_cancels_the_running_turn(self, loopback, recording):
        session = new_session(loopback)
        holder = hold_lease(loopback, session)
        dropped = [ChatAgent.objects.continue_session(session.pk, w, wait=False)
                   for w in ("x", "y")]
        run = ChatAgent.objects.continue_session(session.pk, "instead", wait=False,
                                                 multitask="rollback")
        holder.release.set()
        holder.join(10)
        assert [e.code for e in holder.errors] == ["cancelled"]  # a sync turn, same process
        for old in dropped:
            old.refresh_from_db()
            assert old.status == RunStatus.CANCELLED and old.error["code"] == "rolled_back"
        running = AgentRun.objects.get(input__message="running")
        assert running.status == RunStatus.CANCELLED and running.output["partial_text"]
        loopback.enqueue("the new one")
        assert ChatAgent.objects.drain(session.pk) == 1
        run.refresh_from_db()
        assert run.status == RunStatus.COMPLETED
        assert user_texts(loopback)[-1] == "instead"
        assert ChatAgent.objects.get_context(session.pk).turns == 2  # first + instead

    def test_interrupt_cancels_the_running_turn_and_keeps_the_queue(self, loopback, recording):
        session = new_session(loopback)
        holder = hold_lease(loopback, session)
        kept = ChatAgent.objects.continue_session(session.pk, "kept", wait=False)
        ChatAgent.objects.continue_session(session.pk, "now", wait=False, multitask="interrupt")
        holder.release.set()
        holder.join(10)
        assert [e.code for e in holder.errors] == ["cancelled"]
        loopback.enqueue("re kept", "re now")
        assert ChatAgent.objects.drain(session.pk) == 2
        assert user_texts(loopback)[-2:] == ["kept", "now"]
        kept.refresh_from_db()
        assert kept.status == RunStatus.COMPLETED

    def test_the_agent_declares_the_default(self, loopback, recording, monkeypatch):
        session = new_session(loopback)
        ChatAgent.objects.continue_session(session.pk, "queued", wait=False)
        monkeypatch.setattr(ChatAgent.agent_options, "multitask", "reject")
        with pytest.raises(exc.SessionBusy):
            ChatAgent.objects.continue_session(session.pk, "refused", wait=False)
        with pytest.raises(ValueError, match="multitask must be one of"):
            ChatAgent.objects.continue_session(session.pk, "x", multitask="shout")


class TestCancel:
    def test_cancelling_a_queued_run_means_it_never_runs(self, loopback, recording):
        session = new_session(loopback)
        run = ChatAgent.objects.continue_session(session.pk, "never", wait=False)
        cancelled = ChatAgent.objects.cancel_run(run.pk)
        assert cancelled.status == RunStatus.CANCELLED
        event = AgentEvent.objects.get(session_id=session.pk, type="run.cancelled")
        assert event.run_id == run.pk and event.data["queued"] is True
        assert ChatAgent.objects.drain(session.pk) == 0
        assert user_texts(loopback) == ["first"]
        assert ChatAgent.objects.cancel_run(run.pk).status == RunStatus.CANCELLED  # idempotent

    def test_a_running_turn_in_another_process_sees_the_cancel_flag(self, loopback, recording):
        """Another process only has the database: the turn's heartbeat polls the flag."""
        session = new_session(loopback)
        with override_settings(AGENT_SESSION=loopback_settings(
                loopback, EXECUTOR=RECORDING, CANCEL_CHECK_SECONDS=0.1)):
            holder = hold_lease(loopback, session)
            run = AgentRun.objects.get(status="running")
            AgentRun.objects.filter(pk=run.pk).update(cancel_requested=True)  # as another process
            started = time.monotonic()
            holder.release.set()  # 1.4 s of words left: the heartbeat must see the flag first
            holder.join(10)
            assert time.monotonic() - started < 2
        run.refresh_from_db()
        assert run.status == RunStatus.CANCELLED
        assert ChatAgent._base_manager.get(pk=session.pk).lease_token is None

    def test_unknown_and_finished_runs(self, loopback, recording):
        session = new_session(loopback)
        with pytest.raises(exc.RunNotFound):
            ChatAgent.objects.cancel_run("00000000-0000-0000-0000-000000000000")
        done = AgentRun.objects.get(session_id=session.pk)
        assert ChatAgent.objects.cancel_run(done.pk).status == RunStatus.COMPLETED


class TestPickup:
    def test_the_inline_executor_runs_a_wait_false_turn_in_the_background(self, loopback):
        session = new_session(loopback)
        loopback.enqueue("background answer")
        run = ChatAgent.objects.continue_session(session.pk, "go", wait=False)
        deadline = time.monotonic() + 10
        while AgentRun.objects.get(pk=run.pk).status != RunStatus.COMPLETED:
            assert time.monotonic() < deadline, "the inline executor never ran it"
            time.sleep(0.05)
        assert ChatAgent.objects.get(pk=session.pk).last_output == {
            "content": "background answer"}

    def test_join_waits_for_the_drain_threads(self, loopback):
        from django_agent_session.runs.executors import inline_executor

        session = new_session(loopback)
        loopback.enqueue(Reply.stall(0.5, then="slow answer"))
        run = ChatAgent.objects.continue_session(session.pk, "go", wait=False)
        assert inline_executor().join(10)
        assert AgentRun.objects.get(pk=run.pk).status == RunStatus.COMPLETED

    def test_a_stranded_queue_is_picked_up_by_the_sweep_and_by_the_next_submission(
            self, loopback, recording):
        session = new_session(loopback)
        stranded = ChatAgent.objects.continue_session(session.pk, "stranded", wait=False)
        recording.calls.clear()  # its executor "died": nobody drains it
        assert sweep() == 1 and recording.calls == [(ChatAgent, str(session.pk))]

        loopback.enqueue("re stranded", "re next")
        after = ChatAgent.objects.continue_session(session.pk, "next")  # runs it first
        assert after.last_output == {"content": "re next"}
        stranded.refresh_from_db()
        assert stranded.status == RunStatus.COMPLETED
        assert sweep() == 0

    @pytest.mark.parametrize("waiter", ["sync", "async"])
    def test_a_caller_that_runs_a_queued_run_in_front_of_its_own_streams_it_to_its_viewers(
            self, loopback, recording, waiter):
        """Regression (soak run, #19): a caller waiting behind queued runs runs them first,
        but streamed nothing of them, so a WebSocket viewer whose message it ran never got
        its ``run.status`` frames (351 viewers timed out in the PostgreSQL load)."""
        from asgiref.sync import async_to_sync
        from channels.layers import get_channel_layer

        from django_agent_session.runs.stream import frame_of, group_name

        session = new_session(loopback)
        layer = get_channel_layer()
        channel = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(group_name(ChatAgent, session.pk), channel)
        tab = ChatAgent.objects.continue_session(session.pk, "from a tab", wait=False)
        loopback.enqueue(Reply.text("for the tab", chunk_size=4), "for me")
        if waiter == "sync":
            mine = ChatAgent.objects.continue_session(session.pk, "from Python")
        else:
            async def go():
                return await ChatAgent.objects.acontinue_session(session.pk, "from Python")
            mine = async_to_sync(go)()
        assert mine.last_output == {"content": "for me"}

        async def frames() -> list[dict]:
            out = []
            while True:
                try:
                    out.append(frame_of(await asyncio.wait_for(layer.receive(channel), 1.0)))
                except asyncio.TimeoutError:
                    return out

        received = async_to_sync(frames)()
        assert {f.get("run_id") for f in received} == {str(tab.pk)}  # only the tab's run
        statuses = [f["status"] for f in received if f["type"] == "run.status"]
        assert statuses == ["started", "completed"]
        assert "".join(f["text"] for f in received if f["type"] == "delta") == "for the tab"
        assert [f["type"] for f in received][-2:] == ["message", "run.status"]


def test_a_turn_that_takes_over_fails_every_run_dead_processes_left_running(loopback):
    """Regression (restart benchmark): a turn that took a dead run's lease over and died too
    left the first dead run ``running`` for good; the next turn fails them all."""
    from datetime import timedelta

    from django.contrib.contenttypes.models import ContentType
    from django.utils import timezone

    session = new_session(loopback)
    ct = ContentType.objects.get_for_model(ChatAgent)
    first, second = (AgentRun.objects.create(session_type=ct, session_id=session.pk,
                                             status=RunStatus.RUNNING) for _ in range(2))
    ChatAgent._base_manager.filter(pk=session.pk).update(  # the second died holding the lease
        lease_token=second.pk, lease_expires_at=timezone.now() - timedelta(seconds=1))

    loopback.enqueue("after two crashes")
    assert ChatAgent.objects.continue_session(session.pk, "hello").last_output == {
        "content": "after two crashes"}
    for run in (first, second):
        run.refresh_from_db()
        assert run.status == RunStatus.FAILED and run.error["code"] == "interrupted"
        assert AgentEvent.objects.filter(session_id=session.pk, type="run.failed",
                                         data__run_id=str(run.pk)).count() == 1


class TestRoundTrips:
    """The common case of queueing and of running a queued run is a few fixed statements
    (store/statements.py); anything else takes the ORM path those tests cover above."""

    @staticmethod
    def statements(captured) -> list[str]:
        return [q["sql"] for q in captured.captured_queries
                if q["sql"].startswith(("SELECT", "UPDATE", "INSERT", "WITH"))]

    def test_queueing_on_an_idle_session_then_draining_it(self, loopback, recording):
        session = new_session(loopback)
        postgres = connection.vendor == "postgresql"
        with CaptureQueriesContext(connection) as captured:
            run = ChatAgent.objects.continue_session(session.pk, "later", wait=False,
                                                     idempotency_key="k1")
        # lock the row, look for queued or paused runs and the key, then claim a seq and
        # insert the run and its event (one statement on PostgreSQL)
        assert len(self.statements(captured)) == (3 if postgres else 5)
        assert run.queued_seq == AgentEvent.objects.get(
            session_id=session.pk, type="run.queued").seq
        assert AgentRun.objects.get(pk=run.pk).idempotency_key == "k1"

        loopback.enqueue("later answer")
        with CaptureQueriesContext(connection) as captured:
            assert ChatAgent.objects.drain(session.pk) == 1
        # claim (read the next run, take the lease and start it), commit, look again
        assert len(self.statements(captured)) == (4 if postgres else 7)
        assert AgentRun.objects.get(pk=run.pk).status == RunStatus.COMPLETED

    def test_a_resubmitted_key_and_a_busy_queue_take_the_orm_path(self, loopback, recording):
        session = new_session(loopback)
        first = ChatAgent.objects.continue_session(session.pk, "a", wait=False,
                                                   idempotency_key="k1")
        again = ChatAgent.objects.submit(session.pk, "a", idempotency_key="k1")
        assert again.run.pk == first.pk and not again.created
        second = ChatAgent.objects.submit(session.pk, "b")
        assert second.created and second.position == 2
        assert second.run.queued_seq > first.queued_seq

    def test_a_claim_of_a_run_cancelled_meanwhile_leaves_the_session_as_it_was(
            self, loopback, recording):
        """Between reading the next run and leasing it, a cancel may win: the lease is then
        not taken (PostgreSQL: the statement checks the run is still queued; SQLite: the
        transaction is rolled back), and the session keeps its status."""
        session = new_session(loopback)
        run = ChatAgent.objects.continue_session(session.pk, "later", wait=False)
        ChatAgent.objects.filter(pk=session.pk).update(status="failed")
        ChatAgent.objects.cancel_run(run.pk)

        hot = statements_for(ChatAgent)
        now = timezone.now()
        assert hot.claim(session.pk, run.pk, expires=now + timedelta(seconds=60), now=now) is None
        row = ChatAgent.objects.get(pk=session.pk)
        assert (row.lease_token, row.status) == (None, "failed")
        assert AgentRun.objects.get(pk=run.pk).status == RunStatus.CANCELLED


class TestWhereTheFixedSqlStandsIn:
    @staticmethod
    def model(context, parents=None):
        meta = SimpleNamespace(get_field=lambda name: context, parents=parents or {})
        return SimpleNamespace(_meta=meta, agent_options=SimpleNamespace(context_field="c"))

    def test_a_plain_json_field_on_one_table(self):
        assert plain_model(self.model(models.JSONField()))
        assert plain_model(self.model(models.JSONField(encoder=DjangoJSONEncoder)))

    def test_not_a_context_field_with_its_own_encoding_nor_a_child_table(self):
        class Encrypted(models.JSONField):
            pass

        assert not plain_model(self.model(Encrypted()))
        assert not plain_model(self.model(models.JSONField(decoder=json.JSONDecoder)))
        assert not plain_model(self.model(models.JSONField(), parents={object(): None}))
