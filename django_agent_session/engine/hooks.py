"""``Agent.hooks``: the project's own code at four points of a session's life.

``before_call``
    before each model call of a turn, with a *copy* of the request (``call.request``): it may
    change any field of it (``system``, ``messages``, ``max_tokens``, ``tools``,
    ``temperature``, ``thinking``, ``metadata``, even ``model``) or return another
    :class:`ModelRequest`. What it changes is sent for this call only: the stored
    conversation is never changed (the messages are a deep copy; the reply is appended to the
    stored messages, not to the hook's).
``after_render``
    once the instruction is rendered for a new session, with ``rendered.system``: it may
    change the system prompt (set it, or return a string), which is then stored. It runs in
    sync code (``astart_session`` renders in a thread); REST may render once more to
    validate the args before it streams, so keep it free of side effects.
``after_call``
    after each model call of a turn, with the request sent and a copy of the response: it
    observes; what it returns is ignored and what it changes is not stored.
``on_error``
    when a turn fails in the engine (a model error, a tool halting the turn, a limit, a
    failing hook): it observes; the turn fails all the same (the hook cannot swallow the
    error), and a failing ``on_error`` hook is logged, never raised over the turn's error.

A hook is a sync or async callable of one argument. The sync path calls an async hook
through ``async_to_sync``; the async path runs a sync hook in the tool pool (with its own
database connection, as sync tools), so either may use the ORM. A hook that raises fails the
turn: an :class:`~django_agent_session.exceptions.AgentSessionError` it raises is the turn's
error as it is (a deliberate refusal), any other becomes one with code ``hook_failed``. The
failed run is recorded and the context is not changed.

Compaction summaries and titles are the library's own calls: no hook sees them.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync

from .. import exceptions as exc
from ..clients.base import ModelRequest, ModelResponse

logger = logging.getLogger("django_agent_session")

#: the error code of a turn failed by a hook that raised something else than a library error
HOOK_FAILED = exc.HookFailed.code


@dataclasses.dataclass
class ModelCall:
    """What ``before_call`` and ``after_call`` hooks get."""

    #: ``before_call``: a copy to change (or replace); ``after_call``: the request sent
    request: ModelRequest
    #: the session model class
    model: type
    #: the session (None for a turn run straight on an engine)
    session: Any
    run_id: Any
    #: the model call's number in the turn's tool loop (1 for the first)
    iteration: int
    #: ``after_call`` only: a copy of the response
    response: ModelResponse | None = None


@dataclasses.dataclass
class Rendered:
    """What an ``after_render`` hook gets: the system prompt to keep or change."""

    system: str
    instruction_args: dict[str, Any]
    model: type
    #: the conversation's configuration (``config=``, a factory's ``config``), or {}
    config: dict[str, Any]


@dataclasses.dataclass
class TurnError:
    """What an ``on_error`` hook gets."""

    error: BaseException
    model: type
    session: Any
    run_id: Any


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))


async def _awaited(value: Any) -> Any:
    return await value


def _failure(options: Any, name: str, fn: Any, error: Exception) -> exc.AgentSessionError:
    """The turn's error for a hook that raised ``error``."""
    if isinstance(error, exc.AgentSessionError):
        return error
    label = getattr(fn, "__qualname__", None) or repr(fn)
    failure = exc.HookFailed(
        f"{options.model.__name__}.Agent.hooks {name} hook {label} failed: "
        f"{type(error).__name__}: {error}", hook=name)
    failure.__cause__ = error
    return failure


def _call_sync(fn: Callable[..., Any], arg: Any) -> Any:
    """A hook from sync code (an async one through ``async_to_sync``)."""
    if _is_async(fn):
        return async_to_sync(fn)(arg)
    value = fn(arg)
    if inspect.isawaitable(value):
        return async_to_sync(_awaited)(value)
    return value


#: runs a sync hook off the event loop: ``offload(fn, arg)`` -> awaitable of its value
Offload = Callable[[Callable[..., Any], Any], Awaitable[Any]]


async def _call_async(fn: Callable[..., Any], arg: Any, offload: Offload) -> Any:
    """A hook from the event loop (a sync one through ``offload``: a pool thread)."""
    if _is_async(fn):
        return await fn(arg)
    value = await offload(fn, arg)
    if inspect.isawaitable(value):
        return await value
    return value


