"""The session viewset: a base class holding every endpoint, and a factory per model.

:class:`AgentSessionViewSet` knows nothing about a particular agent; :func:`viewset_factory`
subclasses it (or the project's own subclass named by ``Agent.viewset``) for one concrete
session model, filling in the model and its generated serializers. Turns always go through the
model's manager; this module never runs a turn itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.handlers.asgi import ASGIRequest
from django.db import connections, transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils.module_loading import import_string
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotAcceptable, NotFound, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from .. import exceptions as exc
from ..conf import agent_settings, perform_import
from ..records import RunStatus, SessionRecord
from ..runs.stream import announce, decision_frame
from ..store.events import wait_for_events
from ..store.sessions import delete_session
from .errors import api_exception, busy_retry_after, error_body
from .filters import SessionFilterBackend
from .openapi import annotate
from .pagination import SeqCursorPagination, SessionPagination
from .parsers import SessionJSONParser
from .permissions import owned_by
from .protocols import QUERY_PARAM, StreamProtocol, protocol_for
from .serializers import (
    AgentEventSerializer,
    AgentRunSerializer,
    AgentSerializers,
    AppendEventSerializer,
    ApproveToolCallSerializer,
    EventWaitQuery,
    PendingToolCallSerializer,
    RejectToolCallSerializer,
    ToolCallDecisionSerializer,
    serializers_for,
)
from .streaming import (
    EventStreamRenderer,
    afollow,
    event_stream,
    event_stream_response,
)
from .uploads import AttachmentsMixin

if TYPE_CHECKING:
    from rest_framework.decorators import ViewSetAction

logger = logging.getLogger("django_agent_session.api")

#: actions that run a turn (they share the ``turn_throttle_scope``)
TURN_ACTIONS = frozenset({"create", "continue_turn", "stream_start", "stream_continue"})
#: longest ``Idempotency-Key`` header (the column's length)
IDEMPOTENCY_KEY_MAX = 255


class AgentSessionViewSet(AttachmentsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                          mixins.UpdateModelMixin, mixins.DestroyModelMixin,
                          viewsets.GenericViewSet):
    """Start, continue, read, rename and delete the caller's sessions of one agent model.

    Subclass it to customise (permissions, queryset scope, extra actions) and name the
    subclass in ``Agent.viewset``; the factory fills in ``model`` and ``serializers``.
    """

    #: set by :func:`viewset_factory`
    model: Any = None
    serializers: AgentSerializers | None = None

    #: ``None``: ``AGENT_SESSION["API_PERMISSION_CLASSES"]``
    permission_classes: Any = None
    #: ``None``: ``AGENT_SESSION["API_THROTTLE_CLASSES"]``, else DRF's default throttles
    throttle_classes: Any = None
    #: scopes for DRF's ``ScopedRateThrottle``: turns cost money, reads do not
    turn_throttle_scope = "agent_turns"
    read_throttle_scope = "agent_sessions"

    parser_classes = [SessionJSONParser]
    filter_backends = [SessionFilterBackend]
    pagination_class = SessionPagination
    #: any segment reaches the view (a ``.`` too: the router adds no format suffixes), so a
    #: malformed id is the same JSON 404 as a missing one
    lookup_value_regex = "[^/]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    #: seconds of silence after which a stream sends an SSE comment
    sse_keepalive = 15.0
    #: seconds between two looks of a long-poll of the event log (``?wait=``) for events
    #: another process appended (one in this process wakes it at once)
    events_poll_interval = 0.5
    #: instruction args the server gives every session this viewset starts (``None``: the
    #: client sends them); :meth:`get_instruction_args` may choose them per request instead
    instruction_args: dict[str, Any] | None = None

    @classmethod
    def as_view(cls, actions: dict[str, str | ViewSetAction[Any]] | None = None,
                **initkwargs: Any) -> Any:
        view = super().as_view(actions, **initkwargs)
        # a turn must never run inside ATOMIC_REQUESTS' transaction: the lease would be
        # invisible to other callers and a transaction would stay open over the model call
        for alias in connections:
            view = transaction.non_atomic_requests(using=alias)(view)
        return view

    # -- policies ------------------------------------------------------------------------

    def get_permissions(self) -> list[Any]:
        classes = self.permission_classes
        if classes is None:
            classes = agent_settings.API_PERMISSION_CLASSES
        return [permission() for permission in classes]

    def get_throttles(self) -> list[Any]:
        classes = self.throttle_classes
        if classes is None:
            classes = perform_import(agent_settings.API_THROTTLE_CLASSES, "API_THROTTLE_CLASSES")
        if classes is None:
            classes = api_settings.DEFAULT_THROTTLE_CLASSES
        return [throttle() for throttle in classes]

    @property
    def throttle_scope(self) -> str:
        return self.turn_throttle_scope if self.action in TURN_ACTIONS else self.read_throttle_scope

    def handle_exception(self, error: Exception) -> Response:
        if isinstance(error, exc.SessionBusy):
            error = self.estimate_busy(error)
        return super().handle_exception(api_exception(error))

    def estimate_busy(self, error: exc.SessionBusy) -> exc.SessionBusy:
        """``error`` with the ``retry_after`` of :func:`~.errors.busy_retry_after` for the
        URL's session (what the store knows is only the lease, far longer than a turn)."""
        try:
            session = self.model._base_manager.filter(pk=self.kwargs.get("pk")).first()
        except (DjangoValidationError, ValueError, TypeError):  # not a valid id
            session = None
        if session is not None:
            error.retry_after = error.details["retry_after"] = busy_retry_after(session)
        return error

    # -- querysets -------------------------------------------------------------------------

    @property
    def manager(self) -> Any:
        return self.model._default_manager

    def get_queryset(self) -> QuerySet:
        # the cost is one correlated subquery per row, not one query per session
        queryset = self.manager.all().with_cost().order_by("-last_activity_at", "-pk")
        return self.scope_queryset(queryset)

    def get_object(self) -> Any:
        """DRF's lookup, with one 404 body for every missing id (Django's names the model
        class, which a client has no business knowing)."""
        try:
            return super().get_object()
        except Http404:
            raise NotFound() from None

    def scope_queryset(self, queryset: QuerySet) -> QuerySet:
        """Limit ``queryset`` to what the caller may see, before any lookup.

        Every permission class with a ``scope_queryset(request, view, queryset)`` method
        narrows it; with none, the caller sees only their own sessions.
        """
        scoped = False
        for permission in self.get_permissions():
            scope = getattr(permission, "scope_queryset", None)
            if scope is not None:
                queryset, scoped = scope(self.request, self, queryset), True
        return queryset if scoped else owned_by(self.request, queryset)

    def get_instruction_args(self) -> dict[str, Any] | None:
        """The instruction args of the session this request starts, chosen by the server
        (from ``self.request.user``, a tenant, a setting...), or ``None``: the client sends
        them in the start body.

        When it returns a dict, the start body has no ``instruction_args`` (sending them is a
        400) and the args are validated against the agent's ``instruction_schema`` as a
        client's would be. Defaults to :attr:`instruction_args`.
        """
        return None if self.instruction_args is None else dict(self.instruction_args)

    @classmethod
    def pins_instruction_args(cls) -> bool:
        """Whether the server chooses the instruction args (:attr:`instruction_args` is set or
        :meth:`get_instruction_args` overridden): what the OpenAPI start body shows."""
        return (cls.instruction_args is not None
                or cls.get_instruction_args is not AgentSessionViewSet.get_instruction_args)

    @property
    def _agent_serializers(self) -> AgentSerializers:
        """``serializers``: never None on a viewset built by :func:`viewset_factory`."""
        assert self.serializers is not None, f"{type(self).__name__} has no serializers"
        return self.serializers

    def get_serializer_class(self) -> Any:
        s = self._agent_serializers
        start = s.pinned_start if self.pins_instruction_args() else s.start
        return {
            "create": start, "stream_start": start,
            "continue_turn": s.continue_, "stream_continue": s.continue_,
            "context": s.context, "events": AgentEventSerializer, "runs": AgentRunSerializer,
            "append_event": AppendEventSerializer,
            "run": AgentRunSerializer, "cancel_run": AgentRunSerializer,
            "tool_calls": PendingToolCallSerializer,
            "approve_tool_call": ApproveToolCallSerializer,
            "reject_tool_call": RejectToolCallSerializer,
        }.get(self.action, s.session)

    # -- helpers ---------------------------------------------------------------------------

    def owner(self) -> Any:
        user = self.request.user
        return user if user is not None and user.is_authenticated else None

    def read_body(self, serializer_class: Any) -> dict[str, Any]:
        """The request body checked for shape; the agent's serializers validate the values."""
        body = serializer_class(data=self.request_body(), context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        return body.validated_data

    def read_start(self) -> tuple[dict[str, Any], Any]:
        """The start body checked for shape, and the session's instruction args: the
        server's (:meth:`get_instruction_args`) or else the client's."""
        args = self.get_instruction_args()
        if args is None:
            body = self.read_body(self._agent_serializers.start)
            return body, body.get("instruction_args")
        body = self.read_body(self._agent_serializers.pinned_start)
        if "instruction_args" in self.request.data:  # a dict: the body validated
            raise ValidationError({"instruction_args": [
                "The server sets the instruction args of this endpoint; leave them out."]})
        return body, args

    def turn_data(self, session: Any) -> Any:
        """The body answering a turn: the session, the turn's output, its run and status (from
        ``session.last_turn``), and the tool calls it waits for when it paused for approvals
        (``awaiting_approval``: no output yet)."""
        record = getattr(session, "last_turn", None)
        run_id = record.run_id if record is not None else None
        paused = record is not None and record.status == RunStatus.AWAITING_APPROVAL
        pending = [call for call in self.manager.pending_tool_calls(session.pk)
                   if call["run_id"] == str(run_id)] if paused else []
        data = {"session": session, "output": None if paused else session.last_output,
                "run_id": run_id,
                "status": RunStatus.AWAITING_APPROVAL if paused else RunStatus.COMPLETED,
                "pending": pending}
        return self._agent_serializers.turn(data, context=self.get_serializer_context()).data

    def prevalidate(self, input: Any, instruction_args: Any = None, *, start: bool) -> None:
        """Validate before a stream starts: once the 200 is sent, a 400 is no longer possible.

        The manager validates again when the turn runs; this only moves the failure earlier.
        """
        self.manager.validate_input(input)
        if start:
            self.manager.initial_context(instruction_args)

    def submission(self) -> dict[str, Any]:
        """The submission options of a turn request: its ``Idempotency-Key`` header (the
        message's name: resending it returns the same run) and where it came from."""
        key = self.request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
            raise ValidationError({"Idempotency-Key": [
                f"Must be 1 to {IDEMPOTENCY_KEY_MAX} characters."]})
        user = self.owner()
        return {"idempotency_key": key,
                "origin": {"surface": "rest", "user_id": user.pk if user else None}}

    def accepted(self, run: Any, created: bool = True) -> Response:
        """202: the queued (or, for a known key, existing) run and where to follow it."""
        pk, run_id = str(run.session_id), str(run.pk)
        links = {name: self.request.build_absolute_uri(
                     self.reverse_action(action, kwargs={"pk": pk, "run_id": run_id}))
                 for name, action in (("run", "run"), ("stream", "run-stream"),
                                      ("cancel", "run-cancel"))}
        data = {"run": AgentRunSerializer(run).data, "session_id": pk, "created": created,
                "links": links}
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": links["run"]})

    def get_run(self, run_id: Any) -> Any:
        """The caller's session's run ``run_id`` (404 for anything else)."""
        session = self.get_object()
        try:
            run = session.runs.filter(pk=run_id).first()
        except DjangoValidationError:  # not a UUID
            run = None
        if run is None:
            raise NotFound()
        return run

    def follow(self, run: Any, after: int = 0, protocol: StreamProtocol | None = None) -> Any:
        """An SSE response following ``run`` to its end (ASGI), never cancelling it."""
        protocol = protocol or self.stream_protocol()
        return event_stream(afollow(self.model, run, self.outcome, self.sse_keepalive, after,
                                    protocol), protocol)

    def stream_protocol(self) -> StreamProtocol:
        """A fresh encoder of the protocol ``?protocol=`` names (400 for an unknown one),
        made before a streaming action does anything else."""
        return protocol_for(self.request.query_params.get(QUERY_PARAM))()

    def outcome(self, run: Any) -> list[tuple[str, Any]]:
        """The last event of a followed run: ``message`` (the turn body, also when it paused
        for approvals) or ``error``, as ``[(name, data)]``."""
        if run.status in (RunStatus.COMPLETED, RunStatus.AWAITING_APPROVAL):
            # the session with its ``last_turn``, as a caller waiting for the run gets it
            session = self.manager.get_queryset()._outcome(run)
            return [("message", self.turn_data(session))]
        return [("error", error_body(exc.from_dict(run.error)))]

    def estimating(self, turn: Any, *args: Any, **kwargs: Any) -> Any:
        """``turn(*args, **kwargs)``; a ``SessionBusy`` it raises carries the estimate of
        :meth:`estimate_busy` (a stream's ``error`` event, like the JSON 409)."""
        try:
            return turn(*args, **kwargs)
        except exc.SessionBusy as error:
            self.estimate_busy(error)
            raise

    def is_asgi(self) -> bool:
        return isinstance(self.request._request, ASGIRequest)

    def approvals_session(self) -> Any:
        """The session whose tool calls the caller may list and decide: one they can see
        (:meth:`get_object`), or one ``AGENT_SESSION["APPROVERS"]`` lets them decide; ``None``
        for anything else. Deciding itself is checked by the manager (``may_decide``)."""
        try:
            return self.get_object()
        except NotFound:
            pass
        if agent_settings.APPROVERS is None:
            return None
        try:
            session = self.model._base_manager.filter(pk=self.kwargs.get("pk")).first()
        except (DjangoValidationError, ValueError, TypeError):  # not a valid id
            return None
        if session is not None and self.manager.may_decide(session, self.request.user):
            return session
        return None

    def decidable(self, tool_use_id: str) -> None:
        """404 before the body is read when the caller may not decide this session's calls,
        so another user's session answers exactly like a missing one."""
        if self.approvals_session() is None:
            raise exc.ToolCallNotFound(f"No pending tool call {tool_use_id!r} on this session.")

    def decide(self, tool_use_id: str, *, approved: bool, **decision: Any) -> Response:
        """Approve or reject call ``tool_use_id`` of the URL's session as the caller; tell the
        conversation's viewers, then hand a resumed run to the executor."""
        session = self.approvals_session()
        if session is None:  # the body the manager gives for a missing call
            raise exc.ToolCallNotFound(f"No pending tool call {tool_use_id!r} on this session.")
        manager = self.manager
        method = manager.approve_tool_call if approved else manager.reject_tool_call
        run = method(session.pk, tool_use_id, by=self.request.user, dispatch=False, **decision)
        resumed = run.status == RunStatus.QUEUED
        self.announce_decision(run, tool_use_id, resumed)
        if resumed:
            manager.dispatch(session.pk)
        return Response(ToolCallDecisionSerializer({
            "tool_use_id": tool_use_id, "approved": approved, "resumed": resumed, "run": run,
        }).data)

    def announce_decision(self, run: Any, tool_use_id: str, resumed: bool) -> None:
        """Send the decision's frame to the conversation's WebSocket viewers (every open tab
        resolves its card); a layer that fails does not fail the decision."""
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            frame = decision_frame(self.model, run, tool_use_id, resumed)
            async_to_sync(announce)(layer, self.model, run.session_id, frame)
        except Exception:
            logger.warning("Could not announce the decision on %s", tool_use_id, exc_info=True)

    # -- endpoints -------------------------------------------------------------------------

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Start a session: its first turn runs now; 201 with the session and the output
        (``"wait": false``: 202 with the queued run)."""
        body, args = self.read_start()
        if self.uploads():  # multipart with files: they need the session first
            return self.start_with_files(body, args)
        if not body["wait"]:
            run = self.manager.start_session(
                body["input"], instruction_args=args, owner=self.owner(), wait=False,
                **self.submission())
            return self.accepted(run)
        session = self.manager.start_session(
            body["input"], instruction_args=args, owner=self.owner(), **self.submission())
        return Response(self.turn_data(session), status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"], url_path="continue", url_name="continue")
    def continue_turn(self, request: Request, pk: Any = None) -> Response:
        """Run one turn on the session (``"wait": false``: 202 with the queued run)."""
        session = self.get_object()
        body = self.read_body(self._agent_serializers.continue_)
        if self.uploads():  # multipart with files: stored, then named in the input
            return self.run_with_files(session, self.with_uploads(session, body))
        if not body["wait"]:
            submitted = self.manager.submit(session, body["input"],
                                            multitask=body.get("multitask"),
                                            **self.submission())
            return self.accepted(submitted.run, submitted.created)
        session = self.manager.continue_session(session, body["input"],
                                                multitask=body.get("multitask"),
                                                **self.submission())
        return Response(self.turn_data(session))

    @action(detail=True, methods=["get"], url_path=r"runs/(?P<run_id>[^/]+)", url_name="run")
    def run(self, request: Request, pk: Any = None, run_id: Any = None) -> Response:
        """One run of the session: its status, input, output or error, and usage."""
        return Response(AgentRunSerializer(self.get_run(run_id)).data)

    @action(detail=True, methods=["post"], url_path=r"runs/(?P<run_id>[^/]+)/cancel",
            url_name="run-cancel")
    def cancel_run(self, request: Request, pk: Any = None, run_id: Any = None) -> Response:
        """Cancel a run: a queued one never runs; a running one stops wherever it runs
        (``cancel_requested`` until it has). A finished run is returned unchanged."""
        run = self.manager.cancel_run(self.get_run(run_id).pk)
        return Response(AgentRunSerializer(run).data)

    @action(detail=True, methods=["get"], url_path=r"runs/(?P<run_id>[^/]+)/stream",
            url_name="run-stream", renderer_classes=[JSONRenderer, EventStreamRenderer])
    def run_stream(self, request: Request, pk: Any = None, run_id: Any = None) -> Any:
        """Follow a run as Server-Sent Events; ``Last-Event-ID`` resumes after that event."""
        protocol = self.stream_protocol()  # an unknown protocol is a 400 before anything else
        run = self.get_run(run_id)
        try:
            after = max(int(request.headers.get("Last-Event-ID") or 0), 0)
        except ValueError:
            raise ValidationError({"Last-Event-ID": ["A valid integer is required."]}) \
                from None
        if not self.is_asgi():
            raise NotAcceptable("Following a run needs an ASGI server.")
        return self.follow(run, after, protocol)

    @action(detail=True, methods=["get"], url_path="tool-calls", url_name="tool-calls",
            pagination_class=None, filter_backends=[])
    def tool_calls(self, request: Request, pk: Any = None) -> Response:
        """The session's tool calls waiting for a decision, oldest first."""
        session = self.approvals_session()
        if session is None:
            raise NotFound()
        calls = self.manager.pending_tool_calls(session.pk)
        return Response(PendingToolCallSerializer(calls, many=True).data)

    @action(detail=True, methods=["post"],
            url_path=r"tool-calls/(?P<tool_use_id>[^/]+)/approve", url_name="tool-call-approve")
    def approve_tool_call(self, request: Request, pk: Any = None,
                          tool_use_id: Any = None) -> Response:
        """Approve a pending tool call, optionally with an edited ``input``."""
        self.decidable(str(tool_use_id))
        body = self.read_body(ApproveToolCallSerializer)
        return self.decide(str(tool_use_id), approved=True, input=body.get("input"))

    @action(detail=True, methods=["post"],
            url_path=r"tool-calls/(?P<tool_use_id>[^/]+)/reject", url_name="tool-call-reject")
    def reject_tool_call(self, request: Request, pk: Any = None,
                         tool_use_id: Any = None) -> Response:
        """Reject a pending tool call, optionally with a ``reason`` told to the model."""
        self.decidable(str(tool_use_id))
        body = self.read_body(RejectToolCallSerializer)
        return self.decide(str(tool_use_id), approved=False, reason=body.get("reason", ""))

    @action(detail=True, methods=["get"])
    def context(self, request: Request, pk: Any = None) -> Response:
        """The stored conversation context (Messages API format)."""
        session = self.get_object()
        data = session.get_context().to_dict()
        return Response(self._agent_serializers.context(data).data)

    @action(detail=True, methods=["get"], pagination_class=SeqCursorPagination)
    def events(self, request: Request, pk: Any = None) -> Response:
        """The session's event log, oldest first, from ``?after_seq=``; with ``?wait=S``, a
        read that finds nothing after ``after_seq`` waits up to S seconds for an event."""
        session = self.get_object()
        self.long_poll(session)
        page = self.paginate_queryset(session.events.all())
        return self.get_paginated_response(AgentEventSerializer(page, many=True).data)

    def long_poll(self, session: Any) -> None:
        """Wait until the session has an event after ``?after_seq=`` or ``?wait=`` seconds
        pass (at most ``EVENTS_MAX_WAIT_SECONDS``). The query is checked first (a 400 never
        waits). No transaction is held while it waits: this viewset's requests are never
        atomic (:meth:`as_view`)."""
        query = EventWaitQuery(data=self.request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors)
        wait = min(query.validated_data["wait"], float(agent_settings.EVENTS_MAX_WAIT_SECONDS))
        if wait > 0:
            wait_for_events(self.model, session.pk, query.validated_data["after_seq"], wait,
                            self.events_poll_interval)

    @events.mapping.post
    def append_event(self, request: Request, pk: Any = None) -> Response:
        """Append an event from outside a turn (a ``custom.*`` type): 201 with the stored
        event, or 200 with the one stored before under the same ``id`` (nothing appended)."""
        session = self.get_object()
        body = self.read_body(AppendEventSerializer)
        try:
            event = self.manager.append_event(session, body["type"], body["data"],
                                              event_id=body.get("id"))
        except exc.InvalidInput as error:  # the rules, as field errors of the body
            raise ValidationError(error.errors) from None
        data = AgentEventSerializer(event).data
        if not event.created:
            return Response(data)
        self.announce_event(event)
        return Response(data, status=status.HTTP_201_CREATED)

    def announce_event(self, event: Any) -> None:
        """Send an appended event to the conversation's WebSocket viewers as the ``event``
        frame a replay would send them; a layer that fails does not fail the append."""
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(announce)(layer, self.model, event.session_id, event.as_frame())
        except Exception:
            logger.warning("Could not announce event %s of %s", event.seq, event.session_id,
                           exc_info=True)

    @action(detail=True, methods=["get"])
    def runs(self, request: Request, pk: Any = None) -> Response:
        """The session's runs (one per turn) with their usage, oldest first."""
        session = self.get_object()
        page = self.paginate_queryset(session.runs.order_by("started_at", "pk"))
        return self.get_paginated_response(AgentRunSerializer(page, many=True).data)

    @action(detail=False, methods=["post"], url_path="stream", url_name="stream",
            renderer_classes=[JSONRenderer, EventStreamRenderer])
    def stream_start(self, request: Request) -> Any:
        """``create`` as Server-Sent Events: deltas as they arrive, then ``message``."""
        protocol = self.stream_protocol()  # an unknown protocol is a 400 before any turn
        body, args = self.read_start()
        input, owner = body["input"], self.owner()
        self.prevalidate(input, args, start=True)
        manager = self.manager
        if self.is_asgi():  # queued and run by the executor; this response only follows it
            run = manager.start_session(input, instruction_args=args, owner=owner, wait=False,
                                        **self.submission())
            return self.follow(run, protocol=protocol)
        return event_stream_response(
            request._request,
            aturn=lambda progress: manager.astart_session(
                input, instruction_args=args, owner=owner, on_progress=progress),
            turn=lambda progress: manager.start_session(
                input, instruction_args=args, owner=owner, on_progress=progress),
            finish=self.turn_data, keepalive=self.sse_keepalive, protocol=protocol)

    @action(detail=True, methods=["post"], url_path="continue/stream",
            url_name="continue-stream", renderer_classes=[JSONRenderer, EventStreamRenderer])
    def stream_continue(self, request: Request, pk: Any = None) -> Any:
        """``continue`` as Server-Sent Events."""
        protocol = self.stream_protocol()
        session = self.get_object()
        protocol.bind(thread_id=session.pk)
        body = self.read_body(self._agent_serializers.continue_)
        input, multitask = body["input"], body.get("multitask")
        self.prevalidate(input, start=False)
        manager = self.manager
        if self.is_asgi():
            submitted = manager.submit(session, input, multitask=multitask,
                                       **self.submission())
            return self.follow(submitted.run, protocol=protocol)
        return event_stream_response(
            request._request,
            aturn=lambda progress: manager.acontinue_session(
                session, input, on_progress=progress, multitask=multitask),
            turn=lambda progress: self.estimating(
                manager.continue_session, session, input, on_progress=progress,
                multitask=multitask),
            finish=self.turn_data, keepalive=self.sse_keepalive, protocol=protocol)

    def unmatched(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """A path under the prefix that no route matched (``AgentSessionRouter``): the same
        JSON 404 as a missing session, after the same authentication and permissions."""
        raise NotFound()

    def perform_destroy(self, instance: Any) -> None:
        delete_session(instance)


_cache: dict[type[SessionRecord], type[AgentSessionViewSet]] = {}


def viewset_factory(model: type[SessionRecord]) -> type[AgentSessionViewSet]:
    """The viewset of ``model``, generated on first use and cached.

    Its base is ``model.Agent.viewset`` (a subclass of :class:`AgentSessionViewSet`, or a
    dotted path to one) or :class:`AgentSessionViewSet`.
    """
    found = _cache.get(model)
    if found is None:
        found = _cache[model] = _build(model)
    return found


def _build(model: type[SessionRecord]) -> type[AgentSessionViewSet]:
    options = model.agent_options
    if options is None:
        raise ImproperlyConfigured(f"{model.__name__} is not a concrete agent session model.")
    base = options.viewset or AgentSessionViewSet
    if isinstance(base, str):
        try:
            base = import_string(base)
        except ImportError as error:
            raise ImproperlyConfigured(
                f"{model.__name__}.Agent.viewset = {options.viewset!r} cannot be imported: "
                f"{error}") from error
    if not (isinstance(base, type) and issubclass(base, AgentSessionViewSet)):
        raise ImproperlyConfigured(
            f"{model.__name__}.Agent.viewset must be a subclass of "
            f"django_agent_session.api.AgentSessionViewSet, got {base!r}.")
    s = serializers_for(model)
    attrs: dict[str, Any] = {"__module__": base.__module__, "__doc__": base.__doc__}
    if base.model is None:
        attrs["model"] = model
        attrs["queryset"] = model._default_manager.all()
    if base.serializers is None:
        attrs["serializers"] = s
    viewset = cast("type[AgentSessionViewSet]", type(f"{model.__name__}ViewSet", (base,), attrs))
    assert viewset.serializers is not None  # the base's, or ``s``
    return annotate(viewset, viewset.serializers)
