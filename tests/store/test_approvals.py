"""Tool calls that wait for a person's decision: the pause, approve (with an edited input),
reject, expiry, mixed responses, two pending calls, concurrent decisions, authorization and
what a new message does to a paused turn. Through the real SDK against the loopback server."""

from __future__ import annotations

import threading
import time

import pytest
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.loopback import loopback_settings, uncached
from tests.helpers.threads import in_thread
from tests.testapp.models import REFUNDS, ApprovalAgent, Order

pytestmark = pytest.mark.django_db(transaction=True)

ARGS = {"company_name": "Acme"}


@pytest.fixture(autouse=True)
def _recorded(recording):
    """Every test here drains resumed runs itself, and counts refunds from zero."""
    REFUNDS.clear()


def both(*blocks) -> Reply:
    return Reply.message(list(blocks), stop_reason="tool_use")


def use(id, name, **input) -> dict:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def paused(loopback, user, *replies, message="refund order 7"):
    """A session whose first turn paused on the replies' tool calls."""
    loopback.enqueue(*replies)
    session = ApprovalAgent.objects.start_session(message, instruction_args=ARGS, owner=user)
    assert session.last_turn.status == RunStatus.AWAITING_APPROVAL
    return session


def events(session, *kinds):
    return list(AgentEvent.objects.filter(session_id=session.pk, type__in=kinds)
                .order_by("seq"))


def test_a_call_that_needs_approval_pauses_the_turn_durably(loopback, user):
    session = paused(loopback, user, Reply.tool_use("refund", {"order": 7, "amount": 250},
                                                    id="t1"))
    run = AgentRun.objects.get(session_id=session.pk)
    assert run.status == RunStatus.AWAITING_APPROVAL
    row = ApprovalAgent._base_manager.get(pk=session.pk)
    assert row.lease_token is None and row.status == "idle"  # nothing held in memory
    assert ApprovalAgent.objects.get_context(session.pk).messages == []  # not committed yet
    assert ApprovalAgent.objects.pending_tool_calls(session.pk) == [{
        "run_id": str(run.pk), "tool_use_id": "t1", "name": "refund",
        "input": {"order": 7, "amount": 250}, "expires_at": None}]
    (requested,) = events(session, "tool.approval_requested")
    assert requested.data == {"tool_use_id": "t1", "name": "refund",
                              "input": {"order": 7, "amount": 250}}
    assert REFUNDS == [] and len(loopback.message_requests) == 1


def test_approve_resumes_the_turn_and_runs_the_call(loopback, user, recording):
    session = paused(loopback, user, Reply.tool_use("refund", {"order": 7, "amount": 250},
                                                    id="t1"))
    ApprovalAgent.objects.approve_tool_call(session.pk, "t1", by=user)
    assert recording.calls == [(ApprovalAgent, str(session.pk))]  # handed to the executor
    loopback.enqueue("Refunded.")
    assert ApprovalAgent.objects.drain(session.pk) == 1

    assert REFUNDS == [(7, 250.0)]
    result = uncached(loopback.message_requests[1].tool_results)
    assert result == [{"type": "tool_result", "tool_use_id": "t1",
                       "content": "refunded 250.0 on order 7"}]
    run = AgentRun.objects.get(session_id=session.pk)
    assert run.status == RunStatus.COMPLETED and run.output == {"content": "Refunded."}
    context = ApprovalAgent.objects.get_context(session.pk)
    assert [m["role"] for m in context.messages] == ["user", "assistant", "user", "assistant"]
    assert context.turns == 1
    (granted,) = events(session, "tool.approval_granted")
    assert granted.data["by"] == user.pk and granted.data["approved"] is True
    kinds = [e.type for e in AgentEvent.objects.filter(run_id=run.pk).order_by("seq")]
    assert kinds == ["run.started", "message.user", "message.assistant", "tool.call",
                     "tool.approval_requested", "tool.approval_granted", "run.resumed",
                     "tool.result", "message.assistant", "usage", "run.completed"]


def test_an_edited_input_is_validated_and_used(loopback, user):
    session = paused(loopback, user, Reply.tool_use("refund", {"order": 7, "amount": 250},
                                                    id="t1"))
    with pytest.raises(exc.InvalidInput):
        ApprovalAgent.objects.approve_tool_call(session.pk, "t1", by=user,
                                                input={"order": "seven", "amount": 1})
    ApprovalAgent.objects.approve_tool_call(session.pk, "t1", by=user,
                                            input={"order": 7, "amount": 120})
    loopback.enqueue("Refunded less.")
    ApprovalAgent.objects.drain(session.pk)
    assert REFUNDS == [(7, 120.0)]


