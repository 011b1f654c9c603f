"""Connections to MCP servers: one per server and process, held open on a loop of their own.

The ``mcp`` package's client is async, and a connection is an anyio task group that one task
must enter and leave. A turn runs on a sync thread or on some event loop, so every connection
lives on one daemon thread's event loop, owned by one task there; calls are handed to that loop.
A sync turn waits on a ``concurrent.futures.Future``, an async turn awaits the same future: no
event loop is nested, and a stdio server's process is started once, not per call.

Every call is bounded by a timeout that covers connecting too. A connection that failed (or a
call that timed out on it) is dropped, and the next call opens a new one.

``mcp`` is imported only when a connection opens, so declaring a toolset needs no install.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import shlex
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mcp import Client as MCPClient
    from mcp_types import CallToolResult, Tool

logger = logging.getLogger("django_agent_session.mcp")

T = TypeVar("T")

#: the most pages of ``tools/list`` read (a server paginating forever cannot hang discovery)
MAX_PAGES = 100
#: JSON-RPC codes of errors that say the connection, not the request, failed
_CONNECTION_CODES = frozenset({-32000, -32001})  # CONNECTION_CLOSED, REQUEST_TIMEOUT


class MCPUnavailable(Exception):  # noqa: N818 (reads as what the model is told)
    """The server could not be reached, or did not answer within the timeout."""


class MCPToolError(Exception):
    """The server ran the tool and reported an error (``isError``), or refused the call."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where an MCP server is: a streamable HTTP ``url``, or a ``command`` run over stdio."""

    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None

    def __str__(self) -> str:
        return self.url or shlex.join(self.command)

    def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        """What ``mcp.Client`` connects through (its HTTP client closed with ``stack``)."""
        if self.url is None:
            from mcp.client.stdio import StdioServerParameters

            return StdioServerParameters(command=self.command[0], args=list(self.command[1:]),
                                         env=dict(self.env) or None, cwd=self.cwd)
        if not self.headers:
            return self.url
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        # the SDK's own timeouts (30 s to connect, 5 min to read a stream); ours bound calls
        http = httpx2.AsyncClient(headers=dict(self.headers),
                                  timeout=httpx2.Timeout(30.0, read=300.0))
        stack.push_async_callback(http.aclose)
        return streamable_http_client(self.url, http_client=http)


class _Connection:
    """One open client session to one server, entered and left by one task on the MCP loop."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[MCPClient] | None = None
        self._stop: asyncio.Event | None = None

    async def client(self, timeout: float) -> MCPClient:
        """The open client, connecting first if need be (within ``timeout`` seconds)."""
        if self._task is None or self._task.done():
            self._ready = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._hold(self._ready, self._stop), name=f"mcp {self.endpoint}")
        assert self._ready is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            self.drop()
            raise MCPUnavailable(f"MCP server {self.endpoint} did not connect within "
                                 f"{timeout:g}s") from None
        except MCPUnavailable:
            raise
        except Exception as error:
            raise MCPUnavailable(f"MCP server {self.endpoint} is unavailable: "
                                 f"{_leaf(error)}") from error

    async def _hold(self, ready: asyncio.Future[MCPClient], stop: asyncio.Event) -> None:
        from mcp import Client

        try:
            async with contextlib.AsyncExitStack() as stack:
                client = await stack.enter_async_context(
                    Client(self.endpoint._transport(stack), cache=None))
                ready.set_result(client)
                await stop.wait()
        except BaseException as error:
            if not ready.done():
                ready.set_exception(error if isinstance(error, Exception)
                                    else MCPUnavailable(f"MCP server {self.endpoint}: "
                                                        "connection cancelled"))
            else:
                logger.debug("MCP connection to %s ended: %r", self.endpoint, error)
            if not isinstance(error, Exception):
                raise

    def drop(self) -> None:
        """Close the connection in the background; the next call opens a new one."""
        if self._stop is not None:
            self._stop.set()
        if self._task is not None and not self._task.done() and \
                (self._ready is None or not self._ready.done()):
            self._task.cancel()  # still connecting: give up on it
        self._task = None


class _Loop:
    """The daemon thread whose event loop owns every connection of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self.connections: dict[Endpoint, _Connection] = {}

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            # a forked child (a worker) inherits the loop object but not its thread
            if self._loop is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                self.connections = {}
                threading.Thread(target=self._loop.run_forever, name="agent-mcp",
                                 daemon=True).start()
                # stdio servers are told to exit (not left to notice a closed stdin)
                atexit.register(close_all, timeout=5.0)
            return self._loop

    def connection(self, endpoint: Endpoint) -> _Connection:
        """Only called on the loop's thread, so the dict needs no lock."""
        found = self.connections.get(endpoint)
        if found is None:
            found = self.connections[endpoint] = _Connection(endpoint)
        return found


