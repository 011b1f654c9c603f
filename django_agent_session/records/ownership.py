"""The live-ownership lease: which live session runs a conversation's turns, cluster-wide."""

from __future__ import annotations

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class LiveOwnership(models.Model):
    """Which live session (named by its channel) runs turns for a conversation, cluster-wide.

    A row is an expiring lease: the owner renews it while alive; a crashed owner's lease
    expires and the next message elects a new owner.
    """

    session_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    session_id = models.UUIDField(unique=True)
    owner_channel = models.CharField(max_length=255)
    expires_at = models.DateTimeField()
    started_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("live session ownership")

    def __str__(self) -> str:
        return f"{self.session_id} -> {self.owner_channel}"
