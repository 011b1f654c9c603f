"""Queries over sessions, runs and events: search, cursor pages, stats and usage summaries.

:class:`SessionQueryMixin` is a base of ``AgentSessionQuerySet``, so every concrete session
model's manager has ``search()``, ``tagged()``, ``with_stats()``, ``page()`` and friends.
The module-level functions cover what spans models: :func:`search_sessions` (one model or all
of them), :func:`session_stats`, :func:`usage_summary` and :func:`search_events`.

Everything here is portable across SQLite and PostgreSQL. Tags (``metadata["tags"]``, a
list) are matched with :class:`JSONArrayContains`, which compiles to ``@>`` on PostgreSQL and
``json_each`` elsewhere, because Django's ``__contains`` on JSON is not available on SQLite.

Pages use keyset ("cursor") pagination on ``(timestamp, id)``, encoded opaquely: rows
inserted between two page fetches never shift a page, so nothing is skipped or repeated.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Self, cast

from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import (
    Avg,
    BooleanField,
    Case,
    Count,
    Exists,
    Expression,
    F,
    Max,
    Min,
    Model,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce, TruncDate
from django.utils.dateparse import parse_datetime

from .. import exceptions as exc
from ..declaration.registry import resolve_session_models, session_models
from ..engine.context import USAGE_KEYS
from ..engine.pricing import cache_hit_ratio
from ..records import AgentEvent, AgentRun, Artifact, RunStatus, SessionRecord

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.expressions import Combinable
    from django.db.models.sql.compiler import SQLCompiler

    from .manager import AgentSessionManager

    #: what the mixin is mixed into (``AgentSessionQuerySet``); a plain class at run time
    _SessionQuerySetBase = models.QuerySet[SessionRecord]
else:
    _SessionQuerySetBase = object

#: orderings a cursor page may use (all end with the primary key as tie-break)
ORDERINGS = ("-last_activity_at", "last_activity_at", "-created_at", "created_at")
DEFAULT_ORDERING = "-last_activity_at"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 500


# -- a portable "JSON array contains" --------------------------------------------------------

class JSONArrayContains(Expression):
    """True when the JSON array at ``column -> key`` has ``value`` as an element.

    Usable directly in ``filter()``. PostgreSQL uses jsonb containment on the column
    (``metadata @> '{"tags": ["x"]}'``, which a GIN index on it serves);
    other backends (SQLite) use ``json_each``. The column is resolved like any expression, so
    table aliases stay right inside subqueries.
    """

    output_field = BooleanField()
    conditional = True

    def __init__(self, column: str | Expression, key: str, value: Any) -> None:
        super().__init__()
        self.column: Combinable = F(column) if isinstance(column, str) else column
        self.key = key
        self.value = value

    def get_source_expressions(self) -> list[Any]:
        return [self.column]

    def set_source_expressions(self, exprs: Sequence[Combinable | Expression]) -> None:
        (self.column,) = exprs

    def _compile_column(self, compiler: SQLCompiler) -> tuple[str, tuple[Any, ...]]:
        # compiled only after resolve_expression(), which replaced an F with its column
        return compiler.compile(cast(Expression, self.column))

    def as_sql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
               ) -> tuple[str, tuple[Any, ...]]:
        lhs, params = self._compile_column(compiler)
        path = "$." + json.dumps(self.key)
        sql = (f"(json_type({lhs}, %s) = 'array' AND "
               f"EXISTS (SELECT 1 FROM json_each({lhs}, %s) AS _je WHERE _je.value = %s))")
        return sql, (*params, path, *params, path, self.value)

    def as_postgresql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
                      ) -> tuple[str, tuple[Any, ...]]:
        lhs, params = self._compile_column(compiler)
        # containment on the column itself, so a GIN index on it can serve the filter
        return f"({lhs} @> %s::jsonb)", (*params, json.dumps({self.key: [self.value]}))


def json_text_q(lookup: str, text: str) -> Q:
    """Match ``text`` (case-insensitive substring) inside a JSON value read as text.

    JSON columns keep strings escaped: SQLite stores ``json.dumps`` output (non-ASCII as
    ``\\uXXXX``), PostgreSQL renders ``"`` and ``\\`` escaped; so one ``icontains`` per
    distinct spelling, on SQLite and PostgreSQL alike.
    """
    forms = [text, json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1]]
    found = Q()
    for form in dict.fromkeys(forms):
        found |= Q(**{f"{lookup}__icontains": form})
    return found


# -- the queryset mixin ----------------------------------------------------------------------

class SessionQueryMixin(_SessionQuerySetBase):
    """Filters, stats annotations and cursor pages for session querysets."""

    def owned_by(self, owner: Any) -> Self:
        """Sessions of ``owner`` (a user or its pk)."""
        owner = owner.pk if isinstance(owner, models.Model) else owner
        return self.filter(owner_id=owner)

    def with_status(self, *statuses: str | Iterable[str]) -> Self:
        return self.filter(status__in=_flat(statuses))

    def tagged(self, *tags: str, match: str = "all") -> Self:
        """Sessions whose ``metadata["tags"]`` holds all (``match="any"``: any) of ``tags``."""
        tags = tuple(_flat(tags))
        if not tags:
            return self.all()
        if match not in ("all", "any"):
            raise ValueError(f"match must be 'all' or 'any', not {match!r}")
        conditions = [JSONArrayContains("metadata", "tags", tag) for tag in tags]
        if match == "all":
            return self.filter(*conditions)
        combined = Q(conditions[0])
        for condition in conditions[1:]:
            combined |= Q(condition)
        return self.filter(combined)

    def with_metadata(self, **values: Any) -> Self:
        """Sessions whose metadata has these key/value pairs (``key__sub`` paths work too)."""
        return self.filter(**{f"metadata__{key}": value for key, value in values.items()})

    def with_metadata_keys(self, *keys: str) -> Self:
        return self.filter(metadata__has_keys=list(_flat(keys)))

    def created_between(self, start: datetime | None = None, end: datetime | None = None) -> Self:
        """``start <= created_at < end`` (either bound may be ``None``)."""
        return self.filter(**_range("created_at", start, end))

    def active_between(self, start: datetime | None = None, end: datetime | None = None) -> Self:
        """``start <= last_activity_at < end`` (either bound may be ``None``)."""
        return self.filter(**_range("last_activity_at", start, end))

    def containing_text(self, text: str) -> Self:
        """Sessions whose messages contain ``text`` (case-insensitive substring).

        Searches the serialized messages (user and assistant text, tool inputs and results);
        it is a scan, not a full-text index.
        """
        if not text:
            return self.all()
        context_field = self.model.agent_options.context_field
        return self.alias(_messages_text=KT(f"{context_field}__messages")).filter(
            json_text_q("_messages_text", text))

    def search(self, *, owner: Any = None, status: str | Iterable[str] | None = None,
               tags: Iterable[str] | None = None, any_tags: bool = False,
               metadata: dict[str, Any] | None = None, has_keys: Iterable[str] | None = None,
               created_after: datetime | None = None, created_before: datetime | None = None,
               active_after: datetime | None = None, active_before: datetime | None = None,
               text: str | None = None) -> Self:
        """All the filters above in one call; ``None`` means "do not filter on this"."""
        qs = self.all()
        if owner is not None:
            qs = qs.owned_by(owner)
        if status:
            qs = qs.with_status(status)
        if tags:
            qs = qs.tagged(*_flat(tags), match="any" if any_tags else "all")
        if metadata:
            qs = qs.with_metadata(**metadata)
        if has_keys:
            qs = qs.with_metadata_keys(*_flat(has_keys))
        if created_after or created_before:
            qs = qs.created_between(created_after, created_before)
        if active_after or active_before:
            qs = qs.active_between(active_after, active_before)
        if text:
            qs = qs.containing_text(text)
        return qs

    def with_stats(self) -> Self:
        """Annotate run counts by status, total run duration and total tokens.

        Adds ``runs_total``, ``runs_completed``, ``runs_failed``, ``runs_cancelled``,
        ``runs_running``, ``run_duration_ms`` and ``total_tokens`` (correlated subqueries, so
        it composes with any other filter or annotation without multiplying rows).
        """
        ct = ContentType.objects.get_for_model(self.model)
        counts = {f"runs_{status}": _run_aggregate(ct, Count("pk"), status=status)
                  for status in RunStatus.values}
        return self.annotate(
            runs_total=_run_aggregate(ct, Count("pk")),
            **counts,
            run_duration_ms=_run_aggregate(ct, Sum("duration_ms")),
            total_tokens=sum((F(name) for name in USAGE_KEYS[1:]), F(USAGE_KEYS[0])),
        )

    def with_cost(self) -> Self:
        """Annotate ``runs_cost``: what each session's runs cost in USD (correlated
        subqueries; ``None`` when a run that used tokens has no price), which
        ``total_cost`` then reads without a query."""
        # joined, not looked up: no query while building the queryset; runs name the concrete
        # model, as ContentType.get_for_model does
        opts = (self.model._meta.concrete_model or self.model)._meta
        runs = AgentRun.objects.filter(
            session_type__app_label=opts.app_label, session_type__model=opts.model_name,
            session_id=OuterRef("pk")).order_by()
        unpriced = runs.filter(_USED_TOKENS, cost__isnull=True)
        total = runs.values("session_id").annotate(value=Sum("cost")).values("value")
        money = models.DecimalField(max_digits=16, decimal_places=6)
        return self.annotate(runs_cost=Case(
            When(Exists(unpriced), then=Value(None)),
            default=Coalesce(Subquery(total), Value(Decimal(0)), output_field=money),
            output_field=money))

    def page(self, cursor: str | None = None, *, size: int = DEFAULT_PAGE_SIZE,
             order: str = DEFAULT_ORDERING) -> SessionPage:
        """One page of this queryset after ``cursor`` (see :func:`search_sessions`)."""
        return _paginate([self], cursor, size, order)

    def usage_summary(self, *, by: Iterable[str] = ("model",), **filters: Any
                      ) -> list[dict[str, Any]]:
        """:func:`usage_summary` over the runs of the sessions in this queryset."""
        ct = ContentType.objects.get_for_model(self.model)
        runs = AgentRun.objects.filter(session_type=ct,
                                       session_id__in=self.order_by().values("pk"))
        return usage_summary(runs=runs, by=by, **filters)


def _flat(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if isinstance(value, (list, tuple, set, frozenset)):
            out.extend(value)
        else:
            out.append(value)
    return out


def _range(name: str, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if start is not None:
        bounds[f"{name}__gte"] = start
    if end is not None:
        bounds[f"{name}__lt"] = end
    return bounds


#: a run that spent tokens (one that never called the model has no cost to know)
_USED_TOKENS = Q.create([(f"{name}__gt", 0) for name in USAGE_KEYS], connector=Q.OR)


def _run_aggregate(ct: ContentType, aggregate: Any, **filters: Any) -> Coalesce:
    rows = (AgentRun.objects.filter(session_type=ct, session_id=OuterRef("pk"), **filters)
            .order_by().values("session_id").annotate(value=aggregate).values("value"))
    return Coalesce(Subquery(rows), 0, output_field=models.BigIntegerField())


# -- cursor pages ----------------------------------------------------------------------------

@dataclass
class SessionPage:
    """A page of sessions: ``items``, the cursor of the next page (or ``None``), the total."""

    items: list[Any] = field(default_factory=list)
    next_cursor: str | None = None
    total: int = 0

    @property
    def has_more(self) -> bool:
        return self.next_cursor is not None

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def encode_cursor(order: str, value: datetime, pk: Any) -> str:
    raw = json.dumps({"o": order, "v": value.isoformat(), "k": str(pk)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> tuple[datetime, uuid.UUID]:
    """The ``(timestamp, pk)`` a cursor points after; :class:`InvalidInput` if it is bad."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        value, pk = parse_datetime(data["v"]), uuid.UUID(data["k"])
        if data["o"] != order or value is None:
            raise ValueError("cursor for another ordering")
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise exc.InvalidInput({"cursor": ["Invalid cursor."]}, "Invalid cursor.") from None
    return value, pk


