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


def uncached(value: Any) -> Any:
    """``value`` (a request's messages, system or blocks) without prompt-cache breakpoints:
    what the conversation said, whatever the client marked for caching."""
    if isinstance(value, dict):
        return {k: uncached(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [uncached(v) for v in value]
    return value


def system_text(request: Any) -> str:
    """A recorded request's system prompt as text (sent as a string or as text blocks)."""
    system = request.body.get("system")
    if isinstance(system, list):
        return "".join(block.get("text", "") for block in system)
    return system or ""
