"""MCP toolsets in real turns: the real SDK against the loopback Messages API, calling tools of
a real MCP server (the ``mcp`` package's) on loopback over streamable HTTP, or run over stdio.

Covered: the server's ``inputSchema`` offered to the model, the allow-list (neither offered
nor callable), the tool context arriving as ``_meta``, the timeout of a slow tool, a server
that goes down, one that never came up, approvals, and the sync and async turn paths.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from django_agent_session import exceptions as exc
from django_agent_session.clients import mcp as mcp_client
from django_agent_session.models import AgentRun, RunStatus
from django_agent_session.testing.loopback import Reply
from django_agent_session.testing.processes import free_port
from django_agent_session.tools import MCPToolset
from tests.helpers.engine import declared
from tests.helpers.loopback import uncached
from tests.mcp_servers.processes import STDIO, http_server
from tests.testapp.models import ChatAgent

pytestmark = pytest.mark.django_db(transaction=True)

ARGS = {"company_name": "Acme"}
#: every tool of the test server but the one the allow-lists keep out
ALLOWED = ["add", "whoami", "slow", "fail"]


@pytest.fixture(scope="module")
def http_url():
    with http_server() as (url, _process):
        yield url


@pytest.fixture(autouse=True)
def _closed_connections():
    """Each test opens its own connections (a stdio server is started afresh)."""
    yield
    mcp_client.close_all()


def results(request) -> list[dict]:
    """The tool results a recorded request sends back to the model."""
    return [uncached(block) for block in request.messages[-1]["content"]
            if block.get("type") == "tool_result"]


def output(session) -> dict:
    """The output of the session's last turn, which must have completed."""
    run = AgentRun.objects.get(pk=session.last_turn.run_id)
    assert run.status == RunStatus.COMPLETED
    return run.output


def offered(request) -> dict[str, dict]:
    return {tool["name"]: tool for tool in request.tools}