def _paginate(querysets: list[Any], cursor: str | None, size: int, order: str) -> SessionPage:
    if order not in ORDERINGS:
        raise ValueError(f"order must be one of {', '.join(ORDERINGS)}; got {order!r}")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ValueError(f"size must be between 1 and {MAX_PAGE_SIZE}; got {size}")
    descending, column = order.startswith("-"), order.lstrip("-")
    after = decode_cursor(cursor, order) if cursor else None
    total = sum(qs.count() for qs in querysets)
    candidates: list[list[Any]] = []
    for qs in querysets:
        qs = qs.order_by(order, "-pk" if descending else "pk")
        if after is not None:
            value, pk = after
            op = "lt" if descending else "gt"
            qs = qs.filter(Q(**{f"{column}__{op}": value})
                           | Q(**{column: value, f"pk__{op}": pk}))
        candidates.append(list(qs[: size + 1]))

    def key(obj: Any) -> tuple[datetime, uuid.UUID]:
        return getattr(obj, column), obj.pk

    merged = list(heapq.merge(*candidates, key=key, reverse=descending))
    items = merged[:size]
    next_cursor = None
    if len(merged) > size:
        last = items[-1]
        next_cursor = encode_cursor(order, getattr(last, column), last.pk)
    return SessionPage(items, next_cursor, total)


