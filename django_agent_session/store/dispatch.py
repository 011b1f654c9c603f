"""Hand a session's queue to the configured executor once a submission has committed.

``AGENT_SESSION["EXECUTOR"]`` names it: ``"inline"``, ``"tasks"`` or a dotted path to a class
with a ``dispatch(model, session_pk)`` method (see :mod:`django_agent_session.runs.executors`). The
store loads it by name, as Django loads backends, so it never imports the layer above it; so
too the observer that streams a queued run to the conversation's viewers, whoever runs it.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from django.db import transaction
from django.utils.module_loading import import_string

from ..conf import agent_settings

#: the executors shipped with the app, by the names the setting accepts
ALIASES = {
    "inline": "django_agent_session.runs.executors.InlineExecutor",
    "tasks": "django_agent_session.runs.executors.TaskExecutor",
}


#: ``observer(model, turn)``: what tells the conversation's viewers about a queued run as it
#: runs (:func:`django_agent_session.runs.drain.observe`, the live layer's run stream)
OBSERVER = "django_agent_session.runs.drain.observe"


class Executor(Protocol):
    def dispatch(self, model: type, session_pk: Any, *, after: float | None = None) -> None:
        """Make sure someone runs ``session_pk``'s queued runs soon (called after commit), or
        looks at them ``after`` seconds from now (an approval deadline)."""


@functools.cache
def _load(path: str) -> Executor:
    return import_string(path)()


def executor() -> Executor:
    """The configured executor (one instance per dotted path)."""
    name = agent_settings.EXECUTOR
    return _load(ALIASES.get(name, name))


def dispatch(model: type, session_pk: Any, *, after: float | None = None) -> None:
    """Dispatch after the current transaction commits (at once outside a transaction).

    A failing executor (a task backend that is down) is logged, not raised: the run is
    committed whatever happens next, and the sweep or the next submission hands it on.
    """
    if after is None:
        transaction.on_commit(lambda: executor().dispatch(model, session_pk), robust=True)
    else:
        transaction.on_commit(lambda: executor().dispatch(model, session_pk, after=after),
                              robust=True)


def observer(model: type, turn: Any) -> Any:
    """The observer of a queued run about to run (see :data:`OBSERVER`): an executor's drain
    and a caller waiting behind the run, which runs it, stream it to viewers alike."""
    return import_string(OBSERVER)(model, turn)
