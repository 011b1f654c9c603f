"""OpenTelemetry spans of a turn, its model calls and its tool calls.

Named and attributed after the OpenTelemetry GenAI semantic conventions: ``invoke_agent
<Model>`` for a turn, ``chat <model id>`` for each model call, ``execute_tool <tool>`` for each
tool call. Optional: ``opentelemetry-api`` is imported here and nowhere else, and without it
every function below returns a shared no-op at once, so a turn pays nothing; so do they while no
tracer provider is set (the API alone, no SDK configured).

A durable run is submitted in one thread or process and run by an executor in another:
:func:`with_trace` stores the submitter's W3C ``traceparent`` in the run's ``origin``, and the
executor's ``invoke_agent`` span is linked to it (and parented by it when the executor has no
span of its own), so one trace shows the request that queued a message and the turn it caused.

Message content (prompts, replies, tool arguments and results) is recorded only when
``AGENT_SESSION["TELEMETRY_CAPTURE_CONTENT"]`` is true: it is the user's data.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from ..clients.tracing import tracer_provider_set
from ..conf import agent_settings

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # the ``otel`` extra is not installed: every span is a no-op
    trace = None  # type: ignore[assignment]

#: the instrumentation scope of every span here
SCOPE = "django_agent_session"
#: the run's id (the conventions name no attribute for it)
RUN_ID = "django_agent_session.run.id"
#: how a turn that did not fail ended: ``completed`` or ``awaiting_approval``
RUN_STATUS = "django_agent_session.run.status"
#: the key of ``AgentRun.origin`` holding the submitter's trace context
ORIGIN_KEY = "trace"
#: longest content attribute recorded (the rest is cut, marked with an ellipsis)
MAX_CONTENT_CHARS = 16_000


class _Noop:
    """What every helper returns without OpenTelemetry: enters, records nothing."""

    def __enter__(self) -> _Noop:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def response(self, response: Any) -> None:
        pass

    def outcome(self, value: Any, error: BaseException | None) -> None:
        pass

    def result(self, result: Any) -> None:
        pass

    def paused(self) -> None:
        pass


NOOP = _Noop()


def enabled() -> bool:
    """Whether spans are recorded at all (the API is installed)."""
    return trace is not None


def _configured() -> bool:
    """Whether a span made now could be recorded: the API is installed and a tracer provider
    is set (by an SDK's setup). Before that the API's spans record nothing, and making them
    anyway was about 5 % of a short turn's time."""
    return tracer_provider_set()


def _tracer() -> Any:
    return trace.get_tracer(SCOPE)


def error_type(error: BaseException) -> str:
    """``error.type``: the exception's fully qualified class name, as the conventions ask."""
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" \
        else f"{cls.__module__}.{cls.__qualname__}"


def _failed(span: Any, error: BaseException) -> None:
    span.set_attribute("error.type", error_type(error))
    span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
    span.record_exception(error)


def _content(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str,
                                                           ensure_ascii=False)
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS - 1] + "…"


def _capture() -> bool:
    return bool(agent_settings.TELEMETRY_CAPTURE_CONTENT)


def _usage_attributes(usage: dict[str, Any]) -> dict[str, int]:
    """Token attributes; ``input_tokens`` counts every input token, cached ones included
    (as the conventions ask), the cache attributes say how many of them were cached."""
    created = int(usage.get("cache_creation_input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    return {"gen_ai.usage.input_tokens": int(usage.get("input_tokens") or 0) + created + read,
            "gen_ai.usage.output_tokens": int(usage.get("output_tokens") or 0),
            "gen_ai.usage.cache_creation.input_tokens": created,
            "gen_ai.usage.cache_read.input_tokens": read}


@contextlib.contextmanager
def _span(name: str, kind: Any, attributes: dict[str, Any], *, parent: Any = None,
          links: Any = (), ok: tuple[type[BaseException], ...] = ()) -> Iterator[Any]:
    """A current span that records an escaping exception (``error.type``, status) unless it
    is one of ``ok`` (an outcome, not a failure)."""
    span = _tracer().start_span(name, context=parent, kind=kind, attributes=attributes,
                                links=list(links))
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False,
                            set_status_on_exception=False):
            yield span
    except ok:
        raise
    except BaseException as error:
        _failed(span, error)
        raise
    finally:
        span.end()


# -- the turn ---------------------------------------------------------------------------------


class _Turn:
    def __init__(self, span: Any) -> None:
        self.span = span

    def result(self, result: Any) -> None:
        """A completed turn: its tokens (every call's, side calls' too) and how it stopped."""
        span = self.span
        if result.model:
            span.set_attribute("gen_ai.response.model", result.model)
        if result.stop_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [result.stop_reason])
        for key, value in _usage_attributes(result.all_usage).items():
            span.set_attribute(key, value)
        span.set_attribute(RUN_STATUS, "completed")
        if _capture():
            span.set_attribute("gen_ai.output.messages", _content(result.output))

    def paused(self) -> None:
        self.span.set_attribute(RUN_STATUS, "awaiting_approval")


