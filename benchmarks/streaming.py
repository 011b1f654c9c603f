"""Streaming latency: the loopback server writes a delta -> a WebSocket client receives it.

An ASGI server process (daphne or uvicorn, ``BENCH_SERVER``) serves the live layer
(``benchmarks.asgi``) with the in-memory or the Redis channel layer; ``V`` logged-in viewers
(the ``websockets`` client, in the benchmark process) watch one conversation. Each turn streams
a reply of ``DELTAS`` text deltas, one every ``DELTA_GAP`` seconds, from the loopback Messages
API server (also in the benchmark process, so its ``SentEvent.at`` and the viewers' arrival
times come from the same monotonic clock). Latency of a delivery = arrival at a viewer's socket
(``live.StampedSocket``) - the moment the server wrote that delta; ``latency_at_reader`` times
the same deliveries when the viewer's reader task got them from websockets (close to what this
suite reported before 4042adf, which read the clock there without the timestamped socket).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from .stats import summary

DELTAS = 50
DELTA_GAP = 0.02
TEXT = " ".join(f"w{i}" for i in range(DELTAS))


def run_streaming(viewer_counts: list[int], turns: int, warmup: int) -> list[dict[str, Any]]:
    return asyncio.run(_run(viewer_counts, turns, warmup))


async def _run(viewer_counts: list[int], turns: int, warmup: int) -> list[dict[str, Any]]:
    from channels.db import database_sync_to_async

    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply

    from .live import (
        AsgiServer,
        StampedSocket,
        bench_user,
        connect_viewer,
        create_conversations,
        finished,
        session_cookie,
    )

    rows = []
    with LoopbackMessagesServer(keep_alive=True) as server:
        server.responder = lambda request: Reply.text(TEXT, delay=DELTA_GAP)
        asgi = AsgiServer({**os.environ, "BENCH_LOOPBACK_URL": server.base_url})
        try:
            await asgi.wait_ready()
            user = await database_sync_to_async(bench_user)()
            cookie = await database_sync_to_async(session_cookie)(user)
            for count in viewer_counts:
                (cid,) = await database_sync_to_async(create_conversations)(user, 1)
                viewers = [await connect_viewer(asgi.port, cid, cookie) for _ in range(count)]
                StampedSocket.unstamped = 0
                # each measured turn gives `count` deliveries per delta; keep the total bounded
                measured = max(3, turns // count) if count > 1 else turns
                latencies: list[float] = []
                read: list[float] = []  # the same deliveries, timed at the reader task
                for i in range(warmup + measured):
                    ref = f"c{count}-t{i}"
                    done = [v.wait_for(finished(ref)) for v in viewers]
                    await viewers[0].send({"type": "message", "input": ref, "ref": ref})
                    await asyncio.wait_for(asyncio.gather(*done), 120)
                    if i < warmup:
                        continue
                    (request,) = [r for r in server.message_requests if r.user_text == ref]
                    written = [(e.at, len(e.data["delta"]["text"]))
                               for e in request.events("content_block_delta")]
                    for viewer in viewers:
                        deltas = [(at, read_at, frame) for (at, frame), read_at
                                  in zip(viewer.frames, viewer.read_at, strict=True)
                                  if frame.get("type") == "delta" and frame.get("ref") == ref]
                        latencies += delivered(written, [(at, f) for at, _, f in deltas])
                        read += delivered(written, [(r, f) for _, r, f in deltas])
                for viewer in viewers:
                    viewer.clear()
                for viewer in viewers:
                    await viewer.close()
                rows.append({"viewers": count, "turns": measured, "deltas_per_turn": DELTAS,
                             "delta_gap_ms": DELTA_GAP * 1000, "latency": summary(latencies),
                             "latency_at_reader": summary(read),
                             "unstamped_reads": StampedSocket.unstamped})
        finally:
            asgi.close()
    return rows


def delivered(written: list[tuple[float, int]], frames: list[tuple[float, Any]]
              ) -> list[float]:
    """Per delta the server wrote (its time, its length), the latency until a viewer got the
    frame holding it. Deltas that reach the live layer while it publishes the one before are
    merged into one frame (runs.stream), so frames are matched to deltas by text offset."""
    latencies = []
    frames = iter(frames)
    received_up_to, received_at = 0, 0.0
    offset = 0
    for at, length in written:
        offset += length
        while received_up_to < offset:
            received_at, frame = next(frames)
            received_up_to += len(frame["text"])
        latencies.append(received_at - at)
    return latencies


def run_all(args: argparse.Namespace, base_env: dict[str, str]) -> dict[str, Any]:
    """Per ASGI server (``--servers``), both channel layers, each in a fresh worker (SQLite
    file database): ``{server: {layer: result}}``."""
    from .__main__ import _env, run_worker
    from .live import redis_reachable

    extra = ["--viewers", "1,50", "--turns", str(args.stream_turns), "--warmup", "1"]
    problem = redis_reachable(args.redis_url)
    results: dict[str, Any] = {}
    for kind in args.servers:
        layers = results[kind] = {}
        env = _env(base_env, DATABASE_URL=None, REDIS_URL=None, BENCH_SQLITE_JOURNAL="wal",
                   BENCH_SERVER=kind)
        layers["memory"] = run_worker("streaming", env, extra, args.timeout)
        if problem:
            layers["redis"] = {"skipped": f"Redis not reachable ({problem})"}
        else:
            env = _env(base_env, DATABASE_URL=None, REDIS_URL=args.redis_url,
                       BENCH_SQLITE_JOURNAL="wal", BENCH_SERVER=kind,
                       BENCH_REDIS_PREFIX=f"agent-bench-{os.getpid()}")
            layers["redis"] = run_worker("streaming", env, extra, args.timeout)
    return results



