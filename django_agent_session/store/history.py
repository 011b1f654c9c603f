"""Fork and rewind: branch a conversation into a new session, or take a session back in time.

A **turn** is one user message plus everything up to the next user message that is not just
tool results: the tool loop (``tool_use``/``tool_result`` pairs) and the final answer belong to
the turn that asked. Turns are counted from the stored messages, so the cut always falls on a
boundary the Messages API accepts (never between a ``tool_use`` and its ``tool_result``). When
a halted tool turn left its results in the same user message as the next question, the cut
splits that message: the results stay, the question goes.

Both operations keep the run and event logs as they are (they are history) and record what
happened: ``session.forked`` on both sessions, naming the other; ``session.rewound`` with the
turns before and after. The context's ``usage`` totals are kept, so a token budget still
counts what the conversation has cost; ``turns``, ``turn_count`` and ``last_output`` follow the
cut.

``rewind_session`` rewrites the context of a live session, so it must never race a turn: it
writes with one conditional UPDATE that requires the version it read and no unexpired turn
lease, and raises :class:`~django_agent_session.exceptions.SessionBusy` while a turn runs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

from channels.db import database_sync_to_async
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .. import exceptions as exc
from ..engine.attachments import remap
from ..engine.context import Context, content_blocks, message_text, turn_starts
from ..engine.turn import append_user, parse_output
from ..records import AgentEvent, EventType, SessionRecord, SessionStatus, extra_fields
from .attachments import copy_attachments
from .lease import lease_free, lease_held, session_busy
from .turns import SessionStore

#: attempts when a concurrent commit changes the version between read and write
REWIND_ATTEMPTS = 5


def count_turns(messages: list[dict[str, Any]]) -> int:
    return len(turn_starts(messages))


def messages_upto(messages: list[dict[str, Any]], turns: int) -> list[dict[str, Any]]:
    """A deep copy of the messages of the first ``turns`` turns."""
    starts = turn_starts(messages)
    if turns >= len(starts):
        return copy.deepcopy(messages)
    index, block = starts[turns]
    kept = copy.deepcopy(messages[:index])
    if block:  # tool results of the previous turn share the message with the next question
        kept.append({**copy.deepcopy(messages[index]),
                     "content": copy.deepcopy(content_blocks(messages[index])[:block])})
    return kept


def _output_of(options: Any, messages: list[dict[str, Any]]) -> Any:
    """The output the last kept turn produced, recovered from its final message."""
    if not messages:
        return None
    last = messages[-1]
    if last.get("role") == "assistant":
        try:
            return parse_output(options, message_text(last))
        except exc.AgentSessionError:
            return None
    # a turn a tool halted ends with its tool results; the halting value is the last one
    results = [b for b in content_blocks(last) if b.get("type") == "tool_result" and not b.get("is_error")]
    if not results:
        return None
    # JSON: a string, a list of blocks, or anything a tool returned (json.loads sorts it out)
    content: Any = results[-1].get("content")
    if isinstance(content, list):
        content = "".join(b.get("text", "") for b in content if b.get("type") == "text")
    try:
        return json.loads(content)
    except (TypeError, ValueError):
        return content


def _truncated(session: SessionRecord, turns: int | None, argument: str
               ) -> tuple[Context, int, int]:
    """The session's context cut after ``turns`` turns, with the turn counts before/after."""
    context = session.get_context()
    total = count_turns(context.messages)
    if turns is None:
        turns = total
    if not isinstance(turns, int) or isinstance(turns, bool) or not 0 <= turns <= total:
        raise exc.InvalidInput(
            {argument: [f"Must be an integer between 0 and {total} (the session's turns)."]},
            f"Invalid {argument}.")
    if turns == total:
        kept, output = copy.deepcopy(context.messages), context.last_output
    else:
        kept = messages_upto(context.messages, turns)
        output = _output_of(session.agent_options, kept)
    # what the conversation spent stays with it (budgets count it), and so does how often
    # it was compacted; only its size is unknown until the next reply measures it
    new = dataclasses.replace(
        context, instruction_args=copy.deepcopy(context.instruction_args), messages=kept,
        usage=dict(context.usage), turns=turns, last_output=output,
        metadata=copy.deepcopy(context.metadata),
        tokens=context.tokens if turns == total else None)
    return new, total, turns


def _fresh(session: SessionRecord) -> SessionRecord:
    model = type(session)
    try:
        return model._base_manager.get(pk=session.pk)
    except model.DoesNotExist:
        raise exc.SessionNotFound(f"No {model.__name__} with id {session.pk}.") from None


