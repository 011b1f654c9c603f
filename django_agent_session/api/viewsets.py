"""The session viewset: a base class holding every endpoint, and a factory per model.

:class:`AgentSessionViewSet` knows nothing about a particular agent; :func:`viewset_factory`
subclasses it (or the project's own subclass named by ``Agent.viewset``) for one concrete
session model, filling in the model and its generated serializers. Turns always go through the
model's manager; this module never runs a turn itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.db.models import QuerySet
from django.utils.module_loading import import_string
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from ..conf import agent_settings, perform_import
from ..records import SessionRecord
from ..store.sessions import delete_session
from .errors import api_exception
from .filters import SessionFilterBackend
from .openapi import annotate
from .pagination import SeqCursorPagination, SessionPagination
from .parsers import SessionJSONParser
from .permissions import owned_by
from .serializers import (
    AgentEventSerializer,
    AgentRunSerializer,
    AgentSerializers,
    serializers_for,
)
from .streaming import EventStreamRenderer, event_stream_response

if TYPE_CHECKING:
    from rest_framework.decorators import ViewSetAction

#: actions that run a turn (they share the ``turn_throttle_scope``)
TURN_ACTIONS = frozenset({"create", "continue_turn", "stream_start", "stream_continue"})


class AgentSessionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin,
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
    #: any segment reaches the view, so a malformed id is the same JSON 404 as a missing one
    lookup_value_regex = "[^/.]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    #: seconds of silence after which a stream sends an SSE comment
    sse_keepalive = 15.0

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

    def handle_exception(self, exc: Exception) -> Response:
        return super().handle_exception(api_exception(exc))

    # -- querysets -------------------------------------------------------------------------

    @property
    def manager(self) -> Any:
        return self.model._default_manager

    def get_queryset(self) -> QuerySet:
        queryset = self.manager.all().order_by("-last_activity_at", "-pk")
        return self.scope_queryset(queryset)

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

    @property
    def _agent_serializers(self) -> AgentSerializers:
        """``serializers``: never None on a viewset built by :func:`viewset_factory`."""
        assert self.serializers is not None, f"{type(self).__name__} has no serializers"
        return self.serializers

    def get_serializer_class(self) -> Any:
        s = self._agent_serializers
        return {
            "create": s.start, "stream_start": s.start,
            "continue_turn": s.continue_, "stream_continue": s.continue_,
            "context": s.context, "events": AgentEventSerializer, "runs": AgentRunSerializer,
        }.get(self.action, s.session)

    # -- helpers ---------------------------------------------------------------------------

    def owner(self) -> Any:
        user = self.request.user
        return user if user is not None and user.is_authenticated else None

    def read_body(self, serializer_class: Any) -> dict[str, Any]:
        """The request body checked for shape; the agent's serializers validate the values."""
        body = serializer_class(data=self.request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        return body.validated_data

    def turn_data(self, session: Any) -> Any:
        """The body answering a turn: the session and the turn's output."""
        return self._agent_serializers.turn({"session": session, "output": session.last_output},
                                     context=self.get_serializer_context()).data

    def prevalidate(self, input: Any, instruction_args: Any = None, *, start: bool) -> None:
        """Validate before a stream starts: once the 200 is sent, a 400 is no longer possible.

        The manager validates again when the turn runs; this only moves the failure earlier.
        """
        self.manager.validate_input(input)
        if start:
            self.manager.initial_context(instruction_args)

    # -- endpoints -------------------------------------------------------------------------

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Start a session: its first turn runs now; 201 with the session and the output."""
        body = self.read_body(self._agent_serializers.start)
        session = self.manager.start_session(
            body["input"], instruction_args=body.get("instruction_args"), owner=self.owner())
        return Response(self.turn_data(session), status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"], url_path="continue", url_name="continue")
    def continue_turn(self, request: Request, pk: Any = None) -> Response:
        """Run one turn on the session."""
        session = self.get_object()
        body = self.read_body(self._agent_serializers.continue_)
        session = self.manager.continue_session(session, body["input"])
        return Response(self.turn_data(session))

    @action(detail=True, methods=["get"])
    def context(self, request: Request, pk: Any = None) -> Response:
        """The stored conversation context (Messages API format)."""
        session = self.get_object()
        data = session.get_context().to_dict()
        return Response(self._agent_serializers.context(data).data)

    @action(detail=True, methods=["get"], pagination_class=SeqCursorPagination)
    def events(self, request: Request, pk: Any = None) -> Response:
        """The session's event log, oldest first, from ``?after_seq=``."""
        session = self.get_object()
        page = self.paginate_queryset(session.events.all())
        return self.get_paginated_response(AgentEventSerializer(page, many=True).data)

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
        body = self.read_body(self._agent_serializers.start)
        input, args, owner = body["input"], body.get("instruction_args"), self.owner()
        self.prevalidate(input, args, start=True)
        manager = self.manager
        return event_stream_response(
            request._request,
            aturn=lambda progress: manager.astart_session(
                input, instruction_args=args, owner=owner, on_progress=progress),
            turn=lambda progress: manager.start_session(
                input, instruction_args=args, owner=owner, on_progress=progress),
            finish=self.turn_data, keepalive=self.sse_keepalive)

    @action(detail=True, methods=["post"], url_path="continue/stream",
            url_name="continue-stream", renderer_classes=[JSONRenderer, EventStreamRenderer])
    def stream_continue(self, request: Request, pk: Any = None) -> Any:
        """``continue`` as Server-Sent Events."""
        session = self.get_object()
        body = self.read_body(self._agent_serializers.continue_)
        input = body["input"]
        self.prevalidate(input, start=False)
        manager = self.manager
        return event_stream_response(
            request._request,
            aturn=lambda progress: manager.acontinue_session(session, input, on_progress=progress),
            turn=lambda progress: manager.continue_session(session, input, on_progress=progress),
            finish=self.turn_data, keepalive=self.sse_keepalive)

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
