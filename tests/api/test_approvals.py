"""Approvals over REST: the paused turn's honest body, the pending calls, approve (with an
edited input), reject, who may decide (another user's call answers exactly like a missing one),
a second decision, the decision told to the conversation's viewers, and SSE streams that end at
the pause and go on after the decision. Through the real SDK against the loopback server."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.asgi import get_asgi_application
from django.test import Client, override_settings

from django_agent_session.models import AgentEvent, AgentRun
from django_agent_session.runs.stream import frame_of, group_name
from django_agent_session.testing.loopback import Reply
from tests.helpers.api import ARGS, parse_sse
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import REFUNDS, ApprovalAgent

pytestmark = pytest.mark.django_db(transaction=True)  # dispatch happens on commit

PATH = "/api/approval-agents/"
BIG_REFUND = {"order": 7, "amount": 250}


@pytest.fixture(autouse=True)
def _recorded(recording):
    """Every test here drains resumed runs itself, and counts refunds from zero."""
    REFUNDS.clear()


def use(id, name, **input) -> dict:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def paused(api, loopback, *replies, message="refund order 7"):
    """Start a session whose first turn pauses on the replies' calls; the 201 body."""
    loopback.enqueue(*replies or [Reply.tool_use("refund", BIG_REFUND, id="t1")])
    response = api.post(PATH, {"input": {"message": message}, "instruction_args": ARGS},
                        format="json")
    assert response.status_code == 201, response.content
    return response.json()


def calls(session_id) -> str:
    return f"{PATH}{session_id}/tool-calls/"


def approve(client, session_id, tool_use_id="t1", body=None):
    return client.post(f"{calls(session_id)}{tool_use_id}/approve/", body, format="json")


def reject(client, session_id, tool_use_id="t1", body=None):
    return client.post(f"{calls(session_id)}{tool_use_id}/reject/", body, format="json")


def test_a_paused_turn_says_so_and_lists_its_calls(api, loopback):
    body = paused(api, loopback)
    session_id = body["session"]["id"]
    run = AgentRun.objects.get(session_id=session_id)
    call = {"run_id": str(run.pk), "tool_use_id": "t1", "name": "refund",
            "input": BIG_REFUND, "expires_at": None}
    # the turn body tells the truth: no output yet, the calls it waits for
    assert body["status"] == "awaiting_approval" and body["output"] is None
    assert body["run_id"] == str(run.pk) and body["pending"] == [call]
    assert body["session"]["status"] == "idle"

    listed = api.get(calls(session_id))
    assert listed.status_code == 200 and listed.json() == [call]
    assert REFUNDS == []


def test_a_completed_turn_says_completed_with_nothing_pending(api, loopback):
    loopback.enqueue(Reply.tool_use("refund", {"order": 3, "amount": 20}, id="t1"), "Done.")
    body = api.post(PATH, {"input": {"message": "small"}, "instruction_args": ARGS},
                    format="json").json()
    assert body["status"] == "completed" and body["pending"] == []
    assert body["output"] == {"content": "Done."} and body["run_id"]
    assert api.get(calls(body["session"]["id"])).json() == []


