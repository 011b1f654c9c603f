"""The durable run queue of a session: submit, claim, cancel.

A submitted message is a ``queued`` :class:`~django_agent_session.records.AgentRun` committed
before anyone is told it was accepted. Its place in the session's FIFO is the ``seq`` of its
``run.queued`` event, claimed from the session row's event counter, so the row lock that orders
events also orders submissions. Whoever holds the session's turn lease runs the queue: ``claim``
takes the lease and the oldest queued run in one transaction, so a run is started at most once
and a crash between the two leaves neither.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .. import exceptions as exc
from ..conf import agent_settings
from ..engine.turn import Decision, ResumePoint, user_blocks_for
from ..records import AgentEvent, AgentRun, EventType, Multitask, RunStatus, SessionStatus
from .lease import lease_deadline, lease_held, lease_remaining, session_busy
from .statements import Statements, statements_for
from .turns import SessionStore, Turn, TurnRecord

#: the error of a queued run dropped by a ``rollback`` submission
ROLLED_BACK: dict[str, Any] = {"code": "rolled_back", "retryable": False,
                               "message": "Dropped by a newer message (multitask=rollback)."}
#: the error of a paused run a newer message interrupted (``interrupt``, ``rollback``)
INTERRUPTED_PAUSE: dict[str, Any] = {
    "code": "cancelled", "retryable": False,
    "message": "Interrupted by a newer message while its tool calls awaited approval."}
#: the reason an undecided call is rejected with once ``Agent.approval_timeout`` passed
EXPIRED = "The approval request expired."
#: the error of a waiting caller's run withdrawn after ``TURN_WAIT_SECONDS``
BUSY: dict[str, Any] = {"code": exc.SessionBusy.code, "retryable": True,
                        "message": "Withdrawn: the session stayed busy past the waiting bound."}
#: the error of a run cancelled on request before or while it ran
CANCELLED: dict[str, Any] = {"code": exc.TurnCancelled.code, "retryable": False,
                             "message": "The run was cancelled."}


@dataclass(frozen=True)
class Submission:
    """A submitted message: its run, whether this call created it (``False``: the
    idempotency key named an earlier run), and its place in line when created (1: next)."""

    run: AgentRun
    created: bool
    position: int | None = None
    #: the running run this submission asked to cancel (``interrupt``, ``rollback``)
    interrupted: Any = None
    #: runs it cancelled (queued ones dropped by ``rollback``, a paused one by ``interrupt``
    #: and ``rollback``): ``[(run_id, ref, was_queued)]``
    dropped: tuple[tuple[str, str, bool], ...] = ()


@dataclass(frozen=True)
class Drained:
    """What a drain did: how many runs it ran and, when it stopped at runs queued behind a
    lease someone else holds, the seconds that lease stays held (``None``: nothing is
    queued, or the drain was asked to stop)."""

    ran: int
    held_for: float | None = None


#: what ``RunQueue._claim_fast`` found when no run is queued or paused at all
NOTHING_QUEUED: Any = object()


class RunQueue:
    """Submission, claiming and cancellation of the runs of one session model."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.model = store.model

    def runs(self, pk: Any) -> Any:
        return AgentRun.objects.filter(session_type=self.store.content_type, session_id=pk)

    # -- submit ------------------------------------------------------------------------------

    def submit(self, pk: Any, *, input: dict[str, Any], user_blocks: list[dict[str, Any]],
               idempotency_key: str | None = None, multitask: str = Multitask.ENQUEUE,
               origin: dict[str, Any] | None = None,
               events: list[tuple[str, dict[str, Any]]] | None = None,
               owner_check: Callable[[Any], bool] | None = None) -> Submission:
        """Commit a queued run.

        ``owner_check(owner_id)`` is asked first, under the row lock: False raises
        ``PermissionDenied`` and writes nothing. A known ``idempotency_key`` returns the run it
        named (``created`` is False) and changes nothing. ``multitask`` decides what happens to
        the runs already there (see :class:`~django_agent_session.records.Multitask`).
        ``events`` are written before the ``run.queued`` event (a new session's
        ``session.started``).
        """
        now = timezone.now()
        hot = statements_for(self.model)
        if hot is not None and events is None and multitask == Multitask.ENQUEUE and \
                agent_settings.QUEUE_MAX > 0:
            fast = self._submit_fast(hot, pk, now, input=input, user_blocks=user_blocks,
                                     idempotency_key=idempotency_key, origin=origin,
                                     owner_check=owner_check)
            if fast is not None:
                return fast
        with transaction.atomic():
            # lock the row first: concurrent submissions (same key or not) queue up behind it
            row = self._lock(pk)
            _check_owner(owner_check, row["owner_id"])
            if idempotency_key is not None:
                existing = self.runs(pk).filter(idempotency_key=idempotency_key).first()
                if existing is not None:
                    transaction.set_rollback(True)
                    return Submission(existing, False)
            held = lease_held(row["lease_token"], row["lease_expires_at"], now)
            queued = list(self.runs(pk).filter(status=RunStatus.QUEUED)
                          .values_list("id", flat=True))
            paused = list(self.runs(pk).filter(status=RunStatus.AWAITING_APPROVAL)
                          .values_list("id", flat=True))
            if multitask == Multitask.REJECT and (held or queued or paused):
                transaction.set_rollback(True)
                if held:
                    raise session_busy(row["lease_expires_at"], now=now)
                raise exc.SessionBusy("Messages are already queued on this session.")
            if multitask != Multitask.ROLLBACK and len(queued) >= agent_settings.QUEUE_MAX:
                transaction.set_rollback(True)
                raise exc.QueueFull(f"{len(queued)} messages are already waiting; "
                                    "try again later.")
            pending = list(events or [])
            if multitask in (Multitask.INTERRUPT, Multitask.ROLLBACK) and paused:
                # a paused turn is interrupted too: its calls never run
                self.runs(pk).filter(pk__in=paused).update(
                    status=RunStatus.CANCELLED, error=INTERRUPTED_PAUSE, ended_at=now)
                pending += [(EventType.RUN_CANCELLED, {"run_id": str(run_id),
                                                       "error": INTERRUPTED_PAUSE})
                            for run_id in paused]
            interrupted = None
            if multitask in (Multitask.INTERRUPT, Multitask.ROLLBACK) and held and \
                    self.runs(pk).filter(pk=row["lease_token"], status=RunStatus.RUNNING
                                         ).update(cancel_requested=True):
                interrupted = row["lease_token"]
            if multitask == Multitask.ROLLBACK and queued:
                self.runs(pk).filter(pk__in=queued, status=RunStatus.QUEUED).update(
                    status=RunStatus.CANCELLED, error=ROLLED_BACK, ended_at=now)
                pending += [(EventType.RUN_CANCELLED, {"run_id": str(run_id),
                                                       "error": ROLLED_BACK, "queued": True})
                            for run_id in queued]
            dropped = (paused if multitask in (Multitask.INTERRUPT, Multitask.ROLLBACK) else []) \
                + (queued if multitask == Multitask.ROLLBACK else [])
            run_id = uuid.uuid4()
            origin = dict(origin or {})
            position = 1 if multitask == Multitask.ROLLBACK else len(queued) + 1
            pending.append((EventType.RUN_QUEUED, {
                "run_id": str(run_id), "content": user_blocks, "input": input,
                "position": position, **origin}))
            base = self._claim(pk, row["event_seq"], len(pending))
            run = AgentRun.objects.create(
                id=run_id, session_type=self.store.content_type, session_id=pk,
                status=RunStatus.QUEUED, input=input, idempotency_key=idempotency_key,
                origin=origin,
                queued_seq=base + len(pending), queued_at=now, started_at=now,
                model=self.model.agent_options.model_name,
            )
            self.store._insert_events(pk, base, pending, None)
        refs = dict(self.runs(pk).filter(pk__in=dropped).values_list("id", "origin"))
        return Submission(run, True, position, interrupted, tuple(
            (str(run_id), (refs.get(run_id) or {}).get("ref") or str(run_id),
             run_id not in paused) for run_id in dropped))

    def _submit_fast(self, hot: Statements, pk: Any, now: datetime, *, input: dict[str, Any],
                     user_blocks: list[dict[str, Any]], idempotency_key: str | None,
                     origin: dict[str, Any] | None,
                     owner_check: Callable[[Any], bool] | None) -> Submission | None:
        """Queue a message on a session where nothing is queued or paused and the key is new
        (the common case) in four round trips, three on PostgreSQL; ``None`` for anything else
        (the ORM path above decides, in a transaction of its own)."""
        origin = dict(origin or {})
        run_id = uuid.uuid4()
        with transaction.atomic():
            locked = hot.lock(pk)  # concurrent submissions queue up behind this row lock
            if locked is None:
                raise exc.SessionNotFound(f"No {self.model.__name__} with id {pk}.")
            base, owner_id = locked
            _check_owner(owner_check, owner_id)
            if hot.waiting(pk, idempotency_key):
                return None
            seq = base + 1
            model_name = self.model.agent_options.model_name
            hot.enqueue(pk, run_id=run_id, seq=seq, now=now, input=input,
                        idempotency_key=idempotency_key, origin=origin, model_name=model_name,
                        event=(EventType.RUN_QUEUED, {
                            "run_id": str(run_id), "content": user_blocks, "input": input,
                            "position": 1, **origin}))
        run = AgentRun(id=run_id, session_type=self.store.content_type, session_id=pk,
                       status=RunStatus.QUEUED, input=input, idempotency_key=idempotency_key,
                       origin=origin, queued_seq=seq, queued_at=now, started_at=now,
                       model=model_name)
        run._state.adding, run._state.db = False, hot.alias  # as if read back
        return Submission(run, True, 1)

    def _lock(self, pk: Any) -> dict[str, Any]:
        """Lock the session row (an UPDATE that changes nothing, as SQLite has no row locks)
        and read what a submission decides on."""
        manager = self.model._base_manager
        if not manager.filter(pk=pk).update(event_seq=F("event_seq")):
            raise exc.SessionNotFound(f"No {self.model.__name__} with id {pk}.")
        return dict(manager.filter(pk=pk).values("event_seq", "lease_token",
                                                 "lease_expires_at", "owner_id").get())

    def _claim(self, pk: Any, base: int, count: int) -> int:
        """Claim ``count`` seqs after ``base`` (the row is locked); a submission is activity."""
        now = timezone.now()
        self.model._base_manager.filter(pk=pk).update(event_seq=base + count,
                                                      last_activity_at=now, updated_at=now)
        return base

    # -- claim -------------------------------------------------------------------------------

    def claim(self, pk: Any) -> Turn | float | None:
        """Take the lease and the oldest queued run: the :class:`Turn` to run, the seconds the
        lease stays held, or ``None`` when nothing is queued."""
        hot = statements_for(self.model)
        if hot is not None:  # a free lease and a queued run: two round trips (statements.py)
            turn = self._claim_fast(hot, pk)
            if turn is not None:
                return None if turn is NOTHING_QUEUED else turn
        for _ in range(5):  # a lost race on the conditional UPDATEs: read again
            session = self.model._base_manager.filter(pk=pk).first()
            if session is None:
                raise exc.SessionNotFound(f"No {self.model.__name__} with id {pk}.")
            now = timezone.now()
            if lease_held(session.lease_token, session.lease_expires_at, now):
                assert session.lease_expires_at is not None
                return lease_remaining(session.lease_expires_at, now)
            if self.runs(pk).filter(status=RunStatus.AWAITING_APPROVAL).exists():
                self.expire(pk, now)  # past Agent.approval_timeout: rejected, queued again
                if self.runs(pk).filter(status=RunStatus.AWAITING_APPROVAL).exists():
                    return None  # a paused turn goes first: nothing runs until it is decided
            run = self.runs(pk).filter(status=RunStatus.QUEUED).order_by("queued_seq").first()
            if run is None:
                return None
            stale, stale_ref, dead = self.store.dead_runs(session)
            expires = lease_deadline(now)
            turn = Turn(session, run.id, now, expires, run.input, user_blocks_for(run.input),
                        stale_run_id=stale, origin=run.origin or {}, stale_ref=stale_ref,
                        stale_runs=dead)
            if run.pause is not None:  # decided: the paused turn goes on
                turn.resume = ResumePoint.from_dict(run.pause["point"], decisions(run.pause))
                turn.resume_version = run.pause["version"]
                turn.progress_frames = int(run.pause.get("progress_frames") or 0)
            with transaction.atomic():
                taken = self.model._base_manager.filter(
                    pk=pk, version=session.version, lease_token=session.lease_token,
                ).update(lease_token=run.id, lease_expires_at=expires,
                         status=SessionStatus.RUNNING)
                started = taken and AgentRun.objects.filter(
                    pk=run.id, status=RunStatus.QUEUED).update(
                        status=RunStatus.RUNNING, started_at=now, model=run.model)
                if taken and not started:  # cancelled meanwhile: give the lease back
                    transaction.set_rollback(True)
            if started:
                session.lease_token, session.lease_expires_at = run.id, expires
                session.status = SessionStatus.RUNNING
                return turn
        return 0.0

    def _claim_fast(self, hot: Statements, pk: Any) -> Any:
        """Claim the oldest queued run of a session whose lease is free and that has no
        paused run; :data:`NOTHING_QUEUED`, or ``None`` for anything else (the ORM path tells
        the cases apart)."""
        run = hot.next_run(pk)
        if run is None:
            return NOTHING_QUEUED
        if run.status != RunStatus.QUEUED or run.pause is not None:
            return None
        now = timezone.now()
        expires = lease_deadline(now)
        session = hot.claim(pk, run.id, expires=expires, now=now)
        if session is None:
            return None
        return Turn(session, run.id, now, expires, run.input, user_blocks_for(run.input),
                    origin=run.origin or {})

    def create(self, session: Any, context: Any, **submission: Any) -> AgentRun:
        """Insert a new session (no lease) with its first message queued, in one transaction."""
        setattr(session, self.store.context_field, context.to_dict())
        with transaction.atomic():
            session.save(force_insert=True)
            submitted = self.submit(session.pk, events=[(EventType.SESSION_STARTED, {})],
                                    **submission)
        return submitted.run

    def record(self, run: AgentRun) -> TurnRecord:
        """What a finished run wrote, read back (for a caller whose run another ran)."""
        events = [e.as_dict() for e in AgentEvent.objects.filter(
            session_type=self.store.content_type, session_id=run.session_id, run_id=run.pk,
        ).order_by("seq")]
        return TurnRecord(run.pk, run.status, events, run.usage)

    # -- approvals ---------------------------------------------------------------------------

    def pending(self, pk: Any) -> list[dict[str, Any]]:
        """The session's undecided tool calls: ``{"run_id", "tool_use_id", "name", "input",
        "expires_at"}``, oldest first."""
        calls = []
        for run in self.runs(pk).filter(status=RunStatus.AWAITING_APPROVAL).order_by(
                "started_at"):
            for call in run.pause["calls"]:
                if call["decision"] is None:
                    calls.append({"run_id": str(run.pk), "tool_use_id": call["tool_use_id"],
                                  "name": call["name"], "input": call["input"],
                                  "expires_at": run.pause.get("expires_at")})
        return calls

    def decide(self, pk: Any, tool_use_id: str, decision: dict[str, Any]) -> tuple[AgentRun, bool]:
        """Record a decision on a paused call, once: ``(run, resumed)``; ``resumed`` when it
        was the run's last undecided call (the run is queued again, first in line).

        Raises :class:`ToolCallNotFound` for no such pending call, :class:`AlreadyDecided`
        when it was decided (or expired) before.
        """
        now = timezone.now()
        with transaction.atomic():
            self._lock(pk)  # one decision at a time per session: a call is decided once
            run, call = self._paused_call(pk, tool_use_id)
            if call["decision"] is not None:
                raise exc.AlreadyDecided(f"Tool call {tool_use_id} was already decided.")
            assert run.pause is not None  # a paused run
            expires = run.pause.get("expires_at")
            if expires and datetime.fromisoformat(expires) <= now:
                raise exc.AlreadyDecided(f"The approval of tool call {tool_use_id} expired.")
            call["decision"] = {**decision, "at": now.isoformat()}
            resumed = self._record(pk, run, [call], now)
        return run, resumed

    def expire(self, pk: Any, now: datetime) -> int:
        """Reject the undecided calls of runs past their approval deadline (the run is queued
        again); how many runs were."""
        expired = 0
        with transaction.atomic():
            self._lock(pk)
            for run in self.runs(pk).filter(status=RunStatus.AWAITING_APPROVAL):
                deadline = run.pause.get("expires_at")
                if not deadline or datetime.fromisoformat(deadline) > now:
                    continue
                calls = [c for c in run.pause["calls"] if c["decision"] is None]
                for call in calls:
                    call["decision"] = {"approved": False, "by": None, "reason": EXPIRED,
                                        "at": now.isoformat()}
                self._record(pk, run, calls, now)
                expired += 1
        return expired

    def _paused_call(self, pk: Any, tool_use_id: str) -> tuple[AgentRun, dict[str, Any]]:
        """The run and call ``tool_use_id`` (a call of a run no longer paused counts as
        decided: its run went on, or was cancelled)."""
        for run in self.runs(pk).filter(pause__isnull=False).order_by("-started_at"):
            for call in run.pause["calls"]:
                if call["tool_use_id"] == tool_use_id:
                    if run.status != RunStatus.AWAITING_APPROVAL and call["decision"] is None:
                        raise exc.AlreadyDecided(
                            f"Tool call {tool_use_id} can no longer be decided: its run is "
                            f"{run.status}.")
                    return run, call
        raise exc.ToolCallNotFound(f"No pending tool call {tool_use_id!r} on this session.")

    def _record(self, pk: Any, run: AgentRun, calls: list[dict[str, Any]], now: datetime
                ) -> bool:
        """Write decisions already set on ``run.pause`` (inside the caller's transaction):
        their events, and the run queued again once nothing is undecided."""
        assert run.pause is not None  # a paused run
        events: list[tuple[str, dict[str, Any]]] = []
        for call in calls:
            decision = call["decision"]
            kind = (EventType.TOOL_APPROVAL_GRANTED if decision["approved"]
                    else EventType.TOOL_APPROVAL_DENIED)
            events.append((kind, {"run_id": str(run.pk), "tool_use_id": call["tool_use_id"],
                                  "name": call["name"], **decision}))
        done = all(c["decision"] is not None for c in run.pause["calls"])
        values: dict[str, Any] = {"pause": run.pause}
        if done:  # first in line: it was claimed before anything queued now
            values.update(status=RunStatus.QUEUED, queued_seq=run.queued_seq or 0)
        AgentRun.objects.filter(pk=run.pk).update(**values)
        for name, value in values.items():  # the caller's run says what the row says
            setattr(run, name, value)
        self.store.append_events(pk, events, run_id=run.pk)
        return done

    def has_queued(self, pk: Any) -> bool:
        return self.runs(pk).filter(status=RunStatus.QUEUED).exists()

    # -- cancel ------------------------------------------------------------------------------

    def cancel(self, run_id: Any, error: dict[str, Any] | None = None) -> AgentRun:
        """Cancel a queued run at once, or ask the executor of a running one to cancel it.

        Returns the run as it is now: ``cancelled``, still ``running`` with
        ``cancel_requested`` set, or already finished (nothing to do).
        """
        now = timezone.now()
        run = AgentRun.objects.filter(pk=run_id, session_type=self.store.content_type).first()
        if run is None:
            raise exc.RunNotFound(f"No run {run_id} of a {self.model.__name__}.")
        if run.status == RunStatus.QUEUED:
            with transaction.atomic():
                error = error or CANCELLED
                if AgentRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
                        status=RunStatus.CANCELLED, error=error, ended_at=now):
                    self.store.append_events(run.session_id, [(EventType.RUN_CANCELLED, {
                        "run_id": str(run.pk), "error": error, "queued": True})],
                        run_id=run.pk)
                    run.status, run.error, run.ended_at = RunStatus.CANCELLED, error, now
                    return run
            run.refresh_from_db()  # it started meanwhile
        if run.status == RunStatus.RUNNING and not run.cancel_requested:
            AgentRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
                cancel_requested=True)
            run.cancel_requested = True
        return run

    def cancel_requested(self, run_id: Any) -> bool:
        return AgentRun.objects.filter(pk=run_id, cancel_requested=True).exists()


def _check_owner(owner_check: Callable[[Any], bool] | None, owner_id: Any) -> None:
    if owner_check is not None and not owner_check(owner_id):
        raise PermissionDenied("You may not send messages to this conversation.")


def decisions(pause: dict[str, Any]) -> dict[str, Decision]:
    """The decisions of a paused run's calls, for the engine."""
    return {call["tool_use_id"]: Decision(approved=call["decision"]["approved"],
                                          input=call["decision"].get("input"),
                                          reason=call["decision"].get("reason") or "")
            for call in pause["calls"] if call["decision"] is not None}

