"""Artifact rows and the storage their files go to."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import InvalidStorageError, Storage, default_storage, storages
from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import setting_changed
from django.db import models
from django.utils import timezone
from django.utils.functional import LazyObject, empty
from django.utils.translation import gettext_lazy as _

from ..conf import agent_settings
from .runs import AgentRun


class _ArtifactStorage(LazyObject):
    """Resolves ``AGENT_SESSION["ARTIFACT_STORAGE"]`` on first use and again after a change.

    Django evaluates a FileField's storage callable once, at import; this lazy object keeps
    ``override_settings`` (and settings read late) working, like ``default_storage`` does.
    """

    #: the resolved storage, or ``empty`` until first use (and after a settings change)
    _wrapped: object

    def _setup(self) -> None:
        alias = agent_settings.ARTIFACT_STORAGE
        try:
            self._wrapped = storages[alias] if alias else default_storage
        except InvalidStorageError:  # E007 reports it; Django must still start to run checks
            self._wrapped = _UnknownStorage(alias)


class _UnknownStorage(Storage):
    """Stands in for an ``ARTIFACT_STORAGE`` alias missing from ``STORAGES``: a ``Storage``
    (so the model still loads and ``check`` reports E007) that fails on any use."""

    def __init__(self, alias: str) -> None:
        object.__setattr__(self, "_alias", alias)

    def __getattribute__(self, name: str) -> Any:
        if name == "__class__":  # isinstance() (FileField checks its storage at import)
            return object.__getattribute__(self, name)
        alias = object.__getattribute__(self, "_alias")
        raise ImproperlyConfigured(
            f"AGENT_SESSION['ARTIFACT_STORAGE'] = {alias!r} is not an alias of STORAGES.")


_artifact_storage = _ArtifactStorage()


def _reset_artifact_storage(*, setting: str, **kwargs: Any) -> None:
    if setting in ("AGENT_SESSION", "STORAGES"):
        _artifact_storage._wrapped = empty


setting_changed.connect(_reset_artifact_storage)


def artifact_storage() -> Any:
    """The storage for artifact files: ``AGENT_SESSION["ARTIFACT_STORAGE"]`` or the default."""
    return _artifact_storage


def artifact_path(instance: Artifact, filename: str) -> str:
    return f"agent_artifacts/{instance.session_id}/{instance.id}/{filename}"


class Artifact(models.Model):
    """A file a run produced or a tool stored, kept through Django's storage API."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    #: no index of its own: it holds one value per session model, and SQLite's planner
    #: (without ANALYZE statistics) picked it over the ``session_id`` indexes below
    session_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+",
                                     db_index=False)
    session_id = models.UUIDField()
    session = GenericForeignKey("session_type", "session_id")
    run = models.ForeignKey(AgentRun, null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="artifacts")
    key = models.CharField(max_length=255)
    file = models.FileField(upload_to=artifact_path, storage=artifact_storage, max_length=500)
    size = models.PositiveBigIntegerField(default=0)
    checksum = models.CharField(max_length=64, blank=True, help_text="SHA-256, hex")
    content_type = models.CharField(max_length=255, blank=True)
    metadata = models.JSONField(encoder=DjangoJSONEncoder, default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("agent artifact")
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["session_id", "key"], name="agent_artifact_unique_key"),
        ]

    def __str__(self) -> str:
        return self.key
