"""An executor that only records what it was asked to run, so a test decides when the queue
is drained (``Model.objects.drain``): the queue's own rules are tested without a race."""

from __future__ import annotations

from typing import Any


class Recording:
    calls: list[tuple[Any, str]] = []
    #: dispatches asked for later (an approval deadline): ``(model, pk, after)``
    later: list[tuple[Any, str, float]] = []

    def dispatch(self, model: Any, session_pk: Any, *, after: float | None = None) -> None:
        if after is None:
            Recording.calls.append((model, str(session_pk)))
        else:
            Recording.later.append((model, str(session_pk), after))
