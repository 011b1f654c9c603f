"""Live sessions on Channels: a consumer per tab, one live session per conversation.

Public API (imported lazily, so importing this package needs no ready app registry)::

    from django_agent_session.live import start, ensure_running, is_running, stop
    from django_agent_session.live import stop_session, is_session_running, register_agent
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "start": "api", "ensure_running": "api", "is_running": "api", "stop": "api",
    "stop_all": "api", "stop_session": "api", "is_session_running": "api",
    "owner_channel": "api", "create_conversation": "api", "local_sessions": "registry",
    "StartResult": "api",
    "register_agent": "routers", "unregister_agent": "routers", "default_router": "routers",
    "model_factory": "routers", "resolve": "routers", "SessionSpec": "routers",
    "UnknownAgent": "routers",
    "OwnershipUnavailable": "ownership", "OwnershipConflict": "ownership",
    "LiveSession": "session", "group_name": "session",
    "AgentSessionConsumer": "consumers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
