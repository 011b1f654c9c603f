"""Session search, cursor pages, stats, usage summaries and event search (SQLite and PG)."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.contenttypes.models import ContentType

from django_agent_session import exceptions as exc
from django_agent_session.engine.context import Context
from django_agent_session.models import AgentEvent, AgentRun, Artifact
from django_agent_session.queries import (
    decode_cursor,
    encode_cursor,
    search_events,
    search_sessions,
    session_models,
    session_stats,
    usage_by_day,
    usage_by_model,
    usage_summary,
)
from django_agent_session.testing import text_reply, tool_reply
from tests.testapp.models import ChatAgent, Order, PlainAgent, ToolAgent

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def context(*texts: str, system: str = "System prompt mentions zebra.") -> dict:
    """A context alternating user/assistant text messages."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant",
                 "content": [{"type": "text", "text": text}]} for i, text in enumerate(texts)]
    return Context(system=system, messages=messages, turns=len(texts) // 2).to_dict()


def make(model=ChatAgent, *, texts=("hello", "hi there"), at=T0, **fields):
    field = model.agent_options.context_field
    fields.setdefault("created_at", at)
    fields.setdefault("last_activity_at", at)
    return model.objects.create(**{field: context(*texts)}, **fields)


def pks(items) -> list:
    return [obj.pk for obj in items]


# -- filters ---------------------------------------------------------------------------------

def test_owner_and_status(user, other_user):
    mine = make(owner=user)
    failed = make(owner=user, status="failed")
    make(owner=other_user)
    make()
    assert set(pks(ChatAgent.objects.owned_by(user))) == {mine.pk, failed.pk}
    assert set(pks(ChatAgent.objects.owned_by(user.pk).with_status("idle"))) == {mine.pk}
    assert pks(ChatAgent.objects.search(owner=user, status=["failed", "running"])) == [failed.pk]


def test_tags_match_whole_elements_all_or_any():
    vip = make(metadata={"tags": ["vip", "billing"]})
    odd = make(metadata={"tags": ['say "hi"', "café", "vip2"]})
    make(metadata={"tags": "vip"})  # not a list of tags
    make(metadata={"other": ["vip"]})
    make(metadata={})

    assert pks(ChatAgent.objects.tagged("vip")) == [vip.pk]
    assert pks(ChatAgent.objects.tagged("vi")) == []  # no substring matches
    assert pks(ChatAgent.objects.tagged("vip", "billing")) == [vip.pk]
    assert pks(ChatAgent.objects.tagged("vip", "café")) == []
    assert set(pks(ChatAgent.objects.tagged("vip", "café", match="any"))) == {vip.pk, odd.pk}
    assert pks(ChatAgent.objects.tagged('say "hi"')) == [odd.pk]
    assert pks(ChatAgent.objects.search(tags=["café"])) == [odd.pk]
    # composes inside a subquery (the column keeps the right alias)
    inner = ChatAgent.objects.tagged("billing").values("pk")
    assert pks(ChatAgent.objects.filter(pk__in=inner)) == [vip.pk]
    with pytest.raises(ValueError):
        ChatAgent.objects.tagged("x", match="some")


def test_metadata_values_and_keys():
    acme = make(metadata={"tenant": "acme", "source": {"channel": "web"}, "priority": 2})
    make(metadata={"tenant": "other", "source": {"channel": "email"}})
    make(metadata={})
    assert pks(ChatAgent.objects.with_metadata(tenant="acme")) == [acme.pk]
    assert pks(ChatAgent.objects.with_metadata(source__channel="web")) == [acme.pk]
    assert pks(ChatAgent.objects.with_metadata(priority=2)) == [acme.pk]
    assert len(ChatAgent.objects.with_metadata_keys("tenant")) == 2
    assert pks(ChatAgent.objects.search(has_keys=["tenant", "priority"])) == [acme.pk]
    assert pks(ChatAgent.objects.search(metadata={"tenant": "acme"}, tags=[])) == [acme.pk]


def test_created_and_activity_ranges_are_half_open():
    old = make(at=T0 - timedelta(days=10))
    edge = make(at=T0)
    new = make(at=T0 + timedelta(days=1), last_activity_at=T0 + timedelta(days=5))
    assert set(pks(ChatAgent.objects.created_between(T0))) == {edge.pk, new.pk}
    assert pks(ChatAgent.objects.created_between(None, T0)) == [old.pk]
    assert pks(ChatAgent.objects.search(created_after=T0, created_before=T0 + timedelta(1))
               ) == [edge.pk]
    assert pks(ChatAgent.objects.active_between(T0 + timedelta(days=2))) == [new.pk]
    assert pks(ChatAgent.objects.search(active_before=T0 - timedelta(days=1))) == [old.pk]


def test_text_in_messages_case_unicode_quotes_not_system():
    plain = make(texts=("Where is my PARCEL?", "It left the depot."))
    french = make(texts=("Un café, s'il vous plaît", "Voilà"))
    quoted = make(texts=('He said "stop" twice', "ok"))
    make(texts=("nothing", "here"))
    assert pks(ChatAgent.objects.containing_text("parcel")) == [plain.pk]
    assert pks(ChatAgent.objects.containing_text("DEPOT")) == [plain.pk]
    assert pks(ChatAgent.objects.containing_text("café")) == [french.pk]
    assert pks(ChatAgent.objects.containing_text('said "stop"')) == [quoted.pk]
    assert pks(ChatAgent.objects.containing_text("zebra")) == []  # the system prompt is not searched
    assert len(ChatAgent.objects.containing_text("")) == 4


def test_text_in_tool_results_and_custom_context_field(scripted):
    Order.objects.create(number=42, status="delayed", customer="Ann")
    scripted.enqueue(tool_reply("lookup_order", {"number": 42}), text_reply("See above."),
                     text_reply("Brief."))
    tool = ToolAgent.objects.start_session("order?", instruction_args={"company_name": "A"})
    plain = PlainAgent.objects.start_session("Remember the aardvark")
    assert pks(ToolAgent.objects.containing_text("DELAYED")) == [tool.pk]
    assert pks(PlainAgent.objects.containing_text("aardvark")) == [plain.pk]
    page = search_sessions(text="aardvark")
    assert pks(page) == [plain.pk] and page.total == 1


# -- stats -----------------------------------------------------------------------------------

def runs_for(session, *specs):
    ct = ContentType.objects.get_for_model(type(session))
    return AgentRun.objects.bulk_create([
        AgentRun(session_type=ct, session_id=session.pk, status=status, model=model,
                 input_tokens=tokens, output_tokens=tokens // 2, duration_ms=duration,
                 iterations=1, started_at=at)
        for status, model, tokens, duration, at in specs
    ])


def test_with_stats_annotations():
    busy = make(input_tokens=300, output_tokens=30)
    idle = make()
    runs_for(busy, ("completed", "m1", 100, 1000, T0), ("completed", "m1", 200, 500, T0),
             ("failed", "m2", 5, 20, T0), ("running", "m1", 0, None, T0))
    rows = {s.pk: s for s in ChatAgent.objects.with_stats()}
    b, i = rows[busy.pk], rows[idle.pk]
    assert (b.runs_total, b.runs_completed, b.runs_failed, b.runs_cancelled,
            b.runs_running) == (4, 2, 1, 0, 1)
    assert b.run_duration_ms == 1520 and b.total_tokens == 330
    assert (i.runs_total, i.runs_completed, i.run_duration_ms, i.total_tokens) == (0, 0, 0, 0)
    # composes with filters and ordering
    top = ChatAgent.objects.with_stats().filter(runs_completed__gte=1).order_by("-runs_total")
    assert pks(top) == [busy.pk]


def test_session_stats(scripted):
    Order.objects.create(number=1, status="ok", customer="A")
    scripted.enqueue(tool_reply("lookup_order", {"number": 1}, usage={"input_tokens": 7}),
                     text_reply("done", usage={"input_tokens": 11, "output_tokens": 3}),
                     RuntimeError("boom"))
    session = ToolAgent.objects.start_session("go", instruction_args={"company_name": "A"})
    with pytest.raises(Exception):
        ToolAgent.objects.continue_session(session, "again")
    session.refresh_from_db()
    Artifact.objects.create(session_type=ContentType.objects.get_for_model(ToolAgent),
                            session_id=session.pk, key="k", file="x/y.txt", size=12)

    stats = session_stats(session)

    assert stats["turns"] == 1
    assert stats["runs"] == {"total": 2, "queued": 0, "running": 0, "awaiting_approval": 0,
                             "completed": 1, "failed": 1,
                             "cancelled": 0, "incomplete": 0, "refused": 0}
    assert stats["tokens"]["input_tokens"] == 18 and stats["tokens"]["output_tokens"] == 8
    assert stats["tokens"]["total"] == 26
    assert stats["run_tokens"]["total"] == 26  # the failed run spent nothing here
    assert stats["iterations"] == 3  # the failed run got as far as its first call
    assert stats["duration_ms"] >= 0 and stats["first_run_at"] <= stats["last_run_at"]
    assert stats["events"] == session.event_seq
    assert (stats["artifacts"], stats["artifact_bytes"]) == (1, 12)


# -- usage summaries -------------------------------------------------------------------------

@pytest.fixture
def usage_data(user, other_user):
    a = make(owner=user)
    b = make(PlainAgent, owner=other_user)
    runs_for(a, ("completed", "m1", 100, 1000, T0),
             ("completed", "m2", 10, 10, T0 + timedelta(hours=13)),  # Jan 11 in UTC
             ("failed", "m1", 4, 5, T0 + timedelta(days=1)))
    runs_for(b, ("completed", "m1", 1000, 2000, T0 + timedelta(days=1)))
    return a, b


def test_usage_by_model(usage_data):
    rows = usage_by_model()
    assert [r["model"] for r in rows] == ["m1", "m2"]
    m1 = rows[0]
    assert (m1["runs"], m1["sessions"], m1["input_tokens"], m1["output_tokens"]) == \
        (3, 2, 1104, 552)
    assert m1["total_tokens"] == 1656 and m1["duration_ms"] == 3005
    assert usage_by_model(status="completed")[0]["runs"] == 2


def test_usage_by_day_and_time_zone(usage_data):
    rows = usage_by_day()
    assert [(r["day"], r["runs"]) for r in rows] == [(date(2026, 1, 10), 1),
                                                    (date(2026, 1, 11), 3)]
    # in UTC-10 the run at 01:00 UTC on Jan 11 is still Jan 10
    hawaii = usage_by_day(tzinfo=zoneinfo.ZoneInfo("Pacific/Honolulu"))
    assert [(r["day"], r["runs"]) for r in hawaii] == [(date(2026, 1, 10), 2),
                                                      (date(2026, 1, 11), 2)]
    both = usage_summary(by=("day", "model"))
    assert [(r["day"].day, r["model"], r["runs"]) for r in both] == [
        (10, "m1", 1), (11, "m1", 2), (11, "m2", 1)]
    with pytest.raises(ValueError):
        usage_summary(by=("colour",))  # "owner" became a group (issue #16)


def test_usage_scoped_by_owner_models_time_and_queryset(usage_data, user, other_user):
    a, b = usage_data
    assert sum(r["runs"] for r in usage_by_model(owner=user)) == 3
    assert sum(r["runs"] for r in usage_by_model(owner=other_user.pk)) == 1
    assert sum(r["runs"] for r in usage_by_model(models=[PlainAgent])) == 1
    assert sum(r["runs"] for r in usage_by_model(models=["testapp.chatagent"])) == 3
    assert sum(r["runs"] for r in usage_by_model(since=T0 + timedelta(hours=1),
                                                 until=T0 + timedelta(days=1))) == 1
    rows = ChatAgent.objects.filter(pk=a.pk).usage_summary(by=("model",))
    assert [(r["model"], r["runs"]) for r in rows] == [("m1", 2), ("m2", 1)]
    assert PlainAgent.objects.none().usage_summary() == []


# -- events ----------------------------------------------------------------------------------

def test_search_events_by_type_run_seq_and_time(scripted):
    scripted.enqueue("one", "two")
    s = ChatAgent.objects.start_session("a", instruction_args={"company_name": "A"})
    s = ChatAgent.objects.continue_session(s, "b")
    other = make()
    AgentEvent.objects.create(session_type=ContentType.objects.get_for_model(ChatAgent),
                              session_id=other.pk, seq=1, type="usage", data={})
    first_run, second_run = s.runs.order_by("started_at")

    events = list(search_events(s))
    assert [e.seq for e in events] == list(range(1, s.event_seq + 1))
    assert {e.type for e in search_events(s, types="run.*")} == {"run.started",
                                                                  "run.completed"}
    assert [e.type for e in search_events(s, types=["usage", "session.started"])] == [
        "session.started", "usage", "usage"]
    assert all(e.run_id == second_run.pk for e in search_events(s, run=second_run))
    assert len(search_events(s, run=first_run.pk)) == len(search_events(s, run=first_run))
    assert [e.seq for e in search_events(s, seq_from=3, seq_to=5)] == [3, 4, 5]
    assert len(search_events(types="usage")) == 3  # across sessions
    later = search_events(s, since=events[-1].created_at)
    assert events[-1] in later and events[0] not in search_events(s, until=events[0].created_at)


# -- cursor pages ----------------------------------------------------------------------------

def test_pages_walk_everything_once_with_a_total(user):
    sessions = [make(owner=user, at=T0 + timedelta(minutes=i)) for i in range(7)]
    newest_first = pks(reversed(sessions))

    page = ChatAgent.objects.owned_by(user).page(size=3)
    assert pks(page) == newest_first[:3] and page.total == 7 and page.has_more
    page2 = ChatAgent.objects.owned_by(user).page(page.next_cursor, size=3)
    page3 = ChatAgent.objects.owned_by(user).page(page2.next_cursor, size=3)
    assert pks(page2) + pks(page3) == newest_first[3:]
    assert page3.next_cursor is None and not page3.has_more and len(page3) == 1

    asc = ChatAgent.objects.page(size=4, order="created_at")
    assert pks(asc) == pks(sessions[:4])
    assert pks(ChatAgent.objects.page(asc.next_cursor, size=4, order="created_at")
               ) == pks(sessions[4:])


def test_ties_on_the_timestamp_are_broken_by_id():
    sessions = [make(at=T0) for _ in range(9)]
    seen = []
    cursor = None
    while True:
        page = ChatAgent.objects.page(cursor, size=2)
        seen += pks(page)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(pks(sessions), reverse=True)


@pytest.mark.parametrize("order", ["-last_activity_at", "-created_at", "created_at"])
def test_pages_are_stable_while_rows_are_inserted(order):
    """Inserts between fetches never shift a page: nothing is repeated or skipped."""
    originals = [make(at=T0 + timedelta(minutes=i)) for i in range(10)]
    seen: list = []
    cursor = None
    inserted_newer, inserted_older = [], []
    for step in range(20):
        page = ChatAgent.objects.page(cursor, size=3, order=order)
        seen += pks(page)
        cursor = page.next_cursor
        if cursor is None:
            break
        # rows arrive between page fetches: new activity, and one backdated import
        inserted_newer.append(make(at=T0 + timedelta(days=1, minutes=step)))
        inserted_newer.append(make(at=T0 + timedelta(days=1, minutes=step)))
        if step == 1:
            inserted_older.append(make(at=T0 - timedelta(days=1)))
    assert len(seen) == len(set(seen))
    assert set(pks(originals)) <= set(seen)
    if order.startswith("-"):
        # new rows land before the cursor; the backdated one lands ahead of it, once
        assert set(seen) == set(pks(originals + inserted_older))
    else:
        assert set(pks(inserted_older)).isdisjoint(seen)
        assert set(pks(inserted_newer)) <= set(seen)


def test_search_sessions_across_models_merges_in_order(user):
    c1 = make(ChatAgent, owner=user, at=T0)
    p1 = make(PlainAgent, owner=user, at=T0 + timedelta(minutes=1))
    c2 = make(ChatAgent, owner=user, at=T0 + timedelta(minutes=2))
    t1 = make(ToolAgent, owner=user, at=T0 + timedelta(minutes=3))
    make(ChatAgent, at=T0 + timedelta(minutes=4))  # someone else's

    page = search_sessions(owner=user, size=3)
    assert pks(page) == [t1.pk, c2.pk, p1.pk] and page.total == 4
    rest = search_sessions(owner=user, size=3, cursor=page.next_cursor)
    assert pks(rest) == [c1.pk] and rest.next_cursor is None
    only = search_sessions(models=["testapp.chatagent", PlainAgent], owner=user)
    assert pks(only) == [c2.pk, p1.pk, c1.pk]
    assert {ChatAgent, PlainAgent, ToolAgent} <= set(session_models())
    # the context column is deferred unless asked for
    assert "context" in page.items[0].get_deferred_fields()
    assert not search_sessions(owner=user, with_context=True).items[0].get_deferred_fields()
    with pytest.raises(ValueError):
        search_sessions(models=[Order])


def test_bad_cursors_and_arguments_are_rejected():
    make()
    good = encode_cursor("-created_at", T0, uuid.uuid4())
    assert decode_cursor(good, "-created_at")[0] == T0
    for cursor in ("not-a-cursor", good[:-3], good):
        with pytest.raises(exc.InvalidInput) as info:
            ChatAgent.objects.page(cursor)  # the last one belongs to another ordering
        assert "cursor" in info.value.errors
    with pytest.raises(ValueError):
        ChatAgent.objects.page(order="title")
    with pytest.raises(ValueError):
        ChatAgent.objects.page(size=0)


# -- cost and cache --------------------------------------------------------------------------

#: a run priced at $0.030750 (tests/engine/test_pricing.py)
PRICED = {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 5000,
          "cache_read_input_tokens": 20000}


@pytest.fixture
def costed(user, other_user):
    """Two sessions of two owners: priced runs, one unpriced run, a run with no tokens."""
    a, b = make(owner=user), make(owner=other_user)
    ct = ContentType.objects.get_for_model(ChatAgent)

    def run(session, model, cost, kind="turn", **usage):
        return AgentRun(session_type=ct, session_id=session.pk, status="completed",
                        model=model, kind=kind, cost=cost, started_at=T0, **usage)

    AgentRun.objects.bulk_create([
        run(a, "sonnet", Decimal("0.030750"), **PRICED),
        run(a, "haiku", Decimal("0.001000"), kind="title", input_tokens=30, output_tokens=5),
        run(b, "sonnet", Decimal("0.030750"), **PRICED),
        run(b, "mystery", None, input_tokens=10, output_tokens=2),
        run(b, "sonnet", None),  # never called the model: nothing to price
    ])
    return a, b


def test_usage_summary_reports_cost_and_the_cache_hit_ratio_by_owner(costed, user, other_user):
    rows = {r["owner"]: r for r in usage_summary(by=("owner",))}
    mine, theirs = rows[user.pk], rows[other_user.pk]
    assert mine["cost"] == Decimal("0.031750") and mine["unpriced_runs"] == 0
    assert theirs["cost"] == Decimal("0.030750") and theirs["unpriced_runs"] == 1
    assert mine["cache_hit_ratio"] == round(20000 / 26030, 4)
    by_model = {r["model"]: r for r in usage_summary(by=("model",))}
    assert by_model["sonnet"]["cost"] == Decimal("0.061500")
    assert by_model["mystery"]["cost"] == Decimal(0) and by_model["mystery"]["unpriced_runs"] == 1
    by_kind = {r["kind"]: r["runs"] for r in usage_summary(by=("kind",))}
    assert by_kind == {"title": 1, "turn": 4}
    both = usage_summary(by=("owner", "model"), owner=user)
    assert [(r["owner"], r["model"]) for r in both] == [(user.pk, "haiku"), (user.pk, "sonnet")]


def test_a_sessions_cost_is_its_runs_and_unknown_when_one_is_unpriced(costed,
                                                                       django_assert_num_queries):
    a, b = costed
    assert a.total_cost == Decimal("0.031750") and b.total_cost is None
    annotated = {s.pk: s for s in ChatAgent.objects.with_cost()}
    with django_assert_num_queries(0):  # read from the annotation
        assert annotated[a.pk].total_cost == Decimal("0.031750")
        assert annotated[b.pk].total_cost is None
    empty = make()
    assert empty.total_cost == Decimal(0)
    assert ChatAgent.objects.with_cost().get(pk=empty.pk).total_cost == Decimal(0)


def test_session_stats_cost(costed):
    a, b = costed
    stats = session_stats(a)
    assert stats["cost"] == Decimal("0.031750") and stats["unpriced_runs"] == 0
    assert stats["cache_hit_ratio"] == round(20000 / 26030, 4)
    assert session_stats(b)["unpriced_runs"] == 1


def test_a_run_with_only_cached_tokens_and_no_price_is_unpriced(user):
    """Every input read from the cache (input_tokens 0) is still a model call to pay for."""
    session = make(owner=user)
    ct = ContentType.objects.get_for_model(ChatAgent)
    AgentRun.objects.create(session_type=ct, session_id=session.pk, status="completed",
                            model="mystery", cost=None, started_at=T0,
                            cache_read_input_tokens=5000, output_tokens=20)
    assert session.total_cost is None
    assert ChatAgent.objects.with_cost().get(pk=session.pk).total_cost is None
    assert session_stats(session)["unpriced_runs"] == 1
    (row,) = usage_summary(by=("owner",), owner=user)
    assert row["unpriced_runs"] == 1 and row["cost"] == Decimal(0)
    assert row["cache_hit_ratio"] == 1.0
