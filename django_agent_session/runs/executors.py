"""The executors ``AGENT_SESSION["EXECUTOR"]`` chooses from.

An executor is told, after a submission commits, that a session has queued runs
(``dispatch``). Exactly one drain runs a session's queue at a time, because draining needs the
session's turn lease; a dispatch that finds the lease held does nothing, and the holder drains
what was queued meanwhile before it lets go.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.db import close_old_connections
from django.utils import timezone

from ..conf import agent_settings
from ..store.dispatch import executor
from ..store.local_runs import SHUTDOWN
from ..store.watch import server_loop
from .drain import drain

logger = logging.getLogger("django_agent_session.runs")

#: bound on waiting for interrupted runs to record themselves at shutdown
STOP_WAIT_SECONDS = 10.0


class InlineExecutor:
    """Drains in the submitting process: as a task of the ASGI server's loop when there is
    one (so the in-memory channel layer reaches this process's viewers), else in a daemon
    thread; either way one drain per session at a time. The default; the two-command demo
    needs no worker."""

    def __init__(self) -> None:
        self.closed = False
        self._drains: dict[tuple[Any, str], asyncio.Task] = {}
        self._again: set[tuple[Any, str]] = set()
        self._retries: dict[tuple[Any, str], asyncio.TimerHandle] = {}
        self._threads: dict[threading.Thread, asyncio.Task | None] = {}
        #: outside a server loop, the drain thread of each session (one at a time, as in the
        #: loop): a dispatch to a session that has one asks it to look once more instead
        self._thread_drains: dict[tuple[Any, str], _ThreadDrain] = {}
        self._threads_lock = threading.Lock()
        self._closing = threading.Event()  # drain threads stop waiting behind leases
        self._exit_hook = False

    def dispatch(self, model: Any, session_pk: Any, *, after: float | None = None) -> None:
        if self.closed:  # shutting down: the run stays queued for the next process
            return
        loop = server_loop()
        if loop is None:
            if after is not None:
                timer = threading.Timer(after, self.dispatch, args=(model, session_pk))
                timer.daemon = True
                timer.start()
                return
            self._start_thread(model, session_pk)
            return
        if after is not None:  # a deadline (approvals): look then
            loop.call_soon_threadsafe(self._later, model, session_pk, after,
                                      context=contextvars.Context())
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        # a fresh context: the caller's may be inside a sync_to_async thread (its context
        # says so, and a drain inheriting it would refuse to reach the database)
        if running is loop:
            contextvars.Context().run(self._start, model, session_pk)
        else:
            loop.call_soon_threadsafe(self._start, model, session_pk,
                                      context=contextvars.Context())

    def _later(self, model: Any, session_pk: Any, after: float) -> None:
        asyncio.get_running_loop().call_later(after, self._start, model, session_pk,
                                              context=contextvars.Context())

    def _start(self, model: Any, session_pk: Any) -> None:
        """In the server loop: start a drain unless one of this session runs here already
        (it is then asked to look once more before it ends, so nothing waits for a sweep)."""
        key = (model, str(session_pk))
        retry = self._retries.pop(key, None)
        if retry is not None:
            retry.cancel()
        if self.closed:
            return
        if key in self._drains:
            self._again.add(key)
            return
        from .shutdown import install_signal_handler  # it imports this module

        install_signal_handler()  # a process that only drains shuts down gracefully too
        self._drains[key] = asyncio.get_running_loop().create_task(
            self._drain(key, model, session_pk), name=f"agent-drain-{session_pk}")

    async def _drain(self, key: tuple[Any, str], model: Any, session_pk: Any) -> None:
        retry_in = None
        try:
            while True:
                self._again.discard(key)
                try:
                    retry_in = await drain(model, session_pk, self._open)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("Draining the queue of %s %s failed", model.__name__,
                                     session_pk)
                if key not in self._again:
                    return
        finally:
            self._drains.pop(key, None)
            self._again.discard(key)
            if retry_in is not None and not self.closed:  # behind a lease: look again later
                loop = asyncio.get_running_loop()
                self._retries[key] = loop.call_later(
                    retry_in, self._start, model, session_pk, context=contextvars.Context())

    def _open(self) -> bool:
        return not self.closed

    def _start_thread(self, model: Any, session_pk: Any) -> None:
        """Outside a server loop: start a drain thread unless the session has one (it is
        then asked to look once more, and woken if it waits behind a lease). Every turn
        that ends with runs queued behind it dispatches, so without this, contended sessions
        gathered a thread per turn, each polling the lease and holding a connection."""
        key = (model, str(session_pk))
        with self._threads_lock:
            running = self._thread_drains.get(key)
            if running is not None:
                running.again = True
                running.wake.set()
                return
            state = self._thread_drains[key] = _ThreadDrain()
            thread = threading.Thread(target=self._drain_in_thread,
                                      args=(key, state, model, session_pk),
                                      name=f"agent-drain-{session_pk}", daemon=True)
            self._threads[thread] = None
            if not self._exit_hook:
                self._exit_hook = True
                _before_interpreter_exit(self._at_exit)
        try:
            thread.start()
        except BaseException:  # (no thread to be had): later dispatches must not wait on it
            with self._threads_lock:
                self._forget(thread, key, state)
            raise

    def _forget(self, thread: threading.Thread, key: tuple[Any, str],
                state: _ThreadDrain) -> None:
        """Under the lock: ``thread`` is no longer the drain of ``key`` (nor any)."""
        self._threads.pop(thread, None)
        if self._thread_drains.get(key) is state:
            del self._thread_drains[key]

    def _drain_in_thread(self, key: tuple[Any, str], state: _ThreadDrain, model: Any,
                         session_pk: Any) -> None:
        thread = threading.current_thread()
        try:
            while True:
                with self._threads_lock:
                    state.again = False
                    state.wake.clear()
                try:
                    retry_in = async_to_sync(self._tracked)(thread, model, session_pk)
                    close_old_connections()
                except asyncio.CancelledError:
                    break  # interrupted at exit (_at_exit): the turn recorded itself interrupted
                except Exception:
                    logger.exception("Draining the queue of %s %s failed", model.__name__,
                                     session_pk)
                    retry_in = None
                if retry_in is not None:  # behind a lease: look again then, or when woken
                    if not self._closing.is_set():  # (_at_exit sets it before waking us)
                        state.wake.wait(retry_in)
                    if self._closing.is_set():  # exiting: the holder drains its own queue
                        break
                    continue
                with self._threads_lock:  # ended in the lock a dispatch checks it under, so
                    if not state.again:   # a dispatch either sets ``again`` or starts a thread
                        del self._thread_drains[key]
                        break
        finally:
            with contextlib.suppress(Exception):
                close_old_connections()
            with self._threads_lock:
                self._forget(thread, key, state)
                # a dispatch that came before this thread died of something else (SystemExit
                # from a tool, say) is handed to a new thread, as it would have been
                redo = state.again and not self._closing.is_set() and not self.closed
            if redo:
                with contextlib.suppress(Exception):
                    self.dispatch(model, session_pk)

    async def _tracked(self, thread: threading.Thread, model: Any, session_pk: Any
                       ) -> float | None:
        """``thread``'s drain (run in a loop of its own by ``async_to_sync``), its task known
        to :meth:`_at_exit`, which may interrupt it."""
        with self._threads_lock:
            if thread in self._threads:
                self._threads[thread] = asyncio.current_task()
        try:
            return await drain(model, session_pk, self._open)
        finally:
            with self._threads_lock:
                if thread in self._threads:
                    self._threads[thread] = None

    def _at_exit(self) -> None:
        """The interpreter is exiting (a script that submitted with ``wait=False``, say):
        the drain threads stop waiting behind other processes' leases (those drain their own
        queues) and get up to ``SHUTDOWN_GRACE_SECONDS`` to run what they can claim; then
        nothing more is claimed and the turns still running are interrupted (recorded
        ``interrupted``, retryable, the lease released). Runs before ``concurrent.futures``
        refuses new work, which the turns' database calls need: a turn caught by that
        failed with "cannot schedule new futures after interpreter shutdown"."""
        self._closing.set()
        with self._threads_lock:
            for state in self._thread_drains.values():
                state.wake.set()
        finished = self.join(float(agent_settings.SHUTDOWN_GRACE_SECONDS))
        self.close()
        if finished:
            return
        with self._threads_lock:
            tasks = [task for task in self._threads.values() if task is not None]
        for task in tasks:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                task.get_loop().call_soon_threadsafe(task.cancel, SHUTDOWN)
        if not self.join(STOP_WAIT_SECONDS):  # a sync tool or call cancelling cannot stop
            logger.warning("Turns still running at exit did not end when interrupted; the "
                           "process exits once they do.")

    @property
    def draining(self) -> list[asyncio.Task]:
        """The drains running in this process's server loop."""
        return list(self._drains.values())

    def close(self) -> None:
        """Start no more drains (graceful shutdown); queued runs stay for another process."""
        self.closed = True
        for retry in self._retries.values():
            retry.cancel()
        self._retries.clear()

    def reopen(self) -> None:
        """Take runs again after :meth:`close` (an embedded server restarting; tests)."""
        self.closed = False
        self._closing.clear()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the drains running in threads (outside an ASGI
        server: a shell, a management command, a test). Whether all ended; a test waits here
        so that no drain reaches a database being torn down."""
        deadline = time.monotonic() + timeout
        while True:
            with self._threads_lock:
                threads = list(self._threads)
            if not threads:
                return True
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                with self._threads_lock:
                    return not any(thread.is_alive() for thread in self._threads)

    async def wait_closed(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the running drains (each ends after its current
        run, as no more are claimed once closed); interrupt what is left. Whether all
        finished in time."""
        tasks = self.draining
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel(SHUTDOWN)  # the run is recorded interrupted (retryable)
        if pending:
            await asyncio.wait(pending, timeout=STOP_WAIT_SECONDS)
        return not pending


