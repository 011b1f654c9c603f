"""Fixtures of the reliability suite: its marker and a loopback Messages API.

Its plain helpers are in ``tests/helpers`` (``state.raw_context``, ``state.snapshot``,
``loopback.loopback_settings``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings

from django_agent_session.testing.loopback import LoopbackMessagesServer
from tests.helpers.loopback import loopback_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def loopback() -> Iterator[LoopbackMessagesServer]:
    with LoopbackMessagesServer() as server, \
            override_settings(AGENT_SESSION=loopback_settings(server)):
        yield server