def test_continue_that_pauses_answers_awaiting_approval(api, loopback):
    loopback.enqueue("Hello.")
    session_id = api.post(PATH, {"input": {"message": "hi"}, "instruction_args": ARGS},
                          format="json").json()["session"]["id"]
    loopback.enqueue(Reply.tool_use("send_email", {"to": "a@b.c", "body": "x"}, id="e1"))
    response = api.post(f"{PATH}{session_id}/continue/", {"input": {"message": "email"}},
                        format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "awaiting_approval" and body["output"] is None
    assert [c["tool_use_id"] for c in body["pending"]] == ["e1"]
    assert body["session"]["last_output"] == {"content": "Hello."}  # the last committed


def test_approve_resumes_the_turn_and_runs_the_call(api, loopback, recording):
    session_id = paused(api, loopback)["session"]["id"]
    response = approve(api, session_id)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["tool_use_id"] == "t1" and body["approved"] is True and body["resumed"] is True
    assert body["run"]["status"] == "queued"  # as the decision left it
    assert recording.calls == [(ApprovalAgent, session_id)]  # handed to the executor
    loopback.enqueue("Refunded.")
    assert ApprovalAgent.objects.drain(session_id) == 1
    assert REFUNDS == [(7, 250.0)]
    assert api.get(calls(session_id)).json() == []
    run = api.get(f"{PATH}{session_id}/runs/{body['run']['id']}/").json()
    assert run["status"] == "completed" and run["output"] == {"content": "Refunded."}
    (granted,) = AgentEvent.objects.filter(session_id=session_id,
                                           type="tool.approval_granted")
    assert granted.data["by"] == ApprovalAgent.objects.get(pk=session_id).owner_id


def test_approve_with_an_edited_input_and_a_bad_one_is_400(api, loopback):
    session_id = paused(api, loopback)["session"]["id"]
    bad = approve(api, session_id, body={"input": {"order": "seven", "amount": 1}})
    assert bad.status_code == 400
    assert set(bad.json()) == {"input"} and "order" in bad.json()["input"]
    not_an_object = approve(api, session_id, body={"input": [1]})
    assert not_an_object.status_code == 400 and "input" in not_an_object.json()
    misspelt = approve(api, session_id, body={"inputs": {"order": 7, "amount": 1}})
    assert misspelt.status_code == 400 and misspelt.json() == {"inputs": ["Unknown field."]}
    assert [c["tool_use_id"] for c in api.get(calls(session_id)).json()] == ["t1"]

    edited = approve(api, session_id, body={"input": {"order": 7, "amount": 120}})
    assert edited.status_code == 200 and edited.json()["resumed"] is True
    loopback.enqueue("Refunded 120.")
    ApprovalAgent.objects.drain(session_id)
    assert REFUNDS == [(7, 120.0)]
    (granted,) = AgentEvent.objects.filter(session_id=session_id,
                                           type="tool.approval_granted")
    assert granted.data["input"] == {"order": 7, "amount": 120}


def test_reject_with_a_reason(api, loopback):
    session_id = paused(api, loopback, Reply.tool_use(
        "send_email", {"to": "a@b.c", "body": "x"}, id="t1"), message="email them")["session"]["id"]
    response = reject(api, session_id, body={"reason": "Not today."})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["approved"] is False and body["resumed"] is True
    too_long = reject(api, session_id, body={"reason": "x" * 2001})
    assert too_long.status_code == 400 and "reason" in too_long.json()

    loopback.enqueue("No email, then.")
    ApprovalAgent.objects.drain(session_id)
    (result,) = loopback.message_requests[1].tool_results
    assert result["is_error"] is True and "Not today." in result["content"]
    assert ApprovalAgent.objects.get(pk=session_id).last_output == {
        "content": "No email, then."}


def test_two_calls_resume_only_when_both_are_decided(api, loopback, recording):
    session_id = paused(api, loopback, Reply.message(
        [use("t1", "refund", order=1, amount=200), use("t2", "send_email", to="x@y.z",
                                                      body="b")], stop_reason="tool_use")
    )["session"]["id"]
    first = approve(api, session_id, "t1").json()
    assert first["resumed"] is False and first["run"]["status"] == "awaiting_approval"
    assert recording.calls == []
    assert [c["tool_use_id"] for c in api.get(calls(session_id)).json()] == ["t2"]
    second = reject(api, session_id, "t2").json()  # no body: no reason
    assert second["resumed"] is True and second["run"]["status"] == "queued"
    assert len(recording.calls) == 1


def test_another_users_call_is_answered_exactly_like_a_missing_one(api, other_api, loopback):
    session_id = paused(api, loopback)["session"]["id"]
    loopback.enqueue("Hi.")  # a session of the other user's own, with no such call
    own = other_api.post(PATH, {"input": {"message": "hi"}, "instruction_args": ARGS},
                         format="json").json()["session"]["id"]

    for decide in (approve, reject):
        foreign = decide(other_api, session_id)
        missing = decide(other_api, own)
        nowhere = decide(other_api, "4f6a2b53-35c9-4d8a-9f3e-2b5ad6a1b0aa")
        garbage = decide(other_api, "not-a-uuid")
        assert foreign.status_code == missing.status_code == nowhere.status_code == \
            garbage.status_code == 404
        assert foreign.json() == missing.json() == nowhere.json() == garbage.json() == {
            "code": "tool_call_not_found",
            "detail": "No pending tool call 't1' on this session.", "retryable": False}
    # the owner's own missing call: the same body again
    assert approve(api, session_id, "t1-unknown").json()["code"] == "tool_call_not_found"
    assert other_api.get(calls(session_id)).status_code == 404
    assert [c["tool_use_id"] for c in api.get(calls(session_id)).json()] == ["t1"]


def staff_may_decide(session, user) -> bool:
    return user.is_staff


def test_approvers_decide_a_session_they_do_not_own(api, other_api, other_user, loopback,
                                                    recording):
    session_id = paused(api, loopback)["session"]["id"]
    other_user.is_staff = True
    other_user.save()
    with override_settings(AGENT_SESSION=loopback_settings(
            loopback, EXECUTOR="tests.helpers.executors.Recording",
            APPROVERS=f"{__name__}.staff_may_decide")):
        assert [c["tool_use_id"] for c in other_api.get(calls(session_id)).json()] == ["t1"]
        assert other_api.get(f"{PATH}{session_id}/").status_code == 404  # still not theirs
        response = approve(other_api, session_id)
    assert response.status_code == 200 and response.json()["resumed"] is True
    (granted,) = AgentEvent.objects.filter(session_id=session_id,
                                           type="tool.approval_granted")
    assert granted.data["by"] == other_user.pk


def test_a_second_decision_is_a_conflict(api, loopback):
    session_id = paused(api, loopback)["session"]["id"]
    assert approve(api, session_id).status_code == 200
    for decide in (approve, reject):
        again = decide(api, session_id)
        assert again.status_code == 409
        assert again.json()["code"] == "already_decided" and again.json()["retryable"] is False
    loopback.enqueue("Refunded.")
    ApprovalAgent.objects.drain(session_id)
    assert approve(api, session_id).status_code == 409  # its run went on: still decided
    assert REFUNDS == [(7, 250.0)]


def test_the_decision_is_announced_to_the_conversations_viewers(api, loopback):
    session_id = paused(api, loopback)["session"]["id"]
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group_name(ApprovalAgent, session_id), channel)

    approve(api, session_id, body={"input": {"order": 7, "amount": 99}})

    async def receive():
        return await asyncio.wait_for(layer.receive(channel), 5)

    frame = frame_of(async_to_sync(receive)())
    event = AgentEvent.objects.get(session_id=session_id, type="tool.approval_granted")
    run = AgentRun.objects.get(session_id=session_id)
    assert frame == {"type": "tool.approval_granted", "ref": str(run.pk), "run_id": str(run.pk),
                     "tool_use_id": "t1", "name": "refund", "approved": True,
                     "by": event.data["by"], "reason": "", "input": {"order": 7, "amount": 99},
                     "at": event.data["at"], "resumed": True, "seq": event.seq}
    async_to_sync(layer.group_discard)(group_name(ApprovalAgent, session_id), channel)


