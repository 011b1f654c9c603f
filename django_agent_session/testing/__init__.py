"""Test kit shipped to users: scripted client and a loopback Messages API server."""

from .scripted import (
    Scripted,
    ScriptedClient,
    json_reply,
    text_reply,
    tool_reply,
    use_scripted_client,
)

__all__ = [
    "Scripted",
    "ScriptedClient",
    "json_reply",
    "text_reply",
    "tool_reply",
    "use_scripted_client",
]
