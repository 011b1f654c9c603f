"""An executor that only records what it was asked to run, so a test decides when the queue
is drained (``Model.objects.drain``): the queue's own rules are tested without a race."""

from __future__ import annotations

from typing import Any


class Recording:
    calls: list[tuple[Any, str]] = []

    def dispatch(self, model: Any, session_pk: Any) -> None:
        Recording.calls.append((model, str(session_pk)))
