"""Fixtures of the REST API tests: authenticated APIClients (``loopback`` is the shared one)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient


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
