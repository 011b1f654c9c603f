"""``Agent.hooks`` as an option (parsed and checked with the others, errors naming model and
option) and a conversation's configuration checked against the declaration."""

from __future__ import annotations

from decimal import Decimal

import pytest

from django_agent_session.declaration.options import CONFIG_KEYS, ToolSubset
from django_agent_session.exceptions import InvalidConfig
from django_agent_session.exceptions import AgentDeclarationError
from tests.helpers.engine import declared
from tests.testapp.models import ChatAgent, ToolAgent


def before(call):
    return None


async def after(call):
    return None


class TestHooksOption:
    def test_a_callable_or_a_list_of_callables_per_hook(self):
        with declared(ChatAgent, hooks={"before_call": before,
                                        "after_call": [after, before]}) as options:
            assert options.hooks == {"before_call": (before,), "after_call": (after, before)}
        assert ChatAgent.agent_options.hooks == {}

    def test_unknown_hooks_and_non_callables_name_model_and_option(self):
        with pytest.raises(AgentDeclarationError) as info:
            with declared(ChatAgent, hooks={"before_cal": before, "on_error": [before, 3]}):
                pass
        message = str(info.value)
        assert "ChatAgent.Agent.hooks has unknown hook(s) before_cal (known: before_call, " \
               "after_render, after_call, on_error)" in message
        assert "ChatAgent.Agent.hooks on_error must be a callable or a list of callables, " \
               "got 3" in message

    def test_hooks_must_be_a_dict(self):
        with pytest.raises(AgentDeclarationError, match=r"ChatAgent\.Agent\.hooks must be a "
                                                        r"dict of hook name"):
            with declared(ChatAgent, hooks=[before]):
                pass


class TestConfigured:
    def test_nothing_to_change_is_the_declaration_itself(self):
        assert ToolAgent.agent_options.configured(None) is ToolAgent.agent_options
        assert ToolAgent.agent_options.configured({}) is ToolAgent.agent_options

    def test_a_copy_with_the_overrides(self):
        base = ToolAgent.agent_options
        options = base.configured({"model": "anthropic:claude-haiku-9", "tools": (),
                                   "max_tokens": 64, "cost_budget": Decimal("0.5")})
        assert options is not base and options.model_name == "claude-haiku-9"
        assert options.provider == "anthropic" and options.max_tokens == 64
        assert options.cost_budget == Decimal("0.5")
        assert isinstance(options.tools, ToolSubset) and list(options.tools) == []
        assert options.tools.params() == [] and options.tools.get("lookup_order") is None
        # stored as JSON
        assert options.config == {"model": "anthropic:claude-haiku-9", "tools": [],
                                  "max_tokens": 64, "cost_budget": "0.5"}
        # the declaration is untouched
        assert base.model_name == "claude-sonnet-5-5" and base.max_tokens == 1024
        assert list(base.tools) == ["lookup_order"] and base.config == {}

    def test_max_tokens_is_checked_against_thinking(self):
        with declared(ChatAgent, thinking=2048, max_tokens=4096) as options:
            with pytest.raises(InvalidConfig) as info:
                options.configured({"max_tokens": 1500})
        assert info.value.errors == {"max_tokens": [
            "thinking budget must be >= 1024 and less than max_tokens (Agent.thinking)"]}

    def test_every_problem_at_once(self):
        with pytest.raises(InvalidConfig) as info:
            ToolAgent.agent_options.configured({"tools": "lookup_order", "max_iterations": -1,
                                                "instruction_args": [], "x": 1})
        assert set(info.value.errors) == {"tools", "max_iterations", "instruction_args",
                                          "non_field_errors"}
        assert info.value.label == "ToolAgent config"

    def test_the_documented_keys(self):
        assert CONFIG_KEYS == ("model", "instruction_args", "tools", "max_tokens",
                               "max_iterations", "max_continuations", "temperature",
                               "token_budget", "cost_budget", "tool_timeout")
