"""The input field that carries attachments: ids of files uploaded to the session.

Agents with the default ``input_schema`` take ``{"message": "...", "attachments": [id, ...]}``;
an agent with its own schema adds ``AttachmentsField()`` where it wants files. The field only
checks the shape (ids, how many); the store checks that each id names an attachment of the
session the turn runs on, and replaces it with the reference block the context stores.
"""

from __future__ import annotations

import uuid
from typing import Any

from rest_framework import serializers

from ..conf import agent_settings


class AttachmentsField(serializers.ListField):
    """A list of attachment ids (what ``POST …/{id}/attachments/`` or ``save_attachment``
    returned). From Python, the saved ``Artifact`` objects themselves are accepted too."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("child", serializers.UUIDField())
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "Ids of files uploaded to this session (images, PDFs).")
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[Any]:
        if isinstance(data, (list, tuple)):
            data = [item if isinstance(item, (str, uuid.UUID)) else getattr(item, "pk", item)
                    for item in data]
        value = super().to_internal_value(data)
        limit = agent_settings.ATTACHMENT_MAX_COUNT
        if len(value) > limit:
            raise serializers.ValidationError(
                f"At most {limit} attachments per message; got {len(value)}.")
        return list(dict.fromkeys(value))  # the same file twice is sent once


_fields_cache: dict[type[serializers.Serializer], tuple[str, ...]] = {}


def attachment_fields(serializer_class: type[serializers.Serializer]) -> tuple[str, ...]:
    """The names of a schema's top-level :class:`AttachmentsField` fields (cached per class)."""
    names = _fields_cache.get(serializer_class)
    if names is None:
        names = _fields_cache[serializer_class] = tuple(
            name for name, field in serializer_class().fields.items()
            if isinstance(field, AttachmentsField))
    return names


__all__ = ["AttachmentsField", "attachment_fields"]