def search_sessions(*, models: Iterable[Any] | None = None, cursor: str | None = None,
                    size: int = DEFAULT_PAGE_SIZE, order: str = DEFAULT_ORDERING,
                    with_context: bool = False, **filters: Any) -> SessionPage:
    """Search one, several (``models=[Model or "app.model"]``) or all session models.

    ``filters`` are those of :meth:`SessionQueryMixin.search`. Items of different models are
    merged in ``order`` (newest activity first by default), ties broken by id; ``total``
    counts every match. The context column is deferred unless ``with_context``.
    """
    querysets = []
    for model in resolve_session_models(models):
        # a session model's default manager is its AgentSessionModel.objects
        manager = cast("AgentSessionManager[SessionRecord]", model._default_manager)
        qs = manager.search(**filters)
        if not with_context:
            qs = qs.defer(model.agent_options.context_field)
        querysets.append(qs)
    return _paginate(querysets, cursor, size, order)


# -- stats -----------------------------------------------------------------------------------

def session_stats(session: SessionRecord) -> dict[str, Any]:
    """Turns, runs by status, tokens, durations, events and artifacts of one session.

    ``tokens`` are the session's totals (committed turns); ``run_tokens`` sums every run,
    failed ones included, i.e. what the session really cost. Three queries.
    """
    ct = ContentType.objects.get_for_model(type(session))
    where = {"session_type": ct, "session_id": session.pk}
    runs = AgentRun.objects.filter(**where).aggregate(
        total=Count("pk"),
        **{status: Count("pk", filter=Q(status=status)) for status in RunStatus.values},
        sum_duration=Coalesce(Sum("duration_ms"), 0),
        avg_duration=Avg("duration_ms"),
        sum_iterations=Coalesce(Sum("iterations"), 0),
        first_run_at=Min("started_at"), last_run_at=Max("started_at"),
        **{f"tok_{name}": Coalesce(Sum(name), 0) for name in USAGE_KEYS},
        known_cost=Sum("cost"),
        unpriced_runs=Count("pk", filter=Q(cost__isnull=True) & _USED_TOKENS),
    )
    artifacts = Artifact.objects.filter(**where).aggregate(
        count=Count("pk"), bytes=Coalesce(Sum("size"), 0))
    tokens = {name: getattr(session, name) for name in USAGE_KEYS}
    run_tokens = {name: runs.pop(f"tok_{name}") for name in USAGE_KEYS}
    avg = runs.pop("avg_duration")
    return {
        "turns": session.turn_count,
        "runs": {key: runs.pop(key) for key in ("total", *RunStatus.values)},
        "tokens": {**tokens, "total": sum(tokens.values())},
        "run_tokens": {**run_tokens, "total": sum(run_tokens.values())},
        "duration_ms": runs["sum_duration"],
        "avg_duration_ms": round(avg) if avg is not None else None,
        "iterations": runs["sum_iterations"],
        "first_run_at": runs["first_run_at"],
        "last_run_at": runs["last_run_at"],
        "events": AgentEvent.objects.filter(**where).count(),
        "artifacts": artifacts["count"],
        "artifact_bytes": artifacts["bytes"],
        # what the known prices add up to; unpriced_runs says how many runs it leaves out
        "cost": runs["known_cost"] if runs["known_cost"] is not None else Decimal(0),
        "unpriced_runs": runs["unpriced_runs"],
        "cache_hit_ratio": cache_hit_ratio(run_tokens),
    }


