"""System checks for cross-model and environment problems (ids ``django_agent_session.*``).

Problems inside one ``Agent`` declaration are raised when the class is prepared (they name the
model and option); what depends on settings or on other parts of the project is checked here,
one registered function per concern, as django-polymorphic does.

=====================  ===================================================================
``E001``               ``Agent.client``'s provider is not in ``AGENT_SESSION["CLIENTS"]``.
``E002``               A client class in ``AGENT_SESSION["CLIENTS"]`` cannot be imported.
``E003``               The model's default manager lacks the session methods.
``E004``               ``AGENT_SESSION`` has unknown keys (the checks that read it then stay
                       silent: one typo, one finding).
``W001``               ``ATOMIC_REQUESTS`` is on: a turn would hold a transaction over the
                       model call (REST views opt out, your own views may not).
``W002``               The Anthropic model id is deprecated or unknown to the installed SDK.
``W003``               ``CHANNEL_LAYERS`` is not configured; live sessions need a layer.
``E005``               ``Agent.cost_budget`` is set but the agent's model has no price
                       (``AGENT_SESSION["PRICES"]``): the budget could never be counted.
``E006``               ``AGENT_SESSION["PRICES"]`` has an entry that is not a valid price.
=====================  ===================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, get_args

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.module_loading import import_string

from .conf import agent_settings
from .declaration.options import AgentOptions
from .engine.pricing import Price, price_of
from .declaration.registry import session_models


def _settings_error() -> ImproperlyConfigured | None:
    """Why ``AGENT_SESSION`` cannot be read, or None.

    E004 reports it; the checks that read settings return nothing more while it stands.
    """
    try:
        agent_settings.user_settings  # noqa: B018 (reading validates)
    except ImproperlyConfigured as exc:
        return exc
    return None


def _declared(app_configs: Iterable[AppConfig] | None
              ) -> list[tuple[type[models.Model], AgentOptions]]:
    """Each session model of ``app_configs`` (all when None, as Django asks) with its options."""
    labels = None if app_configs is None else {config.label for config in app_configs}
    return [(model, model.agent_options)
            for model in session_models() if labels is None or model._meta.app_label in labels]


@register(Tags.models)
def check_settings(app_configs: Iterable[AppConfig] | None = None,
                   **kwargs: Any) -> list[CheckMessage]:
    error = _settings_error()
    if error is None:
        return []
    return [Error(str(error), hint="See the configuration table in the README.",
                  id="django_agent_session.E004")]


@register(Tags.models)
def check_client_classes(app_configs: Iterable[AppConfig] | None = None,
                         **kwargs: Any) -> list[CheckMessage]:
    if _settings_error():
        return []
    errors: list[CheckMessage] = []
    for provider, path in agent_settings.CLIENTS.items():
        if not isinstance(path, str):
            continue
        try:
            import_string(path)
        except ImportError as exc:
            errors.append(Error(
                f"AGENT_SESSION['CLIENTS'][{provider!r}] = {path!r} cannot be imported: {exc}",
                id="django_agent_session.E002"))
    return errors


@register(Tags.models)
def check_providers(app_configs: Iterable[AppConfig] | None = None,
                    **kwargs: Any) -> list[CheckMessage]:
    if _settings_error():
        return []
    clients = agent_settings.CLIENTS
    errors: list[CheckMessage] = []
    for model, options in _declared(app_configs):
        uses = {"client": options.client, "title_model": options.title_model,
                "compaction model": options.compaction.model if options.compaction else None}
        for option, client in uses.items():
            provider = (client or "").partition(":")[0]
            if client and provider not in clients:
                errors.append(Error(
                    f"{model.__name__}.Agent.{option} uses provider {provider!r}, which "
                    f"AGENT_SESSION['CLIENTS'] does not define.",
                    hint=f"Known providers: {', '.join(sorted(clients))}.",
                    obj=model, id="django_agent_session.E001"))
    return errors


@register(Tags.models)
def check_prices(app_configs: Iterable[AppConfig] | None = None,
                 **kwargs: Any) -> list[CheckMessage]:
    if _settings_error():
        return []
    errors: list[CheckMessage] = []
    for key, entry in (agent_settings.PRICES or {}).items():
        if entry is None:
            continue
        try:
            Price.of(entry)
        except (TypeError, ValueError, ArithmeticError) as exc:
            errors.append(Error(f"AGENT_SESSION['PRICES'][{key!r}] is not a price: {exc}",
                                hint='Give USD per million tokens: {"input": "3", "output": '
                                     '"15"} (cache prices default to 1.25x and 0.1x input).',
                                id="django_agent_session.E006"))
    if errors:
        return errors
    return [Error(
        f"{model.__name__}.Agent.cost_budget is set, but {options.model_name!r} has no price.",
        hint="Add it to AGENT_SESSION['PRICES'] (USD per million tokens).",
        obj=model, id="django_agent_session.E005")
        for model, options in _declared(app_configs)
        if options.cost_budget is not None and price_of(options.model_name) is None]


@register(Tags.models)
def check_managers(app_configs: Iterable[AppConfig] | None = None,
                   **kwargs: Any) -> list[CheckMessage]:
    return [Error(
        f"{model.__name__}'s default manager {type(model._default_manager).__name__} has no "
        f"start_session/continue_session.",
        hint="Derive custom managers from django_agent_session.models.AgentSessionManager "
             "(or AgentSessionQuerySet.as_manager()).",
        obj=model, id="django_agent_session.E003")
        for model, _ in _declared(app_configs)
        if not hasattr(model._default_manager, "start_session")]


@register(Tags.models)
def check_model_ids(app_configs: Iterable[AppConfig] | None = None,
                    **kwargs: Any) -> list[CheckMessage]:
    anthropic = [(model, options.model_name) for model, options in _declared(app_configs)
                 if options.provider == "anthropic"]
    sdk = _anthropic_model_ids() if anthropic else None
    if sdk is None:
        return []
    deprecated, known = sdk
    warnings: list[CheckMessage] = []
    for model, model_id in anthropic:
        if model_id in deprecated:
            warnings.append(Warning(
                f"{model.__name__}.Agent.client uses {model_id!r}, which the anthropic SDK marks "
                f"deprecated (end of life {deprecated[model_id]}).",
                obj=model, id="django_agent_session.W002"))
        elif known and model_id not in known:
            warnings.append(Warning(
                f"{model.__name__}.Agent.client uses {model_id!r}, which the installed anthropic "
                f"SDK does not list.", hint="Check the model id.",
                obj=model, id="django_agent_session.W002"))
    return warnings


def _anthropic_model_ids() -> tuple[Mapping[str, Any], frozenset[str]] | None:
    """The SDK's deprecated model ids (with end of life) and its known ids, or None.

    Both are SDK internals, not API: if the SDK is absent or moved them, W002 has nothing to say.
    """
    try:
        from anthropic.resources.messages.messages import DEPRECATED_MODELS
        from anthropic.types.model_param import ModelParam

        return DEPRECATED_MODELS, frozenset(get_args(get_args(ModelParam)[0]))
    except Exception:  # noqa: BLE001 (an optional probe must never break the checks)
        return None


@register(Tags.database)
def check_atomic_requests(app_configs: Iterable[AppConfig] | None = None,
                          **kwargs: Any) -> list[CheckMessage]:
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
def check_channel_layers(app_configs: Iterable[AppConfig] | None = None,
                         **kwargs: Any) -> list[CheckMessage]:
    uses_channels = "channels" in settings.INSTALLED_APPS or "daphne" in settings.INSTALLED_APPS
    if not uses_channels or getattr(settings, "CHANNEL_LAYERS", None):
        return []
    return [Warning("CHANNEL_LAYERS is not configured; live sessions need a channel "
                    "layer to fan out to viewers.",
                    hint="Use channels.layers.InMemoryChannelLayer for one process, "
                         "channels_redis.core.RedisChannelLayer for several.",
                    id="django_agent_session.W003")]
