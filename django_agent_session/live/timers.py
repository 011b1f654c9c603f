"""A deadline that becomes a task only when it fires, cancelled as one.

A process holds a live session per open conversation and a consumer per open socket, each
with a periodic job (lease renewal, presence heartbeat) or a deadline (a state request's). A
sleeping task per job costs a coroutine frame and a task for as long as the socket is open, so
these hold an event-loop timer handle instead, and a task exists only while the job runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

#: what a timer calls when it fires: the job to run as a task, or ``None`` for nothing to do
Due = Callable[[], Coroutine[Any, Any, None] | None]


class Timer:
    """A pending deadline and the jobs it started; :meth:`cancel` stops all of them.

    A periodic job reschedules itself by calling :meth:`call_later` when it is done: a job
    that is cancelled does not get there, so nothing fires after :meth:`cancel`.
    """

    __slots__ = ("_handle", "_name", "_tasks")

    def __init__(self, name: str | None = None) -> None:
        self._name = name
        self._handle: asyncio.TimerHandle | None = None
        #: jobs still running (one, unless a deadline fired while the last one ran); made on
        #: the first job, as an idle socket's timers never run one
        self._tasks: set[asyncio.Task] | None = None

    def call_later(self, delay: float, due: Due) -> None:
        """In ``delay`` seconds call ``due()`` and run the coroutine it returns, if any, as
        this timer's task. Replaces a pending deadline."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire, due)

    @property
    def scheduled(self) -> bool:
        """Whether a deadline is pending (not whether a job runs)."""
        return self._handle is not None

    def cancel(self) -> list[asyncio.Task]:
        """Drop the pending deadline and cancel the running jobs; their tasks, to await when
        their end matters."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        tasks, self._tasks = list(self._tasks or ()), None
        for task in tasks:
            task.cancel()
        return tasks

    def _fire(self, due: Due) -> None:
        self._handle = None
        job = due()
        if job is not None:
            # the coroutine is the task's own: cancelled before its first step, it is closed
            task = asyncio.get_running_loop().create_task(job, name=self._name)
            if self._tasks is None:
                self._tasks = set()
            self._tasks.add(task)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None
