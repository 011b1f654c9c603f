"""``?protocol=ai-sdk``: the run stream as the Vercel AI SDK's UI message stream, read by the
AI SDK's own parser and message builder (npm ``ai``, tests/api/js). A text turn with reasoning,
a tool-calling turn, a turn that pauses for approval and goes on after the decision, an error,
a reconnect with ``Last-Event-ID``, and an unknown protocol. Through the real SDK against the
loopback Messages API."""

from __future__ import annotations

import json
import threading

import pytest
from channels.db import database_sync_to_async

from django_agent_session.models import AgentRun
from django_agent_session.testing.loopback import Reply
from tests.helpers.api import ARGS
from tests.helpers.streams import (
    ai_sdk_chunks,
    asgi_request,
    headers_of,
    ids,
    login_cookie,
    post_stream,
    read_body,
    read_ui_message,
    texts,
)
from tests.testapp.models import REFUNDS, ApprovalAgent

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/api/approval-agents/"
QUERY = "protocol=ai-sdk"
START = json.dumps({"input": {"message": "refund"}, "instruction_args": ARGS}).encode()


@pytest.fixture(autouse=True)
def _refunds():
    REFUNDS.clear()


def test_a_text_turn_is_one_assistant_message_with_its_reasoning(api, loopback):
    loopback.enqueue(Reply.thinking("Let me think.", "Hello there, how can I help?"))
    response = post_stream(api, "ai-sdk")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    assert response["x-vercel-ai-ui-message-stream"] == "v1"
    raw = b"".join(response.streaming_content)
    chunks = ai_sdk_chunks(raw)
    types = [c["type"] for c in chunks]
    assert types[:3] == ["start", "start-step", "reasoning-start"]
    assert types[-3:] == ["text-end", "finish-step", "finish"]
    assert types.index("reasoning-end") < types.index("text-start")
    run_id = chunks[0]["messageId"]

    read = read_ui_message(raw)
    assert read["errors"] == []
    message = read["messages"][0]
    assert message["id"] == run_id and message["role"] == "assistant"
    assert [p["type"] for p in message["parts"]] == ["step-start", "reasoning", "text"]
    assert texts(message, "reasoning") == ["Let me think."]
    assert texts(message) == ["Hello there, how can I help?"]
    session = ApprovalAgent.objects.get()
    assert message["metadata"] == {
        "session_id": str(session.pk), "run_id": run_id, "status": "completed",
        "output": {"content": "Hello there, how can I help?"}}


async def test_a_tool_calling_turn_has_a_step_per_model_call(user, loopback):
    cookie = await database_sync_to_async(login_cookie)(user)
    loopback.enqueue(Reply.tool_use("refund", {"order": 7, "amount": 20}, id="t1",
                                    text="Let me refund."),
                     Reply.text("Refunded 20."))
    start, raw = await read_body(asgi_request("POST", f"{PATH}stream/", cookie, START, QUERY),
                                 START)

    assert start["status"] == 200
    assert headers_of(start)["x-vercel-ai-ui-message-stream"] == "v1"
    chunks = ai_sdk_chunks(raw)
    types = [c["type"] for c in chunks]
    assert types.count("start-step") == types.count("finish-step") == 2
    assert ["tool-input-start", "tool-input-available", "tool-output-available"] == \
        [t for t in types if t.startswith("tool-")]
    assert ids(raw) == sorted(set(ids(raw))) and ids(raw)  # progress ids, ascending

    read = read_ui_message(raw)
    assert read["errors"] == []
    message = read["messages"][0]
    assert [p["type"] for p in message["parts"]] == [
        "step-start", "text", "tool-refund", "step-start", "text"]
    tool = message["parts"][2]
    assert tool["toolCallId"] == "t1" and tool["state"] == "output-available"
    assert tool["input"] == {"order": 7, "amount": 20}
    assert tool["output"] == "refunded 20.0 on order 7"
    assert texts(message) == ["Let me refund.", "Refunded 20."]
    assert message["metadata"]["status"] == "completed"
    assert REFUNDS == [(7, 20.0)]


