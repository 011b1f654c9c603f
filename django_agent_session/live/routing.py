"""WebSocket URL patterns to compose in the project's ``asgi.py``.

``ws/agent-sessions/<agent>/<conversation_id>/``: ``agent`` is a name given to
``register_agent`` or a model label (``"chat.ChatSession"``), read by the default factory
router; ``conversation_id`` is the session's UUID. Optional query string: ``after_seq=<n>``
replays the stored events after ``n``.

The id is matched as any path segment and checked by the consumer, so an id that is not a UUID
is refused with close code 4400 instead of failing the route (an HTTP 500 at the handshake).
The consumer checks the ``Origin`` itself (``ALLOWED_HOSTS`` unless
``AGENT_SESSION["WEBSOCKET_ALLOWED_ORIGINS"]`` says otherwise), so these patterns are safe with
cookie authentication even without Channels' ``AllowedHostsOriginValidator`` around them.
"""

from django.urls import path

from .consumers import AgentSessionConsumer

websocket_urlpatterns = [
    path("ws/agent-sessions/<str:agent>/<str:conversation_id>/",
         AgentSessionConsumer.as_asgi(), name="agent-session-live"),
]
