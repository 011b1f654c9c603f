"""The AGENT_SESSION settings object and the client registry."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_agent_session.clients.demo import DemoClient
from django_agent_session.clients.registry import get_client, override_client
from django_agent_session.conf import DEFAULTS, agent_settings
from django_agent_session.testing import ScriptedClient


def test_defaults_and_override():
    assert agent_settings.TURN_WAIT_SECONDS == 30.0  # tests/settings.py overrides the default
    with override_settings(AGENT_SESSION={"QUEUE_MAX": 3}):
        assert agent_settings.QUEUE_MAX == 3
        assert agent_settings.TURN_WAIT_SECONDS == DEFAULTS["TURN_WAIT_SECONDS"]
    assert agent_settings.QUEUE_MAX == DEFAULTS["QUEUE_MAX"]


def test_dict_settings_merge_with_defaults():
    with override_settings(AGENT_SESSION={"ANTHROPIC": {"MAX_RETRIES": 7}}):
        assert agent_settings.ANTHROPIC["MAX_RETRIES"] == 7
        assert agent_settings.ANTHROPIC["TIMEOUT"] == DEFAULTS["ANTHROPIC"]["TIMEOUT"]
    with override_settings(AGENT_SESSION={"CLIENTS": {"extra": "x.Y"}}):
        assert set(agent_settings.CLIENTS) == {"anthropic", "demo", "scripted", "extra"}


def test_unknown_names():
    with pytest.raises(AttributeError, match="Invalid AGENT_SESSION setting"):
        agent_settings.NOPE  # noqa: B018


def test_an_unknown_key_does_not_break_reading():
    """Settings are read while models import, before checks run: a typo is left out (and
    reported by check E004, tests/test_checks.py), the keys around it still apply."""
    with override_settings(AGENT_SESSION={"NOPE": 1, "QUEUE_MAX": 3}):
        assert agent_settings.QUEUE_MAX == 3
        assert "NOPE" not in agent_settings.user_settings
    with override_settings(AGENT_SESSION=["not", "a", "dict"]):
        assert agent_settings.QUEUE_MAX == DEFAULTS["QUEUE_MAX"]


def test_import_strings():
    with override_settings(AGENT_SESSION={"FACTORY_ROUTER": "json.dumps"}):
        import json
        assert agent_settings.FACTORY_ROUTER is json.dumps
    with override_settings(AGENT_SESSION={"FACTORY_ROUTER": "no.such.thing"}):
        with pytest.raises(ImportError, match="FACTORY_ROUTER"):
            agent_settings.FACTORY_ROUTER  # noqa: B018


def test_registry_caches_and_reloads():
    with override_settings(AGENT_SESSION={"CLIENTS": {"anthropic":
                                                      "django_agent_session.clients.demo.DemoClient"}}):
        first = get_client("anthropic")
        assert isinstance(first, DemoClient) and get_client("anthropic") is first
    assert not isinstance(get_client("anthropic"), DemoClient)
    with pytest.raises(ImproperlyConfigured, match="No client for provider 'nope'"):
        get_client("nope")


def test_override_client_survives_settings_changes():
    scripted = ScriptedClient()
    with override_client("anthropic", scripted):
        with override_settings(AGENT_SESSION={"QUEUE_MAX": 1}):
            assert get_client("anthropic") is scripted
    assert get_client("anthropic") is not scripted
