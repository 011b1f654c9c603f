"""The one drain loop every executor runs, and the sweep that finds queues nobody drains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from channels.layers import get_channel_layer
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from ..declaration.registry import session_models
from ..records import AgentRun, RunStatus
from ..store.dispatch import executor
from ..store.lease import lease_free
from ..store.turns import Turn
from .stream import RunStream

#: added to a lease's remaining time before looking again (clock skew between processes)
RETRY_MARGIN = 0.25
#: longest wait before looking again: a holder that stops draining without dying (a process
#: shutting down gracefully finishes its turn but claims nothing more) frees the lease long
#: before it would expire
LOOK_AGAIN_MAX = 2.0


async def drain(model: Any, session_pk: Any,
                keep_going: Callable[[], bool] | None = None) -> float | None:
    """Run ``session_pk``'s queued runs in order, publishing each to its viewers.

    Each run is streamed to the conversation's viewers (:func:`observe`). Returns ``None``
    when the queue is empty, or the seconds after which to look again when
    runs are queued behind a lease someone else holds: a live holder drains them itself, but
    a dead one's lease must expire first, and then nobody else would.
    """
    drained = await model._default_manager.adrain_queue(session_pk, keep_going=keep_going)
    if drained.held_for is None or (keep_going is not None and not keep_going()):
        return None
    return min(drained.held_for + RETRY_MARGIN, LOOK_AGAIN_MAX)


def observe(model: Any, turn: Turn) -> RunStream:
    """What streams a queued run to the conversation's viewers, on any process (the store's
    ``dispatch.OBSERVER``): every drain and every caller running another's run uses it."""
    return RunStream(model, turn, get_channel_layer())


def stranded(model: Any, session_pk: Any = None) -> list[Any]:
    """Sync: the sessions of ``model`` (or only ``session_pk``) with queued runs and a free
    (or expired) lease."""
    now = timezone.now()
    # driven from the queued runs (few, and indexed by status), not from every session
    queued = AgentRun.objects.filter(
        session_type=ContentType.objects.get_for_model(model), status=RunStatus.QUEUED)
    sessions = model._base_manager.filter(lease_free(now))
    if session_pk is not None:
        queued, sessions = queued.filter(session_id=session_pk), sessions.filter(pk=session_pk)
    sessions = sessions.filter(pk__in=queued.values("session_id")).order_by()
    return list(sessions.values_list("pk", flat=True))


def sweep() -> int:
    """Sync: hand every stranded queue to the executor; how many were handed on.

    Queues are stranded when the process that should have drained them died after the
    submission committed (the next submission on the session, or its next live owner, would
    also pick them up). Run it periodically: ``manage.py agent_session_sweep --every 30``.
    """
    handed = 0
    for model in session_models():
        for pk in stranded(model):
            executor().dispatch(model, pk)
            handed += 1
    return handed
