"""Typed errors raised by the library.

Every runtime error derives from :class:`AgentSessionError` and carries a stable ``code`` and a
``retryable`` flag, so callers (and the REST/WebSocket surfaces) can decide what to tell a
client without string matching.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured


class AgentDeclarationError(ImproperlyConfigured):
    """An ``Agent`` declaration is invalid (raised when the model class is prepared)."""


class AgentSessionError(Exception):
    """Base class of every runtime error of the library."""

    code = "agent_session_error"
    retryable = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description, stored on failed runs and sent to clients."""
        data: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }
        data.update({k: v for k, v in self.details.items() if v is not None})
        return data


class InvalidInput(AgentSessionError):
    """The input does not match the agent's ``input_schema``.

    ``errors`` keeps DRF's structured field errors (what the REST and WebSocket surfaces send)
    and ``message`` a fixed summary; ``str()`` names what was validated (``label``, e.g.
    ``"ChatAgent input"``, set by the schema) and every failing field with its messages:
    ``"ChatAgent input: message: This field is required."``.
    """

    code = "invalid_input"

    def __init__(self, errors: Any, message: str = "Invalid input.", *,
                 label: str | None = None) -> None:
        super().__init__(message, errors=errors)
        self.errors = errors
        #: what was validated ("ChatAgent input"), or None: ``str()`` starts with the message
        self.label = label

    def __str__(self) -> str:
        label = getattr(self, "label", None)  # a run's stored error (from_dict) has none
        return describe_errors(getattr(self, "errors", None), label or self.message,
                               labelled=bool(label))


class InvalidAttachment(InvalidInput):
    """A file refused as a turn's attachment: its sniffed type is not allowed
    (``reason="type"``), it is too large (``"too_large"``) or empty (``"empty"``), or the
    attachment named is not one of the session's (``"not_found"``)."""

    code = "invalid_attachment"

    def __init__(self, errors: Any, message: str = "Invalid attachment.", *,
                 reason: str = "invalid", label: str | None = None) -> None:
        super().__init__(errors, message, label=label)
        self.reason = self.details["reason"] = reason


class InvalidInstructionArgs(InvalidInput):
    """The instruction args do not match ``instruction_schema`` or the template."""

    code = "invalid_instruction_args"


class InvalidConfig(InvalidInput):
    """A conversation's configuration (``start_session(config=)``, a factory's ``config``)
    names an unknown key, a tool the agent does not have, or a bad value. ``errors`` maps
    each key to its messages."""

    code = "invalid_config"


class SessionNotFound(AgentSessionError):
    """No session with that primary key."""

    code = "session_not_found"


class RunNotFound(AgentSessionError):
    """No run with that id (of that session model)."""

    code = "run_not_found"


class ToolCallNotFound(AgentSessionError):
    """No pending tool call with that id on the session (or not one the caller may decide)."""

    code = "tool_call_not_found"


class AlreadyDecided(AgentSessionError):
    """The tool call was already approved, rejected or expired; a call is decided once."""

    code = "already_decided"


class SessionBusy(AgentSessionError):
    """Another turn holds the session's lease and did not finish within the waiting bound."""

    code = "session_busy"
    retryable = True

    def __init__(self, message: str = "", *, retry_after: float = 1.0) -> None:
        super().__init__(message or "Another turn is running on this session.",
                         retry_after=retry_after)
        self.retry_after = retry_after


class QueueFull(AgentSessionError):
    """The session already has ``QUEUE_MAX`` messages waiting."""

    code = "queue_full"
    retryable = True


class LeaseLost(AgentSessionError):
    """The turn's lease expired and another caller took the session over; nothing was saved."""

    code = "lease_lost"
    retryable = True


class TurnCancelled(AgentSessionError):
    """The turn was cancelled before it finished; nothing was saved to the context."""

    code = "cancelled"


class TurnInterrupted(AgentSessionError):
    """The turn's process stopped (a shutdown, or a crash found by the next turn) before the
    turn finished; nothing was saved to the context. Submitting the message again is safe."""

    code = "interrupted"
    retryable = True


class TokenBudgetExceeded(AgentSessionError):
    """The session's ``token_budget`` is used up (``budget_strategy = "halt"``)."""

    code = "token_budget_exceeded"


class CostBudgetExceeded(AgentSessionError):
    """The session's ``cost_budget`` (USD) is used up (``budget_strategy = "halt"``)."""

    code = "cost_budget_exceeded"


class ContextWindowExceeded(AgentSessionError):
    """The conversation no longer fits the model's context window.

    Turn on ``Agent.compaction`` (older turns are summarized), reset the session, or start a
    new one; ``tokens`` and ``window`` say by how much it is over.
    """

    code = "context_window_exceeded"


