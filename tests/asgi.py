"""The test suite's ASGI application, composed as the docs tell projects to do it."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_asgi_app = get_asgi_application()  # sets Django up before consumers import models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from django_agent_session.live.routing import websocket_urlpatterns  # noqa: E402
from django_agent_session.runs.shutdown import with_lifespan  # noqa: E402

# with_lifespan: a shutdown uvicorn starts itself (SIGINT, say) is graceful too; on SIGTERM the
# library's own handler acts, on daphne (which speaks no lifespan) and uvicorn alike
application = with_lifespan(ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
}))