def test_resubmitting_a_paused_turns_key_answers_with_the_pause_at_once(api, loopback):
    """Regression: waiting on a run that paused (it was run elsewhere, or a resubmission
    named it) never ended, as a paused run is not finished."""
    loopback.enqueue("Hello.")
    session_id = api.post(PATH, {"input": {"message": "hi"}, "instruction_args": ARGS},
                          format="json").json()["session"]["id"]
    key = {"Idempotency-Key": "refund-7"}
    queued = api.post(f"{PATH}{session_id}/continue/", {"input": {"message": "refund"},
                      "wait": False}, format="json", headers=key)
    assert queued.status_code == 202
    loopback.enqueue(Reply.tool_use("refund", BIG_REFUND, id="t1"))
    ApprovalAgent.objects.drain(session_id)  # another executor ran it: it paused

    answers: list = []

    def resubmit() -> None:
        answers.append(api.post(f"{PATH}{session_id}/continue/",
                                {"input": {"message": "refund"}}, format="json",
                                headers=key))
    thread = threading.Thread(target=resubmit, daemon=True)
    thread.start()
    thread.join(10)
    assert answers, "the resubmission waited for the paused run"
    body = answers[0].json()
    assert answers[0].status_code == 200 and body["status"] == "awaiting_approval"
    assert body["run_id"] == queued.json()["run"]["id"]
    assert [c["tool_use_id"] for c in body["pending"]] == ["t1"]


