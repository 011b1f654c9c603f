"""Bad input: seeded random REST requests and WebSocket frames against a daphne process.

REST: every session route of the chat agent (and arbitrary ids and paths), any method, JSON
bodies shaped like real ones or not, raw bytes under assorted content types, nasty query
strings. WebSocket: text that is not JSON, JSON that is not an object, objects of known and
unknown types with arbitrary fields, binary frames, deep nesting, frames over the size limit;
after each frame a ``ping`` must be answered by its ``pong``. The generator draws from
``random.Random(seed)``: the same seed sends the same input.

Figures: 5xx answers; closed sockets (an HTTP connection dropped without an answer, a
WebSocket closed by the server); stored changes from rejected input (a 4xx answer, or a frame
that started no turn, after which the stored state differs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

from .common import Part

NASTY = ["", " ", "\x00", "a\x00b", "\ud800", "\udfff", "\u2028", "\ufeff", "\u202e",
         "💥💥", "null", "true", "0", "-1", "1e999", "NaN", "{{ company_name }}",
         "{% debug %}", "' OR 1=1 --", "../../etc/passwd", "<script>x</script>",
         "a" * 10_001, "é" * 300, "idle", "running", "2024-01-01T00:00:00Z"]
KEYS = ["input", "message", "instruction_args", "company_name", "title", "status", "wait",
        "multitask", "ref", "type", "after_seq", "tool_use_id", "approve", "extra", ""]
FRAME_TYPES = ["message", "cancel", "decide", "start", "resume", "state", "ping", "bogus"]
CONTENT_TYPES = ["application/json", "text/plain", "multipart/form-data",
                 "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
RAW = [b"{", b"[1,", b'{"input": NaN}', b"\xff\xfe", b'{"input": {"message": "\\ud800"}}',
       b"[" * 5000 + b"]" * 5000, b'{"input": "\\u0000"}']
ROUTES = ["", "{pk}/", "{pk}/continue/", "stream/", "{pk}/continue/stream/", "{pk}/context/",
          "{pk}/events/", "{pk}/runs/", "{pk}/runs/{run}/", "{pk}/runs/{run}/cancel/",
          "{pk}/runs/{run}/stream/", "{pk}/pending/", "{nasty}/", "{nasty}/continue/"]
METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"]
QUERY_VALUE_MAX = 1300
QUERY_KEYS = ["status", "created_after", "search", "page", "page_size", "after_seq", "cursor",
              "ordering", "format", "x"]


class Gen:
    """Random hostile values from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self) -> str:
        r = self.rng
        if r.random() < 0.5:
            return r.choice(NASTY)
        return "".join(chr(r.choice([r.randrange(32, 127), r.randrange(0, 0x3000)]))
                       for _ in range(r.randrange(0, 20)))

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([0, -1, 2**63, -(2**70), 10**30, 7])
        if kind == 3:
            return r.choice([0.5, -1e308, 1e-300, 3.14])
        if kind in (4, 5):
            return self.text()
        if kind == 6:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(KEYS + [self.text()]): self.value(depth + 1)
                for _ in range(r.randrange(4))}

    def body(self) -> tuple[bytes, str]:
        r = self.rng
        if r.random() < 0.25:
            return r.choice(RAW) if r.random() < 0.5 else r.randbytes(r.randrange(64)), \
                r.choice(CONTENT_TYPES)
        if r.random() < 0.6:  # shaped like a real body
            value: Any = {k: self.value(1) for k in r.sample(
                ["input", "instruction_args", "title", "status", "wait", "multitask"],
                r.randrange(1, 4))}
            if r.random() < 0.3:
                value["input"] = {"message": self.text()}
        else:
            value = self.value()
        return json.dumps(value).encode("utf-8", "surrogatepass"), "application/json"

    def query(self) -> str:
        from urllib.parse import quote

        r = self.rng
        # under 4 KiB: daphne (Twisted) drops a request line over 16 KiB without an answer,
        # a limit of the server, not of the app
        pairs = [f"{r.choice(QUERY_KEYS)}="
                 f"{quote(self.text().encode('utf-8', 'replace'))[:QUERY_VALUE_MAX]}"
                 for _ in range(r.randrange(3))]
        return ("?" + "&".join(pairs)) if pairs else ""

    def frame(self) -> str | bytes:
        """A frame; a text frame is valid UTF-8 (a lone surrogate goes as a JSON escape: raw,
        it is not UTF-8, and the WebSocket protocol itself closes the connection, RFC 6455)."""
        frame = self._frame()
        if isinstance(frame, str):
            try:
                frame.encode("utf-8")
            except UnicodeEncodeError:
                return json.dumps(frame)
        return frame

    def _frame(self) -> str | bytes:
        r = self.rng
        kind = r.randrange(10)
        if kind == 0:
            return r.randbytes(r.randrange(40))
        if kind == 1:
            return self.text()
        if kind == 2:
            return json.dumps(self.value())
        if kind == 3:
            return r.choice(["[" * 50_000, '{"type": "ping", "ref": ' * 3000,
                             json.dumps({"type": "message", "input": "x" * (300 * 1024)}),
                             '{"type": "message", "input": {"message": "\\ud800"}}',
                             '{"type": "message", "input": "\\u0000"}',
                             '{"type": "resume", "after_seq": 1e308}'])
        frame = {"type": r.choice(FRAME_TYPES) if r.random() < 0.9 else self.value()}
        for key in r.sample(["input", "ref", "after_seq", "instruction_args", "tool_use_id",
                             "approve", "extra"], r.randrange(4)):
            frame[key] = self.value(1)
        if frame["type"] == "message" and r.random() < 0.2:
            frame["input"] = f"a valid message {r.randrange(10**6)}"
        return json.dumps(frame)


