"""The runs executing in this process, so a cancel requested here takes effect at once.

A cancel requested in another process reaches a run through the flag its heartbeat polls
(``store.heartbeat``); one requested in the process running it needs no round trip.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

#: the message a run's task is cancelled with when its process shuts down: the run is then
#: recorded failed ``interrupted`` (retryable), not cancelled
SHUTDOWN = "django_agent_session.shutdown"

_lock = threading.Lock()
_runs: dict[str, tuple[asyncio.AbstractEventLoop | None, Any]] = {}


def add(run_id: Any, target: asyncio.Task | threading.Event) -> None:
    """Register a run's task (async turns) or cancel event (sync turns)."""
    loop = target.get_loop() if isinstance(target, asyncio.Task) else None
    with _lock:
        _runs[str(run_id)] = (loop, target)


def discard(run_id: Any) -> None:
    with _lock:
        _runs.pop(str(run_id), None)


def cancel(run_id: Any) -> bool:
    """Cancel the run if it executes in this process; whether it did."""
    with _lock:
        entry = _runs.get(str(run_id))
    if entry is None:
        return False
    loop, target = entry
    if loop is not None:
        loop.call_soon_threadsafe(target.cancel)  # Task.cancel is not thread-safe
    else:
        target.set()
    return True


def running() -> list[str]:
    with _lock:
        return list(_runs)
