"""The example's URLs: the chat page, login, the REST API (with its schema) and the admin."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from django_agent_session.api import AgentSessionRouter

router = AgentSessionRouter()
router.register_all()  # ChatAgent -> /api/chat-agents/

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(
        template_name="chat/login.html",
        extra_context={"offline_demo": settings.OFFLINE_DEMO, "show_demo_user": settings.DEBUG},
    ), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/", include(router.urls)),
    path("", include("example_project.chat.urls")),
]
