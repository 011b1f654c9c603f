from django.apps import AppConfig


class AgentSessionConfig(AppConfig):
    name = "django_agent_session"
    label = "django_agent_session"
    verbose_name = "Agent sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .store import artifacts  # noqa: F401  (connects the artifact file cleanup receiver)
