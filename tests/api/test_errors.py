"""Client mistakes are 400s, model failures 502/503 with a typed code, a busy session 409."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from django_agent_session import exceptions as exc
from django_agent_session.api.errors import (
    RETRY_AFTER_MAX,
    RETRY_AFTER_MIN,
    api_exception,
    busy_retry_after,
    error_body,
    status_for,
)
from django_agent_session.models import AgentRun, RunStatus, SessionStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.api import ARGS, CHAT, parse_sse, start, streamed
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("body", "field"), [
    ({"instruction_args": ARGS}, "input"),
    ({"input": None, "instruction_args": ARGS}, "input"),
    ({"input": {}, "instruction_args": ARGS}, "input"),
    ({"input": {"message": ["a"]}, "instruction_args": ARGS}, "input"),
    ({"input": {"message": "x" * 10_001}, "instruction_args": ARGS}, "input"),
    ({"input": [1, 2], "instruction_args": ARGS}, "input"),
    ({"input": {"message": "hi"}}, "instruction_args"),
    ({"input": {"message": "hi"}, "instruction_args": {}}, "instruction_args"),
    ({"input": {"message": "hi"}, "instruction_args": "ACME"}, "instruction_args"),
    ({"input": {"message": "hi"}, "instruction_args": {"company_name": "x" * 101}},
     "instruction_args"),
])
@pytest.mark.parametrize("path", [CHAT, f"{CHAT}stream/"])
def test_invalid_start_bodies_are_400_and_never_reach_the_model(api, loopback, body, field,
                                                                path):
    response = api.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")
    assert field in response.json()
    assert loopback.message_requests == []
    assert ChatAgent.objects.count() == 0


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"{", b"null"])
def test_malformed_json_is_400(api, raw):
    response = api.post(CHAT, raw, content_type="application/json")
    assert response.status_code == 400


def test_non_json_content_type_is_415(api):
    response = api.post(CHAT, "input=hi", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def test_oversized_input_is_400_under_input(api, loopback):
    limits = {**loopback_settings(loopback), "MAX_INPUT_CHARS": 10}
    with override_settings(AGENT_SESSION=limits):
        response = api.post("/api/plain-agents/", {"input": {"message": "x" * 11}},
                            format="json")
    assert response.status_code == 400
    assert "non_field_errors" in response.json()["input"]
    assert loopback.message_requests == []


def test_continue_validates_input_too(api, loopback):
    loopback.enqueue("a")
    session_id = start(api).json()["session"]["id"]
    for path in (f"{CHAT}{session_id}/continue/", f"{CHAT}{session_id}/continue/stream/"):
        response = api.post(path, {"input": {"message": ""}}, format="json")
        assert response.status_code == 400
        assert "message" in response.json()["input"]
    assert len(loopback.message_requests) == 1


@pytest.mark.parametrize(("reply", "status", "code", "retryable"), [
    (Reply.overloaded(), 503, "model_overloaded", True),
    (Reply.rate_limited(), 503, "model_rate_limited", True),
    (Reply.server_error(), 503, "model_unavailable", True),
    (Reply.bad_request("max_tokens too large"), 502, "model_bad_request", False),
    (Reply.unauthorized(), 502, "model_authentication_error", False),
])
def test_model_errors_are_502_or_503_with_a_typed_code(api, loopback, reply, status, code,
                                                       retryable):
    loopback.enqueue(reply)
    response = start(api, "hello")

    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code and body["retryable"] is retryable
    assert body["request_id"].startswith("req_loopback_")
    # the failed start still created the session: the client can retry with continue
    session = ChatAgent.objects.get(pk=body["session_id"])
    assert session.status == SessionStatus.FAILED
    assert AgentRun.objects.get(session_id=session.pk).error["code"] == code

    loopback.enqueue("Recovered.")
    retry = api.post(f"{CHAT}{session.pk}/continue/", {"input": {"message": "hello"}},
                     format="json")
    assert retry.status_code == 200 and retry.json()["output"] == {"content": "Recovered."}


def test_model_error_in_a_stream_is_an_error_event(api, loopback):
    loopback.enqueue(Reply.text("partial answer that breaks", chunk_size=4, error_after=2))
    response = start(api, path=f"{CHAT}stream/")

    assert response.status_code == 200
    events = streamed(response)
    assert [name for name, _ in events][:3] == ["run.started", "delta", "delta"]
    name, error = events[-1]
    assert name == "error"
    assert error["status"] == 503 and error["code"] == "model_overloaded"
    assert error["retryable"] is True and "session_id" in error


def hold_lease(session_id, seconds: float = 60.0) -> None:
    ChatAgent.objects.filter(pk=session_id).update(
        lease_token=uuid.uuid4(), lease_expires_at=timezone.now() + timedelta(seconds=seconds),
        status=SessionStatus.RUNNING)


def no_wait(server) -> dict:
    return {**loopback_settings(server), "TURN_WAIT_SECONDS": 0.0}


def turn_running(session_id, *, for_seconds: float, took_ms=(), queued: int = 0,
                 now=None) -> None:
    """The session as a turn ``for_seconds`` into its run leaves it: the lease held (for
    60 s more), a running run; ``took_ms``: its completed turns' durations."""
    now = now or timezone.now()
    hold_lease(session_id)
    session = ChatAgent.objects.get(pk=session_id)
    session.runs.all().delete()
    for index, duration in enumerate(took_ms):
        session.runs.create(status=RunStatus.COMPLETED, duration_ms=duration,
                            started_at=now - timedelta(minutes=10 - index))
    session.runs.create(status=RunStatus.RUNNING,
                        started_at=now - timedelta(seconds=for_seconds))
    for _ in range(queued):
        session.runs.create(status=RunStatus.QUEUED, started_at=now)


