"""OpenAPI annotations for the generated viewsets (drf-spectacular, when installed).

Applied per generated class with ``extend_schema_view``, so each agent's operations carry its
own typed components (``<Model>Start``, ``<Model>Turn``, its input, instruction args and
output serializers) and the base class stays untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from .serializers import (
    AgentErrorSerializer,
    AgentEventPageSerializer,
    AgentEventSerializer,
    AgentRunPageSerializer,
    AgentRunSerializer,
    AgentSerializers,
    AppendEventSerializer,
    ApproveToolCallSerializer,
    DetailSerializer,
    PendingToolCallSerializer,
    RejectToolCallSerializer,
    RunAcceptedSerializer,
    ServerSentEventSerializer,
    ToolCallDecisionSerializer,
)
from .streaming import CONTENT_TYPE

if TYPE_CHECKING:
    from .viewsets import AgentSessionViewSet

_ViewSet = TypeVar("_ViewSet", bound="type[AgentSessionViewSet]")

JSON = "application/json"

STREAM_DESCRIPTION = (
    "Server-Sent Events: `run.started` (`{run_id}`), `delta`, `tool.call`, `tool.result`, "
    "`tool.approval_requested` and `budget.warning` events as the turn runs, then `message` "
    "(the same body as the JSON endpoint, also when the turn paused for approvals: "
    "`status: awaiting_approval`) or `error` (`{status, code, detail, retryable}`).")


def _attachment_operations(tag: list[str], name: str, session_id: list[Any],
                           auth: dict[Any, Any], missing: dict[Any, Any],
                           throttled: dict[Any, Any]) -> dict[str, Any]:
    """The upload and file endpoints (api/uploads.py)."""
    from drf_spectacular.types import OpenApiTypes
    from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema

    from .uploads import AttachmentErrorSerializer, AttachmentSerializer

    refused = OpenApiResponse(AttachmentErrorSerializer, description=(
        "`invalid_attachment`: 413 too large (`ATTACHMENT_MAX_BYTES`), 415 a type not in "
        "`ATTACHMENT_TYPES` (read from the bytes), 400 empty or no `file`."))
    form = {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
            "required": ["file"]}
    artifact_id = OpenApiParameter("artifact_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                                   description="The attachment's id.")
    files = {(200, media): OpenApiResponse(OpenApiTypes.BINARY, description="The file.")
             for media in ("image/png", "image/jpeg", "image/gif", "image/webp",
                           "application/pdf")}
    return {
        "upload_attachment": extend_schema(
            tags=tag, parameters=session_id, request={"multipart/form-data": form},
            summary=f"Upload an image or PDF to a {name} session",
            description="Its id goes in a message's `attachments` (REST or WebSocket). The "
                        "type is read from the file's bytes, never from its name or "
                        "Content-Type.",
            responses={201: AttachmentSerializer, **auth, **missing,
                       400: OpenApiResponse(OpenApiTypes.OBJECT, description=(
                           "No `file` (`{\"file\": [...]}`), or an empty one "
                           "(`invalid_attachment`).")),
                       413: refused, 415: refused, **throttled}),
        "attachment": extend_schema(
            tags=tag, parameters=[*session_id, artifact_id,
                                  OpenApiParameter("format", exclude=True)],
            summary="The file of an attachment",
            responses={**files, **{(code, "application/json"): response for code, response
                                   in {**auth, **missing, **throttled}.items()}}),
    }


def annotate(viewset: _ViewSet, s: AgentSerializers) -> _ViewSet:
    """Attach the per-model schema to ``viewset``; a no-op without drf-spectacular.

    A start's request body is ``get_serializer_class()``'s: without ``instruction_args`` when
    the viewset (or a subclass) chooses them itself.
    """
    try:
        from drf_spectacular.types import OpenApiTypes
        from drf_spectacular.utils import (
            OpenApiParameter,
            OpenApiResponse,
            extend_schema,
            extend_schema_view,
        )
        from drf_spectacular.drainage import isolate_view_method
    except ImportError:  # pragma: no cover - drf-spectacular is optional
        return viewset

    name = viewset.model.__name__
    tag = [name]
    session_id = [OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                                   description="The session's id.")]
    run_id = [*session_id, OpenApiParameter("run_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
                                            description="The run's id.")]
    idempotency = [OpenApiParameter(
        "Idempotency-Key", str, OpenApiParameter.HEADER,
        description="Names the message: resending it returns the same run (unique per "
                    "session; at most 255 characters).")]
    accepted = {202: OpenApiResponse(RunAcceptedSerializer, description=(
        "`\"wait\": false`: the run is queued (committed) and runs on the executor."))}
    detail = OpenApiResponse(DetailSerializer, description="Not authenticated or not allowed.")
    invalid = OpenApiResponse(OpenApiTypes.OBJECT,
                              description="Field errors, e.g. `{\"input\": {\"message\": [...]}}`.")
    auth: dict[Any, Any] = {401: detail, 403: detail}
    missing = {404: OpenApiResponse(DetailSerializer, description="No such session for you.")}
    throttled = {429: OpenApiResponse(DetailSerializer, description="Throttled.")}
    agent_error = {
        409: OpenApiResponse(AgentErrorSerializer, description=(
            "`session_busy` (with Retry-After), `lease_lost` or `token_budget_exceeded`.")),
        502: OpenApiResponse(AgentErrorSerializer,
                             description="The model or the agent failed (not retryable)."),
        503: OpenApiResponse(AgentErrorSerializer,
                             description="The model is unavailable for now (retryable)."),
    }
    too_large = {413: OpenApiResponse(DetailSerializer, description="The body is too large.")}
    turn_errors = {400: invalid, **auth, **too_large, **throttled, **agent_error}

    def stream_responses(extra: dict[Any, Any]) -> dict[Any, Any]:
        # for text/event-stream the schema describes one event (as OpenAPI 3.2 does)
        responses: dict[Any, Any] = {(200, CONTENT_TYPE): OpenApiResponse(
            ServerSentEventSerializer, description=STREAM_DESCRIPTION)}
        for code, response in {400: invalid, **auth, **extra, **too_large, **throttled}.items():
            responses[(code, JSON)] = response
            responses[(code, CONTENT_TYPE)] = OpenApiResponse(
                ServerSentEventSerializer, description=f"{response.description} "
                                                       "As one `error` event.")
        return responses

    protocol = [OpenApiParameter(
        "protocol", str, OpenApiParameter.QUERY, enum=["ai-sdk", "ag-ui"],
        description="The stream's protocol: absent, this library's events; `ai-sdk`, the "
                    "Vercel AI SDK UI message stream (header `x-vercel-ai-ui-message-stream: "
                    "v1`, ends with `data: [DONE]`); `ag-ui`, AG-UI events. Any other value "
                    "is a 400. See docs/streaming-protocols.md.")]
    tool_call = [*session_id, OpenApiParameter("tool_use_id", str, OpenApiParameter.PATH,
                                               description="The pending call's id.")]
    decision_errors = {
        400: OpenApiResponse(OpenApiTypes.OBJECT, description=(
            "Field errors; an edited input that does not match the tool's schema: "
            "`{\"input\": {...}}`.")),
        **auth,
        404: OpenApiResponse(AgentErrorSerializer, description=(
            "`tool_call_not_found`: no such pending call, or not one you may decide (the "
            "same answer).")),
        409: OpenApiResponse(AgentErrorSerializer, description=(
            "`already_decided`: the call was approved, rejected or expired before.")),
        **too_large, **throttled,
    }
    # ``?format=`` only picks a renderer (and 404s when unknown): not part of the contract
    no_format = [OpenApiParameter("format", exclude=True)]
    page_params = [
        OpenApiParameter("page", int, description="Page number (from 1; past the end: 404)."),
        OpenApiParameter("page_size", int, description="Items per page (at most 100)."),
    ]
    seq_params = [
        OpenApiParameter("after_seq", int, description="Only events after this seq (default 0)."),
        OpenApiParameter("limit", int, description="Events per page (1..1000)."),
        OpenApiParameter("wait", float, description=(
            "Long-poll: with no event after `after_seq`, wait up to this many seconds for one "
            "(at most EVENTS_MAX_WAIT_SECONDS, 30 by default; a larger value waits that long), "
            "then answer; an empty page when none came. Default 0: answer at once.")),
    ]
    operations = dict(
        list=extend_schema(
            tags=tag, summary=f"List your {name} sessions",
            description="Newest activity first; filter by status, creation time and title.",
            responses={200: s.session(many=True), 400: invalid, **auth, **throttled,
                       404: OpenApiResponse(DetailSerializer, description="Invalid page.")}),
        create=extend_schema(
            tags=tag, summary=f"Start a {name} session",
            parameters=idempotency, responses={201: s.turn, **accepted, **turn_errors}),
        retrieve=extend_schema(tags=tag, parameters=session_id, summary=f"A {name} session",
                               responses={200: s.session, **auth, **missing, **throttled}),
        partial_update=extend_schema(
            tags=tag, parameters=session_id, summary=f"Rename a {name} session", request=s.session,
            responses={200: s.session, 400: invalid, **auth, **missing, **too_large,
                       **throttled}),
        destroy=extend_schema(
            tags=tag, parameters=session_id, summary=f"Delete a {name} session with its runs and events",
            responses={204: None, **auth, **missing, **throttled,
                       409: OpenApiResponse(AgentErrorSerializer,
                                            description="A turn is running.")}),
        continue_turn=extend_schema(
            tags=tag, parameters=[*session_id, *idempotency],
            summary=f"Run one turn on a {name} session", request=s.continue_,
            responses={200: s.turn, **accepted, **missing, **turn_errors}),
        # the path's tokens are the runs list's: its operationId would collide
        run=extend_schema(tags=tag, parameters=run_id, summary="One run",
                          operation_id=f"{viewset.model._meta.model_name}_run_retrieve",
                          responses={200: AgentRunSerializer, **auth, **missing, **throttled}),
        cancel_run=extend_schema(
            tags=tag, parameters=run_id, summary="Cancel a run", request=None,
            description="A queued run never runs; a running one stops wherever it runs "
                        "(`cancel_requested` until it has); a finished one is unchanged.",
            responses={200: AgentRunSerializer, **auth, **missing, **throttled}),
        run_stream=extend_schema(
            tags=tag, summary="Follow a run (SSE)",
            parameters=[*run_id, *no_format, *protocol, OpenApiParameter(
                "Last-Event-ID", int, OpenApiParameter.HEADER,
                description="Resume after this event id (a progress event's per-run index).")],
            responses=stream_responses(missing)),
        tool_calls=extend_schema(
            tags=tag, parameters=session_id, summary="The tool calls awaiting approval",
            description="Calls of the session's paused turn that wait for a person's "
                        "decision, oldest first (empty when none).",
            responses={200: PendingToolCallSerializer(many=True), **auth, **missing,
                       **throttled}),
        approve_tool_call=extend_schema(
            tags=tag, parameters=tool_call, summary="Approve a tool call",
            request=ApproveToolCallSerializer,
            description="The turn resumes once every call of its response is decided "
                        "(`resumed`). An edited `input` is validated against the tool's "
                        "schema.",
            responses={200: ToolCallDecisionSerializer, **decision_errors}),
        reject_tool_call=extend_schema(
            tags=tag, parameters=tool_call, summary="Reject a tool call",
            request=RejectToolCallSerializer,
            description="The model gets an error result carrying the `reason`; the turn "
                        "resumes once every call of its response is decided (`resumed`).",
            responses={200: ToolCallDecisionSerializer, **decision_errors}),
        context=extend_schema(tags=tag, parameters=session_id, summary="The conversation context",
                              responses={200: s.context, **auth, **missing, **throttled}),
        events=extend_schema(
            tags=tag, summary="The event log, cursor-paginated by seq", parameters=[*session_id, *seq_params],
            responses={200: AgentEventPageSerializer, 400: invalid, **auth, **missing,
                       **throttled}),
        append_event=extend_schema(  # mapped onto the events route: see the end
            tags=tag, parameters=session_id, summary="Append an event from outside a turn",
            request=AppendEventSerializer,
            description="Records a fact of your own (a `custom.*` type) in the event log with "
                        "the session's next seq; the conversation's WebSocket viewers get it "
                        "as an `event` frame. An `id` makes it safe to retry: an id stored "
                        "before answers 200 with that event, and nothing is appended.",
            responses={201: OpenApiResponse(AgentEventSerializer, description="Appended."),
                       200: OpenApiResponse(AgentEventSerializer, description=(
                           "An event with this `id` was stored before: that event.")),
                       400: OpenApiResponse(OpenApiTypes.OBJECT, description=(
                           "Field errors: a type outside `custom.*`, `data` that is not a "
                           "JSON object or larger than EVENT_MAX_BYTES, an invalid `id`.")),
                       **auth, **missing, **too_large, **throttled}),
        runs=extend_schema(
            tags=tag, summary="The runs (turns) with their usage", parameters=[*session_id, *page_params],
            responses={200: AgentRunPageSerializer, **auth, **missing, **throttled}),
        stream_start=extend_schema(
            tags=tag, summary=f"Start a {name} session, streamed (SSE)",
            parameters=[*no_format, *protocol, *idempotency],
            responses=stream_responses({})),
        stream_continue=extend_schema(
            tags=tag, parameters=[*session_id, *no_format, *protocol, *idempotency],
            summary=f"Run one turn on a {name} session, streamed (SSE)",
            request=s.continue_, responses=stream_responses(missing)),
    )
    # a method mapped onto another action's route (``@events.mapping.post``) is no action
    # extend_schema_view knows of: annotate this class's own copy of it
    mapped = {name: operations.pop(name) for name in ("append_event",)}
    for name, decorator in mapped.items():
        decorator(isolate_view_method(viewset, name))
    operations.update(_attachment_operations(tag, name, session_id, auth, missing, throttled))
    return extend_schema_view(**operations)(viewset)

