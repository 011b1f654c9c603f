"""Property-based fuzzing of the REST API: bad requests are 4xx, never a 500 or a change.

Every session route of the router is hit with arbitrary JSON bodies, raw bodies under assorted
content types, arbitrary query strings and arbitrary ids. The response is never a 5xx (an SSE
stream never reports an internal error), a rejected request (4xx) changes nothing stored, and a
read changes nothing whatever its status.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from django_agent_session.engine.context import Context
from django_agent_session.testing import json_reply, text_reply
from tests.helpers.state import snapshot
from tests.testapp.models import ChatAgent, PlainAgent, StructuredAgent

from .strategies import JSON_BODY, QUERY, QUERY_TEXT, RAW_BODY

pytestmark = pytest.mark.django_db

def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


PREFIXES = {ChatAgent: "/api/chat-agents/", PlainAgent: "/api/plain-agents/",
            StructuredAgent: "/api/structured-agents/"}
WRITES = [("post", ""), ("post", "{pk}/continue/"), ("post", "stream/"),
          ("post", "{pk}/continue/stream/"), ("patch", "{pk}/")]
READS = ["", "{pk}/", "{pk}/context/", "{pk}/events/", "{pk}/runs/"]
FREE = {"input_tokens": 0, "output_tokens": 0}


def reply(request):
    if request.output_schema is not None:
        return json_reply({"content": "ok", "mood": "happy"}, usage=FREE)
    return text_reply("ok", usage=FREE)


@pytest.fixture
def client(user, scripted):
    scripted.default = reply
    api = APIClient()
    api.force_authenticate(user)
    return api


def target(model, user):
    """The session the detail routes address (created once, reused by every example)."""
    session = model._base_manager.filter(title="fuzz target", owner=user).first()
    if session is None:
        session = model.objects.create(
            title="fuzz target", owner=user,
            **{model.agent_options.context_field: Context(
                system="s", instruction_args={"company_name": "A"}).to_dict()})
    return session


def consume(response) -> None:
    """Read a streamed body to the end; an SSE stream must not report an internal error."""
    if getattr(response, "streaming", False):
        body = b"".join(response.streaming_content).decode()
        assert "internal_error" not in body, body


def check(response, before, *, write: bool) -> None:
    consume(response)
    status = response.status_code
    event(f"{status // 100}xx")
    assert status < 500, response.content[:500]
    if status >= 400 or not write:
        assert snapshot() == before


@fuzz(900)
@given(model=st.sampled_from(list(PREFIXES)), route=st.sampled_from(WRITES), body=JSON_BODY)
def test_json_bodies(client, user, model, route, body):
    method, suffix = route
    url = PREFIXES[model] + suffix.format(pk=target(model, user).pk)
    before = snapshot()
    response = client.generic(method.upper(), url, json.dumps(body),
                              content_type="application/json")
    check(response, before, write=True)


@fuzz(300)
@given(model=st.sampled_from(list(PREFIXES)), route=st.sampled_from(WRITES), raw=RAW_BODY)
def test_raw_bodies(client, user, model, route, raw):
    method, suffix = route
    body, content_type = raw
    url = PREFIXES[model] + suffix.format(pk=target(model, user).pk)
    before = snapshot()
    response = client.generic(method.upper(), url, body, content_type=content_type)
    check(response, before, write=True)


@fuzz(400)
@given(model=st.sampled_from(list(PREFIXES)), route=st.sampled_from(READS), query=QUERY)
def test_query_strings(client, user, model, route, query):
    url = PREFIXES[model] + route.format(pk=target(model, user).pk)
    before = snapshot()
    response = client.get(f"{url}?{urlencode(query)}")
    check(response, before, write=False)


@fuzz(200)
@given(model=st.sampled_from(list(PREFIXES)), segment=QUERY_TEXT | st.uuids().map(str),
       route=st.sampled_from(["{id}/", "{id}/continue/", "{id}/context/", "{id}/events/"]),
       method=st.sampled_from(["get", "post", "patch", "delete"]))
def test_arbitrary_ids(client, user, model, segment, route, method):
    target(model, user)
    url = PREFIXES[model] + route.format(id=quote(segment, safe=""))
    before = snapshot()
    response = client.generic(method.upper(), url, json.dumps({"input": "hi"}),
                              content_type="application/json")
    consume(response)
    assert response.status_code < 500, response.content[:500]
    assert response.status_code in (400, 404, 405), (url, response.status_code)
    assert snapshot() == before
