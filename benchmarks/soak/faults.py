"""Faults: of the model, of Redis, of PostgreSQL. Nothing may wedge a session.

``model``
    Through the Python API (plain and streamed calls), each fault ``repeat`` times on a
    session that already has a turn: a model that hangs (past the client timeout), drops the
    stream, answers garbage, ends the stream with an error event, answers 500, or sends NUL and
    lone surrogates in its text; and a user message with NUL and lone surrogates. Each turn
    must end as completed or with a typed error (``AgentSessionError``); then the next turn
    on the session must succeed (else the session is wedged).
``redis``
    A WebSocket viewer's turn streams through daphne on the soak's own Redis; mid-stream Redis
    is stopped, and started again 2 s later on the same port.
``pg-terminate``
    The same, but every backend of the database is killed (``pg_terminate_backend``)
    mid-stream: the turn's commit finds its connection gone.
``pg-restart``
    The same, but the soak's own PostgreSQL cluster is restarted mid-stream.

After a service fault, a client reconnects (retrying for up to 90 s) and sends a message;
time to recover is from the fault's end (the service back) to that message completed. A
session whose next message does not complete is wedged. The turn caught by the fault may end
either way (completed, or failed with its error code, counted by code).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from typing import Any

from .common import Part, PrivatePostgres, PrivateRedis

LONG = " ".join(f"word{i}" for i in range(60))
DELAY = 0.05  # seconds between deltas: a 3 s stream
NASTY = "nul\x00 and lone \ud800 surrogates \udfff"
RECOVER_LIMIT = 90.0
#: codes of errors the library did not expect (it wraps them, but does not name them)
UNTYPED = ("internal_error", "agent_session_error")


def run(params: dict[str, Any]) -> Part:
    part = Part()
    model = _model_faults(params.get("repeat", 1))
    part.must_be_zero("model: untyped errors", model["untyped"])
    part.must_be_zero("model: sessions wedged", model["wedged"])
    part.figures["model: faulty turns"] = model["turns"]
    part.figures["model: typed errors"] = sum(model["typed"].values())
    part.figures["model: completed anyway"] = model["completed"]
    part.figures["model: recover p99 s"] = model["recover_max_s"]
    part.details["model"] = model
    if not params.get("service"):
        part.notes.append("Redis and PostgreSQL faults: skipped on SQLite (they need the "
                          "soak's own Redis and PostgreSQL; they run on postgres)")
        return part
    services = []
    if os.environ.get("SOAK_REDIS_PORT"):
        services.append("redis")
    else:
        part.notes.append("Redis fault skipped: no redis-server of the soak's own")
    services.append("pg-terminate")
    if os.environ.get("SOAK_PRIVATE_PG"):
        services.append("pg-restart")
    else:
        part.notes.append("PostgreSQL restart skipped: not the soak's own cluster "
                          "(--postgres-url)")
    plan = [name for _ in range(params.get("repeat", 1)) for name in services]
    results = {f"{name}#{i}": result
               for i, (name, result) in enumerate(asyncio.run(_service_faults(plan)))}
    wedged = sum(r["wedged"] for r in results.values())
    part.must_be_zero("services: sessions wedged", wedged)
    part.figures["services: faults"] = len(results)
    part.figures["services: turn ends"] = ", ".join(
        f"{k} {v}" for k, v in sorted(Counter(r["outcome"] for r in results.values()).items()))
    recovered = [r["recover_s"] for r in results.values() if r["recover_s"] is not None]
    part.figures["services: recover max s"] = max(recovered) if recovered else None
    for name in services:
        times = [r["recover_s"] for k, r in results.items() if k.startswith(name + "#")
                 and r["recover_s"] is not None]
        part.figures[f"{name}: recover s"] = max(times) if times else None
    part.details["services"] = results
    return part


# -- model faults ------------------------------------------------------------------------------

def _faults() -> dict[str, Any]:
    from django_agent_session.testing.loopback import Reply

    return {
        "hang": Reply.hang(),
        "dropped-stream": Reply.text(LONG, chunk_size=4, drop_after=3),
        "garbage": Reply.garbage(),
        "error-event": Reply.text(LONG, chunk_size=4, error_after=2),
        "500": Reply.server_error(),
        "nul": Reply.nasty_text("a NUL \x00 in the reply"),
        "lone-surrogate": Reply.nasty_text("a lone \ud800 surrogate in the reply"),
        "nul-and-surrogates-input": Reply.text("fine"),  # the user's message is the fault
    }


def _model_faults(repeat: int) -> dict[str, Any]:
    from django.conf import settings
    from django.test import override_settings

    from django_agent_session import exceptions as exc
    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
    from tests.testapp.models import ChatAgent

    typed: Counter[str] = Counter()
    untyped: list[str] = []
    wedged: list[str] = []
    completed = turns = 0
    recover: list[float] = []
    with LoopbackMessagesServer() as server:
        config = {**settings.AGENT_SESSION, "TURN_WAIT_SECONDS": 10.0,
                  "ANTHROPIC": {"BASE_URL": server.base_url, "API_KEY": "soak",
                                "MAX_RETRIES": 0, "TIMEOUT": 1.0}}
        with override_settings(AGENT_SESSION=config):
            for name, reply in _faults().items():
                for path in ("plain", "streamed"):
                    for _ in range(repeat):
                        progress = (lambda kind, data: None) if path == "streamed" else None
                        server.responder = lambda request, fault=reply: (
                            fault if request.user_text == "faulty turn"
                            else Reply.text("fine"))
                        session = ChatAgent.objects.start_session(
                            "first question", instruction_args={"company_name": "Acme"})
                        text = NASTY if name.endswith("-input") else "faulty turn"
                        turns += 1
                        started = time.monotonic()
                        try:
                            ChatAgent.objects.continue_session(session.pk, text,
                                                               on_progress=progress)
                            completed += 1
                        except exc.AgentSessionError as error:
                            if error.code in UNTYPED:  # an unexpected error, wrapped
                                untyped.append(f"{name}/{path}: {error.code}: {error}"[:300])
                            else:
                                typed[f"{name}: {error.code}"] += 1
                        except Exception as error:  # noqa: BLE001 (the finding)
                            untyped.append(f"{name}/{path}: {type(error).__name__}: "
                                           f"{error}"[:300])
                        try:
                            after = ChatAgent.objects.continue_session(session.pk, "and now?")
                            after.get_context()
                            recover.append(time.monotonic() - started)
                        except Exception as error:  # noqa: BLE001
                            wedged.append(f"{name}/{path}: {type(error).__name__}: "
                                          f"{error}"[:300])
    return {"turns": turns, "completed": completed, "typed": dict(typed),
            "untyped": len(untyped), "untyped_examples": untyped[:10],
            "wedged": len(wedged), "wedged_examples": wedged[:10],
            "recover_max_s": round(max(recover), 3) if recover else None}


# -- service faults ----------------------------------------------------------------------------

def _database_url() -> str:
    return os.environ["DATABASE_URL"]


def _terminate_backends() -> int:
    """``pg_terminate_backend`` of every other connection to the soak's database."""
    import psycopg

    from ..db import with_database

    url = _database_url()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", [name]).fetchall()
    return len(rows)


