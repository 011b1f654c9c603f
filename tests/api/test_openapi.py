"""The OpenAPI schema: valid, typed per agent, and honoured by the API under schemathesis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from django_agent_session.testing import json_reply
from tests.helpers.api import ARGS
from tests.testapp.models import ChatAgent, PlainAgent, StructuredAgent

pytestmark = pytest.mark.django_db

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
CSRF = "c" * 32
ROOT = Path(__file__).resolve().parents[2]
#: examples per operation and mode: the whole run stays at a few seconds
MAX_EXAMPLES = 6


@pytest.fixture
def schema_json() -> dict:
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def test_schema_is_valid_openapi(schema_json):
    validate(schema_json)


def test_schema_generation_has_no_warnings(tmp_path):
    # --fail-on-warn turns any drf-spectacular warning (unresolvable type, name clash) into
    # an error; --validate checks the result against the OpenAPI 3 meta-schema
    call_command("spectacular", "--validate", "--fail-on-warn", "--file",
                 str(tmp_path / "schema.yaml"))


def ref(schema: dict) -> str:
    """The component a (possibly ``allOf``-wrapped) property refers to."""
    return (schema.get("allOf") or [schema])[0]["$ref"].rsplit("/", 1)[-1]


def test_each_agent_has_typed_bodies(schema_json):
    components = schema_json["components"]["schemas"]
    paths = schema_json["paths"]

    start = paths["/api/chat-agents/"]["post"]
    assert ref(start["requestBody"]["content"]["application/json"]["schema"]) == "ChatAgentStart"
    assert ref(start["responses"]["201"]["content"]["application/json"]["schema"]) == \
        "ChatAgentTurn"
    body = components["ChatAgentStart"]["properties"]
    assert ref(body["input"]) == "ChatInput" and ref(body["instruction_args"]) == "CompanyArgs"
    assert set(components["ChatAgentStart"]["required"]) == {"input", "instruction_args"}
    assert components["ChatInput"]["properties"]["message"]["maxLength"] == 10_000
    assert components["CompanyArgs"]["properties"]["company_name"]["maxLength"] == 100

    # structured output: the agent's output serializer, with its enum
    turn = components["StructuredAgentTurn"]["properties"]
    assert ref(turn["output"]) == "ChatReply"
    assert ref(components["ChatReply"]["properties"]["mood"]) == "MoodEnum"
    assert ref(components["StructuredAgentSession"]["properties"]["last_output"]) == "ChatReply"
    assert ref(components["StructuredAgentContext"]["properties"]["last_output"]) == "ChatReply"

    # default schemas, and instruction args not required
    plain = components["PlainAgentStart"]
    assert ref(plain["properties"]["input"]) == "PlainAgentInputSchema"
    assert plain["required"] == ["input"]
    assert ref(components["PlainAgentTurn"]["properties"]["output"]) == "PlainAgentOutputSchema"

    cont = paths["/api/chat-agents/{id}/continue/"]["post"]
    assert ref(cont["requestBody"]["content"]["application/json"]["schema"]) == "ChatAgentContinue"
    assert {"400", "404", "409", "502", "503"} <= set(cont["responses"])
    stream = paths["/api/chat-agents/stream/"]["post"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    listing = paths["/api/chat-agents/"]["get"]
    assert {"status", "created_after", "created_before", "search", "page", "page_size"} <= {
        p["name"] for p in listing["parameters"]}
    events = paths["/api/chat-agents/{id}/events/"]["get"]
    assert {"after_seq", "limit"} <= {p["name"] for p in events["parameters"]}
    assert "put" not in paths["/api/chat-agents/{id}/"]


def test_runs_and_sessions_document_cost_kind_and_cache_ratio(schema_json):
    components = schema_json["components"]["schemas"]
    run = components["AgentRun"]["properties"]
    # enums inline, never a generic "KindEnum" component a project's own enum would clash with
    assert run["kind"]["allOf"] == [{"type": "string", "enum": ["turn", "compaction", "title"]}]
    assert {"incomplete", "refused"} <= set(run["status"]["allOf"][0]["enum"])
    assert "KindEnum" not in components
    assert run["cost"]["type"] == "string" and run["cost"]["format"] == "decimal"
    assert run["cost"]["nullable"] and run["cache_hit_ratio"]["nullable"]
    assert run["stop_reason"]["type"] == "string"
    session = components["ChatAgentSession"]["properties"]
    assert session["cost"]["format"] == "decimal" and session["cost"]["nullable"]
    assert session["cache_hit_ratio"]["type"] == "number"


@pytest.fixture
def wsgi_app():
    """Django's WSGI application, keeping the test's connection open between requests (as
    Django's test client does): its transaction holds the test data."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield get_wsgi_application()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def fuzz(user, scripted, wsgi_app, *, models: dict, negative: set, max_examples: int,
         derandomize: bool, keep_going: bool = False) -> tuple[int, list[str]]:
    """Run schemathesis over the operations of ``models`` (URL prefix -> session model);
    returns how many strategies ran and, with ``keep_going``, every failure found (else the
    first failure raises)."""
    # the model always answers, validly: any 5xx is then the API's fault
    scripted.default = lambda request: (
        json_reply({"content": "Fine.", "mood": "happy"}) if request.output_schema
        else "A scripted reply.")
    browser = Client()
    browser.force_login(user)
    cookies = {"sessionid": browser.cookies["sessionid"].value, "csrftoken": CSRF}
    headers = {"X-CSRFToken": CSRF}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app)
    exercised, failures = 0, []

    for result in schema.get_all_operations():
        operation = result.ok()
        prefix = operation.path.split("/")[2]
        if prefix not in models:
            continue
        owned = None
        if "{id}" in operation.path:
            # a session the user owns, so detail operations do more than answer 404
            model = models[prefix]
            session = model.objects.start_session(
                "hello", owner=user,
                instruction_args=ARGS if model.agent_options.instruction_serializer else None)
            owned = {"id": str(session.pk)}
        modes = [GenerationMode.POSITIVE]
        if prefix in negative:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            strategies = [operation.as_strategy(generation_mode=mode)]
            if owned:
                strategies.append(operation.as_strategy(generation_mode=mode,
                                                        path_parameters=owned))
            for index, strategy in enumerate(strategies):
                @given(case=strategy)
                @hypothesis_settings(max_examples=max_examples, deadline=None, database=None,
                                     derandomize=derandomize,
                                     suppress_health_check=list(HealthCheck))
                def check(case):
                    response = case.call(headers=headers, cookies=cookies)
                    case.validate_response(response, checks=CHECKS)

                try:
                    check()
                except Exception as error:
                    if not keep_going:
                        raise
                    ids = "an owned session's id" if index else "any id"
                    failures.append(f"{operation.label} ({mode.value}, {ids}):\n{error}")
                exercised += 1
    return exercised, failures


