"""Routes of the chat app (the chat page and the REST API are added by the example issue)."""

urlpatterns: list = []
