"""The ASGI application the live benchmarks serve with daphne or uvicorn (composed as the docs
say; ``with_lifespan`` makes a shutdown uvicorn starts itself, on SIGINT say, graceful too)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator

from django_agent_session.live.routing import websocket_urlpatterns
from django_agent_session.runs.shutdown import with_lifespan

application = with_lifespan(ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
}))

import anthropic  # noqa: F401  (imported now, not during the first turn)
