"""The lease and status columns: the same Python values everywhere, one stored size on SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_agent_session import exceptions as exc
from django_agent_session.records import SessionStatus
from django_agent_session.testing import text_reply
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db

ARGS = {"company_name": "Acme"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = ("lease_token", "lease_expires_at", "status")
sqlite_only = pytest.mark.skipif(connection.vendor != "sqlite",
                                 reason="SQLite's record format: fixed-size storage is SQLite's")


def stored(pk: uuid.UUID) -> dict[str, tuple[Any, int | None]]:
    """Each lease/status column of the row as the database holds it: its value, and its size
    in bytes (of its text on PostgreSQL; ``None`` for NULL)."""
    table = ChatAgent._meta.db_table
    size = "length(CAST({} AS BLOB))" if connection.vendor == "sqlite" else "octet_length({}::text)"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(f'{c}, ' + size.format(c) for c in COLUMNS)} FROM {table} "
            f"WHERE id = %s", [ChatAgent._meta.pk.get_db_prep_value(pk, connection)])
        row = cursor.fetchone()
    return {c: (row[2 * i], row[2 * i + 1]) for i, c in enumerate(COLUMNS)}


def sizes(pk: uuid.UUID) -> dict[str, int | None]:
    return {column: size for column, (_value, size) in stored(pk).items()}


@sqlite_only
def test_taking_and_releasing_the_lease_leaves_every_column_its_size(scripted):
    """SQLite overwrites a record in place only at the same size; a turn's lease must not
    change it, or the whole context is written before the model is called."""
    session = ChatAgent.objects.create_session(instruction_args=ARGS)
    free = sizes(session.pk)
    during = {}

    def answer(request):  # during the model call
        during.update(sizes(session.pk), running=stored(session.pk)["status"][0].strip())
        return text_reply("hi")

    scripted.enqueue(answer)
    ChatAgent.objects.continue_session(session.pk, "hello")
    assert during.pop("running") == SessionStatus.RUNNING
    assert during == free
    assert all(size for size in free.values()), free  # no NULLs: a NULL has no bytes
    assert sizes(session.pk) == free

    scripted.enqueue(RuntimeError("boom"))  # a failed turn: status "failed", same size
    with pytest.raises(exc.AgentSessionError):
        ChatAgent.objects.continue_session(session.pk, "again")
    assert ChatAgent.objects.get(pk=session.pk).status == SessionStatus.FAILED
    assert sizes(session.pk) == free


@sqlite_only
@pytest.mark.django_db(transaction=True)  # the model's thread reads committed rows
def test_a_queued_run_takes_the_lease_at_the_same_size(loopback, recording):
    """The claim of a queued run (its own statement) leases the row at the same size as a
    turn's lease."""
    session = ChatAgent.objects.create_session(instruction_args=ARGS)
    free = sizes(session.pk)
    during = {}

    def answer(request):  # in the loopback server's thread, during the model call
        try:
            during.update(sizes(session.pk), running=stored(session.pk)["status"][0].strip())
        finally:
            connection.close()
        return "hi"

    loopback.responder = answer
    ChatAgent.objects.continue_session(session.pk, "later", wait=False)
    assert ChatAgent.objects.drain(session.pk) == 1
    assert during.pop("running") == SessionStatus.RUNNING
    assert during == free
    assert sizes(session.pk) == free


