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
    (task,) = timer.cancel()
    assert task.get_name() == "beat"
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and finished == [] and not timer.scheduled
    await asyncio.sleep(0.02)
    assert finished == []

    timer.call_later(0.01, lambda: beat())
    assert timer.cancel() == []  # only a deadline was pending
    await asyncio.sleep(0.03)
    assert finished == []


async def test_a_job_cancelled_before_it_starts_is_closed_not_left_unawaited():
    """A disconnect in the same loop iteration as the deadline: the job never runs, and no
    "coroutine was never awaited" warning is raised (the suite makes it an error)."""
    ran: list[bool] = []

    async def job() -> None:
        ran.append(True)

    timer = Timer()
    timer.call_later(0, lambda: job())
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: loop.call_soon(timer.cancel))  # right after it fired
    await asyncio.sleep(0.02)
    assert ran == []


async def test_a_deadline_firing_while_the_last_job_runs_leaves_both_cancellable():
    started: list[int] = []
    release = asyncio.Event()

    async def slow(n: int) -> None:
        started.append(n)
        await release.wait()

    timer = Timer()
    timer.call_later(0, lambda: slow(1))
    await asyncio.sleep(0.01)
    timer.call_later(0, lambda: slow(2))
    await asyncio.sleep(0.01)
    assert started == [1, 2]
    tasks = timer.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(tasks) == 2 and all(t.cancelled() for t in tasks)
