"""What a viewer is told about a conversation: ``session.state``, replays and held-back frames.

``session.state`` joins what the database stores (read here, by sync functions to run through
``database_sync_to_async``: the context, the running run, the queue and the tool calls
awaiting approval) with the live
session's part (presence). A viewer is then sent the running run's buffered frames (see
:mod:`django_agent_session.runs.stream`), so it misses no delta of a run it joined mid-way. A
replay is the stored events after a ``seq``, as ``event`` frames, closed by ``replay.done``.
Group frames that arrive while the state is being built are held back; :func:`unseen` keeps
those the state does not already contain. The consumer only sends these frames, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.contenttypes.models import ContentType

from ..records import AgentEvent, AgentRun, RunStatus

#: most stored events sent for one replay (``replay.done`` says whether more are left)
REPLAY_LIMIT = 1000


def event_frame(event: AgentEvent) -> dict[str, Any]:
    """A stored event as an ``event`` frame (its own type goes in ``event``)."""
    data = event.as_dict()
    return {"type": "event", "event": data.pop("type"), **data}


def stored_events(model: Any, conversation_id: Any, after_seq: int, upto: int | None = None
                  ) -> list[dict[str, Any]]:
    """Sync: ``event`` frames of the conversation's events with ``after_seq < seq <= upto``,
    at most ``REPLAY_LIMIT + 1`` (the extra one tells that more are left)."""
    events = AgentEvent.objects.filter(
        session_type=ContentType.objects.get_for_model(model),
        session_id=conversation_id, seq__gt=after_seq)
    if upto is not None:
        events = events.filter(seq__lte=upto)
    return [event_frame(e) for e in events.order_by("seq")[:REPLAY_LIMIT + 1]]


def stored_state(model: Any, conversation_id: Any, *, readable: bool,
                 can_view: Callable[[Any], bool], after_seq: int | None
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sync: the stored part of ``session.state``, and the events to replay after ``after_seq``
    (none when it is ``None``).

    Only a conversation whose access was checked (``readable``) is read, and it is shown only
    if ``can_view`` its owner still; otherwise the state is that of a new conversation.
    """
    base = {"conversation_id": str(conversation_id), "agent": model._meta.label}
    row = model._base_manager.filter(pk=conversation_id).first() if readable else None
    if row is None or not can_view(row.owner_id):
        return {**base, "exists": False, "status": "new", "seq": 0, "turns": 0, "title": "",
                "messages": [], "last_output": None, "running": None, "queue": [],
                "pending": []}, []
    context = row.get_context()
    events = (stored_events(model, conversation_id, after_seq, row.event_seq)
              if after_seq is not None else [])
    runs = AgentRun.objects.filter(
        session_type=ContentType.objects.get_for_model(model), session_id=conversation_id,
        status__in=(RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.AWAITING_APPROVAL))
    running: dict[str, Any] | None = None
    queue: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for run in runs.order_by("queued_seq", "started_at"):
        if run.status == RunStatus.AWAITING_APPROVAL:  # its undecided calls, as the manager's
            pending += [{"ref": run.ref, "run_id": str(run.pk),
                         "tool_use_id": call["tool_use_id"], "name": call["name"],
                         "input": call["input"],
                         "expires_at": (run.pause or {}).get("expires_at")}
                        for call in (run.pause or {}).get("calls", [])
                        if call["decision"] is None]
            continue
        summary = {"ref": run.ref, "run_id": str(run.pk), "input": run.input,
                   "user_id": run.origin.get("user_id")}
        if run.status == RunStatus.QUEUED:
            queue.append({**summary, "position": len(queue) + 1})
        elif run.pk == row.lease_token:
            running = summary
    return {**base, "exists": True, "status": row.status, "seq": row.event_seq,
            "turns": row.turn_count, "title": row.title, "messages": context.messages,
            "last_output": context.last_output, "running": running, "queue": queue,
            "pending": pending}, events


def state_frame(stored: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """``session.state``: the stored state (with the running run and the queue) and the live
    session's presence (``{}``: none answered)."""
    return {"type": "session.state", **stored, "live": bool(live),
            "presence": live.get("presence")}


def replay_frames(after: int, events: list[dict[str, Any]], ref: str | None = None
                  ) -> list[dict[str, Any]]:
    """The ``event`` frames of a replay after ``after`` (at most ``REPLAY_LIMIT``), then
    ``replay.done``."""
    more = len(events) > REPLAY_LIMIT
    events = events[:REPLAY_LIMIT]
    done: dict[str, Any] = {"type": "replay.done", "after_seq": after,
                            "seq": events[-1]["seq"] if events else after, "more": more}
    if ref is not None:
        done["ref"] = ref
    return [*events, done]


def unseen(frames: list[dict[str, Any]], seq: int, sent: dict[str, int]
           ) -> list[dict[str, Any]]:
    """The held-back ``frames`` a viewer still needs after a state at ``seq``, when it was
    already sent the buffered frames of runs up to index ``sent[run_id]``."""
    kept = []
    for frame in frames:
        frame_seq = frame.get("seq")
        if frame_seq is not None and frame_seq <= seq:
            continue  # already in the state or the replay
        n = frame.get("n")
        if n is not None and n <= sent.get(frame.get("run_id") or "", 0):
            continue  # already sent from the run's buffer
        kept.append(frame)
    return kept
