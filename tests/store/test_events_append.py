"""Events appended from outside a turn: the next seq, a caller's id that makes a retry safe
(also when two race), the ``custom.`` namespace, limits on ``data``, and waiting for events."""

from __future__ import annotations

import datetime
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import transaction
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentEvent
from django_agent_session.store import events
from django_agent_session.store.events import UNSTORABLE_PROBLEM, wait_for_events
from django_agent_session.store.export import export_session, import_session
from django_agent_session.testing import text_reply
from tests.helpers.threads import in_thread
from tests.testapp.models import PlainAgent

pytestmark = pytest.mark.django_db(transaction=True)

#: what a wait that should end early is given: far longer than any test machine needs
LONG = 20


@pytest.fixture
def session():
    return PlainAgent.objects.create_session()


def seqs(session) -> list[int]:
    return list(AgentEvent.objects.filter(session_id=session.pk).order_by("seq")
                .values_list("seq", flat=True))


def stored_seq(session) -> int:
    return PlainAgent.objects.values_list("event_seq", flat=True).get(pk=session.pk)


def test_an_appended_event_takes_the_next_seq(session):
    before = stored_seq(session)
    event = PlainAgent.objects.append_event(session, "custom.payment", {"amount": 12},
                                            event_id="pay-1")

    assert event.created is True
    assert (event.seq, event.type, event.data, event.key) == (before + 1, "custom.payment",
                                                              {"amount": 12}, "pay-1")
    assert event.run_id is None
    assert stored_seq(session) == before + 1
    row = AgentEvent.objects.get(session_id=session.pk, seq=before + 1)
    assert (row.type, row.data, row.key) == ("custom.payment", {"amount": 12}, "pay-1")
    assert row.as_dict()["id"] == "pay-1"
    # without an id and without data: an empty object, no key
    bare = PlainAgent.objects.append_event(session.pk, "custom.ping")
    assert (bare.seq, bare.data, bare.key, bare.created) == (before + 2, {}, None, True)


def test_a_duplicate_id_returns_the_stored_event_and_appends_nothing(session):
    first = PlainAgent.objects.append_event(session, "custom.ticket", {"state": "open"},
                                            event_id="t-7")
    again = PlainAgent.objects.append_event(session, "custom.ticket", {"state": "closed"},
                                            event_id="t-7")

    assert again.created is False
    assert (again.pk, again.seq, again.data) == (first.pk, first.seq, {"state": "open"})
    assert AgentEvent.objects.filter(session_id=session.pk, key="t-7").count() == 1
    assert stored_seq(session) == first.seq  # no seq consumed
    # the next append follows without a gap
    assert PlainAgent.objects.append_event(session, "custom.ticket").seq == first.seq + 1
    assert seqs(session) == list(range(1, first.seq + 2))


def test_ids_are_unique_per_session_only(session):
    other = PlainAgent.objects.create_session()
    a = PlainAgent.objects.append_event(session, "custom.x", event_id="same")
    b = PlainAgent.objects.append_event(other, "custom.x", event_id="same")
    assert a.created and b.created and a.pk != b.pk


@pytest.mark.parametrize("kind", ["run.completed", "turn.completed", "session.started",
                                  "message.user", "usage", "custom.", "custom", "Custom.x",
                                  "custom.has space", "custom." + "x" * 58, "", None, 7])
def test_the_library_types_and_malformed_ones_are_refused(session, kind):
    with pytest.raises(exc.InvalidInput) as raised:
        PlainAgent.objects.append_event(session, kind, {})
    assert list(raised.value.errors) == ["type"]
    assert "'custom.' namespace" in raised.value.errors["type"][0]
    assert str(raised.value).startswith("PlainAgent event: type:")
    assert seqs(session) == [1]  # only session.started


def test_the_longest_type_the_column_holds_is_accepted(session):
    kind = "custom." + "a" * 57
    assert len(kind) == 64
    assert PlainAgent.objects.append_event(session, kind).type == kind


