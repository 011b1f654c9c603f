"""Fixtures of the live-session tests."""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_agent_session.testing.loopback import LoopbackMessagesServer
from tests.helpers.live_server import agent_conf


@pytest.fixture
def loopback():
    """A loopback Messages API server the real SDK is pointed at (no retries)."""
    with LoopbackMessagesServer() as server, override_settings(AGENT_SESSION=agent_conf(server)):
        yield server
