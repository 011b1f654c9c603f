"""A DRF router for session models: one model, or every concrete one."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.text import slugify
from rest_framework.routers import SimpleRouter

from ..declaration.registry import session_models
from ..records import SessionRecord
from .viewsets import AgentSessionViewSet, viewset_factory


def default_prefix(model: type[models.Model]) -> str:
    """``ChatAgent`` -> ``chat-agents`` (its plural verbose name, slugified)."""
    return slugify(str(model._meta.verbose_name_plural))


class AgentSessionRouter(SimpleRouter):
    """``SimpleRouter`` plus ``register_model`` / ``register_all`` for session models.

    A duplicate basename or prefix raises ``ImproperlyConfigured``; pass ``prefix=`` and
    ``basename=`` to ``register_model`` to resolve it.
    """

    def register_model(self, model: type[SessionRecord], prefix: str | None = None,
                       basename: str | None = None) -> type[AgentSessionViewSet]:
        """Register the generated viewset of ``model``; returns it."""
        viewset = viewset_factory(model)
        prefix = default_prefix(model) if prefix is None else prefix
        if any(registered == prefix for registered, _, _ in self.registry):
            raise ImproperlyConfigured(
                f'Router prefix "{prefix}" is already registered; pass prefix= to '
                f"register_model({model.__name__}, ...).")
        self.register(prefix, viewset, basename or model._meta.model_name)
        return viewset

    def register_all(self) -> list[type[AgentSessionViewSet]]:
        """Register every concrete session model not registered yet (proxies only when
        registered explicitly: they share their parent's table)."""
        done = {getattr(viewset, "model", None) for _, viewset, _ in self.registry}
        return [self.register_model(model) for model in session_models()
                if model not in done and not model._meta.proxy]

    def get_default_basename(self, viewset: Any) -> str:
        return viewset.model._meta.model_name
