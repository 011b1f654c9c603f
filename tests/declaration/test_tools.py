"""Tools: the input schema from type hints or a serializer, the ``@tool`` decorator."""

from __future__ import annotations

import datetime
from typing import Literal

import pytest
from rest_framework import serializers

from django_agent_session.tools import Tool, ToolContext, tool


class TestSchemas:
    def test_type_hints(self):
        def search(query: str, limit: int = 5, tags: list[str] | None = None,
                   mode: Literal["fast", "deep"] = "fast", since: datetime.date | None = None,
                   ) -> list:
            """Search things."""
            return []

        schema = Tool(search).input_schema
        assert schema["required"] == ["query"]
        assert schema["properties"] == {
            "query": {"type": "string"},
            "limit": {"type": "integer"},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}},
                               {"type": "null"}]},
            "mode": {"enum": ["fast", "deep"]},
            "since": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
        }

    def test_serializer_schema_and_decorator(self):
        class Args(serializers.Serializer):
            amount = serializers.DecimalField(max_digits=6, decimal_places=2,
                                              help_text="in euros")

        @tool(schema=Args, name="pay", timeout=2)
        def anything(ctx: ToolContext, **data):
            """Pay."""
            return data

        assert isinstance(anything, Tool) and anything.name == "pay" and anything.timeout == 2
        assert anything.takes_context
        assert anything.to_param()["input_schema"]["properties"]["amount"] == {
            "type": "number", "description": "in euros"}

    def test_not_callable(self):
        with pytest.raises(TypeError):
            Tool("nope")  # type: ignore[arg-type]
