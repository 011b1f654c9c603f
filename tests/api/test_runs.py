"""Runs over REST: ``"wait": false`` answers 202 with the committed run, ``Idempotency-Key``
names the message, ``multitask`` is honoured, and a run can be read, cancelled and followed
only by its session's owner."""

from __future__ import annotations

import time

import pytest
from django.test import override_settings

from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.api import CHAT, start
from tests.helpers.loopback import loopback_settings

pytestmark = pytest.mark.django_db(transaction=True)  # dispatch happens on commit


@pytest.fixture
def session_id(api, loopback):
    loopback.enqueue("first answer")
    return start(api, "first").json()["session"]["id"]


def continue_(api, session_id, message, headers=None, **body):
    return api.post(f"{CHAT}{session_id}/continue/", {"input": {"message": message}, **body},
                    format="json", headers=headers or {})


def test_wait_false_answers_202_with_the_committed_run_and_its_links(
        api, session_id, recording):
    response = continue_(api, session_id, "later", wait=False)

    assert response.status_code == 202, response.content
    body = response.json()
    run = AgentRun.objects.get(pk=body["run"]["id"])
    assert run.status == RunStatus.QUEUED and body["run"]["status"] == "queued"
    assert body["session_id"] == session_id and body["created"] is True
    assert response["Location"] == body["links"]["run"]
    assert body["links"]["run"].endswith(f"{CHAT}{session_id}/runs/{run.pk}/")
    assert body["links"]["cancel"].endswith(f"/runs/{run.pk}/cancel/")
    assert body["links"]["stream"].endswith(f"/runs/{run.pk}/stream/")
    assert recording.calls == [(run.session.__class__, session_id)]
    assert api.get(body["links"]["run"]).json()["status"] == "queued"


def test_start_with_wait_false_creates_the_session_and_queues_its_message(api, recording):
    response = start(api, "hello", wait=False)
    assert response.status_code == 202, response.content
    run = AgentRun.objects.get(pk=response.json()["run"]["id"])
    assert run.status == RunStatus.QUEUED and run.session.owner_id is not None


def test_the_idempotency_key_returns_the_same_run(api, session_id, recording, loopback):
    key = {"Idempotency-Key": "msg-1"}
    first = continue_(api, session_id, "once", key, wait=False).json()
    again = continue_(api, session_id, "once", key, wait=False)
    assert again.status_code == 202 and again.json()["created"] is False
    assert again.json()["run"]["id"] == first["run"]["id"]
    assert len(recording.calls) == 1

    loopback.enqueue("answered once")
    run = AgentRun.objects.get(pk=first["run"]["id"])
    type(run.session).objects.drain(session_id)
    waited = continue_(api, session_id, "once", key)  # waiting for it: its outcome
    assert waited.status_code == 200 and waited.json()["output"] == {"content": "answered once"}
    assert [r.user_text for r in loopback.message_requests] == ["first", "once"]

    too_long = continue_(api, session_id, "x", {"Idempotency-Key": "k" * 256}, wait=False)
    assert too_long.status_code == 400 and "Idempotency-Key" in too_long.json()


def test_multitask_reject_is_a_409_while_runs_are_queued(api, session_id, recording):
    continue_(api, session_id, "queued", wait=False)
    refused = continue_(api, session_id, "no", wait=False, multitask="reject")
    assert refused.status_code == 409 and refused.json()["code"] == "session_busy"
    bad = continue_(api, session_id, "no", multitask="shout")
    assert bad.status_code == 400 and "multitask" in bad.json()
    assert not AgentRun.objects.filter(input__message="no").exists()


def test_cancelling_a_queued_run(api, session_id, recording):
    run_id = continue_(api, session_id, "never", wait=False).json()["run"]["id"]
    response = api.post(f"{CHAT}{session_id}/runs/{run_id}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert AgentEvent.objects.filter(run_id=run_id, type="run.cancelled").exists()
    assert api.post(f"{CHAT}{session_id}/runs/{run_id}/cancel/").json()["status"] == "cancelled"


def test_runs_of_another_users_session_are_404_everywhere(api, other_api, session_id,
                                                          recording):
    run_id = continue_(api, session_id, "mine", wait=False).json()["run"]["id"]
    for method, suffix in (("get", ""), ("post", "cancel/"), ("get", "stream/")):
        response = getattr(other_api, method)(f"{CHAT}{session_id}/runs/{run_id}/{suffix}")
        assert response.status_code == 404, (suffix, response.content)
    assert AgentRun.objects.get(pk=run_id).status == RunStatus.QUEUED
    assert continue_(other_api, session_id, "hijack", wait=False).status_code == 404
    for bad in ("not-a-uuid", "00000000-0000-0000-0000-000000000000", "a.b"):
        response = api.get(f"{CHAT}{session_id}/runs/{bad}/")
        assert response.status_code == 404 and response.json() == {"detail": "Not found."}
    # an id with a dot reaches the view too: the JSON 404, not Django's HTML page
    response = api.get(f"{CHAT}a.b/runs/")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"


def test_following_a_run_needs_asgi(api, session_id, recording):
    run_id = continue_(api, session_id, "x", wait=False).json()["run"]["id"]
    response = api.get(f"{CHAT}{session_id}/runs/{run_id}/stream/",
                       headers={"Accept": "text/event-stream"})
    assert response.status_code == 406


def test_the_inline_executor_runs_a_202_turn_in_the_background(api, session_id, loopback):
    loopback.enqueue("background answer")
    run_id = continue_(api, session_id, "go", wait=False).json()["run"]["id"]
    deadline = time.monotonic() + 10
    while (run := api.get(f"{CHAT}{session_id}/runs/{run_id}/").json())["status"] != "completed":
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    assert run["output"] == {"content": "background answer"}


def test_runs_and_sessions_carry_cost_stop_reason_and_cache_ratio(api, loopback):
    loopback.enqueue(Reply.text("ok", usage={
        "input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 5000,
        "cache_read_input_tokens": 20000}))
    with override_settings(AGENT_SESSION=loopback_settings(loopback, PRICES={
            "claude-sonnet-5-5": {"input": "3", "output": "15"}})):
        session = start(api, "Hi").json()["session"]
        assert session["cost"] == "0.030750"
        assert session["cache_hit_ratio"] == round(20000 / 26000, 4)
        (run,) = api.get(f"{CHAT}{session['id']}/runs/").json()["results"]
        assert run["kind"] == "turn" and run["stop_reason"] == "end_turn"
        assert run["cost"] == "0.030750" and run["cache_hit_ratio"] == session["cache_hit_ratio"]
        listed = api.get(CHAT).json()["results"][0]
        assert listed["cost"] == "0.030750"
    loopback.enqueue(Reply.text("again"))
    api.post(f"{CHAT}{session['id']}/continue/", {"input": {"message": "x"}}, format="json")
    # a turn of a model with no price: the session's cost is unknown from then on
    assert api.get(f"{CHAT}{session['id']}/").json()["cost"] is None
