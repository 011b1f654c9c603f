"""Helpers for tests that run ASGI servers (daphne, uvicorn) as subprocesses on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_listening(port: int, proc: subprocess.Popen | None = None, *,
                         timeout: float = 60.0, name: str = "server",
                         output: Callable[[], str] = lambda: "") -> None:
    """Wait until something accepts connections on ``127.0.0.1:port``.

    Raises ``RuntimeError`` (with ``output()``, e.g. the server's log) when ``proc`` exits
    first or nothing listens within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{output()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout}s:\n{output()}")
