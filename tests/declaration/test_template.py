"""The instruction template: plain ``{{ name }}`` slots, rendered without evaluating values."""

from __future__ import annotations

import pytest

from django_agent_session.declaration.template import InstructionTemplate
from django_agent_session.exceptions import InvalidInstructionArgs


class TestTemplate:
    def test_render(self):
        template = InstructionTemplate("Hi {{name}}, welcome to {{ place }}. {{ name }}!")
        assert template.variables == {"name", "place"}
        assert template.render({"name": "Ann", "place": "Oslo"}) == "Hi Ann, welcome to Oslo. Ann!"

    def test_values_are_not_evaluated(self):
        template = InstructionTemplate("Say {{ text }}")
        assert template.render({"text": "{{ secret }} {% load x %}"}) == \
            "Say {{ secret }} {% load x %}"

    def test_missing_and_extra(self):
        template = InstructionTemplate("{{ a }}")
        with pytest.raises(InvalidInstructionArgs) as info:
            template.render({"b": 1})
        assert info.value.errors == {"a": ["This template variable is missing."],
                                     "b": ["The instruction template has no such variable."]}

    @pytest.mark.parametrize("source", ["{{ a.b }}", "{{ a|upper }}", "{{ }}", "{{ 1x }}"])
    def test_only_plain_slots(self, source):
        with pytest.raises(ValueError, match="only plain"):
            InstructionTemplate(source)
