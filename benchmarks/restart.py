"""Restarts: how long a conversation stays dead when its ASGI process goes away, and whether a
message is ever lost or run twice (Redis channel layer, PostgreSQL, real daphne processes, the
model behind the loopback Messages API server).

One conversation, one viewer, three messages sent to process A: ``m1`` streams a long reply
(about 6 s), ``m2`` and ``m3`` are queued behind it. About a second into ``m1``'s stream, A goes
away; a fresh process A' starts, the client connects to it as soon as it accepts connections
(polled every 10 ms) and sends ``m4`` at once. Four ways for A to go:

``graceful``
    SIGTERM; A' starts on the same port once A has exited (a single-server restart).
``rolling``
    SIGTERM; A' starts on another port at the same moment (a rolling deploy: the old process
    drains while the new one takes the traffic).
``kill``
    SIGKILL; A' starts on the same port at once. Nothing of A is released: its turn lease must
    expire (short leases, reported, are used so the run stays short).
``drain``
    As ``graceful``, but the conversation's live session is owned by another process O (a
    viewer watches there first): A only received the messages, so it drains them but hosts no
    live session (a 30 s turn lease, so a lease running out is told from a graceful stop).

Reported: the dead window, from A' accepting connections to the first delta of the next run
(``m2``), and from the stop or kill; what became of every message (read from the database:
each message's runs, the conversation's context, the events).

``chaos``
    ``P`` daphne processes, ``C`` conversations, each driven by one client that keeps two
    messages in flight, each with a unique ref, resending a message with the same ref after a
    reconnect until it is acknowledged. A killer SIGKILLs a random process that is streaming a
    model reply (so it holds running turns), restarts it on the same port, waits a moment, and
    does it again, ``K`` times. Then each client sends one last message (its turn takes over
    a killed run's expired lease, which nothing else does when nothing is queued behind it)
    and waits for everything acknowledged to end. Counted per message: lost (acknowledged,
    yet neither finished nor still queued or running), doubled (a ref with two runs, a user
    text twice in a context, or the model asked twice for one message), stuck (still queued,
    or running under its session's lease, at the end), zombies (left ``running`` without the
    lease: nothing will ever end them), interrupted. A client learns how its runs ended from
    the frames and, as a real one would from ``session.state``, from the database (polled
    every second): a run whose lease is taken over gets no ``run.status`` frame.

Each scenario runs in its own worker process (``python -m benchmarks.worker restart --mode
MODE`` / ``chaos``) on a fresh database; :func:`run_all` gives each its own Redis prefix,
deletes its keys afterwards and drops the database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import summary

LONG_GAP, SHORT_GAP, CHAOS_GAP = 0.05, 0.01, 0.04
LONG = " ".join(f"long{i}" for i in range(120))  # ~6 s at LONG_GAP per delta
SHORT = " ".join(f"short{i}" for i in range(20))
CHAOS = " ".join(f"w{i}" for i in range(25))  # ~1 s per turn
SCENARIO = {"m1": "long: the first message", "m2": "the second message",
            "m3": "the third message"}
AFTER = ("m4", "the fourth message, sent after the restart")
STREAM_BEFORE_STOP = 1.0
#: seconds a chaos client waits for an ack on one connection before it sends the message again
ACK_TIMEOUT = 10.0
DEPTH = 2  # messages a chaos client keeps in flight
TERMINAL = ("completed", "failed", "cancelled")
#: a run left ``running`` that no longer holds its session's lease: nothing will end it
ZOMBIE = "zombie"


def reply_for(request: Any) -> Any:
    from django_agent_session.testing.loopback import Reply

    if request.user_text.startswith("long"):
        return Reply.text(LONG, delay=LONG_GAP)
    if request.user_text.startswith("c"):  # chaos: "c3 m17"
        return Reply.text(CHAOS, delay=CHAOS_GAP)
    return Reply.text(SHORT, delay=SHORT_GAP)


def _leases() -> dict[str, float]:
    from django_agent_session.conf import agent_settings

    return {"turn_lease_s": float(agent_settings.TURN_LEASE_SECONDS),
            "owner_lease_s": float(agent_settings.OWNER_LEASE_SECONDS),
            "shutdown_grace_s": float(agent_settings.SHUTDOWN_GRACE_SECONDS)}


async def accepting(daphne: Any, timeout: float = 60.0) -> float:
    """The moment (``time.monotonic``) ``daphne`` first accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while True:
        if daphne.proc.poll() is not None:
            raise RuntimeError(f"daphne exited with {daphne.proc.returncode}:\n{daphne.output()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", daphne.port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not listen within {timeout}s") from None
            await asyncio.sleep(0.01)
            continue
        at = time.monotonic()
        writer.close()
        return at


async def exited(daphne: Any, timeout: float = 120.0) -> float:
    """The moment (``time.monotonic``, within 10 ms) ``daphne``'s process has exited."""
    deadline = time.monotonic() + timeout
    while daphne.proc.poll() is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"daphne did not exit within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic()


async def open_socket(port: int, conversation_id: Any, cookie: str, timeout: float = 10.0
                      ) -> Any:
    """A viewer that does not wait for ``session.state`` (it may send at once)."""
    from .live import Viewer, open_websocket

    viewer = Viewer(await open_websocket(port, conversation_id, cookie, timeout))
    viewer.task = asyncio.create_task(viewer._read())
    return viewer


async def first(viewer: Any, predicate: Any, timeout: float) -> float:
    """When ``viewer`` got the first frame matching ``predicate`` (already, or within
    ``timeout``)."""
    for at, frame in viewer.frames:
        if predicate(frame):
            return at
    at, _ = await asyncio.wait_for(viewer.wait_for(predicate), timeout)
    return at


def arrived(viewers: list[Any], predicate: Any) -> float | None:
    """The earliest arrival of a frame matching ``predicate`` at any of ``viewers``."""
    times = [at for viewer in viewers for at, frame in viewer.frames if predicate(frame)]
    return min(times) if times else None


def is_delta(*refs: str) -> Any:
    return lambda f: f.get("type") == "delta" and f.get("ref") in refs


def user_texts(messages: list[dict[str, Any]]) -> list[str]:
    """The text of every user message of a context (tool results have none)."""
    texts = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message["content"]
        text = content if isinstance(content, str) else "".join(
            b.get("text", "") for b in content if b.get("type") == "text")
        if text:
            texts.append(text)
    return texts


def api_key(request: Any) -> str:
    """The API key a model request was sent with: which process (incarnation) sent it."""
    headers = request.headers
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")


def _statuses_by_ref(conversation_id: Any, refs: tuple[str, ...]) -> list[str]:
    from django_agent_session.records import AgentRun

    found = dict(AgentRun.objects.filter(session_id=conversation_id, idempotency_key__in=refs)
                 .values_list("idempotency_key", "status"))
    return [found.get(ref, "missing") for ref in refs]


def _lease_left(conversation_id: Any) -> float | None:
    from django.utils import timezone

    from tests.testapp.models import ChatAgent

    expires = ChatAgent._base_manager.filter(pk=conversation_id).values_list(
        "lease_expires_at", flat=True).get()
    return None if expires is None else (expires - timezone.now()).total_seconds()


# -- one restart --------------------------------------------------------------------------------

def run_restart(mode: str) -> dict[str, Any]:
    row = asyncio.run(_restart(mode))
    row.update(account(row.pop("conversation_id"), {**SCENARIO, AFTER[0]: AFTER[1]}))
    row.update(_leases())
    return row


async def _restart(mode: str) -> dict[str, Any]:
    from channels.db import database_sync_to_async

    from django_agent_session.testing.loopback import LoopbackMessagesServer

    from .live import (
        AsgiServer,
        bench_user,
        connect_viewer,
        create_conversations,
        session_cookie,
    )

    lease = _leases()["turn_lease_s"]
    with LoopbackMessagesServer() as server:
        server.responder = reply_for
        env = {**os.environ, "BENCH_LOOPBACK_URL": server.base_url}
        a = AsgiServer({**env, "BENCH_API_KEY": "a"})
        # "drain": the live session is owned by another process, o, watched by one viewer
        owner = AsgiServer({**env, "BENCH_API_KEY": "o"}) if mode == "drain" else None
        successor: AsgiServer | None = None
        viewers: list[Any] = []
        try:
            await a.wait_ready()
            if owner is not None:
                await owner.wait_ready()
            user = await database_sync_to_async(bench_user)()
            cookie = await database_sync_to_async(session_cookie)(user)
            (cid,) = await database_sync_to_async(create_conversations)(user, 1)
            if owner is not None:
                viewers.append(await connect_viewer(owner.port, cid, cookie))
            old = await connect_viewer(a.port, cid, cookie)
            viewers.append(old)
            for ref, text in SCENARIO.items():
                await old.send({"type": "message", "input": text, "ref": ref})
            for ref in SCENARIO:
                await first(old, lambda f, r=ref: f.get("type") == "ack" and f["ref"] == r, 10)
            await first(old, is_delta("m1"), 10)
            await asyncio.sleep(STREAM_BEFORE_STOP)
            lease_left = await database_sync_to_async(_lease_left)(cid)
            stopped_at = time.monotonic()
            if mode == "kill":
                a.proc.kill()
            else:
                a.proc.send_signal(signal.SIGTERM)
            exit_of_a = asyncio.create_task(exited(a))
            if mode == "rolling":  # the new process starts while the old one drains
                successor = AsgiServer({**env, "BENCH_API_KEY": "a2"})
            else:
                await exit_of_a
                successor = AsgiServer({**env, "BENCH_API_KEY": "a2"}, port=a.port)
            accepted_at = await accepting(successor)
            new = await open_socket(successor.port, cid, cookie)
            opened_at = time.monotonic()
            viewers.append(new)
            await new.send({"type": "message", "input": AFTER[1], "ref": AFTER[0]})
            acked_at = await first(new, lambda f: f.get("type") == "ack", 30)
            # finished according to the database: a viewer whose state came after a run
            # ended is not sent that run's terminal frame (the state already holds it)
            wait = 3 * lease + 60
            refs = ("m2", "m3", AFTER[0])
            deadline = time.monotonic() + wait
            while not all(status in TERMINAL for status in
                          (await database_sync_to_async(_statuses_by_ref)(cid, refs))):
                if time.monotonic() > deadline:
                    state = await database_sync_to_async(account)(
                        cid, {**SCENARIO, AFTER[0]: AFTER[1]})
                    frames = [(round(at - stopped_at, 2), f.get("type"), f.get("ref"),
                               f.get("status")) for at, f in new.frames
                              if f.get("type") != "delta"]
                    raise RuntimeError(f"m2-m4 did not finish within {wait:.0f}s: runs "
                                       f"{state['outcomes']}; frames of the new viewer "
                                       f"{frames}")
                await asyncio.sleep(0.05)
            done_at = time.monotonic()
            exited_at = await exit_of_a
            await asyncio.sleep(0.5)  # anything doubled would show up now
        finally:
            for viewer in viewers:
                await viewer.close()
            logged: Counter[str] = Counter()
            for daphne in (a, owner, successor):
                if daphne is not None:
                    if daphne.proc.poll() is None:
                        daphne.proc.send_signal(signal.SIGTERM)
                        with contextlib.suppress(Exception):
                            await asyncio.to_thread(daphne.proc.wait, 30)
                    logged.update(log_lines(daphne))
                    daphne.close()
    next_delta = arrived([new], is_delta("m2", "m3", AFTER[0]))
    next_call = min(r.received_at for r in server.message_requests
                    if r.user_text != SCENARIO["m1"])
    m1_end = arrived(viewers, lambda f: f.get("type") == "run.status" and f.get("ref") == "m1"
                     and f.get("status") in TERMINAL)
    stopped = arrived([old], lambda f: f.get("type") == "session.stopped")
    assert next_delta is not None

    def since(t: float | None, start: float | None) -> float | None:
        return None if t is None or start is None else round(t - start, 3)

    return {
        "mode": mode, "conversation_id": cid,
        "stop_to_exit_s": since(exited_at, stopped_at),
        "stop_to_accept_s": since(accepted_at, stopped_at),
        "stop_to_viewer_told_s": since(stopped, stopped_at),
        "accept_to_open_s": since(opened_at, accepted_at),
        "accept_to_ack_s": since(acked_at, accepted_at),
        "accept_to_first_delta_s": since(next_delta, accepted_at),
        "accept_to_new_message_delta_s": since(
            arrived([new], is_delta(AFTER[0])), accepted_at),
        "accept_to_next_model_call_s": since(next_call, accepted_at),
        "stop_to_first_delta_s": since(next_delta, stopped_at),
        "stop_to_next_model_call_s": since(next_call, stopped_at),
        "m1_end_to_first_delta_s": since(next_delta, m1_end),
        "stop_to_m1_end_s": since(m1_end, stopped_at),
        "lease_left_at_stop_s": None if lease_left is None else round(lease_left, 3),
        "stop_to_all_done_s": since(done_at, stopped_at),
        "logged_by_daphne": dict(logged.most_common(10)),
        "model_calls": [f"{api_key(r)}: {r.user_text}"
                        for r in server.message_requests],
    }


def account(conversation_id: Any, expected: dict[str, str]) -> dict[str, Any]:
    """What became of each message of one conversation, from the database."""
    from django_agent_session.records import AgentRun
    from tests.testapp.models import ChatAgent

    runs = list(AgentRun.objects.filter(session_id=conversation_id).order_by("queued_seq"))
    by_ref: dict[str, list[Any]] = defaultdict(list)
    for run in runs:
        by_ref[run.idempotency_key or ""].append(run)
    texts = user_texts(ChatAgent._base_manager.get(pk=conversation_id).get_context().messages)
    outcomes = {ref: ", ".join(_status(run) for run in by_ref.get(ref, [])) or "missing"
                for ref in expected}
    settled = ("completed", "failed", "cancelled", "queued", "running")
    lost = [ref for ref in expected if not any(r.status in settled for r in by_ref.get(ref, []))]
    doubled = sorted({ref for ref, rs in by_ref.items() if len(rs) > 1}
                     | {t for t, n in Counter(texts).items() if n > 1})
    completed = [r.input.get("message") for r in runs if r.status == "completed"]
    return {"outcomes": outcomes, "lost": len(lost), "doubled": len(doubled),
            "context_matches_completed_runs": texts == completed,
            "queued_all_completed": all(outcomes[ref] == "completed"
                                        for ref in ("m2", "m3", AFTER[0]))}


def _status(run: Any) -> str:
    code = (run.error or {}).get("code")
    return f"{run.status} ({code})" if code else str(run.status)


# -- chaos ---------------------------------------------------------------------------------------

ACCESS_LOG = re.compile(r"\S+:\d+ - - \[")  # daphne's access log lines


def log_lines(daphne: Any) -> Counter[str]:
    """What a daphne process logged, but its access log: warnings, errors and the last line
    of each traceback (ids masked, so repeats count together)."""
    daphne.log.flush()
    lines: Counter[str] = Counter()
    for line in Path(daphne.log.name).read_text(errors="replace").splitlines():
        if line and not line[0].isspace() and not ACCESS_LOG.match(line) and \
                not line.startswith(("Traceback", "During handling", "The above exc")):
            lines[re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{32}", "<id>",
                         line.strip())[:160]] += 1
    return lines