_state = _Loop()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` on the MCP loop; wait on the future (sync) or await :func:`wait` (async).
    The coroutines here bound themselves with their timeout."""
    return asyncio.run_coroutine_threadsafe(coro, _state.get())


async def wait(future: concurrent.futures.Future[T]) -> T:
    """Await ``future`` from any event loop; cancelling the awaiter cancels the call."""
    return await asyncio.wrap_future(future)


async def list_tools(endpoint: Endpoint, timeout: float) -> list[Tool]:
    """Every tool the server offers (all pages), within ``timeout`` seconds. Runs on the MCP
    loop (:func:`submit`)."""
    deadline = time.monotonic() + timeout
    connection = _state.connection(endpoint)
    client = await connection.client(timeout)
    tools: list[Tool] = []
    cursor: str | None = None
    try:
        for _ in range(MAX_PAGES):
            page = await asyncio.wait_for(client.list_tools(cursor=cursor),
                                          _left(deadline, endpoint))
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
    except asyncio.TimeoutError:
        connection.drop()
        raise MCPUnavailable(f"MCP server {endpoint} did not list its tools within "
                             f"{timeout:g}s") from None
    except Exception as error:
        connection.drop()
        raise MCPUnavailable(f"MCP server {endpoint} failed to list its tools: "
                             f"{_leaf(error)}") from error
    return tools


async def call_tool(endpoint: Endpoint, name: str, arguments: Mapping[str, Any],
                    meta: Mapping[str, Any], timeout: float) -> CallToolResult:
    """``tools/call`` with ``meta`` as the request's ``_meta``, within ``timeout`` seconds
    (connecting included). Runs on the MCP loop (:func:`submit`)."""
    from mcp.shared.exceptions import MCPError

    deadline = time.monotonic() + timeout
    connection = _state.connection(endpoint)
    client = await connection.client(timeout)
    left = _left(deadline, endpoint)
    try:
        return await asyncio.wait_for(
            client.call_tool(name, dict(arguments), read_timeout_seconds=left,
                             meta=dict(meta)),  # type: ignore[arg-type]
            left)
    except asyncio.TimeoutError:
        connection.drop()  # a server that stopped answering is reconnected next time
        raise MCPUnavailable(f"{name} on MCP server {endpoint} timed out after "
                             f"{timeout:g}s") from None
    except MCPError as error:
        if error.code in _CONNECTION_CODES:
            connection.drop()
            raise MCPUnavailable(f"MCP server {endpoint}: {error.message}") from error
        raise MCPToolError(error.message) from error  # the server refused this request
    except Exception as error:
        connection.drop()
        raise MCPUnavailable(f"MCP server {endpoint} is unavailable: {_leaf(error)}") \
            from error


def result_value(result: CallToolResult) -> Any:
    """What a tool returns to the turn: its text (several blocks joined by newlines), else
    its structured content; non-text blocks are named, as a tool result here is text.
    An ``isError`` result raises :class:`MCPToolError` with its text."""
    parts = [_block_text(block) for block in result.content]
    text = "\n".join(part for part in parts if part)
    if result.is_error:
        raise MCPToolError(text or "the tool reported an error")
    if result.structured_content is not None and (not result.content or not text):
        return result.structured_content
    return text


def _block_text(block: Any) -> str:
    kind = getattr(block, "type", "")
    if kind == "text":
        return str(block.text)
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        return str(text) if text is not None else f"[resource {resource.uri}]"
    if kind == "resource_link":
        return f"[resource {block.uri}]"
    return f"[{kind} {getattr(block, 'mime_type', '')}]".replace(" ]", "]")


def close_all(timeout: float = 15.0) -> None:
    """Close every connection of this process (stdio servers exit); calls reconnect later.
    Also run at interpreter exit."""
    loop = _state._loop
    if loop is None or _state._pid != os.getpid() or not loop.is_running():
        return

    async def close() -> None:
        connections = list(_state.connections.values())
        _state.connections = {}
        tasks = [c._task for c in connections if c._task is not None]
        for connection in connections:
            connection.drop()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout * 2 / 3)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout)


def _left(deadline: float, endpoint: Endpoint) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise MCPUnavailable(f"MCP server {endpoint}: no time left after connecting")
    return left


def _leaf(error: BaseException) -> str:
    """The first real error inside exception groups (anyio wraps transport failures)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