def test_busy_session_is_409_with_a_realistic_retry_after(api, loopback):
    loopback.enqueue("a")
    session_id = start(api).json()["session"]["id"]
    # its turns took 10 s (median), the running one started 4 s ago, its lease ends in 60 s
    turn_running(session_id, for_seconds=4.0, took_ms=[9_000, 10_000, 14_000])

    with override_settings(AGENT_SESSION=no_wait(loopback)):
        response = api.post(f"{CHAT}{session_id}/continue/", {"input": {"message": "b"}},
                            format="json")
        stream_events = streamed(api.post(f"{CHAT}{session_id}/continue/stream/",
                                          {"input": {"message": "b"}}, format="json"))
        deleted = api.delete(f"{CHAT}{session_id}/")

    assert response.status_code == 409
    assert response["Retry-After"] == "6"  # about 6 s left, not the lease's 60
    body = response.json()
    assert body["code"] == "session_busy" and body["retryable"] is True
    assert 5.0 <= body["retry_after"] <= 6.0
    name, error = stream_events[-1]
    assert name == "error" and error["status"] == 409 and error["code"] == "session_busy"
    assert 5.0 <= error["retry_after"] <= 6.0
    assert deleted.status_code == 409 and deleted.json()["code"] == "session_busy"
    assert deleted["Retry-After"] == "6" and 5.0 <= deleted.json()["retry_after"] <= 6.0
    assert ChatAgent.objects.filter(pk=session_id).exists()
    assert len(loopback.message_requests) == 1


@pytest.mark.parametrize(("running_for", "took_ms", "queued", "expected"), [
    (None, [], 0, 1.0),  # nothing runs (the lease is about to be free): the minimum
    (3.0, [], 0, 3.0),  # no history: as long again as it has run
    (2.0, [8_000, 10_000, 30_000], 0, 8.0),  # the median turn (10 s), 2 s in
    (25.0, [10_000], 0, 2.5),  # longer than usual: a quarter of a turn
    (2.0, [10_000], 2, 28.0),  # and each queued turn ahead takes a typical turn
    (0.0, [600_000], 0, 30.0),  # never more than RETRY_AFTER_MAX
])
def test_retry_after_is_the_expected_rest_of_the_running_turn(loopback, running_for, took_ms,
                                                              queued, expected):
    loopback.enqueue("hello")
    session = ChatAgent.objects.start_session("hi", instruction_args=ARGS)
    now = timezone.now()
    turn_running(session.pk, for_seconds=running_for or 0.0, took_ms=took_ms, queued=queued,
                 now=now)
    if running_for is None:
        session.runs.filter(status=RunStatus.RUNNING).delete()
    assert busy_retry_after(session, now=now) == expected
    assert RETRY_AFTER_MIN <= expected <= RETRY_AFTER_MAX


