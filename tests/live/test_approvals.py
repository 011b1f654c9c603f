"""Approvals over the WebSocket, with the in-memory layer and the inline executor, through the
real SDK against the loopback server: every tab sees the pause and the decision, the decision
comes before the resumed run's frames (numbered on after the pause), a tab that connects while
the turn waits is told the pending calls, and bad or second decisions are error frames."""

from __future__ import annotations

import uuid

import pytest
from channels.db import database_sync_to_async

from django_agent_session.live.consumers import AgentSessionConsumer
from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.live_server import collect, completed, expect, viewer
from tests.testapp.models import REFUNDS, ApprovalAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_layer")]

AGENT = "testapp.approvalagent"
BIG_REFUND = {"order": 7, "amount": 250}


@pytest.fixture(autouse=True)
def _no_refunds():
    REFUNDS.clear()


def _create(user):
    from django_agent_session.live.api import create_conversation
    from django_agent_session.live.routers import SessionSpec

    session, _ = create_conversation(SessionSpec(ApprovalAgent), uuid.uuid4(), user,
                                     instruction_args={"company_name": "Acme"})
    return session


create = database_sync_to_async(_create)


@database_sync_to_async
def run_of(session) -> AgentRun:
    return AgentRun.objects.get(session_id=session.pk)


async def pause(user, loopback, *, text="Refunding that."):
    """Two tabs on a conversation whose first message (``m1``) pauses on call ``t1``."""
    loopback.enqueue(Reply.tool_use("refund", BIG_REFUND, id="t1", text=text),
                     Reply.text("Refunded 250.", chunk_size=4))
    session = await create(user)
    a, _ = await viewer(user, session.pk, agent=AGENT)
    b, _ = await viewer(user, session.pk, agent=AGENT)
    await a.send_json_to({"type": "message", "input": "refund order 7", "ref": "m1"})
    frames = {}
    for tab, name in ((a, "a"), (b, "b")):
        frames[name] = await collect(tab, lambda f: f["type"] == "run.status"
                                     and f["status"] == "awaiting_approval")
    return session, a, b, frames


async def test_a_decision_from_one_tab_resolves_every_tab_then_the_turn_goes_on(user,
                                                                               loopback):
    session, a, b, frames = await pause(user, loopback)
    run = await run_of(session)
    assert run.status == RunStatus.AWAITING_APPROVAL
    for seen in frames.values():
        (requested,) = [f for f in seen if f["type"] == "tool.approval_requested"]
        assert requested == {"type": "tool.approval_requested", "ref": "m1",
                             "run_id": str(run.pk), "n": requested["n"], "tool_use_id": "t1",
                             "name": "refund", "input": BIG_REFUND}
        status = seen[-1]
        assert status["pending"] == [{"tool_use_id": "t1", "name": "refund",
                                      "input": BIG_REFUND}]
        assert status["run_id"] == str(run.pk) and status["ref"] == "m1" and status["seq"]
        assert [f["n"] for f in seen if "n" in f] == list(range(1, requested["n"] + 1))
    paused_n = frames["b"][-2]["n"]
    assert REFUNDS == [] and len(loopback.message_requests) == 1

    await a.send_json_to({"type": "decide", "tool_use_id": "t1", "approve": True,
                          "ref": "d1"})
    decided = await expect(a, "decided")
    assert decided == {"type": "decided", "ref": "d1", "tool_use_id": "t1", "approved": True,
                       "resumed": True, "run_id": str(run.pk)}

    for tab in (b, a):
        rest = await collect(tab, completed("m1"))
        kinds = [f["type"] for f in rest]
        granted = rest[kinds.index("tool.approval_granted")]
        (event,) = await database_sync_to_async(list)(
            AgentEvent.objects.filter(session_id=session.pk, type="tool.approval_granted"))
        assert granted == {"type": "tool.approval_granted", "ref": "m1",
                           "run_id": str(run.pk), "tool_use_id": "t1", "name": "refund",
                           "approved": True, "by": user.pk, "reason": "",
                           "at": event.data["at"], "resumed": True, "seq": event.seq}
        started = [f for f in rest if f["type"] == "run.status" and f["status"] == "started"]
        assert started == [{"type": "run.status", "status": "started", "ref": "m1",
                            "run_id": str(run.pk), "input": {"message": "refund order 7"},
                            "user_id": user.pk, "resumed": True}]
        # the decision first, then the resumed run, numbered on after the pause
        assert kinds.index("tool.approval_granted") < rest.index(started[0])
        numbered = [f["n"] for f in rest if "n" in f]
        assert numbered == list(range(paused_n + 1, paused_n + 1 + len(numbered)))
        (result,) = [f for f in rest if f["type"] == "tool.result"]
        assert result["id"] == "t1" and result["content"] == "refunded 250.0 on order 7"
        text = "".join(f["text"] for f in rest if f["type"] == "delta" and f["kind"] == "text")
        assert text == "Refunded 250."
        assert rest[-1]["status"] == "completed" and rest[-1]["output"] == {
            "content": "Refunded 250."}
    assert REFUNDS == [(7, 250.0)]
    assert (await run_of(session)).status == RunStatus.COMPLETED
    for tab in (a, b):
        await tab.disconnect()


