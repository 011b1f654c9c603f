"""The offline demo client the example project uses without an API key."""

from __future__ import annotations

import json

import pytest
from django.test import override_settings

from django_agent_session.clients.demo import LABEL, DemoClient
from tests.testapp.models import Order, StructuredAgent, ToolAgent

pytestmark = pytest.mark.django_db

DEMO = {"CLIENTS": {"anthropic": "django_agent_session.clients.demo.DemoClient"}}


@override_settings(AGENT_SESSION=DEMO)
def test_labelled_deterministic_replies(monkeypatch):
    monkeypatch.setattr(DemoClient, "delay", 0.0)
    deltas = []
    a = ToolAgent.objects.start_session("Hello", instruction_args={"company_name": "A"},
                                        on_progress=lambda k, d: deltas.append(d.get("text")))
    b = ToolAgent.objects.start_session("Hello", instruction_args={"company_name": "A"})
    assert a.last_output == b.last_output
    assert a.last_output["content"].startswith(LABEL)
    assert "".join(t for t in deltas if t) == a.last_output["content"]


@override_settings(AGENT_SESSION=DEMO)
def test_demo_uses_tools_and_structured_output(monkeypatch):
    monkeypatch.setattr(DemoClient, "delay", 0.0)
    Order.objects.create(number=5, status="lost", customer="c")
    session = ToolAgent.objects.start_session("/lookup_order 5",
                                              instruction_args={"company_name": "A"})
    assert '"status": "lost"' in session.last_output["content"]
    assert session.runs.get().iterations == 2
    session = StructuredAgent.objects.start_session("hi", instruction_args={"company_name": "A"})
    assert set(session.last_output) == {"content", "mood"}
    json.dumps(session.last_output)
