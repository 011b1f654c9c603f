"""The abstract session row: its columns, its logs, and typed access to its context."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.contenttypes.fields import GenericRelation
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Count, Q, Sum
from django.utils import timezone

from ..declaration.options import AgentOptions
from ..engine.context import USAGE_KEYS, Context
from .artifacts import Artifact
from .choices import SessionStatus
from .events import AgentEvent
from .fields import LeaseExpiryField, LeaseTokenField, StatusField
from .runs import AgentRun, UsageMixin


class SessionRecord(UsageMixin, models.Model):
    """The columns of a session row and what reads them; the store writes it.

    :class:`~django_agent_session.models.AgentSessionModel` adds the manager on top. This
    abstract base sits below the store so the store can name the row it writes without
    importing the manager that calls it.

    The turn lease (``lease_token``, ``lease_expires_at``) serializes turns across threads and
    processes; ``version`` is bumped by every context commit (optimistic versioning), and
    ``event_seq`` is the per-session event counter.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                              on_delete=models.CASCADE, related_name="+")
    title = models.CharField(max_length=200, blank=True)
    #: free-form, queryable labels (tags, tenant, source...)
    metadata = models.JSONField(encoder=DjangoJSONEncoder, default=dict, blank=True)
    #: pinned sessions are never pruned by retention
    pinned = models.BooleanField(default=False, db_index=True)
    status = StatusField(max_length=16, choices=SessionStatus.choices,
                         default=SessionStatus.IDLE, db_index=True)
    context = models.JSONField(encoder=DjangoJSONEncoder, default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_activity_at = models.DateTimeField(default=timezone.now, db_index=True)
    version = models.PositiveIntegerField(default=0, editable=False)
    event_seq = models.PositiveBigIntegerField(default=0, editable=False)
    turn_count = models.PositiveIntegerField(default=0, editable=False)
    lease_token = LeaseTokenField(null=True, blank=True, editable=False)
    lease_expires_at = LeaseExpiryField(null=True, blank=True, editable=False)
    input_tokens = models.PositiveBigIntegerField(default=0, editable=False)
    output_tokens = models.PositiveBigIntegerField(default=0, editable=False)
    cache_creation_input_tokens = models.PositiveBigIntegerField(default=0, editable=False)
    cache_read_input_tokens = models.PositiveBigIntegerField(default=0, editable=False)

    runs = GenericRelation(AgentRun, content_type_field="session_type",
                           object_id_field="session_id")
    events = GenericRelation(AgentEvent, content_type_field="session_type",
                             object_id_field="session_id")
    artifacts = GenericRelation(Artifact, content_type_field="session_type",
                                object_id_field="session_id")

    #: set per concrete model when the class is prepared
    agent_options: ClassVar[AgentOptions] = None  # type: ignore[assignment]

    class Meta:
        abstract = True
        ordering = ["-last_activity_at"]

    def __str__(self) -> str:
        return self.title or f"{type(self).__name__} {self.pk}"

    @property
    def context_data(self) -> dict[str, Any]:
        return getattr(self, self.agent_options.context_field) or {}

    def get_context(self) -> Context:
        """The stored context as a :class:`~django_agent_session.engine.context.Context`."""
        return Context.from_dict(self.context_data)

    @property
    def last_output(self) -> Any:
        """The latest validated output of the agent (``None`` before the first turn)."""
        return self.context_data.get("last_output")

    @property
    def content_type(self) -> ContentType:
        return ContentType.objects.get_for_model(type(self))

    @property
    def total_cost(self) -> Decimal | None:
        """What the session's runs cost in USD (turns, compactions, titles), or None when a
        run that used tokens has no price. The ``runs_cost`` annotation of ``with_cost()``
        when present, else one query."""
        if "runs_cost" in self.__dict__:
            return self.__dict__["runs_cost"]
        totals = AgentRun.objects.filter(
            session_type=self.content_type, session_id=self.pk).aggregate(
            known=Sum("cost"), unpriced=Count("pk", filter=Q(cost__isnull=True) & Q.create(
                [(f"{name}__gt", 0) for name in USAGE_KEYS], connector=Q.OR)))
        if totals["unpriced"]:
            return None
        return totals["known"] if totals["known"] is not None else Decimal(0)


def extra_fields(model: type[SessionRecord]) -> list[models.Field]:
    """Concrete columns a subclass adds to the record (exported, copied by a fork)."""
    base = {f.name for f in SessionRecord._meta.local_fields}
    context_field = model.agent_options.context_field
    return [f for f in model._meta.concrete_fields
            if f.name not in base and f.name != context_field and not f.primary_key]
