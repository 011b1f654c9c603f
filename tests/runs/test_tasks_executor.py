"""The "tasks" executor across processes: a ``wait=False`` turn is enqueued on the django-tasks-db
backend, run by a separate ``db_worker`` process, and streamed to a WebSocket viewer on a daphne
process through the Redis channel layer.

Each process sends its own API key to the loopback Messages API server (``AGENT_LIVE_API_KEY``),
so the recorded request says which process ran the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django_tasks_db")

import websockets
from channels.db import database_sync_to_async
from django.db import connection
from django.test import override_settings
from django_tasks_db.models import DBTaskResult

from django_agent_session.models import AgentRun, RunStatus
from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
from django_agent_session.testing.processes import LoggedProcess
from tests.helpers.live_server import (
    ROOT,
    create_chat,
    server_processes,
    session_cookie,
    wait_until,
    ws_path,
)
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import ChatAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_passwords")]

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
#: the Tasks backend alias and queue the executor is told to use (``TASK_BACKEND``,
#: ``TASK_QUEUE_NAME``), the only ones the worker polls
BACKEND, QUEUE = "database", "agent_runs"
#: the ``TASKS`` setting of every process of the test: django-tasks-db, under "default" too (a
#: task enqueued there, or on another queue, would never run)
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"},
         BACKEND: {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": [QUEUE]}}
RUN_QUEUE = "django_agent_session.runs.tasks.run_queue"
#: long enough (~40 streamed chunks, 30 ms apart) that nobody finishes it by accident
REPLY = " ".join(f"word{i}" for i in range(40))


def process_env(server: LoopbackMessagesServer, prefix: str, api_key: str) -> dict[str, str]:
    """The environment tests/live_settings.py reads: the test database, this test's Redis
    prefix, the loopback server (called with ``api_key``), the "tasks" executor and its
    backends."""
    return {"AGENT_LIVE_DB_NAME": str(connection.settings_dict["NAME"]),
            "AGENT_LIVE_REDIS_URL": REDIS_URL, "AGENT_LIVE_REDIS_PREFIX": prefix,
            "AGENT_LIVE_LOOPBACK_URL": server.base_url, "AGENT_LIVE_API_KEY": api_key,
            "AGENT_LIVE_EXECUTOR": "tasks", "AGENT_LIVE_TASKS": json.dumps(TASKS),
            "AGENT_LIVE_TASK_BACKEND": BACKEND, "AGENT_LIVE_TASK_QUEUE": QUEUE}


class WorkerProcess(LoggedProcess):
    """``manage.py db_worker`` (django-tasks-db) with tests/live_settings.py, polling
    ``QUEUE`` of the ``BACKEND`` backend."""

    def __init__(self, env: dict[str, str]) -> None:
        self.worker_id = f"agent-test-{uuid.uuid4().hex[:12]}"
        super().__init__(
            [sys.executable, "-m", "django", "db_worker", "--backend", BACKEND,
             "--queue-name", QUEUE, "--interval", "0.05", "--no-startup-delay", "--no-reload",
             "--worker-id", self.worker_id],
            name="worker", cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                 "DJANGO_SETTINGS_MODULE": "tests.live_settings"})

    def output(self, tail: int | None = 4000) -> str:
        return super().output(tail)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker has started polling."""
        deadline = time.monotonic() + timeout
        while "Starting worker" not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"db_worker exited ({self.proc.returncode}):\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"db_worker did not start:\n{self.output()}")
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def worker_process(env: dict[str, str]) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env)
    try:
        yield worker
    finally:
        worker.stop()  # SIGTERM: the worker exits at once when idle


async def receive_until(socket: Any, until: Any, timeout: float = 15.0) -> list[dict]:
    frames: list[dict] = []

    async def read() -> None:
        while True:
            frames.append(json.loads(await socket.recv()))
            if until(frames[-1]):
                return
    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out; got {frames}") from None
    return frames


def frame(kind: str, **match: Any):
    return lambda f: f["type"] == kind and all(f.get(k) == v for k, v in match.items())


def text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(
        b.get("text", "") for b in content if b.get("type") == "text")


