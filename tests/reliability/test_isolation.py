"""Isolation between two users: zero cross-user reads or writes, on every surface.

Alice owns a session of every agent model, each holding a secret. Bob (and, for the admin, a
non-staff user and a staff user without permissions) then tries every REST route with every
method it allows, every admin URL (GET and POST), and every WebSocket action. Nothing Bob gets
back contains Alice's secret or her session ids, Alice's rows, runs and events are unchanged,
and a REST call on Alice's session answers exactly like one on a session that does not exist.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.urls import URLPattern, URLResolver
from rest_framework.test import APIClient

from django_agent_session.declaration.registry import session_models
from django_agent_session.engine.context import message_text
from django_agent_session.live.protocol import CLIENT_FRAMES
from django_agent_session.attachments import save_attachment
from django_agent_session.models import AgentEvent, AgentRun, Artifact
from django_agent_session.testing import json_reply, text_reply, tool_reply
from tests.api_urls import router
from tests.helpers.live_server import (
    communicator,
    create_chat,
    expect,
    viewer,
)
from tests.helpers.files import png
from tests.helpers.state import raw_context
from tests.testapp.models import ChatAgent

from . import isolation_urls

SECRET = "alice-secret-7f3a9c"
SECRET_PNG = png(3, 2)
ARGS = {"company_name": "Acme"}
FREE = {"input_tokens": 0, "output_tokens": 0}
#: the call Alice's approval agent leaves pending (Bob must not decide it anywhere)
ALICE_CALL = "toolu_alice"

ACTIONS: dict[str, dict[str, Any]] = {
    "message": {"type": "message", "input": "bob was here", "ref": "b1"},
    "cancel": {"type": "cancel"},
    "start": {"type": "start", "instruction_args": ARGS},
    "resume": {"type": "resume", "after_seq": 0},
    "state": {"type": "state"},
    "ping": {"type": "ping", "ref": "b2"},
    "decide": {"type": "decide", "tool_use_id": ALICE_CALL, "approve": True, "ref": "b3"},
}


def reply(request):
    """An echo: Alice's answers carry her secret, Bob's only what he sent. An agent with the
    ``send_email`` tool is asked for an email first, so Alice has a call awaiting approval."""
    if any(t["name"] == "send_email" for t in request.tools) and SECRET in str(
            request.messages[-1]) and len(request.messages) == 1:
        return tool_reply("send_email", {"to": "alice@example.com", "body": SECRET},
                          id=ALICE_CALL, usage=FREE)
    echo = f"re: {message_text(request.messages[-1])}"
    if request.output_schema is not None:
        return json_reply({"content": echo, "mood": "happy"}, usage=FREE)
    return text_reply(echo, usage=FREE)


def alice_sessions(alice) -> dict[type, Any]:
    """One session of every agent model, owned by Alice, with her secret in it."""
    sessions = {}
    for model in session_models():
        args = ARGS if model.agent_options.instruction_serializer is not None else None
        sessions[model] = model.objects.start_session(
            {"message": f"{SECRET} question"}, instruction_args=args, owner=alice,
            title=f"{SECRET} title")
    paused = [m for m, s in sessions.items() if m.objects.pending_tool_calls(s.pk)]
    assert paused, "no agent left a call awaiting approval"
    for session in sessions.values():  # an attachment for the routes that name one
        save_attachment(session, SECRET_PNG, filename=f"{SECRET}.png", uploaded_by=alice)
    return sessions


def alice_state(sessions: dict[type, Any]) -> dict[str, Any]:
    """Everything of Alice's that a cross-user call could change."""
    ids = [s.pk for s in sessions.values()]
    return {
        "rows": {str(s.pk): (raw_context(model, s.pk), *model._base_manager.filter(pk=s.pk)
                             .values_list("title", "owner_id", "version", "event_seq",
                                          "status", "metadata", "pinned").get())
                 for model, s in sessions.items()},
        "runs": list(AgentRun.objects.filter(session_id__in=ids).order_by("pk")
                     .values_list("pk", "status", "output")),
        "events": list(AgentEvent.objects.filter(session_id__in=ids).order_by("pk")
                       .values_list("pk", "seq", "type")),
        "artifacts": list(Artifact.objects.filter(session_id__in=ids).order_by("pk")
                          .values_list("pk", "key", "checksum")),
    }


def assert_no_leak(content: bytes | str, sessions: dict[type, Any], where: str) -> None:
    text = content.decode(errors="replace") if isinstance(content, bytes) else content
    assert SECRET not in text, where
    for session in sessions.values():
        assert str(session.pk) not in text and session.pk.hex not in text, where


