"""The lifecycle API of live sessions: start, ensure_running, is_running, stop.

``start`` is idempotent and cluster-wide: if any process holds an unexpired ownership lease for
the conversation, it answers with that owner's channel; otherwise it takes the lease (one
conditional write) and starts a :class:`~.session.LiveSession` in *this* process's event loop.
When the lease cannot be read or written it raises
:class:`~.ownership.OwnershipUnavailable` instead of risking two owners.

The live session runs in the caller's event loop, so call these from the ASGI server's loop (a
consumer, an async view). ``stop_session`` and ``is_session_running`` are sync helpers for
admin actions and management commands.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError

from .. import exceptions as exc
from ..records import AgentEvent, AgentRun, LiveOwnership
from ..runs.shutdown import install_signal_handler, on_shutdown
from ..store.sessions import insert_session
from . import ownership, registry
from .registry import local_sessions
from .routers import SessionSpec, resolve
from .session import LiveSession, group_name

__all__ = ["StartResult", "create_conversation", "ensure_running", "is_running",
           "is_session_running", "local_sessions", "owner_channel", "start", "stop", "stop_all",
           "stop_session"]


@dataclass(frozen=True)
class StartResult:
    """``status`` is ``"started"`` (this call started it) or ``"running"`` (it already was)."""

    status: str
    owner_channel: str
    #: the live session when it runs in this process's loop
    session: LiveSession | None = None


def _uuid(conversation_id: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(conversation_id))
    except ValueError:
        raise exc.SessionNotFound(f"{conversation_id!r} is not a conversation id.") from None


async def _spec(cid: uuid.UUID, scope: dict[str, Any] | None,
                request_opts: dict[str, Any] | None, spec: SessionSpec | None) -> SessionSpec:
    """``spec``, or what the factory router decides for the conversation."""
    if spec is not None:
        return spec
    return await database_sync_to_async(resolve)(scope or {}, cid, dict(request_opts or {}))


def _local(conversation_id: Any) -> LiveSession | None:
    return local_sessions().get(str(_uuid(conversation_id)))


def local_owner(conversation_id: Any, model: type) -> str | None:
    """The channel of the conversation's live session if it runs in this process for a
    session of ``model`` (no I/O); ``None`` otherwise, whether it runs elsewhere or not."""
    local = _local(conversation_id)
    if local is not None and local.alive and local.model is model:
        return local.channel_name
    return None


async def start(conversation_id: Any, *, scope: dict[str, Any] | None = None,
                request_opts: dict[str, Any] | None = None, spec: SessionSpec | None = None,
                channel_layer: Any = None) -> StartResult:
    """Start the conversation's live session unless one runs somewhere (idempotent)."""
    cid = _uuid(conversation_id)
    key = str(cid)
    spec = await _spec(cid, scope, request_opts, spec)
    async with registry.start_lock(key):
        return await _start(key, cid, spec, channel_layer)


async def _start(key: str, cid: uuid.UUID, spec: SessionSpec, channel_layer: Any
                 ) -> StartResult:
    local = local_sessions().get(key)
    if local is not None and local.model is not spec.model:
        # keyed by id alone, like the lease: the id is taken by another model's live session
        raise ownership.OwnershipConflict(
            "This conversation id belongs to a session of another model.")
    if local is not None:
        if local.alive:
            return StartResult("running", local.channel_name, local)
        await local.stopped.wait()  # stopping: let it release the lease first
    lease = await database_sync_to_async(ownership.current)(spec.model, cid)
    if lease is not None:
        return StartResult("running", lease.owner_channel)
    exists = await database_sync_to_async(
        spec.model._base_manager.filter(pk=cid).exists)()
    if not exists:
        raise exc.SessionNotFound(f"No {spec.model.__name__} with id {cid}.")
    layer = channel_layer or get_channel_layer()
    channel = await layer.new_channel()
    lease = await database_sync_to_async(ownership.acquire)(spec.model, cid, channel)
    if not lease.acquired:
        return StartResult("running", lease.owner_channel)
    session = LiveSession(spec, cid, layer, channel, lease.expires_at)
    install_signal_handler()
    registry.add(session)
    try:
        await session.start()
    except BaseException:
        registry.forget(session)
        await database_sync_to_async(ownership.release)(cid, channel)
        raise
    return StartResult("started", channel, session)


async def ensure_running(conversation_id: Any, *, scope: dict[str, Any] | None = None,
                         request_opts: dict[str, Any] | None = None,
                         spec: SessionSpec | None = None, subscriber: str | None = None,
                         channel_layer: Any = None) -> StartResult:
    """:func:`start`, then add ``subscriber`` (a channel name) to the conversation's group."""
    cid = _uuid(conversation_id)
    spec = await _spec(cid, scope, request_opts, spec)
    layer = channel_layer or get_channel_layer()
    if subscriber is not None:
        await layer.group_add(group_name(spec.model, cid), subscriber)
    return await start(cid, spec=spec, channel_layer=layer)


