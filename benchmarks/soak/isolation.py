"""Isolation: two users hammer each other's ids on every surface, through a daphne process.

Alice and Bob each own a session of every agent model (the chat agent's with a turn, a secret
in its title and message). Each, ``rounds`` times, calls every REST route of the router with
every method it allows on the other's sessions and runs (HTTP Basic auth), and opens a
WebSocket on each of the other's sessions and sends every client frame. A cross-user read is
an answer or frame that holds the other's secret or session id, a 2xx on the other's object
(OPTIONS aside: it describes the route), or a WebSocket that gets the other's
``session.state``. A cross-user write is any change to the other's rows, runs or events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from typing import Any

from .common import Part

FRAMES = [{"type": "message", "input": "intruder was here", "ref": "x1"}, {"type": "cancel"},
          {"type": "start", "instruction_args": {"company_name": "Acme"}},
          {"type": "resume", "after_seq": 0}, {"type": "state"},
          {"type": "ping", "ref": "x2"},
          {"type": "decide", "tool_use_id": "toolu_x", "approve": True, "ref": "x3"}]


def _reply(request: Any) -> Any:
    from django_agent_session.testing.loopback import Reply

    if request.body.get("output_config"):
        return Reply.json({"content": "echo", "mood": "happy"})
    return Reply.text(f"re: {request.user_text[:60]}")


def _owned(name: str) -> tuple[Any, dict[type, Any], str]:
    from django_agent_session.declaration.registry import session_models
    from tests.testapp.models import ChatAgent

    from ..live import session_cookie
    from .clients import soak_user

    user = soak_user(name)
    secret = f"{name}-secret-{uuid.uuid4().hex[:8]}"
    sessions = {}
    for model in session_models():
        args = {"company_name": "Acme"} if model.agent_options.instruction_serializer else None
        if model is ChatAgent:
            sessions[model] = model.objects.start_session(
                f"{secret} question", instruction_args=args, owner=user, title=f"{secret} t")
        else:
            sessions[model] = model.objects.create_session(instruction_args=args, owner=user,
                                                           title=f"{secret} t")
    return user, sessions, secret


def _state(sessions: dict[type, Any]) -> Any:
    from django_agent_session.records import AgentEvent, AgentRun

    ids = [s.pk for s in sessions.values()]
    rows = {str(s.pk): list(model._base_manager.filter(pk=s.pk).values_list(
        "title", "owner_id", "version", "event_seq", "status", "turn_count"))
        for model, s in sessions.items()}
    return (rows, list(AgentRun.objects.filter(session_id__in=ids).order_by("pk")
                       .values_list("pk", "status")),
            list(AgentEvent.objects.filter(session_id__in=ids).order_by("pk")
                 .values_list("pk", "seq")))


def _leaks(text: str, sessions: dict[type, Any], secret: str) -> bool:
    return secret in text or any(str(s.pk) in text or s.pk.hex in text
                                 for s in sessions.values())


def run(params: dict[str, Any]) -> Part:
    from django.conf import settings
    from django.test import override_settings

    from django_agent_session.testing.loopback import LoopbackMessagesServer
    from tests.reliability.test_isolation import rest_routes, url_of

    from ..live import AsgiServer, session_cookie

    part = Part()
    reads: list[str] = []
    writes: list[str] = []
    calls = frames = 0
    with LoopbackMessagesServer() as server:
        server.responder = _reply
        config = {**settings.AGENT_SESSION, "ANTHROPIC": {"BASE_URL": server.base_url,
                                                          "API_KEY": "soak", "MAX_RETRIES": 0}}
        with override_settings(AGENT_SESSION=config):
            people = {name: _owned(name) for name in ("alice", "bobby")}
        daphne = AsgiServer({**os.environ, "BENCH_LOOPBACK_URL": server.base_url})
        try:
            asyncio.run(daphne.wait_ready())
            from .clients import Rest

            for _ in range(params.get("rounds", 1)):
                for me, them in (("alice", "bobby"), ("bobby", "alice")):
                    _, sessions, secret = people[them]
                    before = _state(sessions)
                    client = Rest(daphne.port, me)
                    for route, method, model in rest_routes():
                        if "(?P<pk>" not in route:
                            path = url_of(route, "")
                            for query in ("", f"?search={secret}", "?page_size=100"):
                                status, body = client.request(method.upper(), path + query)
                                calls += 1
                                if _leaks(body.decode(errors="replace"), sessions, secret):
                                    reads.append(f"{me}: {method} {path}{query}")
                            continue
                        path = url_of(route, sessions[model].pk)
                        payload = json.dumps({"input": {"message": "x"}, "title": "stolen",
                                              "instruction_args": {"company_name": "A"}})
                        status, body = client.request(
                            method.upper(), path,
                            payload if method in ("post", "patch", "put") else None)
                        calls += 1
                        if _leaks(body.decode(errors="replace"), sessions, secret) or (
                                200 <= status < 300 and method != "options"):
                            reads.append(f"{me}: {method.upper()} {path} -> {status}")
                    client.close()
                    user = people[me][0]
                    frames += asyncio.run(_websocket(daphne.port, session_cookie(user),
                                                     sessions, secret, me, reads))
                    if _state(sessions) != before:
                        writes.append(f"{me} changed {them}'s data")
        finally:
            daphne.close()
    part.must_be_zero("cross-user reads", len(reads))
    part.must_be_zero("cross-user writes", len(writes))
    part.figures.update({"REST calls on the other's ids": calls,
                         "WebSocket handshakes and frames on the other's sessions": frames})
    part.details = {"reads": reads[:10], "writes": writes[:10]}
    return part


async def _websocket(port: int, cookie: str, sessions: dict[type, Any], secret: str, me: str,
                     reads: list[str]) -> int:
    sent = 0
    for model, session in sessions.items():
        url_label = model._meta.label_lower  # the default router reads a model label
        sent += 1  # the handshake itself
        try:
            ws = await _open(port, url_label, session.pk, cookie)
        except Exception:  # noqa: BLE001 (refused: as it should be)
            continue
        try:
            with contextlib.suppress(Exception):  # closed (4403): refused, as it should be
                for frame in FRAMES:
                    await ws.send(json.dumps(frame))
                    sent += 1
            with contextlib.suppress(Exception):
                while True:
                    raw = await asyncio.wait_for(ws.recv(), 1.0)
                    frame = json.loads(raw)
                    if frame.get("type") == "session.state" or _leaks(raw, sessions, secret):
                        reads.append(f"{me}: WebSocket on {session.pk}: {raw[:120]}")
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
    return sent


async def _open(port: int, label: str | None, pk: Any, cookie: str) -> Any:
    from websockets.asyncio.client import connect

    return await connect(f"ws://127.0.0.1:{port}/ws/agent-sessions/{label}/{pk}/",
                         additional_headers={"Cookie": cookie,
                                             "Origin": f"http://127.0.0.1:{port}"},
                         compression=None, max_size=None, open_timeout=10)