class TestHttp:
    def test_the_model_calls_a_tool_of_the_server_and_reads_its_result(self, loopback,
                                                                        http_url):
        loopback.enqueue(Reply.tool_use("add", {"a": 2, "b": 3}, id="t1"), "It is 5.")
        with declared(ChatAgent, tools=[MCPToolset(url=http_url, allowed_tools=ALLOWED)]):
            session = ChatAgent.objects.start_session("2 + 3?", instruction_args=ARGS)
        first, second = loopback.message_requests
        add = offered(first)["add"]
        # the definition is the server's: its inputSchema, its docstring
        assert add["description"] == "Add two integers."
        assert add["input_schema"]["properties"] == {
            "a": {"title": "A", "type": "integer"}, "b": {"title": "B", "type": "integer"}}
        assert add["input_schema"]["required"] == ["a", "b"]
        assert results(second) == [{"type": "tool_result", "tool_use_id": "t1",
                                    "content": "5"}]
        assert output(session) == {"content": "It is 5."}

    def test_a_tool_outside_the_allow_list_is_neither_offered_nor_callable(self, loopback,
                                                                            http_url):
        loopback.enqueue(Reply.tool_use("secret", {}, id="t1"), "I cannot.")
        with declared(ChatAgent, tools=[MCPToolset(url=http_url, allowed_tools=ALLOWED)]):
            ChatAgent.objects.start_session("Tell me the secret", instruction_args=ARGS)
        first, second = loopback.message_requests
        assert set(offered(first)) == set(ALLOWED)
        (result,) = results(second)
        assert result["is_error"] and result["content"] == "Unknown tool 'secret'."
        assert "launch codes" not in json.dumps(second.messages)

    def test_without_an_allow_list_every_tool_is_offered_with_a_prefix(self, loopback,
                                                                         http_url):
        loopback.enqueue("Hello.")
        with declared(ChatAgent, tools=[MCPToolset(url=http_url, prefix="calc_")]):
            ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        names = set(offered(loopback.message_requests[0]))
        assert names == {f"calc_{name}" for name in [*ALLOWED, "secret"]}

    def test_an_input_the_schema_rejects_never_reaches_the_server(self, loopback, http_url):
        loopback.enqueue(Reply.tool_use("add", {"a": "two", "b": 3}, id="t1"), "Oops.")
        with declared(ChatAgent, tools=[MCPToolset(url=http_url, allowed_tools=ALLOWED)]):
            ChatAgent.objects.start_session("2 + 3?", instruction_args=ARGS)
        (result,) = results(loopback.message_requests[1])
        assert result["is_error"] and result["content"].startswith("Invalid input:")
        assert "'two' is not of type 'integer'" in result["content"]

    def test_an_error_the_tool_reports_is_a_tool_error_the_model_reads(self, loopback,
                                                                        http_url):
        loopback.enqueue(Reply.tool_use("fail", {}, id="t1"), "It failed.")
        with declared(ChatAgent, tools=[MCPToolset(url=http_url, allowed_tools=ALLOWED)]):
            session = ChatAgent.objects.start_session("Print it", instruction_args=ARGS)
        (result,) = results(loopback.message_requests[1])
        assert result["is_error"]
        assert result["content"].startswith("fail failed: MCPToolError: ")
        assert result["content"].endswith("the printer is on fire")
        assert output(session) == {"content": "It failed."}

    def test_a_slow_tool_fails_at_the_timeout_and_the_turn_goes_on(self, loopback, http_url):
        loopback.enqueue(Reply.tool_use("slow", {"seconds": 60}, id="t1"), "Too slow.")
        toolset = MCPToolset(url=http_url, allowed_tools=ALLOWED, timeout=1)
        started = time.monotonic()
        with declared(ChatAgent, tools=[toolset]):
            session = ChatAgent.objects.start_session("Wait", instruction_args=ARGS)
        assert time.monotonic() - started < 30  # far from the tool's 60 s
        (result,) = results(loopback.message_requests[1])
        assert result["is_error"] and result["content"].startswith("slow failed: MCPUnavailable")
        assert "timed out after 1s" in result["content"]
        assert output(session) == {"content": "Too slow."}

    def test_a_call_that_needs_approval_waits_for_it_then_runs(self, loopback, http_url,
                                                                user, recording):
        loopback.enqueue(Reply.tool_use("whoami", {}, id="t1"))
        toolset = MCPToolset(url=http_url, allowed_tools=ALLOWED, requires_approval=["whoami"])
        with declared(ChatAgent, tools=[toolset]):
            session = ChatAgent.objects.start_session("Who?", instruction_args=ARGS,
                                                      owner=user)
            assert session.last_turn.status == RunStatus.AWAITING_APPROVAL
            (pending,) = ChatAgent.objects.pending_tool_calls(session.pk)
            assert pending["name"] == "whoami" and pending["tool_use_id"] == "t1"
            assert len(loopback.message_requests) == 1
            ChatAgent.objects.approve_tool_call(session.pk, "t1", by=user)
            loopback.enqueue("It is you.")
            assert ChatAgent.objects.drain(session.pk) == 1
        (result,) = results(loopback.message_requests[1])
        assert json.loads(result["content"])["meta"]["django-agent-session/owner"] == user.pk


