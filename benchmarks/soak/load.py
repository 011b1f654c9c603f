"""Load: many turns from several OS processes over a few sessions, on three surfaces.

``P`` client processes share ``S`` sessions. Process ``i`` speaks through the Python API
(``continue_session``, in threads), REST (``POST .../continue/`` with an ``Idempotency-Key``)
or WebSocket (``message`` frames with a ``ref``) against real daphne processes, by ``i % 3``.
Each process runs ``C`` streams; a stream sends one message at a time, each to a session drawn
at random (seeded), so streams of different processes collide on the same sessions all the
time. A message turned away as busy (``SessionBusy``, 409, ``session_busy``/``queue_full``) is
sent again, under the same key. Every message text is unique.

Counted from the database afterwards:

lost
    a message its client saw complete, missing from its session's context, or a completed run
    whose message is not in the context.
doubled
    a message text twice in a context, or two runs for one message.
out of order
    two messages of one stream to one session stored in the other order than they were sent.
seq gaps
    sessions whose events are not numbered 1..``event_seq`` without a gap.
run/usage mismatches
    sessions whose ``turn_count`` or token totals differ from the sums of their completed runs,
    or whose context's user messages differ from their completed runs' inputs, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..stats import percentile, summary
from .common import ROOT, Part

SURFACES = ("api", "rest", "ws")
BUSY = ("session_busy", "queue_full")
MAX_ATTEMPTS = 50
#: seconds a WebSocket client waits for the end of its turn before it reconnects
WS_TURN_TIMEOUT = 5.0


def reply_for(request: Any) -> Any:
    from django_agent_session.testing.loopback import Reply

    return Reply.text(f"re: {request.user_text[:40]}")


def run(params: dict[str, Any]) -> Part:
    from django.db import connection

    from django_agent_session.testing.loopback import LoopbackMessagesServer

    from ..live import AsgiServer, _die_with_parent, create_conversations, session_cookie
    from .clients import soak_user

    part = Part()
    processes, sessions, turns = params["processes"], params["sessions"], params["turns"]
    streams, seed = params.get("streams", 2), params["seed"]
    with LoopbackMessagesServer() as server:
        server.responder = reply_for
        env = {**os.environ, "BENCH_LOOPBACK_URL": server.base_url}
        kinds = params.get("surfaces", SURFACES)
        surfaces = [kinds[i % len(kinds)] for i in range(processes)]
        daphnes = ([AsgiServer(env) for _ in range(params.get("daphnes", 2))]
                   if {"rest", "ws"} & set(surfaces) else [])
        children: list[tuple[subprocess.Popen, Path]] = []
        try:
            for daphne in daphnes:
                asyncio.run(daphne.wait_ready())
            user = soak_user("soak")
            cookie = session_cookie(user)
            ids = [str(pk) for pk in create_conversations(user, sessions)]
            connection.close()  # the children write now; SQLite wants no idle connection
            started = time.monotonic()
            for index in range(processes):
                share = turns // processes + (index < turns % processes)
                out = Path(tempfile.mkstemp(prefix="agent-soak-load-", suffix=".json")[1])
                spec = {"surface": surfaces[index], "index": index, "turns": share,
                        "streams": streams, "sessions": ids, "cookie": cookie,
                        "username": "soak", "seed": seed,
                        "ports": [d.port for d in daphnes], "out": str(out)}
                children.append((subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.soak.load", json.dumps(spec)],
                    cwd=ROOT, env=env, preexec_fn=_die_with_parent()), out))  # noqa: PLW1509
            sampler = ConnectionSampler()
            records: list[dict[str, Any]] = []
            crashed = 0
            for proc, out in children:
                if proc.wait(timeout=params.get("timeout", 3600)) != 0:
                    crashed += 1
                    continue
                records.extend(json.loads(out.read_text()))
            elapsed = time.monotonic() - started
            peak = sampler.stop()
        finally:
            for proc, out in children:
                if proc.poll() is None:
                    proc.kill()
                out.unlink(missing_ok=True)
            for daphne in daphnes:
                daphne.close()
    figures = account(ids, records)
    part.must_be_zero("client processes crashed", crashed)
    for name in ("lost", "doubled", "out of order", "seq gaps", "run/usage mismatches"):
        part.must_be_zero(name, figures.pop(name))
    completed = [r for r in records if r["outcome"] == "completed"]
    latencies = [r["latency"] for r in completed]
    part.figures.update({
        "turns sent": len(records), "turns completed": len(completed),
        "turns failed": sum(r["outcome"] != "completed" for r in records),
        "SessionBusy (retried)": sum(r["busy"] for r in records),
        "WebSocket turns not ended within 5 s (resent)": sum(r.get("timeouts", 0)
                                                          for r in records),
        "latency p50 ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "latency p99 ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "turns/s": round(len(completed) / elapsed, 1) if elapsed else None,
        "peak PostgreSQL connections": peak,
        "seconds": round(elapsed, 1),
    })
    part.details = {**figures, "processes": processes, "sessions": sessions,
                    "streams_per_process": streams, "daphnes": len(daphnes),
                    "surfaces": dict(Counter(surfaces)),
                    "failed_codes": dict(Counter(r["code"] for r in records
                                                 if r["outcome"] != "completed")),
                    "latency_by_surface": {
                        s: summary([r["latency"] for r in completed if r["surface"] == s])
                        for s in set(surfaces)},
                    "model_requests": len(server.message_requests),
                    "ws_timeouts": [{"text": r["text"], "trace": r["trace"]}
                                    for r in records if r.get("trace")][:5]}
    return part


class ConnectionSampler:
    """The most connections the database had at once, sampled every 0.5 s (PostgreSQL;
    ``None`` elsewhere): what a load like this needs of ``max_connections``."""

    def __init__(self) -> None:
        from django.db import connection

        self.peak: int | None = None
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        if connection.vendor == "postgresql":
            self.url = os.environ["DATABASE_URL"]
            self.thread = threading.Thread(target=self._run, daemon=True)
            self.thread.start()

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(0.5):
                (count,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                        "datname = current_database()").fetchone() or (0,)
                self.peak = max(self.peak or 0, int(count))

    def stop(self) -> int | None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(5)
        return self.peak


def account(ids: list[str], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Lost, doubled, out of order, seq gaps and mismatches, read from the database."""
    from django_agent_session.records import AgentEvent, AgentRun
    from tests.testapp.models import ChatAgent

    from ..restart import user_texts

    runs = list(AgentRun.objects.filter(session_id__in=ids).order_by("queued_seq",
                                                                     "started_at"))
    runs_by_text: dict[str, list[Any]] = defaultdict(list)
    for run in runs:
        runs_by_text[(run.input or {}).get("message", "")].append(run)
    where: dict[str, tuple[str, int]] = {}  # text -> (session, position in its context)
    lost = doubled = gaps = mismatches = 0
    examples: dict[str, list[str]] = defaultdict(list)
    for cid in ids:
        session = ChatAgent._base_manager.get(pk=cid)
        texts = user_texts(session.get_context().messages)
        for position, text in enumerate(texts):
            if text in where:
                doubled += 1
                examples["doubled"].append(text)
            where[text] = (cid, position)
        completed = [r for r in runs if str(r.session_id) == cid and r.status == "completed"]
        inputs = [(r.input or {}).get("message") for r in
                  sorted(completed, key=lambda r: (r.ended_at, r.started_at))]
        usage_ok = (session.turn_count == len(completed)
                    and session.input_tokens == sum(r.input_tokens for r in completed)
                    and session.output_tokens == sum(r.output_tokens for r in completed))
        if not usage_ok or sorted(inputs) != sorted(texts) or inputs != texts:
            mismatches += 1
            examples["mismatch"].append(
                f"{cid}: turn_count {session.turn_count} vs {len(completed)} completed runs; "
                f"tokens {session.input_tokens}/{session.output_tokens}; "
                f"{len(texts)} messages in the context")
        seqs = list(AgentEvent.objects.filter(session_id=cid).order_by("seq")
                    .values_list("seq", flat=True))
        if seqs != list(range(1, session.event_seq + 1)):
            gaps += 1
    for text, found in runs_by_text.items():
        if len(found) > 1:
            doubled += 1
            examples["doubled"].append(f"{text}: {len(found)} runs")
        for run in found:
            if run.status == "completed" and text not in where:
                lost += 1
                examples["lost"].append(f"{text}: completed run, not in the context")
    for record in records:
        if record["outcome"] == "completed" and record["text"] not in where:
            lost += 1
            examples["lost"].append(f"{record['text']}: completed for its client")
    # out of order: the positions of one stream's messages to one session must grow
    out_of_order = 0
    by_stream: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for record in records:
        if record["text"] in where:
            session, position = where[record["text"]]
            by_stream[(record["stream"], session)].append((record["j"], position))
    for sequence in by_stream.values():
        positions = [p for _, p in sorted(sequence)]
        out_of_order += sum(1 for a, b in zip(positions, positions[1:], strict=False) if b < a)
    return {"lost": lost, "doubled": doubled, "out of order": out_of_order, "seq gaps": gaps,
            "run/usage mismatches": mismatches, "runs": len(runs),
            "run_statuses": dict(Counter(r.status for r in runs)),
            "examples": {k: v[:5] for k, v in examples.items()}}


