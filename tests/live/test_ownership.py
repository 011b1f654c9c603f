"""The ownership lease, owner failover, refusing to start without a database, and routing."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta

import pytest
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, close_old_connections
from django.test import override_settings
from django.urls import path
from django.utils import timezone

from django_agent_session.live import api, ownership
from django_agent_session.live.consumers import AgentSessionConsumer
from django_agent_session.live.routers import (
    SessionSpec,
    UnknownAgent,
    default_router,
    register_agent,
    resolve,
    unregister_agent,
)
from django_agent_session.live.session import group_name
from django_agent_session.models import AgentRun, LiveOwnership
from tests.helpers.live_server import communicator, create_chat, expect, viewer
from tests.testapp.models import ChatAgent, PlainAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_layer")]


# -- the lease ------------------------------------------------------------------------------

def test_the_lease_is_taken_once_renewed_by_its_owner_and_taken_over_when_expired():
    sid = uuid.uuid4()
    first = ownership.acquire(ChatAgent, sid, "owner-1", seconds=30)
    assert first.acquired and first.owner_channel == "owner-1"
    second = ownership.acquire(ChatAgent, sid, "owner-2", seconds=30)
    assert not second.acquired and second.owner_channel == "owner-1"
    assert ownership.current(ChatAgent, sid).owner_channel == "owner-1"
    assert ownership.renew(sid, "owner-1") is not None
    assert ownership.renew(sid, "owner-2") is None

    LiveOwnership.objects.filter(session_id=sid).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert ownership.current(ChatAgent, sid) is None
    taken = ownership.acquire(ChatAgent, sid, "owner-2", seconds=30)
    assert taken.acquired and taken.owner_channel == "owner-2"
    assert ownership.renew(sid, "owner-1") is None  # the old owner learns it lost the lease
    assert not ownership.release(sid, "owner-1")
    assert ownership.release(sid, "owner-2")
    assert not LiveOwnership.objects.exists()


def test_concurrent_acquirers_elect_exactly_one_owner():
    sid = uuid.uuid4()
    ContentType.objects.get_for_model(ChatAgent)  # warm the cache outside the race
    barrier = threading.Barrier(6)
    results: list[ownership.Lease] = []

    def contend(i: int) -> None:
        try:
            barrier.wait()
            results.append(ownership.acquire(ChatAgent, sid, f"owner-{i}", seconds=30))
        finally:
            close_old_connections()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 6
    winners = [r for r in results if r.acquired]
    assert len(winners) == 1
    assert {r.owner_channel for r in results} == {winners[0].owner_channel}
    assert LiveOwnership.objects.get(session_id=sid).owner_channel == winners[0].owner_channel


def test_a_lease_of_another_model_is_a_conflict():
    sid = uuid.uuid4()
    assert ownership.acquire(PlainAgent, sid, "plain-owner").acquired
    with pytest.raises(ownership.OwnershipConflict):
        ownership.acquire(ChatAgent, sid, "chat-owner")
    with pytest.raises(ownership.OwnershipConflict):
        ownership.current(ChatAgent, sid)


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


class _Unreachable:
    """Stands in for ``LiveOwnership`` when the database is down."""

    class objects:  # noqa: N801
        @staticmethod
        def filter(*args, **kwargs):
            raise OperationalError("could not connect to server")


async def test_without_the_database_the_live_session_is_not_started(user, monkeypatch):
    session = await create_chat(user)
    monkeypatch.setattr(ownership, "LiveOwnership", _Unreachable)
    with pytest.raises(ownership.OwnershipUnavailable):
        await api.start(session.pk, spec=SessionSpec(ChatAgent))
    comm = await communicator(user, session.pk)
    assert (await comm.connect(timeout=5))[0]
    error = await expect(comm, "error")
    assert error["code"] == "ownership_unavailable" and error["retryable"] is True
    state = await expect(comm, "session.state")
    assert state["live"] is False and state["exists"] is True
    await comm.send_json_to({"type": "message", "input": "hello", "ref": "m1"})
    error = await expect(comm, "error")
    assert error["code"] == "ownership_unavailable" and error["ref"] == "m1"
    assert api.local_sessions() == {}
    assert not await database_sync_to_async(AgentRun.objects.exists)()


async def test_a_live_session_that_cannot_announce_itself_leaves_nothing_running(
        user, live_layer, monkeypatch):
    """A layer that fails the start's roll call: the start fails, and neither the session's
    receive loop nor its lease timer outlives it (a timer would renew a released lease)."""
    session = await create_chat(user)
    sent = live_layer.group_send

    async def group_send(group, message):
        if message["type"] == "live.rollcall":
            raise ConnectionError("layer down")
        await sent(group, message)

    monkeypatch.setattr(live_layer, "group_send", group_send)
    from django_agent_session.live import registry

    started, add = [], registry.add
    monkeypatch.setattr(registry, "add", lambda live: (started.append(live), add(live))[1])
    with pytest.raises(ConnectionError):
        await api.start(session.pk, spec=SessionSpec(ChatAgent))
    (live,) = started
    assert not live._ticker.scheduled and live.state == "stopped"  # no lease renewal pending
    await asyncio.sleep(0)  # the cancelled tasks unwind
    key = str(session.pk)
    left = [t.get_name() for t in asyncio.all_tasks()
            if key in t.get_name() and not t.done()]
    assert left == []
    assert api.local_sessions() == {}
    assert not await database_sync_to_async(
        LiveOwnership.objects.filter(session_id=session.pk).exists)()


# -- failover -------------------------------------------------------------------------------

def quick_app():
    consumer = AgentSessionConsumer.as_asgi(state_timeout=0.3)
    return AuthMiddlewareStack(URLRouter([
        path("ws/agent-sessions/<str:agent>/<uuid:conversation_id>/", consumer)]))


async def test_a_dead_owner_does_not_delay_a_message(user, scripted):
    """A message is a row the executor runs; it does not wait for the live owner's lease (a
    dead owner's lease used to hold every message for up to the lease)."""
    scripted.enqueue("Answered at once.")
    session = await create_chat(user)
    ct = await database_sync_to_async(ContentType.objects.get_for_model)(ChatAgent)
    await database_sync_to_async(LiveOwnership.objects.create)(
        session_type=ct, session_id=session.pk, owner_channel="specific.dead!gone",
        expires_at=timezone.now() + timedelta(seconds=60))
    comm, state = await viewer(user, session.pk, application=quick_app())
    assert state["live"] is False  # the dead owner never answered

    started = asyncio.get_running_loop().time()
    await comm.send_json_to({"type": "message", "input": "anyone there?", "ref": "m1"})
    ack = await expect(comm, "ack", ref="m1")
    assert ack["status"] == "queued" and ack["duplicate"] is False
    done = await expect(comm, "run.status", ref="m1", status="completed", timeout=10)
    assert done["output"] == {"content": "Answered at once."} and done["run_id"] == ack["run_id"]
    assert asyncio.get_running_loop().time() - started < 10  # not the 60 s of the lease
    runs = await database_sync_to_async(lambda: list(AgentRun.objects.all()))()
    assert len(runs) == 1 and len(scripted.requests) == 1


