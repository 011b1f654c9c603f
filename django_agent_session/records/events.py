"""The event log: one row per fact, ``seq`` gap-free per session.

Most events are written by turns; the project may append its own (``custom.*`` types, see
``store/events.py``) under an id of its choosing, ``key``, unique per session, so a retried
append finds the event it stored instead of storing a second one.
"""

from __future__ import annotations

from typing import Any

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .choices import EventType
from .runs import AgentRun


class AgentEvent(models.Model):
    """One fact in a session's log; ``seq`` is unique per session and gap-free."""

    id = models.BigAutoField(primary_key=True)
    #: no index of its own: it holds one value per session model, and SQLite's planner
    #: (without ANALYZE statistics) picked it over the ``session_id`` indexes below
    session_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+",
                                     db_index=False)
    session_id = models.UUIDField()
    session = GenericForeignKey("session_type", "session_id")
    seq = models.PositiveBigIntegerField()
    type = models.CharField(max_length=64, choices=EventType.choices)
    run = models.ForeignKey(AgentRun, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="events")
    data = models.JSONField(encoder=DjangoJSONEncoder, default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    #: the caller's id of an event appended from outside a turn (``append_event``); ``None``
    #: for the library's own events. Not written by a turn's statements (store/statements.py):
    #: the column's default ``NULL`` serves them.
    key = models.CharField(max_length=255, null=True, blank=True)

    #: set by ``append_event`` on what it returns: whether that call stored the event
    #: (``False``: the ``key`` was stored before and this is that event)
    created: bool

    class Meta:
        verbose_name = _("agent event")
        ordering = ["session_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["session_id", "seq"], name="agent_event_unique_seq"),
            # a duplicate append loses here, inside its transaction, whatever the timing
            models.UniqueConstraint(fields=["session_id", "key"], condition=Q(key__isnull=False),
                                    name="agent_event_unique_key"),
        ]
        indexes = [models.Index(fields=["type"], name="agent_event_type_idx")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.type}"

    def as_dict(self) -> dict[str, Any]:
        """The event as plain JSON values; the one shape frames and exports are built from."""
        return {"seq": self.seq, "type": self.type,
                "run_id": str(self.run_id) if self.run_id else None, "data": self.data,
                "created_at": self.created_at.isoformat(), "id": self.key}

    def as_frame(self) -> dict[str, Any]:
        """The event as a WebSocket ``event`` frame (its own type goes in ``event``): what a
        replay sends, and what viewers are sent when the project appends one."""
        data = self.as_dict()
        return {"type": "event", "event": data.pop("type"), **data}
