"""Declaring MCP toolsets in ``Agent.tools``: checked where the ``Agent`` is parsed (errors
name the model and option), nothing connects at import, and the server's JSON Schema
validates a tool's input as a DRF serializer would."""

from __future__ import annotations

import pytest

from django_agent_session import exceptions as exc
from django_agent_session.declaration.mcp import MCPTool, schema_serializer
from django_agent_session.declaration.schemas import validate
from django_agent_session.declaration.tools import ToolSet
from django_agent_session.testing.processes import free_port
from django_agent_session.tools import MCPToolset
from tests.helpers.engine import declared
from tests.testapp.models import ChatAgent, lookup_order

URL = "http://127.0.0.1:9/mcp"


def test_declaring_a_toolset_connects_to_nothing():
    toolset = MCPToolset(url=f"http://127.0.0.1:{free_port()}/mcp")  # nothing listens there
    with declared(ChatAgent, tools=[lookup_order, toolset]) as options:
        assert isinstance(options.tools, ToolSet)
        assert list(options.tools) == ["lookup_order"]  # the server's come before a turn
        assert options.tools.sources == (toolset,)
        assert toolset._listing is None and toolset.discovered() == ()


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({}, "needs url= or command=, not both"),
    ({"url": URL, "command": ["srv"]}, "needs url= or command=, not both"),
    ({"url": "ftp://example.com"}, "url must be an http(s) URL, got 'ftp://example.com'"),
    ({"command": "python server.py"}, "command must be a non-empty list of strings (argv)"),
    ({"command": []}, "command must be a non-empty list of strings (argv)"),
    ({"url": URL, "headers": {"X-Key": 1}}, "headers must be a dict of strings"),
    ({"command": ["srv"], "headers": {"X": "y"}}, "headers are sent over HTTP only"),
    ({"url": URL, "env": {"A": "b"}}, "env and cwd are for a local server only"),
    ({"url": URL, "allowed_tools": "add"}, "allowed_tools must be a list of tool names"),
    ({"url": URL, "timeout": 0}, "timeout must be a positive number of seconds, got 0"),
    ({"url": URL, "timeout": True}, "timeout must be a positive number of seconds"),
    ({"url": URL, "refresh": -1}, "refresh must be a positive number of seconds or None"),
    ({"url": URL, "prefix": "a b"}, "prefix must be letters, digits, _ or -, got 'a b'"),
    ({"url": URL, "requires_approval": 3}, "requires_approval must be a bool, a callable"),
    ({"url": URL, "meta": {"a": 1}}, "meta must be a callable (ctx) -> dict"),
])
def test_a_bad_declaration_names_the_model_option_and_toolset(kwargs, problem):
    toolset = MCPToolset(**kwargs)
    with pytest.raises(exc.AgentDeclarationError) as raised:
        with declared(ChatAgent, tools=[toolset]):
            pass
    assert f"ChatAgent.Agent.tools: {toolset!r} {problem}" in str(raised.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(exc.AgentDeclarationError) as raised:
        with declared(ChatAgent, tools=[MCPToolset(url=URL, timeout=-1, prefix="?"),
                                        MCPToolset(command=["srv"], refresh=0)]):
            pass
    message = str(raised.value)
    assert "timeout must be" in message and "prefix must be" in message
    assert "MCPToolset(command=['srv']) refresh must be" in message


def test_the_servers_json_schema_validates_the_input():
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
                                               "tags": {"type": "array",
                                                        "items": {"type": "string"}}},
              "required": ["a"], "additionalProperties": False}
    serializer = schema_serializer("add", schema)
    assert validate(serializer, {"a": 1, "tags": ["x"]}) == {"a": 1, "tags": ["x"]}
    with pytest.raises(exc.InvalidInput) as raised:
        validate(serializer, {"tags": [1], "b": 2})
    assert raised.value.errors == {
        "non_field_errors": ["'a' is a required property",
                             "Additional properties are not allowed ('b' was unexpected)"],
        "tags.0": ["1 is not of type 'string'"]}


def test_a_listed_tool_is_a_tool_with_the_servers_schema_and_approval():
    from mcp_types import Tool as Remote

    remote = Remote(name="delete", description="Delete a thing.",
                    input_schema={"type": "object", "properties": {"id": {"type": "integer"}},
                                  "required": ["id"]})
    toolset = MCPToolset(url=URL, prefix="x_", timeout=7, requires_approval=["delete"])
    tool = MCPTool(toolset, remote)
    assert tool.to_param() == {"name": "x_delete", "description": "Delete a thing.",
                               "input_schema": remote.input_schema}
    assert tool.is_async and tool.takes_context and tool.timeout == 8.0  # a second of backstop
    assert tool.requires_approval is True and tool.remote_name == "delete"
    other = MCPTool(toolset, Remote(name="list", input_schema={"type": "object"}))
    assert other.requires_approval is False and other.description == "list"
