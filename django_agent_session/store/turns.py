"""Persistence of a turn: the lease, the run row, the events and the one atomic commit.

Only this module (and ``store.queue`` for queued runs) writes the session row during a turn.
The protocol (docs/architecture.md, "The path of one turn"):

1. ``try_begin`` (nothing queued: the fast path) or ``RunQueue.claim``: read the row, then take
   the lease with one conditional UPDATE that also checks ``version`` (so the row just read is
   still current: no reload), and insert (or start) the run row, in one transaction.
2. The model is called by the engine, outside any transaction.
3. ``commit``: one transaction writes the context, usage totals (``F()``), event counter, the
   lease release (only if this caller still holds it), the finished run and its events.
4. ``fail``: the context column is not written at all; the run is failed and the lease freed.
   ``pause``: the same for a turn waiting for approvals, which keeps where it goes on.

A lease left by a crashed process expires; the next turn takes it over and fails every run
the dead processes left ``running``.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.utils import timezone

from .. import exceptions as exc
from ..conf import agent_settings
from ..engine.context import USAGE_KEYS, Context, add_usage, storable
from ..engine.pricing import add_cost
from ..engine.turn import ResumePoint, SideRun, SideTotals, TurnPaused, TurnResult, TurnState
from ..records import (
    AgentEvent,
    AgentRun,
    EventType,
    RunKind,
    RunStatus,
    SessionRecord,
    SessionStatus,
)
from . import titles
from .lease import INTERRUPTED, lease_deadline, lease_held, lease_remaining
from .statements import Statements, statements_for
from .titles import TITLE_LENGTH

#: turns whose spend never reached the context
LOST = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INCOMPLETE, RunStatus.REFUSED)


@dataclass
class TurnRecord:
    """What one finished turn wrote: set on the session (``session.last_turn``) after a commit
    and on the exception after a failure, so surfaces can report it without reading it back."""

    run_id: uuid.UUID
    status: str
    events: list[dict[str, Any]]
    usage: dict[str, int]

    @property
    def seq(self) -> int:
        """The sequence number of the turn's last event."""
        return self.events[-1]["seq"] if self.events else 0

    def event(self, kind: str) -> dict[str, Any] | None:
        """The turn's last event of ``kind``."""
        return next((e for e in reversed(self.events) if e["type"] == kind), None)


@dataclass
class Turn:
    """The bookkeeping of one turn between ``begin`` and ``commit``/``fail``."""

    session: Any
    run_id: uuid.UUID
    started_at: datetime
    lease_expires_at: datetime
    input: dict[str, Any]
    user_blocks: list[dict[str, Any]]
    stale_run_id: uuid.UUID | None = None
    #: the ``ref`` of that run, whose end viewers never heard of (its process died)
    stale_ref: str | None = None
    #: every run left ``running`` by dead processes (the lease's, and any a turn that took
    #: it over and died too left behind): this turn records them all ``interrupted``
    stale_runs: list[Any] = field(default_factory=list)
    pending_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    idempotency_key: str | None = None
    #: set when a cancel was requested (``cancel_run``); a sync turn stops at its next step
    cancel_event: threading.Event = field(default_factory=threading.Event)
    #: what a failed or cancelled turn wrote (set by ``fail``'s caller)
    record: TurnRecord | None = None
    #: who submitted the run (``AgentRun.origin``)
    origin: dict[str, Any] = field(default_factory=dict)
    #: events were appended to the session while the turn ran (a submission queues its run
    #: with a ``run.queued`` event): only then can a run be waiting when it ends
    events_appended: bool = False
    #: a paused turn going on (its run's ``pause``, with the decisions)
    resume: ResumePoint | None = None
    #: the context version the paused turn was built on
    resume_version: int | None = None
    #: progress frames its viewers were sent so far (numbered ``n`` by whoever streams the
    #: run): kept across a pause, so a resumed run's frames go on numbering after them
    progress_frames: int = 0

    @property
    def opening(self) -> tuple[str, dict[str, Any]]:
        """The event a turn's events start with: ``run.started``, or ``run.resumed``."""
        kind = EventType.RUN_RESUMED if self.resume is not None else EventType.RUN_STARTED
        return kind, {"run_id": str(self.run_id)}

    @property
    def ref(self) -> str:
        """The submitter's name for the message, else the run id (as ``AgentRun.ref``)."""
        return str(self.origin.get("ref") or self.run_id)

    @property
    def elapsed_ms(self) -> int:
        return int((timezone.now() - self.started_at).total_seconds() * 1000)