async def test_a_tab_that_connects_while_the_turn_waits_sees_the_pending_calls(user,
                                                                              loopback):
    session, a, b, _ = await pause(user, loopback)
    run = await run_of(session)
    c, state = await viewer(user, session.pk, agent=AGENT)
    assert state["pending"] == [{"ref": "m1", "run_id": str(run.pk), "tool_use_id": "t1",
                                 "name": "refund", "input": BIG_REFUND, "expires_at": None}]
    assert state["running"] is None and state["queue"] == [] and state["status"] == "idle"

    await c.send_json_to({"type": "decide", "tool_use_id": "t1", "approve": False,
                          "reason": "Too much."})
    assert (await expect(c, "decided"))["approved"] is False
    denied = await expect(a, "tool.approval_denied")
    assert denied["reason"] == "Too much." and denied["resumed"] is True
    await collect(b, completed("m1"))
    (result,) = loopback.message_requests[1].tool_results
    assert result["is_error"] and "Too much." in result["content"] and REFUNDS == []
    _, after = await viewer(user, session.pk, agent=AGENT)
    assert after["pending"] == []
    for tab in (a, b, c):
        await tab.disconnect()


async def test_bad_and_second_decisions_are_error_frames_and_the_socket_stays_open(
        user, loopback):
    _, a, b, _ = await pause(user, loopback)

    invalid = [
        ({"type": "decide", "tool_use_id": "t1", "approve": "yes"}, {"approve"}),
        ({"type": "decide", "approve": True}, {"tool_use_id"}),
        ({"type": "decide", "tool_use_id": "t1", "approve": True, "reason": "x"}, {"reason"}),
        ({"type": "decide", "tool_use_id": "t1", "approve": False, "input": {}}, {"input"}),
        ({"type": "decide", "tool_use_id": "t1", "approve": True, "input": [1]}, {"input"}),
        ({"type": "decide", "tool_use_id": "t1", "approve": True, "inputs": {}}, {"inputs"}),
    ]
    for frame, fields in invalid:
        await a.send_json_to({**frame, "ref": "bad"})
        error = await expect(a, "error")
        assert error["code"] == "invalid_frame" and error["ref"] == "bad", error
        assert set(error["errors"]) == fields, error

    await a.send_json_to({"type": "decide", "tool_use_id": "nope", "approve": True,
                          "ref": "r1"})
    missing = await expect(a, "error")
    assert missing == {"type": "error", "code": "tool_call_not_found",
                       "message": "No pending tool call 'nope' on this session.",
                       "ref": "r1", "retryable": False}

    await a.send_json_to({"type": "decide", "tool_use_id": "t1", "approve": True,
                          "input": {"order": "seven", "amount": 1}, "ref": "r2"})
    bad_input = await expect(a, "error")
    assert bad_input["code"] == "invalid_input" and "order" in bad_input["errors"]
    assert bad_input["ref"] == "r2"

    await a.send_json_to({"type": "decide", "tool_use_id": "t1", "approve": True,
                          "input": {"order": 7, "amount": 90}, "ref": "r3"})
    assert (await expect(a, "decided", ref="r3"))["resumed"] is True
    await b.send_json_to({"type": "decide", "tool_use_id": "t1", "approve": False,
                          "ref": "r4"})
    conflict = await expect(b, "error")
    assert conflict["code"] == "already_decided" and conflict["ref"] == "r4"
    await collect(a, completed("m1"))
    assert REFUNDS == [(7, 90.0)]
    await a.send_json_to({"type": "ping", "ref": "p"})
    assert (await expect(a, "pong"))["ref"] == "p"
    for tab in (a, b):
        await tab.disconnect()


async def test_a_viewer_who_may_not_decide_gets_the_missing_call_error(user, other_user,
                                                                        loopback, monkeypatch):
    """A project may let others view a conversation (``can_view``); deciding is the manager's
    ``may_decide`` (the owner, or ``APPROVERS``): anyone else is told there is no such call."""
    monkeypatch.setattr(AgentSessionConsumer, "can_view", lambda self, owner_id: True)
    session, a, b, _ = await pause(user, loopback)
    other, state = await viewer(other_user, session.pk, agent=AGENT)
    assert [c["tool_use_id"] for c in state["pending"]] == ["t1"]
    await other.send_json_to({"type": "decide", "tool_use_id": "t1", "approve": True,
                              "ref": "x"})
    refused = await expect(other, "error")
    assert refused == {"type": "error", "code": "tool_call_not_found",
                       "message": "No pending tool call 't1' on this session.",
                       "ref": "x", "retryable": False}
    assert (await run_of(session)).status == RunStatus.AWAITING_APPROVAL
    for tab in (a, b, other):
        await tab.disconnect()
