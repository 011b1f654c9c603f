"""A DRF router for session models: one model, or every concrete one."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.urls import re_path
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

    After each session viewset's routes comes one more: any other path under its prefix
    (an id holding a ``/``, ``%2F`` included, an unknown sub-path) reaches the viewset and
    answers its JSON 404, never Django's HTML page. Routes of your own below a registered
    prefix must come before the router's URLs; ``json_404 = False`` leaves them out.
    """

    #: add the catch-all JSON 404 route after each session viewset's routes
    json_404 = True

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

    def get_urls(self) -> list[Any]:
        urls = list(super().get_urls())
        if not self.json_404:
            return urls
        for prefix, viewset, basename in self.registry:
            if not prefix or not issubclass(viewset, AgentSessionViewSet):
                continue  # an empty prefix would catch the project's other URLs too
            # after every real route: only what none of them matched gets here
            actions: dict[str, Any] = {m: "unmatched" for m in viewset.http_method_names}
            # schema=None: left out of the OpenAPI schema
            view = viewset.as_view(actions, basename=basename, detail=True, schema=None)
            urls.append(re_path(rf"^{prefix}/.*{self.trailing_slash}$", view,
                                name=f"{basename}-unmatched"))
        return urls

    def get_default_basename(self, viewset: Any) -> str:
        return viewset.model._meta.model_name
