"""Per-turn library overhead of ``continue_session`` and SQL queries per turn.

Two client set-ups, same measurement:

``scripted``
    the :class:`~django_agent_session.testing.ScriptedClient` (no network). The time spent
    inside the client's ``create`` (it deep-copies each request for its ``requests`` log, which
    grows with the history) is measured and subtracted: *overhead* is what the library adds
    around the model call.
``sdk``
    the real ``anthropic`` SDK against the loopback Messages API server. *overhead* is again the
    turn minus the time inside the client; a bare ``messages.create`` with the very same request
    body is timed next to it, to show the library's share beside the SDK's.

The history is held at a fixed size: before every turn (outside the timed region) the
session's context column is reset to the prepared ``N``-message context, so every measured
turn sends ``N + 1`` messages and stores ``N + 2``.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .stats import Stopwatch, summary

ARGS = {"company_name": "Acme"}
SYSTEM = "You are a helpful assistant for Acme."
MESSAGE_CHARS = 200


def text_of(i: int, role: str) -> str:
    """A ~200-character message, distinct per index."""
    head = f"{role} message {i}: "
    filler = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    return (head + filler * 4)[:MESSAGE_CHARS]


def history(n: int) -> list[dict[str, Any]]:
    """``n`` alternating user/assistant messages in the Messages API format."""
    return [{"role": role, "content": [{"type": "text", "text": text_of(i, role)}]}
            for i, role in ((i, "user" if i % 2 == 0 else "assistant") for i in range(n))]


USER_INPUT = text_of(-1, "user")
REPLY = text_of(-1, "assistant")


def prepared_context(n: int) -> dict[str, Any]:
    """A stored context of ``n`` messages as the library stores one after a turn: with its
    size in tokens (``tokens``), which the next turn grows instead of estimating again."""
    from django_agent_session.engine.context import Context
    from django_agent_session.engine.limits import estimate_tokens

    messages = history(n)
    return Context(system=SYSTEM, instruction_args=dict(ARGS), messages=messages,
                   tokens=estimate_tokens(SYSTEM, messages)).to_dict()


class Measured(NamedTuple):
    """What :func:`measure_turns` measured, one entry per measured turn."""

    totals: list[float]  #: seconds per turn
    inside: list[float]  #: seconds inside the client
    cpu: list[float]  #: the turn's thread CPU time minus the client's
    references: list[float]  #: seconds per reference turn


def measure_turns(model: Any, pk: Any, base: dict[str, Any], stopwatch: Stopwatch, *,
                  turns: int, warmup: int, between: Callable[[], None] | None = None
                  ) -> Measured:
    """Run ``warmup + turns`` turns, each followed by one reference turn (a bare JSONField
    read-modify-write of the same history, :mod:`benchmarks.reference`). On SQLite (WAL)
    the log is checkpointed before each turn's untimed reset, never inside a timed region
    (:func:`benchmarks.db.manual_checkpoints`)."""
    from . import reference
    from .db import manual_checkpoints

    manager = model.objects
    context_field = model.agent_options.context_field
    messages = base["messages"]
    bare = reference.prepare(messages)
    totals: list[float] = []
    inside: list[float] = []
    cpu: list[float] = []
    references: list[float] = []
    gc.collect()
    with manual_checkpoints() as checkpoint:
        for i in range(warmup + turns):
            checkpoint()  # the untimed reset restarts the log, not a timed turn
            model._base_manager.filter(pk=pk).update(**{context_field: base})  # untimed reset
            if between is not None:
                between()
            stopwatch.take()
            start, start_cpu = time.perf_counter(), time.thread_time()
            manager.continue_session(pk, USER_INPUT)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.thread_time() - start_cpu
            spent, spent_cpu = stopwatch.take()
            reference.reset(bare, messages)  # untimed
            start = time.perf_counter()
            reference.turn(bare, USER_INPUT, REPLY)
            bare_elapsed = time.perf_counter() - start
            if i >= warmup:
                totals.append(elapsed)
                inside.append(spent)
                cpu.append(elapsed_cpu - spent_cpu)
                references.append(bare_elapsed)
    return Measured(totals, inside, cpu, references)


def count_pages(model: Any, pk: Any, base: dict[str, Any], *, turns: int = 5
                ) -> dict[str, float] | None:
    """On SQLite (WAL), the pages a turn and a reference turn write to the log (medians of
    ``turns``, each between two checkpoints); ``None`` elsewhere."""
    from . import reference
    from .db import wal_checkpoint, wal_mode

    if not wal_mode():
        return None
    context_field = model.agent_options.context_field
    bare = reference.prepare(base["messages"])
    library: list[int] = []
    bare_pages: list[int] = []
    for _ in range(turns):
        model._base_manager.filter(pk=pk).update(**{context_field: base})
        reference.reset(bare, base["messages"])
        wal_checkpoint()
        model.objects.continue_session(pk, USER_INPUT)
        library.append(wal_checkpoint())
        reference.turn(bare, USER_INPUT, REPLY)
        bare_pages.append(wal_checkpoint())
    return {"library": statistics.median(library), "reference": statistics.median(bare_pages)}


def count_queries(model: Any, pk: Any, base: dict[str, Any], *, turns: int = 5
                  ) -> tuple[list[int], list[str]]:
    """Queries per turn on a separate pass (``CaptureQueriesContext``); plus one turn's SQL."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    context_field = model.agent_options.context_field
    counts: list[int] = []
    sql: list[str] = []
    for _ in range(turns):
        model._base_manager.filter(pk=pk).update(**{context_field: base})
        with CaptureQueriesContext(connection) as captured:
            model.objects.continue_session(pk, USER_INPUT)
        counts.append(len(captured.captured_queries))
        sql = [q["sql"][:160] for q in captured.captured_queries]
    return counts, sql


