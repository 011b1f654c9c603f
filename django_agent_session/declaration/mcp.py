"""MCP toolsets in ``Agent.tools``: the tools of an MCP server, found when first needed.

``MCPToolset(url=...)`` (streamable HTTP) or ``MCPToolset(command=[...])`` (a local process
over stdio) is declared with the agent, but nothing connects at import: a server may be down
then. Before a turn the engine asks the agent's :class:`~.tools.ToolSet` to refresh; a toolset
lists its server's tools on first use and again once ``refresh`` seconds have passed. Each tool
it keeps becomes an :class:`MCPTool`, an ordinary :class:`~.tools.Tool` whose input schema is
the server's ``inputSchema`` and whose call is a ``tools/call`` carrying the tool context as
``_meta``. So approvals, timeouts, ``tool_errors`` and events work as for any tool.

A server that is down fails the call as a tool error the model reads (never the turn, unless
``tool_errors = "halt"``); one down before its tools were ever listed offers none that turn.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rest_framework import serializers

from ..clients import mcp as client
from .tools import Tool, ToolContext

if TYPE_CHECKING:
    import mcp_types

logger = logging.getLogger("django_agent_session.mcp")

#: the ``_meta`` keys of the tool context carry this prefix (MCP reserves ``mcp``-like ones)
META_PREFIX = "django-agent-session/"
#: what the Messages API accepts as a tool name
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
#: after a failed listing, the next turns wait this long before trying again
RETRY_AFTER = 10.0
#: seconds the engine waits for an MCP call beyond its toolset's timeout
BACKSTOP = 1.0

Approval = bool | Callable[[ToolContext, dict[str, Any]], bool] | Collection[str]


class MCPToolset:
    """The tools of one MCP server, for ``Agent.tools``.

    ``url`` (streamable HTTP, optional ``headers``) or ``command`` (argv of a local server
    spoken to over stdio, optional ``env`` and ``cwd``); ``allowed_tools`` names the server's
    tools the agent may use (None: all); ``timeout`` bounds connecting plus each call, and
    each listing, in seconds; ``refresh`` is how long a listing is reused (None: for the
    process's life); ``prefix`` is put before each tool's name; ``requires_approval`` is a
    bool, a ``(ctx, input) -> bool`` callable, or the names of the tools that need one;
    ``meta(ctx) -> dict`` adds to the ``_meta`` sent with each call.

    Checked where the ``Agent`` is parsed (errors name the model), not here.
    """

    def __init__(self, *, url: str | None = None, command: Sequence[str] | None = None,
                 headers: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 allowed_tools: Collection[str] | None = None, timeout: float = 30.0,
                 refresh: float | None = 300.0, prefix: str = "",
                 requires_approval: Approval = False,
                 meta: Callable[[ToolContext], Mapping[str, Any]] | None = None) -> None:
        self.url, self.command, self.headers = url, command, headers
        self.env, self.cwd = env, cwd
        self.allowed_tools, self.timeout, self.refresh = allowed_tools, timeout, refresh
        self.prefix, self.requires_approval, self.meta = prefix, requires_approval, meta
        self._lock = threading.Lock()
        self._tools: tuple[Tool, ...] = ()
        self._listed_at: float | None = None  # monotonic time of the last successful listing
        self._failed_at: float | None = None
        self._listing: concurrent.futures.Future[None] | None = None
        self._listing_pid = 0

    # -- the declaration, checked once by AgentOptions -----------------------------------

    def problems(self) -> list[str]:
        """What is wrong with this declaration (each problem names the toolset)."""
        problems = []
        if (self.url is None) == (self.command is None):
            problems.append("needs url= or command=, not both")
        if self.url is not None and not (isinstance(self.url, str) and
                                         self.url.startswith(("http://", "https://"))):
            problems.append(f"url must be an http(s) URL, got {self.url!r}")
        if self.command is not None and (
                isinstance(self.command, str) or not isinstance(self.command, Sequence)
                or not self.command or not all(isinstance(a, str) for a in self.command)):
            problems.append(f"command must be a non-empty list of strings (argv), "
                            f"got {self.command!r}")
        for name in ("headers", "env"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, Mapping) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
                problems.append(f"{name} must be a dict of strings, got {value!r}")
        if self.headers and self.url is None:
            problems.append("headers are sent over HTTP only (with url=)")
        if (self.env or self.cwd) and self.command is None:
            problems.append("env and cwd are for a local server only (with command=)")
        if self.allowed_tools is not None and (
                isinstance(self.allowed_tools, str) or not isinstance(self.allowed_tools,
                                                                      Collection)
                or not all(isinstance(n, str) and n for n in self.allowed_tools)):
            problems.append(f"allowed_tools must be a list of tool names or None, "
                            f"got {self.allowed_tools!r}")
        if not _seconds(self.timeout):
            problems.append(f"timeout must be a positive number of seconds, "
                            f"got {self.timeout!r}")
        if self.refresh is not None and not _seconds(self.refresh):
            problems.append(f"refresh must be a positive number of seconds or None, "
                            f"got {self.refresh!r}")
        if not isinstance(self.prefix, str) or (self.prefix and
                                                not _TOOL_NAME.match(self.prefix)):
            problems.append(f"prefix must be letters, digits, _ or -, got {self.prefix!r}")
        approval = self.requires_approval
        if not (isinstance(approval, bool) or callable(approval) or (
                isinstance(approval, Collection) and not isinstance(approval, str)
                and all(isinstance(n, str) for n in approval))):
            problems.append("requires_approval must be a bool, a callable (ctx, input) -> "
                            f"bool, or a list of tool names, got {approval!r}")
        if self.meta is not None and not callable(self.meta):
            problems.append(f"meta must be a callable (ctx) -> dict, got {self.meta!r}")
        if importlib.util.find_spec("mcp") is None:
            problems.append("needs the mcp package: pip install 'django-agent-session[mcp]'")
        return [f"{self!r} {problem}" for problem in problems]

    @property
    def endpoint(self) -> client.Endpoint:
        return client.Endpoint(
            url=self.url, headers=tuple(sorted((self.headers or {}).items())),
            command=tuple(self.command or ()), env=tuple(sorted((self.env or {}).items())),
            cwd=self.cwd)

    # -- discovery (a ToolSource of the agent's ToolSet) --------------------------------

    def start_discovery(self) -> concurrent.futures.Future[None] | None:
        """Start listing the server's tools unless a listing is fresh or already running."""
        with self._lock:
            if self._listing is not None and self._listing_pid == os.getpid():
                return self._listing
            now = time.monotonic()
            if self._listed_at is not None and (
                    self.refresh is None or now - self._listed_at < self.refresh):
                return None
            if self._failed_at is not None and now - self._failed_at < RETRY_AFTER:
                return None
            # a forked child never sees its parent's listing end: it lists on its own
            self._listing, self._listing_pid = client.submit(self._list()), os.getpid()
            return self._listing

    def discovered(self) -> tuple[Tool, ...]:
        return self._tools

    async def _list(self) -> None:
        """Runs on the MCP loop. Updates the tools before the future completes, so whoever
        waited on it reads them."""
        try:
            listed = await client.list_tools(self.endpoint, float(self.timeout))
            self._tools = self._keep(listed)
            self._listed_at, self._failed_at = time.monotonic(), None
        except Exception as error:
            self._failed_at = time.monotonic()
            logger.warning("%r: could not list the tools (%s); %s", self, error,
                           "the last known ones are offered" if self._tools else
                           "it offers none until it answers")
        finally:
            with self._lock:
                self._listing = None

    def _keep(self, listed: list[mcp_types.Tool]) -> tuple[Tool, ...]:
        """The listed tools the agent may use, as :class:`MCPTool` objects."""
        by_name = {remote.name: remote for remote in listed}
        allowed = self.allowed_tools
        if allowed is not None:
            if missing := sorted(set(allowed) - set(by_name)):
                logger.warning("%r: allowed_tools names tools the server does not offer: %s",
                               self, ", ".join(missing))
            by_name = {name: remote for name, remote in by_name.items() if name in allowed}
        kept = []
        for remote in by_name.values():
            name = self.prefix + remote.name
            if not _TOOL_NAME.match(name):
                logger.warning("%r: tool %r is not offered (the Messages API takes names of "
                               "letters, digits, _ and - only)", self, name)
                continue
            try:
                kept.append(MCPTool(self, remote))
            except (TypeError, ValueError) as error:
                logger.warning("%r: tool %r is not offered: %s", self, name, error)
        return tuple(kept)

    def reset(self) -> None:
        """Forget the listed tools: the next turn lists them again (tests, a redeploy)."""
        with self._lock:
            self._tools, self._listed_at, self._failed_at = (), None, None

    def __repr__(self) -> str:
        return f"MCPToolset({'url' if self.url is not None else 'command'}=" \
               f"{self.url if self.url is not None else self.command!r})"


class MCPTool(Tool):
    """One tool of an MCP server: validated against its ``inputSchema``, called over MCP."""

    def __init__(self, toolset: MCPToolset, remote: mcp_types.Tool) -> None:
        self.toolset, self.remote_name = toolset, remote.name
        approval = toolset.requires_approval
        if not isinstance(approval, bool) and not callable(approval):
            approval = remote.name in approval  # a list of the tools that need one
        schema = dict(remote.input_schema)
        super().__init__(self._call, name=toolset.prefix + remote.name,
                         description=remote.description or remote.title or remote.name,
                         schema=schema_serializer(toolset.prefix + remote.name, schema),
                         # the engine's bound is a backstop: the call ends itself at the
                         # toolset's timeout, with an error that names the server
                         timeout=float(toolset.timeout) + BACKSTOP,
                         requires_approval=approval)
        self.input_schema = schema  # the server's, not one derived from the serializer

    async def _call(self, ctx: ToolContext, **arguments: Any) -> Any:
        """``tools/call`` on the MCP loop; awaited from whichever loop runs the turn."""
        toolset = self.toolset
        meta = context_meta(ctx)
        if toolset.meta is not None:
            meta.update(toolset.meta(ctx))
        future = client.submit(client.call_tool(toolset.endpoint, self.remote_name, arguments,
                                                meta, float(toolset.timeout)))
        return client.result_value(await client.wait(future))

    def __repr__(self) -> str:
        return f"<MCPTool {self.name} of {self.toolset!r}>"


def context_meta(ctx: ToolContext) -> dict[str, Any]:
    """The tool context as ``_meta`` keys: what the server may want to know of the call.

    Read without a query (``owner`` is the owner's primary key), as an async turn calls this
    on its event loop.
    """
    session = ctx.session
    values = {
        "session": getattr(session, "pk", None),
        "model": session._meta.label_lower if session is not None else None,
        "owner": getattr(session, "owner_id", None),
        "run": ctx.run_id,
        "tool_use_id": ctx.tool_use_id or None,
    }
    return {META_PREFIX + key: _plain(value) for key, value in values.items()
            if value is not None}


class JSONSchemaInput(serializers.Serializer):
    """Validates a tool input against a JSON Schema (the server's) and passes it on as is:
    the model sees the same ``Invalid input: ...`` result as for a function tool."""

    schema: ClassVar[dict[str, Any]] = {}
    validator: ClassVar[Any] = None

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if self.validator is not None:
            errors: dict[str, list[str]] = {}
            for error in self.validator.iter_errors(data):
                key = ".".join(str(p) for p in error.absolute_path) or "non_field_errors"
                errors.setdefault(key, []).append(error.message)
            if errors:
                raise serializers.ValidationError(errors)
        return dict(data)

    def to_representation(self, instance: Any) -> dict[str, Any]:
        return dict(instance)


def schema_serializer(name: str, schema: dict[str, Any]) -> type[JSONSchemaInput]:
    """A serializer class validating with ``schema`` (unchecked if ``jsonschema`` cannot
    read it: the server validates too)."""
    validator = None
    try:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validator = cls(schema)
    except ImportError:
        pass
    except jsonschema.SchemaError as error:
        logger.warning("MCP tool %r: its inputSchema is not valid JSON Schema (%s); inputs "
                       "are left to the server to check", name, error.message)
    return type(f"{name}_input", (JSONSchemaInput,), {"schema": schema,
                                                      "validator": validator})


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _plain(value: Any) -> Any:
    """A JSON value for ``_meta``: numbers and strings as they are, anything else (a UUID)
    as its string."""
    return value if isinstance(value, (str, int, float, bool)) else str(value)


__all__ = ["META_PREFIX", "MCPTool", "MCPToolset", "context_meta"]
