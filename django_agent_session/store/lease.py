"""The turn lease, stated once: when it is held, when it ends, what a caller is told to wait.

A session row's ``lease_token`` names the run that holds it and ``lease_expires_at`` when a
crashed holder stops counting. Every writer and every surface that asks "is a turn running?"
uses these helpers, so the rule cannot drift between the store, the API and the admin.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from .. import exceptions as exc
from ..conf import agent_settings

#: the error a run gets when its process stopped and another caller took its lease over
INTERRUPTED: dict[str, Any] = {
    "code": "interrupted", "retryable": True,
    "message": "The turn's process stopped before it finished; its lease expired.",
}
#: the longest ``retry_after`` a caller is told (a lease may be far longer)
MAX_RETRY_AFTER = 60.0


def lease_deadline(now: datetime) -> datetime:
    """When a lease taken (or renewed) at ``now`` expires."""
    return now + timedelta(seconds=agent_settings.TURN_LEASE_SECONDS)


def lease_held(token: Any, expires_at: datetime | None, now: datetime | None = None) -> bool:
    """Whether a turn holds the lease: it names a run and has not expired."""
    if token is None or expires_at is None:
        return False
    return expires_at > (now or timezone.now())


def lease_free(now: datetime) -> Q:
    """The rows whose lease is free at ``now`` (none, or expired), as a filter."""
    return Q(lease_token__isnull=True) | Q(lease_expires_at__lte=now)


def lease_remaining(expires_at: datetime, now: datetime | None = None) -> float:
    """Seconds until the lease expires (never negative)."""
    return max((expires_at - (now or timezone.now())).total_seconds(), 0.0)


def retry_after(seconds: float) -> float:
    """What a busy caller is told to wait: at least 1 s, at most ``MAX_RETRY_AFTER``."""
    return max(1.0, round(min(seconds, MAX_RETRY_AFTER), 1))


def session_busy(expires_at: datetime, message: str = "", now: datetime | None = None
                 ) -> exc.SessionBusy:
    """The :class:`SessionBusy` for a lease that expires at ``expires_at``."""
    return exc.SessionBusy(message, retry_after=retry_after(lease_remaining(expires_at, now)))
