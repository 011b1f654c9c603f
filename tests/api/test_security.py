"""Owner scoping (no existence oracle), authentication, opt-in staff access, throttling,
ATOMIC_REQUESTS, the router and the ``Agent.viewset`` hook."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections
from django.test import override_settings
from django.urls import include, path
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.decorators import action, api_view
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate
from rest_framework.throttling import ScopedRateThrottle

from django_agent_session.api import (
    AgentSessionRouter,
    AgentSessionViewSet,
    IsStaffOrSessionOwner,
    serializers_for,
    viewset_factory,
)
from django_agent_session.api import viewsets as viewsets_module
from django_agent_session.testing.loopback import Reply
from tests.helpers.api import CHAT, start
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import ChatAgent, PlainAgent, StructuredAgent

pytestmark = pytest.mark.django_db

DETAIL_ENDPOINTS = [("get", ""), ("patch", ""), ("delete", ""), ("post", "continue/"),
                    ("get", "context/"), ("get", "events/"), ("get", "runs/"),
                    ("post", "continue/stream/")]
BODY = {"input": {"message": "let me in"}, "title": "stolen"}


def call(client, method, url):
    return getattr(client, method)(url, BODY, format="json")


def test_another_users_session_is_a_404_like_a_missing_one(api, other_api, loopback):
    loopback.enqueue("mine")
    session_id = start(api, "private").json()["session"]["id"]
    missing = uuid.uuid4()

    for method, suffix in DETAIL_ENDPOINTS:
        theirs = call(other_api, method, f"{CHAT}{session_id}/{suffix}")
        nobodys = call(other_api, method, f"{CHAT}{missing}/{suffix}")
        assert theirs.status_code == 404, (method, suffix, theirs.content)
        assert (theirs.status_code, theirs.content) == (nobodys.status_code, nobodys.content)

    assert other_api.get(CHAT).json() == {"count": 0, "next": None, "previous": None,
                                         "results": []}
    assert other_api.get(CHAT, {"search": "private"}).json()["count"] == 0
    session = ChatAgent.objects.get(pk=session_id)
    assert (session.title, session.turn_count) == ("private", 1)
    assert len(loopback.message_requests) == 1
    # and the owner still sees it
    assert api.get(CHAT).json()["count"] == 1


def test_anonymous_requests_are_refused(api, loopback):
    loopback.enqueue("a")
    session_id = start(api).json()["session"]["id"]
    anonymous = APIClient()

    endpoints = [("get", CHAT), ("post", CHAT), ("post", f"{CHAT}stream/")] + [
        (method, f"{CHAT}{session_id}/{suffix}") for method, suffix in DETAIL_ENDPOINTS]
    for method, url in endpoints:
        response = call(anonymous, method, url)
        assert response.status_code == 403, (method, url)
        assert "detail" in response.json()
    assert ChatAgent.objects.count() == 1 and len(loopback.message_requests) == 1


class BasicAuthChatViewSet(viewset_factory(ChatAgent)):  # type: ignore[misc]
    authentication_classes = [BasicAuthentication, SessionAuthentication]


@api_view(["GET"])
def atomic_probe(request):
    return Response({"in_atomic_block": connection.in_atomic_block})


basic_router = AgentSessionRouter()
basic_router.register("basic-chats", BasicAuthChatViewSet, basename="basicchat")
#: used with ``@pytest.mark.urls(__name__)``: a probe view, a Basic-auth variant, the API
urlpatterns = [path("probe/", atomic_probe), path("api/", include(basic_router.urls)),
               path("api/", include("tests.api_urls"))]


@pytest.mark.urls(__name__)
def test_anonymous_gets_401_when_an_auth_scheme_can_challenge():
    response = APIClient().get("/api/basic-chats/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")


def test_staff_see_other_sessions_only_with_the_opt_in_permission(api, loopback,
                                                                 django_user_model):
    loopback.enqueue("a")
    session_id = start(api).json()["session"]["id"]
    staff = APIClient()
    staff.force_authenticate(django_user_model.objects.create_user("staff", is_staff=True))

    assert staff.get(f"{CHAT}{session_id}/").status_code == 404
    assert staff.get(CHAT).json()["count"] == 0

    opt_in = {**loopback_settings(loopback), "API_PERMISSION_CLASSES": [
        "django_agent_session.api.permissions.IsStaffOrSessionOwner"]}
    with override_settings(AGENT_SESSION=opt_in):
        assert staff.get(f"{CHAT}{session_id}/").status_code == 200
        assert staff.get(CHAT).json()["count"] == 1
        other = APIClient()
        other.force_authenticate(django_user_model.objects.create_user("carol"))
        assert other.get(f"{CHAT}{session_id}/").status_code == 404


def test_turns_are_throttled_by_scope(api, loopback, monkeypatch):
    loopback.responder = lambda request: Reply.text("ok")
    cache.clear()
    # DRF reads THROTTLE_RATES when the class is defined, so settings cannot reach it here
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES",
                        {"agent_turns": "2/min", "agent_sessions": "100/min"})
    throttled = {**loopback_settings(loopback),
                 "API_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"]}
    with override_settings(AGENT_SESSION=throttled):
        first = start(api)
        assert first.status_code == 201
        assert api.post(f"{CHAT}{first.json()['session']['id']}/continue/",
                        {"input": {"message": "b"}}, format="json").status_code == 200
        third = start(api)
        assert third.status_code == 429
        assert int(third["Retry-After"]) > 0
        assert api.get(CHAT).status_code == 200  # reads have their own scope
    cache.clear()


@pytest.mark.urls(__name__)
@pytest.mark.django_db(transaction=True)
def test_turns_run_outside_atomic_requests(user, scripted, monkeypatch):
    monkeypatch.setitem(connections.settings["default"], "ATOMIC_REQUESTS", True)
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    seen = []

    def reply(request):  # the scripted client calls this in the request's thread
        seen.append(connection.in_atomic_block)
        return "ok"

    scripted.enqueue(reply)
    client = APIClient()
    client.force_authenticate(user)
    # control: an ordinary view does run inside the request's transaction
    assert client.get("/probe/").json() == {"in_atomic_block": True}

    response = start(client)
    assert response.status_code == 201
    assert seen == [False]


def test_router_registers_models_and_refuses_duplicates():
    router = AgentSessionRouter()
    viewset = router.register_model(ChatAgent, prefix="chats")
    assert viewset is viewset_factory(ChatAgent)
    registered = router.register_all()
    assert ChatAgent not in {v.model for v in registered}
    assert {StructuredAgent, PlainAgent} <= {v.model for v in registered}
    names = {url.name for url in router.urls}
    assert {"chatagent-list", "chatagent-detail", "chatagent-continue", "chatagent-context",
            "chatagent-events", "chatagent-runs", "chatagent-stream",
            "chatagent-continue-stream"} <= names

    with pytest.raises(ImproperlyConfigured, match="basename"):
        router.register_model(ChatAgent, prefix="chats-again")
    with pytest.raises(ImproperlyConfigured, match="prefix"):
        router.register_model(ChatAgent, prefix="chats", basename="chat2")
    assert serializers_for(ChatAgent) is serializers_for(ChatAgent)


class ExtraActionViewSet(AgentSessionViewSet):
    """A project's subclass: an extra action and a wider permission."""

    permission_classes = [IsStaffOrSessionOwner]

    @action(detail=True, methods=["get"])
    def ping(self, request, pk=None):
        session = self.get_object()
        return Response({"pong": str(session.pk), "model": type(session).__name__})


