"""Driving an async run observer from a sync turn: on the ASGI server's loop when the turn
runs in a sync view under ASGI (the in-memory layer's queues belong to it), else on a loop of
the run's own that is gone when the run ends."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async

from django_agent_session.store.watch import SyncWatch


class Watcher:
    def __init__(self) -> None:
        self.seen: list[tuple[str, asyncio.AbstractEventLoop]] = []

    async def on_progress(self, kind: str, data: dict) -> None:
        await asyncio.sleep(0)
        self.seen.append((kind, asyncio.get_running_loop()))

    async def finished(self, record, error) -> None:
        self.seen.append(("finished", asyncio.get_running_loop()))


def drive(watcher: Watcher) -> None:
    watch = SyncWatch(watcher)
    try:
        for kind in ("run.started", "delta", "delta"):
            watch.on_progress(kind, {})
        watch.finished(None, None)
    finally:
        watch.close()


async def test_a_sync_view_under_asgi_publishes_on_the_servers_loop():
    server = asyncio.get_running_loop()
    watcher = Watcher()
    await sync_to_async(drive)(watcher)
    assert [kind for kind, _ in watcher.seen] == ["run.started", "delta", "delta", "finished"]
    assert all(loop is server for _, loop in watcher.seen)


def test_outside_asgi_a_loop_of_the_runs_own_is_used_and_stopped():
    watcher = Watcher()
    drive(watcher)
    assert [kind for kind, _ in watcher.seen] == ["run.started", "delta", "delta", "finished"]
    (loop,) = {loop for _, loop in watcher.seen}
    assert loop.is_closed()
    assert not any(t.name == "agent-run-observer" for t in threading.enumerate())


def test_a_frame_the_layer_does_not_take_in_time_is_dropped(monkeypatch, caplog):
    from django_agent_session.store import watch as module

    class Hung(Watcher):
        async def on_progress(self, kind: str, data: dict) -> None:
            await asyncio.sleep(60)

    monkeypatch.setattr(module, "FRAME_TIMEOUT_SECONDS", 0.2)
    watcher = Hung()
    drive(watcher)
    assert watcher.seen == [("finished", watcher.seen[0][1])]  # the run went on
    assert "dropped" in caplog.text


pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # no coroutine left unawaited
