"""Scale of the live layer (Redis channel layer, PostgreSQL).

Each runs on the ASGI server ``BENCH_SERVER`` names (daphne or uvicorn; ``--servers``).

``idle_memory``
    one server process; ``N`` conversations are opened, each with one logged-in viewer (so each
    has a running live session, a consumer and a socket) and left idle. Memory per idle
    conversation = growth of the process's RSS / ``N``.
``throughput``
    1, 2 and 4 server processes; ``C`` conversations, each watched by one viewer connected to
    process ``i % P``, each sending its next message as soon as the previous turn completed
    (closed loop) for a fixed time. The model answers after ``MODEL_DELAY`` (50 ms) through the
    loopback server. Reported: completed turns per second, the per-turn latency seen by the
    client (send -> ``run.status`` completed), and the CPU time the server processes spent per
    completed turn (from /proc: steadier than turns/s on a shared machine, as it does not
    depend on what else got the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from .stats import summary

MODEL_DELAY = 0.05
REPLY = "A short answer from the model, about twenty words long, to keep the turn realistic."


def run_idle_memory(conversations: int) -> list[dict[str, Any]]:
    return asyncio.run(_idle(conversations))


async def _idle(count: int) -> list[dict[str, Any]]:
    from channels.db import database_sync_to_async

    from django_agent_session.testing.loopback import LoopbackMessagesServer

    from .live import AsgiServer, bench_user, connect_viewer, create_conversations, session_cookie

    with LoopbackMessagesServer(keep_alive=True) as server:
        asgi = AsgiServer({**os.environ, "BENCH_LOOPBACK_URL": server.base_url})
        viewers = []
        try:
            await asgi.wait_ready()
            user = await database_sync_to_async(bench_user)()
            cookie = await database_sync_to_async(session_cookie)(user)
            ids = await database_sync_to_async(create_conversations)(user, count + 5)
            for cid in ids[:5]:  # warm up: imports, pools, first allocations
                viewers.append(await connect_viewer(asgi.port, cid, cookie))
            await asyncio.sleep(2)
            before = asgi.rss_kib()
            started = time.monotonic()
            for cid in ids[5:]:
                viewers.append(await connect_viewer(asgi.port, cid, cookie))
            opened_in = time.monotonic() - started
            await asyncio.sleep(3)  # idle: let tickers, presence and GC settle
            after = asgi.rss_kib()
        finally:
            for viewer in viewers:
                await viewer.close()
            asgi.close()
    return [{"conversations": count, "rss_before_mib": before / 1024,
             "rss_after_mib": after / 1024, "kib_per_conversation": (after - before) / count,
             "open_seconds": round(opened_in, 2)}]


def run_throughput(processes: list[int], conversations: int, seconds: float
                   ) -> list[dict[str, Any]]:
    return [asyncio.run(_throughput(p, conversations, seconds)) for p in processes]


async def _throughput(count: int, conversations: int, seconds: float) -> dict[str, Any]:
    from channels.db import database_sync_to_async

    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply

    from .live import (
        AsgiServer,
        bench_user,
        connect_viewer,
        create_conversations,
        finished,
        session_cookie,
    )

    with LoopbackMessagesServer(keep_alive=True) as server:
        server.responder = lambda request: Reply.stall(MODEL_DELAY, then=Reply.text(REPLY))
        asgis = [AsgiServer({**os.environ, "BENCH_LOOPBACK_URL": server.base_url})
                 for _ in range(count)]
        viewers = []
        try:
            for asgi in asgis:
                await asgi.wait_ready()
            user = await database_sync_to_async(bench_user)()
            cookie = await database_sync_to_async(session_cookie)(user)
            ids = await database_sync_to_async(create_conversations)(user, conversations)
            for i, cid in enumerate(ids):
                viewers.append(await connect_viewer(asgis[i % count].port, cid, cookie))

            latencies: list[float] = []
            ran = 0  # turns that ended while counting, in the window or just after it
            stop_at: float | None = None
            counting = False

            async def loop(phase: str, index: int, viewer: Any) -> int:
                nonlocal ran
                done = 0
                turn = 0
                while stop_at is None or time.monotonic() < stop_at:
                    # a ref names a message (its idempotency key): unique across phases
                    ref = f"{phase}-v{index}-t{turn}"
                    turn += 1
                    waiter = viewer.wait_for(finished(ref))
                    sent = time.monotonic()
                    await viewer.send({"type": "message", "input": f"turn {turn}", "ref": ref})
                    try:
                        at, frame = await asyncio.wait_for(waiter, 60)
                    except TimeoutError:
                        seen = [f for _, f in viewer.frames][-5:]
                        raise RuntimeError(f"turn {ref} never finished; last frames {seen}"
                                           ) from None
                    viewer.clear()
                    if counting:
                        ran += 1
                    if counting and frame.get("status") == "completed" and \
                            (stop_at is None or at <= stop_at):
                        done += 1
                        latencies.append(at - sent)
                return done

            # warm-up: one turn per conversation, then the measured window
            stop_at = time.monotonic() + 0.001
            await asyncio.gather(*(loop("warm", i, v) for i, v in enumerate(viewers)))
            counting = True
            start = time.monotonic()
            stop_at = start + seconds
            cpu_before = sum(asgi.cpu_seconds() for asgi in asgis)
            done = sum(await asyncio.gather(*(loop("run", i, v)
                                              for i, v in enumerate(viewers))))
            # every loop has ended: the window plus the turns that were under way at its end
            cpu_spent = sum(asgi.cpu_seconds() for asgi in asgis) - cpu_before
            failed = sum(1 for r in server.message_requests if r.status not in (200, None))
        finally:
            for viewer in viewers:
                await viewer.close()
            for asgi in asgis:
                asgi.close()
    return {"processes": count, "conversations": conversations, "turns": done,
            "seconds": seconds, "turns_per_second": round(done / seconds, 1),
            "model_delay_ms": MODEL_DELAY * 1000, "model_errors": failed,
            "cpu_ms_per_turn": round(cpu_spent * 1000 / max(ran, 1), 2),
            "turn_latency": summary(latencies)}


#: ``--scale-parts`` names and the result key of each
PARTS = {"idle": "idle_memory", "throughput": "throughput"}


def run_all(args: argparse.Namespace, base_env: dict[str, str]) -> dict[str, Any]:
    """Both measurements on PostgreSQL and Redis, per ASGI server (``--servers``), each in a
    fresh worker: ``{server: {"idle_memory": result, "throughput": result}}``."""
    from .__main__ import _env, run_worker
    from .db import BENCH_DB_NAME, postgres_reachable, with_database
    from .live import redis_reachable

    problem = postgres_reachable(args.postgres_url)
    why = f"PostgreSQL not reachable ({problem})" if problem else None
    if why is None and (problem := redis_reachable(args.redis_url)):
        why = f"Redis not reachable ({problem})"
    parts = getattr(args, "scale_parts", ["idle", "throughput"])
    if why is not None:
        return {kind: {name: {"skipped": why} for part, name in PARTS.items() if part in parts}
                for kind in args.servers}
    results: dict[str, Any] = {}
    for kind in args.servers:
        env = _env(base_env, DATABASE_URL=with_database(args.postgres_url, BENCH_DB_NAME),
                   REDIS_URL=args.redis_url, BENCH_REDIS_PREFIX=f"agent-bench-{os.getpid()}",
                   BENCH_SERVER=kind)
        measured = results[kind] = {}
        if "idle" in parts:
            measured["idle_memory"] = run_worker(
                "idle_memory", env, ["--conversations", str(args.conversations)], args.timeout)
        if "throughput" in parts:
            measured["throughput"] = run_worker(
                "throughput", env, ["--processes", getattr(args, "processes", "1,2,4"),
                                    "--conversations", str(args.load_conversations),
                                    "--seconds", str(args.seconds)], args.timeout)
    return results