# -- SSE (ASGI) ------------------------------------------------------------------------------

def asgi_request(method: str, path: str, cookie: str, body: bytes = b"",
                 headers: tuple = ()) -> ApplicationCommunicator:
    csrf = "k" * 32
    return ApplicationCommunicator(get_asgi_application(), {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"accept", b"text/event-stream"), (b"x-csrftoken", csrf.encode()),
                    (b"cookie", f"sessionid={cookie}; csrftoken={csrf}".encode()),
                    *headers]})


async def sse_events(communicator: ApplicationCommunicator, body: bytes = b""
                     ) -> tuple[list, list[int]]:
    """Every event of an SSE answer, and the ``id`` lines."""
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(timeout=10)
    assert start["type"] == "http.response.start" and start["status"] == 200
    raw = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    ids = [int(line[4:]) for line in raw.decode().splitlines() if line.startswith("id: ")]
    return parse_sse(raw), ids


async def test_a_stream_ends_at_the_pause_and_following_goes_on_after_the_decision(
        user, loopback):
    """The inline executor runs the turn: the stream ends with the paused turn's body; after
    the decision the run's stream goes on, its progress ids after those before the pause."""
    client = Client()
    await database_sync_to_async(client.force_login)(user)
    cookie = client.cookies["sessionid"].value
    loopback.enqueue(Reply.tool_use("refund", BIG_REFUND, id="t1", text="Let me refund."),
                     Reply.text("Refunded 250.", chunk_size=3, delay=0.1))
    with override_settings(AGENT_SESSION=loopback_settings(loopback, EXECUTOR="inline")):
        payload = json.dumps({"input": {"message": "refund"}, "instruction_args": ARGS}
                             ).encode()
        events, ids = await sse_events(asgi_request("POST", f"{PATH}stream/", cookie,
                                                    payload), payload)
        names = [name for name, _ in events]
        assert names[0] == "run.started" and "tool.call" in names
        assert names[-2:] == ["tool.approval_requested", "message"]
        body = events[-1][1]
        assert body["status"] == "awaiting_approval" and body["output"] is None
        assert [c["tool_use_id"] for c in body["pending"]] == ["t1"]
        assert ids == list(range(1, len(ids) + 1))
        session_id, run_id = body["session"]["id"], body["run_id"]

        # the resumed reply is slow: the follower joins while the run runs
        await database_sync_to_async(ApprovalAgent.objects.approve_tool_call)(
            session_id, "t1", by=user)
        path = f"{PATH}{session_id}/runs/{run_id}/stream/"
        rest, more_ids = await sse_events(asgi_request(
            "GET", path, cookie, headers=((b"last-event-id", str(ids[-1]).encode()),)))

    assert [name for name, _ in rest][-1] == "message"
    assert rest[-1][1]["status"] == "completed"
    assert rest[-1][1]["output"] == {"content": "Refunded 250."}
    assert "tool.result" in [name for name, _ in rest]
    assert more_ids and more_ids[0] == ids[-1] + 1  # numbered on, nothing dropped
    text = "".join(d["text"] for name, d in rest if name == "delta" and d["kind"] == "text")
    assert text == "Refunded 250." and REFUNDS == [(7, 250.0)]
