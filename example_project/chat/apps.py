from django.apps import AppConfig

#: the name the chat page uses in its WebSocket URL (``/ws/agent-sessions/support/<id>/``)
AGENT_NAME = "support"
#: the instruction argument every new conversation of the example starts with
COMPANY_NAME = "Acme Teapots"


class ChatConfig(AppConfig):
    name = "example_project.chat"
    label = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_agent_session.live import register_agent

        from .models import ChatAgent

        # The server, not the browser, decides the instruction args of a new conversation.
        register_agent(AGENT_NAME, ChatAgent,
                       fresh_state={"instruction_args": {"company_name": COMPANY_NAME}})
