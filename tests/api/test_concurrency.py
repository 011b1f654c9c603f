"""Two simultaneous ``continue`` requests on one session (acceptance 5): both succeed one
after the other, or one gets 409; nothing is lost either way."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from django_agent_session.models import AgentEvent, AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from tests.helpers.api import CHAT, start
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)


def echo(request):
    # slow enough that the two turns overlap; the reply names the message it answers
    return Reply.text(f"echo: {request.user_text}", delay=0.05)


def continue_together(user, session_id: str, messages: list[str]) -> dict[str, object]:
    """POST ``continue`` with each message from its own thread, released at the same moment."""
    barrier = threading.Barrier(len(messages))
    responses: dict[str, object] = {}

    def run(message: str) -> None:
        client = APIClient()
        client.force_authenticate(user)
        try:
            barrier.wait(timeout=10)
            responses[message] = client.post(f"{CHAT}{session_id}/continue/",
                                              {"input": {"message": message}}, format="json")
        finally:
            connection.close()  # this thread's connection

    threads = [threading.Thread(target=run, args=(m,)) for m in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(responses) == len(messages)
    return responses


def assert_log_is_whole(session_id: str) -> None:
    seqs = list(AgentEvent.objects.filter(session_id=session_id).values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free, no duplicates
    assert not AgentRun.objects.filter(session_id=session_id, status=RunStatus.RUNNING).exists()


def user_texts(session_id: str) -> list[str]:
    context = ChatAgent.objects.get(pk=session_id).get_context()
    return [m["content"][0]["text"] for m in context.messages if m["role"] == "user"]


def test_both_succeed_in_order_when_the_second_may_wait(user, loopback):
    loopback.responder = echo
    client = APIClient()
    client.force_authenticate(user)
    session_id = start(client, "first").json()["session"]["id"]

    responses = continue_together(user, session_id, ["left", "right"])

    assert {r.status_code for r in responses.values()} == {200}
    for message, response in responses.items():
        assert response.json()["output"] == {"content": f"echo: {message}"}
    by_turn = sorted(responses, key=lambda m: responses[m].json()["session"]["turn_count"])
    assert [responses[m].json()["session"]["turn_count"] for m in by_turn] == [2, 3]
    # the later turn saw the earlier one: nothing was overwritten
    assert user_texts(session_id) == ["first", *by_turn]
    assert loopback.message_requests[2].user_text == by_turn[1]
    assert len(loopback.message_requests[2].messages) == 5
    session = ChatAgent.objects.get(pk=session_id)
    assert session.turn_count == 3 and session.lease_token is None
    assert AgentRun.objects.filter(session_id=session_id,
                                   status=RunStatus.COMPLETED).count() == 3
    assert_log_is_whole(session_id)


def test_one_gets_409_when_the_session_is_busy_and_nothing_is_lost(user, loopback):
    loopback.responder = lambda request: Reply.text(f"echo: {request.user_text}", delay=0.2)
    client = APIClient()
    client.force_authenticate(user)
    session_id = start(client, "first").json()["session"]["id"]

    with override_settings(AGENT_SESSION={**loopback_settings(loopback),
                                          "TURN_WAIT_SECONDS": 0.0}):
        responses = continue_together(user, session_id, ["left", "right"])

    codes = sorted(r.status_code for r in responses.values())
    assert codes in ([200, 200], [200, 409])  # 200/200 only if one finished before the other
    winners = [m for m, r in responses.items() if r.status_code == 200]
    for message, response in responses.items():
        if response.status_code == 409:
            assert response.json()["code"] == "session_busy"
            assert int(response["Retry-After"]) >= 1
    assert user_texts(session_id) == ["first", *winners]
    session = ChatAgent.objects.get(pk=session_id)
    assert session.turn_count == 1 + len(winners)
    runs = AgentRun.objects.filter(session_id=session_id)
    assert runs.filter(status="completed").count() == 1 + len(winners)
    # a refused message was a queued row first: withdrawn, with the reason, never run
    refused = list(runs.exclude(status="completed"))
    assert len(refused) == 2 - len(winners)
    assert all(r.status == "cancelled" and r.error["code"] == "session_busy" for r in refused)
    assert_log_is_whole(session_id)
