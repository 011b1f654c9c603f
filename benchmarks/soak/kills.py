"""Kills: ``kill -9`` of live owners mid-turn under load, then a rolling graceful restart.

``chaos``
    The restart benchmark's chaos run (:func:`benchmarks.restart.run_chaos`): ``P`` daphne
    processes, one client per conversation keeping two messages in flight (resending what was
    not acknowledged after a reconnect), a killer SIGKILLing a process that is streaming a
    model reply and starting it again, ``K`` times. Short turn and owner leases.
``rolling``
    The same clients; each of the ``R`` processes in turn gets SIGTERM (it drains: its leases
    are released, its running turns end or are interrupted within the shutdown grace) and is
    started again on its port once it has exited.

Then every conversation must still take a turn through the Python API (else it is counted as
unusable). Figures: lost and doubled messages (acknowledged, then neither ended nor in the
context / twice), zombies and stuck runs, unusable sessions, and the dead windows: from a kill
to the next model call of each conversation whose turn was killed, and from a SIGTERM to the
restarted process accepting connections.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from ..stats import summary
from .common import Part


def run(params: dict[str, Any]) -> Part:
    """The worker's environment sets the short leases (``BENCH_TURN_LEASE``...) for it and
    for the daphne processes it starts."""
    from ..restart import run_chaos

    os.environ["BENCH_SEED"] = str(params["seed"])
    lease = os.environ.get("BENCH_TURN_LEASE", "120")
    part = Part()
    chaos = run_chaos(params["processes"], params["conversations"], params["kills"],
                      params["seconds"])
    rolling = asyncio.run(_rolling(params["rolling"], params["conversations"], params["seed"]))
    unusable = _unusable()
    for name, result in (("kill -9", chaos), ("rolling", rolling)):
        part.must_be_zero(f"{name}: lost", result["lost"])
        part.must_be_zero(f"{name}: doubled", result["doubled"])
        part.must_be_zero(f"{name}: zombie runs", result["zombies"])
        part.must_be_zero(f"{name}: stuck runs", result["stuck"])
    part.must_be_zero("sessions left unusable", unusable["unusable"])
    recover = chaos["kill_to_next_model_call"]
    part.figures.update({
        "kills": chaos["kills"], "kill -9: messages acked": chaos["acked"],
        "kill -9: runs interrupted": chaos["interrupted"],
        "kill -9: dead window p50 s": _s(recover.get("median_ms")),
        "kill -9: dead window max s": chaos["kill_to_next_model_call_max_s"],
        "rolling: restarts": rolling["restarts"],
        "rolling: messages acked": rolling["acked"],
        "rolling: runs interrupted": rolling["interrupted"],
        "rolling: SIGTERM to accepting max s": rolling["down_max_s"],
    })
    part.notes.append(f"turn/owner lease {lease} s (a killed turn waits out its lease)")
    part.details = {"chaos": chaos, "rolling": rolling, "after": unusable}
    return part


def _s(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000, 3)


async def _rolling(processes: int, conversations: int, seed: int) -> dict[str, Any]:
    from channels.db import database_sync_to_async

    from django_agent_session.testing.loopback import LoopbackMessagesServer

    from ..restart import (
        Slot,
        account_chaos,
        api_key,
        chats_settled,
        chats_under_way,
        reply_for,
    )

    rng = random.Random(seed)
    with LoopbackMessagesServer() as server:
        server.responder = reply_for
        env = {**os.environ, "BENCH_LOOPBACK_URL": server.base_url}
        slots = [Slot(i, env) for i in range(processes)]
        tasks: list[asyncio.Task] = []
        downs: list[float] = []
        try:
            ids, clients, tasks, poller = await chats_under_way(slots, conversations)
            await asyncio.sleep(2.0)
            for slot in rng.sample(slots, len(slots)):
                stopped = time.monotonic()
                await asyncio.to_thread(slot.stop)  # SIGTERM, and wait for the exit
                await slot.start()
                downs.append(time.monotonic() - stopped)
                await asyncio.sleep(1.0)
            pending = await chats_settled(clients, tasks, poller, timeout=120)
        finally:
            for task in tasks:
                task.cancel()
            for slot in slots:
                slot.stop()
        calls = [(api_key(r), r.user_text) for r in server.message_requests]
    result = await database_sync_to_async(account_chaos)(clients, ids, calls)
    result.update({"restarts": len(downs), "down": summary(downs),
                   "down_max_s": round(max(downs), 3) if downs else None,
                   "unsettled_clients": len(pending)})
    return result


def _unusable() -> dict[str, Any]:
    """Every conversation takes one more turn through the Python API (waiting out a dead
    lease if it must): those that cannot are unusable."""
    from django.conf import settings
    from django.test import override_settings

    from django_agent_session import exceptions as exc
    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
    from tests.testapp.models import ChatAgent

    failed: list[str] = []
    with LoopbackMessagesServer() as server:
        server.responder = lambda request: Reply.text("still here")
        config = {**settings.AGENT_SESSION, "TURN_WAIT_SECONDS": 60.0,
                  "ANTHROPIC": {"BASE_URL": server.base_url, "API_KEY": "after",
                                "MAX_RETRIES": 0}}
        with override_settings(AGENT_SESSION=config):
            ids = list(ChatAgent._base_manager.values_list("pk", flat=True))
            for pk in ids:
                try:
                    ChatAgent.objects.continue_session(pk, "are you still usable?")
                except exc.AgentSessionError as error:
                    failed.append(f"{pk}: {error.code}")
    return {"sessions": len(ids), "unusable": len(failed), "examples": failed[:5]}
