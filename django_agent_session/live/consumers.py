"""The WebSocket consumer: one per browser tab, a viewer of one conversation.

It checks the handshake's ``Origin`` (:meth:`AgentSessionConsumer.origin_allowed`), authenticates
(the scope's user, set by ``AuthMiddlewareStack``), resolves the session model
through the factory router, checks that the user may view the conversation (:mod:`.access`),
joins the conversation's group and makes sure a live session runs somewhere in the cluster.
Client frames are validated (:mod:`.protocol`) and handled by the ``frame_<type>`` methods. A
``message`` is committed as a queued run before it is acknowledged (``ack``), with its ``ref``
as idempotency key, so a resent message runs once; whoever drains the queue streams the run to
the group. A ``cancel`` cancels through the database, wherever the run runs. A ``decide``
approves or rejects a tool call awaiting approval as the connected user, tells the group, then
hands a resumed run to the executor (so viewers see the decision before the run goes on). The
state and replays it sends are built by :mod:`.snapshot`. Frames fanned out to the group are
passed to the client as they are.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError

from .. import exceptions as exc
from ..conf import agent_settings
from ..records import RunStatus
from . import access, api, ownership, protocol
from .delivery import DeliveryMixin
from .protocol import FrameError, error_frame
from .routers import SessionSpec, UnknownAgent, resolve
from ..runs.stream import (
    announce,
    announce_queued,
    buffer_for,
    decision_frame,
    frame_message,
    frame_of,
    group_name,
    partial_text,
)
from ..store.queue import Submission
from .snapshot import replay_frames, state_frame, stored_events, stored_state, unseen
from .timers import Timer

logger = logging.getLogger("django_agent_session.live")

#: what queueing a message found when its conversation does not exist (any more)
_GONE = object()


def _json_id(value: Any) -> Any:
    return value if isinstance(value, (int, str)) or value is None else str(value)


class AgentSessionConsumer(DeliveryMixin, AsyncJsonWebsocketConsumer):
    """A viewer of one conversation. Per-route options go through ``as_asgi(**options)``:
    ``conversation_kwarg``, ``state_timeout`` and ``allowed_origins``. Who may view a
    conversation is decided by :meth:`can_view`."""

    #: the URL kwarg holding the conversation id
    conversation_kwarg = "conversation_id"
    #: seconds to wait for the live session's state before sending ``session.state`` without it
    state_timeout = 2.0
    #: the ``Origin`` patterns a handshake may come from, as Channels' ``OriginValidator`` reads
    #: them (``"*"``: any, a missing ``Origin`` too); ``None``:
    #: ``AGENT_SESSION["WEBSOCKET_ALLOWED_ORIGINS"]``, whose ``None`` means ``ALLOWED_HOSTS``
    allowed_origins: list[str] | None = None

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        """The ASGI app of this consumer; ``initkwargs`` are checked here, once, as Django's
        ``as_view`` checks its own: each must name a public attribute of the class."""
        for name in initkwargs:
            if name.startswith("_") or not hasattr(cls, name):
                raise TypeError(f"{cls.__name__}.as_asgi() got an unknown option {name!r}")
        return super().as_asgi(**initkwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for name, value in kwargs.items():  # checked by as_asgi
            setattr(self, name, value)
        super().__init__(*args)
        #: the socket was accepted (a close before it refuses the handshake instead)
        self.accepted = False
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
        #: the last ``n`` per run sent from the run's buffer after the last state, so a group
        #: frame the layer delivers only after the state is not sent twice
        self._sent: dict[str, int] = {}
        self._awaiting_state = False
        #: the deadline of the live session's answer to a state request (see _request_state)
        self._state_deadline: Timer | None = None

    # -- plumbing ----------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' ``AsyncConsumer.__call__``, with a cheaper loop for a busy socket.

        Channels waits on the socket and the channel layer with a new task for the source that
        delivered and an ``asyncio.wait`` over both, for every message: with 50 viewers of a
        conversation in one process that is 50 task creations and waits per streamed delta.
        Here each source is read by one task for the socket's life, and a lock keeps the
        handling one message at a time, as Channels does. A ``StopConsumer`` (the disconnect)
        or a failing source ends both, as there.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is None:
            await super().__call__(scope, receive, send)
            return
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        try:
            await self._serve(receive, self.channel_receive)
        except StopConsumer:
            pass
        finally:  # however it ended: no timer may go on announcing a viewer that is gone
            self._stop_timers()

    async def _serve(self, *sources: Any) -> None:
        """Dispatch what ``sources`` deliver, one message at a time, until one of them (or its
        handling) raises; the others are then cancelled, but never while handling a message
        (Channels too lets a handler finish before it stops)."""
        lock = asyncio.Lock()
        stopping = False

        async def pump(source: Any) -> None:
            while True:
                message = await source()
                async with lock:
                    if stopping:
                        return
                    await self.dispatch(message)

        pumps = [asyncio.create_task(pump(source)) for source in sources]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            stopping = True
            async with lock:  # a message being handled is handled to its end
                pass
            for task in done:
                task.result()  # StopConsumer, or the failure that ended it
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

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
                await self._fail(error_frame(protocol.INTERNAL_ERROR,
                                             "The connection could not be opened."))
            elif message.get("type") == "websocket.receive":
                await self._send_safe(error_frame(protocol.INTERNAL_ERROR,
                                                  "The frame could not be handled."))

    async def _send_safe(self, frame: dict[str, Any]) -> None:
        try:
            await self.send_json(frame)
        except Exception:
            logger.info("Could not send a %r frame", frame.get("type"))

    @staticmethod
    def _error_frame(error: Exception, ref: str | None = None) -> dict[str, Any]:
        """The ``error`` frame of a library error; any other (a ``DatabaseError``) reads as
        ``ownership_unavailable``."""
        if not isinstance(error, exc.AgentSessionError):
            error = ownership.OwnershipUnavailable("The database could not be reached.")
        data = error.to_dict()
        code, message = data.pop("code"), data.pop("message")
        errors = data.pop("errors", None)
        return error_frame(code, message, errors=errors, ref=ref, **data)

    async def _send_error(self, error: Exception, ref: str | None = None) -> None:
        await self._send_safe(self._error_frame(error, ref))

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = True

    async def _refuse(self, code: int) -> None:
        """Accept, then close with ``code`` and no data, so browsers can read the code."""
        await self.accept()
        await self.close(code)

    async def _fail(self, frame: dict[str, Any]) -> None:
        """The server failed: send ``frame`` (accepting first, if need be), then close with
        4500. Never raises: the failure is logged already."""
        try:
            if not self.accepted:
                await self.accept()
            await self.send_json(frame)
            await self.close(protocol.CLOSE_SERVER_ERROR)
        except Exception:
            logger.info("Could not report a server error to the client", exc_info=True)

    @property
    def _user_id(self) -> Any:
        return _json_id(self.user.pk)

    # -- access ------------------------------------------------------------------------------

    def can_view(self, owner_id: Any) -> bool:
        """Whether the connected user may view and drive a conversation owned by ``owner_id``."""
        return owner_id is not None and owner_id == self.user.pk

    def origin_patterns(self) -> list[str]:
        """The allowed ``Origin`` patterns: :attr:`allowed_origins`, else the setting, else
        ``ALLOWED_HOSTS`` (with Channels' fallback when ``DEBUG`` leaves it empty)."""
        patterns = self.allowed_origins
        if patterns is None:
            patterns = agent_settings.WEBSOCKET_ALLOWED_ORIGINS
        if patterns is None:
            patterns = settings.ALLOWED_HOSTS
            if settings.DEBUG and not patterns:
                patterns = ["localhost", "127.0.0.1", "[::1]"]
        return [patterns] if isinstance(patterns, str) else list(patterns)

    def origin_allowed(self) -> bool:
        """Whether the handshake's ``Origin`` header matches :meth:`origin_patterns`, as
        Channels' ``OriginValidator`` matches it. A missing or malformed one does not (unless
        ``"*"`` is allowed): cookies authenticate the socket, so another site must not open
        one."""
        origin = None
        for name, value in self.scope.get("headers", []):
            if name == b"origin":
                origin = value.decode("latin1")
        patterns = self.origin_patterns()
        if "*" in patterns:
            return True
        if origin is None:
            return False
        try:  # urlparse and .port raise ValueError on a malformed host or port
            return OriginValidator(None, patterns).valid_origin(urlparse(origin))
        except ValueError:
            return False

    async def _access(self) -> str:
        assert self.spec is not None
        return await database_sync_to_async(access.check_access)(
            self.spec.model, self.conversation_id, self.can_view)

    # -- connect / disconnect ----------------------------------------------------------------

    async def connect(self) -> None:
        if not self.origin_allowed():
            await self.close()  # before accepting: the handshake is refused (HTTP 403)
            return
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self._refuse(protocol.CLOSE_UNAUTHENTICATED)
            return
        kwargs = dict(self.scope.get("url_route", {}).get("kwargs", {}))
        try:
            self.conversation_id = uuid.UUID(str(kwargs.pop(self.conversation_kwarg, "")))
        except ValueError:
            await self._refuse(protocol.CLOSE_INVALID_ID)
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
        except exc.InvalidInput as error:  # the factory's config does not fit (InvalidConfig)
            logger.warning("Conversation %s: %s", self.conversation_id, error)
            await self._fail(self._error_frame(error))
            return
        try:
            answer = await self._access()
        except DatabaseError as error:
            logger.exception("Could not check access to %s", self.conversation_id)
            await self._fail(self._error_frame(error))
            return
        if answer == access.FORBIDDEN:
            await self._refuse(protocol.CLOSE_FORBIDDEN)
            return
        self.group = group_name(self.spec.model, self.conversation_id)
        await self.accept()
        self._start_heartbeat()
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
        self.exists = answer == access.EXISTS
        if self.exists:
            await self._join()
        else:
            await self._send_state(None)

    def _stop_timers(self) -> None:
        self._stop_heartbeat()
        if self._state_deadline is not None:
            self._state_deadline.cancel()
            self._state_deadline = None

    async def disconnect(self, code: int) -> None:
        self._stop_timers()
        if self.joined and self.group:
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
                await self._goodbye(self.owner)
            except Exception:
                logger.info("Could not announce leaving %s", self.conversation_id)

    # -- viewing the conversation ------------------------------------------------------------

    async def _join(self) -> None:
        """Join the group, make sure a live session runs, then send the state."""
        if not self.joined:
            assert self.group is not None
            await self.channel_layer.group_add(self.group, self.channel_name)
            self.joined = True
        await self._request_state()

    async def _recheck(self) -> bool:
        """Does the conversation exist now, and may we see it? Joins it when it does.

        Asked before every frame that reads or drives the conversation, even once joined: the
        conversation may have been deleted since, and its id taken by another user's new one.
        (A message to a viewed conversation whose live session runs in this process is checked
        by its submission instead: :meth:`frame_message`.) Leaves it when it is gone; leaves
        and closes with 4403 when another user owns it.
        """
        answer = await self._access()
        if answer == access.FORBIDDEN:
            await self._revoke()
            return False
        if answer == access.NEW:
            await self._leave()
            return False
        if not self.exists:
            self.exists = True
            await self._join()
        return True

    async def _revoke(self) -> None:
        """Another user owns the conversation now: leave it and close with 4403."""
        await self._leave()
        self.revoked = True
        await self.close(protocol.CLOSE_FORBIDDEN)

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
        await self._goodbye(owner)

    async def _goodbye(self, owner: str | None) -> None:
        """Tell ``owner`` (if any) this consumer no longer views the conversation."""
        if owner:
            await self.channel_layer.send(owner, {"type": "live.leave",
                                                  "channel": self.channel_name})

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

    # -- state and replays -------------------------------------------------------------------

    async def _request_state(self) -> None:
        if self._buffer is None:
            self._buffer = []  # group frames wait until the state is sent
        try:
            self.owner = await self._elect()
        except (exc.AgentSessionError, DatabaseError) as error:
            await self._send_error(error)
            await self._send_state(None)
            return
        self._awaiting_state = True
        await self._announce(self.owner, want_state=True)
        if self._state_deadline is None:
            self._state_deadline = Timer()
        if not self._state_deadline.scheduled:  # else the earlier request's deadline comes first
            self._state_deadline.call_later(self.state_timeout, self._on_state_timeout)

    def _on_state_timeout(self) -> Coroutine[Any, Any, None] | None:
        # the owner did not answer: send what the database knows
        return self._state_timeout() if self._awaiting_state else None

    async def _state_timeout(self) -> None:
        if self._awaiting_state:
            self._awaiting_state = False
            await self._send_state(None)

    async def _send_state(self, live: dict[str, Any] | None) -> None:
        if self._buffer is None:
            self._buffer = []
        after, self.after_seq = self.after_seq, None
        assert self.spec is not None
        stored, events = await database_sync_to_async(stored_state)(
            self.spec.model, self.conversation_id, readable=self.exists,
            can_view=self.can_view, after_seq=after)
        running, caught_up = stored.get("running"), []
        if running:  # the frames it streamed so far: sent after the state, then the live ones
            caught_up = await buffer_for(self.channel_layer).read(running["run_id"])
            # n: the last frame index the catch-up below covers (deltas counts only deltas)
            running.update(partial_text=partial_text(caught_up), deltas=sum(
                1 for f in caught_up if f.get("type") == "delta"),
                n=caught_up[-1]["n"] if caught_up else 0)
        await self.send_json(state_frame(stored, live or {}))
        if after is not None:
            await self._send_replay(after, events)
        for frame in caught_up:
            await self.send_json(frame)
        sent = {running["run_id"]: caught_up[-1]["n"]} if caught_up else {}
        self._sent = sent
        buffered, self._buffer = self._buffer, None
        for frame in unseen(buffered, stored["seq"], sent):
            await self.send_json(frame)

    async def _send_replay(self, after: int, events: list[dict[str, Any]],
                           ref: str | None = None) -> None:
        for frame in replay_frames(after, events, ref):
            await self.send_json(frame)

    # -- group and owner messages ------------------------------------------------------------

    async def live_frame(self, message: dict[str, Any]) -> None:
        """A frame for every viewer (``runs.stream.frame_message``): sent as encoded once."""
        if not self.joined:  # sent to the group before this socket left it
            return
        if "frame" in message:  # from an older version of this library during an upgrade
            message = frame_message(message["frame"])
        if message.get("kind") == "session.stopped":
            self.owner = None
        if self._buffer is not None:
            self._buffer.append(frame_of(message))
            return
        # a progress frame sent to the group while the state was built may be delivered only
        # after it (the live.state answer was ahead of it in this channel, and messages are
        # handled one at a time): drop it if it was already sent from the run's buffer
        n = message.get("n")
        if n is not None and n <= self._sent.get(message.get("run_id") or "", 0):
            return
        try:
            await self.send(text_data=message["text"])
        except (OSError, RuntimeError) as error:
            # the viewer closed while frames were on their way to it, and its disconnect is
            # next: the ASGI spec has servers raise an OSError here, daphne raises autobahn's
            # Disconnected (a RuntimeError). A closed tab mid-stream is not an error.
            logger.debug("Live frame not sent, the socket is closing: %r", error)

    async def live_state(self, message: dict[str, Any]) -> None:
        if self._awaiting_state:
            self._awaiting_state = False
            await self._send_state(message.get("state"))

    async def live_rollcall(self, message: dict[str, Any]) -> None:
        """A new live session asks who is watching."""
        self.owner = message.get("owner")
        # a new live session may serve a new conversation that took a deleted one's id
        if self.joined and await self._recheck() and self.owner:
            await self._announce(self.owner)

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

    async def frame_ping(self, data: dict[str, Any]) -> None:
        await self.send_json({"type": "pong", "ref": data.get("ref")})

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
            assert self.spec is not None
            events = await database_sync_to_async(stored_events)(
                self.spec.model, self.conversation_id, after)
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
        assert self.spec is not None
        # viewed already, and its live session runs in this process: nothing to start, and
        # the submission checks access itself (``owner_check``, under the row lock), so the
        # message costs no access query of its own
        fast = self.exists and self.owner is not None and \
            api.local_owner(self.conversation_id, self.spec.model) == self.owner
        submitted = await self._submit_message(data, ref, gone=_GONE) if fast else None
        if submitted is _GONE:  # deleted since: as the check below finds it
            await self._leave()
        if not fast or submitted is _GONE:
            if not await self._recheck() and \
                    (self.revoked or not await self._create(None, "", ref)):
                return
            if not await self._owner_ok(ref, elect=True):
                return
            submitted = await self._submit_message(data, ref)
        if not isinstance(submitted, Submission):
            return
        manager = self.spec.model._default_manager
        run = submitted.run
        await self.send_json({"type": "ack", "ref": ref, "run_id": str(run.pk),
                              "status": run.status, "duplicate": not submitted.created})
        for run_id, dropped_ref, queued in submitted.dropped:  # cancelled by its multitask
            await announce(self.channel_layer, self.spec.model, self.conversation_id, {
                "type": "run.status", "status": "cancelled", "ref": dropped_ref,
                "run_id": run_id, "queued": queued})
        if submitted.created:  # announced before it can start, then handed on
            await announce_queued(self.channel_layer, self.spec.model, self.conversation_id,
                                  submitted)
            await database_sync_to_async(manager.dispatch)(self.conversation_id)
        await self._activity()

    async def _submit_message(self, data: dict[str, Any], ref: str, *, gone: Any = None
                              ) -> Submission | Any:
        """Queue the message if the user may still drive the conversation (``can_view``,
        asked under the row lock): the submission; ``None`` after an error frame or a close;
        ``gone`` when the conversation does not exist (any more) and ``gone`` is given."""
        assert self.spec is not None
        try:  # a row before the ack: committed, then handed to the executor
            return await self.spec.model._default_manager.asubmit(
                self.conversation_id, data["input"], idempotency_key=ref,
                multitask=data.get("multitask"), dispatch=False, owner_check=self.can_view,
                origin={"surface": "websocket", "user_id": self._user_id, "ref": ref})
        except PermissionDenied:  # given to another user, or deleted and its id taken
            await self._revoke()
        except exc.SessionNotFound as error:
            if gone is not None:
                return gone
            await self._send_error(error, ref)
        except exc.AgentSessionError as error:
            await self._send_error(error, ref)
        return None

    async def _owner_ok(self, ref: str | None, *, elect: bool) -> bool:
        """Make sure the conversation has its live session (``elect``), or just look it up;
        False (with an error frame) when the id's live session belongs to another model's
        session or ownership cannot be read. Runs themselves never wait for the owner."""
        try:
            owner = await self._elect() if elect else await self._current_owner()
        except (exc.AgentSessionError, DatabaseError) as error:
            await self._send_error(error, ref)
            return False
        if owner is not None and owner != self.owner:
            self.owner = owner
            await self._announce(owner)
        return True

    async def frame_cancel(self, data: dict[str, Any]) -> None:
        ref = data.get("ref")
        if not await self._recheck():
            if self.revoked:
                return
            await self.send_json(error_frame(protocol.NOT_RUNNING, "Nothing is running.",
                                             ref=ref))
            return
        assert self.spec is not None
        if not await self._owner_ok(ref, elect=False):
            return
        manager = self.spec.model._default_manager
        run = await database_sync_to_async(manager.find_run)(self.conversation_id, ref)
        if run is None or run.finished:
            await self.send_json(error_frame(protocol.NOTHING_TO_CANCEL,
                                             "No running or queued message matches.", ref=ref))
            return
        run = await manager.acancel_run(run.pk)
        await self._activity()
        if run.status == RunStatus.CANCELLED:  # it never started: nobody else will say so
            await self.channel_layer.group_send(self.group, frame_message({
                "type": "run.status", "status": "cancelled", "ref": run.ref,
                "run_id": str(run.pk), "queued": True}))

    async def frame_decide(self, data: dict[str, Any]) -> None:
        ref, tool_use_id, approved = data.get("ref"), data["tool_use_id"], data["approve"]
        if not await self._recheck():
            if not self.revoked:  # no conversation: no such call
                await self._send_error(exc.ToolCallNotFound(
                    f"No pending tool call {tool_use_id!r} on this session."), ref)
            return
        assert self.spec is not None
        model = self.spec.model
        manager = model._default_manager
        try:  # the manager checks who may decide (``may_decide``): else, as a missing call
            if approved:
                run = await manager.aapprove_tool_call(
                    self.conversation_id, tool_use_id, by=self.user, input=data.get("input"),
                    dispatch=False)
            else:
                run = await manager.areject_tool_call(
                    self.conversation_id, tool_use_id, by=self.user,
                    reason=data.get("reason", ""), dispatch=False)
        except exc.AgentSessionError as error:
            await self._send_error(error, ref)
            return
        resumed = run.status == RunStatus.QUEUED
        await self.send_json({"type": "decided", "ref": ref, "tool_use_id": tool_use_id,
                              "approved": approved, "resumed": resumed, "run_id": str(run.pk)})
        try:  # every viewer resolves its card, before the resumed run's frames
            frame = await database_sync_to_async(decision_frame)(model, run, tool_use_id,
                                                                 resumed)
            await announce(self.channel_layer, model, self.conversation_id, frame)
        except Exception:
            logger.warning("Could not announce the decision on %s", tool_use_id,
                           exc_info=True)
        if resumed:
            await database_sync_to_async(manager.dispatch)(self.conversation_id)
        await self._activity()
