"""Query-string filters of the session list: status, creation range, title search."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend
from rest_framework.request import Request

from ..models import SessionStatus


class SessionQuery(serializers.Serializer):
    """The accepted query parameters; invalid values are a 400, never a 500."""

    status = serializers.ChoiceField(choices=SessionStatus.choices, required=False,
                                     help_text="Only sessions in this status.")
    created_after = serializers.DateTimeField(required=False,
                                              help_text="Created at or after (ISO 8601).")
    created_before = serializers.DateTimeField(required=False,
                                               help_text="Created before (ISO 8601).")
    search = serializers.CharField(required=False, max_length=200,
                                   help_text="Case-insensitive substring of the title.")


class SessionFilterBackend(BaseFilterBackend):
    """Filters the ``list`` action only (a filter must never turn a detail lookup into a 404)."""

    query_class = SessionQuery

    def filter_queryset(self, request: Request, queryset: QuerySet, view: Any) -> QuerySet:
        if getattr(view, "action", None) != "list":
            return queryset
        query = self.query_class(data=request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors)
        data = query.validated_data
        if "status" in data:
            queryset = queryset.filter(status=data["status"])
        if "created_after" in data:
            queryset = queryset.filter(created_at__gte=data["created_after"])
        if "created_before" in data:
            queryset = queryset.filter(created_at__lt=data["created_before"])
        if data.get("search"):
            queryset = queryset.filter(title__icontains=data["search"])
        return queryset

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        fields = self.query_class().fields
        schemas = {
            "status": {"type": "string", "enum": [value for value, _ in SessionStatus.choices]},
            "created_after": {"type": "string", "format": "date-time"},
            "created_before": {"type": "string", "format": "date-time"},
            "search": {"type": "string", "maxLength": 200},
        }
        return [{"name": name, "in": "query", "required": False,
                 "description": str(fields[name].help_text), "schema": schema}
                for name, schema in schemas.items()]
