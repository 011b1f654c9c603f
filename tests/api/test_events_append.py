"""``POST /<prefix>/{id}/events/``: append an event from outside a turn, 201 new / 200 for an
id stored before, the rules as field errors, owner-scoped, and told to WebSocket viewers."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from django_agent_session.models import AgentEvent
from django_agent_session.runs.stream import frame_of, group_name
from tests.testapp.models import PlainAgent

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/api/plain-agents/"


@pytest.fixture
def session(user):
    return PlainAgent.objects.create_session(owner=user)


def events_url(session) -> str:
    return f"{PATH}{session.pk}/events/"


def test_append_answers_201_with_the_stored_event(api, session):
    response = api.post(events_url(session), {"type": "custom.payment", "data": {"amount": 5},
                                              "id": "pay-1"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    event = AgentEvent.objects.get(session_id=session.pk, key="pay-1")
    assert body == {"seq": event.seq, "type": "custom.payment", "run_id": None,
                    "data": {"amount": 5}, "created_at": body["created_at"], "id": "pay-1"}
    assert event.seq == 2  # after session.started
    # the log shows it with its id; the library's own events have none
    page = api.get(events_url(session)).json()
    assert [(e["type"], e["id"]) for e in page["results"]] == [("session.started", None),
                                                              ("custom.payment", "pay-1")]


def test_a_duplicate_id_answers_200_with_the_stored_event(api, session):
    first = api.post(events_url(session), {"type": "custom.x", "data": {"v": 1}, "id": "k"},
                     format="json")
    again = api.post(events_url(session), {"type": "custom.x", "data": {"v": 2}, "id": "k"},
                     format="json")

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert AgentEvent.objects.filter(session_id=session.pk).count() == 2
    assert PlainAgent.objects.get(pk=session.pk).event_seq == 2


def test_without_data_or_id_an_empty_object_is_stored(api, session):
    response = api.post(events_url(session), {"type": "custom.ping"}, format="json")
    assert response.status_code == 201
    assert (response.json()["data"], response.json()["id"]) == ({}, None)


@pytest.mark.parametrize("body, field", [
    ({"type": "run.completed", "data": {}}, "type"),
    ({"type": "turn.completed"}, "type"),
    ({"type": "custom.x", "data": [1]}, "data"),
    ({"type": "custom.x", "data": "text"}, "data"),
    ({"type": "custom.x", "id": ""}, "id"),
    ({"type": "custom.x", "id": "k" * 256}, "id"),
    ({"type": "custom." + "x" * 60}, "type"),
    ({"data": {}}, "type"),
    ({"type": "custom.x", "data": {"a": "\u0000"}}, "data"),
])
def test_bad_bodies_are_400_with_the_field_named(api, session, body, field):
    response = api.post(events_url(session), body, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert AgentEvent.objects.filter(session_id=session.pk).count() == 1


def test_data_over_the_limit_is_400(api, session, settings):
    settings.AGENT_SESSION = {"EVENT_MAX_BYTES": 50}
    response = api.post(events_url(session), {"type": "custom.x", "data": {"s": "a" * 60}},
                        format="json")
    assert response.status_code == 400
    assert response.json() == {"data": [
        "Is 68 bytes of JSON; the limit is 50 (EVENT_MAX_BYTES)."]}


def test_another_users_session_is_404_and_nothing_is_appended(other_api, session):
    response = other_api.post(events_url(session), {"type": "custom.x", "id": "k"},
                              format="json")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}
    assert AgentEvent.objects.filter(session_id=session.pk).count() == 1


def test_an_anonymous_caller_is_refused(client, session):
    response = client.post(events_url(session), {"type": "custom.x"},
                           content_type="application/json")
    assert response.status_code in (401, 403)
    assert AgentEvent.objects.filter(session_id=session.pk).count() == 1


def test_viewers_are_sent_the_appended_event_once(api, session):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    group = group_name(PlainAgent, session.pk)
    async_to_sync(layer.group_add)(group, channel)

    body = {"type": "custom.status", "data": {"state": "shipped"}, "id": "s-1"}
    created = api.post(events_url(session), body, format="json").json()
    api.post(events_url(session), body, format="json")  # a duplicate: not announced again
    api.post(events_url(session), {"type": "custom.after"}, format="json")

    async def receive():
        return await asyncio.wait_for(layer.receive(channel), 5)

    first, second = frame_of(async_to_sync(receive)()), frame_of(async_to_sync(receive)())
    # the frame a replay sends for the stored event
    at = first.pop("created_at")
    assert first == {"type": "event", "event": "custom.status", "seq": created["seq"],
                     "run_id": None, "data": {"state": "shipped"}, "id": "s-1"}
    assert parse_datetime(at) == parse_datetime(created["created_at"])
    assert (second["event"], second["seq"]) == ("custom.after", created["seq"] + 1)
    async_to_sync(layer.group_discard)(group, channel)


def test_the_openapi_schema_documents_append_and_wait():
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    path = schema["paths"]["/api/plain-agents/{id}/events/"]
    post = path["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/AgentAppendEvent")
    assert {"200", "201", "400", "404"} <= set(post["responses"])
    assert post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/AgentEvent")
    fields = schema["components"]["schemas"]["AgentAppendEvent"]
    assert set(fields["properties"]) == {"type", "data", "id"} and fields["required"] == ["type"]
    assert "id" in schema["components"]["schemas"]["AgentEvent"]["properties"]
    assert "wait" in {p["name"] for p in path["get"]["parameters"]}
    assert post["operationId"] != path["get"]["operationId"]
