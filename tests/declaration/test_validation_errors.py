"""Validation errors of an agent's schemas: ``str()`` names the model and every failing
field; ``errors`` stays DRF's structure and ``message`` the short summary."""

from __future__ import annotations

import pytest
from django.test.utils import isolate_apps
from rest_framework import serializers

from django_agent_session import exceptions as exc
from django_agent_session.models import AgentSessionModel
from tests.testapp.models import ChatAgent, ChatInput, CompanyArgs, PlainAgent, StructuredAgent


def test_input_errors_name_the_model_and_the_field():
    with pytest.raises(exc.InvalidInput) as info:
        ChatAgent.objects.validate_input({})
    assert str(info.value) == "ChatAgent input: message: This field is required."
    assert info.value.message == "Invalid input."  # what the API and WebSocket send
    assert info.value.errors == {"message": ["This field is required."]}


def test_a_schema_shared_by_two_agents_names_each_one():
    with pytest.raises(exc.InvalidInput, match=r"^StructuredAgent input: message: "):
        StructuredAgent.objects.validate_input({"message": ["a"]})
    with pytest.raises(exc.InvalidInput, match=r"^ChatAgent input: Expected an object\.$"):
        ChatAgent.objects.validate_input([1, 2])
    # the project's class itself is used (and documented), not a copy per agent
    assert ChatAgent.agent_options.input_serializer is ChatInput
    assert StructuredAgent.agent_options.instruction_serializer is CompanyArgs


def test_instruction_args_errors_name_the_model_and_the_field():
    with pytest.raises(exc.InvalidInstructionArgs) as info:
        ChatAgent.objects.initial_context({"company_name": "x" * 101})
    assert str(info.value) == ("ChatAgent instruction args: company_name: Ensure this field "
                               "has no more than 100 characters.")
    assert info.value.message == "Invalid instruction args."
    # without an instruction_schema, the template checks them
    with pytest.raises(exc.InvalidInstructionArgs) as info:
        PlainAgent.objects.initial_context({"tone": "dry"})
    assert str(info.value) == ("PlainAgent instruction args: tone: The instruction template "
                               "has no such variable.")


class Line(serializers.Serializer):
    sku = serializers.CharField()
    quantity = serializers.IntegerField(min_value=1)


class OrderInput(serializers.Serializer):
    lines = Line(many=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=3))
    note = serializers.CharField()


@isolate_apps("tests.testapp")
def test_nested_fields_and_list_items_are_dotted_paths():
    model = type("OrderAgent", (AgentSessionModel,), {
        "__module__": "tests.testapp.models",
        "Agent": type("Agent", (), {"client": "anthropic:m", "instruction": "Sell.",
                                     "input_schema": OrderInput}),
        "Meta": type("Meta", (), {"app_label": "testapp"}),
    })
    with pytest.raises(exc.InvalidInput) as info:
        model.objects.validate_input({"lines": [{"sku": "a", "quantity": 1}, {"quantity": 0}],
                                      "tags": ["ok", "toolong"]})
    assert str(info.value) == (
        "OrderAgent input: lines.1.sku: This field is required.; lines.1.quantity: Ensure "
        "this value is greater than or equal to 1.; tags.1: Ensure this field has no more "
        "than 3 characters.; note: This field is required.")


def test_many_errors_are_cut_and_a_stored_error_still_names_its_fields():
    errors = {f"field{i}": ["Bad."] for i in range(12)}
    text = str(exc.InvalidInput(errors, label="Big input"))
    assert text.startswith("Big input: field0: Bad.; field1: Bad.;")
    assert text.endswith("field9: Bad.; (and 2 more)")
    # a run's stored error (another process's) has no label: the message leads
    stored = exc.from_dict(exc.InvalidInput({"message": ["Required."]}).to_dict())
    assert isinstance(stored, exc.InvalidInput)
    assert str(stored) == "Invalid input. message: Required."
    assert str(exc.InvalidInput({})) == "Invalid input."
