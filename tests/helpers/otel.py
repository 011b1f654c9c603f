"""One OpenTelemetry SDK tracer provider for the test process, exporting to memory.

The global provider can be set once per process, so every test that reads spans shares this
exporter. It keeps spans only while a test records them (:func:`recording`), so the other tests
of the process neither fill it nor see its spans.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from django_agent_session.engine.telemetry import SCOPE

_exporter: InMemorySpanExporter | None = None
_recording = False


class _Gate(SimpleSpanProcessor):
    """Exports a finished span only while a test records."""

    def on_end(self, span: ReadableSpan) -> None:
        if _recording:
            super().on_end(span)


@contextlib.contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter, empty, keeping the spans that end in the block."""
    global _exporter, _recording
    if _exporter is None:  # installing the SDK provider on first use
        provider = TracerProvider()
        _exporter = InMemorySpanExporter()
        provider.add_span_processor(_Gate(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    _recording = True
    try:
        yield _exporter
    finally:
        _recording = False
        _exporter.clear()


def ours(exporter: InMemorySpanExporter) -> list[Any]:
    """The finished spans of this library (not the SDK's own HTTP spans), oldest first."""
    return [span for span in exporter.get_finished_spans()
            if span.instrumentation_scope.name == SCOPE]


def named(spans: list[Any], prefix: str) -> list[Any]:
    return [span for span in spans if span.name.startswith(prefix)]