class Hooks:
    """Runs one agent's hooks (``options.hooks``: name -> tuple of callables)."""

    def __init__(self, options: Any) -> None:
        self.options = options
        hooks = getattr(options, "hooks", None) or {}
        self.before_call: tuple[Callable[..., Any], ...] = tuple(hooks.get("before_call", ()))
        self.after_call: tuple[Callable[..., Any], ...] = tuple(hooks.get("after_call", ()))
        self.on_error: tuple[Callable[..., Any], ...] = tuple(hooks.get("on_error", ()))
        self.after_render: tuple[Callable[..., Any], ...] = tuple(hooks.get("after_render", ()))

    # -- before_call ---------------------------------------------------------------------------

    def _copy(self, call: ModelCall) -> ModelCall:
        request = dataclasses.replace(
            call.request, messages=copy.deepcopy(call.request.messages),
            tools=copy.deepcopy(call.request.tools), metadata=dict(call.request.metadata))
        return dataclasses.replace(call, request=request)

    def _request(self, fn: Any, call: ModelCall, value: Any) -> None:
        """Take a hook's answer: None (``call.request`` as it left it) or a request."""
        if value is not None:
            if not isinstance(value, ModelRequest):
                raise TypeError(f"before_call must return None or a ModelRequest, "
                                f"got {type(value).__name__}")
            call.request = value
        request = call.request
        if not isinstance(request, ModelRequest):
            raise TypeError("call.request must stay a ModelRequest")
        if not isinstance(request.messages, list) or not request.messages:
            raise TypeError("the request's messages must be a non-empty list")
        if isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int) \
                or request.max_tokens < 1:
            raise TypeError(f"the request's max_tokens must be a positive int, "
                            f"got {request.max_tokens!r}")
        if not isinstance(request.system, str) or not isinstance(request.tools, list):
            raise TypeError("the request's system must be a str and its tools a list")

    def before(self, call: ModelCall) -> ModelRequest:
        """The request to send, after every ``before_call`` hook (sync path)."""
        call = self._copy(call)
        for fn in self.before_call:
            try:
                self._request(fn, call, _call_sync(fn, call))
            except Exception as error:
                raise _failure(self.options, "before_call", fn, error) from error
        return call.request

    async def abefore(self, call: ModelCall, offload: Offload) -> ModelRequest:
        call = self._copy(call)
        for fn in self.before_call:
            try:
                self._request(fn, call, await _call_async(fn, call, offload))
            except Exception as error:
                raise _failure(self.options, "before_call", fn, error) from error
        return call.request

    # -- after_call ------------------------------------------------------------------------

    def _seen(self, call: ModelCall) -> ModelCall:
        """What an ``after_call`` hook gets: copies of the request (whose messages are the
        ones the turn stores) and of the response, so it cannot change either."""
        return dataclasses.replace(self._copy(call), response=copy.deepcopy(call.response))

    def after(self, call: ModelCall) -> None:
        for fn in self.after_call:
            try:
                _call_sync(fn, self._seen(call))
            except Exception as error:
                raise _failure(self.options, "after_call", fn, error) from error

    async def aafter(self, call: ModelCall, offload: Offload) -> None:
        for fn in self.after_call:
            try:
                await _call_async(fn, self._seen(call), offload)
            except Exception as error:
                raise _failure(self.options, "after_call", fn, error) from error

    # -- on_error --------------------------------------------------------------------------

    def failed(self, failure: TurnError) -> None:
        for fn in self.on_error:
            try:
                _call_sync(fn, failure)
            except Exception:
                logger.exception("%s.Agent.hooks on_error hook %r failed",
                                 self.options.model.__name__, fn)

    async def afailed(self, failure: TurnError, offload: Offload) -> None:
        for fn in self.on_error:
            try:
                await _call_async(fn, failure, offload)
            except Exception:
                logger.exception("%s.Agent.hooks on_error hook %r failed",
                                 self.options.model.__name__, fn)

    # -- after_render ----------------------------------------------------------------------

    def _system(self, fn: Any, rendered: Rendered, value: Any) -> None:
        if value is not None:
            rendered.system = value
        if not isinstance(rendered.system, str):
            raise TypeError(f"after_render must leave a str system prompt, "
                            f"got {type(rendered.system).__name__}")

    def render(self, rendered: Rendered) -> str:
        """The system prompt after every ``after_render`` hook (sync)."""
        for fn in self.after_render:
            try:
                self._system(fn, rendered, _call_sync(fn, rendered))
            except Exception as error:
                raise _failure(self.options, "after_render", fn, error) from error
        return rendered.system


__all__ = ["HOOK_FAILED", "Hooks", "ModelCall", "Rendered", "TurnError"]