#: what ``usage_summary`` may group runs by
USAGE_GROUPS = ("model", "owner", "day", "kind")


def usage_summary(*, by: Iterable[str] = ("model",), runs: Any = None,
                  models: Iterable[Any] | None = None, owner: Any = None,
                  since: datetime | None = None, until: datetime | None = None,
                  status: str | Iterable[str] | None = None,
                  tzinfo: tzinfo | None = None) -> list[dict[str, Any]]:
    """Token usage and cost of runs grouped by any of ``"model"``, ``"owner"`` (the
    session owner's id), ``"day"`` (``TruncDate``) and ``"kind"`` (turn, compaction, title).

    Each row has the group keys plus ``runs``, ``sessions``, the four token counts,
    ``total_tokens``, ``duration_ms``, ``cost`` (USD, the sum of the known costs),
    ``unpriced_runs`` (runs that used tokens of a model with no price: the cost leaves them
    out) and ``cache_hit_ratio``, ordered by the keys. ``runs`` narrows the ``AgentRun``
    queryset; ``models``/``owner`` narrow by session; ``since <= started_at < until``; days
    are counted in ``tzinfo`` (default: the current time zone).
    """
    by = tuple(by)
    unknown = set(by) - set(USAGE_GROUPS)
    if unknown or not by:
        raise ValueError(f"group by {', '.join(map(repr, USAGE_GROUPS))}, not "
                         f"{sorted(unknown) or 'nothing'}")
    qs = AgentRun.objects.all() if runs is None else runs
    if models is not None or owner is not None:
        owner_pk = owner.pk if isinstance(owner, Model) else owner
        scope = Q(pk__in=[])
        for model in resolve_session_models(models):
            ct = ContentType.objects.get_for_model(model)
            sessions = model._base_manager.order_by()
            if owner is not None:
                sessions = sessions.filter(owner_id=owner_pk)
            cond = Q(session_type=ct)
            if owner is not None:
                cond &= Q(session_id__in=sessions.values("pk"))
            scope |= cond
        qs = qs.filter(scope)
    qs = qs.filter(**_range("started_at", since, until))
    if status:
        qs = qs.filter(status__in=_flat([status]))
    qs = qs.order_by().annotate(day=TruncDate("started_at", tzinfo=tzinfo))
    if "owner" in by:
        qs = qs.annotate(owner=_owner_of_session(models))
    rows = (qs.values(*by)
            # first: its filter reads the token columns, which the sums below rename
            .annotate(unpriced_runs=Count("pk", filter=Q(cost__isnull=True) & _USED_TOKENS))
            .annotate(runs=Count("pk"), sessions=Count("session_id", distinct=True),
                      **{name: Coalesce(Sum(name), 0) for name in USAGE_KEYS},
                      duration_ms=Coalesce(Sum("duration_ms"), 0),
                      known_cost=Sum("cost"))
            .order_by(*by))
    return [{**{k: v for k, v in row.items() if k != "known_cost"},
             "cost": row["known_cost"] if row["known_cost"] is not None else Decimal(0),
             "total_tokens": sum(row[name] for name in USAGE_KEYS),
             "cache_hit_ratio": cache_hit_ratio(row)} for row in rows]


