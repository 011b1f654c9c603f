"""An ASGI application that composes the bare ``websocket_urlpatterns`` (no origin validator of
its own: the library's is what is tested), plus a consumer whose database fails."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.live.daphne_settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.db import DatabaseError  # noqa: E402
from django.urls import path  # noqa: E402

from django_agent_session.live.consumers import AgentSessionConsumer  # noqa: E402
from django_agent_session.live.routers import default_router  # noqa: E402
from django_agent_session.live.routing import websocket_urlpatterns  # noqa: E402


def buggy_router(scope, conversation_id, request_opts):
    """The default router, except for the agent ``buggy``: a project's router with a bug."""
    if request_opts.get("agent") == "buggy":
        raise RuntimeError("a bug in the project's factory router")
    return default_router(scope, conversation_id, request_opts)


class DatabaseDownConsumer(AgentSessionConsumer):
    """The access check meets a database that went away."""

    def can_view(self, owner_id):
        raise DatabaseError("server closed the connection unexpectedly")


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AuthMiddlewareStack(URLRouter([
        path("ws/db-down/<str:agent>/<str:conversation_id>/", DatabaseDownConsumer.as_asgi()),
        *websocket_urlpatterns,
    ])),
})