class ReplyIncomplete(AgentSessionError):
    """The reply was cut off at ``max_tokens`` (after any continuations): not a complete
    answer. The run is recorded ``incomplete`` with the partial text; the context is not
    changed. Raise ``Agent.max_tokens`` or set ``Agent.on_max_tokens = "continue"``."""

    code = "incomplete"
    #: the run status a turn ending with this error is recorded with
    run_status = "incomplete"


class ModelRefused(AgentSessionError):
    """The model declined to answer (``stop_reason == "refusal"``); the run is recorded
    ``refused`` and the context is not changed (the refused exchange is not sent again)."""

    code = "refused"
    run_status = "refused"


class MaxIterationsExceeded(AgentSessionError):
    """The tool loop reached ``max_iterations`` without a final answer."""

    code = "max_iterations_exceeded"


class ToolFailed(AgentSessionError):
    """A tool raised and the agent's ``tool_errors`` policy is ``"halt"``."""

    code = "tool_failed"


class HookFailed(AgentSessionError):
    """One of ``Agent.hooks`` raised something other than an ``AgentSessionError`` (which
    would be the turn's error as it is); the original is the ``__cause__``."""

    code = "hook_failed"


class InvalidModelOutput(AgentSessionError):
    """The model's reply did not validate against ``output_schema``, even after one retry."""

    code = "invalid_output"


class ModelError(AgentSessionError):
    """The model provider failed. Subclasses say how; ``request_id`` names the provider request."""

    code = "model_error"

    def __init__(self, message: str = "", *, request_id: str | None = None,
                 status_code: int | None = None, **details: Any) -> None:
        super().__init__(message, request_id=request_id, status_code=status_code, **details)
        self.request_id = request_id
        self.status_code = status_code


class ModelRateLimited(ModelError):
    """The provider rate-limited the request."""

    code = "model_rate_limited"
    retryable = True


class ModelOverloaded(ModelError):
    """The provider is overloaded."""

    code = "model_overloaded"
    retryable = True


class ModelUnavailable(ModelError):
    """The provider answered with a server error."""

    code = "model_unavailable"
    retryable = True


class ModelConnectionError(ModelError):
    """The provider could not be reached."""

    code = "model_connection_error"
    retryable = True


class ModelTimeout(ModelConnectionError):
    """The provider did not answer in time."""

    code = "model_timeout"
    retryable = True


class ModelAuthenticationError(ModelError):
    """The provider rejected the credentials."""

    code = "model_authentication_error"


class ModelBadRequest(ModelError):
    """The provider rejected the request as invalid."""

    code = "model_bad_request"


#: the failing fields ``str()`` of an :class:`InvalidInput` lists before "(and N more)"
MAX_LISTED_ERRORS = 10
#: the longest field path it quotes (names may come from the client)
MAX_PATH = 80


def describe_errors(errors: Any, head: str, *, labelled: bool = True) -> str:
    """``"<head>: field: message; other.0.field: message"``: DRF-style errors in one line.

    ``non_field_errors`` are listed without a field name; nested fields and list items are
    joined with dots. Without ``labelled``, ``head`` is a sentence and the fields follow it
    after a space.
    """
    found = list(_field_messages(errors, ()))
    if not found:
        return head
    listed = [f"{path}: {text}" if path else text for path, text in found[:MAX_LISTED_ERRORS]]
    if len(found) > MAX_LISTED_ERRORS:
        listed.append(f"(and {len(found) - MAX_LISTED_ERRORS} more)")
    return f"{head}{':' if labelled else ''} {'; '.join(listed)}"


def _field_messages(errors: Any, path: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            name = () if key == "non_field_errors" else (str(key),)
            yield from _field_messages(value, path + name)
    elif isinstance(errors, (list, tuple)):
        texts = [str(item) for item in errors if not isinstance(item, (Mapping, list, tuple))]
        if texts:
            joined = ".".join(path)
            if len(joined) > MAX_PATH:
                joined = joined[:MAX_PATH - 1] + "…"
            yield joined, " ".join(texts)
        for index, item in enumerate(errors):
            if isinstance(item, (Mapping, list, tuple)) and item:
                yield from _field_messages(item, (*path, str(index)))
    elif errors is not None and errors != "":
        yield from _field_messages([errors], path)


def _subclasses(cls: type[AgentSessionError]) -> list[type[AgentSessionError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def from_dict(data: dict[str, Any] | None) -> AgentSessionError:
    """The typed error a stored ``to_dict()`` describes (a run's ``error``), so a caller
    waiting on a run another process ran sees the error that process saw."""
    details = dict(data or {})
    code = details.pop("code", AgentSessionError.code)
    message = details.pop("message", "")
    retryable = bool(details.pop("retryable", False))
    cls = next((c for c in _subclasses(AgentSessionError) if c.code == code), AgentSessionError)
    error = cls.__new__(cls)
    AgentSessionError.__init__(error, message, **details)
    for name, value in details.items():  # errors, retry_after, request_id... as __init__ sets
        setattr(error, name, value)
    error.code, error.retryable = code, retryable
    return error

