"""Property-based fuzzing of the session operations: bad input is a typed error, never stored.

Whatever the input and instruction args, ``start_session`` and ``continue_session`` either run
the turn or raise ``InvalidInput`` (or its subclass ``InvalidInstructionArgs``); no other
exception escapes, and a rejected call changes nothing in the database.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from django_agent_session import exceptions as exc
from django_agent_session.engine.context import Context
from django_agent_session.models import AgentEvent, AgentRun
from django_agent_session.testing import json_reply, text_reply
from tests.helpers.state import raw_context
from tests.testapp.models import ChatAgent, PlainAgent, StructuredAgent

from .strategies import INPUTS, INSTRUCTION_ARGS

pytestmark = pytest.mark.django_db

EXAMPLES = 600
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
MODELS = [ChatAgent, PlainAgent, StructuredAgent]
FREE = {"input_tokens": 0, "output_tokens": 0}  # PlainAgent has a token budget


def reply(request):
    if request.output_schema is not None:
        return json_reply({"content": "ok", "mood": "happy"}, usage=FREE)
    return text_reply("ok", usage=FREE)


def counts() -> tuple[int, ...]:
    return (*(m._base_manager.count() for m in MODELS), AgentRun.objects.count(),
            AgentEvent.objects.count())


@FUZZ
@given(model=st.sampled_from(MODELS), input=INPUTS, args=INSTRUCTION_ARGS)
def test_start_session_accepts_or_rejects_cleanly(scripted, model, input, args):
    scripted.default = reply
    before = counts()
    try:
        session = model.objects.start_session(input, instruction_args=args)
    except exc.InvalidInput as error:
        event(f"rejected: {error.code}")
        assert error.code in ("invalid_input", "invalid_instruction_args")
        assert isinstance(error.errors, dict) and error.errors
        assert counts() == before
    else:
        event("accepted")
        assert session.turn_count == 1
        assert model.objects.get_context(session.pk).turns == 1


@FUZZ
@given(model=st.sampled_from(MODELS), input=INPUTS)
def test_continue_session_accepts_or_rejects_cleanly(scripted, model, input):
    scripted.default = reply
    session = model._base_manager.filter(title="fuzz target").first() or model.objects.create(
        title="fuzz target",
        **{model.agent_options.context_field: Context(
            system="s", instruction_args={"company_name": "A"}).to_dict()})
    before, raw = counts(), raw_context(model, session.pk)
    try:
        after = model.objects.continue_session(session.pk, input)
    except exc.InvalidInput as error:
        event("rejected")
        assert error.code == "invalid_input" and error.errors
        assert counts() == before
        assert raw_context(model, session.pk) == raw
    else:
        event("accepted")
        assert after.turn_count == session.turn_count + 1
