"""Deliberately misconfigured session models, installed only by the system-check tests."""

from django.db import models

from django_agent_session.models import AgentSessionModel


class UnknownProviderAgent(AgentSessionModel):
    class Agent:
        client = "openai:gpt-x"


class PlainManagerAgent(AgentSessionModel):
    objects = models.Manager()

    class Agent:
        client = "anthropic:claude-sonnet-5-5"


class DeprecatedModelAgent(AgentSessionModel):
    class Agent:
        client = "anthropic:claude-3-opus-20240229"


class UnlistedModelAgent(AgentSessionModel):
    class Agent:
        client = "anthropic:claude-imaginary-9"
