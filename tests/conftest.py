"""Shared fixtures (those of the live tests, used by tests/live and tests/reliability, too)."""

from __future__ import annotations

import os

import pytest

from django_agent_session.clients.registry import clear_client_cache


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``TEST_SKIP_OWN_DATABASE=1`` (scripts/test's PostgreSQL pass) deselects the tests
    marked ``own_database``: they never use the suite's database, and the SQLite pass ran
    them. A hook rather than ``-m``, so that a ``-m`` of the caller's still applies."""
    if os.environ.get("TEST_SKIP_OWN_DATABASE") != "1":
        return
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        (left_out if item.get_closest_marker("own_database") else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(autouse=True)
def _fresh_clients():
    """Each test gets fresh client instances (scripts and SDK clients do not leak)."""
    clear_client_cache()
    yield
    clear_client_cache()


@pytest.fixture(autouse=True)
def _drains_end():
    """No background drain outlives its test: one reaching a database being flushed would
    recreate rows there (a content type) and fail the teardown."""
    yield
    from django_agent_session.runs.executors import inline_executor

    assert inline_executor().join(30), "a background drain is still running"


@pytest.fixture
def scripted():
    """A ScriptedClient routed for the ``anthropic`` provider: ``scripted.enqueue(...)``."""
    from django_agent_session.testing import use_scripted_client

    with use_scripted_client() as client:
        yield client


@pytest.fixture
def loopback():
    """A loopback Messages API server the ``anthropic`` provider talks to (through the SDK)."""
    from django.test import override_settings

    from django_agent_session.testing.loopback import LoopbackMessagesServer
    from tests.helpers.loopback import loopback_settings

    with LoopbackMessagesServer() as server, \
            override_settings(AGENT_SESSION=loopback_settings(server)):
        yield server


@pytest.fixture
def recording(loopback):
    """Queued runs are only recorded (``recording.calls``, ``recording.later``): the test
    drains them itself (``Model.objects.drain``), so each step is deterministic."""
    from django.test import override_settings

    from tests.helpers.executors import Recording
    from tests.helpers.loopback import loopback_settings

    Recording.calls.clear()
    Recording.later.clear()
    with override_settings(AGENT_SESSION=loopback_settings(
            loopback, EXECUTOR="tests.helpers.executors.Recording")):
        yield Recording


@pytest.fixture
async def redis_prefix():
    """A Redis key prefix of this test only; its keys are deleted afterwards."""
    import os
    import uuid

    import redis.asyncio as redis

    prefix = f"agent-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw")


@pytest.fixture
def tmp_storage(tmp_path):
    """Default file storage in a temporary folder (artifact files land there)."""
    from django.test import override_settings

    with override_settings(STORAGES={
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(tmp_path)}},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }):
        yield tmp_path


@pytest.fixture
def fast_passwords(settings):
    """Cheap password hashing: users are created in every test."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
async def live_layer(fast_passwords):
    """A fresh in-memory channel layer per test; every live session is stopped afterwards."""
    from channels.layers import channel_layers

    from django_agent_session.live import api

    channel_layers.backends.clear()
    yield channel_layers["default"]
    await api.stop_all("test_teardown")
    channel_layers.backends.clear()
