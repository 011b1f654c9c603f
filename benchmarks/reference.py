"""The reference row: a bare Django ``JSONField`` read-modify-write.

What an application without this library would do for one turn of a chat stored in one JSON
column: read the row, append the user's and the assistant's messages, save that column (two
statements, autocommit). Every overhead figure is reported as a ratio against it, measured in
the same process, interleaved turn by turn with the library's, so a noisy machine moves both.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, models


class BareConversation(models.Model):
    """A conversation as one JSON list of messages, nothing else."""

    messages = models.JSONField(default=list)

    class Meta:
        app_label = "testapp"  # a registered app; the table is created by ``create_table``
        db_table = "bench_bare_conversation"


def create_table() -> None:
    with connection.schema_editor() as editor:
        editor.create_model(BareConversation)


def prepare(messages: list[dict[str, Any]]) -> Any:
    return BareConversation.objects.create(messages=messages).pk


def reset(pk: Any, messages: list[dict[str, Any]]) -> None:
    BareConversation.objects.filter(pk=pk).update(messages=messages)


def turn(pk: Any, user: str, reply: str) -> None:
    """Load the history, append a user and an assistant message, persist."""
    row = BareConversation.objects.get(pk=pk)
    row.messages.append({"role": "user", "content": [{"type": "text", "text": user}]})
    row.messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
    row.save(update_fields=["messages"])
