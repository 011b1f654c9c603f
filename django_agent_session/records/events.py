"""The event log: one row per fact, ``seq`` gap-free per session."""

from __future__ import annotations

from typing import Any

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .choices import EventType
from .runs import AgentRun


class AgentEvent(models.Model):
    """One fact in a session's log; ``seq`` is unique per session and gap-free."""

    id = models.BigAutoField(primary_key=True)
    session_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    session_id = models.UUIDField()
    session = GenericForeignKey("session_type", "session_id")
    seq = models.PositiveBigIntegerField()
    type = models.CharField(max_length=64, choices=EventType.choices)
    run = models.ForeignKey(AgentRun, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="events")
    data = models.JSONField(encoder=DjangoJSONEncoder, default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("agent event")
        ordering = ["session_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session_id", "seq"], name="agent_event_unique_seq"),
        ]
        indexes = [models.Index(fields=["type"], name="agent_event_type_idx")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"

    def as_dict(self) -> dict[str, Any]:
        """The event as plain JSON values; the one shape frames and exports are built from."""
        return {"seq": self.seq, "type": self.type,
                "run_id": str(self.run_id) if self.run_id else None, "data": self.data,
                "created_at": self.created_at.isoformat()}
