"""System checks for cross-model and environment problems (ids ``django_agent_session.*``).

Problems inside one ``Agent`` declaration are raised when the class is prepared (they name the
model and option); what depends on settings or on other parts of the project is checked here.

=====================  ===================================================================
``E001``               ``Agent.client``'s provider is not in ``AGENT_SESSION["CLIENTS"]``.
``E002``               A client class in ``AGENT_SESSION["CLIENTS"]`` cannot be imported.
``E003``               The model's default manager lacks the session methods.
``E004``               ``AGENT_SESSION`` has unknown keys.
``W001``               ``ATOMIC_REQUESTS`` is on: a turn would hold a transaction over the
                       model call (REST views opt out, your own views may not).
``W002``               The Anthropic model id is deprecated or unknown to the installed SDK.
``W003``               ``CHANNEL_LAYERS`` is not configured; live sessions need a layer.
=====================  ===================================================================
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string


def session_models() -> list[type]:
    from .models import AgentSessionModel

    return [m for m in apps.get_models() if issubclass(m, AgentSessionModel)]


@register(Tags.models)
def check_session_models(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    from .conf import agent_settings

    errors: list[Any] = []
    try:
        clients = agent_settings.CLIENTS
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="django_agent_session.E004",
                      hint="See the configuration table in the README.")]
    for provider, path in clients.items():
        if isinstance(path, str):
            try:
                import_string(path)
            except ImportError as exc:
                errors.append(Error(
                    f"AGENT_SESSION['CLIENTS'][{provider!r}] = {path!r} cannot be imported: {exc}",
                    id="django_agent_session.E002"))
    models = session_models()
    if app_configs is not None:
        labels = {c.label for c in app_configs}
        models = [m for m in models if m._meta.app_label in labels]
    for model in models:
        options = model.agent_options
        if options.provider not in clients:
            errors.append(Error(
                f"{model.__name__}.Agent.client uses provider {options.provider!r}, which "
                f"AGENT_SESSION['CLIENTS'] does not define.",
                hint=f"Known providers: {', '.join(sorted(clients))}.",
                obj=model, id="django_agent_session.E001"))
        manager = model._default_manager
        if not hasattr(manager, "start_session"):
            errors.append(Error(
                f"{model.__name__}'s default manager {type(manager).__name__} has no "
                f"start_session/continue_session.",
                hint="Derive custom managers from django_agent_session.managers."
                     "AgentSessionManager (or AgentSessionQuerySet.as_manager()).",
                obj=model, id="django_agent_session.E003"))
        if options.provider == "anthropic":
            errors.extend(_check_model_id(model, options.model_name))
    return errors


def _check_model_id(model: type, model_id: str) -> list[Any]:
    try:
        from anthropic.resources.messages.messages import DEPRECATED_MODELS
        from anthropic.types.model_param import ModelParam
        from typing import get_args

        known = set(get_args(get_args(ModelParam)[0]))
    except Exception:  # the SDK moved things: nothing to say
        return []
    if model_id in DEPRECATED_MODELS:
        return [Warning(f"{model.__name__}.Agent.client uses {model_id!r}, which the anthropic "
                        f"SDK marks deprecated (end of life {DEPRECATED_MODELS[model_id]}).",
                        obj=model, id="django_agent_session.W002")]
    if known and model_id not in known:
        return [Warning(f"{model.__name__}.Agent.client uses {model_id!r}, which the installed "
                        f"anthropic SDK does not list.", hint="Check the model id.",
                        obj=model, id="django_agent_session.W002")]
    return []


@register(Tags.database)
def check_atomic_requests(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    aliases = [a for a, db in settings.DATABASES.items() if db.get("ATOMIC_REQUESTS")]
    if not aliases:
        return []
    return [Warning(
        f"ATOMIC_REQUESTS is on for {', '.join(aliases)}: a view that runs a turn would hold a "
        f"transaction open across the model call, and other callers could not see its lease.",
        hint="Decorate such views with django.db.transaction.non_atomic_requests "
             "(the generated REST views already are).",
        id="django_agent_session.W001")]


@register(Tags.compatibility)
def check_channel_layers(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    if "channels" in settings.INSTALLED_APPS or "daphne" in settings.INSTALLED_APPS:
        if not getattr(settings, "CHANNEL_LAYERS", None):
            return [Warning("CHANNEL_LAYERS is not configured; live sessions need a channel "
                            "layer to fan out to viewers.",
                            hint="Use channels.layers.InMemoryChannelLayer for one process, "
                                 "channels_redis.core.RedisChannelLayer for several.",
                            id="django_agent_session.W003")]
    return []
