"""Retention: delete old sessions (with their runs, events and artifact files) in small batches.

A :class:`RetentionPolicy` says what may go; :func:`prune` applies it to every concrete session
model (or the ones given), in two phases:

1. **Chatty events first**: events of ``chatty_event_types`` (``usage``, ``message.queued``)
   older than ``chatty_event_max_age`` are deleted on their own; they are the bulk of the log
   and nothing reads them back. This leaves gaps in ``seq``, which cursors by seq tolerate.
2. **Whole sessions**: those inactive for longer than ``max_age``, and those beyond the
   ``max_sessions_per_owner`` newest of their owner. Runs, events and artifacts go with them
   (the ``GenericRelation`` cascade); artifact files are deleted once each batch commits.

Protected sessions are never touched by either phase: pinned ones (``keep_pinned``), those in
``exempt_statuses``, those holding an unexpired turn lease, those with a queued run, and those
a live session owns.

**Hard delete, on purpose.** A soft delete would need a column on every user's session model,
a filter on every query (managers, admin, API, live) and a second pass to purge for real; the
retention rules already select only sessions nobody has touched for a long time, pinned
conversations are exempt, and ``export_session`` can archive anything worth keeping first.

Each batch deletes at most ``batch_size`` sessions (or events) by primary key in its own short
transaction, so no lock is held for long and an interrupted run can simply be started again.
The session candidates are chosen when the phase starts, then re-checked inside each batch's
transaction, so a session that becomes active or protected meanwhile is kept. A dry run walks
the same batches and counts instead of deleting, so it reports what a real run would delete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from ..conf import agent_settings
from ..declaration.registry import resolve_session_models
from ..records import AgentEvent, AgentRun, Artifact, LiveOwnership, RunStatus, SessionStatus

COUNTED = ("sessions", "runs", "events", "chatty_events", "artifacts")


@dataclass(frozen=True)
class RetentionPolicy:
    """What :func:`prune` may delete. The defaults delete nothing."""

    #: delete sessions whose ``last_activity_at`` is older than this
    max_age: timedelta | None = None
    #: per owner, keep only this many unprotected sessions (newest activity first)
    max_sessions_per_owner: int | None = None
    #: sessions in these statuses are protected
    exempt_statuses: tuple[str, ...] = (SessionStatus.RUNNING,)
    #: pinned sessions are protected
    keep_pinned: bool = True
    #: event types deleted on their own once older than ``chatty_event_max_age``
    chatty_event_types: tuple[str, ...] = ("usage", "message.queued")
    chatty_event_max_age: timedelta | None = None
    #: sessions (or events) per delete statement and transaction
    batch_size: int = 500

    def __post_init__(self) -> None:
        errors = []
        if self.max_age is not None and self.max_age <= timedelta(0):
            errors.append("max_age must be positive")
        if self.chatty_event_max_age is not None and self.chatty_event_max_age < timedelta(0):
            errors.append("chatty_event_max_age must not be negative")
        if self.max_sessions_per_owner is not None and self.max_sessions_per_owner < 0:
            errors.append("max_sessions_per_owner must not be negative")
        if self.batch_size < 1:
            errors.append("batch_size must be at least 1")
        if errors:
            raise ValueError("Invalid RetentionPolicy: " + "; ".join(errors))
        object.__setattr__(self, "exempt_statuses", tuple(self.exempt_statuses))
        object.__setattr__(self, "chatty_event_types",
                           tuple(str(t) for t in self.chatty_event_types))

    @classmethod
    def from_settings(cls, **overrides: Any) -> RetentionPolicy:
        """The policy of ``AGENT_SESSION["RETENTION"]``, with keyword overrides on top."""
        conf = agent_settings.RETENTION

        def days(value: Any) -> timedelta | None:
            return None if value is None else timedelta(days=float(value))

        values: dict[str, Any] = {
            "max_age": days(conf.get("MAX_AGE_DAYS")),
            "max_sessions_per_owner": conf.get("MAX_SESSIONS_PER_OWNER"),
            "exempt_statuses": tuple(conf.get("EXEMPT_STATUSES") or ()),
            "keep_pinned": bool(conf.get("KEEP_PINNED", True)),
            "chatty_event_types": tuple(conf.get("CHATTY_EVENT_TYPES") or ()),
            "chatty_event_max_age": days(conf.get("CHATTY_EVENT_MAX_AGE_DAYS")),
            "batch_size": int(conf.get("BATCH_SIZE") or 500),
        }
        unknown = set(overrides) - set(values)
        if unknown:
            raise TypeError(f"unknown RetentionPolicy field(s): {', '.join(sorted(unknown))}")
        return cls(**{**values, **overrides})

    @property
    def prunes_anything(self) -> bool:
        return bool(self.max_age is not None or self.max_sessions_per_owner is not None
                    or (self.chatty_event_types and self.chatty_event_max_age is not None))


@dataclass
class PruneReport:
    """What a prune deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool = False
    sessions: int = 0
    runs: int = 0
    #: all events, the chatty ones included
    events: int = 0
    chatty_events: int = 0
    artifacts: int = 0
    batches: int = 0
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, label: str, **counts: int) -> None:
        row = self.by_model.setdefault(label, dict.fromkeys(COUNTED, 0))
        for name, value in counts.items():
            row[name] += value
            setattr(self, name, getattr(self, name) + value)

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTED}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        head = "Would delete (dry run):" if self.dry_run else "Deleted:"
        lines = [head,
                 f"  sessions:  {self.sessions}",
                 f"  runs:      {self.runs}",
                 f"  events:    {self.events} ({self.chatty_events} chatty)",
                 f"  artifacts: {self.artifacts}",
                 f"  in {self.batches} batch(es)"]
        for label, row in sorted(self.by_model.items()):
            lines.append(f"  {label}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
        return "\n".join(lines)


def prune(policy: RetentionPolicy | None = None, *, dry_run: bool = False,
          batch_size: int | None = None, now: datetime | None = None,
          models: Iterable[Any] | None = None) -> PruneReport:
    """Apply ``policy`` (default: the settings') to ``models`` (default: all session models)."""
    policy = policy or RetentionPolicy.from_settings()
    if batch_size is not None:
        policy = dataclasses.replace(policy, batch_size=batch_size)
    now = now or timezone.now()
    report = PruneReport(dry_run=dry_run)
    for model in resolve_session_models(models):
        _Pruner(model, policy, now, dry_run, report).run()
    return report


class _Pruner:
    """Prune one session model."""

    def __init__(self, model: type[models.Model], policy: RetentionPolicy, now: datetime,
                 dry_run: bool, report: PruneReport) -> None:
        self.model, self.policy, self.now = model, policy, now
        self.dry_run, self.report = dry_run, report
        self.ct = ContentType.objects.get_for_model(model)
        self.label = model._meta.label

    # -- what may go -------------------------------------------------------------------------

    def prunable(self) -> models.QuerySet:
        """Sessions no rule protects (re-evaluated at every use)."""
        policy = self.policy
        protected = Q(lease_token__isnull=False, lease_expires_at__gt=self.now)
        if policy.keep_pinned:
            protected |= Q(pinned=True)
        if policy.exempt_statuses:
            protected |= Q(status__in=policy.exempt_statuses)
        live = LiveOwnership.objects.filter(session_type=self.ct, expires_at__gt=self.now)
        protected |= Q(pk__in=live.values("session_id"))
        # a message waiting to run is work in flight, however old the session
        waiting = AgentRun.objects.filter(session_type=self.ct, status=RunStatus.QUEUED)
        protected |= Q(pk__in=waiting.values("session_id"))
        return self.model._base_manager.exclude(protected).order_by()

    def chatty(self) -> Q | None:
        policy = self.policy
        if not policy.chatty_event_types or policy.chatty_event_max_age is None:
            return None
        return Q(type__in=policy.chatty_event_types,
                 created_at__lt=self.now - policy.chatty_event_max_age)

    def too_old(self) -> Q | None:
        if self.policy.max_age is None:
            return None
        return Q(last_activity_at__lt=self.now - self.policy.max_age)

    def over_owner_limit(self) -> list[Any]:
        """Ids beyond each owner's newest ``max_sessions_per_owner`` (chosen once, up front)."""
        limit = self.policy.max_sessions_per_owner
        if limit is None:
            return []
        ranked = self.prunable().filter(owner__isnull=False).annotate(rank=Window(
            RowNumber(), partition_by=[F("owner_id")],
            order_by=[F("last_activity_at").desc(), F("pk").desc()]))
        return sorted(ranked.filter(rank__gt=limit).values_list("pk", flat=True))

    # -- phases ------------------------------------------------------------------------------

    def run(self) -> None:
        chatty = self.chatty()
        over_limit = self.over_owner_limit()  # before any deletion, in both modes
        if chatty is not None:
            self.prune_chatty_events(chatty)
        too_old = self.too_old()
        if too_old is not None:
            self.prune_sessions(self._keyset(self.prunable().filter(too_old)), extra=None)
        if over_limit:
            # sessions already deleted for their age are skipped (in a dry run: not counted)
            self.prune_sessions(_chunks(over_limit, self.policy.batch_size), extra=too_old)

    def _keyset(self, qs: models.QuerySet) -> Iterator[list[Any]]:
        """Primary keys of ``qs`` in ascending batches, each fetched fresh."""
        last = None
        while True:
            page = qs if last is None else qs.filter(pk__gt=last)
            ids = list(page.order_by("pk").values_list("pk", flat=True)[: self.policy.batch_size])
            if not ids:
                return
            yield ids
            last = ids[-1]

    def prune_chatty_events(self, chatty: Q) -> None:
        events = AgentEvent.objects.filter(
            chatty, session_type=self.ct, session_id__in=self.prunable().values("pk"))
        for ids in self._keyset(events):
            if self.dry_run:
                count = len(ids)
            else:
                with transaction.atomic():
                    count, _ = AgentEvent.objects.filter(pk__in=ids).delete()
            self.report.batches += 1
            self.report.add(self.label, events=count, chatty_events=count)

    def prune_sessions(self, batches: Iterable[list[Any]], extra: Q | None) -> None:
        for ids in batches:
            with transaction.atomic():
                # re-check inside the transaction: the session may be protected by now
                qs = self.prunable().filter(pk__in=ids)
                if extra is not None:
                    qs = qs.exclude(extra)
                pks = list(qs.values_list("pk", flat=True))
                if not pks:
                    continue
                counts = self._count(pks) if self.dry_run else self._delete(pks)
            self.report.batches += 1
            self.report.add(self.label, **counts)

    def _count(self, pks: list[Any]) -> dict[str, int]:
        where = {"session_type": self.ct, "session_id__in": pks}
        events = AgentEvent.objects.filter(**where)
        chatty = self.chatty()
        if chatty is not None:  # a real run deleted those in the first phase
            events = events.exclude(chatty)
        return {"sessions": len(pks), "runs": AgentRun.objects.filter(**where).count(),
                "events": events.count(), "artifacts": Artifact.objects.filter(**where).count()}

    def _delete(self, pks: list[Any]) -> dict[str, int]:
        # the collector follows the GenericRelations: runs, events and artifacts (whose
        # post_delete receiver deletes the files once this transaction commits)
        _, deleted = self.model._base_manager.filter(pk__in=pks).only("pk").delete()
        LiveOwnership.objects.filter(session_type=self.ct, session_id__in=pks).delete()
        return {"sessions": deleted.get(self.label, 0),
                "runs": deleted.get(AgentRun._meta.label, 0),
                "events": deleted.get(AgentEvent._meta.label, 0),
                "artifacts": deleted.get(Artifact._meta.label, 0)}


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


__all__ = ["PruneReport", "RetentionPolicy", "prune"]
