"""A scripted client for fast unit tests: canned replies, no network.

Script items are consumed one per model call: a string (a text reply), a
:class:`ModelResponse`, a :class:`Scripted` (a response with a delay), an exception instance
(raised, e.g. ``ModelOverloaded()``), or a callable taking the :class:`ModelRequest` and
returning any of those. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..clients.base import (
    AsyncDeltaCallback,
    DeltaCallback,
    ModelRequest,
    ModelResponse,
)
from ..clients.registry import override_client
from ..clients.streaming import stream_async, stream_sync

_ids = itertools.count(1)


@dataclass
class Scripted:
    """A canned response plus the seconds to wait before each streamed delta."""

    response: ModelResponse
    delay: float = 0.0


def text_reply(text: str, *, usage: dict[str, int] | None = None, delay: float = 0.0,
               thinking: str | None = None) -> Scripted:
    content: list[dict[str, Any]] = []
    if thinking is not None:
        content.append({"type": "thinking", "thinking": thinking, "signature": "sig-scripted"})
    content.append({"type": "text", "text": text})
    return Scripted(ModelResponse(content=content, usage=_usage(usage)), delay)


def tool_reply(name: str, input: dict[str, Any], *, id: str | None = None,
               text: str | None = None, usage: dict[str, int] | None = None,
               delay: float = 0.0) -> Scripted:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": id or f"toolu_scripted_{next(_ids)}",
                    "name": name, "input": input})
    return Scripted(ModelResponse(content=content, stop_reason="tool_use", usage=_usage(usage)),
                    delay)


def json_reply(obj: Any, **kwargs: Any) -> Scripted:
    """A structured-output reply: a text block holding ``obj`` as JSON."""
    return text_reply(json.dumps(obj), **kwargs)


def _usage(usage: dict[str, int] | None) -> dict[str, int]:
    return {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0, **(usage or {})}


ScriptItem = Any


@dataclass
class ScriptedClient:
    """A client that answers from a script (see the module docstring)."""

    script: deque[ScriptItem] = field(default_factory=deque)
    requests: list[ModelRequest] = field(default_factory=list)
    default: ScriptItem = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def enqueue(self, *items: ScriptItem) -> ScriptedClient:
        with self._lock:
            self.script.extend(items)
        return self

    def reset(self) -> None:
        with self._lock:
            self.script.clear()
            self.requests.clear()
            self.default = None

    def _next(self, request: ModelRequest) -> Scripted:
        with self._lock:
            # a snapshot: the engine keeps building its message list after the call
            self.requests.append(copy.deepcopy(request))
            if self.script:
                item = self.script.popleft()
            elif self.default is not None:
                item = self.default
            else:
                raise AssertionError(
                    f"ScriptedClient: script exhausted at request #{len(self.requests)}"
                )
        if callable(item) and not isinstance(item, BaseException):
            item = item(request)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, str):
            item = text_reply(item)
        if isinstance(item, ModelResponse):
            item = Scripted(item)
        if not isinstance(item, Scripted):
            raise TypeError(f"ScriptedClient: unsupported script item {item!r}")
        response = item.response
        response.model = response.model or request.model
        return item

    def create(self, request: ModelRequest, on_delta: DeltaCallback | None = None
               ) -> ModelResponse:
        item = self._next(request)
        stream_sync(item.response, on_delta, item.delay)
        return _copy(item.response)

    async def acreate(self, request: ModelRequest, on_delta: AsyncDeltaCallback | None = None
                      ) -> ModelResponse:
        item = self._next(request)
        await stream_async(item.response, on_delta, item.delay)
        return _copy(item.response)


def _copy(response: ModelResponse) -> ModelResponse:
    return ModelResponse(content=json.loads(json.dumps(response.content)),
                         stop_reason=response.stop_reason, usage=dict(response.usage),
                         model=response.model, request_id=response.request_id)


@contextmanager
def use_scripted_client(*items: ScriptItem, provider: str = "anthropic",
                        default: ScriptItem = None) -> Iterator[ScriptedClient]:
    """Route ``provider`` to a fresh :class:`ScriptedClient` for the block and yield it.

    The route survives ``override_settings(AGENT_SESSION=...)`` inside the block.
    """
    client = ScriptedClient()
    client.enqueue(*items)
    client.default = default
    with override_client(provider, client):
        yield client
