"""Chooses a client by the ``provider`` prefix of ``Agent.client``.

Providers map to classes in ``AGENT_SESSION["CLIENTS"]``; one instance per provider is kept so
the SDK's HTTP connection pool is reused across turns.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from ..conf import SETTING_NAME, agent_settings

_cache: dict[str, Any] = {}
_overrides: dict[str, Any] = {}
_lock = threading.Lock()


def get_client_class(provider: str) -> type:
    path = agent_settings.CLIENTS.get(provider)
    if path is None:
        raise ImproperlyConfigured(
            f"No client for provider {provider!r}; known: "
            f"{', '.join(sorted(agent_settings.CLIENTS))}. Add it to AGENT_SESSION['CLIENTS']."
        )
    return import_string(path) if isinstance(path, str) else path


def get_client(provider: str) -> Any:
    """The shared client instance for ``provider`` (an override, if one is active)."""
    if provider in _overrides:
        return _overrides[provider]
    client = _cache.get(provider)
    if client is None:
        with _lock:
            client = _cache.get(provider)
            if client is None:
                client = _cache[provider] = get_client_class(provider)()
    return client


def clear_client_cache() -> None:
    """Forget client instances (done whenever ``AGENT_SESSION`` changes)."""
    with _lock:
        _cache.clear()


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        clear_client_cache()


setting_changed.connect(_settings_changed)


@contextmanager
def override_client(provider: str, client: Any) -> Iterator[Any]:
    """Route ``provider`` to ``client`` for the block (tests); survives settings changes."""
    previous = _overrides.get(provider, _MISSING)
    _overrides[provider] = client
    try:
        yield client
    finally:
        if previous is _MISSING:
            _overrides.pop(provider, None)
        else:
            _overrides[provider] = previous


_MISSING = object()
