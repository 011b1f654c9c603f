"""A turn's hot path as fixed SQL, built once per session model and database.

Profiling a turn (docs/performance.md) found the database running its statements in a small
part of the time and Django's ORM *building* them in most of the rest: compiling the same three
UPDATEs, resolving the same ``F()`` increments and preparing the same values on every turn. So
the five statements of a turn nobody waits behind are written here once, as the ORM would
write them, and only their parameters change:

``begin``
    ``UPDATE session SET lease ... WHERE pk AND lease free AND NOT EXISTS (queued run)
    RETURNING *``: the read and the lease in one round trip (the row comes back as a model
    instance, through the fields' own converters), then ``INSERT`` the running run, in one
    transaction. A row that does not match (a lease held or expired, a queue, no such row)
    falls back to the ORM path, which tells these cases apart.
``commit``
    ``UPDATE session`` (context, usage increments, event counter, lease release) guarded by the
    lease token, the event counter and the version; ``UPDATE run``; one ``INSERT`` of the
    turn's events (a multi-row ``VALUES``; on PostgreSQL one JSON array read with
    ``jsonb_to_recordset``). A guard that does not match falls back to the ORM's retry loop.

The statements keep every guarantee of the ORM path (same columns, same guards, same
transactions); the ORM stays everywhere else. Only PostgreSQL and SQLite (3.35+, for
``RETURNING``) get them; other databases use the ORM path throughout. On PostgreSQL with
psycopg's prepared statements allowed (``OPTIONS["prepare_threshold"]``), they are bound on
the server and prepared, so the server stops parsing and planning them on every turn.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import uuid
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from ..engine.context import USAGE_KEYS
from ..records import AgentEvent, AgentRun, RunStatus, SessionRecord, SessionStatus
from . import codec

#: the run statuses a turn waits behind (as ``try_begin``'s queue check)
WAITING = (RunStatus.QUEUED, RunStatus.AWAITING_APPROVAL)
#: the columns of a run row a turn sets when it inserts the run
RUN_INSERTED = ("id", "session_type", "session_id", "status", "input", "idempotency_key",
                "model", "started_at")
#: the columns of a run row a completed turn sets
RUN_COMPLETED = ("status", "output", "model", "iterations", "ended_at", "duration_ms",
                 *USAGE_KEYS, "stop_reason", "cost")
#: events per INSERT statement (7 parameters each; SQLite allows 32,766 parameters)
EVENTS_PER_INSERT = 500
#: the columns of an event row a turn inserts
EVENT_COLUMNS = ("session_type", "session_id", "seq", "type", "run", "data", "created_at")
#: those that differ between a turn's events (the fused commit sends them as one JSON array)
EVENT_ROWS = ("seq", "type", "run", "data")


class Statements:
    """The hot path's SQL for one session model on one database connection alias."""

    def __init__(self, model: type[SessionRecord], alias: str) -> None:
        self.model, self.alias = model, alias
        connection = connections[alias]  # for its SQL dialect only: connections are per thread
        q = connection.ops.quote_name
        self._json = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
        self._native_uuid = connection.features.has_native_uuid_field
        meta = model._meta
        self._context = _field(model, model.agent_options.context_field)
        context = self._context
        table = q(meta.db_table)
        self._fields = _fields(model)
        self._owner_index = self._fields.index(meta.get_field("owner"))
        self._converters: weakref.WeakKeyDictionary[
            BaseDatabaseWrapper, dict[type[models.Model], list[Any]]] = weakref.WeakKeyDictionary()

        run_table = q(AgentRun._meta.db_table)
        self._run_fields = _fields(AgentRun)
        run_col = {f.name: _column(q, f) for f in self._run_fields}
        session_col = {f.name: _column(q, f) for f in self._fields}
        returning = ", ".join(_column(q, f) for f in self._fields)
        # a free lease: NULLs, or on SQLite the same-size values its fields store for them
        self._expiry_field = _field(model, "lease_expires_at")
        self._status = {status: _field(model, "status").get_db_prep_value(status, connection)
                        for status in SessionStatus.values}
        free_token = _free(_field(model, "lease_token"), connection)
        unleased = (f"{session_col['lease_token']} IS NULL" if free_token == "NULL"
                    else f"{session_col['lease_token']} = {free_token}")
        release = (f"{session_col['lease_token']} = {free_token}, "
                   f"{session_col['lease_expires_at']} = {_free(self._expiry_field, connection)}")

        def lease(guard: str = "") -> str:
            """Lease a session whose lease is free (and ``guard`` holds); the row back."""
            return (f"UPDATE {table} SET {session_col['lease_token']} = %s, "
                    f"{session_col['lease_expires_at']} = %s, {session_col['status']} = %s "
                    f"WHERE {session_col['id']} = %s AND {unleased}{guard} "
                    f"RETURNING {returning}")

        # a turn nobody waits behind (SessionStore.try_begin): no run queued or paused
        self.begin_sql = lease(
            f" AND NOT EXISTS (SELECT 1 FROM {run_table} WHERE "
            f"{run_col['session_type']} = %s AND {run_col['session_id']} = %s AND "
            f"{run_col['status']} IN (%s, %s))")

        # claiming the first queued run (RunQueue.claim): read it, then lease and start it
        self.next_run_sql = (
            f"SELECT {', '.join(run_col[f.name] for f in self._run_fields)} FROM {run_table} "
            f"WHERE {run_col['session_type']} = %s AND {run_col['session_id']} = %s AND "
            f"{run_col['status']} IN (%s, %s) ORDER BY CASE WHEN {run_col['status']} = %s "
            f"THEN 0 ELSE 1 END, {run_col['queued_seq']} LIMIT 1")
        self.lease_sql = lease()
        self.start_run_sql = (
            f"UPDATE {run_table} SET {run_col['status']} = %s, {run_col['started_at']} = %s "
            f"WHERE {run_col['id']} = %s AND {run_col['status']} = %s")
        self.release_sql = (
            f"UPDATE {table} SET {release}, {session_col['status']} = %s "
            f"WHERE {session_col['id']} = %s AND {session_col['lease_token']} = %s")
        # the lease is taken only while the run is still queued, so a cancel that came first
        # leaves the session as it was; a cancel racing the statement is undone after it
        lease_if_queued = lease(f" AND EXISTS (SELECT 1 FROM {run_table} WHERE "
                                f"{run_col['id']} = %s AND {run_col['status']} = %s)")
        self.claim_fused_sql = (
            f"WITH s AS ({lease_if_queued}), r AS ({self.start_run_sql} "
            f"AND EXISTS (SELECT 1 FROM s) RETURNING 1) "
            f"SELECT s.*, (SELECT count(*) FROM r) FROM s")

        # queueing a message (RunQueue.submit) on a session nobody is queued or paused on
        self.lock_sql = (
            f"UPDATE {table} SET {session_col['event_seq']} = {session_col['event_seq']} "
            f"WHERE {session_col['id']} = %s RETURNING {session_col['event_seq']}, "
            f"{session_col['owner']}")
        self.waiting_sql = (
            f"SELECT 1 FROM {run_table} WHERE {run_col['session_type']} = %s AND "
            f"{run_col['session_id']} = %s AND ({run_col['status']} IN (%s, %s) OR "
            f"{run_col['idempotency_key']} = %s) LIMIT 1")
        self.claim_seq_sql = (
            f"UPDATE {table} SET {session_col['event_seq']} = %s, "
            f"{session_col['last_activity_at']} = %s, {session_col['updated_at']} = %s "
            f"WHERE {session_col['id']} = %s")

        self.insert_run_sql = self._insert_sql(AgentRun, self._run_fields, 1)
        self._run_defaults = {f.name: self._static_default(f, connection)
                              for f in self._run_fields if f.name not in RUN_INSERTED}

        sets = [f"{_column(q, context)} = {self._placeholder(context)}",
                f"{session_col['status']} = %s", release,
                f"{session_col['version']} = {session_col['version']} + 1",
                f"{session_col['turn_count']} = {session_col['turn_count']} + 1",
                f"{session_col['last_activity_at']} = %s", f"{session_col['updated_at']} = %s",
                f"{session_col['event_seq']} = %s",
                *(f"{session_col[k]} = {session_col[k]} + %s" for k in USAGE_KEYS)]
        where = (f" WHERE {session_col['id']} = %s AND {session_col['lease_token']} = %s "
                 f"AND {session_col['event_seq']} = %s AND {session_col['version']} = %s")
        self.commit_sql = f"UPDATE {table} SET {', '.join(sets)}{where}"
        title = session_col["title"]
        self.commit_titled_sql = (
            f"UPDATE {table} SET {', '.join(sets)}, "
            f"{title} = CASE WHEN {title} = '' THEN %s ELSE {title} END{where}")

        completed = [_field(AgentRun, name) for name in RUN_COMPLETED]
        self.complete_run_sql = (
            f"UPDATE {run_table} SET "
            + ", ".join(f"{_column(q, f)} = {self._placeholder(f)}" for f in completed)
            + f" WHERE {run_col['id']} = %s")

        self._event_fields = [_field(AgentEvent, name) for name in EVENT_COLUMNS]
        self._insert_events_sql: dict[int, str] = {}

        #: PostgreSQL runs each transaction of a turn as one statement (data-modifying CTEs):
        #: two round trips a turn, and no BEGIN/COMMIT of their own
        self.fused = connection.vendor == "postgresql"
        if self.fused:
            typed = {f.name: f"%s::{_cast(f, connection)}" for f in self._run_fields}
            self.begin_fused_sql = (
                f"WITH s AS ({self.begin_sql}), r AS (INSERT INTO {run_table} "
                f"({', '.join(_column(q, f) for f in self._run_fields)}) SELECT "
                f"{', '.join(typed[f.name] for f in self._run_fields)} FROM s) "
                f"SELECT * FROM s")
            self._commit_fused_sql: dict[bool, str] = {}
            self.enqueue_fused_sql = (
                f"WITH s AS ({self.claim_seq_sql}), r AS ({self.insert_run_sql}) "
                f"{self._events_sql(1)}")

    # -- building ----------------------------------------------------------------------------

    def _placeholder(self, field: models.Field) -> str:
        return self._json if isinstance(field, models.JSONField) else "%s"

    def _insert_sql(self, model: type[models.Model], fields: Sequence[models.Field],
                    rows: int) -> str:
        q = connections[self.alias].ops.quote_name
        row = "(" + ", ".join(self._placeholder(f) for f in fields) + ")"
        return (f"INSERT INTO {q(model._meta.db_table)} "
                f"({', '.join(_column(q, f) for f in fields)}) VALUES {', '.join([row] * rows)}")

    def _static_default(self, field: models.Field,
                        connection: BaseDatabaseWrapper) -> Callable[[], Any]:
        """The database value of ``field``'s default, prepared once unless it is callable."""
        if isinstance(field, models.JSONField):
            default = field.get_default()
            text = None if default is None else codec.dumps(default)
            return lambda: text
        if field.has_default() and callable(field.default):  # (NOT_PROVIDED is a class)
            return lambda: field.get_db_prep_save(field.get_default(), connections[self.alias])
        value = field.get_db_prep_save(field.get_default(), connection)
        return lambda: value

    def _converters_of(self, connection: BaseDatabaseWrapper,
                       model: type[models.Model] | None = None) -> list[Any]:
        """Per column of ``model`` (default: the session model), the ``(converter,
        expression)`` pairs the ORM would apply to it."""
        model = model or self.model
        cache = self._converters.setdefault(connection, {})
        found = cache.get(model)
        if found is None:
            table = model._meta.db_table
            found = cache[model] = []
            for f in _fields(model):
                if f is self._context and getattr(f, "decoder", None) is None:
                    found.append([(_decode_json, None)])
                    continue
                col = f.get_col(table)
                found.append([(converter, col) for converter in (
                    connection.ops.get_db_converters(col) + col.get_db_converters(connection))])
        return found

    def db_uuid(self, value: Any) -> Any:
        """A UUID (or its text) as the database stores it."""
        if value is None:
            return None
        if not isinstance(value, uuid.UUID):
            value = uuid.UUID(str(value))
        return value if self._native_uuid else value.hex

    @property
    def connection(self) -> BaseDatabaseWrapper:
        """This thread's connection (Django's connections are per thread)."""
        return connections[self.alias]

    def cursor(self, connection: BaseDatabaseWrapper | None = None) -> Any:
        """A cursor for the hot path's statements, wrapped as Django wraps its own (query
        logging, ``execute_wrapper``, database errors as ``django.db`` exceptions).

        On PostgreSQL, when the connection allows prepared statements (the database's
        ``OPTIONS["prepare_threshold"]``, which Django leaves unset so that transaction-mode
        poolers keep working), the statements are bound on the server, so psycopg prepares
        them: parsing and planning the fused statements was a third of a short turn. The
        ORM's cursors bind on the client and are never prepared. While queries are logged
        (``DEBUG``, ``CaptureQueriesContext``) the ORM's cursor is used, so the log shows each
        statement with its values as Django logs its own.
        """
        connection = connection or self.connection
        if self.fused and not connection.queries_logged:
            connection.close_if_health_check_failed()
            connection.ensure_connection()
            raw = connection.connection
            if getattr(raw, "prepare_threshold", None) is not None:
                import psycopg  # PostgreSQL only; never imported for SQLite

                connection.validate_thread_sharing()
                with connection.wrap_database_errors:
                    # (the stubs type the argument as the wrapper it returns)
                    return connection.make_cursor(cast(Any, psycopg.Cursor(raw)))
        return connection.cursor()

    def content_type_id(self) -> int:
        """Looked up per call: the ContentType manager caches it, and a test's flush may
        give the model a new id."""
        return ContentType.objects.get_for_model(self.model).pk

    def atomic(self) -> contextlib.AbstractContextManager[Any]:
        """The transaction a hot-path step needs: none for one fused statement in autocommit
        (it is atomic on its own), else ``atomic()`` (a savepoint inside a caller's
        transaction, so a failed statement does not abort it)."""
        if self.fused and not connections[self.alias].in_atomic_block:
            return contextlib.nullcontext()
        return transaction.atomic(using=self.alias)

    def _events_sql(self, rows: int) -> str:
        sql = self._insert_events_sql.get(rows)
        if sql is None:
            sql = self._insert_events_sql[rows] = self._insert_sql(
                AgentEvent, self._event_fields, rows)
        return sql

    def _commit_turn_sql(self, titled: bool) -> str:
        """The session UPDATE, the run UPDATE and the events INSERT as one statement: the
        last two happen only if the first matched its guards.

        The events come as one JSON array (``jsonb_to_recordset``), so the statement is the
        same whatever a turn's number of events: psycopg converts and caches it once (it
        re-parses on every call a statement of over 50 parameters, which a multi-row
        ``VALUES`` of four events was) and the server prepares one plan, not one per count.
        """
        sql = self._commit_fused_sql.get(titled)
        if sql is None:
            connection = connections[self.alias]
            q = connection.ops.quote_name
            cast = {f.name: _cast(f, connection) for f in self._event_fields}
            # (a JSON null read into a jsonb column is SQL NULL: stored as JSON null, as before)
            read = {name: f"v.{name}" for name in EVENT_ROWS} | {
                "data": "coalesce(v.data, 'null'::jsonb)"}
            columns = ", ".join(read.get(name, f"%s::{cast[name]}") for name in EVENT_COLUMNS)
            record = ", ".join(f"{name} {cast[name]}" for name in EVENT_ROWS)
            session = self.commit_titled_sql if titled else self.commit_sql
            sql = self._commit_fused_sql[titled] = (
                f"WITH s AS ({session} RETURNING 1), "
                f"r AS ({self.complete_run_sql} AND EXISTS (SELECT 1 FROM s)), "
                f"e AS (INSERT INTO {q(AgentEvent._meta.db_table)} "
                f"({', '.join(_column(q, f) for f in self._event_fields)}) "
                f"SELECT {columns} FROM jsonb_to_recordset(%s::jsonb) AS v({record}) "
                f"WHERE EXISTS (SELECT 1 FROM s)) SELECT count(*) FROM s")
        return sql

    # -- executing ---------------------------------------------------------------------------

    def begin(self, pk: Any, *, run_id: uuid.UUID, expires: datetime, now: datetime,
              input: dict[str, Any], idempotency_key: str | None, model_name: str) -> Any:
        """Take the lease of an idle session nobody is queued on and insert its running run,
        inside the caller's transaction; the session as read, or ``None`` (the ORM path)."""
        session_pk, connection = self.db_uuid(pk), self.connection
        params = [*self._lease_params(session_pk, run_id, expires, connection),
                  self.content_type_id(), session_pk, *WAITING]
        if self.fused:
            params += self._run_params(session_pk, run_id=run_id, now=now, input=input,
                                       idempotency_key=idempotency_key, model_name=model_name,
                                       connection=connection)
            with self.cursor(connection) as cursor:
                cursor.execute(self.begin_fused_sql, params)
                row = cursor.fetchone()
            return None if row is None else self._instance(row, connection)
        with self.cursor(connection) as cursor:
            cursor.execute(self.begin_sql, params)
            row = cursor.fetchone()
            if row is None:
                return None
            self._insert_run(cursor, session_pk, run_id=run_id, now=now, input=input,
                             idempotency_key=idempotency_key, model_name=model_name)
        return self._instance(row, connection)

    def _lease_params(self, session_pk: Any, run_id: uuid.UUID, expires: datetime,
                      connection: BaseDatabaseWrapper) -> list[Any]:
        """The parameters of the lease UPDATE before its guard's."""
        expiry = self._expiry_field.get_db_prep_value(expires, connection, prepared=True)
        return [self.db_uuid(run_id), expiry, self._status[SessionStatus.RUNNING], session_pk]

    def insert_run(self, pk: Any, *, run_id: uuid.UUID, now: datetime, input: dict[str, Any],
                   idempotency_key: str | None, model_name: str) -> None:
        with self.cursor() as cursor:
            self._insert_run(cursor, self.db_uuid(pk), run_id=run_id, now=now, input=input,
                             idempotency_key=idempotency_key, model_name=model_name)

    def _insert_run(self, cursor: Any, session_pk: Any, *, run_id: uuid.UUID, now: datetime,
                    input: dict[str, Any], idempotency_key: str | None,
                    model_name: str) -> None:
        cursor.execute(self.insert_run_sql, self._run_params(
            session_pk, run_id=run_id, now=now, input=input, idempotency_key=idempotency_key,
            model_name=model_name, connection=cursor.db))

    def _run_params(self, session_pk: Any, *, run_id: uuid.UUID, now: datetime,
                    input: dict[str, Any], idempotency_key: str | None, model_name: str,
                    connection: BaseDatabaseWrapper, status: str = RunStatus.RUNNING,
                    **more: Any) -> list[Any]:
        """The INSERT parameters of a run row; ``more``: database values of other columns
        (a queued run's ``origin``, ``queued_seq``, ``queued_at``)."""
        given = {"id": self.db_uuid(run_id), "session_type": self.content_type_id(),
                 "session_id": session_pk, "status": status,
                 "input": codec.dumps(input), "idempotency_key": idempotency_key,
                 "model": model_name, "started_at": connection.ops.adapt_datetimefield_value(now),
                 **more}
        defaults = self._run_defaults
        return [given[f.name] if f.name in given else defaults[f.name]()
                for f in self._run_fields]

    # -- queueing a message ------------------------------------------------------------------

    def lock(self, pk: Any) -> tuple[int, Any] | None:
        """Lock the session row (inside the caller's transaction); its event counter and
        owner id, or ``None`` when there is no such session."""
        connection = self.connection
        with self.cursor(connection) as cursor:
            cursor.execute(self.lock_sql, [self.db_uuid(pk)])
            row = cursor.fetchone()
        if row is None:
            return None
        owner = row[1]  # converted as the ORM converts the column (a UUID pk's text on SQLite)
        for converter, expression in self._converters_of(connection)[self._owner_index]:
            owner = converter(owner, expression, connection)
        return int(row[0]), owner

    def waiting(self, pk: Any, idempotency_key: str | None) -> bool:
        """Whether runs are queued or paused on the session, or one has ``idempotency_key``."""
        with self.cursor() as cursor:
            cursor.execute(self.waiting_sql, [
                self.content_type_id(), self.db_uuid(pk), RunStatus.QUEUED,
                RunStatus.AWAITING_APPROVAL, idempotency_key])
            return cursor.fetchone() is not None

    def enqueue(self, pk: Any, *, run_id: uuid.UUID, seq: int, now: datetime,
                input: dict[str, Any], idempotency_key: str | None, origin: dict[str, Any],
                model_name: str, event: tuple[str, dict[str, Any]]) -> None:
        """Claim sequence number ``seq`` and insert a queued run with its ``run.queued``
        event ``event`` (inside the caller's transaction, the row locked)."""
        connection = self.connection
        session_pk, moment = self.db_uuid(pk), connection.ops.adapt_datetimefield_value(now)
        claim = [seq, moment, moment, session_pk]
        run = self._run_params(session_pk, run_id=run_id, now=now, input=input,
                               idempotency_key=idempotency_key, model_name=model_name,
                               connection=connection, status=RunStatus.QUEUED,
                               origin=codec.dumps(origin), queued_seq=seq, queued_at=moment)
        events = self._event_params(pk, [(seq, event[0], run_id, event[1])], moment)
        with self.cursor(connection) as cursor:
            if self.fused:
                cursor.execute(self.enqueue_fused_sql, claim + run + events)
                return
            cursor.execute(self.claim_seq_sql, claim)
            cursor.execute(self.insert_run_sql, run)
            cursor.execute(self._events_sql(1), events)

    def commit(self, pk: Any, *, run_id: uuid.UUID, context: dict[str, Any], now: datetime,
               usage: dict[str, Any], seq: int, base: int, version: int,
               title: str | None) -> bool:
        """Write a completed turn to the session row if this turn still holds the lease and
        the row is at ``base`` events and ``version``; whether it did."""
        connection = self.connection
        params = self._commit_params(pk, run_id=run_id, context=context,
                                     moment=connection.ops.adapt_datetimefield_value(now),
                                     usage=usage, seq=seq, base=base, version=version,
                                     title=title)
        with self.cursor(connection) as cursor:
            cursor.execute(self.commit_sql if title is None else self.commit_titled_sql, params)
            return bool(cursor.rowcount)

    def _commit_params(self, pk: Any, *, run_id: uuid.UUID, context: dict[str, Any],
                       moment: Any, usage: dict[str, Any], seq: int, base: int, version: int,
                       title: str | None) -> list[Any]:
        """The parameters of ``commit_sql`` (``commit_titled_sql`` with a ``title``)."""
        params = [codec.dumps(context), self._status[SessionStatus.IDLE], moment, moment, seq,
                  *_tokens(usage)]
        if title is not None:
            params.append(title)
        return params + [self.db_uuid(pk), self.db_uuid(run_id), base, version]

    def _complete_params(self, run_id: uuid.UUID, *, output: Any, model: str, iterations: int,
                         moment: Any, duration_ms: int, usage: dict[str, Any],
                         stop_reason: str | None, cost: Decimal | None) -> list[Any]:
        """The parameters of ``complete_run_sql``."""
        return [RunStatus.COMPLETED, None if output is None else codec.dumps(output), model,
                iterations, moment, duration_ms, *_tokens(usage), stop_reason or "",
                cost, self.db_uuid(run_id)]

    def commit_turn(self, pk: Any, *, run_id: uuid.UUID, context: dict[str, Any],
                    now: datetime, usage: dict[str, Any], base: int, version: int,
                    title: str | None, output: Any, model: str, iterations: int,
                    duration_ms: int, events: list[tuple[int, str, Any, dict[str, Any]]],
                    run_usage: dict[str, Any], stop_reason: str | None,
                    cost: Decimal | None) -> bool:
        """:meth:`commit`, :meth:`complete_run` and :meth:`insert_events` as one statement
        (PostgreSQL): all of it if the guards of :meth:`commit` match, else nothing."""
        connection = self.connection
        moment = connection.ops.adapt_datetimefield_value(now)
        params = [
            *self._commit_params(pk, run_id=run_id, context=context, moment=moment, usage=usage,
                                 seq=base + len(events), base=base, version=version,
                                 title=title),
            *self._complete_params(run_id, output=output, model=model, iterations=iterations,
                                   moment=moment, duration_ms=duration_ms, usage=run_usage,
                                   stop_reason=stop_reason, cost=cost),
            *self._event_records(pk, events, moment)]
        with self.cursor(connection) as cursor:
            cursor.execute(self._commit_turn_sql(title is not None), params)
            row = cursor.fetchone()
        return bool(row and row[0])

    def _event_params(self, pk: Any, rows: list[tuple[int, str, Any, dict[str, Any]]],
                      moment: Any) -> list[Any]:
        session_pk, ct = self.db_uuid(pk), self.content_type_id()
        params: list[Any] = []
        for seq, kind, run_id, data in rows:
            params += [ct, session_pk, seq, kind, self.db_uuid(run_id), codec.dumps(data),
                       moment]
        return params

    def _event_records(self, pk: Any, rows: list[tuple[int, str, Any, dict[str, Any]]],
                       moment: Any) -> list[Any]:
        """The parameters of the fused commit's events: the values all rows share, in
        column order, then the rows' ``EVENT_ROWS`` as one JSON array of objects."""
        shared = {"session_type": self.content_type_id(), "session_id": self.db_uuid(pk),
                  "created_at": moment}
        # each event's data encoded on its own, as insert_events encodes it: one value the
        # codec hands to ``json`` (an integer beyond 64 bits) must not take the others along
        records = ",".join(
            f'{{"seq":{int(seq)},"type":{codec.dumps(kind)},'
            f'"run":{"null" if run_id is None else codec.dumps(str(run_id))},'
            f'"data":{codec.dumps(data)}}}'
            for seq, kind, run_id, data in rows)
        return [*(shared[name] for name in EVENT_COLUMNS if name in shared), f"[{records}]"]

    def complete_run(self, run_id: uuid.UUID, *, output: Any, model: str, iterations: int,
                     now: datetime, duration_ms: int, usage: dict[str, Any],
                     stop_reason: str | None, cost: Decimal | None) -> None:
        connection = self.connection
        with self.cursor(connection) as cursor:
            cursor.execute(self.complete_run_sql, self._complete_params(
                run_id, output=output, model=model, iterations=iterations,
                moment=connection.ops.adapt_datetimefield_value(now), duration_ms=duration_ms,
                usage=usage, stop_reason=stop_reason, cost=cost))

    def insert_events(self, pk: Any, rows: list[tuple[int, str, Any, dict[str, Any]]],
                      now: datetime) -> None:
        """Insert ``(seq, type, run_id, data)`` rows of one session, ``EVENTS_PER_INSERT`` a
        statement."""
        connection = self.connection
        moment = connection.ops.adapt_datetimefield_value(now)
        with self.cursor(connection) as cursor:
            for start in range(0, len(rows), EVENTS_PER_INSERT):  # under SQLite's parameter cap
                chunk = rows[start:start + EVENTS_PER_INSERT]
                cursor.execute(self._events_sql(len(chunk)), self._event_params(pk, chunk, moment))

    def _instance(self, row: Sequence[Any], connection: BaseDatabaseWrapper,
                  model: type[models.Model] | None = None) -> Any:
        model = model or self.model
        values = []
        for value, converters in zip(row, self._converters_of(connection, model), strict=True):
            for converter, expression in converters:
                value = converter(value, expression, connection)
            values.append(value)
        return model.from_db(self.alias, _attnames(model), values)

    # -- claiming a queued run ---------------------------------------------------------------

    def next_run(self, pk: Any) -> AgentRun | None:
        """The run a claim would take: a paused one first (its decision goes first), else the
        oldest queued one."""
        connection = self.connection
        session_pk = self.db_uuid(pk)
        with self.cursor(connection) as cursor:
            cursor.execute(self.next_run_sql, [
                self.content_type_id(), session_pk, RunStatus.QUEUED,
                RunStatus.AWAITING_APPROVAL, RunStatus.AWAITING_APPROVAL])
            row = cursor.fetchone()
        return None if row is None else self._instance(row, connection, AgentRun)

    def claim(self, pk: Any, run_id: uuid.UUID, *, expires: datetime, now: datetime) -> Any:
        """Lease a free session to queued run ``run_id`` and start the run; the session as
        read, or ``None`` (the lease is not free, or the run is no longer queued)."""
        connection = self.connection
        session_pk, run = self.db_uuid(pk), self.db_uuid(run_id)
        moment = connection.ops.adapt_datetimefield_value(now)
        lease = self._lease_params(session_pk, run_id, expires, connection)
        start = [RunStatus.RUNNING, moment, run, RunStatus.QUEUED]
        if self.fused and not connection.in_atomic_block:
            with self.cursor(connection) as cursor:
                cursor.execute(self.claim_fused_sql, lease + [run, RunStatus.QUEUED] + start)
                row = cursor.fetchone()
                if row is None:
                    return None
                if not row[-1]:  # cancelled meanwhile: give the lease back
                    cursor.execute(self.release_sql,
                                   [self._status[SessionStatus.IDLE], session_pk, run])
                    return None
            return self._instance(row[:-1], connection)
        with transaction.atomic(using=self.alias), self.cursor(connection) as cursor:
            cursor.execute(self.lease_sql, lease)
            row = cursor.fetchone()
            if row is None:
                return None
            cursor.execute(self.start_run_sql, start)
            if not cursor.rowcount:  # cancelled meanwhile: give the lease back
                transaction.set_rollback(True, using=self.alias)
                return None
        return self._instance(row, connection)


