"""The chat page: server-rendered shell, everything live comes over the WebSocket."""

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404
from django.urls import reverse
from django.views.generic import TemplateView

from .apps import AGENT_NAME
from .models import ChatAgent


class ChatView(LoginRequiredMixin, TemplateView):
    """One conversation: ``/c/<id>/``, or a fresh one at ``/`` (created by its first message)."""

    template_name = "chat/chat.html"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        conversation_id = kwargs.get("conversation_id")
        title = ""
        if conversation_id is not None:
            row = ChatAgent.objects.filter(pk=conversation_id).values("owner_id", "title").first()
            if row is not None and row["owner_id"] != self.request.user.pk:
                raise Http404  # another user's conversation looks like a missing one
            title = row["title"] if row else ""
        conversation_id = str(conversation_id or uuid.uuid4())
        context.update(title=title, offline_demo=settings.OFFLINE_DEMO, chat_config={
            "conversationId": conversation_id,
            "agent": AGENT_NAME,
            "userId": self.request.user.pk,
            "socketPath": f"/ws/agent-sessions/{AGENT_NAME}/{conversation_id}/",
            "pageUrl": reverse("chat:conversation", args=[conversation_id]),
            # the REST list endpoint the sidebar reads (the router's name for ChatAgent)
            "listUrl": reverse("chatagent-list"),
            # where an attached file is uploaded before the message names it
            "attachmentsUrl": reverse("chatagent-attachments", args=[conversation_id]),
            "conversationUrl": reverse("chat:conversation", args=[uuid.UUID(int=0)]),
        })
        return context
