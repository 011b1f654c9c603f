"""Keeps a turn's lease alive while its work is in flight.

The lease bounds how long a *dead* process can block a session, not how long a turn may take:
a model call or a tool that outlasts ``TURN_LEASE_SECONDS`` must not be taken over and thrown
away. So while the engine runs, a heartbeat renews the lease every third of the lease time,
from its own thread (sync turns) or task (async turns), with its own database connection, so a
busy turn thread cannot starve it. Only a process that really stopped, or stalled past the
lease, loses its lease; the commit's compare-and-set still decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async
from django.db import connections

from .. import exceptions as exc
from ..conf import agent_settings

if TYPE_CHECKING:
    from .turns import SessionStore, Turn

logger = logging.getLogger("django_agent_session")


def interval() -> float:
    """Seconds between renewals: a third of the lease, so two may fail before it expires."""
    return float(agent_settings.TURN_LEASE_SECONDS) / 3


def _beat(store: SessionStore, turn: Turn) -> bool:
    """Renew once; ``False`` once the lease is gone (the commit will say so)."""
    try:
        store.renew(turn, force=True)
    except exc.LeaseLost:
        return False
    except Exception:  # a database hiccup: try again next beat, the lease is not lost yet
        logger.warning("Could not renew the lease of run %s", turn.run_id, exc_info=True)
    return True


@contextlib.contextmanager
def keep_alive(store: SessionStore, turn: Turn) -> Iterator[None]:
    """Renew ``turn``'s lease from a daemon thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        try:
            while not stop.wait(interval()) and _beat(store, turn):
                pass
        finally:
            connections.close_all()  # this thread's own connection

    thread = threading.Thread(target=loop, name=f"agent-lease-{turn.run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.asynccontextmanager
async def akeep_alive(store: SessionStore, turn: Turn) -> AsyncIterator[None]:
    """Renew ``turn``'s lease from a task while the block runs (off the shared ORM thread)."""
    beat = database_sync_to_async(_beat, thread_sensitive=False)

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval())
            if not await beat(store, turn):
                return

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