# -- a client process --------------------------------------------------------------------------

def client(spec: dict[str, Any]) -> list[dict[str, Any]]:
    streams = spec["streams"]
    plans = []
    for k in range(streams):
        rng = random.Random(spec["seed"] * 1_000_003 + spec["index"] * 101 + k)
        count = spec["turns"] // streams + (k < spec["turns"] % streams)
        plans.append([(j, rng.choice(spec["sessions"])) for j in range(count)])
    if spec["surface"] == "ws":
        return asyncio.run(_ws_client(spec, plans))
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    worker = _api_stream if spec["surface"] == "api" else _rest_stream
    threads = [threading.Thread(target=worker, args=(spec, k, plan, records, lock))
               for k, plan in enumerate(plans)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def _record(spec: dict[str, Any], k: int, j: int, session: str) -> dict[str, Any]:
    stream = f"p{spec['index']}s{k}"
    return {"surface": spec["surface"], "stream": stream, "j": j, "session": session,
            "text": f"{stream} t{j}", "key": f"{stream}-t{j}", "outcome": "error",
            "code": None, "latency": None, "busy": 0}


def _api_stream(spec: dict[str, Any], k: int, plan: list[tuple[int, str]],
                records: list[dict[str, Any]], lock: threading.Lock) -> None:
    from django.db import connection

    from django_agent_session import exceptions as exc
    from tests.testapp.models import ChatAgent

    try:
        for j, session in plan:
            record = _record(spec, k, j, session)
            started = time.monotonic()
            for _ in range(MAX_ATTEMPTS):
                try:
                    # half the messages named (the queue's path), half not (the fast path)
                    ChatAgent.objects.continue_session(
                        session, record["text"],
                        idempotency_key=record["key"] if j % 2 else None)
                    record["outcome"], record["latency"] = ("completed",
                                                            time.monotonic() - started)
                except (exc.SessionBusy, exc.QueueFull):
                    record["busy"] += 1
                    time.sleep(0.05)
                    continue
                except exc.AgentSessionError as error:
                    record["outcome"], record["code"] = "failed", error.code
                except Exception as error:  # noqa: BLE001 (an untyped error is a finding)
                    record["outcome"], record["code"] = "failed", f"untyped {error!r}"[:200]
                break
            with lock:
                records.append(record)
    finally:
        connection.close()


def _rest_stream(spec: dict[str, Any], k: int, plan: list[tuple[int, str]],
                 records: list[dict[str, Any]], lock: threading.Lock) -> None:
    from .clients import AGENT_PATH, Rest

    ports = spec["ports"]
    rest = Rest(ports[(spec["index"] + k) % len(ports)], spec["username"])
    for j, session in plan:
        record = _record(spec, k, j, session)
        started = time.monotonic()
        for _ in range(MAX_ATTEMPTS):
            status, body = rest.json("POST", f"{AGENT_PATH}{session}/continue/",
                                     {"input": record["text"]},
                                     headers={"Idempotency-Key": record["key"]})
            code = body.get("code") if isinstance(body, dict) else None
            if status == 200:
                record["outcome"], record["latency"] = "completed", time.monotonic() - started
            elif status == 409 or code in BUSY:
                record["busy"] += 1
                time.sleep(0.05)
                continue
            elif status == 0:  # the connection broke: send it again (same key)
                record["code"] = "connection closed"
                time.sleep(0.1)
                continue
            else:
                record["outcome"], record["code"] = "failed", code or f"http {status}"
            break
        with lock:
            records.append(record)
    rest.close()


async def _ws_client(spec: dict[str, Any], plans: list[list[tuple[int, str]]]
                     ) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    await asyncio.gather(*(_ws_stream(spec, k, plan, records) for k, plan in enumerate(plans)))
    return records


async def _ws_stream(spec: dict[str, Any], k: int, plan: list[tuple[int, str]],
                     records: list[dict[str, Any]]) -> None:
    from websockets.exceptions import ConnectionClosed

    from .clients import open_ws

    ports = spec["ports"]
    sockets: dict[str, Any] = {}
    try:
        for j, session in plan:
            record = _record(spec, k, j, session)
            started = time.monotonic()
            seen: list[Any] = []
            for _ in range(MAX_ATTEMPTS):
                try:
                    if session not in sockets:
                        port = ports[(spec["index"] + k + len(sockets)) % len(ports)]
                        sockets[session] = await open_ws(port, session, spec["cookie"])
                    ws = sockets[session]
                    await ws.send(json.dumps({"type": "message", "input": record["text"],
                                              "ref": record["key"]}))
                    outcome = await asyncio.wait_for(_ws_outcome(ws, record["key"], seen),
                                                     WS_TURN_TIMEOUT)
                except TimeoutError:
                    # no end of the turn seen: reconnect (a fresh session.state) and resend
                    record["timeouts"] = record.get("timeouts", 0) + 1
                    record.setdefault("trace", []).append(seen[-40:])
                    with contextlib.suppress(Exception):
                        await sockets.pop(session).close()
                    continue
                except (ConnectionClosed, OSError):
                    with contextlib.suppress(Exception):
                        await sockets.pop(session).close()
                    record["code"] = "connection closed"
                    await asyncio.sleep(0.1)
                    continue
                kind, code = outcome
                if kind == "completed":
                    record["outcome"], record["latency"] = kind, time.monotonic() - started
                elif code in BUSY:
                    record["busy"] += 1
                    await asyncio.sleep(0.05)
                    continue
                else:
                    record["outcome"], record["code"] = "failed", code or kind
                break
            records.append(record)
    finally:
        for ws in sockets.values():
            with contextlib.suppress(Exception):
                await ws.close()


async def _ws_outcome(ws: Any, ref: str, seen: list[Any]) -> tuple[str, str | None]:
    """Frames until the message ``ref`` ended: (run status, error code) or ("error", code)."""
    async for raw in ws:
        frame = json.loads(raw)
        seen.append({k: v for k, v in frame.items() if k in ("type", "ref", "status", "code",
                                                              "seq", "run_id")})
        if frame.get("ref") != ref:
            continue
        kind = frame.get("type")
        if kind == "run.status" and frame.get("status") in ("completed", "failed", "cancelled"):
            return frame["status"], (frame.get("error") or {}).get("code")
        if kind == "error":
            return "error", frame.get("code")
        if kind == "ack" and frame.get("status") in ("completed", "failed", "cancelled"):
            return frame["status"], None  # a resent message that had ended meanwhile
    raise ConnectionError("socket closed")


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["surface"] == "api":
        import django

        django.setup()
    records = client(spec)
    Path(spec["out"]).write_text(json.dumps(records))


if __name__ == "__main__":
    main()
