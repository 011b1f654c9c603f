"""Agent tools: plain functions whose input schema comes from type hints or a serializer.

A tool is called with keyword arguments validated by DRF; if its first parameter is annotated
:class:`ToolContext` (or named ``ctx``) it also receives the session, owner and run, so it can
act for the right user. Returning :class:`Halt` ends the tool loop with a value.
An agent's tools are a :class:`ToolSet`: these functions, plus the tools its MCP toolsets find
before a turn (``declaration/mcp.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import decimal
import enum
import functools
import inspect
import logging
import types
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence, ValuesView
from typing import Any, Protocol

from rest_framework import fields as f
from rest_framework import serializers

from .schemas import SerializerClass, json_schema, to_serializer

logger = logging.getLogger("django_agent_session")


class ToolContext:
    """What a tool may know about the turn it serves: the session, its owner, the run."""

    def __init__(self, session: Any, run_id: Any, tool_use_id: str = "") -> None:
        self.session = session
        self.run_id = run_id
        self.tool_use_id = tool_use_id

    @functools.cached_property
    def owner(self) -> Any:
        """The session's owner (loaded on first use, so tools that ignore it cost no query)."""
        session = self.session
        return session.owner if session is not None and session.owner_id else None

    def for_call(self, tool_use_id: str) -> ToolContext:
        ctx = ToolContext(self.session, self.run_id, tool_use_id)
        if "owner" in self.__dict__:
            ctx.__dict__["owner"] = self.__dict__["owner"]
        return ctx

    def __repr__(self) -> str:
        return f"<ToolContext session={getattr(self.session, 'pk', None)} run={self.run_id}>"


@dataclasses.dataclass
class Halt:
    """Return ``Halt(value)`` from a tool to end the turn; ``value`` becomes the turn's output."""

    value: Any = None


class Tool:
    """A callable the model may use, with its name, description and validated input schema."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None,
                 description: str | None = None, schema: Any = None,
                 timeout: float | None = None,
                 requires_approval: bool | Callable[[ToolContext, dict[str, Any]], bool] = False
                 ) -> None:
        if not callable(fn):
            raise TypeError(f"tool {fn!r} is not callable")
        if not (isinstance(requires_approval, bool) or callable(requires_approval)):
            raise TypeError(f"requires_approval of tool {fn!r} must be a bool or a callable "
                            f"(ctx, input) -> bool, got {requires_approval!r}")
        self.fn = fn
        #: True, or ``requires_approval(ctx, input) -> bool`` deciding per call
        self.requires_approval = requires_approval
        self.name = name or fn.__name__
        self.description = (description or inspect.getdoc(fn) or self.name).strip()
        self.timeout = timeout
        params = list(inspect.signature(fn).parameters.values())
        hints = _hints(fn)
        self.takes_context = bool(params) and (
            hints.get(params[0].name) is ToolContext or params[0].name == "ctx"
        )
        if self.takes_context:
            params = params[1:]
        self.is_async = inspect.iscoroutinefunction(fn)
        if schema is not None:
            self.serializer: SerializerClass = to_serializer(schema, f"{self.name}_input")
        else:
            self.serializer = _serializer_from_signature(self.name, params, hints)
        self.input_schema = json_schema(self.serializer)

    def needs_approval(self, ctx: ToolContext, input: dict[str, Any]) -> bool:
        """Whether this call waits for a person's decision."""
        if callable(self.requires_approval):
            return bool(self.requires_approval(ctx, input))
        return self.requires_approval

    def to_param(self) -> dict[str, Any]:
        """The tool definition in the Messages API format."""
        return {"name": self.name, "description": self.description,
                "input_schema": self.input_schema}

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"


class ToolSource(Protocol):
    """Tools found at run time rather than declared (an MCP toolset): :class:`ToolSet` asks
    each source to start finding its tools before a turn, then reads what it found."""

    def start_discovery(self) -> concurrent.futures.Future[Any] | None:
        """Start listing the tools if they are unknown or stale; None if they are fresh."""

    def discovered(self) -> tuple[Tool, ...]:
        """The tools found so far (the last known, if the latest listing failed)."""


