"""Keeps a turn's lease alive while its work is in flight.

The lease bounds how long a *dead* process can block a session, not how long a turn may take:
a model call or a tool that outlasts ``TURN_LEASE_SECONDS`` must not be taken over and thrown
away. So while the engine runs, a heartbeat renews the lease every third of the lease time,
from the process's one beater thread (sync turns) or a task (async turns), with its own database connection, so a
busy turn thread cannot starve it. Only a process that really stopped, or stalled past the
lease, loses its lease; the commit's compare-and-set still decides.

The same beat watches for a cancel requested from another process (``cancel_run`` sets a flag
on the run): it checks every ``CANCEL_CHECK_SECONDS`` and tells the turn (``on_cancel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async
from django.db import connections

from .. import exceptions as exc
from ..conf import agent_settings
from ..records import AgentRun

if TYPE_CHECKING:
    from .turns import SessionStore, Turn

logger = logging.getLogger("django_agent_session")


def interval() -> float:
    """Seconds between renewals: a third of the lease, so two may fail before it expires."""
    return float(agent_settings.TURN_LEASE_SECONDS) / 3


def tick() -> float:
    """Seconds between beats: renewals and cancel checks, whichever is due sooner."""
    return min(interval(), float(agent_settings.CANCEL_CHECK_SECONDS))


class _Beat:
    """One turn's schedule: renew every ``interval()``, look for a cancel every tick."""

    def __init__(self, store: SessionStore, turn: Turn, on_cancel: Callable[[], None]) -> None:
        self.store, self.turn, self.on_cancel = store, turn, on_cancel
        self.next_renewal = time.monotonic() + interval()

    def __call__(self) -> bool:
        """Beat once; ``False`` once there is nothing left to watch."""
        # half a tick early is on time: beats are scheduled a tick apart, and a renewal due
        # just after one would otherwise wait for the next
        if time.monotonic() >= self.next_renewal - tick() / 2:
            self.next_renewal = time.monotonic() + interval()
            if not _beat(self.store, self.turn):
                return False
        try:
            cancelled = AgentRun.objects.filter(pk=self.turn.run_id,
                                                cancel_requested=True).exists()
        except Exception:
            logger.warning("Could not check run %s for a cancel", self.turn.run_id,
                           exc_info=True)
            return True
        if cancelled:
            self.turn.cancel_event.set()
            self.on_cancel()
            return False
        return True


def _beat(store: SessionStore, turn: Turn) -> bool:
    """Renew once; ``False`` once the lease is gone (the commit will say so)."""
    try:
        store.renew(turn, force=True)
    except exc.LeaseLost:
        return False
    except Exception:  # a database hiccup: try again next beat, the lease is not lost yet
        logger.warning("Could not renew the lease of run %s", turn.run_id, exc_info=True)
    return True


class _Beater:
    """One daemon thread per process that beats every sync turn in flight.

    A thread per turn cost more to start than the rest of a short turn's bookkeeping
    (docs/performance.md); registering with a thread that is already running costs a lock.
    A beat runs outside the lock, with the beater's own database connection, which it closes
    whenever no turn is left to watch.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[_Beat, float] = {}
        self._thread: threading.Thread | None = None
        #: when the thread wakes next by itself: a beat due later needs no wake-up call
        #: (waking it on every turn cost a thread switch per turn)
        self._wakes_at = 0.0

    def add(self, beat: _Beat) -> None:
        with self._cond:
            due = self._due[beat] = time.monotonic() + tick()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="agent-lease-beater",
                                                daemon=True)
                self._thread.start()
            elif due < self._wakes_at:
                self._cond.notify()

    def discard(self, beat: _Beat) -> None:
        with self._cond:
            self._due.pop(beat, None)

    def _run(self) -> None:
        idle = False
        while True:
            with self._cond:
                now = time.monotonic()
                if not self._due:
                    if not idle:
                        connections.close_all()  # nothing to watch: hold no connection
                        idle = True
                    self._wakes_at = now + tick()  # a turn registering now is due later
                    self._cond.wait(tick())
                    continue
                idle = False
                soonest = min(self._due.values())
                if soonest > now:
                    self._wakes_at = soonest
                    self._cond.wait(soonest - now)
                    continue
                self._wakes_at = 0.0  # busy beating: anything due sooner gets a wake-up call
                ready = [beat for beat, due in self._due.items() if due <= now]
                for beat in ready:
                    self._due[beat] = now + tick()
            for beat in ready:
                try:
                    alive = beat()
                except Exception:  # never let one turn's beat stop the others'
                    logger.exception("Heartbeat of run %s failed", beat.turn.run_id)
                    alive = True
                if not alive:
                    self.discard(beat)
            # this thread never sees a request start, which is when Django replaces a broken
            # connection: after a database error, drop it (the next beat reconnects)
            for connection in connections.all(initialized_only=True):
                if connection.errors_occurred:
                    connection.close_if_unusable_or_obsolete()


_beater = _Beater()


@contextlib.contextmanager
def keep_alive(store: SessionStore, turn: Turn) -> Iterator[None]:
    """Renew ``turn``'s lease from the process's beater thread while the block runs; a
    requested cancel sets ``turn.cancel_event`` (the sync engine stops at its next step)."""
    beat = _Beat(store, turn, lambda: None)
    _beater.add(beat)
    try:
        yield
    finally:
        _beater.discard(beat)


@contextlib.asynccontextmanager
async def akeep_alive(store: SessionStore, turn: Turn) -> AsyncIterator[None]:
    """Renew ``turn``'s lease from a task while the block runs (off the shared ORM thread);
    a requested cancel cancels the task that entered the block."""
    owner, running = asyncio.current_task(), asyncio.get_running_loop()
    assert owner is not None

    def cancel_owner() -> None:  # called from the beat's thread
        running.call_soon_threadsafe(owner.cancel)

    beat = database_sync_to_async(_Beat(store, turn, cancel_owner), thread_sensitive=False)

    async def loop() -> None:
        while True:
            await asyncio.sleep(tick())
            if not await beat():
                return

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

