"""Helpers for tests that run servers and workers (daphne, uvicorn, ``db_worker``) as
subprocesses on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: The command line of each ASGI server :func:`asgi_server_command` knows, before the port.
#: uvicorn's WebSocket implementation, loop and HTTP parser are named, so that a run uses the
#: same stack whatever uvicorn's version picks by default and whether or not uvloop and
#: httptools are installed.
ASGI_SERVERS: Mapping[str, tuple[str, ...]] = {
    "daphne": ("-m", "daphne", "-b", "127.0.0.1", "-p"),
    "uvicorn": ("-m", "uvicorn", "--host", "127.0.0.1", "--ws", "websockets-sansio",
                "--loop", "asyncio", "--http", "h11", "--log-level", "warning", "--port"),
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def asgi_server_command(server: str, port: int, application: str) -> list[str]:
    """The argv that serves ``application`` (``"module:attribute"``) on ``127.0.0.1:port``
    with ``server`` (a key of :data:`ASGI_SERVERS`), run by this Python."""
    try:
        options = ASGI_SERVERS[server]
    except KeyError:
        raise ValueError(f"unknown ASGI server {server!r}; "
                         f"one of {', '.join(ASGI_SERVERS)}") from None
    return [sys.executable, *options, str(port), application]


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


class LoggedProcess:
    """A subprocess whose stdout and stderr go to a log file, read back by :meth:`output`
    (what a test reports when the process misbehaves); :meth:`stop` ends it and removes it."""

    def __init__(self, args: Sequence[str], *, name: str, cwd: str | Path,
                 env: Mapping[str, str]) -> None:
        self.log = Path(f"/tmp/agent-{name}-{os.getpid()}-{time.monotonic_ns()}.log")
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(list(args), cwd=cwd, env=dict(env),
                                     stdout=self._log_file, stderr=subprocess.STDOUT)

    def output(self, tail: int | None = None) -> str:
        """What the process wrote so far (its last ``tail`` characters)."""
        self._log_file.flush()
        text = self.log.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def stop(self, *, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds (``grace=0``:
        SIGKILL at once); then close and delete the log."""
        if self.proc.poll() is None:
            if grace:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace)
            if self.proc.poll() is None:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        self._log_file.close()
        with contextlib.suppress(OSError):
            self.log.unlink()
