"""The inner ``class Agent:`` of a session model, parsed and validated in one place.

Modelled on Django's ``Meta`` and django-filter's ``FilterSetOptions``: each known option is read
with a default (so ``class Agent(Parent.Agent)`` inherits), types are checked against one table,
leftover public names are unknown options, and every problem is collected and raised once with
the model and option named.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from django.db import models
from rest_framework import fields as f

from .exceptions import AgentDeclarationError
from .schemas import SerializerClass, json_schema, to_serializer
from .template import InstructionTemplate
from .tools import Tool, as_tool

if TYPE_CHECKING:
    from .clients.base import Client

_NOT_SET = object()

#: option name -> (default, allowed types, description used in errors)
OPTIONS: dict[str, tuple[Any, tuple[type, ...], str]] = {
    "client": (_NOT_SET, (str,), 'a "provider:model" string'),
    "instruction": ("", (str,), "a string"),
    "instruction_schema": (None, (type, dict, type(None)), "a Serializer class or dict of fields"),
    "input_schema": (None, (type, dict, type(None)), "a Serializer class or dict of fields"),
    "output_schema": (None, (type, dict, type(None)), "a Serializer class or dict of fields"),
    "context_field": ("context", (str,), "a field name"),
    "max_tokens": (1024, (int,), "a positive int"),
    "temperature": (None, (int, float, type(None)), "a number between 0 and 1, or None"),
    "tools": ((), (list, tuple), "a list or tuple of functions"),
    "max_iterations": (10, (int,), "a positive int"),
    "token_budget": (None, (int, type(None)), "a positive int or None"),
    "budget_strategy": ("halt", (str,), '"halt" or "warn"'),
    "tool_errors": ("continue", (str,), '"continue" or "halt"'),
    "tool_timeout": (None, (int, float, type(None)), "seconds or None"),
    "cache": (True, (bool,), "a bool"),
    "thinking": (None, (str, int, dict, type(None)), '"adaptive", a token budget, or a dict'),
    "viewset": (None, (type, str, type(None)), "a ViewSet class or dotted path"),
}

DEFAULT_INPUT = {"message": f.CharField(trim_whitespace=False)}
DEFAULT_OUTPUT = {"content": f.CharField(allow_blank=True, trim_whitespace=False)}


class AgentOptions:
    """The validated ``Agent`` declaration of one concrete session model (``Model.agent_options``)."""

    def __init__(self, declaration: type | None, model: type[models.Model]) -> None:
        self.model = model
        label = f"{model.__name__}.Agent"
        errors: list[str] = []
        if declaration is None:
            raise AgentDeclarationError(
                f"{model.__name__} subclasses AgentSessionModel but declares no inner "
                f"'class Agent:' (at least Agent.client is required)."
            )
        known = set(OPTIONS)
        unknown = sorted(
            name for name in dir(declaration)
            if not name.startswith("_") and name not in known
        )
        if unknown:
            errors.append(f"{label} has unknown option(s): {', '.join(unknown)}")

        values: dict[str, Any] = {}
        for name, (default, types_, desc) in OPTIONS.items():
            value = getattr(declaration, name, default)
            if value is _NOT_SET:
                errors.append(f"{label}.{name} is required ({desc})")
                continue
            if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
                errors.append(f"{label}.{name} must be {desc}, got {type(value).__name__}")
                continue
            values[name] = value

        def check(cond: bool, message: str) -> None:
            if not cond:
                errors.append(f"{label}.{message}")

        client = values.get("client")
        if client is not None:
            provider, _, model_name = client.partition(":")
            check(bool(provider and model_name),
                  f'client must be "provider:model", got {client!r}')
            self.provider, self.model_name = provider, model_name
        for name in ("max_tokens", "max_iterations"):
            if name in values:
                check(values[name] > 0, f"{name} must be a positive int, got {values[name]}")
        if values.get("token_budget") is not None:
            check(values["token_budget"] > 0, "token_budget must be positive")
        check(values.get("budget_strategy", "halt") in ("halt", "warn"),
              f'budget_strategy must be "halt" or "warn", got {values.get("budget_strategy")!r}')
        check(values.get("tool_errors", "continue") in ("continue", "halt"),
              f'tool_errors must be "continue" or "halt", got {values.get("tool_errors")!r}')
        temperature = values.get("temperature")
        if temperature is not None:
            check(0 <= temperature <= 1, f"temperature must be between 0 and 1, got {temperature}")
        thinking = values.get("thinking")
        if isinstance(thinking, str):
            check(thinking == "adaptive", f'thinking must be "adaptive", an int or a dict, got {thinking!r}')
        if isinstance(thinking, int) and not isinstance(thinking, bool):
            check(1024 <= thinking < values.get("max_tokens", 1024),
                  "thinking budget must be >= 1024 and less than max_tokens")

        # the template
        self.template: InstructionTemplate | None = None
        try:
            self.template = InstructionTemplate(values.get("instruction", ""))
        except ValueError as exc:
            errors.append(f"{label}.instruction: {exc}")

        # schemas
        self.instruction_serializer: SerializerClass | None = None
        self.input_serializer: SerializerClass | None = None
        self.output_serializer: SerializerClass | None = None
        prefix = model.__name__
        for name, default, attr in (
            ("instruction_schema", None, "instruction_serializer"),
            ("input_schema", DEFAULT_INPUT, "input_serializer"),
            ("output_schema", DEFAULT_OUTPUT, "output_serializer"),
        ):
            spec = values.get(name) or default
            if spec is None:
                continue
            try:
                setattr(self, attr, to_serializer(spec, f"{prefix}{_camel(name)}"))
            except TypeError as exc:
                errors.append(f"{label}.{name} {exc}")
        self.structured_output = values.get("output_schema") is not None
        if self.template and self.instruction_serializer is not None:
            fields = set(self.instruction_serializer().fields)
            missing = sorted(self.template.variables - fields)
            extra = sorted(fields - self.template.variables)
            if missing:
                errors.append(f"{label}.instruction uses {', '.join(missing)} which "
                              f"instruction_schema does not declare")
            if extra:
                errors.append(f"{label}.instruction_schema declares {', '.join(extra)} which "
                              f"the instruction does not use")

        # tools
        self.tools: dict[str, Tool] = {}
        for item in values.get("tools", ()):
            try:
                tool_obj = as_tool(item)
            except (TypeError, ValueError) as exc:
                errors.append(f"{label}.tools: {exc}")
                continue
            if tool_obj.name in self.tools:
                errors.append(f"{label}.tools has two tools named {tool_obj.name!r}")
            self.tools[tool_obj.name] = tool_obj

        # the context field must exist and be a JSONField
        context_field = values.get("context_field", "context")
        try:
            field = model._meta.get_field(context_field)
        except Exception:
            errors.append(f"{label}.context_field names {context_field!r}, but "
                          f"{model.__name__} has no such field")
        else:
            if not isinstance(field, models.JSONField):
                errors.append(f"{label}.context_field {context_field!r} must be a JSONField, "
                              f"got {type(field).__name__}")

        if errors:
            raise AgentDeclarationError("; ".join(errors))

        self.declaration = declaration
        self.client: str = values["client"]
        self.instruction: str = values["instruction"]
        self.context_field: str = context_field
        self.max_tokens: int = values["max_tokens"]
        self.temperature: float | None = temperature
        self.max_iterations: int = values["max_iterations"]
        self.token_budget: int | None = values["token_budget"]
        self.budget_strategy: str = values["budget_strategy"]
        self.tool_errors: str = values["tool_errors"]
        self.tool_timeout: float | None = values["tool_timeout"]
        self.cache: bool = values["cache"]
        self.thinking: Any = thinking
        self.viewset: Any = values["viewset"]

    @cached_property
    def output_json_schema(self) -> dict[str, Any] | None:
        """The JSON schema sent as structured output, or None for free text replies."""
        if not self.structured_output or self.output_serializer is None:
            return None
        return json_schema(self.output_serializer)

    @property
    def thinking_param(self) -> dict[str, Any] | None:
        """``thinking`` in the Messages API format."""
        if self.thinking is None:
            return None
        if self.thinking == "adaptive":
            return {"type": "adaptive"}
        if isinstance(self.thinking, int):
            return {"type": "enabled", "budget_tokens": self.thinking}
        return dict(self.thinking)

    def get_client(self) -> Client:
        from .clients.registry import get_client

        return get_client(self.provider)

    def __repr__(self) -> str:
        return f"<AgentOptions {self.model.__name__} client={self.client!r}>"


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))
