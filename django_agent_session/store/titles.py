"""Titles a model writes (``Agent.title = "model"``), off the turn's critical path.

The first turn commits with the first message as its title, as ``"first_message"`` agents
do; once that transaction has committed, a pool thread asks the title model (``title_model``,
else the agent's own client) for a short title and writes it only if the session still bears
the automatic one. A title a person set meanwhile (REST, admin, code) is never overwritten,
and a title call that fails leaves the first message in place. The call is recorded as a run
of kind ``title`` with its tokens and cost, which are added to the session's token totals.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from django.db import close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from .. import exceptions as exc
from ..clients.base import ModelRequest
from ..clients.registry import get_client
from ..engine.compaction import transcript
from ..engine.context import USAGE_KEYS
from ..engine.pricing import cost_of
from ..records import AgentRun, EventType, RunKind, RunStatus

if TYPE_CHECKING:
    from .turns import SessionStore

logger = logging.getLogger("django_agent_session")

#: the longest title a turn or the title model writes (the first message is cut to it)
TITLE_LENGTH = 80

TITLE_SYSTEM = ("Write a title of at most six words for the conversation below. Reply with "
                "the title only: no quotes, no trailing period.")
TITLE_MAX_TOKENS = 40
#: characters of the conversation the title model reads
TITLE_SOURCE_CHARS = 4000

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_pending: set[concurrent.futures.Future[Any]] = set()


def schedule(store: SessionStore, pk: Any, automatic: str,
             messages: list[dict[str, Any]]) -> None:
    """Write a model title for session ``pk`` once the caller's transaction commits."""
    transaction.on_commit(lambda: _submit(store, pk, automatic, messages))


def _submit(store: SessionStore, pk: Any, automatic: str,
            messages: list[dict[str, Any]]) -> None:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                          thread_name_prefix="agent-title")
        future = _pool.submit(_in_thread, store, pk, automatic, messages)
        _pending.add(future)
    future.add_done_callback(_pending.discard)


def wait(timeout: float = 10.0) -> None:
    """Block until every scheduled title was written (tests, management commands)."""
    concurrent.futures.wait(list(_pending), timeout=timeout)


def _in_thread(store: SessionStore, pk: Any, automatic: str,
               messages: list[dict[str, Any]]) -> str | None:
    close_old_connections()
    try:
        return write_title(store, pk, automatic, messages)
    except Exception:
        logger.exception("writing a title for %s %s failed", store.model.__name__, pk)
        return None
    finally:
        close_old_connections()


def write_title(store: SessionStore, pk: Any, automatic: str,
                messages: list[dict[str, Any]]) -> str | None:
    """Ask the title model and set the title if it is still ``automatic``; the new title,
    or None when it was not written (a person's title stands, or the call failed)."""
    model = store.model
    options = model.agent_options
    provider, _, model_name = (options.title_model or options.client).partition(":")
    request = ModelRequest(
        model=model_name, system=TITLE_SYSTEM, max_tokens=TITLE_MAX_TOKENS, cache=False,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": transcript(messages)[:TITLE_SOURCE_CHARS]}]}])
    started, clock = timezone.now(), time.monotonic()
    run = AgentRun(session_type=store.content_type, session_id=pk,
                   kind=RunKind.TITLE, model=model_name, started_at=started, input={},
                   iterations=1)
    try:
        response = get_client(provider).create(request)
    except exc.ModelError as error:
        run.status, run.error = RunStatus.FAILED, error.to_dict()
        _record(run, clock)
        return None
    title = _clean(response.text)
    run.status, run.model = RunStatus.COMPLETED, response.model or model_name
    run.output, run.stop_reason = {"title": title}, response.stop_reason or ""
    for name in USAGE_KEYS:
        setattr(run, name, int(response.usage.get(name) or 0))
    run.cost = cost_of(run.model, response.usage)
    manager = model._base_manager
    with transaction.atomic():
        _record(run, clock)
        manager.filter(pk=pk).update(**{name: F(name) + getattr(run, name)
                                        for name in USAGE_KEYS})
        written = bool(title) and manager.filter(pk=pk, title=automatic).update(
            title=title, updated_at=timezone.now())
        if written:
            store.append_events(pk, [(EventType.SESSION_TITLED, {
                "title": title, "by": "model", "run_id": str(run.pk)})], run_id=run.pk)
    return title if written else None


def _record(run: AgentRun, clock: float) -> None:
    run.ended_at = timezone.now()
    run.duration_ms = int((time.monotonic() - clock) * 1000)
    run.save(force_insert=True)


def _clean(text: str) -> str:
    title = " ".join(text.split()).strip().strip("\"'“”").rstrip(".")
    return title[:TITLE_LENGTH]


__all__ = ["schedule", "wait", "write_title"]