async def test_a_paused_turn_asks_for_approval_and_the_run_stream_goes_on(user, loopback):
    """The stream ends at the pause with the call in ``approval-requested``; after the
    decision, the run's stream from the last id continues the same message."""
    cookie = await database_sync_to_async(login_cookie)(user)
    loopback.enqueue(Reply.tool_use("refund", {"order": 7, "amount": 250}, id="t1",
                                    text="Let me refund."),
                     # slow: the follower joins while the resumed run runs
                     Reply.text("Refunded 250.", chunk_size=3, delay=0.1))
    _, first = await read_body(asgi_request("POST", f"{PATH}stream/", cookie, START, QUERY),
                               START)
    chunks = ai_sdk_chunks(first)
    assert chunks[-1]["type"] == "finish" and chunks[-1]["finishReason"] == "tool-calls"
    assert {"type": "tool-approval-request", "approvalId": "t1", "toolCallId": "t1"} in chunks
    metadata = chunks[-1]["messageMetadata"]
    assert metadata["status"] == "awaiting_approval" and metadata["output"] is None

    session_id, run_id = metadata["session_id"], metadata["run_id"]
    await database_sync_to_async(ApprovalAgent.objects.approve_tool_call)(
        session_id, "t1", by=user)
    _, rest = await read_body(asgi_request(
        "GET", f"{PATH}{session_id}/runs/{run_id}/stream/", cookie, query=QUERY,
        headers=((b"last-event-id", str(ids(first)[-1]).encode()),)))
    assert ids(rest)[0] == ids(first)[-1] + 1

    read = read_ui_message(first, rest)
    assert read["errors"] == []
    paused, done = read["messages"]
    tool = next(p for p in paused["parts"] if p["type"] == "tool-refund")
    assert tool["state"] == "approval-requested" and tool["approval"] == {"id": "t1"}
    assert done["id"] == paused["id"] == run_id  # one message across the pause
    tool = next(p for p in done["parts"] if p["type"] == "tool-refund")
    assert tool["state"] == "output-available"
    assert tool["output"] == "refunded 250.0 on order 7"
    assert texts(done) == ["Let me refund.", "Refunded 250."]
    assert done["metadata"]["status"] == "completed"
    assert REFUNDS == [(7, 250.0)]


def test_an_error_is_an_error_chunk_with_our_body_in_the_metadata(api, loopback):
    loopback.enqueue(Reply.overloaded(message="busy upstream"))
    response = post_stream(api, "ai-sdk")

    assert response.status_code == 200
    raw = b"".join(response.streaming_content)
    chunks = ai_sdk_chunks(raw)
    error = chunks[-2]["messageMetadata"]["error"]
    assert error["code"] == "model_overloaded" and error["retryable"] is True
    assert error["status"] == 503 and "busy upstream" in error["detail"]
    assert chunks[-1] == {"type": "error", "errorText": error["detail"]}

    read = read_ui_message(raw)
    assert read["errors"] == [error["detail"]]  # what useChat's onError gets
    assert read["messages"][0]["metadata"]["error"]["code"] == "model_overloaded"


async def test_a_reconnect_with_last_event_id_misses_nothing(user, loopback):
    words = "a b c d e f g h i j k l"
    cookie = await database_sync_to_async(login_cookie)(user)
    gone = threading.Event()  # the reply goes on once the client has gone
    loopback.enqueue(Reply.text(words, delay=0.02).held_after(3, until=gone))
    _, first = await read_body(
        asgi_request("POST", f"{PATH}stream/", cookie, START, QUERY), START,
        stop=lambda raw: b'"text-delta"' in raw)
    gone.set()
    assert b"[DONE]" not in first  # the client went away mid-run
    run_id = json.loads(first.split(b"\n\n")[0].split(b"data: ", 1)[1])["messageId"]
    run = await database_sync_to_async(AgentRun.objects.get)(pk=run_id)

    _, rest = await read_body(asgi_request(
        "GET", f"{PATH}{run.session_id}/runs/{run_id}/stream/", cookie, query=QUERY,
        headers=((b"last-event-id", str(ids(first)[-1]).encode()),)))
    rest_chunks = ai_sdk_chunks(rest)
    assert rest_chunks[0] == {"type": "start", "messageId": run_id}

    read = read_ui_message(first + b"data: [DONE]\n\n", rest)
    assert read["errors"] == []
    message = read["messages"][-1]
    assert "".join(texts(message)) == words  # nothing missed, nothing twice
    assert message["metadata"]["output"] == {"content": words}


def test_an_unknown_protocol_is_a_400_before_anything_runs(api, loopback):
    response = api.post(f"{PATH}stream/?protocol=sse-v2",
                        {"input": {"message": "hi"}, "instruction_args": ARGS}, format="json")
    assert response.status_code == 400
    assert response.json() == {"protocol": [
        "Unknown stream protocol 'sse-v2': use one of 'ai-sdk', 'ag-ui', or leave it out for "
        "this library's own events."]}
    assert not ApprovalAgent.objects.exists() and loopback.message_requests == []

    # the run's stream answers it before looking up the run
    response = api.get(f"{PATH}00000000-0000-0000-0000-000000000000/runs/x/stream/"
                       "?protocol=nope")
    assert response.status_code == 400 and "protocol" in response.json()
