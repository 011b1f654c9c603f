"""Request and response serializers, generated per concrete session model.

The shared shapes (runs, events, usage, errors) are plain classes. Everything that carries an
agent's own schema (its input, instruction args and output) is generated per model by
:func:`serializers_for` and cached, so OpenAPI shows typed bodies per agent.

The agent's input and instruction args are *validated by the manager* (one source of truth,
the agent's own serializers); the request serializers here only check the body's shape and
carry the agent's schema for the documentation (``schema_field``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rest_framework import serializers

from ..declaration.schemas import SerializerClass
from ..models import AgentEvent, AgentRun, Multitask, RunKind, RunStatus
from ..records import SessionRecord
from ..store.sessions import update_fields
from .pagination import EventQuery

#: drf-spectacular's decorator, or None without it
extend_schema_field: Callable[..., Callable[[Any], Any]] | None
try:  # drf-spectacular is optional (the ``openapi`` extra)
    from drf_spectacular.utils import extend_schema_field
except ImportError:  # pragma: no cover - exercised only without drf-spectacular
    extend_schema_field = None


def schema_field(name: str, documented_as: SerializerClass | None, **kwargs: Any
                 ) -> serializers.Field:
    """A field holding raw JSON at run time, documented as ``documented_as`` in OpenAPI."""
    field_class = type(name, (serializers.JSONField,), {"__module__": __name__})
    if documented_as is not None and extend_schema_field is not None:
        field_class = extend_schema_field(documented_as)(field_class)
    return field_class(**kwargs)


class UsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_creation_input_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField()

    class Meta:
        ref_name = "AgentUsage"


def _inline_enum_field(name: str, values: list[str], **kwargs: Any) -> serializers.Field:
    """A read-only string documented with its enum inline, wrapped in allOf: drf-spectacular
    would otherwise lift it into a component named after the field ("StatusEnum",
    "KindEnum"), which collides with the session status or a project's own enum (a schema
    warning)."""
    field_class = type(name, (serializers.CharField,), {"__module__": __name__})
    if extend_schema_field is not None:
        schema = {"allOf": [{"type": "string", "enum": values}]}
        field_class = extend_schema_field(schema)(field_class)
    return field_class(read_only=True, **kwargs)


def _cost_field(**kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=16, decimal_places=6, read_only=True, allow_null=True, **kwargs,
        help_text="USD, as a decimal string; null when a model it used has no price.")


def _cache_ratio_field() -> serializers.FloatField:
    return serializers.FloatField(
        read_only=True, allow_null=True,
        help_text="Cache read tokens over all input tokens; null before any input.")


class AgentRunSerializer(serializers.ModelSerializer):
    status = _inline_enum_field("RunStatusField", RunStatus.values)
    kind = _inline_enum_field("RunKindField", RunKind.values, help_text=(
        "`turn`, or a model call the library made for the session: `compaction`, `title`."))
    usage = UsageSerializer(read_only=True)
    cost = _cost_field()
    cache_hit_ratio = _cache_ratio_field()

    class Meta:
        model = AgentRun
        ref_name = "AgentRun"
        fields = ["id", "kind", "status", "stop_reason", "input", "output", "error", "model",
                  "iterations", "usage", "cost", "cache_hit_ratio", "queued_at", "started_at",
                  "ended_at", "duration_ms", "cancel_requested"]
        read_only_fields = fields


class AgentEventSerializer(serializers.ModelSerializer):
    run_id = serializers.UUIDField(read_only=True, allow_null=True)
    id = serializers.CharField(source="key", read_only=True, allow_null=True, help_text=(
        "The caller's id of an event appended from outside a turn; null for the library's."))

    class Meta:
        model = AgentEvent
        ref_name = "AgentEvent"
        fields = ["seq", "type", "run_id", "data", "created_at", "id"]
        read_only_fields = fields


class AppendEventSerializer(serializers.Serializer):
    """The body of ``POST .../events/``: its shape; the manager checks the rules (the
    ``custom.`` namespace, the size of ``data``: store/events.py)."""

    type = serializers.CharField(max_length=64, trim_whitespace=False,
                                 help_text="`custom.<name>`: the other types are the library's.")
    # DRF pops declared fields from the class, so ``Serializer.data`` is not shadowed
    data = serializers.JSONField(  # type: ignore[assignment]
        required=False, default=dict,
        help_text="A JSON object (at most EVENT_MAX_BYTES of JSON).")
    id = serializers.CharField(max_length=255, required=False, allow_null=True,
                               trim_whitespace=False, help_text=(
        "Your id for the event, unique per session: appending it again returns the stored "
        "event (200) and appends nothing."))

    class Meta:
        ref_name = "AgentAppendEvent"


class EventWaitQuery(EventQuery):
    """The event log's query with ``?wait=``: seconds a read may wait for an event after
    ``after_seq`` (checked, with the others, before it waits)."""

    wait = serializers.FloatField(min_value=0, required=False, default=0.0)

    def validate_wait(self, value: float) -> float:
        if not math.isfinite(value):
            raise serializers.ValidationError("A finite number of seconds is required.")
        return value


class AgentEventPageSerializer(serializers.Serializer):
    """One page of the event log (``SeqCursorPagination``)."""

    next = serializers.URLField(allow_null=True, help_text="The next page, or null at the end.")
    last_seq = serializers.IntegerField(help_text="Pass as after_seq to continue from here.")
    results = AgentEventSerializer(many=True)

    class Meta:
        ref_name = "AgentEventPage"


class AgentRunPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = AgentRunSerializer(many=True)

    class Meta:
        ref_name = "AgentRunPage"


class AgentErrorSerializer(serializers.Serializer):
    """The body of 409, 502 and 503 answers (see ``api/errors.py``)."""

    code = serializers.CharField(help_text="Stable error code, e.g. session_busy.")
    detail = serializers.CharField()
    retryable = serializers.BooleanField()
    retry_after = serializers.FloatField(required=False, help_text="Seconds (session_busy).")
    request_id = serializers.CharField(required=False, help_text="The provider's request id.")
    session_id = serializers.UUIDField(
        required=False, help_text="The session the failed turn ran on (a failed start created it).")

    class Meta:
        ref_name = "AgentError"


class ServerSentEventSerializer(serializers.Serializer):
    """One event of a streamed turn (``text/event-stream``); ``data`` is JSON."""

    event = serializers.ChoiceField(choices=["run.started", "delta", "tool.call", "tool.result",
                                             "tool.approval_requested", "budget.warning",
                                             "message", "error"])
    # the stubs see this shadow ``Serializer.data``; DRF's metaclass moves declared fields off
    # the class, so the property stays
    data = serializers.CharField(  # type: ignore[assignment]
        help_text="JSON: a delta, tool call or result, the final turn body (message) or an "
                  "error body (error).")

    class Meta:
        ref_name = "AgentServerSentEvent"


class DetailSerializer(serializers.Serializer):
    """DRF's ``{"detail": ...}`` answers (401, 403, 404, 405, 429)."""

    detail = serializers.CharField()

    class Meta:
        ref_name = "ErrorDetail"


