"""Who may connect to and drive a conversation (also once its id is reused), and what a malformed
frame gets (an error, never a close)."""

from __future__ import annotations

import json
import uuid

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from django_agent_session.live import api as live_api
from django_agent_session.models import AgentRun, LiveOwnership
from django_agent_session.testing.loopback import Reply
from tests.helpers.live_server import collect, communicator, create_chat, expect, viewer
from tests.testapp.models import ChatAgent, PlainAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_layer")]


async def assert_refused(comm, code: int) -> None:
    """Accepted, then closed with ``code``; no data frame before the close."""
    connected, _ = await comm.connect(timeout=5)
    assert connected
    output = await comm.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": code}
    assert await comm.receive_nothing(timeout=0.1)


async def test_an_anonymous_user_is_refused(user):
    session = await create_chat(user)
    await assert_refused(await communicator(None, session.pk), 4401)


async def test_another_users_conversation_is_refused(user, other_user):
    session = await create_chat(user)
    await assert_refused(await communicator(other_user, session.pk), 4403)


async def test_an_unknown_agent_is_refused(user):
    session = await create_chat(user)
    for agent in ("testapp.nosuchmodel", "auth.user", "nonsense"):
        await assert_refused(await communicator(user, session.pk, agent=agent), 4404)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", None])
async def test_a_foreign_or_missing_origin_is_refused(user, origin):
    session = await create_chat(user)
    comm = await communicator(user, session.pk, origin=origin)
    connected, _ = await comm.connect(timeout=5)
    assert not connected


async def test_a_conversation_id_that_is_not_a_uuid_is_refused_with_4400(user):
    for cid in ("not-a-uuid", "42", "0" * 33):
        await assert_refused(await communicator(user, cid), 4400)


def bare_app(**options):
    """The library's URL patterns with no origin validator of the project's around them."""
    from channels.auth import AuthMiddlewareStack
    from channels.routing import URLRouter
    from django.urls import path

    from django_agent_session.live.consumers import AgentSessionConsumer
    from django_agent_session.live.routing import websocket_urlpatterns

    if not options:
        return AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    return AuthMiddlewareStack(URLRouter([path(
        "ws/agent-sessions/<str:agent>/<str:conversation_id>/",
        AgentSessionConsumer.as_asgi(**options))]))


async def connects(user, session, origin, application) -> bool:
    comm = await communicator(user, session.pk, origin=origin, application=application)
    connected, _ = await comm.connect(timeout=5)
    if connected:
        await expect(comm, "session.state", exists=True)
        await comm.disconnect()
    return connected


@pytest.mark.parametrize("origin", ["http://evil.example", "null", None, "http://[::1",
                                    "https://testserver.evil.example"])
async def test_the_bare_urlpatterns_refuse_a_foreign_missing_or_malformed_origin(user, origin):
    session = await create_chat(user)
    assert not await connects(user, session, origin, bare_app())
    assert await connects(user, session, "http://testserver", bare_app())  # in ALLOWED_HOSTS


async def test_the_allowed_origins_setting_replaces_allowed_hosts_or_allows_any(user):
    session = await create_chat(user)
    with override_settings(AGENT_SESSION={"WEBSOCKET_ALLOWED_ORIGINS": ["https://.app.example"]}):
        assert await connects(user, session, "https://chat.app.example", bare_app())
        assert not await connects(user, session, "http://chat.app.example", bare_app())
        assert not await connects(user, session, "http://testserver", bare_app())
    with override_settings(AGENT_SESSION={"WEBSOCKET_ALLOWED_ORIGINS": ["*"]}):  # opted out
        for origin in ("http://evil.example", None):
            assert await connects(user, session, origin, bare_app())


async def test_allowed_origins_per_route_wins_over_the_setting(user):
    session = await create_chat(user)
    app = bare_app(allowed_origins=["https://app.example"])
    with override_settings(AGENT_SESSION={"WEBSOCKET_ALLOWED_ORIGINS": ["*"]}):
        assert await connects(user, session, "https://app.example", app)
        assert not await connects(user, session, "http://testserver", app)


async def test_a_foreign_user_cannot_watch_or_drive_a_conversation_created_later(
        user, other_user, scripted):
    scripted.enqueue("secret reply")
    cid = uuid.uuid4()
    # connected while nothing exists yet: allowed, but not in the conversation's group
    intruders = [await viewer(other_user, cid) for _ in range(4)]
    assert all(state["exists"] is False for _, state in intruders)
    owner, _ = await viewer(user, cid)
    await owner.send_json_to({"type": "start", "instruction_args": {"company_name": "Acme"}})
    await expect(owner, "session.state", exists=True)
    await owner.send_json_to({"type": "message", "input": "private", "ref": "m1"})
    await expect(owner, "run.status", ref="m1", status="completed")
    for intruder, _ in intruders:
        assert await intruder.receive_nothing(timeout=0.1)

    attempts = [{"type": "message", "input": "mine now", "ref": "x"}, {"type": "state"},
                {"type": "resume", "after_seq": 0}, {"type": "start"}]
    for (intruder, _), attempt in zip(intruders, attempts):
        await intruder.send_json_to(attempt)
        assert await intruder.receive_output(timeout=5) == {"type": "websocket.close",
                                                            "code": 4403}, attempt
    runs = await database_sync_to_async(
        lambda: list(AgentRun.objects.filter(session_id=cid).values_list("input", flat=True)))()
    assert runs == [{"message": "private"}]
    assert (await database_sync_to_async(ChatAgent.objects.get)(pk=cid)).owner_id == user.pk


