"""System checks for cross-model and environment problems (ids ``django_agent_session.*``).

Problems inside one ``Agent`` declaration are raised when the class is prepared (they name the
model and option); what depends on settings or on other parts of the project is checked here,
one registered function per concern, as django-polymorphic does.

=====================  ===================================================================
``E001``               ``Agent.client``'s provider is not in ``AGENT_SESSION["CLIENTS"]``.
``E002``               A client class in ``AGENT_SESSION["CLIENTS"]`` cannot be imported.
``E003``               The model's default manager lacks the session methods.
``E004``               A key of ``AGENT_SESSION`` (or of one of its fixed-key dicts, such as
                       ``RETENTION``) is not a setting; the message names the nearest one.
``W001``               ``ATOMIC_REQUESTS`` is on: a turn would hold a transaction over the
                       model call (REST views opt out, your own views may not).
``W002``               The Anthropic model id is deprecated or unknown to the installed SDK.
``W003``               ``CHANNEL_LAYERS`` is not configured; live sessions need a layer.
``E005``               ``Agent.cost_budget`` is set but the agent's model has no price
                       (``AGENT_SESSION["PRICES"]``): the budget could never be counted.
``E006``               ``AGENT_SESSION["PRICES"]`` has an entry that is not a valid price.
``E007``               A setting has a value of the wrong type (``AGENT_SESSION`` itself is
                       not a dict, a number is a string...) or ``ARTIFACT_STORAGE`` is not a
                       ``STORAGES`` alias.
``E008``               A dotted path the project set (``FACTORY_ROUTER``, ``APPROVERS``,
                       ``API_PERMISSION_CLASSES``, ``API_THROTTLE_CLASSES``, ``EXECUTOR``)
                       cannot be imported.
``E009``               The URLconf routes the REST API, DRF's browsable API renderer is on,
                       but ``rest_framework`` is not in ``INSTALLED_APPS``: a browser opening
                       an endpoint gets a 500 (``TemplateDoesNotExist``).
``I001``               ``ASGI_APPLICATION`` is set with ``DEBUG`` on, but ``daphne`` is not in
                       ``INSTALLED_APPS``: ``runserver`` serves no WebSockets (a hint).
=====================  ===================================================================

Settings are read while models are imported, so reading them never raises (see ``conf.py``);
E004 and E007 report what reading left out. While either stands, the checks that read the
settings stay silent: one mistake, one finding.

``channels`` in ``INSTALLED_APPS`` is not checked: its app config only adds ``runworker``, and
live sessions work without it. What they do need, a channel layer, is W003.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, get_args

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, Tags, Warning, register
from django.db import models
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils.module_loading import import_string

from .conf import (
    DEFAULTS,
    IMPORT_STRINGS,
    NULLABLE,
    SETTING_NAME,
    agent_settings,
    project_settings,
    unknown_settings,
)
from .declaration.options import AgentOptions
from .declaration.registry import session_models
from .engine.pricing import Price, price_of
from .store.dispatch import ALIASES as EXECUTOR_ALIASES


def _key(path: Iterable[Any]) -> str:
    """``AGENT_SESSION['RETENTION']['MAX_AGE']`` for the path ``("RETENTION", "MAX_AGE")``."""
    return SETTING_NAME + "".join(f"[{part!r}]" for part in path)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: what a setting must be, by the type of its default (bool before int: bool is an int)
_KINDS: list[tuple[type | tuple[type, ...], tuple[type, ...], str]] = [
    (bool, (bool,), "True or False"),
    (int, (int,), "an integer"),
    (float, (int, float), "a number"),
    (str, (str,), "a string"),
    (Mapping, (Mapping,), "a dict"),
    ((list, tuple), (list, tuple), "a list"),
]


def _value_errors() -> list[CheckMessage]:
    """E007: ``AGENT_SESSION`` is not a dict, or a known setting has a value of the wrong kind."""
    raw = getattr(settings, SETTING_NAME, None)
    if raw is not None and not isinstance(raw, Mapping):
        return [Error(f"{SETTING_NAME} must be a dict, not {type(raw).__name__}.",
                      id="django_agent_session.E007")]
    errors: list[CheckMessage] = []
    for name, value in project_settings().items():
        default = DEFAULTS.get(name)
        if name not in DEFAULTS or name in IMPORT_STRINGS or default is None:
            continue  # unknown (E004), a dotted path (E008), or any value goes
        if value is None and name in NULLABLE:
            continue
        for kind, allowed, label in _KINDS:
            if isinstance(default, kind):
                if not isinstance(value, allowed) or (
                        isinstance(value, bool) and kind is not bool):
                    errors.append(Error(
                        f"{_key([name])} must be {label}"
                        f"{' or None' if name in NULLABLE else ''}, not "
                        f"{type(value).__name__} {_short(value)}.",
                        id="django_agent_session.E007"))
                break
    alias = project_settings().get("ARTIFACT_STORAGE")
    if alias is not None and (not isinstance(alias, str) or alias not in settings.STORAGES):
        errors.append(Error(
            f"{_key(['ARTIFACT_STORAGE'])} = {_short(alias)} is not an alias of "
            f"settings.STORAGES.",
            hint=f"Aliases: {', '.join(settings.STORAGES)} (None: default_storage).",
            id="django_agent_session.E007"))
    return errors


def _settings_unreadable() -> bool:
    """Whether E004 or E007 has something to say (the checks reading settings then don't)."""
    return bool(unknown_settings() or _value_errors())


def _declared(app_configs: Iterable[AppConfig] | None
              ) -> list[tuple[type[models.Model], AgentOptions]]:
    """Each session model of ``app_configs`` (all when None, as Django asks) with its options."""
    labels = None if app_configs is None else {config.label for config in app_configs}
    return [(model, model.agent_options)
            for model in session_models() if labels is None or model._meta.app_label in labels]


@register(Tags.models)
def check_setting_names(app_configs: Iterable[AppConfig] | None = None,
                        **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for path, known in unknown_settings():
        close = difflib.get_close_matches(path[-1].upper(), known, n=1, cutoff=0.6)
        guess = f" Did you mean {close[0]!r}?" if close else ""
        errors.append(Error(
            f"{_key(path)} is not a setting.{guess}",
            hint=None if close else f"Known: {', '.join(sorted(known))}.",
            id="django_agent_session.E004"))
    return errors


@register(Tags.models)
def check_setting_values(app_configs: Iterable[AppConfig] | None = None,
                         **kwargs: Any) -> list[CheckMessage]:
    return _value_errors()


def _dotted_paths() -> Iterator[tuple[list[Any], str]]:
    """Each dotted path the project set for a pluggable setting: its key path and the path
    (defaults are the app's own and import; ``EXECUTOR``'s aliases are no paths)."""
    user = project_settings()
    for name in sorted((IMPORT_STRINGS | {"EXECUTOR"}) & set(user)):
        value = user[name]
        if name == "EXECUTOR" and value in EXECUTOR_ALIASES:
            continue
        if isinstance(value, str):
            yield [name], value
        elif isinstance(value, (list, tuple)):
            yield from (([name, i], item) for i, item in enumerate(value)
                        if isinstance(item, str))


@register(Tags.models)
def check_import_strings(app_configs: Iterable[AppConfig] | None = None,
                         **kwargs: Any) -> list[CheckMessage]:
    if _settings_unreadable():
        return []
    errors: list[CheckMessage] = []
    for path, dotted in _dotted_paths():
        try:
            import_string(dotted)
        except Exception as exc:  # noqa: BLE001 (any import failure is the finding)
            hint = None
            if path == ["EXECUTOR"]:
                hint = f"Use {' or '.join(map(repr, EXECUTOR_ALIASES))}, or a dotted path."
            errors.append(Error(f"{_key(path)} = {dotted!r} cannot be imported: {exc}",
                                hint=hint, id="django_agent_session.E008"))
    return errors


@register(Tags.models)
def check_client_classes(app_configs: Iterable[AppConfig] | None = None,
                         **kwargs: Any) -> list[CheckMessage]:
    if _settings_unreadable():
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
    if _settings_unreadable():
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
    if _settings_unreadable():
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


def _serves_live() -> bool:
    """Whether the project looks set up for live sessions (an ASGI app or Channels' apps)."""
    return bool(getattr(settings, "ASGI_APPLICATION", None)) or any(
        apps.is_installed(app) for app in ("channels", "daphne"))


@register(Tags.compatibility)
def check_channel_layers(app_configs: Iterable[AppConfig] | None = None,
                         **kwargs: Any) -> list[CheckMessage]:
    if not _serves_live() or getattr(settings, "CHANNEL_LAYERS", None):
        return []
    return [Warning("CHANNEL_LAYERS is not configured; live sessions need a channel "
                    "layer to fan out to viewers.",
                    hint="Use channels.layers.InMemoryChannelLayer for one process, "
                         "channels_redis.core.RedisChannelLayer for several.",
                    id="django_agent_session.W003")]


@register(Tags.compatibility)
def check_runserver_websockets(app_configs: Iterable[AppConfig] | None = None,
                               **kwargs: Any) -> list[CheckMessage]:
    if (not settings.DEBUG or not getattr(settings, "ASGI_APPLICATION", None)
            or apps.is_installed("daphne")):
        return []
    return [Info("'daphne' is not in INSTALLED_APPS: manage.py runserver serves HTTP only, so "
                 "live sessions (WebSockets) will not connect under it.",
                 hint="Add 'daphne' first in INSTALLED_APPS for development, or run an ASGI "
                      "server (daphne, uvicorn) on ASGI_APPLICATION.",
                 id="django_agent_session.I001")]


def _routed_views(patterns: Iterable[Any]) -> Iterator[type]:
    """The view classes (``as_view``'s ``cls``) of a URLconf, included ones too."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _routed_views(pattern.url_patterns)
        elif isinstance(pattern, URLPattern):
            view = getattr(pattern.callback, "cls", None)
            if isinstance(view, type):
                yield view


def _routed_api_views() -> list[type]:
    """The app's REST views the project's URLconf routes (none if it cannot be loaded:
    Django's own URL checks report that)."""
    try:
        views = list(_routed_views(get_resolver().url_patterns))
    except Exception:  # noqa: BLE001 (a broken URLconf is reported by Django's checks)
        return []
    return [view for view in views
            if any(base.__module__.startswith("django_agent_session.api")
                   for base in view.__mro__)]


@register(Tags.urls, Tags.compatibility)
def check_rest_framework_installed(app_configs: Iterable[AppConfig] | None = None,
                                   **kwargs: Any) -> list[CheckMessage]:
    if apps.is_installed("rest_framework"):
        return []
    from rest_framework.renderers import BrowsableAPIRenderer

    browsable = [view for view in _routed_api_views()
                 if any(isinstance(renderer, type) and issubclass(renderer, BrowsableAPIRenderer)
                        for renderer in getattr(view, "renderer_classes", ()))]
    if not browsable:
        return []
    return [Error("'rest_framework' is not in INSTALLED_APPS, but the URLconf routes the "
                  "agent session REST API with DRF's browsable API: a browser opening an "
                  "endpoint gets a server error (TemplateDoesNotExist: rest_framework/api.html).",
                  hint="Add 'rest_framework' to INSTALLED_APPS (or leave BrowsableAPIRenderer "
                       "out of REST_FRAMEWORK['DEFAULT_RENDERER_CLASSES']).",
                  id="django_agent_session.E009")]


@register(Tags.urls, Tags.compatibility)
def check_openapi_schema_class(app_configs: Iterable[AppConfig] | None = None,
                               **kwargs: Any) -> list[CheckMessage]:
    """drf-spectacular's schema view documents itself with ``DEFAULT_SCHEMA_CLASS``: DRF's
    default makes every request to it a server error."""
    try:
        from drf_spectacular.openapi import AutoSchema
        from drf_spectacular.views import SpectacularAPIView
    except ImportError:  # drf-spectacular is optional
        return []
    from rest_framework.settings import api_settings

    schema_class = api_settings.DEFAULT_SCHEMA_CLASS
    if isinstance(schema_class, type) and issubclass(schema_class, AutoSchema):
        return []
    try:
        views = list(_routed_views(get_resolver().url_patterns))
    except Exception:  # noqa: BLE001 (a broken URLconf is reported by Django's checks)
        return []
    if not _routed_api_views() or not any(issubclass(v, SpectacularAPIView) for v in views):
        return []
    return [Warning("The URLconf routes drf-spectacular's schema view, but "
                    "REST_FRAMEWORK['DEFAULT_SCHEMA_CLASS'] is not drf-spectacular's "
                    "AutoSchema: the schema endpoint answers every request with a server error.",
                    hint='Set REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": '
                         '"drf_spectacular.openapi.AutoSchema"}.',
                    id="django_agent_session.W004")]