def test_reject_sends_an_error_result_with_the_reason(loopback, user):
    session = paused(loopback, user, Reply.tool_use("send_email", {"to": "a@b.c", "body": "x"},
                                                    id="t1"), message="email them")
    ApprovalAgent.objects.reject_tool_call(session.pk, "t1", by=user, reason="Not today.")
    loopback.enqueue("Understood, no email.")
    ApprovalAgent.objects.drain(session.pk)
    (result,) = loopback.message_requests[1].tool_results
    assert result["is_error"] is True and "rejected" in result["content"]
    assert "Not today." in result["content"]
    (denied,) = events(session, "tool.approval_denied")
    assert denied.data["reason"] == "Not today." and denied.data["by"] == user.pk
    assert ApprovalAgent.objects.get(pk=session.pk).last_output == {
        "content": "Understood, no email."}


def test_a_mixed_response_holds_the_call_that_needs_none_until_the_decision(loopback, user):
    """Documented: calls of the same response that need no approval wait with it, then all
    run in the response's order."""
    Order.objects.create(number=7, status="shipped", customer="A")
    session = paused(loopback, user, both(use("t1", "lookup_order", number=7),
                                          use("t2", "refund", order=7, amount=500)))
    assert [c["tool_use_id"] for c in ApprovalAgent.objects.pending_tool_calls(session.pk)] \
        == ["t2"]
    assert not events(session, "tool.result")  # the lookup did not run either
    ApprovalAgent.objects.approve_tool_call(session.pk, "t2", by=user)
    loopback.enqueue("Done.")
    ApprovalAgent.objects.drain(session.pk)
    results = loopback.message_requests[1].tool_results
    assert [r["tool_use_id"] for r in results] == ["t1", "t2"]
    assert '"status": "shipped"' in results[0]["content"] and REFUNDS == [(7, 500.0)]


def test_two_pending_calls_resume_only_when_both_are_decided(loopback, user, recording):
    session = paused(loopback, user, both(use("t1", "refund", order=1, amount=200),
                                          use("t2", "send_email", to="x@y.z", body="b")))
    ApprovalAgent.objects.approve_tool_call(session.pk, "t1", by=user)
    assert recording.calls == []  # one left: still paused
    assert AgentRun.objects.get().status == RunStatus.AWAITING_APPROVAL
    ApprovalAgent.objects.reject_tool_call(session.pk, "t2", by=user)
    assert len(recording.calls) == 1
    loopback.enqueue("ok")
    ApprovalAgent.objects.drain(session.pk)
    results = loopback.message_requests[1].tool_results
    assert [r.get("is_error", False) for r in results] == [False, True]


def test_a_small_refund_needs_no_approval(loopback, user):
    loopback.enqueue(Reply.tool_use("refund", {"order": 3, "amount": 20}, id="t1"), "Done.")
    session = ApprovalAgent.objects.start_session("small refund", instruction_args=ARGS,
                                                  owner=user)
    assert session.last_output == {"content": "Done."} and REFUNDS == [(3, 20.0)]