def _owner_of_session(models: Iterable[Any] | None) -> Case:
    """The owner id of a run's session: runs name their session generically, and each
    session model has its own table, so one correlated subquery per model."""
    whens = []
    for model in resolve_session_models(models):
        ct = ContentType.objects.get_for_model(model)
        owner = model._base_manager.filter(pk=OuterRef("session_id")).values("owner_id")[:1]
        whens.append(When(session_type=ct, then=Subquery(owner)))
    return Case(*whens, default=Value(None), output_field=get_user_model()._meta.pk)


def usage_by_model(**kwargs: Any) -> list[dict[str, Any]]:
    return usage_summary(by=("model",), **kwargs)


def usage_by_day(**kwargs: Any) -> list[dict[str, Any]]:
    return usage_summary(by=("day",), **kwargs)



# -- events ----------------------------------------------------------------------------------

def search_events(session: Any = None, *, types: str | Iterable[str] | None = None,
                  run: Any = None, seq_from: int | None = None, seq_to: int | None = None,
                  since: datetime | None = None, until: datetime | None = None
                  ) -> models.QuerySet[AgentEvent]:
    """Events by session, type, run and seq range (``seq_from <= seq <= seq_to``).

    ``types`` are exact types or prefixes ending in ``.*`` (``"run.*"``); ``run`` is an
    ``AgentRun`` or its id; ``since <= created_at < until``. Ordered by session and seq.
    """
    qs = AgentEvent.objects.all()
    if session is not None:
        ct = ContentType.objects.get_for_model(type(session))
        qs = qs.filter(session_type=ct, session_id=session.pk)
    if types:
        wanted = Q()
        for kind in _flat([types]):
            kind = str(kind)
            wanted |= (Q(type__startswith=kind[:-1]) if kind.endswith(".*")
                       else Q(type=kind))
        qs = qs.filter(wanted)
    if run is not None:
        qs = qs.filter(run_id=run.pk if isinstance(run, models.Model) else run)
    if seq_from is not None:
        qs = qs.filter(seq__gte=seq_from)
    if seq_to is not None:
        qs = qs.filter(seq__lte=seq_to)
    qs = qs.filter(**_range("created_at", since, until))
    return qs.order_by("session_id", "seq")


__all__ = [
    "JSONArrayContains", "SessionPage", "SessionQueryMixin", "decode_cursor", "encode_cursor",
    "json_text_q",
    "search_events", "search_sessions", "session_models", "session_stats", "usage_by_day",
    "usage_by_model", "usage_summary",
]