class Slot:
    """One of the cluster's daphne processes; restarted on its port after each kill, under a
    new API key (``p<index>g<generation>``) so the loopback server tells incarnations apart."""

    def __init__(self, index: int, env: dict[str, str]) -> None:
        self.index, self.env = index, env
        self.generation = 0
        self.daphne: Any = None
        self.port: int | None = None
        self.ready = False
        self.logged: Counter[str] = Counter()

    @property
    def key(self) -> str:
        return f"p{self.index}g{self.generation}"

    async def start(self) -> None:
        from .live import AsgiServer

        self.generation += 1
        self.daphne = AsgiServer({**self.env, "BENCH_API_KEY": self.key}, port=self.port)
        self.port = self.daphne.port
        await self.daphne.wait_ready()
        self.ready = True

    def kill(self) -> None:
        self.ready = False
        self.daphne.proc.kill()
        self.daphne.proc.wait()
        self._collect()

    def stop(self) -> None:
        self.ready = False
        if self.daphne is None:
            return
        if self.daphne.proc.poll() is None:
            self.daphne.proc.send_signal(signal.SIGTERM)
            try:
                self.daphne.proc.wait(30)
            except Exception:  # noqa: BLE001
                self.daphne.proc.kill()
                self.daphne.proc.wait()
        self._collect()

    def _collect(self) -> None:
        self.logged.update(log_lines(self.daphne))
        self.daphne.close()


