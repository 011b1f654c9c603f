"""Which admin serves which model: the app's log admins on the default site (at import, as
Django's autodiscovery expects) and :func:`register_session_admins` for the project's models."""

from __future__ import annotations

from django.contrib import admin
from django.db import models

from ..declaration.registry import session_models
from ..models import AgentEvent, AgentRun, Artifact
from .logs import AgentEventAdmin, AgentRunAdmin, ArtifactAdmin
from .sessions import AgentSessionAdmin

admin.site.register(AgentRun, AgentRunAdmin)
admin.site.register(AgentEvent, AgentEventAdmin)
admin.site.register(Artifact, ArtifactAdmin)


def register_session_admins(site: admin.AdminSite = admin.site,
                            admin_class: type[admin.ModelAdmin] = AgentSessionAdmin
                            ) -> list[type[models.Model]]:
    """Register ``admin_class`` for every concrete session model ``site`` does not have yet.

    Returns the models it registered. Call it from your project's ``admin.py``.
    """
    registered: list[type[models.Model]] = []
    for model in session_models():
        if not site.is_registered(model):
            site.register(model, admin_class)
            registered.append(model)
    return registered
