"""``manage.py agent_session_sweep`` hands a stranded queue to the executor, which runs it."""

from __future__ import annotations

import io
import time
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from django_agent_session.models import AgentRun, RunStatus
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_sweep_command_runs_a_stranded_queue(loopback):
    loopback.enqueue("first answer")
    session = ChatAgent.objects.start_session("first", instruction_args={"company_name": "A"})
    with override_settings(AGENT_SESSION=loopback_settings(
            loopback, EXECUTOR="tests.helpers.executors.Recording")):
        stranded = ChatAgent.objects.continue_session(session.pk, "stranded", wait=False)
    loopback.enqueue("picked up")

    out = io.StringIO()
    call_command("agent_session_sweep", stdout=out)  # the inline executor: a drain thread

    assert out.getvalue().strip() == "Handed 1 stranded queue(s) to the executor."
    deadline = time.monotonic() + 10
    while AgentRun.objects.get(pk=stranded.pk).status != RunStatus.COMPLETED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    call_command("agent_session_sweep", stdout=out)
    assert out.getvalue().strip().endswith("Handed 0 stranded queue(s) to the executor.")


class Broken:
    def dispatch(self, model, session_pk, *, after=None):
        raise ConnectionError("the task backend is down")


def test_a_failing_executor_does_not_fail_the_committed_submission(loopback, caplog):
    loopback.enqueue("first answer")
    session = ChatAgent.objects.start_session("first", instruction_args={"company_name": "A"})
    with override_settings(AGENT_SESSION=loopback_settings(
            loopback, EXECUTOR=f"{__name__}.Broken")):
        run = ChatAgent.objects.continue_session(session.pk, "kept", wait=False)
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED  # committed, for the sweep
    assert "the task backend is down" in caplog.text


def test_stranded_finds_the_sessions_with_queued_runs_from_the_runs():
    """The sweep reads the queued runs (few, indexed by status) and looks their sessions up by
    primary key: it scanned every session of the model on SQLite (67 ms at 20,000)."""
    from django.contrib.contenttypes.models import ContentType
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_agent_session.runs.drain import stranded
    from tests.helpers.plans import query_plan

    session_type = ContentType.objects.get_for_model(ChatAgent)
    idle, busy, done = (ChatAgent.objects.create(context={}) for _ in range(3))
    ChatAgent.objects.filter(pk=busy.pk).update(
        lease_token=uuid.uuid4(), lease_expires_at=timezone.now() + timedelta(minutes=1))
    for session, status in ((idle, RunStatus.QUEUED), (busy, RunStatus.QUEUED),
                            (done, RunStatus.COMPLETED)):
        AgentRun.objects.create(session_type=session_type, session_id=session.pk, status=status)

    with CaptureQueriesContext(connection) as captured:
        assert stranded(ChatAgent) == [idle.pk]
    assert stranded(ChatAgent, idle.pk) == [idle.pk]
    assert stranded(ChatAgent, busy.pk) == stranded(ChatAgent, done.pk) == []

    (sql,) = [q["sql"] for q in captured.captured_queries
              if ChatAgent._meta.db_table in q["sql"]]
    shown = query_plan(sql)
    table = ChatAgent._meta.db_table
    by_pk = (f"SEARCH {table} USING INDEX sqlite_autoindex_{table}_1 (id=?)"
             if connection.vendor == "sqlite" else f"Index Scan using {table}_pkey on {table}")
    assert by_pk in shown, shown
