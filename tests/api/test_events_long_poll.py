"""``GET /<prefix>/{id}/events/?after_seq=N&wait=S``: a read that finds nothing after N waits
up to S seconds (bounded by ``EVENTS_MAX_WAIT_SECONDS``) for an event, under WSGI and ASGI."""

from __future__ import annotations

import threading
import time

import pytest
from django.test import AsyncClient

from django_agent_session.api.viewsets import AgentSessionViewSet
from django_agent_session.models import EventType
from django_agent_session.store.turns import SessionStore
from tests.helpers.threads import in_thread
from tests.testapp.models import PlainAgent

pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/api/plain-agents/"
#: what a wait that should end early is given: far longer than any test machine needs
LONG = 20


@pytest.fixture
def session(user):
    return PlainAgent.objects.create_session(owner=user)  # seq 1: session.started


def url(session, **query) -> str:
    return f"{PATH}{session.pk}/events/?" + "&".join(f"{k}={v}" for k, v in query.items())


def later(fn, delay: float = 0.3) -> threading.Timer:
    """``fn()`` in another thread after ``delay`` seconds (with its own connection)."""
    timer = threading.Timer(delay, in_thread(fn))
    timer.start()
    return timer


def test_events_already_there_answer_at_once(api, session):
    started = time.monotonic()
    response = api.get(url(session, after_seq=0, wait=LONG))
    assert response.status_code == 200
    assert [e["seq"] for e in response.json()["results"]] == [1]
    assert time.monotonic() - started < LONG / 2


def test_a_waiting_read_returns_when_another_thread_appends(api, session):
    timer = later(lambda: PlainAgent.objects.append_event(session.pk, "custom.done", {"ok": 1}))
    started = time.monotonic()
    response = api.get(url(session, after_seq=1, wait=LONG))
    elapsed = time.monotonic() - started
    timer.join()

    assert response.status_code == 200
    body = response.json()
    assert [(e["seq"], e["type"], e["data"]) for e in body["results"]] == [
        (2, "custom.done", {"ok": 1})]
    assert body["last_seq"] == 2 and body["next"] is None
    assert elapsed < LONG / 2


def test_events_no_notification_announces_are_found_by_polling(api, session, monkeypatch):
    """A turn (or another process) appends without waking this process's waiters: the
    waiter's periodic look finds it."""
    monkeypatch.setattr(AgentSessionViewSet, "events_poll_interval", 0.1)
    timer = later(lambda: SessionStore(PlainAgent).append_events(
        session.pk, [(EventType.SESSION_TITLED, {"title": "T"})]))
    started = time.monotonic()
    response = api.get(url(session, after_seq=1, wait=LONG))
    timer.join()

    assert [e["type"] for e in response.json()["results"]] == ["session.titled"]
    assert time.monotonic() - started < LONG / 2


def test_a_wait_with_nothing_to_return_ends_with_an_empty_page(api, session):
    started = time.monotonic()
    response = api.get(url(session, after_seq=1, wait=0.5))
    assert time.monotonic() - started >= 0.5
    assert response.status_code == 200
    assert response.json() == {"next": None, "last_seq": 1, "results": []}


def test_the_wait_is_bounded_by_the_setting(api, session, settings):
    settings.AGENT_SESSION = {"EVENTS_MAX_WAIT_SECONDS": 0.3}
    started = time.monotonic()
    response = api.get(url(session, after_seq=1, wait=3600))
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.json()["results"] == []
    assert 0.3 <= elapsed < LONG / 2


def test_another_users_session_is_404_without_waiting(other_api, session):
    started = time.monotonic()
    response = other_api.get(url(session, after_seq=1, wait=LONG))
    assert response.status_code == 404
    assert time.monotonic() - started < LONG / 2


@pytest.mark.parametrize("query", [{"wait": "abc"}, {"wait": "-1"}, {"wait": "nan"},
                                   {"wait": "inf"}, {"wait": "5", "after_seq": "-1"},
                                   {"wait": "5", "limit": "0"}])
def test_a_bad_query_is_400_without_waiting(api, session, query):
    started = time.monotonic()
    response = api.get(url(session, **query))
    assert response.status_code == 400, response.content
    assert set(response.json()) <= {"wait", "after_seq", "limit"}
    assert time.monotonic() - started < LONG / 2


def test_without_wait_the_read_answers_at_once(api, session):
    response = api.get(url(session, after_seq=1))
    assert response.status_code == 200 and response.json()["results"] == []


async def test_under_asgi_a_waiting_read_returns_when_an_event_is_appended(user, session):
    client = AsyncClient()
    await client.aforce_login(user)
    # the view runs in a thread of the ASGI handler: the append comes from another thread
    timer = later(lambda: PlainAgent.objects.append_event(session.pk, "custom.asgi"))
    started = time.monotonic()
    response = await client.get(url(session, after_seq=1, wait=LONG))
    timer.join()

    assert response.status_code == 200
    assert [e["type"] for e in response.json()["results"]] == ["custom.asgi"]
    assert time.monotonic() - started < LONG / 2
