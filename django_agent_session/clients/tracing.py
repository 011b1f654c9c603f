"""Whether OpenTelemetry spans made now could be recorded.

Until an application sets a tracer provider, the OpenTelemetry API hands out spans that record
nothing. Building them still costs: the library's own spans were about 5 % of a short turn, and
the ``anthropic`` SDK's span of each call (whose attributes it reads from the request) about
3 % of a live turn's CPU (docs/performance.md). Both the engine's spans and the client's SDK
ask this before making any.
"""

from __future__ import annotations

try:
    from opentelemetry import trace

    #: what the API hands out until a tracer provider is set: spans that record nothing
    _UNSET: tuple[type, ...] = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
except ImportError:  # pragma: no cover - the anthropic SDK depends on the API
    trace = None  # type: ignore[assignment]


def tracer_provider_set() -> bool:
    """Whether the API is installed and a tracer provider is set (by an OpenTelemetry SDK's
    setup, or named by ``OTEL_PYTHON_TRACER_PROVIDER``)."""
    return trace is not None and not isinstance(trace.get_tracer_provider(), _UNSET)
