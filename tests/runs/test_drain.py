"""The drain every executor runs: it says when to look again at runs queued behind a lease
someone else holds, from the claim that found them."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from django_agent_session.models import AgentRun, RunStatus, SessionStatus
from django_agent_session.runs.drain import LOOK_AGAIN_MAX, RETRY_MARGIN, drain
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)

ARGS = {"company_name": "Acme"}


def queued_behind_a_lease(loopback, seconds: float):
    """A session with one queued run and a turn lease another process holds for ``seconds``."""
    loopback.enqueue("first answer")
    session = ChatAgent.objects.start_session("first", instruction_args=ARGS)
    run = ChatAgent.objects.continue_session(session.pk, "later", wait=False)
    ChatAgent._base_manager.filter(pk=session.pk).update(
        lease_token=uuid.uuid4(), status=SessionStatus.RUNNING,
        lease_expires_at=timezone.now() + timedelta(seconds=seconds))
    return session, run


def drain_queue(pk):
    """``adrain_queue`` from sync code (the manager's proxy of it is not marked async)."""
    async def run():
        return await ChatAgent.objects.adrain_queue(pk)
    return async_to_sync(run)()


def test_runs_queued_behind_a_held_lease_are_looked_at_again_when_it_frees(
        loopback, recording):
    # 1.7 s: under the cap with the margin added, and a second of slack for a slow runner
    leased = time.monotonic()
    session, run = queued_behind_a_lease(loopback, seconds=1.7)
    drained = drain_queue(session.pk)
    assert drained.ran == 0 and 0.7 < drained.held_for <= 1.7
    again = async_to_sync(drain)(ChatAgent, session.pk)
    # the lease's remaining time (less than the first drain saw) plus the margin, not the cap
    left = 1.7 - (time.monotonic() - leased)
    assert left + RETRY_MARGIN - 0.01 <= again <= drained.held_for + RETRY_MARGIN < LOOK_AGAIN_MAX
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED


def test_a_long_lease_is_looked_at_again_no_later_than_the_cap(loopback, recording):
    """A holder that stops draining without dying frees its lease long before it expires."""
    session, _ = queued_behind_a_lease(loopback, seconds=60)
    assert async_to_sync(drain)(ChatAgent, session.pk) == LOOK_AGAIN_MAX


def test_an_emptied_queue_or_a_stopped_drain_needs_no_second_look(loopback, recording):
    session, run = queued_behind_a_lease(loopback, seconds=60)
    assert async_to_sync(drain)(ChatAgent, session.pk, lambda: False) is None
    ChatAgent._base_manager.filter(pk=session.pk).update(
        lease_token=None, lease_expires_at=None, status=SessionStatus.IDLE)
    loopback.enqueue("later answer")
    drained = drain_queue(session.pk)
    assert (drained.ran, drained.held_for) == (1, None)
    assert AgentRun.objects.get(pk=run.pk).status == RunStatus.COMPLETED
    assert async_to_sync(drain)(ChatAgent, session.pk) is None
