"""Tools and the turn engine's loop: schemas, validation, errors, halts, limits, timeouts."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Literal

import pytest
from rest_framework import serializers

from django_agent_session import exceptions as exc
from django_agent_session.context import Context
from django_agent_session.engine import TurnEngine
from django_agent_session.options import AgentOptions
from django_agent_session.testing import ScriptedClient, text_reply, tool_reply
from django_agent_session.tools import Halt, Tool, ToolContext, tool
from tests.testapp.models import ChatAgent

USER = [{"type": "text", "text": "go"}]


def engine_for(tools, **options) -> TurnEngine:
    """An engine for ChatAgent's declaration with other tools/options (no database)."""
    attrs = {k: getattr(ChatAgent.Agent, k) for k in ("client", "instruction",
                                                      "instruction_schema")}
    agent = type("Agent", (), {**attrs, "tools": tools, **options})
    opts = AgentOptions.__new__(AgentOptions)
    opts.__init__(agent, ChatAgent)
    return TurnEngine(opts)


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


class TestLoop:
    def run(self, engine, *script, **kwargs):
        client = ScriptedClient().enqueue(*script)
        result = engine.run(Context(system="s"), USER, client, **kwargs)
        return result, client

    def test_values_are_coerced_before_the_call(self):
        seen = []

        def add(a: int, b: int) -> int:
            seen.append((a, b))
            return a + b

        result, client = self.run(engine_for([add]), tool_reply("add", {"a": "2", "b": 3}),
                                  "five")
        assert seen == [(2, 3)]
        assert client.requests[1].messages[-1]["content"][0]["content"] == "5"
        assert result.output == {"content": "five"} and result.iterations == 2

    def test_tool_exception_continue_and_halt(self):
        def boom() -> None:
            raise RuntimeError("kaput")

        result, client = self.run(engine_for([boom]), tool_reply("boom", {}), "sorry")
        block = client.requests[1].messages[-1]["content"][0]
        assert block["is_error"] and "RuntimeError: kaput" in block["content"]
        with pytest.raises(exc.ToolFailed):
            self.run(engine_for([boom], tool_errors="halt"), tool_reply("boom", {}))

    def test_unknown_tool_is_an_error_result(self):
        result, client = self.run(engine_for([]), tool_reply("ghost", {}), "ok")
        assert "Unknown tool 'ghost'" in client.requests[1].messages[-1]["content"][0]["content"]

    def test_halt_ends_the_turn_with_a_value(self):
        def finish(answer: str) -> Halt:
            return Halt({"content": answer.upper()})

        result, client = self.run(engine_for([finish]), tool_reply("finish", {"answer": "x"}))
        assert result.halted and result.output == {"content": "X"}
        assert len(client.requests) == 1
        # the stored conversation stays valid: the tool_use is answered
        assert result.messages[-1]["content"][0]["type"] == "tool_result"

    def test_parallel_tool_uses_all_answered(self):
        def one() -> int:
            return 1

        reply = tool_reply("one", {})
        reply.response.content.append({"type": "tool_use", "id": "second", "name": "one",
                                       "input": {}})
        result, client = self.run(engine_for([one]), reply, "done")
        results = client.requests[1].messages[-1]["content"]
        assert [r["tool_use_id"] for r in results] == [
            reply.response.content[0]["id"], "second"]

    def test_max_iterations(self):
        def again() -> str:
            return "again"

        with pytest.raises(exc.MaxIterationsExceeded):
            self.run(engine_for([again], max_iterations=2), tool_reply("again", {}),
                     tool_reply("again", {}))

    def test_tool_timeout_sync(self):
        def slow() -> str:
            time.sleep(0.5)
            return "late"

        result, client = self.run(engine_for([slow], tool_timeout=0.05),
                                  tool_reply("slow", {}), "gave up")
        block = client.requests[1].messages[-1]["content"][0]
        assert block["is_error"] and "timed out" in block["content"]

    async def test_tool_timeout_and_async_tools(self):
        async def slow() -> str:
            await asyncio.sleep(1)
            return "late"

        async def fast(x: int) -> int:
            return x * 2

        engine = engine_for([slow, fast], tool_timeout=0.05)
        client = ScriptedClient().enqueue(tool_reply("slow", {}), tool_reply("fast", {"x": 4}),
                                          "ok")
        result = await engine.arun(Context(system="s"), USER, client)
        first = client.requests[1].messages[-1]["content"][0]
        second = client.requests[2].messages[-1]["content"][0]
        assert first["is_error"] and "timed out" in first["content"]
        assert second["content"] == "8" and result.output == {"content": "ok"}

    def test_progress_events(self):
        def echo(text: str) -> str:
            return text

        seen = []
        self.run(engine_for([echo]), tool_reply("echo", {"text": "hi"}), text_reply("a b"),
                 on_progress=lambda kind, data: seen.append((kind, data.get("kind"))))
        assert seen[:3] == [("delta", "tool_input"), ("tool.call", None), ("tool.result", None)]
        assert seen[3:] == [("delta", "text"), ("delta", "text")]
