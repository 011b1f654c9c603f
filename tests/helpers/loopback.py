"""Settings that point the ``anthropic`` provider (the real SDK) at a loopback Messages API."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from django_agent_session.testing.loopback import LoopbackMessagesServer


def loopback_settings(server: LoopbackMessagesServer, **extra: Any) -> dict[str, Any]:
    """``AGENT_SESSION`` of the test settings pointing the real SDK at ``server`` (no SDK
    retries); ``ANTHROPIC=`` entries are merged into that section, other ``extra`` settings
    added."""
    base = dict(getattr(settings, "AGENT_SESSION", {}))
    anthropic = {"BASE_URL": server.base_url, "API_KEY": "test", "MAX_RETRIES": 0,
                 **extra.pop("ANTHROPIC", {})}
    return {**base, "ANTHROPIC": anthropic, **extra}
