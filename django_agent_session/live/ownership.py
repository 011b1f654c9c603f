"""The cluster-wide ownership lease of a live session, stored in ``LiveOwnership``.

One row per conversation names the channel of the live session that runs its turns, until
``expires_at``. The owner renews it while alive; a crashed owner's row expires and the next
caller takes it over. Taking it is one conditional write: an UPDATE of an expired row, or an
INSERT whose unique constraint settles a race (inside a savepoint, so an outer transaction
survives the loser's IntegrityError). Any database error becomes :class:`OwnershipUnavailable`:
the caller must not start a live session it cannot prove it owns.

Functions here are synchronous; call them through ``database_sync_to_async``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeGuard

from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone

from ..conf import agent_settings
from ..exceptions import AgentSessionError
from ..records import LiveOwnership


class OwnershipUnavailable(AgentSessionError):
    """The ownership lease could not be read or written; the live session was not started."""

    code = "ownership_unavailable"
    retryable = True


class OwnershipConflict(AgentSessionError):
    """The conversation id is already used by a session of another model."""

    code = "conflict"


@dataclass(frozen=True)
class Lease:
    owner_channel: str
    expires_at: datetime
    #: whether this call took the lease (else it names another live owner)
    acquired: bool = False


def lease_seconds() -> float:
    return float(agent_settings.OWNER_LEASE_SECONDS)


def _guard(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatabaseError as error:
            raise OwnershipUnavailable(
                f"Could not determine the owner of the live session: {error}") from error
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def _unexpired(row: LiveOwnership | None) -> TypeGuard[LiveOwnership]:
    """Whether ``row`` is a lease that still names its owner (it expires at ``expires_at``)."""
    return row is not None and row.expires_at > timezone.now()


def _check_type(row: LiveOwnership, ct: ContentType) -> None:
    if row.session_type_id != ct.pk:
        raise OwnershipConflict("This conversation id belongs to a session of another model.")


@_guard
def current(model: type[models.Model] | None, session_id: Any) -> Lease | None:
    """The unexpired lease of ``session_id``, if any (checked to belong to ``model``)."""
    row = LiveOwnership.objects.filter(session_id=session_id).first()
    if not _unexpired(row):
        return None
    if model is not None:
        _check_type(row, ContentType.objects.get_for_model(model))
    return Lease(row.owner_channel, row.expires_at)


@_guard
def acquire(model: type[models.Model], session_id: Any, channel: str,
            seconds: float | None = None) -> Lease:
    """Take the lease for ``channel`` if it is free or expired; else return the live owner's."""
    ct = ContentType.objects.get_for_model(model)
    seconds = lease_seconds() if seconds is None else seconds
    for _ in range(5):  # each round either decides, or saw the row change under it
        now = timezone.now()
        expires = now + timedelta(seconds=seconds)
        if LiveOwnership.objects.filter(
                Q(expires_at__lte=now) | Q(owner_channel=channel),
                session_id=session_id, session_type=ct,
        ).update(owner_channel=channel, expires_at=expires, started_at=now):
            return Lease(channel, expires, acquired=True)
        row = LiveOwnership.objects.filter(session_id=session_id).first()
        if row is None:
            try:
                with transaction.atomic():
                    LiveOwnership.objects.create(session_type=ct, session_id=session_id,
                                                 owner_channel=channel, expires_at=expires,
                                                 started_at=now)
                return Lease(channel, expires, acquired=True)
            except IntegrityError:
                continue  # another process inserted first: read its row
        _check_type(row, ct)
        if _unexpired(row):
            return Lease(row.owner_channel, row.expires_at)
    raise OwnershipUnavailable("The ownership lease kept changing; try again.")


@_guard
def renew(session_id: Any, channel: str, seconds: float | None = None) -> datetime | None:
    """Extend ``channel``'s lease; ``None`` when it no longer holds it."""
    seconds = lease_seconds() if seconds is None else seconds
    expires = timezone.now() + timedelta(seconds=seconds)
    if LiveOwnership.objects.filter(session_id=session_id, owner_channel=channel).update(
            expires_at=expires):
        return expires
    return None


@_guard
def release(session_id: Any, channel: str) -> bool:
    """Give the lease up (only if ``channel`` holds it)."""
    deleted, _ = LiveOwnership.objects.filter(session_id=session_id,
                                              owner_channel=channel).delete()
    return bool(deleted)
