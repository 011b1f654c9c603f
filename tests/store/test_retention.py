"""Retention: the policy, the batched prune and the ``prune_agent_sessions`` command."""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from django_agent_session.models import AgentEvent, AgentRun, Artifact, LiveOwnership
from django_agent_session.store.retention import PruneReport, RetentionPolicy, prune
from tests.testapp.models import ChatAgent, PlainAgent

pytestmark = pytest.mark.django_db

NOW = timezone.now()
DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def storage(tmp_storage):
    return tmp_storage


def session(model=ChatAgent, *, age=0.0, events=(), **fields):
    """A session last active ``age`` days ago, with one run and the given (type, age) events."""
    at = NOW - timedelta(days=age)
    s = model.objects.create(created_at=at, last_activity_at=at, **fields)
    ct = ContentType.objects.get_for_model(model)
    run = AgentRun.objects.create(session_type=ct, session_id=s.pk, status="completed",
                                  started_at=at)
    AgentEvent.objects.bulk_create([
        AgentEvent(session_type=ct, session_id=s.pk, seq=i, type=kind, run=run,
                   created_at=NOW - timedelta(days=event_age))
        for i, (kind, event_age) in enumerate(events, start=1)])
    return s


def exists(s) -> bool:
    return type(s)._base_manager.filter(pk=s.pk).exists()


def run_command(*args: str) -> str:
    out = io.StringIO()
    call_command("prune_agent_sessions", *args, stdout=out)
    return out.getvalue()


# -- the policy ------------------------------------------------------------------------------

def test_defaults_prune_nothing():
    policy = RetentionPolicy.from_settings()
    assert policy == RetentionPolicy()
    assert not policy.prunes_anything
    assert policy.exempt_statuses == ("running",) and policy.keep_pinned
    session(age=10_000)
    assert prune().counts() == dict.fromkeys(["sessions", "runs", "events", "chatty_events",
                                              "artifacts"], 0)
    assert "Nothing to prune" in run_command()
    assert ChatAgent.objects.count() == 1


def test_policy_from_settings_and_overrides():
    with override_settings(AGENT_SESSION={"RETENTION": {"MAX_AGE_DAYS": 30, "BATCH_SIZE": 7}}):
        policy = RetentionPolicy.from_settings(keep_pinned=False)
    assert policy.max_age == timedelta(days=30) and policy.batch_size == 7
    assert policy.keep_pinned is False
    assert policy.chatty_event_types == ("usage", "message.queued")  # merged defaults
    with pytest.raises(TypeError):
        RetentionPolicy.from_settings(max_days=3)
    with pytest.raises(ValueError, match="batch_size"):
        RetentionPolicy(batch_size=0)
    with pytest.raises(ValueError, match="max_age"):
        RetentionPolicy(max_age=timedelta(0))


# -- what goes and what stays ----------------------------------------------------------------

def test_max_age_deletes_old_sessions_with_everything_and_keeps_protected(
        user, django_capture_on_commit_callbacks):
    old = session(age=100, events=[("run.started", 100), ("usage", 100)])
    recent = session(age=5, events=[("usage", 5)])
    pinned = session(age=100, pinned=True)
    running = session(age=100, status="running")
    leased = session(age=100, lease_token=uuid.uuid4(), lease_expires_at=NOW + DAY)
    expired_lease = session(age=100, lease_token=uuid.uuid4(), lease_expires_at=NOW - DAY)
    live = session(age=100)
    LiveOwnership.objects.create(session_type=ContentType.objects.get_for_model(ChatAgent),
                                 session_id=live.pk, owner_channel="x", expires_at=NOW + DAY)
    waiting = session(age=100)  # an old conversation with a message still queued
    AgentRun.objects.create(session_type=ContentType.objects.get_for_model(ChatAgent),
                            session_id=waiting.pk, status="queued", started_at=NOW)
    stale_live = session(PlainAgent, age=100)
    LiveOwnership.objects.create(session_type=ContentType.objects.get_for_model(PlainAgent),
                                 session_id=stale_live.pk, owner_channel="y",
                                 expires_at=NOW - DAY)
    from django_agent_session.artifacts import save_artifact

    gone = save_artifact(old, "a.txt", b"x")
    kept = save_artifact(pinned, "a.txt", b"y")

    with django_capture_on_commit_callbacks(execute=True):
        report = prune(RetentionPolicy(max_age=timedelta(days=30)), now=NOW)

    assert (report.sessions, report.runs, report.events, report.artifacts) == (3, 3, 2, 1)
    assert report.by_model["testapp.ChatAgent"]["sessions"] == 2
    assert report.by_model["testapp.PlainAgent"]["sessions"] == 1
    assert not exists(old) and not exists(expired_lease) and not exists(stale_live)
    assert all(exists(s) for s in (recent, pinned, running, leased, live, waiting))
    assert not AgentEvent.objects.filter(session_id=old.pk).exists()
    assert not default_storage.exists(gone.file.name)
    assert default_storage.exists(kept.file.name)
    assert not LiveOwnership.objects.filter(session_id=stale_live.pk).exists()

    # pinned sessions may be pruned when the policy says so; statuses are configurable
    report = prune(RetentionPolicy(max_age=timedelta(days=30), keep_pinned=False,
                                   exempt_statuses=()), now=NOW)
    assert report.sessions == 2 and not exists(pinned) and not exists(running)
    assert exists(leased) and exists(live) and exists(waiting)


