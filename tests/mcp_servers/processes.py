"""Start the test MCP server (``server.py``) over streamable HTTP on loopback, or name the
command that runs it over stdio."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from django_agent_session.testing.processes import LoggedProcess, free_port, wait_listening

SERVER = Path(__file__).with_name("server.py")
#: what an ``MCPToolset(command=...)`` runs: the server over stdio
STDIO = [sys.executable, str(SERVER), "stdio"]


@contextlib.contextmanager
def http_server() -> Iterator[tuple[str, LoggedProcess]]:
    """The server on ``http://127.0.0.1:<free port>/mcp``; yields that URL and the process
    (a test may stop it early: the server is then down)."""
    port = free_port()
    process = LoggedProcess([sys.executable, str(SERVER), "http", str(port)], name="mcp",
                            cwd=SERVER.parent, env=os.environ)
    try:
        asyncio.run(wait_listening(port, process.proc, timeout=60, name="MCP server",
                                   output=process.output))
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.stop(grace=2)
