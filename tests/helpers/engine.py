"""A turn engine without a database: ChatAgent's declaration with other tools or options."""

from __future__ import annotations

import contextlib

from django_agent_session.declaration.options import AgentOptions
from django_agent_session.engine import TurnEngine
from tests.testapp.models import ChatAgent

#: the user message of a turn run straight on an engine
USER = [{"type": "text", "text": "go"}]


def engine_for(tools, **options) -> TurnEngine:
    """An engine for ChatAgent's declaration with other tools/options (no database)."""
    attrs = {k: getattr(ChatAgent.Agent, k) for k in ("client", "instruction",
                                                      "instruction_schema")}
    agent = type("Agent", (), {**attrs, "tools": tools, **options})
    opts = AgentOptions.__new__(AgentOptions)
    opts.__init__(agent, ChatAgent)
    return TurnEngine(opts)


@contextlib.contextmanager
def declared(model, **options):
    """``model``'s ``Agent`` declaration with ``options`` changed, for the length of a block
    (parsed as at class time, so invalid options fail as they would there)."""
    agent = type("Agent", (model.Agent,), options)
    before = model.agent_options
    model.agent_options = AgentOptions(agent, model)
    try:
        yield model.agent_options
    finally:
        model.agent_options = before