@dataclass
class Message:
    ref: str
    text: str
    due: float = 0.0  # when to send it (again), while not acknowledged
    sends: int = 0
    acked_at: float | None = None
    run_ids: list[str] = field(default_factory=list)
    duplicate_acks: int = 0
    outcome: str | None = None
    errors: Counter[str] = field(default_factory=Counter)


class Chat:
    """The client of one conversation: keeps ``DEPTH`` messages in flight, reconnects to the
    next live process when its socket drops, resends what was not acknowledged."""

    def __init__(self, index: int, conversation_id: Any, cookie: str, slots: list[Slot]) -> None:
        self.index, self.conversation_id, self.cookie, self.slots = (
            index, conversation_id, cookie, slots)
        self.messages: dict[str, Message] = {}
        self.by_run: dict[str, Message] = {}
        self.stopping = self.flushed = False
        self.next_slot = index
        self.connections = self.drops = self.connect_failures = self.deltas = 0
        self.changed = asyncio.Event()

    def outstanding(self) -> list[Message]:
        return [m for m in self.messages.values() if m.outcome is None]

    def settled(self) -> bool:
        return not self.outstanding()

    def _slot(self) -> Slot | None:
        for _ in range(len(self.slots)):
            slot = self.slots[self.next_slot % len(self.slots)]
            self.next_slot += 1
            if slot.ready:
                return slot
        return None

    async def run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        from .live import AGENT

        while not (self.stopping and self.settled()):
            slot = self._slot()
            if slot is None:
                await asyncio.sleep(0.05)
                continue
            try:
                ws = await connect(
                    f"ws://127.0.0.1:{slot.port}/ws/agent-sessions/{AGENT}/"
                    f"{self.conversation_id}/",
                    additional_headers={"Cookie": self.cookie,
                                        "Origin": f"http://127.0.0.1:{slot.port}"},
                    compression=None, max_size=None, open_timeout=10)
            except Exception:  # noqa: BLE001 (refused, reset, timed out: try the next one)
                self.connect_failures += 1
                await asyncio.sleep(0.05)
                continue
            self.connections += 1
            try:
                await self._converse(ws)
            except ConnectionClosed:
                self.drops += 1
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2)

    async def _converse(self, ws: Any) -> None:
        for message in self.messages.values():
            message.due = 0.0  # not acknowledged yet: send it again on this connection
        reader = asyncio.create_task(self._read(ws))
        try:
            while True:
                if reader.done():
                    reader.result()  # ConnectionClosed when it dropped
                    return
                now = time.monotonic()
                for message in list(self.messages.values()):
                    if message.acked_at is None and now >= message.due:
                        await self._send(ws, message)
                if self.stopping and self.settled():
                    return
                if self.stopping and not self.flushed and all(
                        m.acked_at is not None for m in self.messages.values()):
                    # a last message: its turn takes over (and fails) a killed run's expired
                    # lease, which nothing else does when no message is queued behind it
                    self.flushed = True
                    await self._send(ws, self._new())
                    continue
                if not self.stopping and len(self.outstanding()) < DEPTH:
                    await self._send(ws, self._new())
                    continue
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.25)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    def _new(self) -> Message:
        number = len(self.messages)
        message = Message(f"c{self.index}-m{number}", f"c{self.index} m{number}")
        self.messages[message.ref] = message
        return message

    async def _send(self, ws: Any, message: Message) -> None:
        message.sends += 1
        message.due = time.monotonic() + ACK_TIMEOUT
        await ws.send(json.dumps({"type": "message", "input": message.text, "ref": message.ref}))

    async def _read(self, ws: Any) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            message = self.messages.get(frame.get("ref") or "")
            if kind == "delta":
                self.deltas += 1
            elif message is None:
                pass
            elif kind == "ack":
                if message.acked_at is None:
                    message.acked_at = time.monotonic()
                if frame["run_id"] not in message.run_ids:
                    message.run_ids.append(frame["run_id"])
                    self.by_run[frame["run_id"]] = message
                message.duplicate_acks += bool(frame.get("duplicate"))
            elif kind == "run.status" and frame.get("status") in TERMINAL:
                message.outcome = message.outcome or frame["status"]
            elif kind == "error" and message.acked_at is None:
                message.errors[frame.get("code") or "?"] += 1
                message.due = time.monotonic() + 0.5  # e.g. ownership_unavailable: retry soon
            self.changed.set()

    def learn(self, statuses: dict[str, str]) -> None:
        """Outcomes read from the database (a run failed by the takeover of a dead process's
        lease sends no ``run.status``; a client that was reconnecting missed the frame)."""
        for run_id, status in statuses.items():
            message = self.by_run.get(run_id)
            if message is not None and message.outcome is None and status in (*TERMINAL,
                                                                             ZOMBIE):
                message.outcome = status
                self.changed.set()


