"""Live sessions with the in-memory layer, through the real SDK against the loopback server:
fan-out to every viewer, queueing, cancel, inactivity, presence, stop and replay."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from django_agent_session.live import api
from django_agent_session.live.routers import register_agent, unregister_agent
from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.live_server import (
    agent_conf,
    collect,
    completed,
    create_chat,
    expect,
    viewer,
    wait_until,
)
from tests.helpers.loopback import system_text, uncached
from tests.testapp.models import ChatAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_layer")]


def text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(
        b.get("text", "") for b in content if b.get("type") == "text")


@database_sync_to_async
def runs(session) -> list[AgentRun]:
    return list(AgentRun.objects.filter(session_id=session.pk).order_by("started_at"))


@database_sync_to_async
def events(session, kind: str) -> list[AgentEvent]:
    return list(AgentEvent.objects.filter(session_id=session.pk, type=kind).order_by("seq"))


@database_sync_to_async
def context(session):
    return ChatAgent.objects.get_context(session.pk)


async def test_two_viewers_receive_every_delta_and_the_message(user, loopback):
    loopback.enqueue(Reply.text("Hello there, dear friend", delay=0.05))
    session = await create_chat(user)
    a, state = await viewer(user, session.pk)
    b, _ = await viewer(user, session.pk)
    assert state["exists"] and state["status"] == "idle" and state["messages"] == []

    await a.send_json_to({"type": "message", "input": "Hi", "ref": "m1"})
    streams = [await collect(c, completed("m1")) for c in (a, b)]

    sent = loopback.message_requests[0].events("content_block_delta")
    for frames in streams:
        started = [f for f in frames if f["type"] == "run.status" and f["status"] == "started"]
        assert started == [{"type": "run.status", "status": "started", "ref": "m1",
                            "run_id": frames[-1]["run_id"], "input": {"message": "Hi"},
                            "user_id": user.pk}]
        deltas = [f for f in frames if f["type"] == "delta"]
        # deltas that reach the live session while it publishes one frame go out merged in
        # the next (a stalled loop on a loaded machine), so frames may be fewer than deltas
        assert 1 < len(deltas) <= len(sent) == 4
        assert "".join(d["text"] for d in deltas) == "Hello there, dear friend"
        assert [d["n"] for d in deltas] == list(range(1, len(deltas) + 1))
        (message,) = [f for f in frames if f["type"] == "message"]
        assert message["content"] == [{"type": "text", "text": "Hello there, dear friend"}]
        assert message["output"] == {"content": "Hello there, dear friend"}
        assert frames[-1]["status"] == "completed"
        assert frames[-1]["run_id"] == message["run_id"]
        assert frames[-1]["seq"] > message["seq"] > state["seq"]
    # one publication fans out to both: the same frames, merged or not
    assert [[f for f in frames if f["type"] == "delta"] for frames in streams][0] == \
        [f for f in streams[1] if f["type"] == "delta"]
    assert len(loopback.message_requests) == 1
    assert [r.status for r in await runs(session)] == [RunStatus.COMPLETED]
    for c in (a, b):
        await c.disconnect()


async def test_messages_sent_quickly_are_queued_announced_and_run_in_order(user, loopback):
    all_queued = threading.Event()  # m1 streams on only once m3 is queued behind it
    for word in ("one", "two", "three"):
        reply = Reply.text(f"reply {word} " * 3, delay=0.02)
        loopback.enqueue(reply.held_after(1, until=all_queued) if word == "one" else reply)
    session = await create_chat(user)
    a, _ = await viewer(user, session.pk)
    b, _ = await viewer(user, session.pk)
    for ref, word in (("m1", "one"), ("m2", "two"), ("m3", "three")):
        await a.send_json_to({"type": "message", "input": {"message": word}, "ref": ref})
    m3_queued = lambda f: f["type"] == "message.queued" and f["ref"] == "m3"  # noqa: E731
    before = {c: await collect(c, m3_queued) for c in (a, b)}
    all_queued.set()

    for c in (a, b):
        frames = before[c] + await collect(c, completed("m3"))
        queued = [f for f in frames if f["type"] == "message.queued"]
        # every message is a queued row first; m3 waits behind m1 (queued still, or held
        # running) and m2
        assert [f["ref"] for f in queued] == ["m1", "m2", "m3"]
        assert [f["seq"] for f in queued] == sorted(f["seq"] for f in queued)
        assert queued[2]["position"] in (2, 3) and len({f["run_id"] for f in queued}) == 3
        started = [f["ref"] for f in frames
                   if f["type"] == "run.status" and f["status"] == "started"]
        done = [f["ref"] for f in frames
                if f["type"] == "run.status" and f["status"] == "completed"]
        assert started == done == ["m1", "m2", "m3"]

    requests = loopback.message_requests
    assert [r.user_text for r in requests] == ["one", "two", "three"]
    assert [m["role"] for m in requests[2].messages] == ["user", "assistant"] * 2 + ["user"]
    assert [r.status for r in await runs(session)] == [RunStatus.COMPLETED] * 3
    stored = await events(session, "run.queued")
    assert [e.data["ref"] for e in stored] == ["m1", "m2", "m3"]
    assert [str(e.run_id) for e in stored] == [f["run_id"] for f in queued]
    assert (await context(session)).turns == 3


async def test_a_full_queue_answers_the_sender_with_an_error(user, loopback):
    refused = threading.Event()  # m1 runs on only once m3 was refused
    loopback.enqueue(Reply.text("slow reply " * 4, delay=0.02).held_after(1, until=refused),
                     "second")
    session = await create_chat(user)
    with override_settings(AGENT_SESSION=agent_conf(loopback, QUEUE_MAX=1)):
        a, _ = await viewer(user, session.pk)
        b, _ = await viewer(user, session.pk)
        for ref in ("m1", "m2", "m3"):
            await a.send_json_to({"type": "message", "input": ref, "ref": ref})
        error = await expect(a, "error")
        assert error["code"] == "queue_full" and error["ref"] == "m3"
        refused.set()
        frames = await collect(b, completed("m2"))
        assert "error" not in {f["type"] for f in frames}
        assert [r.user_text for r in loopback.message_requests] == ["m1", "m2"]


async def test_cancel_mid_stream_records_the_run_and_keeps_the_context_valid(user, loopback):
    # held after two words until the test ends: the cancel always lands mid-stream
    loopback.enqueue(Reply.text("word " * 60, delay=0.03).held_after(2, until=threading.Event()),
                     Reply.text("Fine, next."))
    session = await create_chat(user)
    a, _ = await viewer(user, session.pk)
    b, _ = await viewer(user, session.pk)
    await a.send_json_to({"type": "message", "input": "Tell me a long story", "ref": "m1"})
    await expect(b, "delta", ref="m1")
    await b.send_json_to({"type": "cancel"})

    for c in (a, b):
        cancelled = await expect(c, "run.status", ref="m1", status="cancelled")
        assert cancelled["run_id"] and cancelled["seq"]
        assert cancelled["partial_text"].startswith("word")
        assert len(cancelled["partial_text"]) < len("word " * 60)
    (run,) = await runs(session)
    assert run.status == RunStatus.CANCELLED
    assert run.output == {"partial_text": cancelled["partial_text"]}
    (event,) = await events(session, "run.cancelled")
    assert event.data["partial_text"] == cancelled["partial_text"]
    ctx = await context(session)
    assert ctx.messages == [] and ctx.turns == 0  # nothing of the cancelled turn

    await a.send_json_to({"type": "message", "input": "Something short", "ref": "m2"})
    done = await expect(a, "run.status", ref="m2", status="completed")
    assert done["output"] == {"content": "Fine, next."}
    first, second = loopback.message_requests
    assert "message_stop" not in {e.event for e in first.sent_events}  # the stream was closed
    assert uncached(second.messages) == [{"role": "user",
                                "content": [{"type": "text", "text": "Something short"}]}]
    assert [r.status for r in await runs(session)] == [RunStatus.CANCELLED, RunStatus.COMPLETED]


async def test_cancelling_a_queued_message_removes_it(user, loopback):
    cancelled = threading.Event()  # m1 runs on only once m2 was cancelled
    loopback.enqueue(Reply.text("slow " * 10, delay=0.02).held_after(1, until=cancelled))
    session = await create_chat(user)
    a, _ = await viewer(user, session.pk)
    await a.send_json_to({"type": "message", "input": "first", "ref": "m1"})
    await a.send_json_to({"type": "message", "input": "second", "ref": "m2"})
    m2 = await expect(a, "message.queued", ref="m2")
    await a.send_json_to({"type": "cancel", "ref": "m2"})
    frames = await collect(a, lambda f: f["type"] == "run.status" and f.get("ref") == "m2")
    assert frames[-1] == {"type": "run.status", "status": "cancelled", "ref": "m2",
                          "run_id": m2["run_id"], "queued": True}
    cancelled.set()
    await collect(a, completed("m1"))
    await a.send_json_to({"type": "cancel", "ref": "m2"})
    error = await expect(a, "error")
    assert error["code"] == "nothing_to_cancel"
    assert [r.user_text for r in loopback.message_requests] == ["first"]


async def test_inactivity_stops_the_session_and_a_message_restarts_it(user, loopback):
    answering = threading.Event()
    loopback.enqueue("First answer.", Reply.text("Second answer.").held_after(1, until=answering))
    session = await create_chat(user)
    with override_settings(AGENT_SESSION=agent_conf(loopback, INACTIVITY_TIMEOUT=1)):
        a, _ = await viewer(user, session.pk)
        await a.send_json_to({"type": "message", "input": "first", "ref": "m1"})
        await expect(a, "run.status", ref="m1", status="completed")
        stopped = await expect(a, "session.stopped", timeout=5)
        assert stopped["reason"] == "inactivity" and stopped["dropped"] == []
        assert not await api.is_running(session.pk)
        assert [e.data["reason"] for e in await events(session, "session.stopped")] \
            == ["inactivity"]

        await a.send_json_to({"type": "message", "input": "second", "ref": "m2"})
        await expect(a, "session.started")
        # checked while m2 runs: a slow runner could otherwise let the restarted session
        # idle out (1 s) between m2's end and the check
        await expect(a, "delta", ref="m2")
        assert await api.is_running(session.pk)
        answering.set()
        done = await expect(a, "run.status", ref="m2", status="completed")
        assert done["output"] == {"content": "Second answer."}
    last = loopback.message_requests[-1]
    assert [text(m) for m in last.messages] == ["first", "First answer.", "second"]


async def test_the_factory_overrides_the_inactivity_timeout(user, loopback):
    register_agent("quick-chat", ChatAgent, inactivity_timeout=0.5)
    try:
        session = await create_chat(user)
        a, state = await viewer(user, session.pk, agent="quick-chat")
        assert state["exists"]
        stopped = await expect(a, "session.stopped", timeout=5)
        assert stopped["reason"] == "inactivity"
    finally:
        unregister_agent("quick-chat")


async def test_without_viewers_the_session_stops_after_the_grace(user, loopback):
    session = await create_chat(user)
    with override_settings(AGENT_SESSION=agent_conf(loopback, NO_VIEWER_GRACE_SECONDS=0.3)):
        a, _ = await viewer(user, session.pk)
        assert await api.is_running(session.pk)
        await a.disconnect()
        await wait_until(lambda: _not_running(session))
    (event,) = await events(session, "session.stopped")
    assert event.data["reason"] == "no_viewers"


async def _not_running(session) -> bool:
    return not await api.is_running(session.pk)


async def test_presence_follows_viewers_joining_and_leaving(user):
    session = await create_chat(user)
    a, state = await viewer(user, session.pk)
    assert state["presence"] == {"count": 1, "user_ids": [user.pk]}
    b, state_b = await viewer(user, session.pk)
    assert state_b["presence"] == {"count": 2, "user_ids": [user.pk]}
    assert (await expect(a, "presence", count=2))["user_ids"] == [user.pk]
    await b.disconnect()
    assert (await expect(a, "presence", count=1))["user_ids"] == [user.pk]


async def test_stop_api_and_admin_helper_stop_the_session_for_every_viewer(user):
    from django_agent_session.live import stop_session

    session = await create_chat(user)
    a, _ = await viewer(user, session.pk)
    b, _ = await viewer(user, session.pk)
    assert await api.stop(session.pk) == "stopped"
    for c in (a, b):
        assert (await expect(c, "session.stopped"))["reason"] == "stopped"
    assert await api.stop(session.pk) == "not_running"

    assert (await api.start(session.pk, spec=_spec())).status == "started"
    assert (await api.start(session.pk, spec=_spec())).status == "running"  # idempotent
    assert await database_sync_to_async(stop_session)(session, "admin") is True
    assert (await expect(a, "session.stopped"))["reason"] == "admin"
    assert await database_sync_to_async(stop_session)(session) is False


def _spec():
    from django_agent_session.live.routers import SessionSpec

    return SessionSpec(ChatAgent)


async def test_replay_after_seq_on_connect_and_with_resume(user, loopback):
    loopback.enqueue("Answer one.", "Answer two.")
    session = await create_chat(user)
    a, state = await viewer(user, session.pk)
    await a.send_json_to({"type": "message", "input": "one", "ref": "m1"})
    first = await expect(a, "run.status", ref="m1", status="completed")
    await a.send_json_to({"type": "message", "input": "two", "ref": "m2"})
    second = await expect(a, "run.status", ref="m2", status="completed")

    b, state_b = await viewer(user, session.pk, query=f"after_seq={first['seq']}")
    assert state_b["seq"] == second["seq"] and state_b["turns"] == 2
    assert [text(m) for m in state_b["messages"]] == ["one", "Answer one.", "two", "Answer two."]
    frames = await collect(b, lambda f: f["type"] == "replay.done")
    replayed = [f for f in frames if f["type"] == "event"]
    assert [f["seq"] for f in replayed] == list(range(first["seq"] + 1, second["seq"] + 1))
    assert replayed[-1]["event"] == "run.completed"
    assert frames[-1] == {"type": "replay.done", "after_seq": first["seq"],
                          "seq": second["seq"], "more": False}

    await b.send_json_to({"type": "resume", "after_seq": state["seq"], "ref": "r"})
    frames = await collect(b, lambda f: f["type"] == "replay.done")
    assert [f["seq"] for f in frames if f["type"] == "event"] == \
        list(range(state["seq"] + 1, second["seq"] + 1))
    assert frames[-1]["ref"] == "r"


async def test_a_new_conversation_is_created_by_its_first_viewer(user, loopback):
    import uuid

    loopback.enqueue("Welcome to Initech.")
    cid = uuid.uuid4()
    a, state = await viewer(user, cid)
    assert state["exists"] is False and state["status"] == "new" and not state["live"]
    await a.send_json_to({"type": "start", "instruction_args": {"company_name": "Initech"}})
    state = await expect(a, "session.state")
    assert state["exists"] and state["live"]
    await a.send_json_to({"type": "message", "input": "Hello", "ref": "m1"})
    await expect(a, "run.status", ref="m1", status="completed")
    assert system_text(loopback.message_requests[0]) == "You are a helpful assistant for Initech."
    stored = await database_sync_to_async(ChatAgent.objects.get)(pk=cid)
    assert stored.owner_id == user.pk


async def test_fresh_state_seeds_only_a_new_conversation(user, loopback):
    import uuid

    loopback.enqueue("ok", "ok")
    seed = [{"role": "user", "content": "Seeded question"},
            {"role": "assistant", "content": "Seeded answer"}]
    register_agent("seeded", ChatAgent, fresh_state={
        "instruction_args": {"company_name": "Seeded Co"}, "messages": seed,
        "title": "Seeded"})
    try:
        cid = uuid.uuid4()
        a, _ = await viewer(user, cid, agent="seeded")
        # the server's instruction args win over the client's
        await a.send_json_to({"type": "start", "instruction_args": {"company_name": "Evil"}})
        await expect(a, "session.state", exists=True)
        await a.send_json_to({"type": "message", "input": "More", "ref": "m1"})
        await expect(a, "run.status", ref="m1", status="completed")
        request = loopback.message_requests[0]
        assert system_text(request) == "You are a helpful assistant for Seeded Co."
        assert [text(m) for m in request.messages] == ["Seeded question", "Seeded answer", "More"]

        existing = await create_chat(user, company="Stored Co")
        b, state = await viewer(user, existing.pk, agent="seeded")
        assert state["messages"] == []  # stored state is never overwritten
        await b.send_json_to({"type": "message", "input": "Hi", "ref": "m2"})
        await expect(b, "run.status", ref="m2", status="completed")
        assert system_text(loopback.message_requests[1]) == "You are a helpful assistant for Stored Co."
        assert [text(m) for m in loopback.message_requests[1].messages] == ["Hi"]
    finally:
        unregister_agent("seeded")


async def test_a_turn_failing_mid_stream_is_reported_with_its_partial_reply(user, loopback):
    loopback.enqueue(Reply.text("alpha beta gamma delta epsilon", error_after=2), "Recovered.")
    session = await create_chat(user)
    a, _ = await viewer(user, session.pk)
    await a.send_json_to({"type": "message", "input": "go", "ref": "m1"})
    failed = await expect(a, "run.status", ref="m1", status="failed")
    assert failed["error"]["code"].startswith("model_") and failed["run_id"] and failed["seq"]
    assert failed["partial_text"] and "alpha beta gamma".startswith(failed["partial_text"])
    assert (await context(session)).messages == []
    await a.send_json_to({"type": "message", "input": "again", "ref": "m2"})
    assert (await expect(a, "run.status", ref="m2", status="completed"))["output"] == {
        "content": "Recovered."}


async def test_rollback_tells_every_viewer_which_queued_messages_were_dropped(user, loopback):
    # held after two words until the test ends: the rollback always finds m1 running
    loopback.enqueue(Reply.text("slow " * 40, delay=0.05).held_after(2, until=threading.Event()),
                     "the new one")
    session = await create_chat(user)
    a, _ = await viewer(user, session.pk)
    b, _ = await viewer(user, session.pk)
    await a.send_json_to({"type": "message", "input": "first", "ref": "m1"})
    await expect(b, "delta", ref="m1")
    await a.send_json_to({"type": "message", "input": "second", "ref": "m2"})
    m2 = await expect(b, "message.queued", ref="m2")
    await a.send_json_to({"type": "message", "input": "instead", "ref": "m3",
                          "multitask": "rollback"})
    frames = await collect(b, completed("m3"))
    ends = {f["ref"]: f for f in frames if f["type"] == "run.status" and f["status"] != "started"}
    assert ends["m2"] == {"type": "run.status", "status": "cancelled", "ref": "m2",
                          "run_id": m2["run_id"], "queued": True}
    assert ends["m1"]["status"] == "cancelled" and ends["m3"]["status"] == "completed"
    assert [r.user_text for r in loopback.message_requests] == ["first", "instead"]



async def test_a_cut_off_or_refused_reply_is_its_own_outcome_for_every_viewer(user, loopback):
    loopback.enqueue(Reply.max_tokens("Half an ans"), Reply.refusal(), Reply.text("Fine."))
    session = await create_chat(user)
    a, _ = await viewer(user, session.pk)
    b, _ = await viewer(user, session.pk)
    await a.send_json_to({"type": "message", "input": "Long please", "ref": "m1"})
    for c in (a, b):
        cut = await expect(c, "run.status", ref="m1", status="incomplete")
        assert cut["partial_text"] == "Half an ans"
        assert cut["error"]["code"] == "incomplete"
    await a.send_json_to({"type": "message", "input": "Something bad", "ref": "m2"})
    refused = await expect(b, "run.status", ref="m2", status="refused")
    assert refused["error"]["code"] == "refused"
    await a.send_json_to({"type": "message", "input": "Short please", "ref": "m3"})
    done = await expect(a, "run.status", ref="m3", status="completed")
    assert done["stop_reason"] == "end_turn"
    assert [r.status for r in await runs(session)] == [
        RunStatus.INCOMPLETE, RunStatus.REFUSED, RunStatus.COMPLETED]
    ctx = await context(session)
    assert [text(m) for m in ctx.messages] == ["Short please", "Fine."]


def _live_tasks(key: str) -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks()
                  if t.get_name().startswith("live-") and t.get_name().endswith(key))


@database_sync_to_async
def _lease_expiry(session):
    from django_agent_session.models import LiveOwnership

    return LiveOwnership.objects.get(session_id=session.pk).expires_at


async def test_an_idle_session_is_one_task_yet_renews_its_lease_and_drops_stale_viewers(user):
    """Between ticks an idle live session is its receive loop and a timer handle; the timer
    still renews the ownership lease and expires viewers nobody heard from."""
    session = await create_chat(user)
    with override_settings(AGENT_SESSION={"OWNER_LEASE_SECONDS": 0.6,
                                          "NO_VIEWER_GRACE_SECONDS": 60}):
        live = (await api.start(session.pk, spec=_spec())).session
        assert live is not None
        key = str(session.pk)
        first = await _lease_expiry(session)
        # (a renewal is due 0.2 s after the start: on a slow runner it may be running now)
        await wait_until(lambda: _live_tasks(key) == [f"live-recv-{key}"], timeout=3)
        live.presence.join("specific.gone!x", user.pk)
        live.presence.viewers["specific.gone!x"].seen = time.monotonic() - 5  # went silent
        await wait_until(lambda: live.presence.count == 0, timeout=3)
        await asyncio.sleep(1.0)  # longer than the lease: renewed, or it would have stopped
        assert live.alive and await api.is_running(session.pk)
        assert await _lease_expiry(session) > first
        await wait_until(lambda: _live_tasks(key) == [f"live-recv-{key}"], timeout=3)
        await api.stop(session.pk)
        assert live.stopped.is_set() and _live_tasks(key) == []



async def test_a_viewer_forgotten_by_the_owner_is_announced_again_by_its_heartbeat(user):
    session = await create_chat(user)
    with override_settings(AGENT_SESSION={"OWNER_LEASE_SECONDS": 0.6,
                                          "NO_VIEWER_GRACE_SECONDS": 60}):
        a, state = await viewer(user, session.pk)
        assert state["presence"]["count"] == 1
        live = api.local_sessions()[str(session.pk)]
        live.presence.viewers.clear()  # e.g. a new owner that has not heard from it yet
        await wait_until(lambda: live.presence.count == 1, timeout=3)
        await a.disconnect()
        await wait_until(lambda: live.presence.count == 0, timeout=3)
        await asyncio.sleep(0.5)  # a closed socket beats no more
        assert live.presence.count == 0


def _pumps() -> int:
    return sum(1 for t in asyncio.all_tasks() if not t.done() and getattr(
        t.get_coro(), "__qualname__", "").startswith("AgentSessionConsumer._serve"))


async def test_a_viewer_reads_its_socket_and_its_channel_with_one_task_each(user):
    """Two long-lived readers per connection (not a task per message), gone on disconnect."""
    session = await create_chat(user)
    before = _pumps()
    a, _ = await viewer(user, session.pk)
    b, _ = await viewer(user, session.pk)
    assert _pumps() - before == 4
    await a.send_json_to({"type": "ping", "ref": "p"})
    assert (await expect(a, "pong"))["ref"] == "p"
    assert (await expect(b, "presence", count=2))["count"] == 2
    assert _pumps() - before == 4
    await a.disconnect()
    await b.disconnect()
    await wait_until(lambda: _pumps() == before, timeout=3)


async def test_a_viewer_whose_channel_failed_beats_no_more(user, monkeypatch):
    """A consumer ended by a failing source (its channel layer's receive), which runs no
    ``disconnect()``, stops its presence heartbeat too: a dead viewer must not keep the
    conversation's live session from its no-viewer grace."""
    from channels.layers import get_channel_layer

    from django_agent_session.live.consumers import AgentSessionConsumer

    session = await create_chat(user)
    beats: list[float] = []
    announce = AgentSessionConsumer._announce
    layer_class = type(get_channel_layer())  # in memory, or Redis with REDIS_URL
    receive = layer_class.receive
    failing: set[str] = set()

    async def counted(self, owner, **kwargs):
        beats.append(time.monotonic())
        await announce(self, owner, **kwargs)

    async def flaky(self, channel):
        message = await receive(self, channel)
        if channel in failing:
            raise ConnectionError("the layer went away")
        return message

    monkeypatch.setattr(layer_class, "receive", flaky)
    monkeypatch.setattr(AgentSessionConsumer, "_announce", counted)
    with override_settings(AGENT_SESSION={"OWNER_LEASE_SECONDS": 0.6,
                                          "NO_VIEWER_GRACE_SECONDS": 60}):
        a, _ = await viewer(user, session.pk)
        live = api.local_sessions()[str(session.pk)]
        await wait_until(lambda: len(beats) >= 2, timeout=3)  # it beats every 0.2 s
        (channel,) = live.presence.viewers
        failing.add(channel)
        await live.layer.send(channel, {"type": "anything"})
        with pytest.raises(ConnectionError, match="the layer went away"):
            await a.wait(timeout=3)
        ended = len(beats)
        await asyncio.sleep(1.0)
        assert len(beats) == ended


async def test_a_frame_for_a_socket_already_closing_is_dropped_without_an_error(caplog):
    """Daphne refuses a send between the client's close frame and the disconnect message
    (autobahn's Disconnected): a viewer who closes a tab mid-stream is no error to log."""
    from autobahn.exception import Disconnected

    from django_agent_session.live.consumers import AgentSessionConsumer
    from django_agent_session.runs.stream import frame_message

    consumer = AgentSessionConsumer()
    consumer.joined = True
    sent = []

    async def closing(message):
        sent.append(message)
        raise Disconnected("Attempt to send on a closed protocol")

    consumer.base_send = closing
    with caplog.at_level("DEBUG", logger="django_agent_session.live"):
        for n in (1, 2):
            await consumer.dispatch(frame_message({"type": "delta", "run_id": "r", "n": n,
                                                   "text": "hi"}))
    assert len(sent) == 2  # each frame was offered to the server, which refused it
    assert [r.levelname for r in caplog.records] == ["DEBUG", "DEBUG"]
    assert "closing" in caplog.records[0].getMessage()