class TestContextAsMeta:
    async def test_an_async_turn_sends_the_tool_context_as_meta_over_stdio(self, loopback,
                                                                          user):
        loopback.enqueue(Reply.tool_use("whoami", {}, id="t1"), "Done.")
        toolset = MCPToolset(command=STDIO, allowed_tools=ALLOWED,
                             meta=lambda ctx: {"example.com/tenant": "acme"})
        with declared(ChatAgent, tools=[toolset]):
            session = await ChatAgent.objects.astart_session("Who am I?", instruction_args=ARGS,
                                                             owner=user)
        (result,) = results(loopback.message_requests[1])
        meta = json.loads(result["content"])["meta"]
        run = await AgentRun.objects.aget(session_id=session.pk)
        assert meta["django-agent-session/session"] == str(session.pk)  # a UUID
        assert meta["django-agent-session/run"] == str(run.pk)
        assert meta["django-agent-session/owner"] == user.pk
        assert meta["django-agent-session/model"] == "testapp.chatagent"
        assert meta["django-agent-session/tool_use_id"] == "t1"
        assert meta["example.com/tenant"] == "acme"

    def test_a_sync_turn_reuses_one_stdio_process_for_its_calls(self, loopback, user):
        loopback.enqueue(Reply.tool_use("whoami", {}, id="t1"),
                         Reply.tool_use("whoami", {}, id="t2"), "Done.")
        with declared(ChatAgent, tools=[MCPToolset(command=STDIO, allowed_tools=ALLOWED)]):
            session = ChatAgent.objects.start_session("Who?", instruction_args=ARGS,
                                                      owner=user)
        first = json.loads(results(loopback.message_requests[1])[0]["content"])
        second = json.loads(results(loopback.message_requests[2])[0]["content"])
        assert first["pid"] == second["pid"]  # listed and called over one connection
        assert first["meta"]["django-agent-session/tool_use_id"] == "t1"
        assert second["meta"]["django-agent-session/tool_use_id"] == "t2"
        assert first["meta"]["django-agent-session/session"] == str(session.pk)


class TestServerDown:
    def test_a_server_that_went_down_fails_the_call_as_a_tool_error(self, loopback):
        loopback.enqueue(Reply.tool_use("add", {"a": 1, "b": 1}, id="t1"), "Two.",
                         Reply.tool_use("add", {"a": 2, "b": 2}, id="t2"), "Sorry.")
        with http_server() as (url, process), \
                declared(ChatAgent, tools=[MCPToolset(url=url, timeout=5)]):
            session = ChatAgent.objects.start_session("1 + 1?", instruction_args=ARGS)
            assert results(loopback.message_requests[1])[0]["content"] == "2"
            process.stop(grace=0)
            session = ChatAgent.objects.continue_session(session, "2 + 2?")
        (result,) = results(loopback.message_requests[3])
        assert "add" in offered(loopback.message_requests[2])  # still known
        assert result["is_error"] and "MCPUnavailable" in result["content"]
        assert output(session) == {"content": "Sorry."}

    def test_with_tool_errors_halt_a_server_down_fails_the_turn_typed(self, loopback):
        loopback.enqueue(Reply.tool_use("add", {"a": 1, "b": 1}, id="t1"), "Two.",
                         Reply.tool_use("add", {"a": 2, "b": 2}, id="t2"))
        with http_server() as (url, process), \
                declared(ChatAgent, tools=[MCPToolset(url=url, timeout=5)],
                         tool_errors="halt"):
            session = ChatAgent.objects.start_session("1 + 1?", instruction_args=ARGS)
            process.stop(grace=0)
            with pytest.raises(exc.ToolFailed, match="Tool add failed"):
                ChatAgent.objects.continue_session(session, "2 + 2?")
        assert AgentRun.objects.filter(session_id=session.pk,
                                       status=RunStatus.FAILED).count() == 1

    def test_a_server_never_up_offers_no_tools_and_the_turn_goes_on(self, loopback,
                                                                      caplog):
        loopback.enqueue("No tools today.")
        url = f"http://127.0.0.1:{free_port()}/mcp"
        with caplog.at_level(logging.WARNING, logger="django_agent_session.mcp"), \
                declared(ChatAgent, tools=[MCPToolset(url=url, timeout=5)]):
            session = ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        assert loopback.message_requests[0].tools == []
        assert output(session) == {"content": "No tools today."}
        assert "could not list the tools" in caplog.text and url in caplog.text

    def test_a_stdio_server_that_cannot_start_offers_no_tools(self, loopback, caplog):
        loopback.enqueue("Still here.")
        toolset = MCPToolset(command=["/nonexistent/mcp-server"], timeout=5)
        with caplog.at_level(logging.WARNING, logger="django_agent_session.mcp"), \
                declared(ChatAgent, tools=[toolset]):
            ChatAgent.objects.start_session("Hi", instruction_args=ARGS)
        assert loopback.message_requests[0].tools == []
        assert "/nonexistent/mcp-server" in caplog.text