async def owner_channel(conversation_id: Any, model: type | None = None) -> str | None:
    """The channel of the conversation's live owner, wherever it runs (``None``: not running).

    With ``model``, a lease held for another model's session raises ``OwnershipConflict``.
    """
    lease = await database_sync_to_async(ownership.current)(model, _uuid(conversation_id))
    return lease.owner_channel if lease else None


async def is_running(conversation_id: Any) -> bool:
    """Whether a live session owns the conversation, in any process."""
    local = _local(conversation_id)
    if local is not None and local.alive:
        return True
    return await owner_channel(conversation_id) is not None


async def stop(conversation_id: Any, *, reason: str = "stopped",
               channel_layer: Any = None, model: type | None = None) -> str:
    """Stop the live session wherever it runs: ``"stopped"`` or ``"not_running"``.

    A local session is stopped before this returns; a remote owner is asked to stop (it cancels
    a running turn, drops the queue, releases its lease and tells its viewers why). With
    ``model``, a live session of another model's session with the same id is left alone.
    """
    local = _local(conversation_id)
    if local is not None and (model is None or local.model is model):
        if local.state in ("running", "stopping"):
            await local.stop(reason)
            return "stopped"
    try:
        channel = await owner_channel(conversation_id, model)
    except ownership.OwnershipConflict:
        return "not_running"
    if channel is None:
        return "not_running"
    layer = channel_layer or get_channel_layer()
    await layer.send(channel, {"type": "live.stop", "reason": reason})
    return "stopped"


async def stop_all(reason: str = "shutdown") -> int:
    """Stop every live session hosted by this event loop; returns how many were stopped."""
    sessions = list(local_sessions().values())
    await asyncio.gather(*(s.stop(reason) for s in sessions), return_exceptions=True)
    return len(sessions)


@on_shutdown
async def _stop_at_shutdown() -> None:
    await stop_all("shutdown")


def stop_session(session: Any, reason: str = "admin") -> bool:
    """Sync: ask the live session of ``session`` (a model instance or pk) to stop.

    Returns whether a live owner was found. Works from sync code in any process that shares the
    channel layer (with the in-memory layer, only from the process hosting the session).
    """
    pk = getattr(session, "pk", session)
    model = type(session) if hasattr(session, "pk") else None
    return async_to_sync(stop)(pk, reason=reason, model=model) == "stopped"


def is_session_running(session: Any) -> bool:
    """Sync: whether ``session`` (a model instance or pk) has a live owner anywhere."""
    pk = getattr(session, "pk", session)
    lease = ownership.current(None, _uuid(pk))
    return lease is not None


def create_conversation(spec: SessionSpec, conversation_id: Any, owner: Any, *,
                        instruction_args: dict[str, Any] | None = None,
                        title: str = "") -> tuple[Any, bool]:
    """Sync: create the conversation ``conversation_id`` owned by ``owner``, seeded from
    ``spec.fresh_state``; returns ``(session, created)``.

    Idempotent for its owner; raises ``PermissionDenied`` when another user owns it and
    :class:`~.ownership.OwnershipConflict` when the id is used by another model's session.
    Instruction args from ``fresh_state`` (the server) win over ``instruction_args`` (the client).
    """
    model, cid = spec.model, _uuid(conversation_id)
    fresh = spec.fresh_state

    def existing() -> Any:
        session = model._base_manager.filter(pk=cid).first()
        if session is not None and session.owner_id != getattr(owner, "pk", owner):
            raise PermissionDenied("This conversation belongs to another user.")
        return session

    session = existing()
    if session is not None:
        return session, False
    if any(m.objects.filter(session_id=cid).exists()
           for m in (AgentEvent, AgentRun, LiveOwnership)):
        raise ownership.OwnershipConflict(
            "This conversation id is already used by a session of another model.")
    args = {**(instruction_args or {}), **(fresh.get("instruction_args") or {})}
    context = model._default_manager.initial_context(args, spec.config)
    context.messages = list(fresh.get("messages") or [])
    session = model(id=cid, owner=owner, title=(title or fresh.get("title") or "")[:200],
                    **(fresh.get("fields") or {}))
    if "metadata" in fresh:
        session.metadata = fresh["metadata"]
    try:
        insert_session(session, context, {"live": True})
    except IntegrityError:
        session = existing()
        if session is None:
            raise
        return session, False
    return session, True