class SessionStore:
    """Lease, run and event bookkeeping for one concrete session model."""

    def __init__(self, model: type[SessionRecord]) -> None:
        self.model = model
        self.context_field: str = model.agent_options.context_field

    @property
    def content_type(self) -> ContentType:
        return ContentType.objects.get_for_model(self.model)

    # -- begin -------------------------------------------------------------------------------

    def create(self, *, context: Context, owner: Any, title: str, input: dict[str, Any],
               user_blocks: list[dict[str, Any]], idempotency_key: str | None = None) -> Turn:
        """Insert a new session that is born holding its first turn's lease."""
        now = timezone.now()
        run_id = uuid.uuid4()
        expires = lease_deadline(now)
        session = self.model(owner=owner, title=title[:TITLE_LENGTH],
                             status=SessionStatus.RUNNING, lease_token=run_id,
                             lease_expires_at=expires, created_at=now,
                             last_activity_at=now)
        setattr(session, self.context_field, context.to_dict())
        turn = Turn(session, run_id, now, expires, input, user_blocks,
                    pending_events=[(EventType.SESSION_STARTED, {})],
                    idempotency_key=idempotency_key)
        with transaction.atomic():  # never a session holding a lease without its run
            session.save(force_insert=True)
            self._insert_run(turn)
        return turn

    def try_begin(self, pk: Any, *, input: dict[str, Any], user_blocks: list[dict[str, Any]]
                  ) -> Turn | float:
        """Take the lease and insert a running run, if the lease is free and no run is queued
        (the fast path of a turn nobody waits behind); otherwise return the seconds until the
        lease may be free (``0.0``: free, but runs are queued, so submit to the queue)."""
        hot = statements_for(self.model)
        if hot is not None:  # an idle session nobody waits on: one round trip (statements.py)
            now, run_id = timezone.now(), uuid.uuid4()
            expires = lease_deadline(now)
            with hot.atomic():  # PostgreSQL: one statement; SQLite: two, in one transaction
                session = hot.begin(pk, run_id=run_id, expires=expires, now=now, input=input,
                                    idempotency_key=None,
                                    model_name=self.model.agent_options.model_name)
            if session is not None:
                return Turn(session, run_id, now, expires, input, user_blocks)
        queued = AgentRun.objects.filter(  # a paused run is in line too: it goes on first
            session_type=self.content_type, session_id=OuterRef("pk"),
            status__in=(RunStatus.QUEUED, RunStatus.AWAITING_APPROVAL))
        for _ in range(5):  # a lost race on the conditional UPDATE: read again
            session = self.model._base_manager.filter(pk=pk).annotate(
                queue_waiting=Exists(queued)).first()
            if session is None:
                raise exc.SessionNotFound(f"No {self.model.__name__} with id {pk}.")
            now = timezone.now()
            if lease_held(session.lease_token, session.lease_expires_at, now):
                assert session.lease_expires_at is not None  # a held lease has an expiry
                return lease_remaining(session.lease_expires_at, now)
            if session.queue_waiting:
                return 0.0
            run_id = uuid.uuid4()
            expires = lease_deadline(now)
            stale, stale_ref, dead = self.dead_runs(session)
            turn = Turn(session, run_id, now, expires, input, user_blocks, stale_run_id=stale,
                        stale_ref=stale_ref, stale_runs=dead)
            with transaction.atomic():  # never a lease naming no run, even if the process dies
                taken = self.model._base_manager.filter(
                    pk=pk, version=session.version, lease_token=session.lease_token,
                ).update(lease_token=run_id, lease_expires_at=expires,
                         status=SessionStatus.RUNNING)
                if taken:
                    self._insert_run(turn)
            if taken:
                session.lease_token, session.lease_expires_at = run_id, expires
                session.status = SessionStatus.RUNNING
                return turn
        return agent_settings.TURN_POLL_SECONDS

    def _insert_run(self, turn: Turn) -> None:
        hot = statements_for(self.model)
        if hot is not None:
            hot.insert_run(turn.session.pk, run_id=turn.run_id, now=turn.started_at,
                           input=turn.input, idempotency_key=turn.idempotency_key,
                           model_name=turn.session.agent_options.model_name)
            return
        AgentRun.objects.create(
            id=turn.run_id, session_type=self.content_type, session_id=turn.session.pk,
            status=RunStatus.RUNNING, input=turn.input, idempotency_key=turn.idempotency_key,
            model=turn.session.agent_options.model_name, started_at=turn.started_at,
        )

    def renew(self, turn: Turn, *, force: bool = False) -> None:
        """Extend the lease of a running turn; raise :class:`LeaseLost` if it was taken over.

        Between model calls it renews once half the lease is used; the heartbeat
        (``store.heartbeat``) renews with ``force`` while a call or a tool is in flight.
        """
        now = timezone.now()
        half = timedelta(seconds=agent_settings.TURN_LEASE_SECONDS / 2)
        if not force and turn.lease_expires_at - now > half:
            return
        expires = lease_deadline(now)
        if not self.model._base_manager.filter(
                pk=turn.session.pk, lease_token=turn.run_id).update(lease_expires_at=expires):
            raise exc.LeaseLost("The session's lease was taken over during the turn.")
        turn.lease_expires_at = expires

    # -- commit ------------------------------------------------------------------------------

    def commit(self, turn: Turn, context: Context, result: TurnResult) -> Any:
        """Store the turn atomically; returns the session updated in memory."""
        session = turn.session
        now = timezone.now()
        new_context = Context(
            system=context.system, instruction_args=context.instruction_args,
            messages=result.messages, usage=add_usage(context.usage, result.all_usage),
            turns=context.turns + 1, last_output=result.output, metadata=context.metadata,
            cost=add_cost(context.cost, result.all_cost), tokens=result.tokens,
            compactions=context.compactions + result.compactions,
        )
        run_events = [
            turn.opening,
            *result.events,
            (EventType.USAGE, dict(result.usage)),
            (EventType.RUN_COMPLETED, {"run_id": str(turn.run_id), "output": result.output,
                                       "iterations": result.iterations,
                                       "stop_reason": result.stop_reason,
                                       "cost": _money(result.cost)}),
        ]
        events = self._stale_events(turn) + turn.pending_events + run_events
        stored = new_context.to_dict()
        title = None
        if not session.title:
            # only if still untitled: a title set (REST, admin) while the turn ran wins
            title = session.title = _title_from(turn.user_blocks)
        hot = statements_for(self.model)
        fused = (hot is not None and hot.fused and not turn.stale_runs
                 and not result.side_runs)
        if fused and hot is not None and self._commit_fused(hot, turn, stored, events, result,
                                                            now, title):
            pass  # one statement wrote it all (PostgreSQL)
        else:  # after a fused statement that did not match, its guards would not either
            self._commit_in_transaction(turn, None if fused else hot, stored, events, result,
                                        now, title)
        self._mirror(turn, stored, events, result, now)
        if title is not None and session.agent_options.title == "model":
            titles.schedule(self, session.pk, title, result.messages)
        return session

    def _commit_values(self, stored: dict[str, Any], result: TurnResult, now: datetime,
                       title: str | None) -> dict[str, Any]:
        """The ORM path's UPDATE of a completed turn (``statements.commit`` is its SQL)."""
        values: dict[str, Any] = {
            self.context_field: stored,
            "status": SessionStatus.IDLE,
            "lease_token": None, "lease_expires_at": None,
            "version": F("version") + 1,
            "turn_count": F("turn_count") + 1,
            "last_activity_at": now, "updated_at": now,
            **{name: F(name) + int(result.all_usage.get(name) or 0) for name in USAGE_KEYS},
        }
        if title is not None:
            values["title"] = Case(When(title="", then=Value(title)), default=F("title"))
        return values

    def _commit_fused(self, hot: Statements, turn: Turn, stored: dict[str, Any],
                      events: list[tuple[str, dict[str, Any]]], result: TurnResult,
                      now: datetime, title: str | None) -> bool:
        session, base = turn.session, turn.session.event_seq
        with hot.atomic():
            return hot.commit_turn(
                session.pk, run_id=turn.run_id, context=stored, now=now,
                usage=result.all_usage, base=base, version=session.version, title=title,
                output=result.output, model=result.model, iterations=result.iterations,
                duration_ms=turn.elapsed_ms, events=self._event_rows(base, events, turn),
                run_usage=result.usage, stop_reason=result.stop_reason, cost=result.cost)

    def _commit_in_transaction(self, turn: Turn, hot: Statements | None,
                               stored: dict[str, Any], events: list[tuple[str, dict[str, Any]]],
                               result: TurnResult, now: datetime, title: str | None) -> None:
        session = turn.session
        with transaction.atomic():
            # the version too: a rewind may write once the lease expired (leaving it in place)
            base = session.event_seq
            if hot is None or not hot.commit(
                    session.pk, run_id=turn.run_id, context=stored,
                    now=now, usage=result.all_usage, seq=base + len(events), base=base,
                    version=session.version, title=title):
                base = self._claim_seq(turn, len(events),
                                       self._commit_values(stored, result, now, title),
                                       version=session.version)
            self._fail_stale_run(turn, now)
            if hot is not None:
                hot.complete_run(turn.run_id, output=result.output, model=result.model,
                                 iterations=result.iterations, now=now,
                                 duration_ms=turn.elapsed_ms, usage=result.usage,
                                 stop_reason=result.stop_reason, cost=result.cost)
            else:
                AgentRun.objects.filter(pk=turn.run_id).update(
                    status=RunStatus.COMPLETED, output=result.output, model=result.model,
                    iterations=result.iterations, ended_at=now, duration_ms=turn.elapsed_ms,
                    stop_reason=result.stop_reason or "", cost=result.cost,
                    **{name: int(result.usage.get(name) or 0) for name in USAGE_KEYS},
                )
            self._insert_side_runs(turn, result.side_runs, now)
            self._insert_events(session.pk, base, events, turn)
        session.event_seq = base  # as claimed: _mirror adds the turn's events

    def _mirror(self, turn: Turn, stored: dict[str, Any],
                events: list[tuple[str, dict[str, Any]]], result: TurnResult,
                now: datetime) -> None:
        """Mirror the committed UPDATE in memory, so callers need no reload."""
        session, base = turn.session, turn.session.event_seq
        session.last_turn = TurnRecord(turn.run_id, RunStatus.COMPLETED,
                                       _numbered(base, events), dict(result.usage))
        setattr(session, self.context_field, stored)
        session.status = SessionStatus.IDLE
        session.lease_token = session.lease_expires_at = None
        session.version += 1
        session.turn_count += 1
        session.event_seq = base + len(events)
        session.last_activity_at = session.updated_at = now
        usage = result.all_usage
        for name in USAGE_KEYS:
            setattr(session, name, getattr(session, name) + int(usage.get(name) or 0))

    def _claim_seq(self, turn: Turn, count: int, values: dict[str, Any],
                   version: int | None = None) -> int:
        """Write ``values`` to the session row if this turn still holds the lease (and the row
        is still at ``version``, when given), claiming ``count`` event sequence numbers;
        returns the last seq before them."""
        manager = self.model._base_manager
        base = turn.session.event_seq
        current = {} if version is None else {"version": version}
        while True:
            if manager.filter(pk=turn.session.pk, lease_token=turn.run_id, event_seq=base,
                              **current).update(event_seq=base + count, **values):
                return base
            # someone appended events meanwhile, or the lease is gone: look again
            turn.events_appended = True
            row = manager.filter(pk=turn.session.pk).values("lease_token", "event_seq",
                                                            "version").first()
            if row is None or row["lease_token"] != turn.run_id:
                raise exc.LeaseLost("The session's lease expired and was taken over; "
                                    "this turn was not saved.")
            if version is not None and row["version"] != version:
                raise exc.LeaseLost("The session's context was changed after the lease "
                                    "expired; this turn was not saved.")
            base = row["event_seq"]

    def _insert_side_runs(self, turn: Turn, runs: list[SideRun], now: datetime) -> None:
        """Record the compaction calls of a turn as runs of their own (completed, whatever
        became of the turn: their tokens were spent)."""
        if not runs:
            return
        ct = self.content_type
        AgentRun.objects.bulk_create([
            AgentRun(session_type=ct, session_id=turn.session.pk, kind=run.kind,
                     status=RunStatus.COMPLETED, model=run.model, output=run.output,
                     input={"run_id": str(turn.run_id)}, stop_reason=run.stop_reason or "",
                     cost=run.cost, started_at=run.started_at, ended_at=now,
                     duration_ms=run.duration_ms, iterations=1,
                     **{name: int(run.usage.get(name) or 0) for name in USAGE_KEYS})
            for run in runs])

    def _stale_events(self, turn: Turn) -> list[tuple[str, dict[str, Any]]]:
        return [(EventType.RUN_FAILED, {"run_id": str(run_id), "error": INTERRUPTED})
                for run_id in turn.stale_runs]

    def _fail_stale_run(self, turn: Turn, now: datetime) -> None:
        """Fail the runs crashed turns left behind (their lease expired and was taken over)."""
        if turn.stale_runs:
            AgentRun.objects.filter(pk__in=turn.stale_runs, status=RunStatus.RUNNING).update(
                status=RunStatus.FAILED, error=INTERRUPTED, ended_at=now)

    def dead_runs(self, session: Any) -> tuple[Any, str | None, list[Any]]:
        """For a session whose lease expired: the lease's run (if it exists), its ``ref``,
        and every run of the session still ``running`` (all dead: only a lease runs one)."""
        if session.lease_token is None:
            return None, None, []
        running = dict(AgentRun.objects.filter(
            session_type=self.content_type, session_id=session.pk, status=RunStatus.RUNNING,
        ).values_list("pk", "origin"))
        stale = session.lease_token if session.lease_token in running else None
        ref = ((running.get(stale) or {}).get("ref") or str(stale)) if stale else None
        return stale, ref, list(running)

    @staticmethod
    def _event_rows(base: int, events: list[tuple[str, dict[str, Any]]], turn: Turn | None
                    ) -> list[tuple[int, str, Any, dict[str, Any]]]:
        return [(base + i, str(kind), _run_of(kind, data, turn), data)
                for i, (kind, data) in enumerate(events, start=1)]

    def _insert_events(self, session_pk: Any, base: int,
                       events: list[tuple[str, dict[str, Any]]], turn: Turn | None) -> None:
        now = timezone.now()
        hot = statements_for(self.model)
        if hot is not None:
            hot.insert_events(session_pk, self._event_rows(base, events, turn), now)
            return
        ct = self.content_type
        AgentEvent.objects.bulk_create([
            AgentEvent(session_type=ct, session_id=session_pk, seq=base + i, type=str(kind),
                       data=data, created_at=now, run_id=_run_of(kind, data, turn))
            for i, (kind, data) in enumerate(events, start=1)
        ])

    # -- failure -----------------------------------------------------------------------------

    def fail(self, turn: Turn, error: exc.AgentSessionError, state: TurnState | None,
             status: str = RunStatus.FAILED, *, plain: bool = False) -> TurnRecord:
        """Record a failed (or cancelled) turn; the context column is not touched.

        ``plain``: record it after this very call failed (a value the database refused). The
        run fails with only ``error``'s code and its message in ASCII, and with the turn's
        numbers (usage, cost, iterations), which budgets count; of the turn's events only
        those the library wrote itself are logged (the runs it took over, the session's
        start, the run's opening, ``run.failed``); nothing else the turn carried (partial
        text, the model's strings, side runs) is written. The lease is released either way,
        so the session is usable at once rather than held until its lease expires.
        """
        now = timezone.now()
        state = state or TurnState()
        opening = [turn.opening]
        if plain:
            status = RunStatus.FAILED
            error_data: dict[str, Any] = {"code": error.code, "retryable": False,
                                          "message": ascii(str(error))[1:-1]}
            carried = [e for e in turn.pending_events if e[0] == EventType.SESSION_STARTED]
            data: dict[str, Any] = {"run_id": str(turn.run_id), "error": error_data}
        else:
            error_data = storable(error.to_dict())  # a provider's message may hold U+0000
            carried = turn.pending_events
            data = {"run_id": str(turn.run_id), "error": error_data}
            if state.partial:
                # the partial reply is reported in the log, never stored in the context
                data["partial_text"] = state.partial
            if state.stop_reason:
                data["stop_reason"] = state.stop_reason
            if turn.resume is None:  # a resumed turn's user message was logged when it paused
                opening.append((EventType.MESSAGE_USER, {"content": turn.user_blocks,
                                                         "stored": False}))
        kind = EventType.RUN_CANCELLED if status == RunStatus.CANCELLED else EventType.RUN_FAILED
        events = self._stale_events(turn) + carried + opening + [(kind, data)]
        # an incomplete or refused reply is an answer the session can go on from
        new_status = SessionStatus.IDLE if status in (
            RunStatus.CANCELLED, RunStatus.INCOMPLETE, RunStatus.REFUSED) else SessionStatus.FAILED
        with transaction.atomic():
            try:
                base = self._claim_seq(turn, len(events), {
                    "status": new_status, "lease_token": None, "lease_expires_at": None,
                    "last_activity_at": now, "updated_at": now,
                })
            except exc.LeaseLost:
                if not AgentRun.objects.filter(pk=turn.run_id, status=RunStatus.RUNNING).exists():
                    # whoever took the lease over already ended this run: one terminal event
                    return TurnRecord(turn.run_id, RunStatus.FAILED, [], dict(state.usage))
                base = self.append_seq(turn.session.pk, len(events))
            self._fail_stale_run(turn, now)
            numbers: dict[str, Any] = {"iterations": state.iterations, "cost": state.cost,
                                       **{name: int(state.usage.get(name) or 0)
                                          for name in USAGE_KEYS}}
            if plain:  # the numbers too may be what was refused: only ones a column holds
                numbers = _storable_numbers(numbers)
            carried_values: dict[str, Any] = {} if plain else {
                "model": state.model or F("model"), "stop_reason": state.stop_reason or "",
                "output": {"partial_text": state.partial} if state.partial else None}
            AgentRun.objects.filter(pk=turn.run_id).update(
                status=status, error=error_data, ended_at=now, duration_ms=turn.elapsed_ms,
                **numbers, **carried_values)
            if not plain:
                self._insert_side_runs(turn, state.side_runs, now)
            self._insert_events(turn.session.pk, base, events, turn)
        turn.session.status = new_status
        turn.session.lease_token = turn.session.lease_expires_at = None
        return TurnRecord(turn.run_id, status, _numbered(base, events), dict(state.usage))

    # -- pause -------------------------------------------------------------------------------

    def pause(self, turn: Turn, paused: TurnPaused, state: TurnState,
              expires_at: datetime | None) -> TurnRecord:
        """Record a turn paused for approvals: its events so far, the pending calls and where
        it goes on (on the run), and the lease released. The context is not touched."""
        now = timezone.now()
        point = paused.point
        point.usage, point.model, point.cost = dict(state.usage), state.model, state.cost
        point.side = state.side  # its side calls are recorded below; the totals come later
        version = turn.resume_version if turn.resume is not None else turn.session.version
        data = {"point": point.to_dict(), "version": version,
                "calls": [{**call, "decision": None} for call in paused.pending],
                "expires_at": expires_at.isoformat() if expires_at else None,
                "progress_frames": turn.progress_frames}
        events = self._stale_events(turn) + turn.pending_events + [turn.opening, *point.events]
        with transaction.atomic():
            base = self._claim_seq(turn, len(events), {
                "status": SessionStatus.IDLE, "lease_token": None, "lease_expires_at": None,
                "last_activity_at": now, "updated_at": now,
            })
            self._fail_stale_run(turn, now)
            AgentRun.objects.filter(pk=turn.run_id).update(
                status=RunStatus.AWAITING_APPROVAL, pause=data, iterations=state.iterations,
                model=state.model or F("model"), duration_ms=turn.elapsed_ms,
                stop_reason=state.stop_reason or "", cost=state.cost,
                **{name: int(state.usage.get(name) or 0) for name in USAGE_KEYS},
            )
            self._insert_side_runs(turn, state.side_runs, now)
            state.side_runs.clear()  # recorded: the resumed turn must not record them again
            self._insert_events(turn.session.pk, base, events, turn)
        turn.session.status = SessionStatus.IDLE
        turn.session.lease_token = turn.session.lease_expires_at = None
        turn.session.event_seq = base + len(events)
        return TurnRecord(turn.run_id, RunStatus.AWAITING_APPROVAL, _numbered(base, events),
                          dict(state.usage))

    # -- what budgets count ------------------------------------------------------------------

    def spent_outside_context(self, session_pk: Any) -> SideTotals:
        """What the session's model calls spent that its context does not count: turns that
        failed, were cancelled, cut off or refused (the context stays as it was), the side
        calls those made, and titles. A budget counts it, so failing is no way around one."""
        rows = AgentRun.objects.filter(
            Q(kind=RunKind.TURN, status__in=LOST) | Q(kind__in=(RunKind.COMPACTION,
                                                                  RunKind.TITLE)),
            session_type=self.content_type, session_id=session_pk,
        ).values_list("id", "kind", "input", "cost", *USAGE_KEYS)
        lost, side = set(), []
        for pk, kind, input, cost, *tokens in rows:
            if kind == RunKind.TURN:
                lost.add(str(pk))
            side.append((kind, input, cost, tokens))
        totals = SideTotals()
        for kind, input, cost, tokens in side:
            if kind == RunKind.COMPACTION and (input or {}).get("run_id") not in lost:
                continue  # a completed turn's: its context counted it
            if cost is None and not any(tokens):
                continue  # no call was made
            totals.usage = add_usage(totals.usage, dict(zip(USAGE_KEYS, tokens, strict=True)))
            totals.cost = add_cost(totals.cost, cost)
        return totals

    # -- events outside turns ----------------------------------------------------------------

    def append_seq(self, session_pk: Any, count: int) -> int:
        """Claim ``count`` sequence numbers (inside the caller's transaction)."""
        manager = self.model._base_manager
        if not manager.filter(pk=session_pk).update(event_seq=F("event_seq") + count):
            raise exc.SessionNotFound(f"No {self.model.__name__} with id {session_pk}.")
        return manager.filter(pk=session_pk).values_list("event_seq", flat=True).get() - count

    def append_events(self, session_pk: Any, events: list[tuple[str, dict[str, Any]]],
                      run_id: Any = None) -> list[AgentEvent]:
        """Append events that belong to no turn (presence, live lifecycle, admin actions)."""
        with transaction.atomic():
            base = self.append_seq(session_pk, len(events))
            ct = self.content_type
            now = timezone.now()
            return AgentEvent.objects.bulk_create([
                AgentEvent(session_type=ct, session_id=session_pk, seq=base + i, type=str(kind),
                           data=data, created_at=now, run_id=run_id)
                for i, (kind, data) in enumerate(events, start=1)
            ])