def _statuses(run_ids: list[str]) -> dict[str, str]:
    """The status of each run, ``zombie`` for a run left ``running`` that no longer holds its
    session's turn lease (read in one statement: a consistent snapshot)."""
    from django.db.models import OuterRef, Subquery

    from django_agent_session.records import AgentRun
    from tests.testapp.models import ChatAgent

    holder = ChatAgent._base_manager.filter(pk=OuterRef("session_id")).values("lease_token")
    return {str(pk): ZOMBIE if status == "running" and holder != pk else status
            for pk, status, holder in AgentRun.objects.filter(pk__in=run_ids).annotate(
                holder=Subquery(holder[:1])).values_list("pk", "status", "holder")}


def _inflight(server: Any, slots: list[Slot], since: int) -> tuple[dict[int, set[int]], int]:
    """The conversations each live process is streaming a model reply for (by the slot's
    index), and where to start looking next time."""
    keys = {slot.key: slot for slot in slots if slot.ready}
    requests = server.message_requests
    streaming: dict[int, set[int]] = defaultdict(set)
    oldest_open = len(requests)
    for request in requests[since:]:
        events = request.sent_events
        if events and events[-1].event == "message_stop":
            continue
        slot = keys.get(api_key(request))
        if slot is None:  # an incarnation that was killed: its stream is over
            continue
        oldest_open = min(oldest_open, request.index)
        streaming[slot.index].add(int(request.user_text.split()[0][1:]))
    return streaming, oldest_open