def test_a_call_is_decided_once_and_concurrent_decisions_run_it_once(loopback, user):
    session = paused(loopback, user, Reply.tool_use("refund", {"order": 7, "amount": 250},
                                                    id="t1"))
    outcomes: list = []
    barrier = threading.Barrier(4)

    def decide() -> None:
        barrier.wait()
        try:
            ApprovalAgent.objects.approve_tool_call(session.pk, "t1", by=user)
            outcomes.append("approved")
        except exc.AlreadyDecided:
            outcomes.append("conflict")
        except Exception as error:  # noqa: BLE001 (reported by the assertion)
            outcomes.append(repr(error))
    threads = [threading.Thread(target=in_thread(decide)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(outcomes) == ["approved"] + ["conflict"] * 3
    loopback.enqueue("Refunded.")
    ApprovalAgent.objects.drain(session.pk)
    assert REFUNDS == [(7, 250.0)]  # the tool ran once
    with pytest.raises(exc.AlreadyDecided):  # decided (and run): a clear conflict
        ApprovalAgent.objects.reject_tool_call(session.pk, "t1", by=user)


def test_another_user_cannot_decide_and_gets_the_missing_call_error(loopback, user,
                                                                    other_user):
    session = paused(loopback, user, Reply.tool_use("refund", {"order": 7, "amount": 250},
                                                    id="t1"))
    for decide in (ApprovalAgent.objects.approve_tool_call,
                   ApprovalAgent.objects.reject_tool_call):
        with pytest.raises(exc.ToolCallNotFound) as error:
            decide(session.pk, "t1", by=other_user)
        with pytest.raises(exc.ToolCallNotFound) as missing:
            decide(session.pk, "t-unknown", by=user)
        assert type(error.value) is type(missing.value)  # the same as a missing call
    assert ApprovalAgent.objects.pending_tool_calls(session.pk)[0]["tool_use_id"] == "t1"


def staff_may_decide(session, user) -> bool:
    return user.is_staff


def test_approvers_widen_who_may_decide(loopback, user, other_user):
    session = paused(loopback, user, Reply.tool_use("refund", {"order": 7, "amount": 250},
                                                    id="t1"))
    other_user.is_staff = True
    other_user.save()
    with override_settings(AGENT_SESSION=loopback_settings(
            loopback, EXECUTOR="tests.helpers.executors.Recording",
            APPROVERS=f"{__name__}.staff_may_decide")):
        ApprovalAgent.objects.approve_tool_call(session.pk, "t1", by=other_user)
    assert AgentRun.objects.get().status == RunStatus.QUEUED


def test_an_undecided_call_expires_with_a_stated_reason(loopback, user, recording,
                                                        monkeypatch):
    monkeypatch.setattr(ApprovalAgent.agent_options, "approval_timeout", 0.2)
    session = paused(loopback, user, Reply.tool_use("refund", {"order": 7, "amount": 250},
                                                    id="t1"))
    assert recording.later == [(ApprovalAgent, str(session.pk), 0.2)]  # looked at then
    assert ApprovalAgent.objects.pending_tool_calls(session.pk)[0]["expires_at"]
    time.sleep(0.3)
    with pytest.raises(exc.AlreadyDecided, match="expired"):
        ApprovalAgent.objects.approve_tool_call(session.pk, "t1", by=user)
    loopback.enqueue("The refund request expired.")
    assert ApprovalAgent.objects.drain(session.pk) == 1  # the drain expires it, then resumes
    (result,) = loopback.message_requests[1].tool_results
    assert result["is_error"] and "expired" in result["content"]
    (denied,) = events(session, "tool.approval_denied")
    assert denied.data["by"] is None and denied.data["reason"] == "The approval request expired."
    assert REFUNDS == []


def test_messages_wait_behind_a_paused_turn_and_interrupt_cancels_it(loopback, user):
    session = paused(loopback, user, Reply.tool_use("refund", {"order": 7, "amount": 250},
                                                    id="t1"))
    queued = ApprovalAgent.objects.continue_session(session.pk, "and another", wait=False)
    assert ApprovalAgent.objects.drain(session.pk) == 0  # the paused turn goes first
    with pytest.raises(exc.SessionBusy):
        ApprovalAgent.objects.continue_session(session.pk, "no", multitask="reject",
                                               wait=False)
    ApprovalAgent.objects.continue_session(session.pk, "forget it", wait=False,
                                           multitask="interrupt")
    paused_run = AgentRun.objects.get(input__message="refund order 7")
    assert paused_run.status == RunStatus.CANCELLED
    assert ApprovalAgent.objects.pending_tool_calls(session.pk) == []
    loopback.enqueue("re another", "re forget")
    assert ApprovalAgent.objects.drain(session.pk) == 2
    queued.refresh_from_db()
    assert queued.status == RunStatus.COMPLETED and REFUNDS == []


def test_a_compaction_before_the_pause_counts_in_the_conversation_s_totals(loopback, user):
    from tests.helpers.engine import declared

    loopback.enqueue(Reply.text("Anvils are heavy."))
    with declared(ApprovalAgent, compaction={"keep_turns": 1, "threshold": 0.5}):
        session = ApprovalAgent.objects.start_session("Tell me about anvils. " * 100,
                                                      instruction_args=ARGS, owner=user)
        measured = session.get_context().tokens
        loopback.enqueue(Reply.text("The user asked about anvils.",
                                    usage={"input_tokens": 40, "output_tokens": 12}),
                         Reply.tool_use("refund", {"order": 7, "amount": 250}, id="t1"))
        with override_settings(AGENT_SESSION=loopback_settings(
                loopback, EXECUTOR="tests.helpers.executors.Recording",
                CONTEXT_WINDOWS={"claude-sonnet-5-5": 2 * measured})):
            session = ApprovalAgent.objects.continue_session(session, "Refund order 7")
            assert session.last_turn.status == RunStatus.AWAITING_APPROVAL
            ApprovalAgent.objects.approve_tool_call(session.pk, "t1", by=user)
            loopback.enqueue("Refunded.")
            assert ApprovalAgent.objects.drain(session.pk) == 1

    context = ApprovalAgent.objects.get_context(session.pk)
    assert context.compactions == 1
    runs = AgentRun.objects.filter(session_id=session.pk)
    assert runs.filter(kind="compaction").count() == 1
    # every run the conversation paid for is in its totals, the summary's included
    for name in ("input_tokens", "output_tokens"):
        assert context.usage[name] == sum(getattr(run, name) for run in runs)
    row = ApprovalAgent.objects.get(pk=session.pk)
    assert row.input_tokens == context.usage["input_tokens"]