def test_agent_viewset_option_is_the_base_of_the_generated_viewset(api, loopback, monkeypatch,
                                                                  user):
    loopback.enqueue("a")
    session_id = start(api).json()["session"]["id"]
    monkeypatch.setattr(viewsets_module, "_cache", {})
    monkeypatch.setattr(ChatAgent.agent_options, "viewset",
                        f"{__name__}.ExtraActionViewSet")

    viewset = viewset_factory(ChatAgent)

    assert issubclass(viewset, ExtraActionViewSet) and viewset.model is ChatAgent
    assert viewset.serializers is serializers_for(ChatAgent)
    request = APIRequestFactory().get("/")
    force_authenticate(request, user)
    response = viewset.as_view({"get": "ping"})(request, pk=session_id)
    assert response.status_code == 200
    assert response.data == {"pong": session_id, "model": "ChatAgent"}
    assert ExtraActionViewSet.model is None  # the project's class is not modified


@pytest.mark.parametrize("value", ["tests.nowhere.ViewSet", f"{__name__}.BODY", APIClient])
def test_a_bad_agent_viewset_option_is_improperly_configured(monkeypatch, value):
    monkeypatch.setattr(viewsets_module, "_cache", {})
    monkeypatch.setattr(ChatAgent.agent_options, "viewset", value)
    with pytest.raises(ImproperlyConfigured, match="ChatAgent.Agent.viewset"):
        viewset_factory(ChatAgent)