async def chats_under_way(slots: list[Slot], conversations: int
                          ) -> tuple[list[Any], list[Chat], list[asyncio.Task], asyncio.Task]:
    """Start the slots' daphne processes and ``conversations`` new conversations, each with a
    :class:`Chat` client running, and a poller that tells the clients how their runs ended:
    the conversation ids, the clients, their tasks and the poller's task."""
    from channels.db import database_sync_to_async

    from .live import bench_user, create_conversations, session_cookie

    await asyncio.gather(*(slot.start() for slot in slots))
    user = await database_sync_to_async(bench_user)()
    cookie = await database_sync_to_async(session_cookie)(user)
    ids = await database_sync_to_async(create_conversations)(user, conversations)
    clients = [Chat(i, cid, cookie, slots) for i, cid in enumerate(ids)]
    tasks = [asyncio.create_task(c.run(), name=f"chat-{c.index}") for c in clients]

    async def poll_outcomes() -> None:
        while True:
            await asyncio.sleep(1.0)
            waiting = [run_id for c in clients for run_id, m in c.by_run.items()
                       if m.outcome is None]
            if waiting:
                statuses = await database_sync_to_async(_statuses)(waiting)
                for client in clients:
                    client.learn(statuses)

    return ids, clients, tasks, asyncio.create_task(poll_outcomes())


