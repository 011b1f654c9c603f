"""Graceful shutdown of an ASGI process: let the running turns end, hand everything else on.

On SIGTERM (daphne, which speaks no ASGI lifespan) or on ``lifespan.shutdown`` (servers that
do, through :func:`with_lifespan`), :func:`shutdown`:

1. stops this process's inline executor from starting runs (what is queued stays queued);
2. runs the callbacks registered with :func:`on_shutdown`: the live layer's stops its live
   sessions, each releasing its ownership lease and telling its viewers (``session.stopped``,
   reason ``shutdown``), so they elect an owner elsewhere at once;
3. waits up to ``SHUTDOWN_GRACE_SECONDS`` for the running turns; a turn still running then is
   recorded as failed ``interrupted`` (retryable) and its turn lease released.

Queued runs are left to the next owner or submission, which takes them at once: no lease of
this process is left to expire. The SIGTERM handler is installed the first time this process
hosts a live session or an inline drain (from the main thread's loop), then passes the signal
on to the server's own handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..conf import agent_settings
from .executors import inline_executor

logger = logging.getLogger("django_agent_session.runs")

_installed = False
_callbacks: list[Callable[[], Awaitable[Any]]] = []


def on_shutdown(callback: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """Register a coroutine function :func:`shutdown` awaits (once, in order)."""
    if callback not in _callbacks:
        _callbacks.append(callback)
    return callback


async def shutdown(grace: float | None = None) -> None:
    """Stop taking runs, run the shutdown callbacks, then wait for (or interrupt) the running
    turns."""
    grace = float(agent_settings.SHUTDOWN_GRACE_SECONDS if grace is None else grace)
    executor = inline_executor()
    executor.close()
    for callback in _callbacks:
        try:
            await callback()
        except Exception:
            logger.exception("A shutdown callback failed")
    finished = await executor.wait_closed(grace)
    logger.info("Shutdown: running turns %s.", "finished" if finished else "interrupted")


#: the shutdown under way (the loop keeps only a weak reference to a task)
_running: set[asyncio.Task] = set()


def _start_shutdown(graceful: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Start ``graceful()`` on the running loop, in a context of its own, and keep it."""
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
        graceful(), context=contextvars.Context())
    _running.add(task)
    task.add_done_callback(_running.discard)


def install_signal_handler() -> None:
    """Run :func:`shutdown` on SIGTERM before the server's own handler (once per process;
    only from the main thread, where signal handlers live)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    previous = signal.getsignal(signal.SIGTERM)
    _installed = True

    def pass_on(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: terminate as the default would have
            signal.raise_signal(signum)

    def on_sigterm(signum: int, frame: Any) -> None:
        async def graceful() -> None:
            try:
                await shutdown()
            finally:
                pass_on(signum, frame)
        if loop.is_closed() or not loop.is_running():  # the loop that installed it is gone
            pass_on(signum, frame)
            return
        # in a context of its own: the signal lands in the middle of whatever task runs, and
        # inheriting its context variables (asgiref's mark of a thread-sensitive call under
        # way, say) made the live sessions' database calls refuse to run, so they kept their
        # ownership leases
        loop.call_soon_threadsafe(_start_shutdown, graceful)

    signal.signal(signal.SIGTERM, on_sigterm)


def with_lifespan(application: Any) -> Any:
    """Wrap an ASGI application so ``lifespan.shutdown`` runs :func:`shutdown` (for servers
    that speak the lifespan protocol, e.g. uvicorn; other scopes pass through)."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await application(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
    return app
