"""The WebSocket protocol of live sessions: client frames, their validation, error and close codes.

Every client frame is a JSON object with a ``type``. A frame that is not valid JSON, not an
object, too large, of an unknown type or with missing, extra or mistyped fields is answered with
an ``error`` frame (see :func:`error_frame`); the socket stays open. Frame fields are validated
with DRF serializers, so ``errors`` has the same shape as a REST 400 body.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from rest_framework import serializers

from ..declaration.schemas import plain_errors
from ..records import Multitask

# -- close codes ----------------------------------------------------------------------------
# Application codes only: ASGI servers may refuse others (daphne's autobahn sends only 1000 and
# 3000-4999, and raises on 1011). A refusal is sent right after accepting, so browsers can read
# the code; only 4500 follows a data frame (its ``error`` frame). A foreign ``Origin`` is
# refused before accepting instead (HTTP 403, as Channels' ``OriginValidator`` does).
CLOSE_INVALID_ID = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_SERVER_ERROR = 4500

#: every close code the consumer sends, and what it means
CLOSE_CODES: dict[int, str] = {
    CLOSE_INVALID_ID: "The conversation id in the URL is not a UUID.",
    CLOSE_UNAUTHENTICATED: "No authenticated user.",
    CLOSE_FORBIDDEN: "Another user's conversation, or the router raised PermissionDenied.",
    CLOSE_NOT_FOUND: "The router knows no such agent.",
    CLOSE_SERVER_ERROR: "The server failed while connecting; an error frame says why.",
}

# -- error codes of ``error`` frames -------------------------------------------------------
INVALID_JSON = "invalid_json"
INVALID_FRAME = "invalid_frame"
UNKNOWN_TYPE = "unknown_type"
FRAME_TOO_LARGE = "frame_too_large"
NOT_RUNNING = "not_running"
NOTHING_TO_CANCEL = "nothing_to_cancel"
OWNER_UNAVAILABLE = "owner_unavailable"
FORBIDDEN = "forbidden"
INTERNAL_ERROR = "internal_error"
# plus the ``code`` of any library error (``invalid_input``, ``invalid_instruction_args``,
# ``ownership_unavailable``, ``session_busy``, ``tool_call_not_found``, ``already_decided``,
# ``model_*``...), see exceptions.py

REF_MAX_LENGTH = 64
#: longest ``tool_use_id`` a ``decide`` frame may name
TOOL_USE_ID_MAX_LENGTH = 255
#: longest ``reason`` of a rejection (as over REST; it is sent to the model)
REASON_MAX_LENGTH = 2000


class FrameError(Exception):
    """A client frame was rejected; becomes an ``error`` frame, the socket stays open."""

    def __init__(self, code: str, message: str, *, errors: Any = None, ref: str | None = None
                 ) -> None:
        super().__init__(message)
        self.code, self.message, self.errors, self.ref = code, message, errors, ref

    def to_frame(self) -> dict[str, Any]:
        return error_frame(self.code, self.message, errors=self.errors, ref=self.ref)


def error_frame(code: str, message: str, *, errors: Any = None, ref: str | None = None,
                **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if errors is not None:
        frame["errors"] = errors
    if ref is not None:
        frame["ref"] = ref
    frame.update({k: v for k, v in extra.items() if v is not None})
    return frame


# -- fields ---------------------------------------------------------------------------------

class StrictIntegerField(serializers.IntegerField):
    """An integer that must be a JSON number without a fraction (no strings, no booleans)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        if isinstance(data, float) and (not math.isfinite(data) or not data.is_integer()):
            self.fail("invalid")
        return super().to_internal_value(int(data))


class StrictCharField(serializers.CharField):
    """A string that must be a JSON string (DRF's CharField would accept numbers)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false`` (DRF's BooleanField would accept ``"yes"`` or ``1``)."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class ObjectField(serializers.JSONField):
    """A JSON object."""

    default_error_messages = {"invalid": "Expected an object."}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("invalid")
        return data


class InputField(serializers.JSONField):
    """The agent's input: an object, or a string (shorthand for ``{"message": ...}``)."""

    default_error_messages = {"invalid": "Expected an object or a string."}

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, (dict, str)):
            self.fail("invalid")
        return data


def _ref() -> StrictCharField:
    return StrictCharField(required=False, max_length=REF_MAX_LENGTH, allow_blank=False)


# -- client frames --------------------------------------------------------------------------

class ClientFrame(serializers.Serializer):
    """A client frame's serializer. DRF deep-copies a serializer's declared fields for every
    instance, so that one instance may change its fields; a frame's never change, and the
    copy was most of the cost of validating one, so each instance gets shallow copies."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}


class MessageFrame(ClientFrame):
    """Send input to the agent: committed as a queued run, then acknowledged (``ack``). The
    ``ref`` is the message's id: resending it returns the same run and never runs twice."""

    input = InputField()
    ref = _ref()
    multitask = serializers.ChoiceField(choices=Multitask.choices, required=False)


