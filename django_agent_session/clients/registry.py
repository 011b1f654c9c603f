"""Chooses a client by the ``provider`` prefix of ``Agent.client``.

Providers map to classes in ``AGENT_SESSION["CLIENTS"]``; one instance per provider is kept so
the SDK's HTTP connection pool is reused across turns.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

_cache: dict[str, Any] = {}
_lock = threading.Lock()


def get_client_class(provider: str) -> type:
    from ..conf import agent_settings

    path = agent_settings.CLIENTS.get(provider)
    if path is None:
        raise ImproperlyConfigured(
            f"No client for provider {provider!r}; known: "
            f"{', '.join(sorted(agent_settings.CLIENTS))}. Add it to AGENT_SESSION['CLIENTS']."
        )
    return import_string(path) if isinstance(path, str) else path


def get_client(provider: str) -> Any:
    """The shared client instance for ``provider``."""
    client = _cache.get(provider)
    if client is None:
        with _lock:
            client = _cache.get(provider)
            if client is None:
                client = _cache[provider] = get_client_class(provider)()
    return client


def clear_client_cache() -> None:
    """Forget client instances (called when ``AGENT_SESSION`` changes)."""
    with _lock:
        _cache.clear()