class _ThreadDrain:
    """A session's drain thread outside a server loop (guarded by the executor's lock)."""

    __slots__ = ("again", "wake")

    def __init__(self) -> None:
        #: a dispatch came while it drained: look once more before ending
        self.again = False
        #: set by such a dispatch (and at exit): stop waiting behind a lease
        self.wake = threading.Event()


class TaskExecutor:
    """Enqueues a task on Django's Tasks framework (``django.tasks``, or the ``django-tasks``
    backport on Django 5.2) for each submission; a worker of the configured backend runs it.
    ``TASK_BACKEND`` and ``TASK_QUEUE_NAME`` choose where."""

    def dispatch(self, model: Any, session_pk: Any, *, after: float | None = None) -> None:
        from .tasks import run_queue  # the Tasks framework is an optional extra

        task = run_queue.using(backend=agent_settings.TASK_BACKEND,
                               queue_name=agent_settings.TASK_QUEUE_NAME)
        if after is not None:  # behind another executor's lease: look again when it expires
            task = task.using(run_after=timezone.now() + timedelta(seconds=after))
        task.enqueue(model._meta.label, str(session_pk))


def _before_interpreter_exit(callback: Callable[[], None]) -> None:
    """Call ``callback`` when the interpreter exits, before ``concurrent.futures`` shuts its
    executors down. :func:`atexit.register` is too late for that (it runs after), so this uses
    the hook ``concurrent.futures`` itself uses, where it exists; hooks run last-registered
    first, and ``concurrent.futures`` registered its own when it was imported, before this."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # not CPython 3.9+: the best there is
        atexit.register(callback)
        return
    with contextlib.suppress(RuntimeError):  # already shutting down: nothing to wait for
        register(callback)


def inline_executor() -> InlineExecutor:
    """This process's inline executor (a fresh one if another executor is configured, which
    has nothing to stop)."""
    current = executor()
    return current if isinstance(current, InlineExecutor) else InlineExecutor()