def test_token_budget_exhausted_is_409(api, loopback):
    loopback.enqueue(Reply.text("a", usage={"input_tokens": 90, "output_tokens": 20}))
    created = api.post("/api/plain-agents/", {"input": {"message": "hi"}}, format="json")
    session_id = created.json()["session"]["id"]

    response = api.post(f"/api/plain-agents/{session_id}/continue/",
                        {"input": {"message": "more"}}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "token_budget_exceeded"
    assert response.json()["retryable"] is False


def test_unknown_session_is_404_for_every_detail_endpoint(api):
    missing = uuid.uuid4()
    for method, suffix in [("get", ""), ("patch", ""), ("delete", ""), ("get", "context/"),
                           ("get", "events/"), ("get", "runs/"), ("post", "continue/"),
                           ("post", "continue/stream/")]:
        response = getattr(api, method)(f"{CHAT}{missing}/{suffix}",
                                        {"input": {"message": "x"}}, format="json")
        assert response.status_code == 404, (method, suffix)
        # one body for every missing id: the model class is not named
        assert response.json() == {"detail": "Not found."}, (method, suffix)
    malformed = api.get(f"{CHAT}not-a-uuid/")
    assert malformed.status_code == 404 and malformed.json() == {"detail": "Not found."}


@pytest.mark.parametrize("path", [
    "a%2Fb/", "a.b/", "%20/", "/", "a%2Fb/continue/", "a%2F/events/", "{id}/runs/a%2Fb/",
    "{id}/runs/a.b/", "{id}/runs/a%2Fb/cancel/", "{id}/runs/x%2Fy/stream/",
    "{id}/no-such-route/", "{id}/continue/a%2Fb/", "{id}/tool-calls/a%2Fb/approve/",
])
def test_every_id_is_the_json_404_on_sessions_and_runs(api, loopback, path):
    """Ids the routes' patterns refuse (a ``/``, ``%2F`` included, or none) reach the viewset
    too: its JSON 404, never Django's HTML page (what schemathesis found)."""
    loopback.enqueue("a")
    session_id = start(api).json()["session"]["id"]
    url = f"{CHAT}{path.format(id=session_id)}"
    response = api.get(url)
    assert response.status_code == 404, (url, response.content)
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}
    for method in ("post", "patch", "delete"):
        response = getattr(api, method)(url, {"input": {"message": "x"}}, format="json")
        assert response.status_code in (404, 405), (method, url)  # 405: a GET-only route
        assert response["Content-Type"] == "application/json", (method, url)
    assert APIClient().get(url).status_code == 403  # after authentication, like the others
    assert len(loopback.message_requests) == 1


def test_error_mapping_table():
    assert status_for(exc.ModelOverloaded()) == 503
    assert status_for(exc.ModelBadRequest()) == 502
    assert status_for(exc.InvalidModelOutput()) == 502
    assert status_for(exc.MaxIterationsExceeded()) == 502
    assert status_for(exc.LeaseLost()) == 409
    internal = exc.AgentSessionError("OperationalError: password=hunter2")
    internal.code = "internal_error"
    assert status_for(internal) == 500
    assert api_exception(internal).detail["detail"] == "Internal server error."
    invalid = api_exception(exc.InvalidInput({"message": ["required"]}))
    assert invalid.status_code == 400 and set(invalid.detail) == {"input"}
    args = api_exception(exc.InvalidInstructionArgs({"company_name": ["required"]}))
    assert args.status_code == 400 and set(args.detail) == {"instruction_args"}
    assert api_exception(exc.SessionNotFound()).status_code == 404
    assert error_body(RuntimeError("x")) == {"status": 500, "code": "internal_error",
                                             "detail": "Internal server error.",
                                             "retryable": False}


def test_errors_before_a_stream_are_one_error_event_for_sse_clients(api, loopback):
    response = api.post(f"{CHAT}stream/", {"input": {}, "instruction_args": ARGS},
                        format="json", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/event-stream")
    [(name, data)] = parse_sse(response.content)
    assert name == "error" and data["status"] == 400 and "message" in data["input"]
    assert APIClient().post(f"{CHAT}stream/", {}, format="json",
                            HTTP_ACCEPT="text/event-stream").status_code == 403


def test_a_body_over_djangos_upload_limit_is_a_json_413(api, loopback):
    body = {"input": {"message": "x" * 3_000_000}, "instruction_args": ARGS}
    response = api.post("/api/plain-agents/", body, format="json")
    assert response.status_code == 413
    assert response.json() == {"detail": "The request body is too large."}
    assert loopback.message_requests == []


@pytest.mark.parametrize("reply, status, code", [
    (Reply.max_tokens("Half an"), 502, "incomplete"),
    (Reply.refusal(), 422, "refused"),
])
def test_a_cut_off_or_refused_reply_is_its_own_error(api, loopback, reply, status, code):
    loopback.enqueue(reply)
    response = start(api, "Hello")
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code and body["stop_reason"] == reply.stop_reason
    run = AgentRun.objects.get()
    assert run.status == code and run.stop_reason == reply.stop_reason


def test_a_context_that_cannot_fit_is_409(api, loopback):
    loopback.enqueue(Reply.text("first"))
    session_id = start(api, "Hello").json()["session"]["id"]
    with override_settings(AGENT_SESSION=loopback_settings(
            loopback, CONTEXT_WINDOWS={"claude-sonnet-5-5": 1200})):
        response = api.post(f"{CHAT}{session_id}/continue/",
                            {"input": {"message": "x" * 3000}}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "context_window_exceeded"
    assert response.json()["window"] == 1200