class CancelFrame(ClientFrame):
    """Cancel the running turn (no ``ref``, or its ``ref``) or a queued message (its ``ref``)."""

    ref = _ref()


class DecideFrame(ClientFrame):
    """Decide a tool call awaiting approval: ``approve: true`` (with an edited ``input``, if
    any) or ``false`` (with a ``reason`` told to the model, if any). Answered with
    ``decided``; every viewer gets ``tool.approval_granted`` / ``tool.approval_denied``."""

    tool_use_id = StrictCharField(max_length=TOOL_USE_ID_MAX_LENGTH)
    approve = StrictBooleanField()
    input = ObjectField(required=False)
    reason = StrictCharField(required=False, allow_blank=True, max_length=REASON_MAX_LENGTH)
    ref = _ref()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors = {}
        if attrs["approve"] and "reason" in attrs:
            errors["reason"] = ["Only a rejection takes a reason."]
        if not attrs["approve"] and "input" in attrs:
            errors["input"] = ["Only an approval takes an edited input."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class StartFrame(ClientFrame):
    """Create the conversation if it does not exist yet (idempotent), then send the state."""

    instruction_args = ObjectField(required=False)
    title = StrictCharField(required=False, max_length=200, allow_blank=True)
    ref = _ref()


class ResumeFrame(ClientFrame):
    """Replay the stored events with ``seq > after_seq``."""

    after_seq = StrictIntegerField(min_value=0)
    ref = _ref()


class StateFrame(ClientFrame):
    """Ask for a fresh ``session.state``."""

    ref = _ref()


class PingFrame(ClientFrame):
    """Keep-alive; answered with ``pong``."""

    ref = _ref()


CLIENT_FRAMES: dict[str, type[ClientFrame]] = {
    "message": MessageFrame,
    "cancel": CancelFrame,
    "decide": DecideFrame,
    "start": StartFrame,
    "resume": ResumeFrame,
    "state": StateFrame,
    "ping": PingFrame,
}


def decode(text_data: str | None, bytes_data: bytes | None, max_bytes: int) -> Any:
    """The JSON value of a raw frame; the size is checked before parsing."""
    if text_data is None:
        size = len(bytes_data or b"")
        if size > max_bytes:
            raise FrameError(FRAME_TOO_LARGE, f"Frame is {size} bytes; the limit is {max_bytes}.")
        raise FrameError(INVALID_FRAME, "Binary frames are not supported; send JSON text.")
    # a str of n characters is at most 4n UTF-8 bytes: encode only when it may be too large
    if len(text_data) * 4 > max_bytes:
        size = len(text_data.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise FrameError(FRAME_TOO_LARGE, f"Frame is {size} bytes; the limit is {max_bytes}.")
    try:
        return json.loads(text_data)
    except (ValueError, RecursionError):
        raise FrameError(INVALID_JSON, "Frame is not valid JSON.") from None


def parse(content: Any) -> tuple[str, dict[str, Any]]:
    """Validate a decoded frame; returns ``(type, validated fields)``."""
    if not isinstance(content, dict):
        raise FrameError(INVALID_FRAME, "A frame must be a JSON object with a 'type'.")
    raw_ref = content.get("ref")
    ref = raw_ref if isinstance(raw_ref, str) and len(raw_ref) <= REF_MAX_LENGTH else None
    kind = content.get("type")
    if kind is None:
        raise FrameError(INVALID_FRAME, "The frame has no 'type'.",
                         errors={"type": ["This field is required."]}, ref=ref)
    if not isinstance(kind, str):
        raise FrameError(INVALID_FRAME, "'type' must be a string.",
                         errors={"type": ["Not a valid string."]}, ref=ref)
    serializer_class = CLIENT_FRAMES.get(kind)
    if serializer_class is None:
        known = ", ".join(sorted(CLIENT_FRAMES))
        raise FrameError(UNKNOWN_TYPE, f"Unknown frame type {kind[:50]!r}; known: {known}.",
                         ref=ref)
    fields = {k: v for k, v in content.items() if k != "type"}
    serializer = serializer_class(data=fields)
    errors = {} if serializer.is_valid() else plain_errors(serializer.errors)
    unknown = sorted(set(fields) - set(serializer.fields))
    for name in unknown:
        errors[name[:50]] = ["Unknown field."]
    if errors:
        raise FrameError(INVALID_FRAME, f"Invalid {kind!r} frame.", errors=errors, ref=ref)
    return kind, dict(serializer.validated_data)
