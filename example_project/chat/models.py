"""The example's agent: a support desk that can look up orders, and refund them once a person
approves."""

from django.db import models
from rest_framework import serializers

from django_agent_session.attachments import AttachmentsField
from django_agent_session.models import AgentSessionModel
from django_agent_session.tools import ToolContext, tool


class Order(models.Model):
    """A small table of the example's own, for the agent's tool to read."""

    number = models.PositiveIntegerField(unique=True)
    customer = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="orders")
    item = models.CharField(max_length=100)
    status = models.CharField(max_length=30)

    def __str__(self) -> str:
        return f"#{self.number} {self.item} ({self.status})"


class SupportArgs(serializers.Serializer):
    company_name = serializers.CharField(max_length=100)


class ChatInput(serializers.Serializer):
    message = serializers.CharField(max_length=4000)
    attachments = AttachmentsField()  # images and PDFs uploaded to the conversation


def lookup_order(ctx: ToolContext, number: int) -> dict:
    """Look up one of the current customer's orders by its number."""
    order = Order.objects.filter(number=number, customer=ctx.owner).first()
    if order is None:
        return {"found": False, "number": number}
    return {"found": True, "number": order.number, "item": order.item, "status": order.status}


@tool(requires_approval=True)
def refund_order(ctx: ToolContext, number: int) -> dict:
    """Refund one of the current customer's orders. A person approves every refund first."""
    order = Order.objects.filter(number=number, customer=ctx.owner).first()
    if order is None:
        return {"refunded": False, "number": number, "reason": "no such order"}
    if order.status == "refunded":
        return {"refunded": False, "number": number, "reason": "already refunded"}
    order.status = "refunded"
    order.save(update_fields=["status"])
    return {"refunded": True, "number": order.number, "item": order.item}


class ChatAgent(AgentSessionModel):
    class Agent:
        client = "anthropic:claude-sonnet-5-5"
        instruction = (
            "You are a friendly support agent for {{ company_name }}. Answer briefly. "
            "Use the lookup_order tool when the customer asks about an order, and refund_order "
            "when they ask for a refund (a person approves it before it runs)."
        )
        instruction_schema = SupportArgs
        input_schema = ChatInput
        tools = [lookup_order, refund_order]
        #: an undecided refund is rejected after this many seconds
        approval_timeout = 15 * 60
        max_tokens = 1024
        max_iterations = 6
