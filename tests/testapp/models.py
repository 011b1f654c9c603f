"""Concrete session models used by the test suite, declared as in the README."""

from django.db import models
from rest_framework import serializers

from django_agent_session.models import AgentSessionModel
from django_agent_session.tools import ToolContext, tool

MODEL = "anthropic:claude-sonnet-5-5"


class CompanyArgs(serializers.Serializer):
    company_name = serializers.CharField(max_length=100)


class ChatInput(serializers.Serializer):
    message = serializers.CharField(max_length=10_000)


class ChatReply(serializers.Serializer):
    content = serializers.CharField()
    mood = serializers.ChoiceField(choices=["happy", "neutral", "sad"])


class Order(models.Model):
    number = models.IntegerField(unique=True)
    status = models.CharField(max_length=20)
    customer = models.CharField(max_length=100)


def lookup_order(ctx: ToolContext, number: int) -> dict:
    """Look up an order by its number."""
    order = Order.objects.filter(number=number).first()
    if order is None:
        raise LookupError(f"no order {number}")
    return {"number": order.number, "status": order.status,
            "owner": ctx.owner.username if ctx.owner else None}


class ChatAgent(AgentSessionModel):
    class Agent:
        client = MODEL
        instruction = "You are a helpful assistant for {{ company_name }}."
        instruction_schema = CompanyArgs
        input_schema = ChatInput
        max_tokens = 1024


class StructuredAgent(AgentSessionModel):
    class Agent(ChatAgent.Agent):
        output_schema = ChatReply


class ToolAgent(AgentSessionModel):
    class Agent(ChatAgent.Agent):
        tools = [lookup_order]
        max_iterations = 4


class PlainAgent(AgentSessionModel):
    """No instruction args, default schemas, a custom context field."""

    context = None
    state = models.JSONField(default=dict, blank=True)

    class Agent:
        client = MODEL
        instruction = "Be brief."
        context_field = "state"
        token_budget = 100


class SupportAgent(AgentSessionModel):
    """Declared exactly like the DESIGN.md / README example."""

    class Agent:
        client = MODEL
        instruction = "You are a helpful assistant for {{ company_name }}."
        instruction_schema = CompanyArgs
        input_schema = ChatInput
        output_schema = ChatReply
        tools = [lookup_order]
        max_tokens = 1024
        max_iterations = 10
        context_field = "context"


REFUNDS: list[tuple[int, float]] = []  # what the refund tool did (the tests read it)


def big(ctx: ToolContext, input: dict) -> bool:
    """Only refunds over 100 need a person."""
    return float(input["amount"]) > 100


@tool(requires_approval=big)
def refund(order: int, amount: float) -> str:
    """Refund an amount on an order."""
    REFUNDS.append((order, amount))
    return f"refunded {amount} on order {order}"


@tool(requires_approval=True)
def send_email(to: str, body: str) -> str:
    """Send an email."""
    return f"sent to {to}"


class ApprovalAgent(AgentSessionModel):
    """Tools that wait for a person: a refund over 100, every email."""

    class Agent(ChatAgent.Agent):
        tools = [lookup_order, refund, send_email]
        max_iterations = 6