def read(response) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content


# -- REST ------------------------------------------------------------------------------------

def rest_routes() -> list[tuple[str, str, type]]:
    """(regex route, HTTP method, model) of every route of the router."""
    routes = []
    for pattern in router.urls:
        callback = pattern.callback
        allowed = callback.cls.http_method_names
        methods = [*callback.actions, "options", *(["head"] if "get" in callback.actions else [])]
        for method in [m for m in methods if m in allowed]:
            routes.append((str(pattern.pattern), method, callback.cls.model))
    return routes


def url_of(route: str, pk: Any) -> str:
    """The route's URL for session ``pk`` (and, on run routes, that session's first run)."""
    path = re.sub(r"\(\?P<pk>[^)]*\)", str(pk), route).lstrip("^").rstrip("$")
    run = AgentRun.objects.filter(session_id=pk).first() if pk else None
    path = re.sub(r"\(\?P<run_id>[^)]*\)", str(run.pk if run else uuid.uuid4()), path)
    path = re.sub(r"\(\?P<tool_use_id>[^)]*\)", ALICE_CALL, path)
    artifact = Artifact.objects.filter(session_id=pk).first() if pk else None
    path = re.sub(r"\(\?P<artifact_id>[^)]*\)", str(artifact.pk if artifact else uuid.uuid4()),
                  path)
    return f"/api/{path}"


@pytest.mark.django_db
def test_rest_every_route_and_method(user, other_user, scripted):
    scripted.default = reply
    sessions = alice_sessions(user)
    before = alice_state(sessions)
    bob = APIClient()
    bob.force_authenticate(other_user)
    body = {"input": {"message": "bob"}, "instruction_args": ARGS, "title": "stolen"}
    checked = 0
    for route, method, model in rest_routes():
        if "(?P<pk>" in route:
            mine = getattr(bob, method)(url_of(route, sessions[model].pk), body, format="json")
            missing = getattr(bob, method)(url_of(route, uuid.uuid4()), body, format="json")
            where = f"{method.upper()} {route}"
            # OPTIONS describes the route, not the object; everything else is a 404
            assert mine.status_code == (200 if method == "options" else 404), where
            assert_no_leak(read(mine), sessions, where)
            assert (mine.status_code, read(mine)) == (missing.status_code, read(missing)), where
        else:
            response = getattr(bob, method)(url_of(route, ""), body, format="json")
            where = f"{method.upper()} {route}"
            assert response.status_code < 500, where
            assert_no_leak(read(response), sessions, where)
            for query in ({"search": SECRET}, {"status": "idle"}, {"page_size": 100}):
                listed = bob.get(url_of(route, ""), query)
                assert_no_leak(listed.content, sessions, f"{where} {query}")
        checked += 1
        assert alice_state(sessions) == before, f"{method.upper()} {route} changed Alice's data"
    assert checked >= 10 * len(sessions)


# -- admin -----------------------------------------------------------------------------------

def admin_urls(sessions: dict[type, Any]) -> list[str]:
    """Every URL of the admin site, with object ids filled in with Alice's objects."""
    first_session = next(iter(sessions.values()))
    run = AgentRun.objects.filter(session_id=first_session.pk).first()
    event = AgentEvent.objects.filter(session_id=first_session.pk).first()
    ids = {model._meta.label_lower: session.pk for model, session in sessions.items()}
    ids.update({"django_agent_session.agentrun": run.pk,
                "django_agent_session.agentevent": event.pk})

    def walk(patterns: list[Any], prefix: str) -> list[str]:
        urls = []
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                urls += walk(p.url_patterns, route)
            elif isinstance(p, URLPattern) and "(?P" not in route:
                label = ".".join(route.split("/")[1:3])
                if "<path:object_id>" in route:
                    if label not in ids:
                        continue
                    route = route.replace("<path:object_id>", str(ids[label]))
                if "<" not in route:
                    urls.append("/" + route)
        return urls

    return walk(isolation_urls.site.get_urls(), "admin/")


