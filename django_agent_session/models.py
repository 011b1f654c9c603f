"""The abstract session model and the app-owned run and event logs.

Every concrete subclass of :class:`AgentSessionModel` gets its ``Agent`` declaration parsed into
``Model.agent_options`` (an :class:`~django_agent_session.options.AgentOptions`) when Django prepares the
class, and inherits the manager whose methods run turns. Runs and events of all session models
share two tables, keyed by content type and session UUID; the ``GenericRelation`` on the abstract
model gives reverse access and cascade delete.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey, GenericRelation
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.signals import class_prepared
from django.core.signals import setting_changed
from django.utils import timezone
from django.utils.functional import LazyObject, empty
from django.utils.translation import gettext_lazy as _

from .context import USAGE_KEYS
from .managers import AgentSessionManager


class SessionStatus(models.TextChoices):
    IDLE = "idle", _("idle")
    RUNNING = "running", _("running")
    FAILED = "failed", _("failed")


class RunStatus(models.TextChoices):
    RUNNING = "running", _("running")
    COMPLETED = "completed", _("completed")
    FAILED = "failed", _("failed")
    CANCELLED = "cancelled", _("cancelled")


class EventType(models.TextChoices):
    SESSION_STARTED = "session.started", _("session started")
    SESSION_STOPPED = "session.stopped", _("session stopped")
    RUN_STARTED = "run.started", _("run started")
    RUN_COMPLETED = "run.completed", _("run completed")
    RUN_FAILED = "run.failed", _("run failed")
    RUN_CANCELLED = "run.cancelled", _("run cancelled")
    MESSAGE_USER = "message.user", _("user message")
    MESSAGE_ASSISTANT = "message.assistant", _("assistant message")
    MESSAGE_QUEUED = "message.queued", _("message queued")
    TOOL_CALL = "tool.call", _("tool call")
    TOOL_RESULT = "tool.result", _("tool result")
    USAGE = "usage", _("token usage")
    OUTPUT_INVALID = "output.invalid", _("invalid output retried")
    BUDGET_WARNING = "budget.warning", _("token budget warning")
    CONTEXT_RESET = "context.reset", _("context reset")
    SESSION_FORKED = "session.forked", _("session forked")
    SESSION_REWOUND = "session.rewound", _("session rewound")


class UsageMixin:
    """``usage`` as a dict, for models with the four token columns."""

    @property
    def usage(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in USAGE_KEYS}


class AgentRun(UsageMixin, models.Model):
    """One turn of one session: what went in, what came out, what it cost, how it ended."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    session_id = models.UUIDField()
    session = GenericForeignKey("session_type", "session_id")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.RUNNING)
    input = models.JSONField(encoder=DjangoJSONEncoder, default=dict)
    output = models.JSONField(encoder=DjangoJSONEncoder, null=True, blank=True)
    error = models.JSONField(encoder=DjangoJSONEncoder, null=True, blank=True)
    model = models.CharField(max_length=200, blank=True)
    iterations = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cache_creation_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_input_tokens = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = _("agent run")
        ordering = ["started_at"]
        indexes = [
            models.Index(fields=["session_id", "started_at"], name="agent_run_session_idx"),
            models.Index(fields=["status"], name="agent_run_status_idx"),
        ]

    def __str__(self) -> str:
        return f"run {self.id} ({self.status})"


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


class _ArtifactStorage(LazyObject):
    """Resolves ``AGENT_SESSION["ARTIFACT_STORAGE"]`` on first use and again after a change.

    Django evaluates a FileField's storage callable once, at import; this lazy object keeps
    ``override_settings`` (and settings read late) working, like ``default_storage`` does.
    """

    def _setup(self) -> None:
        from django.core.files.storage import default_storage, storages

        from .conf import agent_settings

        alias = agent_settings.ARTIFACT_STORAGE
        self._wrapped = storages[alias] if alias else default_storage


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
    session_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
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


class AgentSessionModel(UsageMixin, models.Model):
    """Abstract base of a persisted agent conversation. Subclass it and declare ``class Agent:``.

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
    status = models.CharField(max_length=16, choices=SessionStatus.choices,
                              default=SessionStatus.IDLE, db_index=True)
    context = models.JSONField(encoder=DjangoJSONEncoder, default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_activity_at = models.DateTimeField(default=timezone.now, db_index=True)
    version = models.PositiveIntegerField(default=0, editable=False)
    event_seq = models.PositiveBigIntegerField(default=0, editable=False)
    turn_count = models.PositiveIntegerField(default=0, editable=False)
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
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

    objects = AgentSessionManager()

    #: set per concrete model when the class is prepared
    agent_options: Any = None

    class Meta:
        abstract = True
        ordering = ["-last_activity_at"]

    def __str__(self) -> str:
        return self.title or f"{type(self).__name__} {self.pk}"

    @property
    def context_data(self) -> dict[str, Any]:
        return getattr(self, self.agent_options.context_field) or {}

    def get_context(self):  # type: ignore[no-untyped-def]
        """The stored context as a :class:`~django_agent_session.context.Context`."""
        from .context import Context

        return Context.from_dict(self.context_data)

    @property
    def last_output(self) -> Any:
        """The latest validated output of the agent (``None`` before the first turn)."""
        return self.context_data.get("last_output")

    @property
    def content_type(self) -> ContentType:
        return ContentType.objects.get_for_model(type(self))


def _install_agent(sender: type[models.Model], **kwargs: Any) -> None:
    """Parse the ``Agent`` declaration of every concrete session model once, at class time."""
    if not issubclass(sender, AgentSessionModel) or sender._meta.abstract:
        return
    if sender._meta.proxy or sender._meta.swapped:
        return
    from .options import AgentOptions

    sender.agent_options = AgentOptions(getattr(sender, "Agent", None), sender)


class_prepared.connect(_install_agent, dispatch_uid="django_agent_session.install_agent")
