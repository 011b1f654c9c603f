"""The abstract session model that users subclass, and the hook that parses its ``Agent``.

:class:`AgentSessionModel` is the session row (:class:`~django_agent_session.records.SessionRecord`)
plus the manager whose methods run turns through the store. Every concrete subclass gets its
``Agent`` declaration parsed into ``Model.agent_options`` when Django prepares the class.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.signals import class_prepared

from ..declaration.options import AgentOptions
from ..records import SessionRecord
from ..store.manager import AgentSessionManager


class AgentSessionModel(SessionRecord):
    """Abstract base of a persisted agent conversation. Subclass it and declare ``class Agent:``.

    The turn lease (``lease_token``, ``lease_expires_at``) serializes turns across threads and
    processes; ``version`` is bumped by every context commit (optimistic versioning), and
    ``event_seq`` is the per-session event counter.
    """

    objects = AgentSessionManager()

    class Meta(SessionRecord.Meta):
        abstract = True


def _install_agent(sender: type[models.Model], **kwargs: Any) -> None:
    """Parse the ``Agent`` declaration of every concrete session model once, at class time."""
    if not issubclass(sender, AgentSessionModel) or sender._meta.abstract:
        return
    if sender._meta.proxy or sender._meta.swapped:
        return
    sender.agent_options = AgentOptions(getattr(sender, "Agent", None), sender)


class_prepared.connect(_install_agent, dispatch_uid="django_agent_session.install_agent")