class ToolSet(Mapping[str, Tool]):
    """An agent's tools by name: its functions, plus what its sources offer once found.

    Reads go to one snapshot dict replaced whole (never mutated), so a turn on another thread
    never sees it half-built. The engine calls :meth:`refresh` (or :meth:`arefresh`) before a
    turn; a name declared as a function wins over a discovered one, and the first source over
    later ones.
    """

    def __init__(self, tools: Mapping[str, Tool], sources: Sequence[ToolSource] = ()) -> None:
        self._declared = dict(tools)
        self.sources = tuple(sources)
        self._found: tuple[tuple[Tool, ...], ...] = ()
        self._snapshot: tuple[dict[str, Tool], list[dict[str, Any]]] = (
            self._declared, [t.to_param() for t in self._declared.values()])

    def __getitem__(self, name: str) -> Tool:
        return self._snapshot[0][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._snapshot[0])

    def __len__(self) -> int:
        return len(self._snapshot[0])

    def get(self, name: str, default: Any = None) -> Any:
        return self._snapshot[0].get(name, default)

    def values(self) -> ValuesView[Tool]:
        return self._snapshot[0].values()

    def params(self) -> list[dict[str, Any]]:
        """The tool definitions sent to the model, in the Messages API format."""
        return self._snapshot[1]

    def refresh(self) -> None:
        """Find the sources' tools (sync: waits, each source bounded by its own timeout)."""
        if not self.sources:
            return
        futures = [f for f in (s.start_discovery() for s in self.sources) if f is not None]
        if futures:
            concurrent.futures.wait(futures)
        self._merge()

    async def arefresh(self) -> None:
        """Async twin of :meth:`refresh` (the listing runs elsewhere; this loop only waits)."""
        if not self.sources:
            return
        futures = [f for f in (s.start_discovery() for s in self.sources) if f is not None]
        if futures:
            # shielded: a cancelled turn must not cancel a listing other turns wait for
            await asyncio.wait([asyncio.shield(asyncio.wrap_future(f)) for f in futures])
        self._merge()

    def _merge(self) -> None:
        found = tuple(source.discovered() for source in self.sources)
        if len(found) == len(self._found) and all(
                a is b or a == b for a, b in zip(found, self._found, strict=True)):
            return
        merged = dict(self._declared)
        for tools in found:
            for item in tools:
                if item.name in merged:
                    logger.warning("Tool %r is offered twice; %r is not used (give the MCP "
                                   "toolset a prefix)", item.name, item)
                    continue
                merged[item.name] = item
        self._found = found
        self._snapshot = (merged, [t.to_param() for t in merged.values()])

    def __repr__(self) -> str:
        return f"<ToolSet {', '.join(self) or '(none)'}>"


def tool(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorator form of :class:`Tool`: ``@tool`` or ``@tool(schema=..., timeout=...,
    requires_approval=...)``."""
    if fn is None:
        return lambda func: Tool(func, **options)
    return Tool(fn, **options)


def as_tool(value: Any) -> Tool:
    return value if isinstance(value, Tool) else Tool(value)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolved forward references: fall back to strings
        return getattr(fn, "__annotations__", {})


def _serializer_from_signature(name: str, params: list[inspect.Parameter],
                               hints: dict[str, Any]) -> SerializerClass:
    attrs: dict[str, f.Field] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        required = param.default is inspect.Parameter.empty
        kwargs: dict[str, Any] = {"required": required}
        if not required:
            kwargs["default"] = param.default
        attrs[param.name] = _field_for(hints.get(param.name, str), kwargs)
    return type(f"{name}_input", (serializers.Serializer,), attrs)


_SIMPLE: dict[Any, type[f.Field]] = {
    int: f.IntegerField, float: f.FloatField, bool: f.BooleanField,
    decimal.Decimal: f.DecimalField, uuid.UUID: f.UUIDField,
    datetime.datetime: f.DateTimeField, datetime.date: f.DateField, datetime.time: f.TimeField,
}


def _field_for(hint: Any, kwargs: dict[str, Any]) -> f.Field:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        kwargs = {**kwargs, "allow_null": True}
        hint = inner[0] if len(inner) == 1 else Any
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return f.ChoiceField(choices=list(args), **kwargs)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f.ChoiceField(choices=[m.value for m in hint], **kwargs)
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set):
        child = _field_for(args[0], {}) if args else f.JSONField()
        return f.ListField(child=child, **kwargs)
    if origin is dict or hint is dict:
        child = _field_for(args[1], {}) if len(args) == 2 else f.JSONField()
        return f.DictField(child=child, **kwargs)
    if hint is decimal.Decimal:
        return f.DecimalField(max_digits=30, decimal_places=10, **kwargs)
    if hint in _SIMPLE:
        return _SIMPLE[hint](**kwargs)
    if hint is str:
        return f.CharField(allow_blank=True, trim_whitespace=False, **kwargs)
    return f.JSONField(**kwargs)


__all__ = ["Halt", "Tool", "ToolContext", "as_tool", "tool"]