class AgentSessionSerializer(serializers.ModelSerializer):
    """A session as clients see it; only ``title`` is writable."""

    usage = UsageSerializer(read_only=True)
    cost = _cost_field(source="total_cost")
    cache_hit_ratio = _cache_ratio_field()
    last_output = serializers.JSONField(read_only=True, allow_null=True)

    class Meta:
        model: Any = None
        fields = ["id", "title", "status", "turn_count", "usage", "cost", "cache_hit_ratio",
                  "last_output", "created_at", "updated_at", "last_activity_at"]
        read_only_fields = [name for name in fields if name != "title"]

    def update(self, instance: Any, validated_data: dict[str, Any]) -> Any:
        for name, value in validated_data.items():
            setattr(instance, name, value)
        update_fields(instance, validated_data)
        return instance


def wait_field() -> serializers.BooleanField:
    return serializers.BooleanField(
        default=True, help_text="false: answer 202 with the queued run at once; the turn runs "
                                "on the executor.")


class RunAcceptedSerializer(serializers.Serializer):
    """The answer to a submission that does not wait (202)."""

    run = AgentRunSerializer(read_only=True)
    session_id = serializers.UUIDField(read_only=True)
    created = serializers.BooleanField(
        read_only=True, help_text="false: the Idempotency-Key named an earlier run.")
    links = serializers.DictField(child=serializers.URLField(), read_only=True,
                                  help_text="`run`, `stream` (SSE) and `cancel` URLs.")

    class Meta:
        ref_name = "AgentRunAccepted"


