"""Helpers for the live-session tests: communicators, frame collection, ASGI subprocesses.

Their fixtures (``fast_passwords``, ``live_layer``) are in ``tests/conftest.py``, the live
tests' ``loopback`` in ``tests/live/conftest.py``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic  # noqa: F401  (imported once, before any test's timeouts start)
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from django_agent_session.testing.loopback import LoopbackMessagesServer
from django_agent_session.testing.processes import asgi_server_command, free_port, wait_listening

ROOT = Path(__file__).resolve().parents[2]  # the repository
ORIGIN = "http://testserver"
CHAT = "testapp.chatagent"
Frame = dict[str, Any]


# -- settings ---------------------------------------------------------------------------------

def agent_conf(server: LoopbackMessagesServer, **extra: Any) -> dict[str, Any]:
    return {"ANTHROPIC": {"BASE_URL": server.base_url, "API_KEY": "test", "MAX_RETRIES": 0},
            "TURN_WAIT_SECONDS": 30.0, **extra}


# -- conversations and connections ------------------------------------------------------------

def _create_chat(user: Any, company: str = "Acme") -> Any:
    from django_agent_session.live.api import create_conversation
    from django_agent_session.live.routers import SessionSpec
    from tests.testapp.models import ChatAgent

    session, _ = create_conversation(SessionSpec(ChatAgent), uuid.uuid4(), user,
                                     instruction_args={"company_name": company})
    return session


create_chat = database_sync_to_async(_create_chat)


def make_session_cookie(user: Any) -> str:
    """A ``Cookie`` header value logging ``user`` in (sync; ``session_cookie`` is the async twin)."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


session_cookie = database_sync_to_async(make_session_cookie)


def ws_path(conversation_id: Any, agent: str = CHAT, query: str = "") -> str:
    path = f"/ws/agent-sessions/{agent}/{conversation_id}/"
    return f"{path}?{query}" if query else path


async def communicator(user: Any, conversation_id: Any, *, agent: str = CHAT, query: str = "",
                       origin: str | None = ORIGIN, application: Any = None
                       ) -> WebsocketCommunicator:
    """A communicator on the test ASGI app, logged in as ``user`` (or anonymous if ``None``)."""
    if application is None:
        from tests.asgi import application

    headers = [(b"host", b"testserver")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if user is not None:
        headers.append((b"cookie", (await session_cookie(user)).encode()))
    return WebsocketCommunicator(application, ws_path(conversation_id, agent, query),
                                 headers=headers)


async def viewer(user: Any, conversation_id: Any, **kwargs: Any
                 ) -> tuple[WebsocketCommunicator, Frame]:
    """Connect and return the communicator with its ``session.state`` frame."""
    comm = await communicator(user, conversation_id, **kwargs)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    state = await expect(comm, "session.state")
    return comm, state


async def expect(comm: WebsocketCommunicator, kind: str, timeout: float = 5.0,
                 **match: Any) -> Frame:
    """Skip frames until one of type ``kind`` (matching ``match``) arrives."""
    frames = await collect(comm, lambda f: f["type"] == kind and _matches(f, match), timeout)
    return frames[-1]


def _matches(frame: Frame, match: dict[str, Any]) -> bool:
    return all(frame.get(k) == v for k, v in match.items())


async def collect(comm: WebsocketCommunicator, until: Callable[[Frame], bool],
                  timeout: float = 10.0) -> list[Frame]:
    """Every frame up to and including the first for which ``until`` is true."""
    frames: list[Frame] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"timed out; got {[f['type'] for f in frames]}")
        try:
            frame = await comm.receive_json_from(timeout=remaining)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out; got {frames}") from None
        frames.append(frame)
        if until(frame):
            return frames


def completed(ref: str | None = None) -> Callable[[Frame], bool]:
    return lambda f: (f["type"] == "run.status" and f["status"] in ("completed", "failed")
                      and (ref is None or f.get("ref") == ref))


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
                     interval: float = 0.05) -> None:
    """Poll an (a)sync predicate until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


# -- ASGI server subprocesses -----------------------------------------------------------------


class ServerProcess:
    """An ASGI server process (daphne, or uvicorn) serving ``tests.asgi`` with
    ``tests.live_settings``."""

    def __init__(self, env: dict[str, str], name: str, server: str = "daphne") -> None:
        self.port = free_port()
        self.name = name
        self.log = Path(f"/tmp/agent-live-{name}-{os.getpid()}-{self.port}.log")
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            asgi_server_command(server, self.port, "tests.asgi:application"),
            cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT),
                           "DJANGO_SETTINGS_MODULE": "tests.live_settings"},
            stdout=self._log_file, stderr=subprocess.STDOUT,
        )

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def wait_ready(self, timeout: float = 60.0) -> None:
        await wait_listening(self.port, self.proc, timeout=timeout, name=self.name,
                             output=self.output)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to release anything."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        self.kill()
        self._log_file.close()
        with contextlib.suppress(OSError):
            self.log.unlink()


@contextlib.contextmanager
def server_processes(count: int, env: dict[str, str], server: str = "daphne"
                     ) -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    try:
        for i in range(count):
            servers.append(ServerProcess(env, chr(ord("a") + i), server))
        yield servers
    finally:
        for process in servers:
            process.close()
