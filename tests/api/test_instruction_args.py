"""Instruction args over REST: the client's by default, or chosen by the server (a viewset's
``instruction_args`` / ``get_instruction_args``, as ``fresh_state`` does for WebSockets)."""

from __future__ import annotations

import json

import pytest
from django.test.utils import isolate_apps
from django.urls import include, path
from drf_spectacular.generators import SchemaGenerator
from rest_framework import serializers

from django_agent_session.api import AgentSessionRouter, serializers_for, viewset_factory
from django_agent_session.models import AgentSessionModel
from tests.helpers.api import ARGS, streamed
from tests.testapp.models import ChatAgent, PlainAgent

pytestmark = pytest.mark.django_db


class PinnedChatViewSet(viewset_factory(ChatAgent)):
    """The same args for every session."""

    instruction_args = {"company_name": "Pinned Corp"}


class PerUserChatViewSet(viewset_factory(ChatAgent)):
    """Args chosen per request."""

    def get_instruction_args(self):
        return {"company_name": f"{self.request.user.username}'s shop"}


router = AgentSessionRouter()
router.register("pinned", PinnedChatViewSet, basename="pinned")
router.register("per-user", PerUserChatViewSet, basename="per-user")
#: used with ``@pytest.mark.urls(__name__)``
urlpatterns = [path("api/", include(router.urls))]

HELLO = {"input": {"message": "Hello"}}


def system_prompt(loopback, index: int = 0) -> str:
    system = loopback.message_requests[index].system
    return system if isinstance(system, str) else "".join(b["text"] for b in system)


@pytest.mark.urls(__name__)
def test_a_viewset_with_instruction_args_starts_sessions_without_them(api, loopback):
    loopback.enqueue("a", "b")
    response = api.post("/api/pinned/", HELLO, format="json")
    assert response.status_code == 201, response.content
    assert "Pinned Corp" in system_prompt(loopback)
    session = ChatAgent.objects.get(pk=response.json()["session"]["id"])
    assert session.get_context().instruction_args == {"company_name": "Pinned Corp"}

    stream = api.post("/api/pinned/stream/", HELLO, format="json")
    assert streamed(stream)[-1][0] == "message"
    assert "Pinned Corp" in system_prompt(loopback, 1)


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("path", ["/api/pinned/", "/api/pinned/stream/", "/api/per-user/"])
def test_instruction_args_sent_to_a_pinning_viewset_are_a_400(api, loopback, path):
    body = {**HELLO, "instruction_args": {"company_name": "Evil Corp"}}
    response = api.post(path, body, format="json")
    assert response.status_code == 400
    assert response.json() == {"instruction_args": [
        "The server sets the instruction args of this endpoint; leave them out."]}
    assert loopback.message_requests == [] and ChatAgent.objects.count() == 0


@pytest.mark.urls(__name__)
def test_get_instruction_args_chooses_them_per_request(api, loopback):
    loopback.enqueue("a")
    assert api.post("/api/per-user/", HELLO, format="json").status_code == 201
    assert "alice's shop" in system_prompt(loopback)


def test_without_a_pinning_viewset_the_client_sends_them(api, loopback):
    loopback.enqueue("a")
    assert api.post("/api/chat-agents/", HELLO, format="json").json() == {
        "instruction_args": ["This field is required."]}
    assert api.post("/api/chat-agents/", {**HELLO, "instruction_args": ARGS},
                    format="json").status_code == 201
    assert "ACME" in system_prompt(loopback)
    # an agent whose instruction takes none starts without them
    loopback.enqueue("b")
    assert api.post("/api/plain-agents/", HELLO, format="json").status_code == 201


def test_openapi_shows_no_instruction_args_on_a_pinning_viewset():
    pinned_router = AgentSessionRouter()
    pinned_router.register("pinned", PinnedChatViewSet, basename="pinned")
    pinned_router.register("chats", viewset_factory(ChatAgent), basename="chats")
    schema = SchemaGenerator(patterns=pinned_router.urls).get_schema(request=None, public=True)
    schema = json.loads(json.dumps(schema, default=str))

    def start_body(path: str) -> str:
        content = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return content["schema"]["$ref"].rsplit("/", 1)[-1]

    assert start_body("/pinned/") == start_body("/pinned/stream/") == "ChatAgentPinnedStart"
    assert start_body("/chats/") == "ChatAgentStart"
    components = schema["components"]["schemas"]
    assert set(components["ChatAgentPinnedStart"]["properties"]) == {"input", "wait"}
    assert "instruction_args" in components["ChatAgentStart"]["properties"]


@isolate_apps("tests.testapp")
def test_instruction_args_with_defaults_are_optional_in_the_start_body():
    model = type("ToneAgent", (AgentSessionModel,), {
        "__module__": "tests.testapp.models",
        "Agent": type("Agent", (), {
            "client": "anthropic:m", "instruction": "Be {{ tone }}.",
            "instruction_schema": {"tone": serializers.CharField(default="friendly")}}),
        "Meta": type("Meta", (), {"app_label": "testapp"}),
    })
    body = serializers_for(model).start(data=HELLO)
    assert body.is_valid(), body.errors
    assert model.objects.initial_context(body.validated_data.get("instruction_args")).system \
        == "Be friendly."
    assert PlainAgent.objects.initial_context(None).system == "Be brief."
