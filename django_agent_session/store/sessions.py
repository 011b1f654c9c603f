"""Writes of a session row outside a turn: insert, edit, reset, delete.

Turns write through :class:`~django_agent_session.store.turns.SessionStore`; everything else a
surface may do to a row (create a conversation, rename it, reset it from the admin, delete it)
is here, so each write keeps the turn lease rule: a change that would race a running turn is
refused, and a column a turn writes is never overwritten by a stale in-memory copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..engine.context import Context
from ..records import AgentRun, EventType, RunStatus, SessionRecord, SessionStatus
from .lease import INTERRUPTED, lease_held, session_busy
from .turns import SessionStore


def insert_session(session: SessionRecord, context: Context | None = None,
                   event: dict[str, Any] | None = None) -> SessionRecord:
    """Insert a new session row (with ``context``, if given) and its ``session.started``
    event, in one transaction. ``IntegrityError`` propagates (an id already taken)."""
    model = type(session)
    if context is not None:
        setattr(session, model.agent_options.context_field, context.to_dict())
    with transaction.atomic():
        session.save(force_insert=True)
        SessionStore(model).append_events(session.pk, [(EventType.SESSION_STARTED, event or {})])
    session.event_seq = 1
    return session


def update_fields(session: SessionRecord, fields: Iterable[str]) -> None:
    """Write only ``fields`` of ``session`` (and ``updated_at``).

    A full ``save()`` would write back every column as it was read, undoing a turn that
    committed in between. Turns write none of the editable columns (title, metadata, pinned,
    owner, extra fields) but the first turn's automatic title, which yields to a title set
    meanwhile.
    """
    session.save(update_fields=[*fields, "updated_at"])


def delete_session(session: SessionRecord) -> None:
    """Delete a session with its runs, events and artifacts, unless a turn holds it."""
    if lease_held(session.lease_token, session.lease_expires_at):
        assert session.lease_expires_at is not None  # a held lease has an expiry
        raise session_busy(session.lease_expires_at,
                           "A turn is running on this session; delete it when the turn has "
                           "finished.")
    session.delete()


def reset_context(session: SessionRecord, *, by: str = "") -> bool:
    """Empty a session's conversation, keeping its system prompt and instruction args.

    Clears messages, context usage, turns and the last output, bumps ``version`` and records a
    ``context.reset`` event. Returns ``False`` (and changes nothing) while a turn holds the
    session's lease. The row's token columns keep what the session has cost so far (its runs
    keep their usage too). A lease left by a crashed turn is taken over and its run failed.
    """
    model = type(session)
    manager = model._base_manager
    field = model.agent_options.context_field
    now = timezone.now()
    row = manager.filter(pk=session.pk).values(field, "lease_token", "lease_expires_at",
                                               "version").first()
    if row is None or lease_held(row["lease_token"], row["lease_expires_at"], now):
        return False
    old = Context.from_dict(row[field])
    fresh = Context(system=old.system, instruction_args=old.instruction_args,
                    metadata=old.metadata)
    with transaction.atomic():
        # compare-and-set on the version and lease read above, as the store takes a lease
        if not manager.filter(pk=session.pk, version=row["version"],
                              lease_token=row["lease_token"]).update(
                **{field: fresh.to_dict()}, version=F("version") + 1, turn_count=0,
                status=SessionStatus.IDLE, lease_token=None, lease_expires_at=None,
                last_activity_at=now, updated_at=now):
            return False
        events: list[tuple[str, dict[str, Any]]] = []
        stale = row["lease_token"]
        if stale is not None and AgentRun.objects.filter(
                pk=stale, status=RunStatus.RUNNING).update(
                status=RunStatus.FAILED, error=INTERRUPTED, ended_at=now):
            events.append((EventType.RUN_FAILED, {"run_id": str(stale), "error": INTERRUPTED}))
        events.append((EventType.CONTEXT_RESET, {"by": by, "messages": len(old.messages),
                                                 "turns": old.turns}))
        SessionStore(model).append_events(session.pk, events)
    return True


__all__ = ["delete_session", "insert_session", "reset_context", "update_fields"]
