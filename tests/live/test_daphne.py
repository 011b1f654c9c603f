"""The WebSocket handshake and frame limits as a real daphne serves them: close codes daphne
accepts, malformed conversation ids, frames between the library's and daphne's size limit, and
the origin check of the bare ``websocket_urlpatterns`` (``tests/live/daphne_app.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import websockets
from daphne.server import Server
from django.db import connection

from django_agent_session.conf import DEFAULTS
from django_agent_session.live import protocol
from django_agent_session.testing.processes import LoggedProcess, free_port, wait_listening
from tests.helpers.live_server import create_chat, session_cookie, ws_path

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_passwords")]

ROOT = Path(__file__).resolve().parents[2]
#: daphne's own limits (``--websocket-max-message-size``, ``--websocket-max-frame-size``)
DAPHNE_MAX_MESSAGE = inspect.signature(Server).parameters["websocket_max_message_size"].default


class Daphne(LoggedProcess):
    """One daphne process serving ``tests.live.daphne_app`` on the test database."""

    def __init__(self) -> None:
        self.port = free_port()
        super().__init__(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
             "tests.live.daphne_app:application"],
            name="daphne", cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT),
                 "DJANGO_SETTINGS_MODULE": "tests.live.daphne_settings",
                 "AGENT_LIVE_DB_NAME": str(connection.settings_dict["NAME"])})

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self, path: str, cookie: str | None, origin: str | None = "same") -> Any:
        return websockets.connect(
            f"ws://127.0.0.1:{self.port}{path}",
            origin=self.origin if origin == "same" else origin,
            additional_headers={"Cookie": cookie} if cookie else None,
            open_timeout=10, close_timeout=2)


@pytest.fixture
async def daphne():
    server = Daphne()
    try:
        await wait_listening(server.port, server.proc, name="daphne", output=server.output)
        yield server
    finally:
        server.stop(grace=0)


async def closed_after(socket: Any, timeout: float = 10.0) -> tuple[list[dict], Any]:
    """Every frame until the server closes; then the close frame it sent (``None``: none)."""
    frames: list[dict] = []
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                frames.append(json.loads(await socket.recv()))
    return frames, socket.protocol.close_rcvd


async def expect(socket: Any, kind: str, timeout: float = 10.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await socket.recv())
            if frame["type"] == kind:
                return frame


def assert_no_traceback(server: Daphne) -> None:
    log = server.output()
    assert "Traceback" not in log and "invalid close code" not in log, log


# -- close codes ------------------------------------------------------------------------------

async def test_an_unexpected_error_while_connecting_sends_an_error_frame_then_closes_4500(
        user, daphne):
    session = await create_chat(user)
    cookie = await session_cookie(user)
    async with daphne.connect(ws_path(session.pk, agent="buggy"), cookie) as socket:
        frames, close = await closed_after(socket)
    assert [f["code"] for f in frames] == [protocol.INTERNAL_ERROR]
    assert close.code == protocol.CLOSE_SERVER_ERROR == 4500
    log = daphne.output()
    assert log.count("Traceback") == 1 and "a bug in the project's factory router" in log, log


async def test_a_database_error_during_the_access_check_closes_4500_after_an_error_frame(
        user, daphne):
    session = await create_chat(user)
    cookie = await session_cookie(user)
    path = f"/ws/db-down/testapp.chatagent/{session.pk}/"
    async with daphne.connect(path, cookie) as socket:
        frames, close = await closed_after(socket)
    assert [(f["code"], f["retryable"]) for f in frames] == [("ownership_unavailable", True)]
    assert close.code == 4500
    log = daphne.output()
    assert log.count("Traceback") == 1 and "invalid close code" not in log.lower(), log


# -- malformed conversation ids -----------------------------------------------------------------

@pytest.mark.parametrize("conversation_id", ["not-a-uuid", "42", "0" * 33])
async def test_a_conversation_id_that_is_not_a_uuid_closes_4400_without_a_traceback(
        user, daphne, conversation_id):
    cookie = await session_cookie(user)
    async with daphne.connect(ws_path(conversation_id), cookie) as socket:
        frames, close = await closed_after(socket)
    assert frames == [] and close.code == protocol.CLOSE_INVALID_ID == 4400
    assert_no_traceback(daphne)


async def test_an_upper_case_uuid_names_the_conversation(user, daphne):
    session = await create_chat(user)
    cookie = await session_cookie(user)
    async with daphne.connect(ws_path(str(session.pk).upper()), cookie) as socket:
        state = await expect(socket, "session.state")
    assert state["exists"] is True and state["conversation_id"] == str(session.pk)


# -- frame size -------------------------------------------------------------------------------

def test_the_library_frame_limit_is_below_daphne_s_default():
    assert DEFAULTS["MAX_FRAME_BYTES"] < DAPHNE_MAX_MESSAGE


async def test_a_frame_over_the_library_limit_but_under_daphne_s_gets_an_error_frame(
        user, daphne):
    session = await create_chat(user)
    cookie = await session_cookie(user)
    size = (DEFAULTS["MAX_FRAME_BYTES"] + DAPHNE_MAX_MESSAGE) // 2
    raw = json.dumps({"type": "message", "input": "x" * size, "ref": "big"})
    assert DEFAULTS["MAX_FRAME_BYTES"] < len(raw) < DAPHNE_MAX_MESSAGE
    async with daphne.connect(ws_path(session.pk), cookie) as socket:
        await expect(socket, "session.state")
        await socket.send(raw)
        error = await expect(socket, "error")
        assert error["code"] == protocol.FRAME_TOO_LARGE
        assert str(DEFAULTS["MAX_FRAME_BYTES"]) in error["message"]
        await socket.send(json.dumps({"type": "ping", "ref": "after"}))
        assert await expect(socket, "pong") == {"type": "pong", "ref": "after"}
    assert_no_traceback(daphne)


# -- origin -----------------------------------------------------------------------------------

@pytest.mark.parametrize("origin", ["http://evil.example", "null", None])
async def test_the_bare_urlpatterns_refuse_a_foreign_or_missing_origin(user, daphne, origin):
    session = await create_chat(user)
    cookie = await session_cookie(user)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with daphne.connect(ws_path(session.pk), cookie, origin=origin):
            pass
    assert refused.value.response.status_code == 403
    async with daphne.connect(ws_path(session.pk), cookie) as socket:  # same origin: fine
        assert (await expect(socket, "session.state"))["exists"] is True