def _row(size: int, measured: Measured, queries: list[int], sql: list[str],
         **extra: Any) -> dict[str, Any]:
    overhead = [t - c for t, c in zip(measured.totals, measured.inside, strict=True)]
    over, bare = summary(overhead), summary(measured.references)
    return {
        "history": size,
        "turn": summary(measured.totals),
        "client": summary(measured.inside),
        "overhead": over,
        "overhead_cpu": summary(measured.cpu),
        "reference": bare,
        "ratio": round(over["median_ms"] / bare["median_ms"], 3),
        "queries_per_turn": sorted(set(queries)),
        "queries_sql": sql,
        **extra,
    }


def store_runs(model: Any, count: int, *, per_session: int = 20) -> None:
    """``count`` finished runs of other sessions of ``model``, as a database in use holds."""
    import uuid

    from django.contrib.contenttypes.models import ContentType

    from django_agent_session.records.runs import AgentRun

    session_type = ContentType.objects.get_for_model(model)
    sessions = [uuid.uuid4() for _ in range(max(1, count // per_session))]
    AgentRun.objects.bulk_create(
        (AgentRun(session_type=session_type, session_id=sessions[i % len(sessions)],
                  status="completed", input={"text": USER_INPUT}, output={"content": REPLY})
         for i in range(count)), batch_size=2000)


def run_scripted(sizes: list[int], turns: int, warmup: int, stored_runs: int = 0
                 ) -> list[dict[str, Any]]:
    """A row per history size; with ``stored_runs``, one more at the smallest size after
    that many runs of other sessions were stored (a turn must not grow with the table)."""
    from django_agent_session.testing import text_reply, use_scripted_client
    from tests.testapp.models import ChatAgent

    from . import reference

    reference.create_table()
    rows = []
    runs = [(size, 0) for size in sizes]
    if stored_runs and sizes:
        runs.append((min(sizes), stored_runs))
    with use_scripted_client(default=text_reply(REPLY)) as client:
        stopwatch = Stopwatch(client.create)
        client.create = stopwatch  # type: ignore[method-assign]
        for size, stored in runs:
            if stored:
                store_runs(ChatAgent, stored)
            base = prepared_context(size)
            session = ChatAgent.objects.create(context=base, title="bench")
            measured = measure_turns(ChatAgent, session.pk, base, stopwatch,
                                     turns=turns, warmup=warmup,
                                     between=client.requests.clear)
            queries, sql = count_queries(ChatAgent, session.pk, base)
            pages = count_pages(ChatAgent, session.pk, base)
            client.requests.clear()
            extra: dict[str, Any] = {"stored_runs": stored} if stored else {}
            if pages is not None:
                extra["wal_pages"] = pages
            rows.append(_row(size, measured, queries, sql, **extra))
    return rows


def run_sdk(sizes: list[int], turns: int, warmup: int) -> list[dict[str, Any]]:
    import anthropic
    from django.test import override_settings

    from django_agent_session.clients.registry import get_client
    from django_agent_session.testing.loopback import LoopbackMessagesServer, Reply
    from tests.testapp.models import ChatAgent

    from . import reference

    reference.create_table()
    rows = []
    for size in sizes:
        with LoopbackMessagesServer(keep_alive=True) as server, override_settings(AGENT_SESSION={
                "TURN_WAIT_SECONDS": 60.0,
                "ANTHROPIC": {"BASE_URL": server.base_url, "API_KEY": "bench",
                              "MAX_RETRIES": 0}}):
            server.responder = lambda request: Reply.text(REPLY)
            client = get_client("anthropic")
            stopwatch = Stopwatch(client.create)
            client.create = stopwatch
            base = prepared_context(size)
            session = ChatAgent.objects.create(context=base, title="bench")
            measured = measure_turns(ChatAgent, session.pk, base, stopwatch, turns=turns,
                                     warmup=warmup)
            queries, sql = count_queries(ChatAgent, session.pk, base)
            # the same request body, sent by a bare SDK client
            body = {k: v for k, v in server.message_requests[-1].body.items() if k != "stream"}
            sdk = anthropic.Anthropic(base_url=server.base_url, api_key="bench", max_retries=0)
            bare: list[float] = []
            for i in range(warmup + turns):
                start = time.perf_counter()
                sdk.messages.create(**body)
                if i >= warmup:
                    bare.append(time.perf_counter() - start)
            sdk.close()
            rows.append(_row(size, measured, queries, sql, bare_sdk=summary(bare)))
    return rows