@pytest.mark.parametrize("data, message", [
    ([1, 2], "Must be a JSON object."),
    ("text", "Must be a JSON object."),
    ({"n": float("nan")}, "NaN and infinite numbers are not JSON."),
    ({"n": [float("inf")]}, "NaN and infinite numbers are not JSON."),
    ({"at": datetime.datetime(2026, 1, 1)}, "A datetime is not a JSON value; convert it first."),
    ({"amount": Decimal("1.5")}, "A Decimal is not a JSON value; convert it first."),
    ({1: "int key"}, "Object keys must be strings; got 1."),
    ({"text": "a\x00b"}, UNSTORABLE_PROBLEM),
    ({"a\x00": 1}, UNSTORABLE_PROBLEM),
    ({"text": ["lone \ud800"]}, UNSTORABLE_PROBLEM),  # PostgreSQL's jsonb refuses it too
    ({"\udfff": 1}, UNSTORABLE_PROBLEM),
])
def test_data_must_be_a_plain_json_object(session, data, message):
    with pytest.raises(exc.InvalidInput) as raised:
        PlainAgent.objects.append_event(session, "custom.x", data)
    assert raised.value.errors == {"data": [message]}


def test_data_nesting_and_size_are_bounded(session):
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(exc.InvalidInput) as raised:
        PlainAgent.objects.append_event(session, "custom.x", deep)
    assert raised.value.errors == {"data": ["Nested deeper than 32 levels."]}

    with override_settings(AGENT_SESSION={"EVENT_MAX_BYTES": 100}):
        PlainAgent.objects.append_event(session, "custom.x", {"s": "a" * 80})  # 88 bytes
        with pytest.raises(exc.InvalidInput) as raised:
            PlainAgent.objects.append_event(session, "custom.x", {"s": "é" * 60})
    assert raised.value.errors == {"data": [
        "Is 128 bytes of JSON; the limit is 100 (EVENT_MAX_BYTES)."]}


@pytest.mark.parametrize("key", ["", "k" * 256, 12, "a\x00", "a\ud800"])
def test_an_invalid_id_is_refused(session, key):
    with pytest.raises(exc.InvalidInput) as raised:
        PlainAgent.objects.append_event(session, "custom.x", event_id=key)
    assert raised.value.errors == {"id": [
        "Must be a string of 1 to 255 characters (no U+0000 and no lone surrogate)."]}


def test_a_missing_session_is_session_not_found():
    with pytest.raises(exc.SessionNotFound):
        PlainAgent.objects.append_event("6f1c2d2e-0000-4000-8000-000000000000", "custom.x")
    with pytest.raises(exc.SessionNotFound):
        PlainAgent.objects.append_event("not-a-uuid", "custom.x")


def test_two_concurrent_appends_of_one_id_store_one_event(session):
    threads = 8
    barrier = threading.Barrier(threads)

    @in_thread
    def append(i: int) -> AgentEvent:
        barrier.wait()
        return PlainAgent.objects.append_event(session.pk, "custom.webhook", {"from": i},
                                               event_id="delivery-1")

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(append, range(threads)))

    assert sum(r.created for r in results) == 1
    assert len({(r.pk, r.seq) for r in results}) == 1  # every caller got the stored event
    winner = next(r for r in results if r.created)
    assert all(r.data == winner.data for r in results)
    assert AgentEvent.objects.filter(session_id=session.pk, key="delivery-1").count() == 1
    assert seqs(session) == [1, 2] and stored_seq(session) == 2  # no seq lost


def test_many_concurrent_appends_keep_the_log_gap_free(session):
    threads, each = 6, 10

    @in_thread
    def append(i: int) -> list[int]:
        return [PlainAgent.objects.append_event(session.pk, "custom.tick", {"i": i, "j": j},
                                                event_id=f"{i}-{j}").seq
                for j in range(each)]

    with ThreadPoolExecutor(threads) as pool:
        got = [seq for seqs_ in pool.map(append, range(threads)) for seq in seqs_]

    total = threads * each + 1  # with session.started
    assert sorted(got) == list(range(2, total + 1))
    assert seqs(session) == list(range(1, total + 1)) and stored_seq(session) == total