def test_max_sessions_per_owner_keeps_the_newest(user, other_user):
    mine = [session(age=age, owner=user) for age in (1, 2, 3, 4, 5)]
    pinned_old = session(age=50, owner=user, pinned=True)
    theirs = [session(age=age, owner=other_user) for age in (1, 9)]
    ownerless = [session(age=age) for age in (1, 2, 3, 4)]

    report = prune(RetentionPolicy(max_sessions_per_owner=2), now=NOW)

    assert report.sessions == 3
    assert [exists(s) for s in mine] == [True, True, False, False, False]
    assert exists(pinned_old) and all(exists(s) for s in theirs + ownerless)


def test_age_and_owner_limit_together_count_each_session_once(user):
    sessions = [session(age=age, owner=user) for age in (1, 2, 40, 50, 60)]
    policy = RetentionPolicy(max_age=timedelta(days=45), max_sessions_per_owner=2)
    dry = prune(policy, now=NOW, dry_run=True)
    real = prune(policy, now=NOW)
    assert dry.counts() == real.counts() and real.sessions == 3
    assert [exists(s) for s in sessions] == [True, True, False, False, False]


def test_chatty_events_go_first_and_only_old_ones():
    kept = session(age=1, events=[("usage", 40), ("usage", 2), ("message.queued", 40),
                                  ("run.completed", 40)])
    pinned = session(age=1, pinned=True, events=[("usage", 40)])
    old = session(age=100, events=[("usage", 40), ("message.user", 100)])
    policy = RetentionPolicy(max_age=timedelta(days=60), chatty_event_max_age=timedelta(days=30))

    dry = prune(policy, now=NOW, dry_run=True)
    assert AgentEvent.objects.count() == 7  # a dry run deletes nothing
    real = prune(policy, now=NOW)

    assert dry.counts() == real.counts()
    assert (real.chatty_events, real.events, real.sessions) == (3, 4, 1)
    assert sorted(AgentEvent.objects.filter(session_id=kept.pk).values_list("type", "seq")) == [
        ("run.completed", 4), ("usage", 2)]
    assert AgentEvent.objects.filter(session_id=pinned.pk).count() == 1
    assert not exists(old)


def test_batches_are_bounded(user):
    for age in range(40, 47):
        session(age=age, events=[("usage", age)] * 0)
    report = prune(RetentionPolicy(max_age=timedelta(days=30)), batch_size=3, now=NOW)
    assert report.sessions == 7 and report.batches == 3


# -- the command -----------------------------------------------------------------------------

def test_command_options_override_settings():
    session(age=100)
    session(age=10)
    with override_settings(AGENT_SESSION={"RETENTION": {"MAX_AGE_DAYS": 5}}):
        out = run_command("--dry-run", "--max-age-days", "50")
        assert "Would delete (dry run):" in out and "sessions:  1" in out
        # "none" turns a configured limit off
        assert "Nothing to prune" in run_command("--max-age-days", "none")
        data = json.loads(run_command("--json", "--model", "testapp.plainagent"))
        assert data["sessions"] == 0 and data["dry_run"] is False
        out = run_command("--batch-size", "1")
    assert "Deleted:" in out and "sessions:  2" in out
    assert ChatAgent.objects.count() == 0


def test_command_rejects_bad_options():
    with pytest.raises(CommandError):
        run_command("--max-age-days", "-3")
    with pytest.raises(CommandError):
        run_command("--max-age-days", "3", "--model", "auth.user")
    with pytest.raises(CommandError):
        run_command("--max-age-days", "3", "--model", "nope.nothing")