def api_key(request: Any) -> str | None:
    """The API key a recorded request was sent with (the SDK sends ``x-api-key`` or, in newer
    versions, ``Authorization: Bearer``)."""
    headers = request.headers
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")


@database_sync_to_async
def run_queue_tasks() -> list[DBTaskResult]:
    return list(DBTaskResult.objects.filter(task_path=RUN_QUEUE).order_by("enqueued_at"))


@database_sync_to_async
def finished_tasks() -> bool:
    return not DBTaskResult.objects.filter(task_path=RUN_QUEUE).exclude(
        status__in=["SUCCESSFUL", "FAILED"]).exists()


@database_sync_to_async
def status_of(run: AgentRun) -> str:
    return AgentRun.objects.get(pk=run.pk).status


async def test_a_queued_turn_runs_on_a_db_worker_and_streams_to_a_viewer_on_daphne(
        user, redis_prefix):
    submitted = threading.Event()  # the reply waits after its first delta until it is set
    reply = Reply.text(REPLY, delay=0.03).held_after(1, until=submitted)
    with LoopbackMessagesServer([reply]) as loopback, \
            override_settings(TASKS=TASKS, AGENT_SESSION=loopback_settings(
                loopback, EXECUTOR="tasks", TASK_BACKEND=BACKEND, TASK_QUEUE_NAME=QUEUE,
                # a turn run here by mistake would wait on the held reply: fail, not hang
                ANTHROPIC={"API_KEY": "test-process", "TIMEOUT": 10})), \
            server_processes(1, process_env(loopback, redis_prefix, "daphne")) as (daphne,), \
            worker_process(process_env(loopback, redis_prefix, "worker")) as worker:
        session = await create_chat(user)
        cookie = await session_cookie(user)
        await asyncio.gather(daphne.wait_ready(), worker.wait_ready())
        async with websockets.connect(daphne.url(ws_path(session.pk)), origin=daphne.origin,
                                      additional_headers={"Cookie": cookie}, open_timeout=10,
                                      close_timeout=2) as socket:
            state = (await receive_until(socket, frame("session.state")))[-1]
            assert state["live"]

            # the test process submits: the call commits a queued run and enqueues a task
            run = await database_sync_to_async(ChatAgent.objects.continue_session)(
                session.pk, "Hello, worker", wait=False)
            assert isinstance(run, AgentRun) and run.status == RunStatus.QUEUED
            # returned before the turn could have run (its reply is held)
            assert await status_of(run) in (RunStatus.QUEUED, RunStatus.RUNNING)
            (task,) = await run_queue_tasks()
            assert (task.backend_name, task.queue_name) == (BACKEND, QUEUE)
            assert task.args_kwargs == {"args": ["testapp.ChatAgent", str(session.pk)],
                                        "kwargs": {}}
            submitted.set()

            frames = await receive_until(
                socket, frame("run.status", run_id=str(run.pk), status="completed"), timeout=20)

        assert await status_of(run) == RunStatus.COMPLETED
        ours = [f for f in frames if f.get("run_id") == str(run.pk)]
        kinds = [f["type"] for f in ours]
        assert kinds[0] == "run.status" and ours[0]["status"] == "started"
        assert kinds[-2:] == ["message", "run.status"]
        deltas = [f for f in ours if f["type"] == "delta"]
        assert len(deltas) > 5 and kinds[1:-2] == ["delta"] * len(deltas)
        assert [f["n"] for f in deltas] == list(range(1, len(deltas) + 1))
        assert "".join(f["text"] for f in deltas) == REPLY
        assert text(ours[-2]) == REPLY

        # the worker ran it: the only model request carried its key (not the test process's,
        # nor the daphne process's), and its task row records it
        assert [api_key(r) for r in loopback.message_requests] == ["worker"]
        assert loopback.message_requests[0].user_text == "Hello, worker"
        # (the task ends a moment after the run it ran: it looks at the queue once more)
        await wait_until(finished_tasks, timeout=10)
        (task,) = await run_queue_tasks()
        assert task.status == "SUCCESSFUL" and task.worker_ids == [worker.worker_id]
        assert task.return_value is None  # nothing left queued behind a lease
