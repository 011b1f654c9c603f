"""The small protocol every model client implements.

A client turns one :class:`ModelRequest` into one :class:`ModelResponse`. When the caller passes
``on_delta``, the client streams and calls it for every text, thinking or tool-input delta in
order; the final response is the same either way. Errors are raised as the library's typed
:class:`~django_agent_session.exceptions.ModelError` subclasses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: ``on_delta({"kind": "text"|"thinking"|"tool_input", "index": int, "text": str})``
DeltaCallback = Callable[[dict[str, Any]], Any]
AsyncDeltaCallback = Callable[[dict[str, Any]], Awaitable[Any] | Any]


@dataclass
class ModelRequest:
    """Everything one Messages API call needs, provider-neutral."""

    model: str
    system: str
    messages: list[dict[str, Any]]
    max_tokens: int
    tools: list[dict[str, Any]] = field(default_factory=list)
    temperature: float | None = None
    output_schema: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    cache: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    #: server-side compaction: ``{"trigger": input tokens, "instructions": str}`` (None: off)
    compaction: dict[str, Any] | None = None


@dataclass
class ModelResponse:
    """One assistant message: content blocks in the Messages API param format."""

    content: list[dict[str, Any]]
    stop_reason: str | None = "end_turn"
    usage: dict[str, int] = field(default_factory=dict)
    model: str = ""
    request_id: str | None = None
    #: tokens a server-side compaction used (not part of ``usage``), None if none happened
    compaction_usage: dict[str, int] | None = None

    @property
    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.content if b.get("type") == "text")

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.content if b.get("type") == "tool_use"]


@runtime_checkable
class Client(Protocol):
    """A model provider. ``create`` is the sync path; ``acreate`` must not block the loop."""

    def create(self, request: ModelRequest, on_delta: DeltaCallback | None = None
               ) -> ModelResponse: ...

    async def acreate(self, request: ModelRequest, on_delta: AsyncDeltaCallback | None = None
                      ) -> ModelResponse: ...


async def maybe_await(value: Any) -> Any:
    """Await ``value`` if a callback returned an awaitable (async callbacks are allowed)."""
    if hasattr(value, "__await__"):
        return await value
    return value
