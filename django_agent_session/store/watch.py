"""A run's observer driven from a sync turn, and the ASGI server's event loop.

Observers (the live layer's run stream) are async: they publish to the channel layer and keep a
task that batches deltas. A sync caller that runs a queued run in front of its own must still
stream it to the conversation's viewers, but cannot run the async turn instead: the async path
closes the calling thread's database connection between calls, which inside the caller's
transaction (``ATOMIC_REQUESTS``, say) would break it. So the turn stays sync, and its frames go
to the observer one at a time, in order, on the ASGI server's loop when the caller is a sync
view under ASGI (the in-memory layer's queues belong to that loop), else on an event loop of
the run's own, in a thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any

from asgiref.sync import SyncToAsync

logger = logging.getLogger("django_agent_session")

#: longest wait for one frame to be handed to the layer (a hung Redis must not hold the turn)
FRAME_TIMEOUT_SECONDS = 30.0


def server_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of the ASGI server, when called from it or from one of its threads.

    A sync view under ASGI runs in a thread of ``sync_to_async``; asgiref records the loop it
    came from in a thread-local (the loop ``async_to_sync`` would use). Under WSGI, in a shell
    or a worker there is none.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    local = SyncToAsync.threadlocal
    if getattr(local, "main_event_loop_pid", None) == os.getpid():
        loop = getattr(local, "main_event_loop", None)
        if loop is not None and loop.is_running():
            return loop
    return None


class SyncWatch:
    """``watcher`` (an async observer) for one sync run; :meth:`close` when the run ended."""

    def __init__(self, watcher: Any) -> None:
        self.watcher = watcher
        loop = server_loop()
        self._thread: threading.Thread | None = None
        if loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                            name="agent-run-observer")
            self._thread.start()
        self._loop = loop

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            future.result(FRAME_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            logger.warning("A frame was not handed to the channel layer in %s s; dropped.",
                           FRAME_TIMEOUT_SECONDS)

    def on_progress(self, kind: str, data: dict[str, Any]) -> None:
        self._call(self.watcher.on_progress(kind, data))

    def finished(self, record: Any, error: BaseException | None) -> None:
        self._call(self.watcher.finished(record, error))

    def close(self) -> None:
        """Stop the run's own loop, after the tasks it still runs (a delta batch) end."""
        if self._thread is None:
            return  # the server's loop: finished() already waited for the deltas

        async def settle() -> None:
            current = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not current]
            if pending:
                await asyncio.wait(pending, timeout=5.0)

        try:
            self._call(settle())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