def _money(cost: Any) -> str | None:
    """A cost as the event log and clients get it: a decimal string (JSON has no Decimal)."""
    return None if cost is None else str(cost)


def _numbered(base: int, events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"seq": base + i, "type": str(kind), "data": data}
            for i, (kind, data) in enumerate(events, start=1)]


def _run_of(kind: str, data: dict[str, Any], turn: Turn | None) -> Any:
    if "run_id" in data:
        return data["run_id"]
    if turn is None or kind == EventType.SESSION_STARTED:
        return None
    return turn.run_id


def _title_from(blocks: list[dict[str, Any]]) -> str:
    text = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text").strip()
    text = " ".join(text.split())
    return text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1] + "…"


#: the largest value of a ``PositiveBigIntegerField`` (a token count) and of the run's ``cost``
_MAX_BIGINT = 2**63 - 1
_MAX_COST = Decimal("9999999999.999999")


def _storable_numbers(numbers: dict[str, Any]) -> dict[str, Any]:
    """A failed run's counts and cost, clamped to what their columns hold (``cost`` out of
    range: unknown), so that recording a failure plainly cannot be refused in turn."""
    clamped: dict[str, Any] = {key: min(max(int(value), 0), _MAX_BIGINT)
                               for key, value in numbers.items() if key != "cost"}
    clamped["iterations"] = min(clamped["iterations"], 2**31 - 1)
    cost = numbers["cost"]
    clamped["cost"] = cost if cost is None or (cost.is_finite() and 0 <= cost <= _MAX_COST) \
        else None
    return clamped
