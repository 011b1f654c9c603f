"""Runs, events and artifacts are found by ``session_id``, never through ``session_type``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from django_agent_session.records import AgentEvent, AgentRun, RunStatus
from django_agent_session.records.artifacts import Artifact
from django_agent_session.store.statements import statements_for
from tests.helpers.plans import query_plan
from tests.testapp.models import ChatAgent

TABLES = [AgentRun._meta.db_table, AgentEvent._meta.db_table, Artifact._meta.db_table]
APP = "django_agent_session"
BEFORE, AFTER = (APP, "0004_event_keys"), (APP, "0005_session_type_unindexed")


def session_type_indexes() -> dict[str, list[str]]:
    """Per table, its plain indexes on ``session_type_id`` alone."""
    with connection.cursor() as cursor:
        return {table: sorted(
            name for name, info in connection.introspection.get_constraints(cursor, table).items()
            if info["index"] and not info["unique"] and info["columns"] == ["session_type_id"])
            for table in TABLES}


@pytest.fixture
def runs_of_other_sessions() -> Iterator[None]:
    session_type = ContentType.objects.get_for_model(ChatAgent)
    AgentRun.objects.bulk_create(
        AgentRun(session_type=session_type, session_id=uuid.uuid4(), status=RunStatus.COMPLETED)
        for _ in range(50))
    yield


@pytest.mark.django_db
def test_no_table_indexes_session_type_alone() -> None:
    assert session_type_indexes() == {table: [] for table in TABLES}


@pytest.mark.django_db
@pytest.mark.usefixtures("runs_of_other_sessions")
def test_the_turns_run_checks_search_the_sessions_runs_by_session_id() -> None:
    """What slowed a SQLite turn to 27 ms at 100,000 stored runs: the planner read every run
    of the model through the ``session_type`` index to find the session's queued ones."""
    statements = statements_for(ChatAgent)
    assert statements is not None
    session = ChatAgent.objects.create(context={})
    pk = statements.db_uuid(session.pk)
    ct = ContentType.objects.get_for_model(ChatAgent).pk
    waiting = [RunStatus.QUEUED, RunStatus.AWAITING_APPROVAL]
    expires = timezone.now() + timedelta(seconds=30)
    checks = {
        "begin": (statements.begin_sql,
                  [statements.db_uuid(uuid.uuid4()), expires, "running", pk, ct, pk, *waiting]),
        "waiting": (statements.waiting_sql, [ct, pk, *waiting, "key"]),
        "next run": (statements.next_run_sql, [ct, pk, *waiting, RunStatus.QUEUED]),
    }
    for name, (sql, params) in checks.items():
        shown = query_plan(sql, params)
        assert not re.search(r"session_type\w*(_idx|_[0-9a-f]{8})\b", shown), (name, shown)
        assert any(index in shown for index in ("agent_run_queue_idx", "agent_run_session_idx",
                                                "agent_run_idempotency_key")), (name, shown)


@pytest.mark.django_db(transaction=True)
def test_the_migration_drops_the_index_and_its_reverse_restores_it() -> None:
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([BEFORE])
        restored = session_type_indexes()
        assert all(len(names) == 1 for names in restored.values()), restored
    finally:
        executor.loader.build_graph()
        executor.migrate([AFTER])
    assert session_type_indexes() == {table: [] for table in TABLES}
