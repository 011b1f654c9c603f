"""List filters of the admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from ..declaration.registry import session_models


class SessionModelFilter(admin.SimpleListFilter):
    """Filter runs, events and artifacts by the session model they belong to."""

    title = _("agent model")
    parameter_name = "session_type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[Any, str]]:
        types = ContentType.objects.get_for_models(*session_models())
        return sorted(((str(ct.pk), str(model._meta.verbose_name).capitalize())
                       for model, ct in types.items()), key=lambda item: item[1])

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        if self.value():
            return queryset.filter(session_type_id=self.value())
        return queryset
