"""WebSocket URL patterns to compose in the project's ``asgi.py``.

``ws/agent-sessions/<agent>/<conversation_id>/``: ``agent`` is a name given to
``register_agent`` or a model label (``"chat.ChatSession"``), read by the default factory
router; ``conversation_id`` is the session's UUID. Optional query string: ``after_seq=<n>``
replays the stored events after ``n``.
"""

from django.urls import path

from .consumers import AgentSessionConsumer

websocket_urlpatterns = [
    path("ws/agent-sessions/<str:agent>/<uuid:conversation_id>/",
         AgentSessionConsumer.as_asgi(), name="agent-session-live"),
]