async def chats_settled(clients: list[Chat], tasks: list[asyncio.Task], poller: asyncio.Task,
                        timeout: float) -> set[asyncio.Task]:
    """Ask the clients to stop sending and wait up to ``timeout`` seconds for what they have
    in flight to end; then stop them and the poller. The clients' tasks still running then."""
    for client in clients:
        client.stopping = True
        client.changed.set()
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    poller.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, poller, return_exceptions=True)
    return pending


def run_chaos(processes: int, conversations: int, kills: int, seconds: float
              ) -> dict[str, Any]:
    result, clients, ids, calls = asyncio.run(_chaos(processes, conversations, kills, seconds))
    result.update(account_chaos(clients, ids, calls))
    result.update(_leases())
    return result


async def _chaos(processes: int, conversations: int, kills: int, seconds: float
                 ) -> tuple[dict[str, Any], list[Chat], list[Any], list[tuple[str, str]]]:
    from django_agent_session.testing.loopback import LoopbackMessagesServer

    lease = _leases()["turn_lease_s"]
    rng = random.Random(int(os.environ.get("BENCH_SEED", "0")) or None)
    with LoopbackMessagesServer() as server:
        server.responder = reply_for
        env = {**os.environ, "BENCH_LOOPBACK_URL": server.base_url}
        slots = [Slot(i, env) for i in range(processes)]
        clients: list[Chat] = []
        tasks: list[asyncio.Task] = []
        killed: list[dict[str, Any]] = []
        try:
            ids, clients, tasks, poller = await chats_under_way(slots, conversations)
            started = time.monotonic()
            since, skipped = 0, 0
            deadline = started + seconds
            while len(killed) < kills and time.monotonic() < deadline:
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                look_until = time.monotonic() + 10
                victim = None
                while victim is None and time.monotonic() < look_until:
                    streaming, since = _inflight(server, slots, since)
                    if streaming:
                        index = rng.choice(sorted(streaming))
                        victim, affected = slots[index], sorted(streaming[index])
                    else:
                        await asyncio.sleep(0.05)
                if victim is None:
                    skipped += 1
                    continue
                generation = victim.generation
                killed_at = time.monotonic()
                victim.kill()
                await victim.start()
                killed.append({"process": victim.index, "generation": generation,
                               "at": killed_at, "affected": affected,
                               "restart_s": round(time.monotonic() - killed_at, 3)})
            load_seconds = time.monotonic() - started
            pending = await chats_settled(clients, tasks, poller, timeout=3 * lease + 60)
            settled_in = time.monotonic() - started - load_seconds
        finally:
            for task in tasks:
                task.cancel()
            for slot in slots:
                if slot.daphne is not None:
                    slot.stop()
        requests = server.message_requests
        total = time.monotonic() - started

    # after a kill: when was the model next asked for each conversation whose turn was killed
    recoveries, unrecovered = [], 0
    for kill in killed:
        kill["next_call_s"] = {}
        for conversation in kill["affected"]:
            later = [r.received_at for r in requests if r.received_at > kill["at"]
                     and r.user_text.startswith(f"c{conversation} ")]
            if later:
                recoveries.append(min(later) - kill["at"])
                kill["next_call_s"][f"c{conversation}"] = round(recoveries[-1], 3)
            else:
                unrecovered += 1
        kill["at"] = round(kill["at"] - started, 3)
    logged: Counter[str] = Counter()
    for slot in slots:
        logged.update(slot.logged)
    result = {
        "processes": processes, "conversations": conversations, "kills": len(killed),
        "kills_asked": kills, "kills_skipped_no_stream": skipped,
        "load_seconds": round(load_seconds, 1), "settle_seconds": round(settled_in, 1),
        "unsettled_clients": len(pending), "total_seconds": round(total, 1),
        "restart": summary([k["restart_s"] for k in killed]),
        "kill_to_next_model_call": summary(recoveries),
        "kill_to_next_model_call_max_s": round(max(recoveries), 3) if recoveries else None,
        "affected_conversations_never_called_again": unrecovered,
        "connections": sum(c.connections for c in clients),
        "socket_drops": sum(c.drops for c in clients),
        "connect_failures": sum(c.connect_failures for c in clients),
        "deltas_received": sum(c.deltas for c in clients),
        "logged_by_daphne": dict(logged.most_common(15)),
        "kill_log": killed,
    }
    return result, clients, ids, [(api_key(r), r.user_text)
                                  for r in requests]