async def _service_faults(plan: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Each fault of ``plan`` in turn, on a fresh conversation, all through one daphne."""
    from channels.db import database_sync_to_async

    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply

    from ..live import AsgiServer, session_cookie
    from .clients import soak_user

    def reply(request: Any) -> Any:
        if request.user_text.startswith("long"):
            return Reply.text(LONG, delay=DELAY)
        return Reply.text("short answer")

    results = []
    with LoopbackMessagesServer() as server:
        server.responder = reply
        daphne = AsgiServer({**os.environ, "BENCH_LOOPBACK_URL": server.base_url})
        try:
            await daphne.wait_ready()
            user = await database_sync_to_async(soak_user)("soak")
            cookie = await database_sync_to_async(session_cookie)(user)
            for name in plan:
                results.append((name, await _service_fault(name, server, daphne, cookie, user)))
        finally:
            logged = daphne_lines(daphne)
            daphne.close()
    if results:
        results[-1][1]["daphne_log"] = logged[-12:]
    return results


async def _service_fault(name: str, server: Any, daphne: Any, cookie: str, user: Any
                         ) -> dict[str, Any]:
    from channels.db import database_sync_to_async
    from django.db import close_old_connections

    from ..live import create_conversations
    from .clients import open_ws

    redis = PrivateRedis(int(os.environ["SOAK_REDIS_PORT"]), os.environ["SOAK_REDIS_DIR"]) \
        if os.environ.get("SOAK_REDIS_PORT") else None
    postgres = PrivatePostgres(int(os.environ["SOAK_PG_PORT"]), os.environ["SOAK_PRIVATE_PG"]) \
        if os.environ.get("SOAK_PRIVATE_PG") else None
    result: dict[str, Any] = {"fault": name, "outcome": "?", "wedged": 0, "recover_s": None}
    await database_sync_to_async(close_old_connections)()
    (cid,) = await database_sync_to_async(create_conversations)(user, 1)
    ws = await open_ws(daphne.port, cid, cookie)
    try:
        seen = len(server.message_requests)
        await ws.send(json.dumps({"type": "message", "input": "long turn", "ref": "f1"}))
        deadline = time.monotonic() + 30
        while not any(r.events("content_block_delta")
                      for r in server.message_requests[seen:]):
            if time.monotonic() > deadline:
                raise RuntimeError("the turn never streamed")
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # mid-stream
        try:
            if name == "redis":
                assert redis is not None
                await asyncio.to_thread(redis.stop)
                await asyncio.sleep(2.0)
            elif name == "pg-terminate":
                result["backends_terminated"] = await asyncio.to_thread(_terminate_backends)
            elif name == "pg-restart":
                assert postgres is not None
                await asyncio.to_thread(postgres.stop, "fast")
                await asyncio.sleep(1.0)
        finally:  # always bring back what was stopped
            if name == "redis" and redis is not None and not redis.running():
                await asyncio.to_thread(redis.start)
            if name == "pg-restart" and postgres is not None:
                with contextlib.suppress(RuntimeError):  # already running
                    await asyncio.to_thread(postgres.start)
        back = time.monotonic()
        await database_sync_to_async(close_old_connections)()
        result["recover_s"], result["next_turn"] = await _recover(daphne.port, cid, cookie,
                                                                  back)
        if result["recover_s"] is None:
            result["wedged"] = 1
        result["outcome"] = await database_sync_to_async(_outcome)(cid, "f1")
    finally:
        with contextlib.suppress(Exception):
            await ws.close()
    return result


def daphne_lines(daphne: Any) -> list[str]:
    from ..restart import log_lines

    return list(log_lines(daphne))


def _outcome(cid: Any, ref: str) -> str:
    from django.db import connection

    from django_agent_session.records import AgentRun

    connection.close()
    run = AgentRun.objects.filter(session_id=cid, idempotency_key=ref).first()
    if run is None:
        return "no run"
    code = (run.error or {}).get("code")
    return f"{run.status} ({code})" if code else str(run.status)


async def _recover(port: int, cid: Any, cookie: str, back: float
                   ) -> tuple[float | None, list[str]]:
    """Reconnect and send a message until it completes (at most ``RECOVER_LIMIT`` s)."""
    from .clients import open_ws

    tried: list[str] = []
    attempt = 0
    while time.monotonic() - back < RECOVER_LIMIT:
        attempt += 1
        ws = None
        try:
            ws = await open_ws(port, cid, cookie, timeout=10)
            ref = f"after-{attempt}"
            await ws.send(json.dumps({"type": "message", "input": "short after", "ref": ref}))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
                kind, status = frame.get("type"), frame.get("status")
                if frame.get("ref") != ref:
                    continue
                if (kind == "run.status" or kind == "ack") and status == "completed":
                    return round(time.monotonic() - back, 3), tried
                if kind == "run.status" and status in ("failed", "cancelled") or kind == "error":
                    tried.append(f"{kind} {status or ''} {frame.get('code') or frame.get('error')}")
                    break
        except Exception as error:  # noqa: BLE001 (refused, closed, timed out: try again)
            tried.append(f"{type(error).__name__}: {error}"[:160])
        finally:
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close()
        await asyncio.sleep(0.5)
    return None, tried[-10:]
