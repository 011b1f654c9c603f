"""Helpers of the live benchmarks: ASGI server processes, logged-in WebSocket viewers, frames."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django_agent_session.testing.processes import asgi_server_command, free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent
AGENT = "testapp.chatagent"


def redis_reachable(url: str) -> str | None:
    """``None`` when Redis at ``url`` answers PING, else why not."""
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    return None


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that has the child killed when the benchmark process dies
    (a worker killed on timeout must not leave server processes behind)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class AsgiServer:
    """An ASGI server process (``BENCH_SERVER``: daphne, the default, or uvicorn) serving
    ``benchmarks.asgi`` (or ``BENCH_ASGI_APP``, for experiments) with the benchmark's
    environment, on a free port or on ``port`` (a restart)."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.kind = env.get("BENCH_SERVER", "daphne")
        self.port = port or free_port()
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (open for the process's life)
            prefix=f"agent-bench-{self.kind}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            asgi_server_command(self.kind, self.port,
                                env.get("BENCH_ASGI_APP", "benchmarks.asgi:application")),
            cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "benchmarks.settings"},
            # only a prctl() call, looked up before the fork: safe with threads
            stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent())  # noqa: PLW1509

    async def wait_ready(self, timeout: float = 60.0) -> None:
        await wait_listening(self.port, self.proc, timeout=timeout, name=self.kind,
                             output=self.output)

    def rss_kib(self) -> int:
        """Resident set size of the process, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process so far, from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            with contextlib.suppress(OSError):
                os.unlink(self.log.name)


def session_cookie(user: Any) -> str:
    """A logged-in Django session cookie for ``user`` (as a browser would send it)."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


def bench_user() -> Any:
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench")
    return user


def create_conversations(user: Any, count: int) -> list[uuid.UUID]:
    from django_agent_session.live.api import create_conversation
    from django_agent_session.live.routers import SessionSpec
    from tests.testapp.models import ChatAgent

    ids = []
    for _ in range(count):
        session, _ = create_conversation(SessionSpec(ChatAgent), uuid.uuid4(), user,
                                         instruction_args={"company_name": "Acme"})
        ids.append(session.pk)
    return ids


#: Linux's SO_TIMESTAMPING, with software receive timestamps (SOF_TIMESTAMPING_RX_SOFTWARE |
#: SOF_TIMESTAMPING_SOFTWARE): the kernel notes when each segment reached the socket. Its
#: ancillary data starts with a ``struct timespec`` (two 64-bit fields on 64-bit Linux).
SO_TIMESTAMPING, RX_SOFTWARE = 37, 0x8 | 0x10


class StampedSocket(socket.socket):
    """A TCP socket whose ``recv`` also reads when the kernel received the data.

    With 50 viewers in one process, a viewer's frame waits in its socket while the process
    parses the other viewers' frames; the kernel's timestamp says when it arrived, as a viewer
    on a machine of its own would see it. It is the time of the *last* segment a ``recv``
    returns, so frames read together are all timed by the last of them: late, never early.
    Where the kernel gives no timestamp, the time of the ``recv`` is used and counted in
    ``unstamped``.
    """

    #: when the data of the last ``recv`` arrived (``time.monotonic``), until a connection's
    #: ``data_received`` takes it: the event loop calls that right after the ``recv``, on one
    #: thread
    last_received_at: float | None = None
    #: reads timed by the ``recv`` call, not by the kernel (a result reports them)
    unstamped = 0

    def enable_timestamps(self) -> None:
        with contextlib.suppress(OSError):
            self.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, RX_SOFTWARE)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancillary, _, _ = self.recvmsg(bufsize, 256, flags)
        at = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                seconds, nanoseconds = struct.unpack_from("qq", payload)
                at = seconds + nanoseconds / 1e9 - (time.time() - time.monotonic())
        if at is None:
            at = time.monotonic()
            StampedSocket.unstamped += bool(data)  # (the end of the stream carries no time)
        StampedSocket.last_received_at = at
        return data


@functools.cache
def timed_connection() -> type:
    """websockets' client connection that notes when each message arrived (its last segment,
    from ``StampedSocket``), before websockets parses it and the reader task wakes."""
    from websockets.asyncio.client import ClientConnection
    from websockets.frames import DATA_OPCODES, Frame

    class TimedConnection(ClientConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.arrivals: collections.deque[float] = collections.deque()
            self._received_at = 0.0

        def data_received(self, data: bytes) -> None:
            at, StampedSocket.last_received_at = StampedSocket.last_received_at, None
            if at is None:  # not read through StampedSocket.recv (another event loop's way)
                at = time.monotonic()
                StampedSocket.unstamped += 1
            self._received_at = at
            super().data_received(data)

        def process_event(self, event: Any) -> None:
            if isinstance(event, Frame) and event.fin and event.opcode in DATA_OPCODES:
                self.arrivals.append(self._received_at)  # the last frame of a message
            super().process_event(event)

    return TimedConnection


async def open_websocket(port: int, conversation_id: Any, cookie: str, timeout: float) -> Any:
    """A logged-in WebSocket to the conversation's live session (a ``timed_connection`` on a
    ``StampedSocket``)."""
    from websockets.asyncio.client import connect

    sock = StampedSocket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.enable_timestamps()
        sock.setblocking(False)
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), timeout)
        url = f"ws://127.0.0.1:{port}/ws/agent-sessions/{AGENT}/{conversation_id}/"
        return await connect(url, additional_headers={"Cookie": cookie,
                                                      "Origin": f"http://127.0.0.1:{port}"},
                             compression=None, max_size=None, open_timeout=timeout,
                             sock=sock, create_connection=timed_connection())
    except BaseException:
        sock.close()
        raise


@dataclass
class Viewer:
    """One WebSocket client (``open_websocket``). Every frame is timestamped
    (``time.monotonic``) on arrival at the client's socket; ``read_at`` holds, in the same
    order, when the reader task got it from websockets."""

    ws: Any
    frames: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    read_at: list[float] = field(default_factory=list)
    waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future]] = \
        field(default_factory=list)
    task: asyncio.Task | None = None

    async def _read(self) -> None:
        async for raw in self.ws:
            read_at = time.monotonic()
            at = self.ws.arrivals.popleft()
            frame = json.loads(raw)
            self.frames.append((at, frame))
            self.read_at.append(read_at)
            for waiter in list(self.waiters):
                predicate, future = waiter
                if not future.done() and predicate(frame):
                    future.set_result((at, frame))
                    self.waiters.remove(waiter)

    def clear(self) -> None:
        self.frames.clear()
        self.read_at.clear()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiters.append((predicate, future))
        return future

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


async def connect_viewer(port: int, conversation_id: Any, cookie: str,
                         timeout: float = 30.0) -> Viewer:
    """Connect, and wait for the ``session.state`` frame (the live session is running)."""
    viewer = Viewer(await open_websocket(port, conversation_id, cookie, timeout))
    state = viewer.wait_for(lambda f: f.get("type") == "session.state")
    viewer.task = asyncio.create_task(viewer._read())
    await asyncio.wait_for(state, timeout)
    return viewer


def finished(ref: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: (f.get("type") == "run.status" and f.get("ref") == ref
                      and f.get("status") in ("completed", "failed", "cancelled"))