def account_chaos(clients: list[Chat], ids: list[Any], calls: list[tuple[str, str]]
                  ) -> dict[str, Any]:
    """Per message, from the database: lost, doubled, stuck, interrupted; and the runs left
    ``running`` that no longer hold their session's lease (zombies: nothing ends them)."""
    from django_agent_session.records import AgentEvent, AgentRun
    from tests.testapp.models import ChatAgent

    runs = list(AgentRun.objects.filter(session_id__in=ids).order_by("session_id", "queued_seq"))
    holders = {str(pk) for pk in ChatAgent._base_manager.filter(pk__in=ids).values_list(
        "lease_token", flat=True) if pk is not None}
    zombies = [run for run in runs if run.status == "running" and str(run.pk) not in holders]
    by_key: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for run in runs:
        by_key[(str(run.session_id), run.idempotency_key or "")].append(run)
    sent = acked = unacked = lost = stuck = resent = duplicate_acks = 0
    doubled: set[str] = set()
    errors: Counter[str] = Counter()
    for client in clients:
        for message in client.messages.values():
            sent += 1
            resent += message.sends > 1
            duplicate_acks += message.duplicate_acks
            errors.update(message.errors)
            found = by_key.get((str(client.conversation_id), message.ref), [])
            if len(found) > 1 or len(message.run_ids) > 1:
                doubled.add(message.ref)
            if message.acked_at is None:
                unacked += 1
                continue
            acked += 1
            if not found:
                lost += 1
            elif any(r in zombies for r in found):
                pass  # counted below: left running, but nothing will ever end it
            elif any(r.status in ("queued", "running") for r in found):
                stuck += 1
            elif not all(r.status in TERMINAL for r in found):
                lost += 1
    statuses = Counter(_status(run) for run in runs)
    context_mismatch = 0
    gaps = ended_twice = 0
    for cid in ids:
        session = ChatAgent._base_manager.get(pk=cid)
        texts = user_texts(session.get_context().messages)
        doubled.update(f"context:{t}" for t, n in Counter(texts).items() if n > 1)
        completed = [r.input.get("message") for r in runs
                     if r.session_id == cid and r.status == "completed"]
        context_mismatch += texts != completed
        events = list(AgentEvent.objects.filter(session_id=cid).order_by("seq")
                      .values_list("seq", "type", "data"))
        gaps += [e[0] for e in events] != list(range(1, session.event_seq + 1))
        ends = Counter(e[2].get("run_id") for e in events
                       if e[1] in ("run.completed", "run.failed", "run.cancelled"))
        ended_twice += sum(1 for n in ends.values() if n > 1)
    asked = Counter(text for _, text in calls)
    asked_twice = sorted(t for t, n in asked.items() if n > 1)
    doubled.update(f"model:{t}" for t in asked_twice)
    interrupted = sum(1 for r in runs if r.status == "failed"
                      and (r.error or {}).get("code") == "interrupted")
    # a zombie: was its successor (the next run of its session to start) killed too? (only
    # a lease holder is failed, by the commit of the turn that takes its lease over)
    successor_killed = 0
    for zombie in zombies:
        later = [r for r in runs if r.session_id == zombie.session_id and r.started_at
                 and r.started_at > zombie.started_at and r.status != "queued"]
        if later:
            after = min(later, key=lambda r: r.started_at)
            successor_killed += after in zombies or (
                after.status == "failed" and (after.error or {}).get("code") == "interrupted")
    return {"messages_sent": sent, "acked": acked, "never_acked": unacked,
            "lost": lost, "doubled": len(doubled), "doubled_examples": sorted(doubled)[:10],
            "zombies": len(zombies), "zombies_whose_successor_was_killed": successor_killed,
            "zombie_examples": [f"{z.idempotency_key} started {z.started_at:%H:%M:%S.%f}"
                                for z in zombies[:5]],
            "stuck": stuck, "runs": len(runs), "run_statuses": dict(statuses),
            "interrupted": interrupted, "resent": resent, "duplicate_acks": duplicate_acks,
            "error_frames": dict(errors), "model_asked_twice": len(asked_twice),
            "context_mismatches": context_mismatch, "event_seq_gaps": gaps,
            "runs_ended_twice": ended_twice}


