"""Clients of a running daphne process: REST over ``http.client`` (HTTP Basic auth, so no CSRF
token is needed), WebSocket over ``websockets`` (a session cookie, as a browser sends it)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
from typing import Any

AGENT_PATH = "/api/chat-agents/"
WS_AGENT = "testapp.chatagent"
PASSWORD = "soak-password"


def soak_user(username: str) -> Any:
    """A user with a known password (REST clients log in with HTTP Basic auth)."""
    from django.contrib.auth import get_user_model

    user, created = get_user_model().objects.get_or_create(username=username)
    if created or not user.check_password(PASSWORD):
        user.set_password(PASSWORD)
        user.save()
    return user


def basic_auth(username: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()


class Rest:
    """One keep-alive HTTP connection to ``127.0.0.1:port``, reopened after any failure."""

    def __init__(self, port: int, username: str | None, timeout: float = 120.0) -> None:
        self.port, self.timeout = port, timeout
        self.auth = basic_auth(username) if username else None
        self.conn: http.client.HTTPConnection | None = None
        self.closed = 0  # connections the server closed on us mid-request

    def request(self, method: str, path: str, body: bytes | str | None = None,
                content_type: str = "application/json",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body); status 0 when the connection broke before an answer."""
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if self.auth:
            sent["Authorization"] = self.auth
        if body is not None:
            sent["Content-Type"] = content_type
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=sent)
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.close()
                return response.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError
                    ) as error:
                self.close()
                if attempt == 2 or not isinstance(error, http.client.RemoteDisconnected):
                    self.closed += 1
                    return 0, repr(error).encode()
            except (OSError, http.client.HTTPException) as error:
                self.close()
                self.closed += 1
                return 0, repr(error).encode()
        return 0, b""

    def json(self, method: str, path: str, payload: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, data = self.request(method, path, None if payload is None else
                                    json.dumps(payload), headers=headers)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data[:300]

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


async def open_ws(port: int, conversation_id: Any, cookie: str, timeout: float = 20.0) -> Any:
    """A WebSocket on a conversation (``websockets`` client; frames are read by the caller)."""
    from websockets.asyncio.client import connect

    return await connect(f"ws://127.0.0.1:{port}/ws/agent-sessions/{WS_AGENT}/{conversation_id}/",
                         additional_headers={"Cookie": cookie,
                                             "Origin": f"http://127.0.0.1:{port}"},
                         compression=None, max_size=None, open_timeout=timeout)
