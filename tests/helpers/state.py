"""The stored state, read raw: a session's context column as text, and a snapshot of every
session, run and event (to check that a rejected request changed nothing)."""

from __future__ import annotations

from typing import Any

from django.db import connection

from django_agent_session.declaration.registry import session_models
from django_agent_session.models import AgentEvent, AgentRun


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
