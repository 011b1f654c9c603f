"""The context value object: versions, migration, repair."""

from __future__ import annotations

import pytest

from django_agent_session.engine.context import (
    CONTEXT_VERSION,
    INTERRUPTED_TOOL_RESULT,
    Context,
    migrate,
    repair_dangling_tool_use,
)


def tool_use(id_: str) -> dict:
    return {"type": "tool_use", "id": id_, "name": "t", "input": {}}


class TestContext:
    def test_round_trip(self):
        ctx = Context(system="s", instruction_args={"a": 1},
                      messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                      turns=1, last_output={"content": "y"})
        again = Context.from_dict(ctx.to_dict())
        assert again == ctx and again.to_dict() == ctx.to_dict()
        assert ctx.to_dict()["version"] == CONTEXT_VERSION

    def test_empty(self):
        assert Context.from_dict({}) == Context()
        assert Context.from_dict(None).messages == []

    def test_unversioned_rows_migrate(self):
        legacy = [{"role": "user", "content": "hello"}]
        ctx = Context.from_dict(legacy)  # type: ignore[arg-type]
        assert ctx.messages == legacy and ctx.version == CONTEXT_VERSION
        assert migrate({"messages": legacy})["version"] == CONTEXT_VERSION

    def test_newer_version_is_refused(self):
        with pytest.raises(ValueError, match="newer than this library"):
            Context.from_dict({"version": CONTEXT_VERSION + 1})

    def test_usage_keys_are_completed(self):
        ctx = Context.from_dict({"version": 1, "usage": {"input_tokens": 3}})
        assert ctx.usage == {"input_tokens": 3, "output_tokens": 0,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


class TestRepair:
    def test_trailing_tool_use_gets_an_error_result(self):
        messages = [{"role": "user", "content": "go"},
                    {"role": "assistant", "content": [tool_use("a"), tool_use("b")]}]
        assert repair_dangling_tool_use(messages) is True
        assert messages[2] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "a", "is_error": True,
             "content": INTERRUPTED_TOOL_RESULT},
            {"type": "tool_result", "tool_use_id": "b", "is_error": True,
             "content": INTERRUPTED_TOOL_RESULT}]}

    def test_partially_answered_in_the_middle(self):
        messages = [
            {"role": "assistant", "content": [tool_use("a"), tool_use("b")]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "b",
                                          "content": "ok"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
        ]
        assert repair_dangling_tool_use(messages) is True
        assert [b["tool_use_id"] for b in messages[1]["content"]] == ["a", "b"]
        assert len(messages) == 3

    def test_assistant_followed_by_assistant(self):
        messages = [{"role": "assistant", "content": [tool_use("a")]},
                    {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]
        repair_dangling_tool_use(messages)
        assert [m["role"] for m in messages] == ["assistant", "user", "assistant"]

    def test_healthy_history_is_untouched(self):
        messages = [{"role": "assistant", "content": [tool_use("a")]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a",
                                                  "content": "ok"}]}]
        snapshot = [dict(m) for m in messages]
        assert repair_dangling_tool_use(messages) is False
        assert messages == snapshot

    def test_repair_flag_on_load(self):
        ctx = Context.from_dict({"version": 1, "messages": [
            {"role": "assistant", "content": [tool_use("a")]}]})
        assert ctx.repaired and len(ctx.messages) == 2

    def test_repair_does_not_mutate_the_stored_data(self):
        """Repairing a loaded context works on a copy: the dict it was loaded from (the row's
        value) is left as it was."""
        data = {"version": 1, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x",
                                               "input": {}}]},
            {"role": "user", "content": "next"},
        ]}
        ctx = Context.from_dict(data)
        assert ctx.repaired
        assert data["messages"][2] == {"role": "user", "content": "next"}
        assert ctx.messages[2]["content"][0]["type"] == "tool_result"


class TestTailRepairOnLoad:
    def test_load_repairs_only_the_tail(self):
        """A commit stores whole turns, so a dangling call can only be the last thing
        written: loading looks at the last two messages, not at the whole history."""
        middle = {"role": "assistant", "content": [tool_use("old")]}
        data = {"version": 1, "messages": [
            {"role": "user", "content": "a"}, middle,
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": [tool_use("new")]}]}
        ctx = Context.from_dict(data)
        assert ctx.repaired
        assert ctx.messages[4]["content"][0]["tool_use_id"] == "new"
        assert ctx.messages[2] == {"role": "user", "content": "b"}  # left for an import

    def test_start_skips_earlier_messages(self):
        messages = [{"role": "assistant", "content": [tool_use("a")]},
                    {"role": "user", "content": "x"}]
        assert repair_dangling_tool_use(messages, start=1) is False
        assert repair_dangling_tool_use(messages) is True
