"""Every endpoint through the real anthropic SDK against the loopback Messages API server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from django_agent_session.models import AgentEvent, AgentRun
from django_agent_session.testing.loopback import Reply
from tests.helpers.api import ARGS, CHAT, start, streamed
from tests.testapp.models import ChatAgent, Order

pytestmark = pytest.mark.django_db


def test_start_creates_the_session_and_returns_the_first_output(api, user, loopback):
    loopback.enqueue(Reply.text("Hi, how can ACME help?", usage={"input_tokens": 12,
                                                                  "output_tokens": 7}))
    response = start(api, "Hello there")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["output"] == {"content": "Hi, how can ACME help?"}
    session = body["session"]
    assert session["status"] == "idle"
    assert session["turn_count"] == 1
    assert session["title"] == "Hello there"
    assert session["last_output"] == body["output"]
    assert session["usage"]["input_tokens"] == 12 and session["usage"]["output_tokens"] == 7
    stored = ChatAgent.objects.get(pk=session["id"])
    assert stored.owner == user
    sent = loopback.message_requests[0]
    assert sent.system == "You are a helpful assistant for ACME." or \
        sent.system[0]["text"] == "You are a helpful assistant for ACME."
    assert sent.user_text == "Hello there"


def test_continue_runs_one_more_turn_with_the_history(api, loopback):
    loopback.enqueue("First answer.", "Second answer.")
    session_id = start(api, "one").json()["session"]["id"]

    response = api.post(f"{CHAT}{session_id}/continue/", {"input": {"message": "two"}},
                        format="json")

    assert response.status_code == 200, response.content
    assert response.json()["output"] == {"content": "Second answer."}
    assert response.json()["session"]["turn_count"] == 2
    sent = loopback.message_requests[1]
    assert [m["role"] for m in sent.messages] == ["user", "assistant", "user"]
    assert sent.user_text == "two"


def test_context_returns_the_stored_conversation(api, loopback):
    loopback.enqueue("Answer.")
    session_id = start(api, "Question?").json()["session"]["id"]

    response = api.get(f"{CHAT}{session_id}/context/")

    assert response.status_code == 200
    context = response.json()
    assert context["system"] == "You are a helpful assistant for ACME."
    assert context["instruction_args"] == ARGS
    assert context["turns"] == 1
    assert context["last_output"] == {"content": "Answer."}
    assert context["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Question?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Answer."}]},
    ]
    assert context["usage"]["input_tokens"] > 0


def test_events_are_cursor_paginated_by_seq(api, loopback):
    loopback.enqueue("a", "b")
    session_id = start(api, "one").json()["session"]["id"]
    api.post(f"{CHAT}{session_id}/continue/", {"input": {"message": "two"}}, format="json")
    total = AgentEvent.objects.filter(session_id=session_id).count()
    assert total > 6

    first = api.get(f"{CHAT}{session_id}/events/", {"limit": 4}).json()
    assert [e["seq"] for e in first["results"]] == [1, 2, 3, 4]
    assert first["results"][0]["type"] == "session.started"
    assert first["last_seq"] == 4 and "after_seq=4" in first["next"]

    rest = api.get(first["next"]).json()
    rest_all = api.get(f"{CHAT}{session_id}/events/", {"after_seq": 4, "limit": 1000}).json()
    assert rest["results"][0]["seq"] == 5
    assert [e["seq"] for e in rest_all["results"]] == list(range(5, total + 1))
    assert rest_all["next"] is None and rest_all["last_seq"] == total
    types = [e["type"] for e in rest_all["results"]]
    assert "message.assistant" in types and types[-1] == "run.completed"

    # past the end: empty, and last_seq echoes the cursor so polling can go on
    empty = api.get(f"{CHAT}{session_id}/events/", {"after_seq": total}).json()
    assert empty == {"next": None, "last_seq": total, "results": []}


@pytest.mark.parametrize("query", [{"after_seq": "x"}, {"after_seq": -1}, {"limit": 0},
                                   {"limit": 5000}])
def test_bad_event_cursors_are_400(api, loopback, query):
    loopback.enqueue("a")
    session_id = start(api).json()["session"]["id"]
    assert api.get(f"{CHAT}{session_id}/events/", query).status_code == 400


def test_runs_list_each_turn_with_usage(api, loopback):
    loopback.enqueue(Reply.text("a", usage={"input_tokens": 3, "output_tokens": 2}),
                     Reply.text("b", usage={"input_tokens": 5, "output_tokens": 4}))
    session_id = start(api, "one").json()["session"]["id"]
    api.post(f"{CHAT}{session_id}/continue/", {"input": {"message": "two"}}, format="json")

    body = api.get(f"{CHAT}{session_id}/runs/").json()

    assert body["count"] == 2
    first, second = body["results"]
    assert first["status"] == second["status"] == "completed"
    assert first["input"] == {"message": "one"} and second["output"] == {"content": "b"}
    assert first["usage"]["input_tokens"] == 3 and second["usage"]["output_tokens"] == 4
    assert first["model"] == second["model"] != ""


def test_list_is_ordered_by_last_activity_paginated_and_filterable(api, loopback):
    loopback.responder = lambda request: Reply.text("ok")
    ids = [start(api, title).json()["session"]["id"] for title in ("alpha", "beta", "gamma")]
    # the oldest session becomes the most recently active one
    api.post(f"{CHAT}{ids[0]}/continue/", {"input": {"message": "again"}}, format="json")
    ChatAgent.objects.filter(pk=ids[1]).update(status="failed",
                                               created_at=timezone.now() - timedelta(days=3))

    listed = api.get(CHAT).json()
    assert listed["count"] == 3
    assert [s["id"] for s in listed["results"]] == [ids[0], ids[2], ids[1]]

    paged = api.get(CHAT, {"page_size": 2, "page": 2}).json()
    assert [s["id"] for s in paged["results"]] == [ids[1]] and paged["previous"]

    def ids_for(**query):
        response = api.get(CHAT, query)
        assert response.status_code == 200, response.content
        return {s["id"] for s in response.json()["results"]}

    assert ids_for(status="failed") == {ids[1]}
    assert ids_for(status="idle") == {ids[0], ids[2]}
    assert ids_for(search="AMM") == {ids[2]}
    yesterday = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids_for(created_after=yesterday) == {ids[0], ids[2]}
    assert ids_for(created_before=yesterday) == {ids[1]}
    assert ids_for(created_after=yesterday, search="alp") == {ids[0]}


def test_list_page_size_comes_from_settings(api, loopback, settings):
    loopback.responder = lambda request: Reply.text("ok")
    for _ in range(3):
        start(api)
    settings.AGENT_SESSION = {**settings.AGENT_SESSION, "API_PAGE_SIZE": 2,
                              "ANTHROPIC": {"BASE_URL": loopback.base_url, "API_KEY": "t",
                                            "MAX_RETRIES": 0}}
    body = api.get(CHAT).json()
    assert body["count"] == 3 and len(body["results"]) == 2 and body["next"]


@pytest.mark.parametrize("query", [{"status": "nope"}, {"created_after": "yesterday"},
                                   {"created_before": "2024-13-45"}, {"search": "x" * 201}])
def test_bad_list_filters_are_400(api, query):
    response = api.get(CHAT, query)
    assert response.status_code == 400
    assert set(response.json()) == set(query)


def test_retrieve_patch_title_only_and_delete(api, loopback):
    loopback.enqueue("a")
    session_id = start(api, "first").json()["session"]["id"]
    url = f"{CHAT}{session_id}/"

    assert api.get(url).json()["title"] == "first"
    patched = api.patch(url, {"title": "Renamed", "status": "failed", "turn_count": 99},
                        format="json")
    assert patched.status_code == 200
    assert patched.json()["title"] == "Renamed"
    row = ChatAgent.objects.get(pk=session_id)
    assert (row.title, row.status, row.turn_count) == ("Renamed", "idle", 1)
    assert row.context["turns"] == 1  # the context column was not rewritten from a stale copy
    assert api.patch(url, {"title": "x" * 201}, format="json").status_code == 400
    assert api.put(url, {"title": "y"}, format="json").status_code == 405

    assert api.delete(url).status_code == 204
    assert not ChatAgent.objects.filter(pk=session_id).exists()
    assert not AgentRun.objects.filter(session_id=session_id).exists()
    assert not AgentEvent.objects.filter(session_id=session_id).exists()
    assert api.get(url).status_code == 404


def test_stream_start_and_continue_send_deltas_then_the_message(api, loopback):
    loopback.enqueue(Reply.text("Hello from the stream", chunk_size=5),
                     Reply.text("Again", chunk_size=2))
    response = api.post(f"{CHAT}stream/", {"input": {"message": "hi"}, "instruction_args": ARGS},
                        format="json", HTTP_ACCEPT="text/event-stream")

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-cache"
    events = streamed(response)
    deltas = [data["text"] for name, data in events if name == "delta"]
    assert len(deltas) > 1 and "".join(deltas) == "Hello from the stream"
    name, final = events[-1]
    assert name == "message"
    assert final["output"] == {"content": "Hello from the stream"}
    session_id = final["session"]["id"]
    assert ChatAgent.objects.get(pk=session_id).turn_count == 1

    response = api.post(f"{CHAT}{session_id}/continue/stream/", {"input": {"message": "more"}},
                        format="json")
    events = streamed(response)
    assert "".join(d["text"] for n, d in events if n == "delta") == "Again"
    assert events[-1][0] == "message" and events[-1][1]["session"]["turn_count"] == 2


def test_stream_reports_tool_calls_and_results(api, user, loopback):
    Order.objects.create(number=42, status="shipped", customer="c")
    loopback.enqueue(Reply.tool_use("lookup_order", {"number": 42}),
                     Reply.text("Order 42 has shipped."))
    response = api.post("/api/tool-agents/stream/",
                        {"input": {"message": "Where is order 42?"}, "instruction_args": ARGS},
                        format="json")

    events = streamed(response)
    names = [name for name, _ in events]
    assert names.index("tool.call") < names.index("tool.result") < names.index("message")
    call = dict(events)["tool.call"]
    result = dict(events)["tool.result"]
    assert call["name"] == "lookup_order" and call["input"] == {"number": 42}
    assert result["is_error"] is False and "shipped" in result["content"]
    assert dict(events)["message"]["output"] == {"content": "Order 42 has shipped."}
    assert loopback.message_requests[1].tool_results[0]["tool_use_id"] == call["id"]


def test_structured_output_is_returned_typed(api, loopback):
    loopback.enqueue(Reply.json({"content": "Great!", "mood": "happy"}))
    response = start(api, "How are you?", path="/api/structured-agents/")

    assert response.status_code == 201, response.content
    assert response.json()["output"] == {"content": "Great!", "mood": "happy"}
    request = loopback.message_requests[0]
    assert request.body["output_config"]["format"]["type"] == "json_schema"


def test_plain_agent_takes_no_instruction_args(api, loopback):
    loopback.enqueue("Brief.")
    response = api.post("/api/plain-agents/", {"input": {"message": "hi"}}, format="json")
    assert response.status_code == 201, response.content
    session_id = response.json()["session"]["id"]
    assert api.get(f"/api/plain-agents/{session_id}/context/").json()["system"] == "Be brief."
