"""The REST surface: generated DRF viewsets and serializers per session model, and a router.

    from django_agent_session.api import AgentSessionRouter

    router = AgentSessionRouter()
    router.register_all()                      # or router.register_model(Chat, prefix="chats")
    urlpatterns = [path("api/", include(router.urls))]
"""

from .permissions import IsSessionOwner, IsStaffOrSessionOwner
from .routers import AgentSessionRouter
from .serializers import serializers_for
from .viewsets import AgentSessionViewSet, viewset_factory

__all__ = [
    "AgentSessionRouter",
    "AgentSessionViewSet",
    "IsSessionOwner",
    "IsStaffOrSessionOwner",
    "serializers_for",
    "viewset_factory",
]