async def test_a_message_sent_twice_runs_once(user, scripted):
    """The ``ref`` names the message: a resend (a reconnecting client) gets the same run."""
    scripted.enqueue("Only once.", "Second message.")
    session = await create_chat(user)
    comm, _ = await viewer(user, session.pk)
    await comm.send_json_to({"type": "message", "input": "hi", "ref": "m1"})
    first = await expect(comm, "ack", ref="m1")
    await comm.send_json_to({"type": "message", "input": "hi", "ref": "m1"})
    again = await expect(comm, "ack", ref="m1")
    assert again["duplicate"] is True and again["run_id"] == first["run_id"]
    await expect(comm, "run.status", ref="m1", status="completed")
    await comm.send_json_to({"type": "message", "input": "hi", "ref": "m1"})
    late = await expect(comm, "ack", ref="m1")
    assert late == {**first, "status": "completed", "duplicate": True}
    assert len(scripted.requests) == 1
    assert await database_sync_to_async(AgentRun.objects.count)() == 1


# -- routing --------------------------------------------------------------------------------

def test_the_default_router_maps_labels_and_registered_names():
    assert resolve({}, uuid.uuid4(), {"agent": "testapp.ChatAgent"}).model is ChatAgent
    assert resolve({}, uuid.uuid4(), {"agent": "testapp.plainagent"}).model is PlainAgent
    for bad in ("testapp.order", "auth.user", "nope", "", None):
        with pytest.raises(UnknownAgent):
            default_router({}, uuid.uuid4(), {"agent": bad})
    register_agent("support", ChatAgent, inactivity_timeout=None, fresh_state={"title": "x"},
                   colour="blue")
    try:
        spec = resolve({}, uuid.uuid4(), {"agent": "support"})
        assert spec.model is ChatAgent and spec.timeout is None
        assert spec.fresh_state == {"title": "x"} and spec.options == {"colour": "blue"}
    finally:
        unregister_agent("support")
    with pytest.raises(ImproperlyConfigured):
        register_agent("bad", AgentRun)


def pick_by_query(scope, conversation_id, request_opts):
    """A custom router: the query string chooses the model; the factory adds options."""
    def factory(cid, config):
        return config["model"], {"inactivity_timeout": 7, "tenant": config["tenant"]}
    model = PlainAgent if request_opts["query"].get("plain") else ChatAgent
    return factory, {"model": model, "tenant": "acme"}


@override_settings(AGENT_SESSION={"FACTORY_ROUTER": f"{__name__}.pick_by_query"})
def test_a_custom_factory_router_from_settings():
    spec = resolve({}, uuid.uuid4(), {"query": {"plain": "1"}})
    assert spec.model is PlainAgent and spec.timeout == 7.0
    assert spec.options == {"tenant": "acme"}  # unknown options pass through untouched
    assert resolve({}, uuid.uuid4(), {"query": {}}).model is ChatAgent
    assert SessionSpec(ChatAgent).timeout == 300.0  # the INACTIVITY_TIMEOUT default


def test_group_names_meet_the_channel_layer_rules():
    from channels.layers import BaseChannelLayer

    layer = BaseChannelLayer()
    cid = uuid.uuid4()
    name = group_name(ChatAgent, cid)
    assert layer.require_valid_group_name(name) and cid.hex in name
    assert group_name(PlainAgent, cid) != name

    class Long:
        class _meta:  # noqa: N801
            label_lower = "a_very_long_application_label.anextremelylongmodelnamethatgoesonandon"
    assert layer.require_valid_group_name(group_name(Long, cid))