def _cast(field: models.Field, connection: BaseDatabaseWrapper) -> str:
    """The type a parameter is cast to in ``INSERT … SELECT`` (PostgreSQL): text columns to
    plain ``varchar``, so a value too long for the column is refused as the ORM's would be
    (a cast to ``varchar(n)`` would cut it silently)."""
    if isinstance(field, models.CharField):
        return "varchar"
    return str(field.cast_db_type(connection))


def _free(field: models.Field, connection: BaseDatabaseWrapper) -> str:
    """The SQL of ``field``'s value for a free lease: ``NULL``, or the constant it stores for
    ``None`` on this database (records/fields.py)."""
    value = field.get_db_prep_value(None, connection)
    if value is None:
        return "NULL"
    assert isinstance(value, str) and "'" not in value, value  # a fixed, known constant
    return f"'{value}'"


def _fields(model: type[models.Model]) -> list[models.Field]:
    return cast("list[models.Field]", list(model._meta.concrete_fields))


@functools.cache
def _attnames(model: type[models.Model]) -> list[str]:
    """The attribute names ``Model.from_db`` takes a row's values in (built once)."""
    return [f.attname for f in _fields(model)]


def _tokens(usage: dict[str, Any]) -> list[int]:
    return [int(usage.get(name) or 0) for name in USAGE_KEYS]


