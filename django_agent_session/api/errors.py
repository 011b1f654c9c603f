"""The one mapping from the library's typed errors to HTTP responses.

JSON endpoints raise what :func:`api_exception` returns through DRF's exception handling (so a
project's ``EXCEPTION_HANDLER`` still applies); streaming endpoints send :func:`error_body`
as an ``error`` event. Both give the same status and body for the same error.
"""

from __future__ import annotations

import logging
import math
import statistics
from datetime import datetime
from typing import Any, TypeVar

from django.core.exceptions import RequestDataTooBig
from django.utils import timezone
from rest_framework import exceptions as drf
from rest_framework import status

from .. import exceptions as exc
from ..declaration.schemas import plain_errors
from ..records import RunKind, RunStatus

logger = logging.getLogger("django_agent_session.api")

_E = TypeVar("_E", bound=BaseException)

#: error class -> HTTP status; the first matching entry wins (subclasses before bases)
STATUS_BY_ERROR: list[tuple[type[exc.AgentSessionError], int]] = [
    # a call the caller may not decide is reported exactly like a missing one
    (exc.ToolCallNotFound, status.HTTP_404_NOT_FOUND),
    (exc.AlreadyDecided, status.HTTP_409_CONFLICT),
    (exc.SessionBusy, status.HTTP_409_CONFLICT),
    (exc.LeaseLost, status.HTTP_409_CONFLICT),
    (exc.TokenBudgetExceeded, status.HTTP_409_CONFLICT),
    (exc.CostBudgetExceeded, status.HTTP_409_CONFLICT),
    (exc.ContextWindowExceeded, status.HTTP_409_CONFLICT),
    (exc.ModelRefused, status.HTTP_422_UNPROCESSABLE_ENTITY),
    (exc.ReplyIncomplete, status.HTTP_502_BAD_GATEWAY),
    (exc.InvalidModelOutput, status.HTTP_502_BAD_GATEWAY),
    (exc.MaxIterationsExceeded, status.HTTP_502_BAD_GATEWAY),
    (exc.ToolFailed, status.HTTP_502_BAD_GATEWAY),
    (exc.TurnCancelled, status.HTTP_503_SERVICE_UNAVAILABLE),
]

#: keys of ``AgentSessionError.details`` that are not repeated in the response body
HIDDEN_DETAILS = {"status_code"}


#: what a busy caller is told to wait (``retry_after``, ``Retry-After``), in seconds
RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 30.0
#: how many of the session's latest completed turns make its typical turn duration
TYPICAL_TURNS = 10


def busy_retry_after(session: Any, now: datetime | None = None) -> float:
    """How long a caller refused with ``session_busy`` should wait before trying again.

    From what the session's runs say: ``typical`` is the median duration of its last
    :data:`TYPICAL_TURNS` completed turns. The running turn, ``elapsed`` seconds in, needs
    ``typical - elapsed`` more (at least a quarter of ``typical`` once it runs longer than
    usual), or, with no completed turn yet, as long again as it has run so far; each queued
    turn ahead adds ``typical`` (or that same guess). Nothing running: the minimum. Bounded to
    :data:`RETRY_AFTER_MIN`..:data:`RETRY_AFTER_MAX` (never the lease's length), rounded to
    0.1 s; the ``Retry-After`` header is that, rounded up.
    """
    now = now or timezone.now()
    turns = session.runs.filter(kind=RunKind.TURN)
    durations = list(turns.filter(status=RunStatus.COMPLETED, duration_ms__isnull=False)
                     .order_by("-started_at").values_list("duration_ms", flat=True)
                     [:TYPICAL_TURNS])
    typical = statistics.median(durations) / 1000 if durations else None
    started = (turns.filter(status=RunStatus.RUNNING).order_by("-started_at")
               .values_list("started_at", flat=True).first())
    queued = turns.filter(status=RunStatus.QUEUED).count()
    wait, per_turn = 0.0, typical
    if started is not None:
        elapsed = max((now - started).total_seconds(), 0.0)
        if typical is None:
            wait = per_turn = elapsed
        else:
            wait = max(typical - elapsed, typical / 4)
    wait += queued * (per_turn or RETRY_AFTER_MIN)
    return round(min(max(wait, RETRY_AFTER_MIN), RETRY_AFTER_MAX), 1)


class PayloadTooLarge(drf.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class AgentAPIError(drf.APIException):
    """A typed agent error as a DRF exception: ``{"code", "detail", "retryable", ...}``."""

    #: the response body, as plain values (not ``ErrorDetail``)
    detail: dict[str, Any]

    def __init__(self, error: exc.AgentSessionError, status_code: int) -> None:
        super().__init__(error.message, error.code)
        self.status_code = status_code
        self.error = error
        # a 500 is a bug: its message may hold internals, so the client gets none of it
        detail = "Internal server error." if status_code == 500 else error.message
        body: dict[str, Any] = {"code": error.code, "detail": detail,
                                "retryable": error.retryable}
        body.update({k: v for k, v in error.details.items()
                     if v is not None and k not in HIDDEN_DETAILS and k not in body})
        session = getattr(error, "session", None)
        if session is not None:
            body["session_id"] = str(session.pk)
        # plain values, not ErrorDetail: booleans and numbers stay what they are
        self.detail = body
        if isinstance(error, exc.SessionBusy):
            self.wait = math.ceil(error.retry_after)  # DRF turns ``wait`` into Retry-After


def status_for(error: exc.AgentSessionError) -> int:
    for cls, code in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return code
    if isinstance(error, exc.ModelError):
        return status.HTTP_503_SERVICE_UNAVAILABLE if error.retryable else status.HTTP_502_BAD_GATEWAY
    return status.HTTP_500_INTERNAL_SERVER_ERROR  # ``internal_error``: a bug, not the client


def api_exception(error: _E) -> _E | drf.APIException:
    """The DRF exception to raise for ``error`` (other exceptions are returned unchanged)."""
    if isinstance(error, exc.InvalidInstructionArgs):
        return drf.ValidationError({"instruction_args": error.errors})
    if isinstance(error, exc.InvalidInput):
        return drf.ValidationError({"input": error.errors})
    if isinstance(error, exc.SessionNotFound):
        return drf.NotFound()
    if isinstance(error, RequestDataTooBig):  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE
        return PayloadTooLarge()
    if isinstance(error, exc.AgentSessionError):
        code = status_for(error)
        if code == 500:  # a bug somewhere: keep the traceback
            logger.error("Agent turn failed: %s", error, exc_info=error)
        return AgentAPIError(error, code)
    return error


def error_body(error: BaseException) -> dict[str, Any]:
    """``{"status": <the status the JSON endpoint would answer>, **body}`` for an SSE event."""
    converted = api_exception(error)
    if not isinstance(converted, drf.APIException):
        logger.exception("Agent turn failed", exc_info=error)
        return {"status": 500, "code": "internal_error", "detail": "Internal server error.",
                "retryable": False}
    detail = converted.detail
    body: dict[str, Any]
    if isinstance(converted, AgentAPIError):
        body = dict(converted.detail)
    elif isinstance(detail, dict):
        body = {"code": converted.default_code, "detail": "Invalid request.",
                "errors": plain_errors(detail), "retryable": False}
    else:
        body = {"code": getattr(detail, "code", converted.default_code), "detail": str(detail),
                "retryable": False}
    return {"status": converted.status_code, **body}