# -- approvals ----------------------------------------------------------------------------

#: longest reason a REST or WebSocket rejection may give (it is sent to the model)
REASON_MAX_LENGTH = 2000
#: what a turn body's ``status`` may say
TURN_STATUSES = [RunStatus.COMPLETED.value, RunStatus.AWAITING_APPROVAL.value]


class PendingToolCallSerializer(serializers.Serializer):
    """A tool call waiting for a person's decision."""

    run_id = serializers.UUIDField(read_only=True, help_text="The paused run.")
    tool_use_id = serializers.CharField(read_only=True, help_text="The call's id.")
    name = serializers.CharField(read_only=True, help_text="The tool.")
    input = serializers.DictField(read_only=True, help_text="The input the model asked for.")
    expires_at = serializers.DateTimeField(
        read_only=True, allow_null=True,
        help_text="When it is rejected unless decided (Agent.approval_timeout), or null.")

    class Meta:
        ref_name = "AgentPendingToolCall"


class StrictBodySerializer(serializers.Serializer):
    """A request body whose unknown fields are errors: a decision must not silently drop a
    misspelt field (an ``inputs`` would approve the model's own input)."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name[:50]: ["Unknown field."]
                                               for name in unknown})
        return attrs


class ApproveToolCallSerializer(StrictBodySerializer):
    """The body of an approval (optional)."""

    input = serializers.DictField(
        required=False, help_text="An edited input, validated against the tool's schema "
                                  "(default: the model's).")

    class Meta:
        ref_name = "AgentToolCallApproval"


class RejectToolCallSerializer(StrictBodySerializer):
    """The body of a rejection (optional)."""

    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=REASON_MAX_LENGTH,
        help_text="Told to the model with the rejection.")

    class Meta:
        ref_name = "AgentToolCallRejection"


class ToolCallDecisionSerializer(serializers.Serializer):
    """The answer to a decision."""

    tool_use_id = serializers.CharField(read_only=True)
    approved = serializers.BooleanField(read_only=True)
    resumed = serializers.BooleanField(
        read_only=True, help_text="true: it was the run's last undecided call; the run is "
                                  "queued again and the turn goes on.")
    run = AgentRunSerializer(read_only=True, help_text=(
        "The run as the decision left it: `awaiting_approval` while calls are undecided, "
        "`queued` once it resumed."))

    class Meta:
        ref_name = "AgentToolCallDecision"


def _turn_status_field() -> serializers.Field:
    return _inline_enum_field("TurnStatusField", TURN_STATUSES, help_text=(
        "`completed`, or `awaiting_approval`: the turn paused on the `pending` tool calls "
        "(`output` is then null)."))


@dataclass(frozen=True)
class AgentSerializers:
    """The serializers generated for one session model."""

    session: type[serializers.ModelSerializer]
    start: type[serializers.Serializer]
    #: ``start`` without ``instruction_args``: a viewset that chooses them itself
    #: (``AgentSessionViewSet.get_instruction_args``)
    pinned_start: type[serializers.Serializer]
    continue_: type[serializers.Serializer]
    turn: type[serializers.Serializer]
    context: type[serializers.Serializer]


_cache: dict[type[SessionRecord], AgentSerializers] = {}


def serializers_for(model: type[SessionRecord]) -> AgentSerializers:
    """The serializers of ``model``, generated on first use and cached."""
    found = _cache.get(model)
    if found is None:
        found = _cache[model] = _build(model)
    return found


def _build(model: type[SessionRecord]) -> AgentSerializers:
    options = model.agent_options
    if options is None:
        raise TypeError(f"{model.__name__} is not a concrete agent session model")
    name = model.__name__
    module = {"__module__": __name__}

    def output(**kwargs: Any) -> serializers.Field:
        return schema_field(f"{name}OutputField", options.output_serializer, **kwargs)

    def input_field() -> serializers.Field:
        return schema_field(f"{name}InputField", options.input_serializer,
                            help_text="Validated by the agent's input_schema.")

    meta = type("Meta", (AgentSessionSerializer.Meta,), {"model": model, "ref_name": f"{name}Session"})
    session = type(f"{name}SessionSerializer", (AgentSessionSerializer,), {
        **module, "Meta": meta,
        "last_output": output(read_only=True, allow_null=True,
                              help_text="The latest output (null before the first turn)."),
    })

    instruction = options.instruction_serializer
    if instruction is not None:
        required = any(f.required for f in instruction().fields.values())
        args = schema_field(f"{name}InstructionArgsField", instruction, required=required,
                            help_text="Validated by the agent's instruction_schema.")
    else:
        args = serializers.DictField(required=False, help_text="Instruction template variables.")
    start = type(f"{name}StartSerializer", (serializers.Serializer,), {
        **module, "input": input_field(), "instruction_args": args, "wait": wait_field(),
        "Meta": type("Meta", (), {"ref_name": f"{name}Start"}),
    })
    pinned_start = type(f"{name}PinnedStartSerializer", (start,), {
        **module, "instruction_args": None,  # None removes the inherited field (DRF)
        "Meta": type("Meta", (), {"ref_name": f"{name}PinnedStart"}),
    })
    continue_ = type(f"{name}ContinueSerializer", (serializers.Serializer,), {
        **module, "input": input_field(), "wait": wait_field(),
        "multitask": serializers.ChoiceField(
            choices=Multitask.choices, required=False,
            help_text="When the session already has runs (default: the agent's)."),
        "Meta": type("Meta", (), {"ref_name": f"{name}Continue"}),
    })
    turn = type(f"{name}TurnSerializer", (serializers.Serializer,), {
        **module, "session": session(read_only=True),
        "output": output(read_only=True, allow_null=True,
                         help_text="The turn's output; null while it awaits approval."),
        "run_id": serializers.UUIDField(read_only=True, allow_null=True,
                                        help_text="The turn's run."),
        "status": _turn_status_field(),
        "pending": PendingToolCallSerializer(
            many=True, read_only=True,
            help_text="The calls the turn waits for (empty unless awaiting_approval)."),
        "Meta": type("Meta", (), {"ref_name": f"{name}Turn"}),
    })
    if instruction is not None:
        context_args = schema_field(f"{name}ContextArgsField", instruction, read_only=True)
    else:
        context_args = serializers.DictField(read_only=True)
    context = type(f"{name}ContextSerializer", (serializers.Serializer,), {
        **module,
        "version": serializers.IntegerField(read_only=True),
        "system": serializers.CharField(read_only=True, help_text="The rendered instruction."),
        "instruction_args": context_args,
        "messages": serializers.ListField(child=serializers.DictField(), read_only=True,
                                          help_text="Messages API format."),
        "usage": UsageSerializer(read_only=True),
        "turns": serializers.IntegerField(read_only=True),
        "last_output": output(read_only=True, allow_null=True),
        "metadata": serializers.DictField(read_only=True),
        "Meta": type("Meta", (), {"ref_name": f"{name}Context"}),
    })
    return AgentSerializers(session=session, start=start, pinned_start=pinned_start,
                            continue_=continue_, turn=turn, context=context)