def _field(model: type[models.Model], name: str) -> models.Field:
    return cast("models.Field", model._meta.get_field(name))


def _column(quote: Callable[[str], str], field: models.Field) -> str:
    return quote(cast(str, field.column))


def _decode_json(value: Any, expression: Any, connection: BaseDatabaseWrapper) -> Any:
    return codec.loads(value) if isinstance(value, (str, bytes)) else value


_cache: dict[tuple[type[SessionRecord], str], Statements | None] = {}


def statements_for(model: type[SessionRecord]) -> Statements | None:
    """The statements of ``model`` on the database it writes to; ``None`` where that
    database has no ``UPDATE ... RETURNING`` (the ORM path serves it)."""
    alias = router.db_for_write(model)
    key = (model, alias)
    try:
        return _cache[key]
    except KeyError:
        connection = connections[alias]
        supported = connection.vendor in ("postgresql", "sqlite") and (
            connection.vendor != "sqlite" or sqlite3.sqlite_version_info >= (3, 35))
        found = _cache[key] = Statements(model, alias) if supported and fits(model) else None
        return found


def fits(model: type[SessionRecord]) -> bool:
    """Whether the statements can stand in for the ORM on ``model``: one table (no
    multi-table inheritance) and a context column that is a plain ``JSONField`` with the
    encoder the codec imitates (a subclass may encrypt or compress its value)."""
    context = model._meta.get_field(model.agent_options.context_field)
    return (not model._meta.parents and type(context) is models.JSONField
            and getattr(context, "encoder", None) in (None, DjangoJSONEncoder)
            and getattr(context, "decoder", None) is None)