@contextlib.contextmanager
def _turn(options: Any, session_id: Any, run_id: Any, origin: dict[str, Any] | None,
          paused: tuple[type[BaseException], ...]) -> Iterator[_Turn]:
    links, parent = [], None
    carrier = (origin or {}).get(ORIGIN_KEY)
    if isinstance(carrier, dict) and carrier:
        submitted = propagate.extract(carrier)
        submitter = trace.get_current_span(submitted).get_span_context()
        if submitter.is_valid:
            links.append(Link(submitter, {"django_agent_session.link": "submitted"}))
            # an executor with no span of its own continues the submitter's trace
            if not trace.get_current_span().get_span_context().is_valid:
                parent = submitted
    name = options.model.__name__
    attributes = {"gen_ai.operation.name": "invoke_agent",
                  "gen_ai.provider.name": options.provider, "gen_ai.system": options.provider,
                  "gen_ai.agent.name": name, "gen_ai.request.model": options.model_name,
                  "gen_ai.conversation.id": str(session_id), RUN_ID: str(run_id)}
    with _span(f"invoke_agent {name}", SpanKind.INTERNAL, attributes, parent=parent,
               links=links, ok=paused) as span:
        handle = _Turn(span)
        try:
            yield handle
        except paused:
            handle.paused()
            raise


def turn(options: Any, session_id: Any, run_id: Any, origin: dict[str, Any] | None = None,
         *, paused: tuple[type[BaseException], ...] = ()) -> Any:
    """The ``invoke_agent`` span of one turn (yields ``.result(result)``).

    ``origin`` is the run's: a submitter's trace context there becomes a link (and the
    parent, if no span is current). An exception in ``paused`` (the turn waits for
    approvals) ends the span without an error.
    """
    if not _configured():
        return NOOP
    return _turn(options, session_id, run_id, origin, paused)


def with_trace(origin: dict[str, Any] | None) -> dict[str, Any] | None:
    """``origin`` plus the current trace context (W3C ``traceparent``), when a span is
    current: stored on a queued run, so the executor that runs it can link back."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return origin
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return origin
    return {**(origin or {}), ORIGIN_KEY: carrier}


# -- model calls --------------------------------------------------------------------------


class _ModelCall:
    def __init__(self, span: Any) -> None:
        self.span = span

    def response(self, response: Any) -> None:
        span = self.span
        if response.model:
            span.set_attribute("gen_ai.response.model", response.model)
        if response.stop_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [response.stop_reason])
        if response.request_id:
            span.set_attribute("anthropic.request.id", response.request_id)
        for key, value in _usage_attributes(response.usage or {}).items():
            span.set_attribute(key, value)
        if _capture():
            span.set_attribute("gen_ai.output.messages", _content(
                [{"role": "assistant", "content": response.content}]))


@contextlib.contextmanager
def _model_call(provider: str, request: Any, session_id: Any) -> Iterator[_ModelCall]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
        "gen_ai.system": provider, "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": request.max_tokens}
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if session_id is not None:
        attributes["gen_ai.conversation.id"] = str(session_id)
    if _capture():
        attributes["gen_ai.system_instructions"] = _content(request.system)
        attributes["gen_ai.input.messages"] = _content(request.messages)
    # the SDK's own CLIENT span of the HTTP call (with its retries) nests under this one
    with _span(f"chat {request.model}", SpanKind.INTERNAL, attributes) as span:
        yield _ModelCall(span)


def model_call(provider: str, request: Any, session_id: Any = None) -> Any:
    """The ``chat`` span of one model call (yields ``.response(response)``)."""
    if not _configured():
        return NOOP
    return _model_call(provider, request, session_id)


# -- tool calls ---------------------------------------------------------------------------


class _ToolCall:
    def __init__(self, span: Any) -> None:
        self.span = span

    def outcome(self, value: Any, error: BaseException | None) -> None:
        """What the tool did: a failure (returned to the model as an error result, or
        halting the turn) marks the span failed."""
        if error is not None:
            _failed(self.span, error)
        elif _capture():
            self.span.set_attribute("gen_ai.tool.call.result", _content(value))


@contextlib.contextmanager
def _tool_call(name: str, tool_use_id: str, arguments: dict[str, Any], session_id: Any
               ) -> Iterator[_ToolCall]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": tool_use_id, "gen_ai.tool.type": "function"}
    if session_id is not None:
        attributes["gen_ai.conversation.id"] = str(session_id)
    if _capture():
        attributes["gen_ai.tool.call.arguments"] = _content(arguments)
    with _span(f"execute_tool {name}", SpanKind.INTERNAL, attributes) as span:
        yield _ToolCall(span)


def tool_call(name: str, tool_use_id: str, arguments: dict[str, Any],
              session_id: Any = None) -> Any:
    """The ``execute_tool`` span of one tool call (yields ``.outcome(value, error)``)."""
    if not _configured():
        return NOOP
    return _tool_call(name, tool_use_id, arguments, session_id)


__all__ = ["NOOP", "ORIGIN_KEY", "RUN_ID", "SCOPE", "enabled", "error_type", "model_call",
           "tool_call", "turn", "with_trace"]
