"""A run's observer driven from a sync turn.

Observers (the live layer's run stream) are async: they publish to the channel layer and keep a
task that batches deltas. A sync caller that runs a queued run in front of its own must still
stream it to the conversation's viewers, but cannot run the async turn instead: the async path
closes the calling thread's database connection between calls, which inside the caller's
transaction (``ATOMIC_REQUESTS``, say) would break it. So the turn stays sync, and its frames go
to the observer on an event loop of the run's own, in a thread, one at a time and in order.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


class SyncWatch:
    """``watcher`` (an async observer) for one sync run; :meth:`close` when the run ended."""

    def __init__(self, watcher: Any) -> None:
        self.watcher = watcher
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="agent-run-observer")
        self._thread.start()

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def on_progress(self, kind: str, data: dict[str, Any]) -> None:
        self._call(self.watcher.on_progress(kind, data))

    def finished(self, record: Any, error: BaseException | None) -> None:
        self._call(self.watcher.finished(record, error))

    def close(self) -> None:
        """Stop the loop (after the tasks it still runs, such as a delta batch, end)."""
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
