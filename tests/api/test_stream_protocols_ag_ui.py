"""``?protocol=ag-ui``: the run stream as AG-UI events, each validated by the
``ag-ui-protocol`` types and the whole stream by AG-UI's sequence rules. A text turn with
reasoning, a tool-calling turn, a turn that pauses for approval (an interrupt) and goes on after
the decision, an error, and a reconnect with ``Last-Event-ID``. Through the real SDK against the
loopback Messages API."""

from __future__ import annotations

import json
import threading

import pytest
from channels.db import database_sync_to_async

from django_agent_session.api.protocols import AGUIStream
from django_agent_session.testing.loopback import Reply
from tests.helpers.api import ARGS
from tests.helpers.streams import (
    ag_ui_events,
    ag_ui_text,
    asgi_request,
    check_ag_ui_sequence,
    data_events,
    headers_of,
    ids,
    login_cookie,
    post_stream,
    read_body,
)
from tests.testapp.models import REFUNDS, ApprovalAgent

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/api/approval-agents/"
QUERY = "protocol=ag-ui"
START = json.dumps({"input": {"message": "refund"}, "instruction_args": ARGS}).encode()


@pytest.fixture(autouse=True)
def _refunds():
    REFUNDS.clear()


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_a_text_turn_is_a_run_with_a_reasoning_and_a_text_message(api, loopback):
    loopback.enqueue(Reply.thinking("Let me think.", "Hello there, how can I help?"))
    response = post_stream(api, "ag-ui")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert "x-vercel-ai-ui-message-stream" not in response
    raw = b"".join(response.streaming_content)
    assert b"[DONE]" not in raw
    events = ag_ui_events(raw)
    check_ag_ui_sequence(events)
    session = ApprovalAgent.objects.get()
    run_id = str(session.runs.get().pk)
    assert events[0] == {"type": "RUN_STARTED", "threadId": str(session.pk), "runId": run_id}
    assert types(events)[1:3] == ["REASONING_START", "REASONING_MESSAGE_START"]
    assert "".join(e["delta"] for e in events
                   if e["type"] == "REASONING_MESSAGE_CONTENT") == "Let me think."
    assert ag_ui_text(events) == "Hello there, how can I help?"
    assert events[-1] == {"type": "RUN_FINISHED", "threadId": str(session.pk), "runId": run_id,
                          "result": {"content": "Hello there, how can I help?"},
                          "outcome": {"type": "success"}}


async def test_a_tool_call_is_started_with_its_arguments_and_answered(user, loopback):
    cookie = await database_sync_to_async(login_cookie)(user)
    loopback.enqueue(Reply.tool_use("refund", {"order": 7, "amount": 20}, id="t1",
                                    text="Let me refund."),
                     Reply.text("Refunded 20."))
    start, raw = await read_body(asgi_request("POST", f"{PATH}stream/", cookie, START, QUERY),
                                 START)

    assert start["status"] == 200
    assert "x-vercel-ai-ui-message-stream" not in headers_of(start)
    events = ag_ui_events(raw)
    check_ag_ui_sequence(events)
    call = [e for e in events if e["type"].startswith("TOOL_CALL")]
    text_message = next(e["messageId"] for e in events if e["type"] == "TEXT_MESSAGE_START")
    assert call[0] == {"type": "TOOL_CALL_START", "toolCallId": "t1", "toolCallName": "refund",
                       "parentMessageId": text_message}
    assert json.loads(call[1]["delta"]) == {"order": 7, "amount": 20}
    assert call[2] == {"type": "TOOL_CALL_END", "toolCallId": "t1"}
    assert call[3] == {"type": "TOOL_CALL_RESULT", "messageId": "t1-result", "toolCallId": "t1",
                       "role": "tool", "content": "refunded 20.0 on order 7"}
    assert ag_ui_text(events) == "Let me refund.Refunded 20."
    assert types(events).count("TEXT_MESSAGE_START") == 2  # one per model response
    assert events[-1]["outcome"] == {"type": "success"}
    assert ids(raw) == sorted(set(ids(raw))) and ids(raw)


