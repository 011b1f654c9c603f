"""Pagination of session lists, run lists and event logs."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination, PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from ..conf import agent_settings


class SessionPagination(PageNumberPagination):
    """Page numbers; the page size is ``AGENT_SESSION["API_PAGE_SIZE"]`` (``?page_size=``
    up to ``max_page_size``)."""

    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request: Request) -> int | None:
        self.page_size = agent_settings.API_PAGE_SIZE
        return super().get_page_size(request)


class EventQuery(serializers.Serializer):
    after_seq = serializers.IntegerField(min_value=0, required=False, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=1000, required=False)


class SeqCursorPagination(BasePagination):
    """A cursor over the per-session ``seq``: ``?after_seq=N&limit=M``.

    Sequence numbers never change and are gap-free, so a client that stores the last ``seq``
    it saw resumes exactly there, whatever was appended meanwhile.
    """

    max_limit = 1000

    # narrower than DRF's stub (querysets or sequences): it pages event querysets by seq
    def paginate_queryset(self, queryset: QuerySet, request: Request,  # type: ignore[override]
                          view: Any = None) -> list[Any]:
        query = EventQuery(data=request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors)
        self.request = request
        self.limit = query.validated_data.get("limit") or agent_settings.API_PAGE_SIZE * 5
        after = query.validated_data["after_seq"]
        rows = list(queryset.filter(seq__gt=after).order_by("seq")[: self.limit + 1])
        self.has_more = len(rows) > self.limit
        self.page = rows[: self.limit]
        self.last_seq = self.page[-1].seq if self.page else after
        return self.page

    def get_next_link(self) -> str | None:
        if not self.has_more:
            return None
        url = self.request.build_absolute_uri()
        url = replace_query_param(url, "after_seq", self.last_seq)
        return replace_query_param(url, "limit", self.limit) if self.limit else url

    def get_paginated_response(self, data: list[Any]) -> Response:
        return Response({"next": self.get_next_link(), "last_seq": self.last_seq,
                         "results": data})

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {"name": "after_seq", "in": "query", "required": False,
             "description": "Return events with a larger seq (default 0: from the start).",
             "schema": {"type": "integer", "minimum": 0}},
            {"name": "limit", "in": "query", "required": False,
             "description": "Events per page (default 5 x API_PAGE_SIZE).",
             "schema": {"type": "integer", "minimum": 1, "maximum": self.max_limit}},
        ]


__all__ = ["SeqCursorPagination", "SessionPagination"]