# -- a conversation id reused after a delete, or by another model ---------------------------
# (regressions: each was a way for a socket to reach a conversation that is not its own)

CLOSED_4403 = {"type": "websocket.close", "code": 4403}


@pytest.fixture
def server(loopback):
    """The loopback Messages API (``loopback`` of tests/live/conftest.py), under the name the
    tests below use."""
    return loopback


@database_sync_to_async
def run_inputs(cid) -> list:
    return list(AgentRun.objects.filter(session_id=cid).order_by("started_at")
                .values_list("input", flat=True))


async def drain(comm) -> list:
    """Every output the communicator has queued right now (frames and closes)."""
    out = []
    while not await comm.receive_nothing(timeout=0.2):
        out.append(await comm.receive_output(timeout=1))
    return out


async def until_closed(comm, timeout: float = 5.0) -> list:
    """Every output up to and including the socket's close (which may come after database
    work that a loaded runner makes slow), then whatever else it queued."""
    out = []
    while not out or out[-1].get("type") != "websocket.close":
        out.append(await comm.receive_output(timeout=timeout))
    return out + await drain(comm)


@pytest.mark.parametrize("attempt", [
    {"type": "message", "input": "injected", "ref": "x"}, {"type": "state"},
    {"type": "resume", "after_seq": 0}, {"type": "cancel"},
])
async def test_a_socket_left_on_a_deleted_conversation_gets_nothing_of_its_successor(
        user, other_user, server, attempt):
    """A user keeps a socket on their conversation, deletes it and waits for its live session
    to stop; another user then creates a conversation with the same id (e.g. by following a
    link). The old socket must neither watch nor drive the new conversation."""
    server.enqueue("secret reply")
    mine = await create_chat(user)
    cid = mine.pk
    stale, _ = await viewer(user, cid)
    await database_sync_to_async(ChatAgent.objects.filter(pk=cid).delete)()
    assert await live_api.stop(cid, reason="inactivity") == "stopped"
    assert not await database_sync_to_async(LiveOwnership.objects.filter(session_id=cid).exists)()
    await drain(stale)

    victim, state = await viewer(other_user, cid)
    assert state["exists"] is False
    await victim.send_json_to({"type": "start", "instruction_args": {"company_name": "Victim"}})
    await expect(victim, "session.state", exists=True)
    await victim.send_json_to({"type": "message", "input": "my private question", "ref": "v1"})
    await expect(victim, "run.status", ref="v1", status="completed")

    await stale.send_json_to(attempt)
    outputs = await drain(stale)
    leaked = [o for o in outputs if "private" in str(o) or "secret" in str(o)
              or "Victim" in str(o)]
    assert leaked == []
    assert outputs[-1] == CLOSED_4403, outputs
    assert await run_inputs(cid) == [{"message": "my private question"}]
    assert (await database_sync_to_async(ChatAgent.objects.get)(pk=cid)).owner_id == other_user.pk


async def test_a_conversation_given_to_another_user_while_viewed_takes_no_more_messages(
        user, other_user, server):
    """A message on a conversation the socket views already is checked by its submission
    (under the row lock), not by a query of its own: a conversation handed to another user
    between two messages refuses the second, writes nothing and closes with 4403; the socket
    leaves the new owner's presence."""
    server.enqueue("first answer")
    session = await create_chat(user)
    mine, _ = await viewer(user, session.pk)
    await mine.send_json_to({"type": "message", "input": "hello", "ref": "m1"})
    await expect(mine, "run.status", ref="m1", status="completed")
    await database_sync_to_async(
        ChatAgent.objects.filter(pk=session.pk).update)(owner=other_user)
    theirs, _ = await viewer(other_user, session.pk)

    await mine.send_json_to({"type": "message", "input": "still mine?", "ref": "m2"})
    outputs = await until_closed(mine)
    assert outputs[-1] == CLOSED_4403, outputs
    assert not any(o.get("type") == "websocket.send" and '"ack"' in o.get("text", "")
                   for o in outputs)
    assert await run_inputs(session.pk) == [{"message": "hello"}]
    await expect(theirs, "presence", user_ids=[other_user.pk])
    assert not [f for f in await drain(theirs) if f.get("type") == "websocket.send"
                and '"presence"' in f["text"] and user.pk in json.loads(f["text"])["user_ids"]]


