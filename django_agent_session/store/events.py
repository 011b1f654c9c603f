"""Events from outside a turn: the project's own facts in a session's log, and waiting for them.

A webhook, a background job or another service may record what happened to a conversation (a
payment went through, a ticket changed) in its event log, where transcripts, replays and REST
readers find it next to the turns' events. Such an event:

- has a ``custom.`` type: the other names are the library's, so a reader can trust a
  ``run.completed`` to come from a run, and new library types never collide with a project's;
- takes the session's next ``seq`` as every event does (``SessionStore.append_seq``: the row's
  counter, claimed under the row's lock, so the log stays gap-free);
- may carry the caller's id (``AgentEvent.key``). The partial unique index on
  ``(session_id, key)`` decides between two appends of one id inside their transactions, so a
  retry, or two at once, stores one event and both callers get it; the loser's seq claim is
  rolled back with its insert, so no seq is lost.

Long-polls (``GET .../events/?wait=``) wait in :func:`wait_for_events`: an append in this
process wakes them at once; otherwise they look again every ``interval`` seconds (one indexed
query, no transaction held in between), which also sees turns and other processes' appends.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from .. import exceptions as exc
from ..conf import agent_settings
from ..engine.context import UNSTORABLE
from ..records import AgentEvent
from . import codec
from .turns import SessionStore

#: the namespace of every event type appended from outside a turn
CUSTOM_PREFIX = "custom."
#: ``custom.`` and a name of letters, digits and ``_ . : -`` (the column holds 64 characters)
TYPE_PATTERN = re.compile(r"custom\.[A-Za-z0-9_][A-Za-z0-9_.:-]{0,56}")
#: longest caller's id (the column's length)
KEY_MAX = 255
#: deepest nesting of an event's ``data`` (objects and arrays)
MAX_DEPTH = 32
UNSTORABLE_PROBLEM = "Contains U+0000 or a lone surrogate, which the database cannot store."


def validate_event(model: type, kind: Any, data: Any, key: Any) -> dict[str, Any]:
    """Check an event appended from outside a turn; its ``data`` (``{}`` for ``None``).

    Raises :class:`~django_agent_session.exceptions.InvalidInput` whose ``errors`` name the
    fields (``type``, ``data``, ``id``), as the REST endpoint answers them.
    """
    errors: dict[str, list[str]] = {}
    if not isinstance(kind, str) or not TYPE_PATTERN.fullmatch(kind):
        shown = kind[:70] if isinstance(kind, str) else kind
        errors["type"] = [
            f"Events appended from outside a turn have a type in the {CUSTOM_PREFIX!r} namespace "
            f"(the others are the library's): {CUSTOM_PREFIX}<name>, the name of letters, "
            f"digits and _ . : - (at most 64 characters in all); got {shown!r}."]
    data = {} if data is None else data
    problem = _data_problem(data)
    if problem is None:
        size, limit = len(codec.dumps(data).encode()), agent_settings.EVENT_MAX_BYTES
        if size > limit:
            problem = f"Is {size} bytes of JSON; the limit is {limit} (EVENT_MAX_BYTES)."
    if problem is not None:
        errors["data"] = [problem]
    if key is not None and not (isinstance(key, str) and 0 < len(key) <= KEY_MAX
                                and not UNSTORABLE.search(key)):
        errors["id"] = [f"Must be a string of 1 to {KEY_MAX} characters (no U+0000 and no "
                        "lone surrogate)."]
    if errors:
        raise exc.InvalidInput(errors, "Invalid event.", label=f"{model.__name__} event")
    return data


def _data_problem(data: Any) -> str | None:
    """What makes ``data`` no JSON object the log can store as given, or ``None``."""
    if not isinstance(data, dict):
        return "Must be a JSON object."
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                return f"Nested deeper than {MAX_DEPTH} levels."
            for name, item in value.items():
                if not isinstance(name, str):
                    return f"Object keys must be strings; got {name!r}."
                if UNSTORABLE.search(name):
                    return UNSTORABLE_PROBLEM
                stack.append((item, depth + 1))
        elif isinstance(value, (list, tuple)):
            if depth > MAX_DEPTH:
                return f"Nested deeper than {MAX_DEPTH} levels."
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            if UNSTORABLE.search(value):
                return UNSTORABLE_PROBLEM
        elif isinstance(value, float):
            if not math.isfinite(value):
                return "NaN and infinite numbers are not JSON."
        elif not (value is None or isinstance(value, (bool, int))):
            # a date or a Decimal would be stored as a string and read back as one
            return f"A {type(value).__name__} is not a JSON value; convert it first."
    return None


def append_event(store: SessionStore, session_pk: Any, kind: str, data: Any = None,
                 key: str | None = None) -> AgentEvent:
    """Store a ``custom.*`` event with the session's next ``seq``; the stored event, whose
    ``created`` says whether this call stored it (``False``: ``key`` was stored before).

    Raises ``InvalidInput`` (see :func:`validate_event`) or ``SessionNotFound``.
    """
    data = validate_event(store.model, kind, data, key)
    if key is not None:
        found = stored_event(store, session_pk, key)
        if found is not None:  # a retry: no seq is claimed
            return found
    try:
        with transaction.atomic():
            seq = store.append_seq(session_pk, 1) + 1
            event = AgentEvent.objects.create(
                session_type=store.content_type, session_id=session_pk, seq=seq,
                type=kind, data=data, created_at=timezone.now(), key=key)
            transaction.on_commit(lambda: notify(session_pk))
    except IntegrityError:
        # another append of ``key`` committed first: ours (and its seq) was rolled back
        found = stored_event(store, session_pk, key) if key is not None else None
        if found is None:
            raise
        return found
    event.created = True
    return event


def stored_event(store: SessionStore, session_pk: Any, key: str) -> AgentEvent | None:
    """The session's event appended under ``key`` (``created`` ``False``), or ``None``."""
    event = AgentEvent.objects.filter(session_type=store.content_type, session_id=session_pk,
                                      key=key).first()
    if event is not None:
        event.created = False
    return event