async def test_the_async_twin_appends_and_deduplicates(session):
    first = await PlainAgent.objects.aappend_event(session.pk, "custom.a", {"x": 1},
                                                   event_id="k")
    again = await PlainAgent.objects.aappend_event(session.pk, "custom.a", {"x": 2},
                                                   event_id="k")
    assert (first.created, again.created, again.seq, again.data) == (True, False, first.seq,
                                                                     {"x": 1})


def test_appended_events_and_turns_share_one_gap_free_log(scripted, session):
    scripted.enqueue(text_reply("one"))
    PlainAgent.objects.continue_session(session, "Hi")
    PlainAgent.objects.append_event(session, "custom.note", {"by": "crm"}, event_id="n1")
    scripted.enqueue(text_reply("two"))
    done = PlainAgent.objects.continue_session(session, "Again")

    assert seqs(session) == list(range(1, done.event_seq + 1))
    types = list(AgentEvent.objects.filter(session_id=session.pk).order_by("seq")
                 .values_list("type", flat=True))
    note = types.index("custom.note")
    assert types[note - 1] == "run.completed" and types[note + 1] == "run.started"


def test_export_and_import_keep_the_id(session):
    PlainAgent.objects.append_event(session, "custom.a", {"x": 1}, event_id="keep-me")
    doc = export_session(session)
    assert [e["id"] for e in doc["events"]] == [None, "keep-me"]

    imported = import_session(doc, new_id=True)
    again = PlainAgent.objects.append_event(imported, "custom.a", {"x": 2}, event_id="keep-me")
    assert again.created is False and again.data == {"x": 1}
    assert export_session(imported)["events"][1]["id"] == "keep-me"


# -- waiting for events ------------------------------------------------------------------------

def test_waiting_returns_at_once_when_an_event_is_there(session):
    started = time.monotonic()
    assert wait_for_events(PlainAgent, session.pk, 0, timeout=LONG) is True
    assert time.monotonic() - started < LONG / 2


def test_an_append_in_this_process_wakes_a_waiter(session):
    result: list[bool] = []
    waiter = threading.Thread(target=in_thread(lambda: result.append(
        wait_for_events(PlainAgent, session.pk, 1, timeout=60, interval=60))))
    waiter.start()
    deadline = time.monotonic() + LONG
    while str(session.pk) not in events._waiting and time.monotonic() < deadline:
        time.sleep(0.01)  # until it listens (it looks once, then sleeps for 60 s)
    time.sleep(0.2)
    PlainAgent.objects.append_event(session, "custom.wake")
    waiter.join(LONG)
    # it looks only every 60 s: the notification woke it
    assert not waiter.is_alive() and result == [True]
    assert str(session.pk) not in events._waiting  # nothing left behind


def test_waiting_ends_after_the_timeout_without_an_event(session):
    started = time.monotonic()
    assert wait_for_events(PlainAgent, session.pk, 1, timeout=0.3, interval=0.1) is False
    assert time.monotonic() - started >= 0.3


def test_no_database_connection_is_held_while_waiting(session, monkeypatch):
    """A waiting request closes its connection before each sleep (the next look opens one):
    a few hundred long-polls must not hold a few hundred connections."""
    from django.db import connection

    held: list[bool] = []
    real_wait = threading.Event.wait

    def wait(self, timeout=None):
        held.append(connection.connection is not None)
        return real_wait(self, timeout)

    monkeypatch.setattr(threading.Event, "wait", wait)
    assert wait_for_events(PlainAgent, session.pk, 1, timeout=0.3, interval=0.1) is False
    assert held and not any(held)


def test_inside_a_transaction_it_looks_once_and_never_waits(session):
    started = time.monotonic()
    with transaction.atomic():
        assert wait_for_events(PlainAgent, session.pk, 1, timeout=LONG) is False
        assert wait_for_events(PlainAgent, session.pk, 0, timeout=LONG) is True
    assert time.monotonic() - started < LONG / 2