async def test_a_session_of_another_model_with_the_same_id_cannot_reach_the_live_session(
        user, other_user, server):
    """Ids are unique per model only (``import_session(new_id=False, model=...)`` or a row made
    with the ORM can reuse one): a viewer of the other model's row must not join this live
    session, see its presence, cancel its turn or queue messages on it."""
    server.enqueue(Reply.text("word " * 40, delay=0.02))
    session = await create_chat(user)
    await database_sync_to_async(PlainAgent.objects.create)(id=session.pk, owner=other_user)
    owner, _ = await viewer(user, session.pk)
    await owner.send_json_to({"type": "message", "input": "long story", "ref": "m1"})
    await expect(owner, "delta", ref="m1")

    other, state = await viewer(other_user, session.pk, agent="testapp.plainagent")
    assert state["exists"] is True and state["running"] is None and state["presence"] is None
    await other.send_json_to({"type": "cancel", "ref": "c1"})
    await other.send_json_to({"type": "message", "input": "from the other model", "ref": "o1"})
    errors = [await expect(other, "error", ref=ref) for ref in ("c1", "o1")]
    assert {e["code"] for e in errors} == {"conflict"}

    frames = await collect(owner, lambda f: f["type"] == "run.status" and f["ref"] == "m1"
                           and f["status"] != "started", timeout=15)
    assert frames[-1]["status"] == "completed"
    assert all(other_user.pk not in (f.get("user_ids") or []) for f in frames)
    assert await run_inputs(session.pk) == [{"message": "long story"}]


OVERSIZED = json.dumps({"type": "message", "input": "x" * (256 * 1024)})

MALFORMED = [
    # (raw frame, expected error code)
    ("not json", "invalid_json"),
    ('{"type": "message", ', "invalid_json"),
    ("[" * 100_000, "invalid_json"),  # nesting too deep for the parser
    ("[]", "invalid_frame"),
    ('"message"', "invalid_frame"),
    ("42", "invalid_frame"),
    ("null", "invalid_frame"),
    ("{}", "invalid_frame"),
    ('{"type": 5}', "invalid_frame"),
    ('{"type": "nope"}', "unknown_type"),
    ('{"type": "websocket.disconnect"}', "unknown_type"),
    ('{"type": "message"}', "invalid_frame"),
    ('{"type": "message", "input": 5}', "invalid_frame"),
    ('{"type": "message", "input": ["a"]}', "invalid_frame"),
    ('{"type": "message", "input": {"message": ""}}', "invalid_input"),
    ('{"type": "message", "input": {"msg": "hi"}}', "invalid_input"),
    ('{"type": "message", "input": "hi", "ref": 12}', "invalid_frame"),
    ('{"type": "message", "input": "hi", "ref": "' + "r" * 65 + '"}', "invalid_frame"),
    ('{"type": "message", "input": "hi", "extra": true}', "invalid_frame"),
    ('{"type": "resume"}', "invalid_frame"),
    ('{"type": "resume", "after_seq": -1}', "invalid_frame"),
    ('{"type": "resume", "after_seq": "3"}', "invalid_frame"),
    ('{"type": "resume", "after_seq": true}', "invalid_frame"),
    ('{"type": "resume", "after_seq": NaN}', "invalid_frame"),
    ('{"type": "resume", "after_seq": 1.5}', "invalid_frame"),
    ('{"type": "cancel", "ref": []}', "invalid_frame"),
    ('{"type": "start", "instruction_args": "acme"}', "invalid_frame"),
    (OVERSIZED, "frame_too_large"),
    (b"\x00\x01binary", "invalid_frame"),
]


@pytest.mark.parametrize("raw, code", MALFORMED, ids=[f"{i:02d}-{c}" for i, (_, c)
                                                      in enumerate(MALFORMED)])
async def test_a_malformed_frame_gets_an_error_and_the_socket_stays_open(user, raw, code):
    session = await create_chat(user)
    comm, _ = await viewer(user, session.pk)
    if isinstance(raw, bytes):
        await comm.send_to(bytes_data=raw)
    else:
        await comm.send_to(text_data=raw)
    error = await expect(comm, "error")
    assert error["code"] == code and error["message"]
    if code in ("invalid_frame", "invalid_input") and raw not in ("[]", '"message"', "42",
                                                                   "null", b"\x00\x01binary"):
        assert error["errors"]
    await comm.send_json_to({"type": "ping", "ref": "still-there"})
    assert await expect(comm, "pong") == {"type": "pong", "ref": "still-there"}
    await comm.disconnect()


async def test_invalid_input_names_the_field_and_echoes_the_ref(user):
    session = await create_chat(user)
    comm, _ = await viewer(user, session.pk)
    await comm.send_json_to({"type": "message", "input": {"message": ""}, "ref": "m9"})
    error = await expect(comm, "error")
    assert error == {"type": "error", "code": "invalid_input", "message": "Invalid input.",
                     "errors": {"message": ["This field may not be blank."]}, "ref": "m9",
                     "retryable": False}


async def test_a_bad_after_seq_in_the_query_string_is_an_error_frame(user):
    session = await create_chat(user)
    comm = await communicator(user, session.pk, query="after_seq=abc")
    assert (await comm.connect(timeout=5))[0]
    error = await expect(comm, "error")
    assert error["code"] == "invalid_frame" and "after_seq" in error["errors"]
    await expect(comm, "session.state")
