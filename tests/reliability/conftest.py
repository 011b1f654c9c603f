"""Helpers of the reliability suite: raw stored state, snapshots, a loopback Messages API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from django_agent_session.checks import session_models
from django_agent_session.models import AgentEvent, AgentRun
from django_agent_session.testing.loopback import LoopbackMessagesServer

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


def raw_context(model: type, pk: Any) -> str:
    """The context column exactly as the database stores it (text), for byte-for-byte checks."""
    field = model._meta.get_field(model.agent_options.context_field)
    table, pk_column = model._meta.db_table, model._meta.pk.column
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {qn(field.column)} FROM {qn(table)} WHERE {qn(pk_column)} = %s",
                       [model._meta.pk.get_db_prep_value(pk, connection)])
        row = cursor.fetchone()
    assert row is not None, f"no {model.__name__} {pk}"
    value = row[0]
    return value if isinstance(value, str) else bytes(value).decode()


SESSION_FIELDS = ("pk", "owner_id", "title", "status", "version", "event_seq", "turn_count",
                  "lease_token", "metadata", "pinned", "input_tokens", "output_tokens")


def snapshot() -> dict[str, Any]:
    """Everything a turn or an API call could change: every session row (with its raw
    context), every run and every event."""
    sessions = {}
    for model in session_models():
        for row in model._base_manager.order_by("pk").values(*SESSION_FIELDS):
            sessions[(model._meta.label, row["pk"])] = {**row,
                                                       "raw": raw_context(model, row["pk"])}
    runs = list(AgentRun.objects.order_by("pk").values("pk", "status", "error", "output"))
    events = list(AgentEvent.objects.order_by("pk").values_list("pk", "session_id", "seq",
                                                                "type"))
    return {"sessions": sessions, "runs": runs, "events": events}


def loopback_settings(server: LoopbackMessagesServer, **extra: Any) -> dict[str, Any]:
    """``AGENT_SESSION`` pointing the real SDK at ``server`` (no SDK retries)."""
    base = dict(getattr(settings, "AGENT_SESSION", {}))
    anthropic = {"BASE_URL": server.base_url, "API_KEY": "test", "MAX_RETRIES": 0,
                 **extra.pop("ANTHROPIC", {})}
    return {**base, "ANTHROPIC": anthropic, **extra}


@pytest.fixture
def loopback() -> Iterator[LoopbackMessagesServer]:
    with LoopbackMessagesServer() as server, \
            override_settings(AGENT_SESSION=loopback_settings(server)):
        yield server