def test_report_text():
    report = PruneReport(dry_run=True)
    report.add("testapp.ChatAgent", sessions=2, runs=3, events=4, chatty_events=1, artifacts=1)
    text = str(report)
    assert text.startswith("Would delete (dry run):")
    assert "events:    4 (1 chatty)" in text and "testapp.ChatAgent: sessions=2" in text


# -- acceptance: 10,000 sessions ---------------------------------------------------------------

def seed(n: int, users: list) -> dict[str, list]:
    """``n`` sessions over two models, with runs, events and artifact files, via bulk_create."""
    rows: dict[type, list] = {ChatAgent: [], PlainAgent: []}
    kinds: dict[str, list] = {"pinned": [], "exempt": [], "artifact_files": []}
    for i in range(n):
        model = PlainAgent if i % 5 == 0 else ChatAgent
        old = i % 10 < 6
        at = NOW - (timedelta(days=200) if old else DAY) - timedelta(seconds=i)
        obj = model(created_at=at, last_activity_at=at, owner=users[i % 3] if i % 7 else None,
                    pinned=i % 50 == 0,
                    status="running" if i % 97 == 0 else "failed" if i % 31 == 0 else "idle",
                    metadata={"i": i})
        rows[model].append(obj)
        if obj.pinned:
            kinds["pinned"].append(obj)
        elif obj.status == "running":
            kinds["exempt"].append(obj)
    runs, events, artifacts = [], [], []
    for model, objs in rows.items():
        model.objects.bulk_create(objs, batch_size=1000)
        ct = ContentType.objects.get_for_model(model)
        for j, obj in enumerate(objs):
            run = None
            if j % 2 == 0:
                run = AgentRun(session_type=ct, session_id=obj.pk, status="completed",
                               started_at=obj.last_activity_at, input_tokens=5)
                runs.append(run)
            for seq, kind in enumerate(("run.started", "usage"), start=1):
                events.append(AgentEvent(session_type=ct, session_id=obj.pk, seq=seq,
                                         type=kind, run=run, created_at=obj.last_activity_at))
            if j % 40 == 0:
                artifact = Artifact(session_type=ct, session_id=obj.pk, run=run, key="out.txt",
                                    size=2, content_type="text/plain")
                artifact.file.save("out.txt", ContentFile(b"ok"), save=False)
                artifacts.append(artifact)
                kinds["artifact_files"].append((obj, artifact.file.name))
    AgentRun.objects.bulk_create(runs, batch_size=1000)
    AgentEvent.objects.bulk_create(events, batch_size=2000)
    Artifact.objects.bulk_create(artifacts, batch_size=1000)
    return kinds


def totals() -> dict[str, int]:
    return {"sessions": ChatAgent.objects.count() + PlainAgent.objects.count(),
            "runs": AgentRun.objects.count(), "events": AgentEvent.objects.count(),
            "artifacts": Artifact.objects.count()}


def test_dry_run_reports_what_the_real_run_deletes_on_10000_sessions(
        django_user_model, django_capture_on_commit_callbacks):
    users = [django_user_model.objects.create_user(f"u{i}") for i in range(3)]
    kinds = seed(10_000, users)
    before = totals()
    started = time.monotonic()
    assert before["sessions"] == 10_000
    options = ["--json", "--max-age-days", "90", "--max-sessions-per-owner", "1500",
               "--chatty-max-age-days", "30", "--batch-size", "500"]

    dry = json.loads(run_command("--dry-run", *options))
    assert totals() == before  # nothing deleted
    with django_capture_on_commit_callbacks(execute=True):
        real = json.loads(run_command(*options))
    elapsed = time.monotonic() - started  # both runs, on a shared CI machine

    counted = ("sessions", "runs", "events", "chatty_events", "artifacts")
    assert {k: dry[k] for k in counted} == {k: real[k] for k in counted}
    assert dry["by_model"] == real["by_model"]
    assert real["sessions"] > 5000 and real["chatty_events"] > 0 and real["artifacts"] > 0
    after = totals()
    assert {k: before[k] - after[k] for k in after} == {
        "sessions": real["sessions"], "runs": real["runs"], "events": real["events"],
        "artifacts": real["artifacts"]}
    # exempt and pinned sessions are all kept
    for obj in kinds["pinned"] + kinds["exempt"]:
        assert exists(obj)
    # artifact files: gone exactly for the deleted sessions
    for obj, name in kinds["artifact_files"]:
        assert default_storage.exists(name) == exists(obj), name
    # a second run finds nothing left to do
    assert json.loads(run_command(*options))["sessions"] == 0
    assert elapsed < 60, f"prune of 10,000 sessions took {elapsed:.1f}s"
