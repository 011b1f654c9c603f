"""Routes of the chat app: the chat page, on a fresh or a stored conversation."""

from django.urls import path

from .views import ChatView

app_name = "chat"

urlpatterns = [
    path("", ChatView.as_view(), name="new"),
    path("c/<uuid:conversation_id>/", ChatView.as_view(), name="conversation"),
]