async def test_a_paused_turn_finishes_with_an_interrupt_and_the_run_stream_goes_on(
        user, loopback):
    cookie = await database_sync_to_async(login_cookie)(user)
    loopback.enqueue(Reply.tool_use("refund", {"order": 7, "amount": 250}, id="t1",
                                    text="Let me refund."),
                     Reply.text("Refunded 250.", chunk_size=3, delay=0.1))
    _, first = await read_body(asgi_request("POST", f"{PATH}stream/", cookie, START, QUERY),
                               START)
    events = ag_ui_events(first)
    check_ag_ui_sequence(events)
    assert {"type": "CUSTOM", "name": "tool.approval_requested",
            "value": {"tool_use_id": "t1", "name": "refund",
                      "input": {"order": 7, "amount": 250}}} in events
    finished = events[-1]
    assert finished["type"] == "RUN_FINISHED" and "result" not in finished
    assert finished["outcome"] == {"type": "interrupt", "interrupts": [{
        "id": "t1", "reason": "tool_approval", "toolCallId": "t1",
        "message": "Approve the call of refund?",
        "metadata": {"name": "refund", "input": {"order": 7, "amount": 250}}}]}

    session_id, run_id = finished["threadId"], finished["runId"]
    await database_sync_to_async(ApprovalAgent.objects.approve_tool_call)(
        session_id, "t1", by=user)
    _, rest = await read_body(asgi_request(
        "GET", f"{PATH}{session_id}/runs/{run_id}/stream/", cookie, query=QUERY,
        headers=((b"last-event-id", str(ids(first)[-1]).encode()),)))
    more = ag_ui_events(rest)
    check_ag_ui_sequence(more, known_calls=frozenset({"t1"}))  # the call of the first stream
    assert more[0] == {"type": "RUN_STARTED", "threadId": session_id, "runId": run_id}
    result = next(e for e in more if e["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == "t1" and result["content"] == "refunded 250.0 on order 7"
    assert ag_ui_text(more) == "Refunded 250."
    assert more[-1]["outcome"] == {"type": "success"}
    assert more[-1]["result"] == {"content": "Refunded 250."}
    assert ids(rest)[0] == ids(first)[-1] + 1 and REFUNDS == [(7, 250.0)]


def test_an_error_is_a_run_error_carrying_our_body(api, loopback):
    loopback.enqueue(Reply.overloaded(message="busy upstream"))
    response = post_stream(api, "ag-ui")

    raw = b"".join(response.streaming_content)
    events = ag_ui_events(raw)
    check_ag_ui_sequence(events)
    error = events[-1]
    assert error["type"] == "RUN_ERROR" and error["code"] == "model_overloaded"
    assert "busy upstream" in error["message"]
    assert error["rawEvent"]["retryable"] is True and error["rawEvent"]["status"] == 503
    assert error["message"] == error["rawEvent"]["detail"]


def test_an_error_before_any_run_is_a_lone_run_error():
    """A turn refused before its run exists (a busy session under WSGI) has no run to start:
    its stream is one RUN_ERROR, which AG-UI lets a stream begin with."""
    stream = AGUIStream(thread_id="s1")
    body = {"status": 409, "code": "session_busy", "detail": "The session is busy.",
            "retryable": True}
    events = ag_ui_events(stream.event("error", body) + stream.close())
    check_ag_ui_sequence(events)
    assert events == [{"type": "RUN_ERROR", "message": "The session is busy.",
                       "code": "session_busy", "rawEvent": body}]


async def test_a_reconnect_with_last_event_id_misses_nothing(user, loopback):
    words = "a b c d e f g h i j k l"
    cookie = await database_sync_to_async(login_cookie)(user)
    gone = threading.Event()  # the reply goes on once the client has gone
    loopback.enqueue(Reply.text(words, delay=0.02).held_after(3, until=gone))
    _, first = await read_body(
        asgi_request("POST", f"{PATH}stream/", cookie, START, QUERY), START,
        stop=lambda raw: b'"TEXT_MESSAGE_CONTENT"' in raw)
    gone.set()
    seen = [json.loads(data) for _, data in data_events(first)]
    assert seen[0]["type"] == "RUN_STARTED" and seen[-1]["type"] == "TEXT_MESSAGE_CONTENT"
    session_id, run_id = seen[0]["threadId"], seen[0]["runId"]

    _, rest = await read_body(asgi_request(
        "GET", f"{PATH}{session_id}/runs/{run_id}/stream/", cookie, query=QUERY,
        headers=((b"last-event-id", str(ids(first)[-1]).encode()),)))
    more = ag_ui_events(rest)
    # a well-formed run of its own: it opens again and reopens the message it resumes in
    check_ag_ui_sequence(more)
    assert more[0] == seen[0]
    assert more[1] == {"type": "TEXT_MESSAGE_START", "messageId": seen[1]["messageId"],
                       "role": "assistant"}
    assert ag_ui_text(seen) + ag_ui_text(more) == words  # nothing missed, nothing twice
    assert more[-1]["result"] == {"content": words}