def fork_session(session: SessionRecord, *, upto_turn: int | None = None,
                 owner: Any = ..., title: str | None = None) -> SessionRecord:
    """Copy ``session`` into a new session of the same model, optionally only its first
    ``upto_turn`` turns; returns the new session, ready to continue.

    The fork gets the same instruction, instruction args, metadata (tags), extra model
    fields and owner (``owner=`` to choose another, or ``None``); not the runs, events or
    artifacts, which stay with the session that produced them, except the attachments its
    messages show, which are copied (a turn reads only its own session's files).
    """
    source = _fresh(session)
    model = type(source)
    context, _, turns = _truncated(source, upto_turn, "upto_turn")
    now = timezone.now()
    fork = model(
        owner_id=source.owner_id if owner is ... else getattr(owner, "pk", owner),
        title=source.title if title is None else title,
        metadata=copy.deepcopy(source.metadata), status=SessionStatus.IDLE,
        created_at=now, last_activity_at=now, turn_count=turns,
        **{f.attname: copy.deepcopy(getattr(source, f.attname)) for f in extra_fields(model)},
    )
    store = SessionStore(model)
    with transaction.atomic():
        stored = context.to_dict()
        copied = copy_attachments(source, fork, context.messages)  # fork.pk is set already
        setattr(fork, model.agent_options.context_field, remap(stored, copied))
        fork.save(force_insert=True)
        store.append_events(fork.pk, [(EventType.SESSION_FORKED, {
            "from_session": str(source.pk), "upto_turn": turns})])
        store.append_events(source.pk, [(EventType.SESSION_FORKED, {
            "to_session": str(fork.pk), "upto_turn": turns})])
    fork.event_seq = 1
    return fork


def rewind_session(session: SessionRecord, to_turn: int) -> SessionRecord:
    """Truncate the session's context to its first ``to_turn`` turns; returns the session
    (refreshed). Raises :class:`SessionBusy` while a turn holds the session."""
    if to_turn is None:
        raise exc.InvalidInput({"to_turn": ["This field is required."]}, "Invalid to_turn.")
    model = type(session)
    store = SessionStore(model)
    for _ in range(REWIND_ATTEMPTS):
        current = _fresh(session)
        now = timezone.now()
        if lease_held(current.lease_token, current.lease_expires_at, now):
            assert current.lease_expires_at is not None  # a held lease has an expiry
            raise session_busy(current.lease_expires_at, "A turn is running on this session.", now)
        context, before, after = _truncated(current, to_turn, "to_turn")
        with transaction.atomic():
            written = model._base_manager.filter(
                lease_free(now),
                pk=current.pk, version=current.version,
            ).update(**{model.agent_options.context_field: context.to_dict()},
                     version=F("version") + 1, turn_count=after, last_activity_at=now,
                     updated_at=now)
            if written:
                removed = len(current.get_context().messages) - len(context.messages)
                store.append_events(current.pk, [(EventType.SESSION_REWOUND, {
                    "from_turn": before, "to_turn": after, "removed_messages": removed})])
                break
        # a turn took the lease or committed in between: look again
    else:
        raise exc.SessionBusy("The session kept changing; try again.", retry_after=1.0)
    session.refresh_from_db()
    return session


def logged_messages(session: SessionRecord) -> list[dict[str, Any]]:
    """Everything the conversation ever said, rebuilt from the event log: what a compaction
    summarized, a rewind cut or a reset emptied is there too. Messages of failed turns (never
    stored in the context) are not."""
    messages: list[dict[str, Any]] = []
    events = AgentEvent.objects.filter(
        session_type=session.content_type, session_id=session.pk,
        type__in=(EventType.MESSAGE_USER, EventType.MESSAGE_ASSISTANT, EventType.TOOL_RESULT),
    ).order_by("seq").values_list("type", "data")
    for kind, data in events.iterator():
        if kind == EventType.MESSAGE_USER:
            if data.get("stored") is not False:
                append_user(messages, data["content"])
        elif kind == EventType.MESSAGE_ASSISTANT:
            messages.append({"role": "assistant", "content": data["content"]})
        else:
            result = {"type": "tool_result", "tool_use_id": data["id"],
                      "content": data["content"]}
            if data.get("is_error"):
                result["is_error"] = True
            append_user(messages, [result])
    return messages


async def afork_session(session: SessionRecord, **kwargs: Any) -> SessionRecord:
    """Async twin of :func:`fork_session`."""
    return await database_sync_to_async(fork_session)(session, **kwargs)


async def arewind_session(session: SessionRecord, to_turn: int) -> SessionRecord:
    """Async twin of :func:`rewind_session`."""
    return await database_sync_to_async(rewind_session)(session, to_turn)


__all__ = ["afork_session", "arewind_session", "count_turns", "fork_session", "logged_messages",
           "messages_upto", "rewind_session", "turn_starts"]