def test_python_values_and_lookups_are_the_plain_fields(scripted):
    """None and the status strings come back as they were written; ``isnull``, ``exact=None``,
    the expiry's ``lt``/``lte``/``range`` and the status's exact, ``in`` and pattern lookups
    mean what they mean on plain fields."""
    free = ChatAgent.objects.create_session(instruction_args=ARGS)
    held = ChatAgent.objects.create_session(instruction_args=ARGS)
    token, expires = uuid.uuid4(), timezone.now().replace(microsecond=0) + timedelta(minutes=1)
    ChatAgent.objects.filter(pk=held.pk).update(lease_token=token, lease_expires_at=expires,
                                                status=SessionStatus.RUNNING)

    free.refresh_from_db()
    held.refresh_from_db()
    assert (free.lease_token, free.lease_expires_at, free.status) == (None, None, "idle")
    assert (held.lease_token, held.lease_expires_at, held.status) == (token, expires, "running")
    assert list(ChatAgent.objects.filter(pk=free.pk).values_list(*COLUMNS)) == [
        (None, None, "idle")]

    sessions = ChatAgent.objects.filter(pk__in=[free.pk, held.pk])
    assert set(sessions.filter(lease_token__isnull=True)) == {free}
    assert set(sessions.filter(lease_token=None)) == {free}
    assert set(sessions.filter(lease_expires_at__isnull=True)) == {free}
    assert set(sessions.filter(lease_token__isnull=False)) == {held}
    assert set(sessions.exclude(lease_token=None)) == {held}
    assert set(sessions.filter(lease_token=token)) == {held}
    assert set(sessions.filter(lease_expires_at=expires)) == {held}  # a whole second
    assert set(sessions.filter(lease_expires_at__gt=timezone.now())) == {held}
    assert set(sessions.filter(status="idle")) == {free}
    assert set(sessions.filter(status__in=["running", "failed"])) == {held}
    assert set(sessions.exclude(status=SessionStatus.RUNNING)) == {free}
    # a comparison never matches a free lease, as it never matches NULL
    later = expires + timedelta(hours=1)
    assert set(sessions.filter(lease_expires_at__lt=later)) == {held}
    assert set(sessions.filter(lease_expires_at__lte=expires)) == {held}
    assert set(sessions.filter(lease_expires_at__range=(EPOCH - timedelta(days=1), later))) == {held}
    # pattern lookups see the status, not its storage
    assert set(sessions.filter(status__iexact="IDLE")) == {free}
    assert set(sessions.filter(status__endswith="dle")) == {free}
    assert set(sessions.filter(status__iendswith="NING")) == {held}
    assert set(sessions.filter(status__regex=r"^idle$")) == {free}
    assert set(sessions.filter(status__iregex=r"^IDLE$")) == {free}
    if connection.vendor == "sqlite":  # an expiry at a whole second: as wide as the rest
        assert sizes(held.pk)["lease_expires_at"] == 26


def test_what_each_database_stores():
    """Plain values on PostgreSQL; on SQLite a free lease is a zero token and a past expiry
    of a real one's width, and a status padded to ``running``'s."""
    session = ChatAgent.objects.create_session(instruction_args=ARGS)
    row = stored(session.pk)
    if connection.vendor == "sqlite":  # (its driver parses a "datetime" column's text)
        assert row == {"lease_token": ("0" * 32, 32),
                       "lease_expires_at": (datetime(1970, 1, 1, 0, 0, 0, 1), 26),
                       "status": ("idle   ", 7)}
    else:
        assert row == {"lease_token": (None, None), "lease_expires_at": (None, None),
                       "status": ("idle", 4)}


def test_a_row_written_before_these_fields_is_a_free_idle_session(scripted):
    """A session row that holds NULLs and an unpadded status (written by the plain fields)
    reads as free and idle, matches ``isnull`` and status filters, and takes a turn: the fixed
    SQL's ``lease_token = '0…0'`` does not match NULL, so the ORM path takes it."""
    session = ChatAgent.objects.create_session(instruction_args=ARGS)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {ChatAgent._meta.db_table} SET lease_token = NULL, "
                       f"lease_expires_at = NULL, status = 'idle' WHERE id = %s",
                       [ChatAgent._meta.pk.get_db_prep_value(session.pk, connection)])
    session.refresh_from_db()
    assert (session.lease_token, session.lease_expires_at) == (None, None)
    assert ChatAgent.objects.filter(pk=session.pk, lease_token__isnull=True).exists()
    assert not ChatAgent.objects.filter(pk=session.pk, lease_token__isnull=False).exists()
    assert ChatAgent.objects.filter(pk=session.pk, status=SessionStatus.IDLE).exists()
    assert ChatAgent.objects.filter(pk=session.pk, status__in=["idle", "failed"]).exists()

    scripted.enqueue(text_reply("hi"))
    session = ChatAgent.objects.continue_session(session.pk, "hello")
    assert (session.lease_token, session.turn_count) == (None, 1)
    assert sizes(session.pk)["lease_token"] == (32 if connection.vendor == "sqlite" else None)
