"""Factory routing: which session model (and which session options) serves a conversation.

``AGENT_SESSION["FACTORY_ROUTER"]`` names a callable ``router(scope, conversation_id,
request_opts) -> (factory, config)``; the factory, ``factory(conversation_id, config)``, returns
``(model, session_options)``. Known session options are

``fresh_state``
    seeded into a *new* conversation only, never over stored state: a dict with any of
    ``instruction_args``, ``messages``, ``title``, ``metadata`` (the row's metadata field) and
    ``fields`` (other model field values);
``inactivity_timeout``
    seconds without activity before the live session stops (``None`` disables; missing means
    ``AGENT_SESSION["INACTIVITY_TIMEOUT"]``);
``config``
    the conversation's configuration: ``model``, ``instruction_args``, ``tools`` (a subset of
    the agent's, by name) and limits (``max_tokens``, ``max_iterations``...; see
    ``declaration.options.CONFIG_KEYS``). Checked at every connect (a bad one closes the
    socket with 4500 after an ``invalid_config`` error frame); stored with a *new*
    conversation and applied to each of its turns, wherever they run. An existing
    conversation keeps the configuration it was created with.

Anything else is kept, untouched, in :attr:`SessionSpec.options`.

The default router reads the ``agent`` URL kwarg: a name given to :func:`register_agent`, or a
model label (``"app_label.ModelName"``) of a concrete ``AgentSessionModel``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured

from ..conf import agent_settings
from ..models import AgentSessionModel

#: marks "use the setting" for ``inactivity_timeout``
DEFAULT = object()

Factory = Callable[[Any, dict[str, Any]], "tuple[type, dict[str, Any]]"]
Router = Callable[[dict[str, Any], Any, dict[str, Any]], "tuple[Factory, dict[str, Any]]"]

KNOWN_OPTIONS = ("fresh_state", "inactivity_timeout", "config")


class UnknownAgent(LookupError):
    """The router found no session model for the request (WebSocket close 4404)."""


@dataclass(frozen=True)
class SessionSpec:
    """What a factory decided: the model and the live session's options."""

    model: type[AgentSessionModel]
    fresh_state: dict[str, Any] = field(default_factory=dict)
    inactivity_timeout: Any = DEFAULT
    #: the conversation's configuration, checked (as it is stored: JSON)
    config: dict[str, Any] = field(default_factory=dict)
    #: options the library does not know, passed through untouched
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout(self) -> float | None:
        """The inactivity timeout in seconds, ``None`` when disabled."""
        value = self.inactivity_timeout
        if value is DEFAULT:
            value = agent_settings.INACTIVITY_TIMEOUT
        return None if value is None else float(value)


_registry: dict[str, tuple[Factory, dict[str, Any]]] = {}


def model_factory(conversation_id: Any, config: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """The default factory: ``config["model"]``, every other key as a session option."""
    options = dict(config)
    return options.pop("model"), options


def register_agent(name: str, model: type, *, factory: Factory | None = None,
                   **options: Any) -> None:
    """Serve ``model`` under the URL name ``name``, with these session options.

    With ``factory``, the default router calls ``factory(conversation_id, {"model": model,
    **options})`` instead of :func:`model_factory`.
    """
    _check_model(model)
    _registry[name] = (factory or model_factory, {"model": model, **options})


def unregister_agent(name: str) -> None:
    _registry.pop(name, None)


def _check_model(model: Any) -> None:
    if not (isinstance(model, type) and issubclass(model, AgentSessionModel)
            and not model._meta.abstract):
        raise ImproperlyConfigured(f"{model!r} is not a concrete AgentSessionModel.")


def default_router(scope: dict[str, Any], conversation_id: Any, request_opts: dict[str, Any]
                   ) -> tuple[Factory, dict[str, Any]]:
    """Route by the ``agent`` URL kwarg: a registered name, else a model label."""
    name = request_opts.get("agent")
    if not isinstance(name, str) or not name:
        raise UnknownAgent("No 'agent' in the URL.")
    if name in _registry:
        return _registry[name]
    try:
        model = apps.get_model(name)
    except (LookupError, ValueError):
        raise UnknownAgent(f"No agent named {name!r}.") from None
    try:
        _check_model(model)
    except ImproperlyConfigured:
        raise UnknownAgent(f"{name!r} is not an agent session model.") from None
    return model_factory, {"model": model}


def resolve(scope: dict[str, Any], conversation_id: Any, request_opts: dict[str, Any]
            ) -> SessionSpec:
    """Run the configured router and its factory; returns the :class:`SessionSpec`
    (``InvalidConfig`` when the factory's ``config`` does not fit the model's agent)."""
    router: Router = agent_settings.FACTORY_ROUTER
    factory, config = router(scope, conversation_id, request_opts)
    model, options = factory(conversation_id, dict(config))
    _check_model(model)
    options = dict(options or {})
    fresh_state = options.pop("fresh_state", None) or {}
    if not isinstance(fresh_state, dict):
        raise ImproperlyConfigured("The factory's fresh_state must be a dict.")
    timeout = options.pop("inactivity_timeout", DEFAULT)
    # InvalidConfig (an InvalidInput) names the model and each bad key
    manager: Any = model._default_manager  # type: ignore[attr-defined]  # checked above
    config = manager.validate_config(options.pop("config", None))
    return SessionSpec(model=model, fresh_state=fresh_state, inactivity_timeout=timeout,
                       config=config, options=options)