# -- the command line's part -------------------------------------------------------------------

RESTART_DB_NAME = "agent_session_bench_restart"
GRACE = 3.0  # SHUTDOWN_GRACE_SECONDS of the graceful scenarios (m1 outlasts it: interrupted)
DRAIN_LEASE = 30.0
CHAOS_PROCESSES, CHAOS_CONVERSATIONS = 3, 6


def clean_redis(url: str, prefix: str) -> int:
    """Delete the keys under ``prefix``; how many there were."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        return len(keys)
    finally:
        client.close()


def run_all(args: argparse.Namespace, base_env: dict[str, str]) -> dict[str, Any]:
    """Each scenario in a fresh worker, on a fresh PostgreSQL database (dropped at the end) and
    its own Redis prefix (deleted after each)."""
    from .__main__ import _env, run_worker
    from .db import drop, postgres_reachable, with_database
    from .live import redis_reachable

    names = ("graceful", "rolling", "kill", "drain", "chaos")
    problem = postgres_reachable(args.postgres_url)
    why = f"PostgreSQL not reachable ({problem})" if problem else None
    if why is None and (problem := redis_reachable(args.redis_url)):
        why = f"Redis not reachable ({problem})"
    if why is not None:
        return {name: {"skipped": why} for name in names}
    short = {"BENCH_TURN_LEASE": str(args.restart_lease),
             "BENCH_OWNER_LEASE": str(args.restart_lease)}
    processes, conversations = ((2, 4) if args.quick else
                                (CHAOS_PROCESSES, CHAOS_CONVERSATIONS))
    plans = {
        # the default leases (120 s / 30 s): a graceful restart must not depend on them
        # (graceful: m1 outlasts the 3 s grace, so it is interrupted; rolling: the default 10 s
        # grace lets it finish)
        "graceful": ({"BENCH_SHUTDOWN_GRACE": str(GRACE)}, ["restart", "--mode", "graceful"]),
        "rolling": ({}, ["restart", "--mode", "rolling"]),
        "kill": (short, ["restart", "--mode", "kill"]),
        # a 30 s turn lease: long enough to tell a graceful stop from a lease running out
        "drain": ({"BENCH_TURN_LEASE": str(DRAIN_LEASE), "BENCH_SHUTDOWN_GRACE": str(GRACE)},
                  ["restart", "--mode", "drain"]),
        "chaos": (short, ["chaos", "--kills", str(args.kills), "--processes", str(processes),
                          "--conversations", str(conversations),
                          "--seconds", str(args.chaos_seconds)]),
    }
    url = with_database(args.postgres_url, RESTART_DB_NAME)
    results: dict[str, Any] = {}
    try:
        for name, (settings, (suite, *extra)) in plans.items():
            prefix = f"agent-bench-restart-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            # daphne: these runs stop processes with SIGTERM and read daphne's log
            env = _env(base_env, DATABASE_URL=url, REDIS_URL=args.redis_url,
                       BENCH_REDIS_PREFIX=prefix, BENCH_SERVER="daphne", **settings)
            try:
                results[name] = run_worker(suite, env, extra, args.timeout)
            finally:
                results.setdefault(name, {})["redis_keys_deleted"] = clean_redis(
                    args.redis_url, prefix)
    finally:
        drop(args.postgres_url, RESTART_DB_NAME)
    return results
