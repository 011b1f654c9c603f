"""Adversarial review of the REST, WebSocket and admin surfaces: each test is a bug found (and
fixed) there, kept as a regression test."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from django_agent_session.live import api as live_api
from django_agent_session.models import AgentRun, LiveOwnership
from django_agent_session.testing.loopback import Reply
from tests.live_server_helpers import (  # noqa: F401  (fixtures)
    collect,
    create_chat,
    expect,
    fast_passwords,
    live_layer,
    loopback,
    viewer,
)
from tests.testapp.models import ChatAgent, PlainAgent

CLOSED_4403 = {"type": "websocket.close", "code": 4403}


@pytest.fixture
def server(loopback):  # noqa: F811  (the fixture, by name)
    """The loopback Messages API (named apart from the imported fixture)."""
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


@pytest.mark.parametrize("attempt", [
    {"type": "message", "input": "injected", "ref": "x"}, {"type": "state"},
    {"type": "resume", "after_seq": 0}, {"type": "cancel"},
])
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("live_layer")
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


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("live_layer")
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


@pytest.mark.django_db(transaction=True)
def test_stop_session_leaves_another_models_live_session_alone():
    """The admin's Stop action names a session of one model; a live session of another model
    that reuses the id is not stopped."""
    import uuid as _uuid
    from datetime import timedelta as _td

    from django.contrib.contenttypes.models import ContentType
    from django.utils import timezone as _tz

    from django_agent_session.live.api import stop_session
    from django_agent_session.models import LiveOwnership
    from tests.testapp.models import ChatAgent as _Chat
    from tests.testapp.models import PlainAgent as _Plain

    shared = _uuid.uuid4()
    LiveOwnership.objects.create(session_type=ContentType.objects.get_for_model(_Chat),
                                 session_id=shared, owner_channel="specific.other!owner",
                                 expires_at=_tz.now() + _td(seconds=60))
    assert stop_session(_Plain(id=shared)) is False
    assert LiveOwnership.objects.filter(session_id=shared).exists()
