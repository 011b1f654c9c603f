"""The live path's timer: a deadline that becomes a task only when it fires."""

from __future__ import annotations

import asyncio

from django_agent_session.live.timers import Timer


async def test_a_deadline_runs_its_job_once_and_nothing_when_there_is_none():
    ran: list[str] = []

    async def job() -> None:
        ran.append("job")

    timer = Timer()
    timer.call_later(0.01, lambda: job())
    assert timer.scheduled
    await asyncio.sleep(0.05)
    assert ran == ["job"] and not timer.scheduled

    asked: list[bool] = []
    timer.call_later(0.01, lambda: asked.append(True))  # returns None: no task
    await asyncio.sleep(0.05)
    assert asked == [True] and ran == ["job"]


async def test_a_new_deadline_replaces_the_pending_one():
    ran: list[int] = []

    async def job(n: int) -> None:
        ran.append(n)

    timer = Timer()
    timer.call_later(0.01, lambda: job(1))
    timer.call_later(0.02, lambda: job(2))
    await asyncio.sleep(0.06)
    assert ran == [2]


async def test_cancel_stops_a_periodic_job_while_it_runs_and_between_runs():
    started, finished = asyncio.Event(), []
    timer = Timer(name="beat")

    async def beat() -> None:
        started.set()
        await asyncio.sleep(0.05)  # cancelled here
        finished.append(True)
        timer.call_later(0.001, lambda: beat())  # the reschedule a cancel must prevent

    timer.call_later(0.001, lambda: beat())
    await asyncio.wait_for(started.wait(), 1)
    task = timer.cancel()
    assert task is not None and task.get_name() == "beat"
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and finished == [] and not timer.scheduled
    await asyncio.sleep(0.02)
    assert finished == []

    timer.call_later(0.01, lambda: beat())
    assert timer.cancel() is None  # only a deadline was pending
    await asyncio.sleep(0.03)
    assert finished == []
