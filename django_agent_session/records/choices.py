"""The statuses and event types the app stores (Django ``TextChoices``)."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class SessionStatus(models.TextChoices):
    IDLE = "idle", _("idle")
    RUNNING = "running", _("running")
    FAILED = "failed", _("failed")


class RunStatus(models.TextChoices):
    QUEUED = "queued", _("queued")
    RUNNING = "running", _("running")
    AWAITING_APPROVAL = "awaiting_approval", _("awaiting approval")
    COMPLETED = "completed", _("completed")
    FAILED = "failed", _("failed")
    CANCELLED = "cancelled", _("cancelled")
    #: the reply was cut off at ``max_tokens`` (after any continuations): not a complete answer
    INCOMPLETE = "incomplete", _("incomplete")
    #: the model declined to answer (``stop_reason == "refusal"``)
    REFUSED = "refused", _("refused")


class RunKind(models.TextChoices):
    """What a run was for: a turn of the conversation, or work the library did around one."""

    TURN = "turn", _("turn")
    COMPACTION = "compaction", _("compaction")
    TITLE = "title", _("title")


class EventType(models.TextChoices):
    SESSION_STARTED = "session.started", _("session started")
    SESSION_STOPPED = "session.stopped", _("session stopped")
    RUN_QUEUED = "run.queued", _("run queued")
    RUN_STARTED = "run.started", _("run started")
    RUN_COMPLETED = "run.completed", _("run completed")
    RUN_FAILED = "run.failed", _("run failed")
    RUN_CANCELLED = "run.cancelled", _("run cancelled")
    MESSAGE_USER = "message.user", _("user message")
    MESSAGE_ASSISTANT = "message.assistant", _("assistant message")
    MESSAGE_QUEUED = "message.queued", _("message queued")
    TOOL_CALL = "tool.call", _("tool call")
    TOOL_RESULT = "tool.result", _("tool result")
    TOOL_APPROVAL_REQUESTED = "tool.approval_requested", _("tool call awaits approval")
    TOOL_APPROVAL_GRANTED = "tool.approval_granted", _("tool call approved")
    TOOL_APPROVAL_DENIED = "tool.approval_denied", _("tool call rejected")
    RUN_RESUMED = "run.resumed", _("run resumed")
    USAGE = "usage", _("token usage")
    OUTPUT_INVALID = "output.invalid", _("invalid output retried")
    BUDGET_WARNING = "budget.warning", _("token budget warning")
    CONTEXT_RESET = "context.reset", _("context reset")
    CONTEXT_COMPACTED = "context.compacted", _("context compacted")
    SESSION_TITLED = "session.titled", _("session titled")
    SESSION_FORKED = "session.forked", _("session forked")
    SESSION_REWOUND = "session.rewound", _("session rewound")


#: run statuses a run never leaves
TERMINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED,
                                   RunStatus.INCOMPLETE, RunStatus.REFUSED})


class Multitask(models.TextChoices):
    """What a new message does when the session already has a run running or queued."""

    ENQUEUE = "enqueue", _("run after the runs before it")
    REJECT = "reject", _("refuse with SessionBusy")
    INTERRUPT = "interrupt", _("cancel the running turn, then run after the queued ones")
    ROLLBACK = "rollback", _("cancel the running turn and every queued one, then run")
