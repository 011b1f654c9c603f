"""URLs of the isolation tests: the REST API and an admin site with every session admin."""

from django.contrib.admin import AdminSite
from django.urls import include, path

from django_agent_session import admin as session_admin
from django_agent_session.models import AgentEvent, AgentRun, Artifact

site = AdminSite(name="isolation_admin")
session_admin.register_session_admins(site)
for _model, _admin_class in ((AgentRun, session_admin.AgentRunAdmin),
                             (AgentEvent, session_admin.AgentEventAdmin),
                             (Artifact, session_admin.ArtifactAdmin)):
    site.register(_model, _admin_class)

urlpatterns = [
    path("admin/", site.urls),
    path("api/", include("tests.api_urls")),
]
