"""The tables the app owns: runs, events, artifacts and live-ownership leases.

Sessions of every concrete model share them, keyed by content type and session UUID. They sit
below the store (which writes them). :class:`SessionRecord` is the abstract session row the
store writes; ``models.AgentSessionModel`` adds the manager on top of it.
"""

from .artifacts import Artifact, artifact_path, artifact_storage
from .choices import (
    TERMINAL_RUN_STATUSES,
    EventType,
    Multitask,
    RunKind,
    RunStatus,
    SessionStatus,
)
from .events import AgentEvent
from .ownership import LiveOwnership
from .runs import AgentRun, UsageMixin
from .session import SessionRecord, extra_fields

__all__ = ["TERMINAL_RUN_STATUSES", "AgentEvent", "AgentRun", "Artifact", "EventType",
           "LiveOwnership", "Multitask", "RunKind", "RunStatus", "SessionRecord", "SessionStatus",
           "UsageMixin", "artifact_path", "artifact_storage", "extra_fields"]
