"""A small MCP server (the ``mcp`` package's own) for the MCP toolset tests.

Run as ``python server.py stdio`` (the client starts it) or ``python server.py http PORT``
(the test starts it on 127.0.0.1). Its tools: ``add``, ``whoami`` (answers with the ``_meta``
of its request), ``slow`` (sleeps), ``fail`` (an ``isError`` result) and ``secret`` (kept out by
the tests' allow-lists). It imports nothing of the project, so the client can run it anywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("test-tools", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def whoami(ctx: Context) -> str:
    """Tell who is calling (the request's _meta) and which process answers."""
    meta = dict(ctx.request_context.meta or {})
    return json.dumps({"meta": meta, "pid": os.getpid()}, sort_keys=True, default=str)


@server.tool()
async def slow(seconds: float) -> str:
    """Wait, then answer."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def fail() -> str:
    """Always fails."""
    raise ToolError("the printer is on fire")


@server.tool()
def secret() -> str:
    """Never offered to the model by the tests."""
    return "the launch codes"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
