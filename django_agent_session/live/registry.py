"""The live sessions this process hosts, per event loop, and the locks that start them.

:mod:`.api` adds a :class:`~.session.LiveSession` when it starts one and looks sessions up; a
live session removes itself when it stops. Both import this module, and it imports neither, so
the registry has one home and no import runs the other way.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

#: per event loop, the live sessions it hosts (``LiveSession`` objects) by conversation id
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = \
    weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = \
    weakref.WeakKeyDictionary()


def local_sessions() -> dict[str, Any]:
    """Live sessions hosted by the running event loop, keyed by conversation id."""
    return _sessions.setdefault(asyncio.get_running_loop(), {})


def add(session: Any) -> None:
    """Host ``session`` (a ``LiveSession``) in the running event loop, under its ``key``."""
    local_sessions()[session.key] = session


def forget(session: Any) -> None:
    """Drop ``session`` from the running loop's registry, unless another took its place."""
    sessions = _sessions.get(asyncio.get_running_loop(), {})
    key = session.key
    if sessions.get(key) is session:
        del sessions[key]


@asynccontextmanager
async def start_lock(key: str) -> AsyncIterator[None]:
    """Hold the running loop's lock for starting conversation ``key``'s live session.

    The lock only spares the database a race it settles anyway, so it is dropped from the
    registry once it is released.
    """
    locks = _locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.setdefault(key, asyncio.Lock())
    try:
        async with lock:
            yield
    finally:
        locks = _locks.get(asyncio.get_running_loop(), {})
        if not lock.locked() and locks.get(key) is lock:
            del locks[key]
