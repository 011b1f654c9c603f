"""The run log: one row per turn of any session model."""

from __future__ import annotations

import uuid

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..engine.context import USAGE_KEYS
from ..engine.pricing import cache_hit_ratio
from .choices import TERMINAL_RUN_STATUSES, RunKind, RunStatus


class UsageMixin:
    """``usage`` as a dict, for models with the four token columns."""

    @property
    def usage(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in USAGE_KEYS}

    @property
    def cache_hit_ratio(self) -> float | None:
        """Cache read tokens over all input tokens (None before any input)."""
        return cache_hit_ratio(self.usage)


class AgentRun(UsageMixin, models.Model):
    """One turn of one session: what went in, what came out, what it cost, how it ended."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    #: no index of its own: it holds one value per session model, and SQLite's planner
    #: (without ANALYZE statistics) picked it over the ``session_id`` indexes below
    session_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+",
                                     db_index=False)
    session_id = models.UUIDField()
    session = GenericForeignKey("session_type", "session_id")
    status = models.CharField(max_length=32, choices=RunStatus.choices, default=RunStatus.RUNNING)
    #: a conversation turn, or a compaction or title call the library made for the session
    kind = models.CharField(max_length=16, choices=RunKind.choices, default=RunKind.TURN)
    #: a caller's key (``idempotency_key=``, a WebSocket message id, an ``Idempotency-Key``
    #: header), unique per session: resubmitting it returns this run
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    #: the ``seq`` of its ``run.queued`` event: the session's FIFO order (None: never queued)
    queued_seq = models.PositiveBigIntegerField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    #: set by ``cancel_run`` while the run runs; its executor sees it and cancels the turn
    cancel_requested = models.BooleanField(default=False)
    #: who submitted it, through what: ``{"surface", "user_id", "ref"}`` (told to viewers)
    origin = models.JSONField(encoder=DjangoJSONEncoder, default=dict, blank=True)
    #: a turn paused for approvals: where it goes on and the calls with their decisions
    #: (``{"point", "calls", "version", "expires_at"}``), kept after it resumed
    pause = models.JSONField(encoder=DjangoJSONEncoder, null=True, blank=True)
    input = models.JSONField(encoder=DjangoJSONEncoder, default=dict)
    output = models.JSONField(encoder=DjangoJSONEncoder, null=True, blank=True)
    error = models.JSONField(encoder=DjangoJSONEncoder, null=True, blank=True)
    model = models.CharField(max_length=200, blank=True)
    iterations = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cache_creation_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_input_tokens = models.PositiveBigIntegerField(default=0)
    #: the ``stop_reason`` of the run's last model response (``end_turn``, ``max_tokens``...)
    stop_reason = models.CharField(max_length=32, blank=True)
    #: what the run's model calls cost in USD (engine/pricing.py); None: a model had no price
    cost = models.DecimalField(max_digits=16, decimal_places=6, null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = _("agent run")
        ordering = ["started_at"]
        indexes = [
            models.Index(fields=["session_id", "started_at"], name="agent_run_session_idx"),
            models.Index(fields=["status"], name="agent_run_status_idx"),
            models.Index(fields=["session_id", "status", "queued_seq"],
                         name="agent_run_queue_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["session_type", "session_id", "idempotency_key"],
                                    condition=models.Q(idempotency_key__isnull=False),
                                    name="agent_run_idempotency_key"),
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"

    @property
    def ref(self) -> str:
        """The submitter's name for the message (a WebSocket ``ref``), else the run id."""
        return str(self.origin.get("ref") or self.id)

    @property
    def finished(self) -> bool:
        """Whether the run reached a status it never leaves."""
        return self.status in TERMINAL_RUN_STATUSES
