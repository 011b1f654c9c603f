"""The WebSocket consumer: one per browser tab, a viewer of one conversation.

It authenticates (the scope's user, set by ``AuthMiddlewareStack``), resolves the session model
through the factory router, checks that the user owns the conversation, joins the conversation's
group and makes sure a live session runs somewhere in the cluster. Client frames are validated
(:mod:`.protocol`); ``message`` and ``cancel`` are forwarded, in order, to the live session's
channel and acknowledged by it (a lost owner is detected and replaced, see ``_deliver``). Frames
the live session fans out to the group are passed to the client as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError

from .. import exceptions as exc
from ..conf import agent_settings
from ..models import AgentEvent
from . import api, ownership, protocol
from .protocol import FrameError, error_frame
from .routers import SessionSpec, UnknownAgent, resolve
from .session import group_name

logger = logging.getLogger("django_agent_session.live")

#: most stored events sent for one replay (``replay.done`` says whether more are left)
REPLAY_LIMIT = 1000


def _json_id(value: Any) -> Any:
    return value if isinstance(value, (int, str)) or value is None else str(value)


class AgentSessionConsumer(AsyncJsonWebsocketConsumer):
    """A viewer of one conversation. Per-route options go through ``as_asgi(**options)``."""

    #: the URL kwarg holding the conversation id
    conversation_kwarg = "conversation_id"
    #: seconds to wait for the live session's state before sending ``session.state`` without it
    state_timeout = 2.0
    #: seconds to wait for the live session to acknowledge a forwarded frame before retrying
    ack_timeout = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for name in list(kwargs):
            if name.startswith("_") or not hasattr(type(self), name):
                raise TypeError(f"{type(self).__name__}.as_asgi() got an unknown option {name!r}")
            setattr(self, name, kwargs.pop(name))
        super().__init__(*args, **kwargs)
        self.user: Any = None
        self.spec: SessionSpec | None = None
        self.conversation_id: uuid.UUID | None = None
        self.group: str | None = None
        self.exists = False
        self.joined = False
        #: closed with 4403 after the conversation turned out to be another user's
        self.revoked = False
        self.owner: str | None = None
        self.after_seq: int | None = None
        self._buffer: list[dict[str, Any]] | None = None
        self._awaiting_state = False
        self._acks: dict[str, asyncio.Future] = {}
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []

    # -- plumbing ----------------------------------------------------------------------------

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return json.dumps(content, cls=DjangoJSONEncoder)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Never let one message end the connection (only a disconnect does)."""
        try:
            if message.get("type") == "live.frame":
                # fan-out frames never touch the ORM: skip the database-cleanup thread hop
                # Channels' dispatch makes before every handler (the streaming hot path)
                await self.live_frame(message)
                return
            await super().dispatch(message)
        except (StopConsumer, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("Live consumer failed on %r", message.get("type"))
            if message.get("type") == "websocket.connect":
                await self.close(protocol.CLOSE_SERVER_ERROR)
            elif message.get("type") == "websocket.receive":
                await self._send_safe(error_frame(protocol.INTERNAL_ERROR,
                                                  "The frame could not be handled."))

    async def _send_safe(self, frame: dict[str, Any]) -> None:
        try:
            await self.send_json(frame)
        except Exception:
            logger.info("Could not send a %r frame", frame.get("type"))

    async def _refuse(self, code: int) -> None:
        """Accept, then close with ``code`` and no data, so browsers can read the code."""
        await self.accept()
        await self.close(code)

    @property
    def _user_id(self) -> Any:
        return _json_id(self.user.pk)

    # -- connect / disconnect ----------------------------------------------------------------

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self._refuse(protocol.CLOSE_UNAUTHENTICATED)
            return
        kwargs = dict(self.scope.get("url_route", {}).get("kwargs", {}))
        try:
            self.conversation_id = uuid.UUID(str(kwargs.pop(self.conversation_kwarg, "")))
        except ValueError:
            await self._refuse(protocol.CLOSE_NOT_FOUND)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        request_opts = {**kwargs, "query": {k: v[-1] for k, v in query.items()}}
        try:
            self.spec = await database_sync_to_async(resolve)(self.scope, self.conversation_id,
                                                              request_opts)
        except UnknownAgent:
            await self._refuse(protocol.CLOSE_NOT_FOUND)
            return
        except PermissionDenied:
            await self._refuse(protocol.CLOSE_FORBIDDEN)
            return
        try:
            access = await database_sync_to_async(self._access)()
        except DatabaseError:
            logger.exception("Could not check access to %s", self.conversation_id)
            await self._refuse(protocol.CLOSE_SERVER_ERROR)
            return
        if access == "forbidden":
            await self._refuse(protocol.CLOSE_FORBIDDEN)
            return
        self.group = group_name(self.spec.model, self.conversation_id)
        await self.accept()
        self._tasks = [asyncio.create_task(self._forwarder()),
                       asyncio.create_task(self._heartbeat())]
        bad_seq = None
        if "after_seq" in query:
            try:
                self.after_seq = int(query["after_seq"][-1])
                if self.after_seq < 0:
                    raise ValueError
            except ValueError:
                bad_seq = query["after_seq"][-1]
        if bad_seq is not None:
            await self.send_json(error_frame(
                protocol.INVALID_FRAME, "after_seq must be a non-negative integer.",
                errors={"after_seq": ["A valid integer is required."]}))
        self.exists = access == "exists"
        if self.exists:
            await self._join()
        else:
            await self._send_state(None)

    def _access(self) -> str:
        """``"exists"``, ``"new"`` (no such conversation yet) or ``"forbidden"``."""
        assert self.spec is not None
        row = self.spec.model._base_manager.filter(pk=self.conversation_id).values(
            "owner_id").first()
        if row is None:
            return "new"
        return "exists" if self.can_view(row["owner_id"]) else "forbidden"

    def can_view(self, owner_id: Any) -> bool:
        """Whether the connected user may view and drive a conversation owned by ``owner_id``."""
        return owner_id is not None and owner_id == self.user.pk

    async def disconnect(self, code: int) -> None:
        for task in self._tasks:
            task.cancel()
        for future in self._acks.values():
            future.cancel()
        if self.joined and self.group:
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
                if self.owner:
                    await self.channel_layer.send(self.owner, {"type": "live.leave",
                                                               "channel": self.channel_name})
            except Exception:
                logger.info("Could not announce leaving %s", self.conversation_id)

    # -- joining and state -------------------------------------------------------------------

    async def _join(self) -> None:
        """Join the group, make sure a live session runs, then send the state."""
        if not self.joined:
            assert self.group is not None
            await self.channel_layer.group_add(self.group, self.channel_name)
            self.joined = True
        await self._request_state()

    async def _request_state(self) -> None:
        if self._buffer is None:
            self._buffer = []  # group frames wait until the state is sent
        try:
            result = await api.start(self.conversation_id, spec=self.spec,
                                     channel_layer=self.channel_layer)
        except (exc.AgentSessionError, DatabaseError) as error:
            await self._send_error(error)
            await self._send_state(None)
            return
        self.owner = result.owner_channel
        self._awaiting_state = True
        await self.channel_layer.send(self.owner, {
            "type": "live.join", "channel": self.channel_name, "user_id": self._user_id,
            "want_state": True})
        self._tasks = [t for t in self._tasks if not t.done()]  # a `state` loop stays bounded
        self._tasks.append(asyncio.create_task(self._state_timeout()))

    async def _state_timeout(self) -> None:
        await asyncio.sleep(self.state_timeout)
        if self._awaiting_state:  # the owner did not answer: send what the database knows
            self._awaiting_state = False
            await self._send_state(None)

    async def live_state(self, message: dict[str, Any]) -> None:
        if self._awaiting_state:
            self._awaiting_state = False
            await self._send_state(message.get("state"))

    async def _send_state(self, live: dict[str, Any] | None) -> None:
        if self._buffer is None:
            self._buffer = []
        after, self.after_seq = self.after_seq, None
        snapshot = await database_sync_to_async(self._snapshot)(after)
        events = snapshot.pop("events")
        live = live or {}
        await self.send_json({
            "type": "session.state", **snapshot, "live": bool(live),
            "running": live.get("running"), "queue": live.get("queue", []),
            "presence": live.get("presence"),
        })
        if after is not None:
            await self._send_replay(after, events)
        buffered, self._buffer = self._buffer, None
        running = live.get("running") or {}
        for frame in buffered:
            seq = frame.get("seq")
            if seq is not None and seq <= snapshot["seq"]:
                continue  # already in the state or the replay
            if (frame.get("type") == "delta" and frame.get("ref") == running.get("ref")
                    and (frame.get("n") or 0) <= running.get("deltas", 0)):
                continue  # already in running.partial_text
            await self.send_json(frame)

    def _snapshot(self, after_seq: int | None) -> dict[str, Any]:
        assert self.spec is not None
        model = self.spec.model
        base = {"conversation_id": str(self.conversation_id), "agent": model._meta.label}
        # only a conversation whose access was checked is read (see _recheck)
        row = model._base_manager.filter(pk=self.conversation_id).first() if self.exists else None
        if row is None or not self.can_view(row.owner_id):
            return {**base, "exists": False, "status": "new", "seq": 0, "turns": 0,
                    "title": "", "messages": [], "last_output": None, "events": []}
        context = row.get_context()
        events = self._events(after_seq, row.event_seq) if after_seq is not None else []
        return {**base, "exists": True, "status": row.status, "seq": row.event_seq,
                "turns": row.turn_count, "title": row.title, "messages": context.messages,
                "last_output": context.last_output, "events": events}

    def _events(self, after_seq: int, upto: int | None = None) -> list[dict[str, Any]]:
        assert self.spec is not None
        events = AgentEvent.objects.filter(
            session_type=ContentType.objects.get_for_model(self.spec.model),
            session_id=self.conversation_id, seq__gt=after_seq)
        if upto is not None:
            events = events.filter(seq__lte=upto)
        return [{"type": "event", "seq": e.seq, "event": e.type,
                 "run_id": str(e.run_id) if e.run_id else None, "data": e.data,
                 "created_at": e.created_at.isoformat()}
                for e in events.order_by("seq")[:REPLAY_LIMIT + 1]]

    async def _send_replay(self, after: int, events: list[dict[str, Any]],
                           ref: str | None = None) -> None:
        more = len(events) > REPLAY_LIMIT
        events = events[:REPLAY_LIMIT]
        for event in events:
            await self.send_json(event)
        done: dict[str, Any] = {"type": "replay.done", "after_seq": after,
                                "seq": events[-1]["seq"] if events else after, "more": more}
        if ref is not None:
            done["ref"] = ref
        await self.send_json(done)

    # -- group and owner messages ------------------------------------------------------------

    async def live_frame(self, message: dict[str, Any]) -> None:
        if not self.joined:  # sent to the group before this socket left it
            return
        frame = message["frame"]
        if frame.get("type") == "session.stopped":
            self.owner = None
        if self._buffer is not None:
            self._buffer.append(frame)
            return
        await self.send_json(frame)

    async def live_rollcall(self, message: dict[str, Any]) -> None:
        """A new live session asks who is watching."""
        self.owner = message.get("owner")
        # a new live session may serve a new conversation that took a deleted one's id
        if self.joined and await self._recheck() and self.owner:
            await self.channel_layer.send(self.owner, {
                "type": "live.join", "channel": self.channel_name, "user_id": self._user_id})

    async def live_ack(self, message: dict[str, Any]) -> None:
        future = self._acks.get(message.get("id") or "")
        if future is not None and not future.done():
            future.set_result(message)

    # -- client frames -----------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None,
                      **kwargs: Any) -> None:
        ref = None
        try:
            content = protocol.decode(text_data, bytes_data, agent_settings.MAX_FRAME_BYTES)
            kind, data = protocol.parse(content)
            ref = data.get("ref")
            await getattr(self, f"frame_{kind}")(data)
        except FrameError as error:
            await self.send_json(error.to_frame())
        except (exc.AgentSessionError, DatabaseError) as error:  # e.g. the access check
            await self._send_error(error, ref)

    async def _send_error(self, error: Exception, ref: str | None = None) -> None:
        if isinstance(error, exc.AgentSessionError):
            data = error.to_dict()
            code, message = data.pop("code"), data.pop("message")
            errors = data.pop("errors", None)
            await self._send_safe(error_frame(code, message, errors=errors, ref=ref, **data))
        else:
            await self._send_safe(error_frame(
                ownership.OwnershipUnavailable.code, "The database could not be reached.",
                ref=ref))

    async def frame_ping(self, data: dict[str, Any]) -> None:
        await self.send_json({"type": "pong", "ref": data.get("ref")})

    async def _recheck(self) -> bool:
        """Does the conversation exist now, and may we see it? Joins it when it does.

        Asked before every frame that reads or drives the conversation, even once joined: the
        conversation may have been deleted since, and its id taken by another user's new one.
        Leaves it when it is gone; leaves and closes with 4403 when another user owns it.
        """
        access = await database_sync_to_async(self._access)()
        if access == "forbidden":
            await self._leave()
            self.revoked = True
            await self.close(protocol.CLOSE_FORBIDDEN)
            return False
        if access == "new":
            await self._leave()
            return False
        if not self.exists:
            self.exists = True
            await self._join()
        return True

    async def _leave(self) -> None:
        """Stop viewing the conversation: leave its group and its live session's presence."""
        self.exists = False
        self._awaiting_state = False
        if not self.joined:
            return
        self.joined = False
        assert self.group is not None
        await self.channel_layer.group_discard(self.group, self.channel_name)
        owner, self.owner = self.owner, None
        if owner:
            await self.channel_layer.send(owner, {"type": "live.leave",
                                                  "channel": self.channel_name})

    async def frame_state(self, data: dict[str, Any]) -> None:
        joined = self.exists
        if await self._recheck():
            if joined:  # else _recheck joined it, which sends the state
                await self._request_state()
        elif not self.revoked:
            await self._send_state(None)

    async def frame_resume(self, data: dict[str, Any]) -> None:
        after = data["after_seq"]
        events = []
        if await self._recheck():
            events = await database_sync_to_async(self._events)(after)
        elif self.revoked:
            return
        await self._send_replay(after, events, data.get("ref"))

    async def frame_start(self, data: dict[str, Any]) -> None:
        joined = self.exists
        if await self._recheck():
            if joined:
                await self._request_state()
            return
        if not self.revoked:
            await self._create(data.get("instruction_args"), data.get("title", ""),
                               data.get("ref"))

    async def frame_message(self, data: dict[str, Any]) -> None:
        ref = data.get("ref") or uuid.uuid4().hex[:12]
        if not await self._recheck() and (self.revoked or not await self._create(None, "", ref)):
            return
        assert self.spec is not None
        queryset = self.spec.model._default_manager.all()
        try:  # the live session validates again; this answers the sender at once
            await database_sync_to_async(queryset.validate_input)(data["input"])
        except exc.InvalidInput as error:
            await self._send_error(error, ref)
            return
        await self._outbox.put(({"type": "live.message", "id": uuid.uuid4().hex, "ref": ref,
                                 "input": data["input"], "user_id": self._user_id,
                                 "reply_to": self.channel_name}, True))

    async def frame_cancel(self, data: dict[str, Any]) -> None:
        if not await self._recheck():
            if self.revoked:
                return
            await self.send_json(error_frame(protocol.NOT_RUNNING, "Nothing is running.",
                                             ref=data.get("ref")))
            return
        await self._outbox.put(({"type": "live.cancel", "id": uuid.uuid4().hex,
                                 "ref": data.get("ref"), "user_id": self._user_id,
                                 "reply_to": self.channel_name}, False))

    async def _create(self, instruction_args: dict[str, Any] | None, title: str,
                      ref: str | None) -> bool:
        """Create the conversation, owned by the user; then join it."""
        try:
            await database_sync_to_async(api.create_conversation)(
                self.spec, self.conversation_id, self.user, instruction_args=instruction_args,
                title=title)
        except PermissionDenied:
            await self.close(protocol.CLOSE_FORBIDDEN)
            return False
        except exc.AgentSessionError as error:
            await self._send_error(error, ref)
            return False
        self.exists = True
        await self._join()
        return True

    # -- forwarding to the live session ------------------------------------------------------

    async def _forwarder(self) -> None:
        """Deliver forwarded frames one at a time, so the live session sees them in order."""
        while True:
            payload, elect = await self._outbox.get()
            try:
                await self._deliver(payload, elect)
            except Exception:
                logger.exception("Could not forward %r", payload.get("type"))
                await self._send_safe(error_frame(protocol.INTERNAL_ERROR,
                                                  "The frame could not be delivered.",
                                                  ref=payload.get("ref")))

    async def _deliver(self, payload: dict[str, Any], elect: bool) -> None:
        """Send ``payload`` to the live owner until it acknowledges.

        An owner whose process died never answers: the message is sent again after
        ``ack_timeout``, to whichever owner the lease names by then (a new one is elected once
        the old lease expires). The owner ignores a message id it has already taken.
        """
        loop = asyncio.get_running_loop()
        ref = payload.get("ref")
        deadline = loop.time() + ownership.lease_seconds() * 2 + self.ack_timeout
        while True:
            try:
                if elect:
                    owner: str | None = (await api.start(self.conversation_id, spec=self.spec,
                                                         channel_layer=self.channel_layer)
                                         ).owner_channel
                else:
                    owner = await api.owner_channel(self.conversation_id, self.spec.model)
            except (exc.AgentSessionError, DatabaseError) as error:
                await self._send_error(error, ref)
                return
            if owner is None:
                await self.send_json(error_frame(protocol.NOT_RUNNING, "Nothing is running.",
                                                 ref=ref))
                return
            if owner != self.owner:
                self.owner = owner
                await self.channel_layer.send(owner, {
                    "type": "live.join", "channel": self.channel_name, "user_id": self._user_id})
            future = loop.create_future()
            self._acks[payload["id"]] = future
            reply: dict[str, Any] | None = None
            try:
                await self.channel_layer.send(owner, payload)
                reply = await asyncio.wait_for(future, self.ack_timeout)
            except asyncio.TimeoutError:
                pass
            except Exception as error:  # e.g. ChannelFull: try again like a lost owner
                logger.info("Forwarding to %s failed: %r", owner, error)
            finally:
                self._acks.pop(payload["id"], None)
            if reply is not None and not reply.get("retry"):
                if reply.get("frame"):
                    await self.send_json(reply["frame"])
                return
            if loop.time() >= deadline:
                await self.send_json(error_frame(
                    protocol.OWNER_UNAVAILABLE, "The live session did not answer; try again.",
                    ref=ref))
                return
            if reply is not None:  # the owner is stopping: wait for it to let go
                await asyncio.sleep(0.1)

    async def _heartbeat(self) -> None:
        """Re-announce this viewer to the live owner, so presence survives owner changes."""
        interval = max(ownership.lease_seconds() / 3, 0.1)
        while True:
            await asyncio.sleep(interval)
            if not self.joined:
                continue
            try:
                owner = await api.owner_channel(self.conversation_id, self.spec.model)
                if owner is not None:
                    self.owner = owner
                    await self.channel_layer.send(owner, {
                        "type": "live.join", "channel": self.channel_name,
                        "user_id": self._user_id})
            except Exception:
                logger.info("Presence heartbeat for %s failed", self.conversation_id)