@pytest.mark.django_db
@pytest.mark.urls("tests.reliability.isolation_urls")
@pytest.mark.parametrize("who", ["non-staff", "staff-without-permissions"])
def test_admin_every_url(user, django_user_model, scripted, client, who):
    scripted.default = reply
    sessions = alice_sessions(user)
    before = alice_state(sessions)
    intruder = django_user_model.objects.create_user(
        "mallory", password="pw", is_staff=(who != "non-staff"))
    client.force_login(intruder)
    urls = admin_urls(sessions)
    assert len(urls) > 5 * len(sessions)
    for url in urls:
        for method in ("get", "post"):
            data = {"action": "delete_selected", "post": "yes", "title": "stolen",
                    "_selected_action": [str(s.pk) for s in sessions.values()]}
            response = client.post(url, data) if method == "post" else client.get(url)
            where = f"{who} {method.upper()} {url}"
            if who == "non-staff" and not url.endswith(("/login/", "/logout/")):
                assert response.status_code == 302 and "/login/" in response["Location"], where
            assert response.status_code < 500, where
            assert_no_leak(response.content, sessions, where)
            assert alice_state(sessions) == before, where
        client.force_login(intruder)  # logout/ ended the session


# -- WebSocket -------------------------------------------------------------------------------

async def closed_with(comm, code: int) -> bool:
    output = await comm.receive_output(timeout=5)
    return output == {"type": "websocket.close", "code": code}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("live_layer")
async def test_websocket_every_action(user, other_user, scripted):
    assert set(ACTIONS) == set(CLIENT_FRAMES)  # a new frame type must be added here
    scripted.default = reply
    sessions = await database_sync_to_async(alice_sessions)(user)
    before = await database_sync_to_async(alice_state)(sessions)

    # 1. Bob cannot open a socket on any of Alice's conversations (with or without replay)
    for model, session in sessions.items():
        for query in ("", "after_seq=0"):
            comm = await communicator(other_user, session.pk, agent=model._meta.label_lower,
                                      query=query)
            connected, _ = await comm.connect(timeout=5)
            assert connected and await closed_with(comm, 4403), model
            assert await comm.receive_nothing(timeout=0.05)

    # 2. On his own conversation, Bob's every action sees nothing of Alice's running turn
    alice, _ = await viewer(user, sessions[ChatAgent].pk)
    own = await create_chat(other_user)
    bob, state = await viewer(other_user, own.pk)
    assert_no_leak(str(state), sessions, "bob's state")
    await alice.send_json_to({"type": "message", "input": f"{SECRET} again", "ref": "a1"})
    for action in ACTIONS.values():
        await bob.send_json_to(action)
    await expect(alice, "run.status", ref="a1", status="completed", timeout=10)
    await expect(bob, "run.status", ref="b1", timeout=10)
    await bob.send_json_to({"type": "ping", "ref": "last"})
    frames = []
    while not frames or frames[-1] != {"type": "pong", "ref": "last"}:
        frames.append(await bob.receive_json_from(timeout=5))
    assert_no_leak(str(frames), sessions, "bob's frames")
    await bob.disconnect()
    await alice.disconnect()

    # 3. A socket Bob opened on an id before Alice created it: each action, sent while Alice's
    #    turn streams there, is refused (closed 4403, or an error for cancel) and touches nothing
    later = []
    for name, action in ACTIONS.items():
        cid = uuid.uuid4()
        later.append(cid)
        intruder, _ = await viewer(other_user, cid)
        owner, _ = await viewer(user, cid)
        await owner.send_json_to({"type": "start", "instruction_args": ARGS,
                                  "title": f"{SECRET} later"})
        await expect(owner, "session.state", exists=True)
        scripted.enqueue(text_reply(f"{SECRET} " * 20, delay=0.01, usage=FREE))
        await owner.send_json_to({"type": "message", "input": "mine", "ref": "a2"})
        await expect(owner, "delta", ref="a2")
        await intruder.send_json_to(action)
        output = await intruder.receive_output(timeout=5)
        assert_no_leak(str(output), sessions, name)
        assert SECRET not in str(output), name
        if name == "ping":  # answered without touching the conversation
            assert output["type"] == "websocket.send" and '"pong"' in output["text"]
        elif name == "cancel":  # nothing of Bob's is running; Alice's turn is not touched
            assert '"not_running"' in output.get("text", "") or output == {
                "type": "websocket.close", "code": 4403}, output
        else:
            assert output == {"type": "websocket.close", "code": 4403}, name
        await expect(owner, "run.status", ref="a2", status="completed", timeout=10)
        await owner.disconnect()
    runs = await database_sync_to_async(lambda: list(
        AgentRun.objects.filter(session_id__in=later).values_list("status", "input")))()
    assert runs == [("completed", {"message": "mine"})] * len(ACTIONS)

    after = await database_sync_to_async(alice_state)(sessions)
    chat = str(sessions[ChatAgent].pk)
    # only Alice's own turn changed her chat session; nothing of Bob's is in it
    assert {k: v for k, v in after["rows"].items() if k != chat} == \
        {k: v for k, v in before["rows"].items() if k != chat}
    assert "bob" not in after["rows"][chat][0]
