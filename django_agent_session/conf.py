"""The ``AGENT_SESSION`` settings dict, read through one lazily-built settings object.

Shaped after DRF's ``APISettings``: every module reads ``agent_settings.NAME``; a name not in
``DEFAULTS`` raises ``AttributeError`` (a bug in the reader); dotted paths listed in
``IMPORT_STRINGS`` are imported on first access; the cache is dropped on ``setting_changed`` so
``override_settings`` works in tests.

Reading never fails on the project's dict itself: settings are read while models are imported,
before any system check can run, so an unknown key (a typo) is left out here and a dict that is
not a dict reads as empty; the system checks report both (``checks.py``: E004, E007).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

SETTING_NAME = "AGENT_SESSION"

DEFAULTS: dict[str, Any] = {
    # provider prefix of ``Agent.client`` -> dotted path of a client class
    "CLIENTS": {
        "anthropic": "django_agent_session.clients.anthropic.AnthropicClient",
        "demo": "django_agent_session.clients.demo.DemoClient",
        "scripted": "django_agent_session.testing.scripted.ScriptedClient",
    },
    # Anthropic SDK options; ``None`` falls back to the SDK's environment variables
    # (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL) and its own defaults.
    "ANTHROPIC": {
        "API_KEY": None,
        "BASE_URL": None,
        "TIMEOUT": 120.0,
        "MAX_RETRIES": 2,
    },
    # Turn lease: how long one turn may hold a session before another caller may take it
    # over (a crashed process never blocks a session for longer than this).
    "TURN_LEASE_SECONDS": 120.0,
    # How long a second caller waits for a busy session before ``SessionBusy``.
    "TURN_WAIT_SECONDS": 10.0,
    # Polling interval while waiting for the lease.
    "TURN_POLL_SECONDS": 0.02,
    # Largest accepted user input, in characters of text (oversized input is ``InvalidInput``).
    "MAX_INPUT_CHARS": 100_000,
    # who runs queued runs: "inline" (this process), "tasks" (Django's Tasks framework), or a
    # dotted path to an executor class (see django_agent_session.executors)
    "EXECUTOR": "inline",
    # the Tasks backend alias and queue the "tasks" executor enqueues on
    "TASK_BACKEND": "default",
    "TASK_QUEUE_NAME": "default",
    # how often a running turn looks for a cancel requested from another process
    "CANCEL_CHECK_SECONDS": 1.0,
    # who besides a session's owner may approve or reject its tool calls: a callable (or its
    # dotted path) ``(session, user) -> bool``; ``None``: only the owner
    "APPROVERS": None,
    # on SIGTERM / lifespan shutdown: how long running turns may take to finish before they
    # are recorded interrupted (see django_agent_session.live.shutdown)
    "SHUTDOWN_GRACE_SECONDS": 10.0,
    # Default per-tool timeout in seconds (``None``: none) for async tools and for every tool
    # of an async turn; ``Agent.tool_timeout`` and ``@tool(timeout=)`` override it. A sync
    # tool of a sync turn runs in the caller's thread (and transaction) unless one of those
    # two is declared.
    "TOOL_TIMEOUT": 300.0,
    # OpenTelemetry (docs/telemetry.md): whether spans carry message content (the system
    # prompt, messages, replies, tool arguments and results); off, as it is the users' data
    "TELEMETRY_CAPTURE_CONTENT": False,
    # Money and size (engine/pricing.py, engine/limits.py). PRICES: model id prefix ->
    # {"input", "output", "cache_write", "cache_read"} USD per million tokens, merged over the
    # library's dated table (``None`` removes an entry). CONTEXT_WINDOWS: model id prefix ->
    # input tokens, merged over the library's table ("default" for any other model).
    "PRICES": {},
    "CONTEXT_WINDOWS": {},
    # how each kind of token counts against Agent.token_budget (as billed, relative to input)
    "TOKEN_BUDGET_WEIGHTS": {
        "input_tokens": 1,
        "output_tokens": 1,
        "cache_creation_input_tokens": 1.25,
        "cache_read_input_tokens": 0.1,
    },
    # Live sessions (Channels)
    "FACTORY_ROUTER": "django_agent_session.live.routers.default_router",
    "INACTIVITY_TIMEOUT": 300.0,
    "NO_VIEWER_GRACE_SECONDS": 15.0,
    "OWNER_LEASE_SECONDS": 30.0,
    "QUEUE_MAX": 10,
    # largest accepted client frame (UTF-8 bytes); a bigger one gets an ``error`` frame
    # ``frame_too_large`` and the socket stays open. Keep it below the ASGI server's own limit
    # (daphne: --websocket-max-message-size, default 1 MiB), which drops the socket instead.
    "MAX_FRAME_BYTES": 256 * 1024,
    # ``Origin`` patterns a WebSocket handshake may come from (Channels' ``OriginValidator``
    # syntax; ``["*"]`` allows any, a missing one too); ``None``: the hosts in ALLOWED_HOSTS
    "WEBSOCKET_ALLOWED_ORIGINS": None,
    # Artifacts: a STORAGES alias, or None for default_storage
    "ARTIFACT_STORAGE": None,
    # Files as turn input (docs/files.md): the media types a file may be, as sniffed from its
    # bytes (the client's Content-Type and filename are never trusted); the largest file in
    # bytes; the most files one message may attach
    "ATTACHMENT_TYPES": ["image/png", "image/jpeg", "image/gif", "image/webp",
                         "application/pdf"],
    "ATTACHMENT_MAX_BYTES": 5 * 1024 * 1024,
    "ATTACHMENT_MAX_COUNT": 10,
    # Retention (``prune_agent_sessions``): nothing is pruned until a limit is set.
    "RETENTION": {
        # delete sessions whose last activity is older than this many days (None: never)
        "MAX_AGE_DAYS": None,
        # keep at most this many (unprotected) sessions per owner, newest activity first
        "MAX_SESSIONS_PER_OWNER": None,
        # sessions in these statuses are never pruned (nor their events)
        "EXEMPT_STATUSES": ["running"],
        # pinned sessions are never pruned (nor their events)
        "KEEP_PINNED": True,
        # event types deleted on their own once older than CHATTY_EVENT_MAX_AGE_DAYS
        "CHATTY_EVENT_TYPES": ["usage", "message.queued"],
        "CHATTY_EVENT_MAX_AGE_DAYS": None,
        # rows per delete; each batch is its own short transaction
        "BATCH_SIZE": 500,
    },
    # REST
    "API_PERMISSION_CLASSES": ["django_agent_session.api.permissions.IsSessionOwner"],
    "API_THROTTLE_CLASSES": None,  # None: DRF's DEFAULT_THROTTLE_CLASSES
    "API_PAGE_SIZE": 20,
    # Events from outside a turn (docs/events.md): the largest ``data`` of an appended event
    # (bytes of its JSON), and the longest a long-poll of the event log
    # (``GET .../events/?wait=``) waits; a larger ``wait`` waits this long
    "EVENT_MAX_BYTES": 64 * 1024,
    "EVENTS_MAX_WAIT_SECONDS": 30.0,
}

IMPORT_STRINGS = {"FACTORY_ROUTER", "API_PERMISSION_CLASSES", "API_THROTTLE_CLASSES",
                  "APPROVERS"}

#: settings whose default is not None but that accept None (see the comments above)
NULLABLE = {"TOOL_TIMEOUT", "INACTIVITY_TIMEOUT", "PRICES", "CONTEXT_WINDOWS"}

#: dict settings with a fixed set of keys (the others map names of the project's own: providers,
#: model ids); a key these do not have is reported like an unknown setting
NESTED_SETTINGS = {"ANTHROPIC", "RETENTION", "TOKEN_BUDGET_WEIGHTS"}


def perform_import(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return import_string(value)
        except ImportError as exc:
            raise ImportError(
                f"Could not import {value!r} for AGENT_SESSION[{name!r}]: {exc}"
            ) from exc
    if isinstance(value, (list, tuple)):
        return [perform_import(item, name) for item in value]
    return value


class AgentSessionSettings:
    """Attribute access to ``settings.AGENT_SESSION`` merged over ``DEFAULTS``."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()
        self._user: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        """The known keys of ``settings.AGENT_SESSION`` (see :func:`unknown_settings`)."""
        if self._user is None:
            user = project_settings()
            self._user = {name: value for name, value in user.items() if name in self.defaults}
        return self._user

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self.defaults:
            raise AttributeError(f"Invalid {SETTING_NAME} setting: {name!r}")
        default = self.defaults[name]
        value = self.user_settings.get(name, default)
        if isinstance(default, dict) and isinstance(value, dict) and value is not default:
            # dict settings merge key by key, so overriding one client keeps the others
            value = {**default, **value}
        if name in IMPORT_STRINGS:
            value = perform_import(value, name)
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        for name in self._cached:
            delattr(self, name)
        self._cached.clear()
        self._user = None


agent_settings = AgentSessionSettings(DEFAULTS)


def project_settings() -> Mapping[str, Any]:
    """``settings.AGENT_SESSION`` as the project wrote it (empty if unset or not a dict)."""
    user = getattr(settings, SETTING_NAME, None) or {}
    return user if isinstance(user, Mapping) else {}


def unknown_settings() -> list[tuple[tuple[str, ...], list[str]]]:
    """Each key of ``settings.AGENT_SESSION`` that is not a setting: its path (``("EXECUTR",)``,
    ``("RETENTION", "MAX_AGE")``) and the names it could have meant, in order."""
    user = project_settings()
    found: list[tuple[tuple[str, ...], list[str]]] = [
        ((str(name),), list(DEFAULTS)) for name in user if name not in DEFAULTS]
    for name in sorted(NESTED_SETTINGS & set(user)):
        value, known = user[name], DEFAULTS[name]
        if isinstance(value, Mapping) and isinstance(known, Mapping):
            found += [((name, str(key)), list(known)) for key in value if key not in known]
    return found


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        agent_settings.reload()


setting_changed.connect(_reload)
