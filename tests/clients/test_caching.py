"""Prompt caching: where the breakpoints go, and turn 2..N reading the prefix from the cache
(the loopback server simulates the API's prompt cache)."""

from __future__ import annotations

import pytest

from django_agent_session.clients.anthropic import cache_breakpoints
from django_agent_session.clients.base import ModelRequest
from django_agent_session.testing.loopback import Reply
from tests.helpers.loopback import uncached
from tests.testapp.models import ToolAgent

EPHEMERAL = {"type": "ephemeral"}
ARGS = {"company_name": "Acme"}


def marked(blocks):
    return [b for b in blocks if "cache_control" in b]


def user(*blocks):
    return {"role": "user", "content": list(blocks)}


def text(value):
    return {"type": "text", "text": value}


class TestBreakpoints:
    def request(self, messages, **kwargs):
        return ModelRequest(model="m", system="Be nice.", messages=messages, max_tokens=10,
                            tools=[{"name": "a", "input_schema": {}},
                                   {"name": "b", "input_schema": {}}], **kwargs)

    def test_system_last_tool_and_the_last_two_user_messages(self):
        messages = [user(text("one")), {"role": "assistant", "content": [text("1")]},
                    user(text("two")), {"role": "assistant", "content": [text("2")]},
                    user(text("three"), text("and more"))]
        params = cache_breakpoints(self.request(messages))
        assert params["system"] == [{"type": "text", "text": "Be nice.",
                                     "cache_control": EPHEMERAL}]
        assert [t.get("cache_control") for t in params["tools"]] == [None, EPHEMERAL]
        sent = params["messages"]
        assert marked(sent[4]["content"]) == [{**text("and more"), "cache_control": EPHEMERAL}]
        assert marked(sent[2]["content"]) == [{**text("two"), "cache_control": EPHEMERAL}]
        assert not marked(sent[0]["content"])
        assert sum(len(marked(m["content"])) for m in sent) + 2 == 4  # the API's maximum
        # the stored messages are never changed: the marked ones are copies
        assert uncached(sent) == messages and not marked(messages[4]["content"])

    def test_tool_results_and_string_contents_can_be_marked_but_empty_text_cannot(self):
        result = {"type": "tool_result", "tool_use_id": "t", "content": "ok"}
        params = cache_breakpoints(self.request([
            {"role": "user", "content": "plain"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "a",
                                               "input": {}}]},
            user(result, text(""))]))
        sent = params["messages"]
        assert sent[0]["content"] == [{**text("plain"), "cache_control": EPHEMERAL}]
        assert not marked(sent[2]["content"])  # the last block is empty text: skipped


@pytest.mark.django_db
def test_turn_two_onwards_reads_the_conversation_from_the_cache(loopback):
    from django_agent_session.models import AgentRun

    loopback.enqueue(*[Reply.text(f"Answer {i}. " + "Details follow. " * 40) for i in range(4)])
    long_question = "Please explain our refund policy in detail. " * 120  # > 1,024 tokens
    session = ToolAgent.objects.start_session(long_question, instruction_args=ARGS)
    for i in range(3):
        session = ToolAgent.objects.continue_session(session, f"Follow-up {i}")
    runs = list(AgentRun.objects.filter(session_id=session.pk).order_by("started_at"))
    assert runs[0].cache_read_input_tokens == 0 and runs[0].cache_creation_input_tokens > 0
    for run in runs[1:]:
        assert run.cache_read_input_tokens > 0
        assert run.cache_hit_ratio > 0.5  # most of the prefix is read back
    session.refresh_from_db()
    assert session.cache_hit_ratio > 0.5
