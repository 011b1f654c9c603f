"""The turn engine's loop: tool calls, validation, errors, halts, limits, timeouts, progress."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import threading
import time

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from django_agent_session import exceptions as exc
from django_agent_session.engine.context import Context
from django_agent_session.models import AgentRun
from django_agent_session.testing import (
    ScriptedClient,
    json_reply,
    text_reply,
    tool_reply,
)
from django_agent_session.tools import Halt
from tests.helpers.engine import USER, engine_for
from tests.testapp.models import ChatAgent, SupportAgent, ToolAgent

ARGS = {"company_name": "Acme"}


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

    async def test_the_default_tool_timeout_bounds_a_sync_tool_of_an_async_turn(self):
        """``TOOL_TIMEOUT`` (300 s by default) applies where a sync tool runs in the pool."""
        def slow() -> str:
            time.sleep(0.5)
            return "late"

        client = ScriptedClient().enqueue(tool_reply("slow", {}), "gave up")
        with override_settings(AGENT_SESSION={"TOOL_TIMEOUT": 0.05}):
            await engine_for([slow]).arun(Context(system="s"), USER, client)
        block = client.requests[1].messages[-1]["content"][0]
        assert block["is_error"] and "timed out after 0.05s" in block["content"]

    def test_a_sync_tool_of_a_sync_turn_runs_in_the_callers_thread(self):
        """No declared timeout: the tool shares the caller's thread (and its transaction);
        the default ``TOOL_TIMEOUT`` cannot interrupt a thread, so it does not move it."""
        threads = []

        def where() -> str:
            threads.append(threading.current_thread())
            return "here"

        with override_settings(AGENT_SESSION={"TOOL_TIMEOUT": 0.05}):
            self.run(engine_for([where]), tool_reply("where", {}), "ok")
        assert threads == [threading.current_thread()]

    def test_progress_events(self):
        def echo(text: str) -> str:
            return text

        seen = []
        self.run(engine_for([echo]), tool_reply("echo", {"text": "hi"}), text_reply("a b"),
                 on_progress=lambda kind, data: seen.append((kind, data.get("kind"))))
        assert seen[:3] == [("delta", "tool_input"), ("tool.call", None), ("tool.result", None)]
        assert seen[3:] == [("delta", "text"), ("delta", "text")]


# -- turns of session models: what the engine hands to the store ----------------------------

@pytest.mark.django_db
class TestStructuredRetryThenTools:
    def test_retry_followed_by_tool_use_drops_the_invalid_attempt(self, scripted):
        """A corrective retry of structured output answered by a tool call: the invalid
        attempt and the retry prompt are not kept in the stored conversation."""
        scripted.enqueue(
            text_reply("not json"),
            tool_reply("lookup_order", {"number": 7}, id="toolu_1"),
            json_reply({"content": "done", "mood": "happy"}),
        )
        session = SupportAgent.objects.start_session("Where is 7?", instruction_args=ARGS)
        messages = session.get_context().messages
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[1]["content"][0]["type"] == "tool_use"
        assert messages[2]["content"][0]["type"] == "tool_result"
        texts = [b.get("text", "") for m in messages for b in m["content"]]
        assert "not json" not in texts
        assert not any("did not match" in t for t in texts)
        assert session.last_output == {"content": "done", "mood": "happy"}


@pytest.mark.django_db(transaction=True)
class TestAsyncToolTimeout:
    async def test_timed_out_sync_tool_does_not_hold_the_orm_thread(self):
        """On the async path, a sync tool that timed out keeps running in its thread; it must
        not be the thread every ``database_sync_to_async`` call (commit, fail) waits for."""
        release = threading.Event()

        def stuck() -> str:
            release.wait(10)
            return "late"

        engine = engine_for([stuck], tool_timeout=0.1)
        client = ScriptedClient().enqueue(tool_reply("stuck", {}), "gave up")
        try:
            result = await engine.arun(Context(system="s"), USER, client)
            assert result.output == {"content": "gave up"}
            started = time.monotonic()
            await asyncio.wait_for(database_sync_to_async(lambda: None)(), 3)
            assert time.monotonic() - started < 1
        finally:
            release.set()


@pytest.mark.django_db
class TestHaltOutputIsJSON:
    def test_halt_value_is_stored_as_returned(self, scripted, monkeypatch):
        """A ``Halt`` value becomes the output as the database stores it (no Decimal in
        memory and a string in the row, and no crash on a context field without encoder)."""
        tool = ToolAgent.agent_options.tools["lookup_order"]
        when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
        monkeypatch.setattr(tool, "fn", lambda ctx, number: Halt(
            {"total": decimal.Decimal("1.50"), "at": when}))
        scripted.enqueue(tool_reply("lookup_order", {"number": 1}))
        session = ToolAgent.objects.start_session("Total?", instruction_args=ARGS)
        stored = ToolAgent.objects.get(pk=session.pk)
        assert session.last_output == stored.last_output
        assert AgentRun.objects.get(session_id=session.pk).output == session.last_output


@pytest.mark.django_db(transaction=True)
class TestToolPoolConnections:
    def test_timed_sync_tool_does_not_leave_its_connection_open(self):
        """A sync tool with a timeout runs in a pool thread; the database connection it
        opened there is closed after the call (as Django does after a request), instead of
        staying open, and eventually stale, for the life of the process."""
        from django.db import connections

        opened = []

        def count() -> int:
            opened.append(connections["default"])
            return ChatAgent.objects.count()

        engine = engine_for([count], tool_timeout=5)
        client = ScriptedClient().enqueue(tool_reply("count", {}), "done")
        engine.run(Context(system="s"), USER, client)
        assert len(opened) == 1 and opened[0] is not connections["default"]
        assert opened[0].connection is None


@pytest.mark.django_db
class TestNulInToolResult:
    def test_tool_result_with_nul_character_is_storable(self, scripted, monkeypatch):
        """PostgreSQL's jsonb rejects ``\\u0000``: a tool returning it (file contents, say)
        failed every such turn at commit."""
        tool = ToolAgent.agent_options.tools["lookup_order"]
        monkeypatch.setattr(tool, "fn", lambda ctx, number: "a\x00b")
        scripted.enqueue(tool_reply("lookup_order", {"number": 1}), "done")
        session = ToolAgent.objects.start_session("Read it", instruction_args=ARGS)
        assert session.last_output == {"content": "done"}
        stored = ToolAgent.objects.get(pk=session.pk).get_context().messages
        assert stored[2]["content"][0]["content"] == "a\ufffdb"


@pytest.mark.django_db(transaction=True)
class TestSyncToolsOffTheSharedThread:
    async def test_a_slow_sync_tool_does_not_delay_another_sessions_turn(self, scripted,
                                                                         monkeypatch):
        """Regression: sync tools of async turns ran on Channels' one shared database thread,
        so a 3 s tool made an unrelated session's turn in the same process wait ~2.6 s. They
        now run in the tool pool, each with its own database connection."""
        started = threading.Event()

        def slow_lookup(ctx, number: int) -> dict:
            started.set()
            time.sleep(3.0)
            return {"number": number}
        monkeypatch.setattr(ToolAgent.agent_options.tools["lookup_order"], "fn", slow_lookup)
        def answer(request):
            last = request.messages[-1]["content"][-1]
            if last.get("type") == "tool_result":
                return text_reply("done")
            if last.get("text") == "Slow":
                return tool_reply("lookup_order", {"number": 1})
            return text_reply("ok")
        scripted.default = answer
        other = await ChatAgent.objects.acreate_session(instruction_args=ARGS)

        async def other_turn() -> float:
            begun = time.perf_counter()
            await ChatAgent.objects.acontinue_session(other.pk, "Hi")
            return time.perf_counter() - begun

        alone = min([await other_turn() for _ in range(3)])
        slow = asyncio.create_task(ToolAgent.objects.astart_session("Slow", instruction_args=ARGS))
        await asyncio.to_thread(started.wait, 5)
        beside = min([await other_turn() for _ in range(3)])  # all while the tool sleeps
        assert not slow.done()
        # blocked behind the tool it waited ~2.6 s; the margin is for a loaded runner's noise
        assert beside - alone < 1.0
        assert (await slow).last_output == {"content": "done"}
