"""Fixtures of the REST API tests: an authenticated APIClient and the loopback Messages API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from django_agent_session.testing.loopback import LoopbackMessagesServer
from tests.helpers.loopback import loopback_settings


@pytest.fixture
def user(django_user_model):
    """No password: hashing one costs most of a test's time, and these tests never log in
    with it."""
    return django_user_model.objects.create_user("alice")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob")


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def other_api(other_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(other_user)
    return client


@pytest.fixture
def loopback() -> Iterator[LoopbackMessagesServer]:
    """A loopback Messages API server the ``anthropic`` provider talks to (through the SDK)."""
    with LoopbackMessagesServer() as server, override_settings(AGENT_SESSION=loopback_settings(server)):
        yield server