# -- waiting for events ------------------------------------------------------------------------

_waiting: dict[str, set[threading.Event]] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def _listening(session_pk: Any) -> Iterator[threading.Event]:
    """A flag set when an event is appended to the session in this process."""
    flag, name = threading.Event(), str(session_pk)
    with _lock:
        _waiting.setdefault(name, set()).add(flag)
    try:
        yield flag
    finally:
        with _lock:
            flags = _waiting.get(name)
            if flags is not None:
                flags.discard(flag)
                if not flags:
                    del _waiting[name]


def notify(session_pk: Any) -> None:
    """Wake this process's long-polls of the session (after an append committed)."""
    with _lock:
        flags = list(_waiting.get(str(session_pk), ()))
    for flag in flags:
        flag.set()


def has_events_after(model: type, session_pk: Any, after_seq: int) -> bool:
    """Whether the session has an event with a larger ``seq`` (one indexed lookup)."""
    return AgentEvent.objects.filter(session_type=ContentType.objects.get_for_model(model),
                                     session_id=session_pk, seq__gt=after_seq).exists()


def wait_for_events(model: type, session_pk: Any, after_seq: int, timeout: float,
                    interval: float = 0.5) -> bool:
    """Block until the session has an event after ``after_seq`` or ``timeout`` seconds pass;
    whether it has one. Between looks it holds no lock, sends no query and holds no database
    connection (it is closed and opened again for the next look), so a few hundred waiting
    requests do not use up the database's connections.

    Inside a transaction (a ``TestCase``'s, say) it looks once and does not wait: waiting
    would hold the transaction open, and its snapshot might never show the new rows.
    """
    connection = connections[router.db_for_read(AgentEvent)]
    if connection.in_atomic_block:
        return has_events_after(model, session_pk, after_seq)
    deadline = time.monotonic() + timeout
    with _listening(session_pk) as woken:
        while True:
            if has_events_after(model, session_pk, after_seq):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            connection.close()
            woken.wait(min(interval, remaining))
            woken.clear()