def test_schemathesis_finds_no_server_error_and_no_schema_violation(user, scripted, wsgi_app):
    """Stateless, a bounded number of examples per operation (acceptance 3).

    Positive data for three agents (one with instruction args, one with structured output,
    one with the default schemas), and schema-violating data for one of them, which must
    all be answered with documented 4xx responses. ``scripts/fuzz`` is the long run.
    """
    models = {"chat-agents": ChatAgent, "structured-agents": StructuredAgent,
              "plain-agents": PlainAgent}
    exercised, _ = fuzz(user, scripted, wsgi_app, models=models, negative={"chat-agents"},
                        max_examples=MAX_EXAMPLES, derandomize=True)
    assert exercised >= 45


#: examples per operation, mode and id of the long run (``scripts/fuzz`` sets it); unset: skipped
FUZZ_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES") or 0)


@pytest.mark.skipif(not FUZZ_EXAMPLES, reason="the long run: scripts/fuzz "
                                              "(SCHEMATHESIS_EXAMPLES=50)")
def test_schemathesis_long_run(user, scripted, wsgi_app):
    """Every operation of every agent the test project routes, positive and negative data,
    ``SCHEMATHESIS_EXAMPLES`` examples each (with any id and with an owned session's id), not
    derandomized: each run tries new data. Every failure is collected, then reported."""
    from tests.api_urls import router

    models = {prefix: viewset.model for prefix, viewset, _ in router.registry}
    exercised, failures = fuzz(user, scripted, wsgi_app, models=models, negative=set(models),
                               max_examples=FUZZ_EXAMPLES, derandomize=False, keep_going=True)
    print(f"schemathesis: {exercised} strategies x {FUZZ_EXAMPLES} examples, "
          f"{len(models)} agents, {len(failures)} failing")
    assert exercised >= 6 * 30
    assert not failures, "\n\n".join(failures)
