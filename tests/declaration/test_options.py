"""The Agent declaration: parsing, validation errors, inheritance, system checks."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.checks import run_checks
from django.test import override_settings
from django.test.utils import isolate_apps
from rest_framework import serializers

from django_agent_session.declaration.options import Compaction
from django_agent_session.exceptions import AgentDeclarationError
from django_agent_session.models import AgentSessionModel
from django_agent_session.tools import Tool
from tests.helpers.engine import declared
from tests.testapp.models import (
    ChatAgent,
    PlainAgent,
    StructuredAgent,
    SupportAgent,
    ToolAgent,
)


def declare(agent_attrs: dict, name: str = "Broken", **fields):
    """Declare a throwaway concrete session model with an ``Agent`` built from ``agent_attrs``."""
    agent = type("Agent", (), agent_attrs)
    attrs = {"__module__": "tests.testapp.models", "Agent": agent, **fields,
             "Meta": type("Meta", (), {"app_label": "testapp"})}
    return type(name, (AgentSessionModel,), attrs)


@pytest.fixture
def isolated():
    with isolate_apps("tests.testapp"):
        yield


@pytest.mark.usefixtures("isolated")
class TestDeclarationErrors:
    def test_unknown_option_names_model_and_option(self):
        with pytest.raises(AgentDeclarationError, match=r"Broken\.Agent has unknown option\(s\): "
                                                        r"max_token, temprature"):
            declare({"client": "anthropic:m", "max_token": 5, "temprature": 0.1})

    def test_client_is_required_and_shaped(self):
        with pytest.raises(AgentDeclarationError, match=r"Broken\.Agent\.client is required"):
            declare({})
        with pytest.raises(AgentDeclarationError, match=r'client must be "provider:model"'):
            declare({"client": "claude"})

    def test_wrong_types_are_all_reported_at_once(self):
        with pytest.raises(AgentDeclarationError) as info:
            declare({"client": "anthropic:m", "tools": "lookup", "max_tokens": "9",
                     "cache": "yes"})
        message = str(info.value)
        assert "Broken.Agent.tools must be a list or tuple of functions, got str" in message
        assert "Broken.Agent.max_tokens must be a positive int, got str" in message
        assert "Broken.Agent.cache must be a bool, got str" in message

    def test_bad_values(self):
        with pytest.raises(AgentDeclarationError, match="max_iterations must be a positive int"):
            declare({"client": "anthropic:m", "max_iterations": 0})
        with pytest.raises(AgentDeclarationError, match="temperature must be between 0 and 1"):
            declare({"client": "anthropic:m", "temperature": 3})
        with pytest.raises(AgentDeclarationError, match='budget_strategy must be "halt" or "warn"'):
            declare({"client": "anthropic:m", "budget_strategy": "panic"})

    def test_bool_is_not_an_int(self):
        with pytest.raises(AgentDeclarationError, match="max_tokens must be a positive int, got bool"):
            declare({"client": "anthropic:m", "max_tokens": True})

    def test_missing_context_field(self):
        with pytest.raises(AgentDeclarationError,
                           match=r"Broken\.Agent\.context_field names 'memory', but Broken has "
                                 r"no such field"):
            declare({"client": "anthropic:m", "context_field": "memory"})

    def test_context_field_must_be_json(self):
        with pytest.raises(AgentDeclarationError, match="must be a JSONField, got CharField"):
            declare({"client": "anthropic:m", "context_field": "title"})

    def test_template_and_schema_must_agree(self):
        class Args(serializers.Serializer):
            company_name = serializers.CharField()
            unused = serializers.CharField()

        with pytest.raises(AgentDeclarationError) as info:
            declare({"client": "anthropic:m", "instruction": "Hi {{ company_name }} {{ tone }}",
                     "instruction_schema": Args})
        assert "instruction uses tone which instruction_schema does not declare" in str(info.value)
        assert "instruction_schema declares unused which the instruction does not use" in str(
            info.value)

    def test_template_code_is_rejected(self):
        with pytest.raises(AgentDeclarationError, match=r"only plain \{\{ name \}\} slots"):
            declare({"client": "anthropic:m", "instruction": "{{ user.password }}"})

    def test_schema_must_be_serializer_or_fields(self):
        with pytest.raises(AgentDeclarationError, match="input_schema must be a DRF Serializer "
                                                        "class or a dict of DRF fields"):
            declare({"client": "anthropic:m", "input_schema": int})
        with pytest.raises(AgentDeclarationError, match="values must be DRF field instances"):
            declare({"client": "anthropic:m", "input_schema": {"message": str}})

    def test_no_agent_declaration(self):
        with pytest.raises(AgentDeclarationError, match="declares no inner 'class Agent:'"):
            type("NoAgent", (AgentSessionModel,), {
                "__module__": "tests.testapp.models",
                "Meta": type("Meta", (), {"app_label": "testapp"})})

    def test_duplicate_tool_names(self):
        def lookup(x: int) -> int:
            return x

        with pytest.raises(AgentDeclarationError, match="two tools named 'lookup'"):
            declare({"client": "anthropic:m", "tools": [lookup, Tool(lookup)]})


class TestParsedOptions:
    def test_design_example(self):
        opts = SupportAgent.agent_options
        assert opts.provider == "anthropic" and opts.model_name == "claude-sonnet-5-5"
        assert opts.template.variables == {"company_name"}
        assert set(opts.input_serializer().fields) == {"message"}
        assert opts.structured_output is True
        assert opts.output_json_schema == {
            "type": "object",
            "properties": {"content": {"type": "string"},
                           "mood": {"enum": ["happy", "neutral", "sad"]}},
            "required": ["content", "mood"], "additionalProperties": False}
        assert list(opts.tools) == ["lookup_order"]
        assert opts.tools["lookup_order"].to_param() == {
            "name": "lookup_order", "description": "Look up an order by its number.",
            "input_schema": {"type": "object", "properties": {"number": {"type": "integer"}},
                             "required": ["number"], "additionalProperties": False}}
        assert opts.tools["lookup_order"].takes_context

    def test_inheritance(self):
        # StructuredAgent/ToolAgent declare `class Agent(ChatAgent.Agent)` and add one option
        assert StructuredAgent.agent_options.instruction == ChatAgent.agent_options.instruction
        assert StructuredAgent.agent_options.structured_output is True
        assert ChatAgent.agent_options.structured_output is False
        assert ToolAgent.agent_options.max_iterations == 4
        assert ChatAgent.agent_options.max_iterations == 10

    def test_defaults(self):
        opts = PlainAgent.agent_options
        assert opts.context_field == "state"
        assert opts.output_json_schema is None
        assert opts.cache is True and opts.thinking_param is None
        assert opts.token_budget == 100 and opts.budget_strategy == "halt"

    @pytest.mark.usefixtures("isolated")
    def test_dict_schemas(self):
        if True:
            model = declare({"client": "anthropic:m",
                             "input_schema": {"question": serializers.CharField(),
                                              "count": serializers.IntegerField(default=1)}})
        serializer = model.agent_options.input_serializer(data={"question": "q", "count": "3"})
        assert serializer.is_valid() and serializer.validated_data["count"] == 3

    def test_manager_methods_exist_on_every_concrete_model(self):
        for model in (ChatAgent, StructuredAgent, ToolAgent, PlainAgent, SupportAgent):
            for name in ("start_session", "continue_session", "get_context",
                         "astart_session", "acontinue_session", "aget_context"):
                assert callable(getattr(model.objects, name))


ERRATA = ["django.contrib.auth", "django.contrib.contenttypes", "rest_framework",
          "django_agent_session", "tests.errata"]


class TestChecks:
    def _checks(self, **settings):
        return [e for e in run_checks() if e.id.startswith("django_agent_session")]

    def test_clean_project_has_no_findings(self):
        assert self._checks() == []

    def test_errata(self):
        with override_settings(INSTALLED_APPS=ERRATA):
            found = {(e.id, getattr(e.obj, "__name__", None)) for e in self._checks()}
        assert found == {
            ("django_agent_session.E001", "UnknownProviderAgent"),
            ("django_agent_session.E003", "PlainManagerAgent"),
            ("django_agent_session.W002", "DeprecatedModelAgent"),
            ("django_agent_session.W002", "UnlistedModelAgent"),
        }

    def test_messages_name_model_and_option(self):
        with override_settings(INSTALLED_APPS=ERRATA):
            by_id = {e.id: e for e in self._checks() if e.id != "django_agent_session.W002"}
        assert by_id["django_agent_session.E001"].msg == (
            "UnknownProviderAgent.Agent.client uses provider 'openai', which "
            "AGENT_SESSION['CLIENTS'] does not define.")
        assert "PlainManagerAgent's default manager Manager" in by_id[
            "django_agent_session.E003"].msg

    def test_unimportable_client(self):
        with override_settings(AGENT_SESSION={"CLIENTS": {"x": "nowhere.Client"}}):
            assert [e.id for e in self._checks()] == ["django_agent_session.E002"]

    def test_unknown_setting(self):
        with override_settings(AGENT_SESSION={"TURN_LEASE": 3}):
            errors = self._checks()
        assert [e.id for e in errors] == ["django_agent_session.E004"]
        assert "TURN_LEASE" in errors[0].msg

    def test_atomic_requests(self, settings):
        settings.DATABASES["default"]["ATOMIC_REQUESTS"] = True
        try:
            assert [e.id for e in self._checks()] == ["django_agent_session.W001"]
        finally:
            settings.DATABASES["default"]["ATOMIC_REQUESTS"] = False

    def test_missing_channel_layers(self):
        with override_settings(CHANNEL_LAYERS={}):
            assert [e.id for e in self._checks()] == ["django_agent_session.W003"]

    def test_a_cost_budget_on_a_model_without_a_price(self):
        with declared(ChatAgent, cost_budget="1.00"):
            errors = self._checks()
            assert [e.id for e in errors] == ["django_agent_session.E005"]
            assert "ChatAgent.Agent.cost_budget" in errors[0].msg
            with override_settings(AGENT_SESSION={"PRICES": {
                    "claude-sonnet-5-5": {"input": "3", "output": "15"}}}):
                assert self._checks() == []

    def test_an_invalid_price(self):
        with override_settings(AGENT_SESSION={"PRICES": {"claude-x": {"input": "3"}}}):
            errors = self._checks()
        assert [e.id for e in errors] == ["django_agent_session.E006"]
        assert "'output'" in errors[0].msg

    def test_a_title_or_compaction_model_of_an_unknown_provider(self):
        with declared(ChatAgent, title_model="openai:gpt", compaction={"model": "acme:x"}):
            messages = sorted(e.msg for e in self._checks())
        assert messages == [
            "ChatAgent.Agent.compaction model uses provider 'acme', which "
            "AGENT_SESSION['CLIENTS'] does not define.",
            "ChatAgent.Agent.title_model uses provider 'openai', which "
            "AGENT_SESSION['CLIENTS'] does not define."]


class TestLongConversationOptions:
    def test_defaults(self):
        opts = ChatAgent.agent_options
        assert opts.cost_budget is None and opts.compaction is None
        assert opts.on_max_tokens == "incomplete" and opts.max_continuations == 2
        assert opts.title == "first_message" and opts.title_model is None

    def test_cost_budget_is_a_decimal(self):
        with declared(ChatAgent, cost_budget=0.1) as opts:
            assert opts.cost_budget == Decimal("0.1")  # read through its string
        with declared(ChatAgent, cost_budget="2.50") as opts:
            assert opts.cost_budget == Decimal("2.50")

    def test_compaction_true_takes_the_defaults(self):
        with declared(ChatAgent, compaction=True) as opts:
            assert opts.compaction == Compaction()
        with declared(ChatAgent, compaction={"threshold": 0.5, "strategy": "server"}) as opts:
            assert opts.compaction.threshold == 0.5 and opts.compaction.strategy == "server"

    @pytest.mark.parametrize("options, problem", [
        ({"cost_budget": "abc"}, "ChatAgent.Agent.cost_budget must be an amount in USD"),
        ({"cost_budget": -1}, "ChatAgent.Agent.cost_budget must be a positive amount"),
        ({"compaction": {"threshold": 1.5}}, "compaction threshold must be a share"),
        ({"compaction": {"keep_turns": 0}}, "compaction keep_turns must be a positive int"),
        ({"compaction": {"every": 3}}, "compaction has unknown key(s) every"),
        ({"compaction": {"model": "haiku"}}, 'compaction model must be "provider:model"'),
        ({"compaction": {"strategy": "magic"}}, "compaction strategy must be"),
        ({"on_max_tokens": "truncate"}, 'on_max_tokens must be "incomplete" or "continue"'),
        ({"on_max_tokens": "continue", "output_schema": {"type": "object"}},
         'ChatAgent.Agent.on_max_tokens = "continue" cannot be used with output_schema'),
        ({"title": "ai"}, 'title must be "first_message" or "model"'),
        ({"title_model": "haiku"}, 'title_model must be "provider:model"'),
    ])
    def test_problems_name_the_model_and_option(self, options, problem):
        with pytest.raises(AgentDeclarationError) as caught, declared(ChatAgent, **options):
            pass
        assert problem in str(caught.value)

    def test_server_compaction_needs_the_anthropic_client(self):
        with pytest.raises(AgentDeclarationError, match='"server" needs an "anthropic:"'), \
                declared(ChatAgent, client="demo:x", compaction={"strategy": "server"}):
            pass