def run(params: dict[str, Any]) -> Part:
    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply

    from ..live import AsgiServer

    part = Part()
    with LoopbackMessagesServer() as server:
        server.responder = lambda request: Reply.text("ok")
        daphne = AsgiServer({**os.environ, "BENCH_LOOPBACK_URL": server.base_url})
        try:
            asyncio.run(daphne.wait_ready())
            rest = _rest(daphne.port, params["requests"], params["seed"])
            ws = asyncio.run(_ws(daphne.port, params["frames"], params["seed"]))
        finally:
            from ..restart import log_lines

            logged = log_lines(daphne)
            daphne.close()
    part.must_be_zero("REST 5xx", rest["5xx"])
    part.must_be_zero("REST closed connections", rest["closed"])
    part.must_be_zero("REST stored changes from rejected input", rest["changed"])
    part.must_be_zero("WebSocket closed sockets", ws["closed"])
    part.must_be_zero("WebSocket internal_error frames", ws["internal"])
    part.must_be_zero("WebSocket stored changes from rejected frames", ws["changed"])
    part.figures.update({"REST requests": rest["requests"], "WebSocket frames": ws["frames"],
                         "seed": params["seed"]})
    part.details = {"rest": rest, "ws": ws, "logged_by_daphne": dict(logged.most_common(10))}
    return part


def _target() -> tuple[Any, str, Any]:
    from ..live import create_conversations, session_cookie
    from .clients import soak_user

    user = soak_user("fuzzer")
    (pk,) = create_conversations(user, 1)
    return pk, session_cookie(user), user


def _snapshot() -> Any:
    from tests.helpers.state import snapshot

    return snapshot()


def _rest(port: int, count: int, seed: int) -> dict[str, Any]:
    from urllib.parse import quote

    from django_agent_session.records import AgentRun

    from .clients import AGENT_PATH, Rest

    gen = Gen(seed)
    pk, _, _ = _target()
    client = Rest(port, "fuzzer", timeout=60)
    statuses: Counter[int] = Counter()
    examples: dict[str, list[str]] = {"5xx": [], "closed": [], "changed": []}
    fivexx = closed = changed = 0
    before = _snapshot()
    for _ in range(count):
        run = AgentRun.objects.filter(session_id=pk).values_list("pk", flat=True).first()
        route = gen.rng.choice(ROUTES).format(
            pk=pk, run=run or uuid.uuid4(),
            nasty=quote(gen.text().encode("utf-8", "replace"), safe=""))
        method = gen.rng.choice(METHODS)
        body, content_type = gen.body() if method in ("POST", "PATCH", "PUT") else (None, "")
        path = AGENT_PATH + route + gen.query()
        status, data = client.request(method, path, body, content_type or "application/json")
        statuses[status] += 1
        where = f"{method} {path[:120]} {body[:80]!r}" if body else f"{method} {path[:120]}"
        if status >= 500:
            fivexx += 1
            examples["5xx"].append(f"{status} {where}: {data[:200]!r}")
        elif status == 0:
            closed += 1
            examples["closed"].append(where)
        after = _snapshot()
        if 400 <= status < 500 and after != before:
            changed += 1
            examples["changed"].append(f"{status} {where}")
        before = after
    client.close()
    return {"requests": count, "5xx": fivexx, "closed": closed, "changed": changed,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "examples": {k: v[:5] for k, v in examples.items()}}


async def _ws(port: int, count: int, seed: int) -> dict[str, Any]:
    from channels.db import database_sync_to_async

    from .clients import open_ws

    gen = Gen(seed + 1)
    pk, cookie, _ = await database_sync_to_async(_target)()
    sent = closed = internal = changed = turns = 0
    examples: dict[str, list[str]] = {"closed": [], "internal": [], "changed": []}
    errors: Counter[str] = Counter()
    ws = None
    try:
        while sent < count:
            if ws is None:
                ws = await open_ws(port, pk, cookie)
            frame = gen.frame()
            sent += 1
            before = await database_sync_to_async(_snapshot)()
            ref = f"sentinel-{sent}"
            try:
                await ws.send(frame)
                await ws.send(json.dumps({"type": "ping", "ref": ref}))
                frames = []
                deadline = time.monotonic() + 30
                while True:
                    got = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    frames.append(got)
                    if got == {"type": "pong", "ref": ref} or time.monotonic() > deadline:
                        break
                acks = [f for f in frames if f.get("type") == "ack" and not f.get("duplicate")]
                for f in frames:
                    if f.get("type") == "error":
                        errors[str(f.get("code"))] += 1
                        if f.get("code") == "internal_error":
                            internal += 1
                            examples["internal"].append(str(frame)[:200])
                if acks:  # a valid message: wait for its turn to end
                    turns += 1
                    run_id = acks[0].get("run_id")
                    while not any(f.get("type") == "run.status" and f.get("run_id") == run_id
                                  and f.get("status") in ("completed", "failed", "cancelled")
                                  for f in frames):
                        frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                elif await database_sync_to_async(_snapshot)() != before:
                    changed += 1
                    examples["changed"].append(str(frame)[:200])
            except Exception as error:  # noqa: BLE001 (closed: counted, reconnect)
                closed += 1
                examples["closed"].append(f"{type(error).__name__}: {str(frame)[:160]}")
                with contextlib.suppress(Exception):
                    await ws.close()
                ws = None
    finally:
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
    return {"frames": sent, "closed": closed, "internal": internal, "changed": changed,
            "turns": turns, "error_codes": dict(errors),
            "examples": {k: v[:5] for k, v in examples.items()}}
