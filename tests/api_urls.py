"""REST routes of the test project: every session model, and the OpenAPI schema."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from django_agent_session.api import AgentSessionRouter

router = AgentSessionRouter()
router.register_all()

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("", include(router.urls)),
]
