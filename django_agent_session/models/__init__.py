"""The app's models module: the abstract :class:`AgentSessionModel` and the shared tables.

``AgentSessionModel`` sits on top of the store (its manager runs turns through it); the run,
event, artifact and ownership tables live in :mod:`django_agent_session.records`, below the
store, and are re-exported here because this is where Django and users look for them.
"""

from ..records import (
    AgentEvent,
    AgentRun,
    Artifact,
    EventType,
    LiveOwnership,
    Multitask,
    RunKind,
    RunStatus,
    SessionStatus,
    UsageMixin,
    artifact_path,
    artifact_storage,
)
from ..store.manager import AgentSessionManager, AgentSessionQuerySet
from .session import AgentSessionModel

__all__ = ["AgentEvent", "AgentRun", "AgentSessionManager", "AgentSessionModel",
           "AgentSessionQuerySet", "Artifact", "EventType",
           "LiveOwnership", "Multitask", "RunKind", "RunStatus", "SessionStatus", "UsageMixin", "artifact_path",
           "artifact_storage"]
