"""The inner ``class Agent:`` of a session model, parsed and validated in one place.

Modelled on Django's ``Meta``, django-filter's ``FilterSetOptions`` and django-tables2's
``TableOptions``: every option is stated once in :attr:`AgentOptions.OPTIONS` (default, allowed
types or values, the description errors quote, one parse method). Each is read with a default, so
``class Agent(Parent.Agent)`` inherits; leftover public names are unknown options; every problem
is collected and raised once, naming ``Model.Agent.option``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any, ClassVar

from django.core.exceptions import FieldDoesNotExist
from django.db import models
from rest_framework import fields as f

from ..clients.base import Client
from ..clients.registry import get_client, get_client_class
from ..exceptions import AgentDeclarationError, InvalidConfig
from .attachments import AttachmentsField
from .mcp import MCPToolset
from .schemas import SerializerClass, json_schema, to_serializer
from .template import InstructionTemplate
from .tools import Tool, ToolSet, as_tool

_REQUIRED: Any = object()  # the "default" of an option the declaration must give

DEFAULT_INPUT = {"message": f.CharField(trim_whitespace=False),
                 "attachments": AttachmentsField()}
DEFAULT_OUTPUT = {"content": f.CharField(allow_blank=True, trim_whitespace=False)}
SCHEMA = "a Serializer class or dict of fields"
#: what a schema option validates, as its errors name it ("ChatAgent input: ...")
SCHEMA_LABELS = {"instruction_schema": "instruction args", "input_schema": "input",
                 "output_schema": "output"}

#: the points ``Agent.hooks`` may name (engine/hooks.py says what each may change)
HOOK_NAMES = ("before_call", "after_render", "after_call", "on_error")

#: what a conversation's configuration may set (``start_session(config=)``, a factory's
#: ``config``): the model, instruction args, a subset of the tools, and these limits, each
#: checked as the ``Agent`` option of the same name
CONFIG_LIMITS = ("max_tokens", "max_iterations", "max_continuations", "temperature",
                 "token_budget", "cost_budget", "tool_timeout")
CONFIG_KEYS = ("model", "instruction_args", "tools", *CONFIG_LIMITS)


@dataclass(frozen=True)
class Option:
    """One ``Agent`` option: everything the parser and its error messages know about it.

    ``valid`` checks the value once its type is right (its failure quotes ``description`` too);
    ``parse`` stores the value and what derives from it and returns further problems. Without
    ``parse`` the value is stored as the attribute of the same name.
    """

    name: str
    default: Any
    types: tuple[type, ...]
    description: str
    parse: Callable[[AgentOptions, Any], list[str]] | None = None
    valid: Callable[[Any], bool] | None = None

    def check(self, value: Any) -> str | None:
        """What is wrong with ``value`` before parsing (missing, its type, its value), or None."""
        if value is _REQUIRED:
            return f"{self.name} is required ({self.description})"
        # bool is an int subclass, but True is no token count
        if not isinstance(value, self.types) or (isinstance(value, bool) and bool not in self.types):
            return f"{self.name} must be {self.description}, got {type(value).__name__}"
        if self.valid is not None and not self.valid(value):
            return f"{self.name} must be {self.description}, got {value!r}"
        return None

    def apply(self, options: AgentOptions, value: Any) -> list[str]:
        """Store ``value`` on ``options`` through ``parse``; return its problems."""
        if self.parse is None:
            setattr(options, self.name, value)
            return []
        return self.parse(options, value)


@dataclass(frozen=True)
class Compaction:
    """``Agent.compaction``, parsed: when and how older turns are replaced by a summary."""

    #: compact once the conversation uses this share of the model's context window
    threshold: float = 0.7
    #: the most recent turns kept word for word (at least one is always kept)
    keep_turns: int = 2
    #: the ``"provider:model"`` that writes the summary (None: the agent's own client)
    model: str | None = None
    #: extra instructions for the summary (what to keep: names, decisions, open tasks...)
    instructions: str = ""
    #: ``"summarize"``: a model call of this library writes the summary (any model, any
    #: provider); ``"server"``: the Messages API compacts by itself (its beta
    #: ``compact_20260112`` context edit; Anthropic models that support it)
    strategy: str = "summarize"

    KEYS: ClassVar[frozenset[str]] = frozenset({"threshold", "keep_turns", "model",
                                                "instructions", "strategy"})
    STRATEGIES: ClassVar[tuple[str, ...]] = ("summarize", "server")


def _positive(value: int) -> bool:
    return value > 0


def _choice(name: str, *choices: str) -> Option:
    """An option taking one of ``choices`` (the first is the default), stated once."""
    return Option(name, choices[0], (str,), " or ".join(f'"{c}"' for c in choices),
                  valid=frozenset(choices).__contains__)


class AgentOptions:
    """The validated ``Agent`` declaration of one concrete session model (``Model.agent_options``).

    The attributes below are the options (and what is compiled from them) that the engine, the
    store, the API and the admin read.
    """

    model: type[models.Model]
    declaration: type
    client: str
    provider: str
    model_name: str
    instruction: str
    template: InstructionTemplate | None
    instruction_serializer: SerializerClass | None
    input_serializer: SerializerClass | None
    output_serializer: SerializerClass | None
    structured_output: bool
    context_field: str
    max_tokens: int
    temperature: float | None
    tools: ToolSet
    max_iterations: int
    token_budget: int | None
    cost_budget: Decimal | None
    budget_strategy: str
    on_max_tokens: str
    max_continuations: int
    compaction: Compaction | None
    title: str
    title_model: str | None
    tool_errors: str
    multitask: str
    approval_timeout: float | None
    tool_timeout: float | None
    cache: bool
    thinking: Any
    viewset: Any
    hooks: dict[str, tuple[Callable[..., Any], ...]]
    #: the conversation's configuration these options were made for ({}: the declaration's)
    config: dict[str, Any] = {}

    def __init__(self, declaration: type | None, model: type[models.Model]) -> None:
        if declaration is None:
            raise AgentDeclarationError(
                f"{model.__name__} subclasses AgentSessionModel but declares no inner "
                f"'class Agent:' (at least Agent.client is required)."
            )
        self.model, self.declaration = model, declaration
        label = f"{model.__name__}.Agent"
        problems = [f"{label}.{problem}" for problem in self._parse(declaration)]
        known = {option.name for option in self.OPTIONS}
        unknown = sorted(name for name in dir(declaration)
                         if not name.startswith("_") and name not in known)
        if unknown:
            problems.insert(0, f"{label} has unknown option(s): {', '.join(unknown)}")
        if problems:
            raise AgentDeclarationError("; ".join(problems))

    def _parse(self, declaration: type) -> Iterator[str]:
        """Read, check and parse every option in table order, yielding each problem."""
        for option in self.OPTIONS:
            value = getattr(declaration, option.name, option.default)
            if problem := option.check(value):
                yield problem
                value = option.default  # reported once: later options see the default
            if value is not _REQUIRED:
                yield from option.apply(self, value)

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

    def error_label(self, option: str) -> str:
        """What the validation errors of schema ``option`` name: ``"ChatAgent input"``."""
        return f"{self.model.__name__} {SCHEMA_LABELS[option]}"

    def get_client(self) -> Client:
        return get_client(self.provider)

    def __repr__(self) -> str:
        return f"<AgentOptions {self.model.__name__} client={self.client!r}>"

    # -- one parse method per option: store it, derive from it, return its problems ---------

    def _parse_client(self, value: str) -> list[str]:
        """The provider picks the client; the model id is sent to the API."""
        self.client = value
        self.provider, _, self.model_name = value.partition(":")
        if self.provider and self.model_name:
            return []
        return [f'client must be "provider:model", got {value!r}']

    def _parse_instruction(self, value: str) -> list[str]:
        """Compiled now so that template code fails at import, not at the first turn."""
        self.instruction, self.template = value, None
        try:
            self.template = InstructionTemplate(value, label=self.error_label("instruction_schema"))
        except ValueError as exc:
            return [f"instruction: {exc}"]
        return []

    def _parse_instruction_schema(self, value: type | dict[str, Any] | None) -> list[str]:
        """The instruction's arguments, which must be exactly the template's slots."""
        self.instruction_serializer, problems = self._serializer("instruction_schema", value)
        if self.template is None or self.instruction_serializer is None:
            return problems
        fields = set(self.instruction_serializer().fields)
        if missing := sorted(self.template.variables - fields):
            problems.append(f"instruction uses {', '.join(missing)} which "
                            f"instruction_schema does not declare")
        if extra := sorted(fields - self.template.variables):
            problems.append(f"instruction_schema declares {', '.join(extra)} which "
                            f"the instruction does not use")
        return problems

    def _parse_input_schema(self, value: type | dict[str, Any] | None) -> list[str]:
        self.input_serializer, problems = self._serializer("input_schema", value or DEFAULT_INPUT)
        return problems

    def _parse_output_schema(self, value: type | dict[str, Any] | None) -> list[str]:
        """Declaring one asks the model for structured output; otherwise replies are text."""
        self.structured_output = value is not None
        self.output_serializer, problems = self._serializer("output_schema",
                                                            value or DEFAULT_OUTPUT)
        return problems

    def _serializer(self, option: str, spec: Any) -> tuple[SerializerClass | None, list[str]]:
        """``spec`` as a serializer class named after the model and option (None if empty)."""
        if not spec:
            return None, []
        try:
            return to_serializer(spec, f"{self.model.__name__}{_camel(option)}"), []
        except TypeError as exc:
            return None, [f"{option} {exc}"]

    def _parse_context_field(self, value: str) -> list[str]:
        """The context is stored as JSON, so the named field must be a JSONField."""
        self.context_field = value
        try:
            field = self.model._meta.get_field(value)
        except FieldDoesNotExist:
            return [f"context_field names {value!r}, but {self.model.__name__} has no such field"]
        if not isinstance(field, models.JSONField):
            return [f"context_field {value!r} must be a JSONField, got {type(field).__name__}"]
        return []

    def _parse_temperature(self, value: float | None) -> list[str]:
        self.temperature = value
        if value is None or 0 <= value <= 1:
            return []
        return [f"temperature must be between 0 and 1, got {value}"]

    def _parse_tools(self, value: list[Any] | tuple[Any, ...]) -> list[str]:
        """Functions become :class:`Tool` objects, keyed by the name the model calls them by;
        an :class:`MCPToolset`'s tools join them when first listed (before a turn)."""
        tools: dict[str, Tool] = {}
        toolsets: list[MCPToolset] = []
        problems: list[str] = []
        for item in value:
            if isinstance(item, MCPToolset):
                problems.extend(f"tools: {problem}" for problem in item.problems())
                toolsets.append(item)
                continue
            try:
                tool = as_tool(item)
            except (TypeError, ValueError) as exc:
                problems.append(f"tools: {exc}")
                continue
            if tool.name in tools:
                problems.append(f"tools has two tools named {tool.name!r}")
            tools[tool.name] = tool
        self.tools = ToolSet(tools, toolsets)
        return problems

    def _parse_token_budget(self, value: int | None) -> list[str]:
        self.token_budget = value
        return [] if value is None or value > 0 else ["token_budget must be positive"]

    def _parse_cost_budget(self, value: Any) -> list[str]:
        """USD, as a Decimal (a float is read through its string, so 0.1 is 0.1)."""
        self.cost_budget = None
        if value is None:
            return []
        try:
            budget = Decimal(str(value))
        except InvalidOperation:
            return [f"cost_budget must be an amount in USD, got {value!r}"]
        if not budget.is_finite() or budget <= 0:
            return [f"cost_budget must be a positive amount in USD, got {value!r}"]
        self.cost_budget = budget
        return []

    def _parse_compaction(self, value: bool | dict[str, Any] | None) -> list[str]:
        """``True`` for the defaults of :class:`Compaction`, a dict to change some."""
        self.compaction = None
        if not value:
            return []
        spec = {} if value is True else dict(value)
        if unknown := sorted(set(spec) - Compaction.KEYS):
            return [f"compaction has unknown key(s) {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(Compaction.KEYS))})"]
        problems = []
        threshold = spec.get("threshold", Compaction.threshold)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0 < threshold < 1:
            problems.append(f"compaction threshold must be a share of the context window "
                            f"between 0 and 1, got {threshold!r}")
        keep = spec.get("keep_turns", Compaction.keep_turns)
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            problems.append(f"compaction keep_turns must be a positive int, got {keep!r}")
        model = spec.get("model")
        if model is not None and (not isinstance(model, str) or ":" not in model):
            problems.append(f'compaction model must be "provider:model", got {model!r}')
        instructions = spec.get("instructions", "")
        if not isinstance(instructions, str):
            problems.append("compaction instructions must be a string")
        strategy = spec.get("strategy", Compaction.strategy)
        if strategy not in Compaction.STRATEGIES:
            problems.append(f'compaction strategy must be "summarize" or "server", '
                            f"got {strategy!r}")
        elif strategy == "server" and self.provider != "anthropic":
            problems.append('compaction strategy "server" needs an "anthropic:" client')
        if not problems:
            self.compaction = Compaction(threshold=float(threshold), keep_turns=keep,
                                         model=model, instructions=instructions,
                                         strategy=strategy)
        return problems

    def _parse_on_max_tokens(self, value: str) -> list[str]:
        """A structured reply cannot be continued: the model would start a new JSON document
        after the cut one (``output_schema`` is parsed earlier in the table)."""
        self.on_max_tokens = value
        if value == "continue" and self.structured_output:
            return ['on_max_tokens = "continue" cannot be used with output_schema (a JSON reply '
                    "cut at max_tokens cannot be continued); raise max_tokens instead"]
        return []

    def _parse_title_model(self, value: str | None) -> list[str]:
        self.title_model = value
        if value is None or ":" in value:
            return []
        return [f'title_model must be "provider:model", got {value!r}']

    def _parse_thinking(self, value: str | int | dict[str, Any] | None) -> list[str]:
        """A token budget must fit under ``max_tokens`` (parsed earlier in the table)."""
        self.thinking = value
        if isinstance(value, str) and value != "adaptive":
            return [f'thinking must be "adaptive", an int or a dict, got {value!r}']
        if isinstance(value, int) and not 1024 <= value < self.max_tokens:
            return ["thinking budget must be >= 1024 and less than max_tokens"]
        return []

    def _parse_hooks(self, value: dict[str, Any] | None) -> list[str]:
        """Each hook point's callables, as a tuple (a single callable is a tuple of one)."""
        self.hooks = {}
        if not value:
            return []
        problems = []
        if unknown := sorted(str(name) for name in set(value) - set(HOOK_NAMES)):
            problems.append(f"hooks has unknown hook(s) {', '.join(unknown)} "
                            f"(known: {', '.join(HOOK_NAMES)})")
        for name in HOOK_NAMES:
            given = value.get(name)
            if given is None:
                continue
            fns = tuple(given) if isinstance(given, (list, tuple)) else (given,)
            if bad := [fn for fn in fns if not callable(fn)]:
                problems.append(f"hooks {name} must be a callable or a list of callables, "
                                f"got {bad[0]!r}")
                continue
            self.hooks[name] = fns
        return problems

    # -- a conversation's configuration ----------------------------------------------------

    def configured(self, config: Mapping[str, Any] | None) -> AgentOptions:
        """These options as one conversation's ``config`` changes them (a copy; ``self`` when
        there is nothing to change). Every key is checked as the ``Agent`` option it
        overrides; all problems are raised at once as :class:`InvalidConfig`, naming the
        model and each key. The copy's ``config`` is the configuration as JSON, to store."""
        if not config:
            return self
        label = f"{self.model.__name__} config"
        if not isinstance(config, Mapping):
            raise InvalidConfig({"non_field_errors": ["Expected an object."]},
                                "Invalid conversation config.", label=label)
        options = copy.copy(self)
        errors: dict[str, list[str]] = {}
        if unknown := sorted(str(key) for key in config if key not in CONFIG_KEYS):
            errors["non_field_errors"] = [f"Unknown key(s) {', '.join(unknown)}; known: "
                                          f"{', '.join(CONFIG_KEYS)}."]
        stored: dict[str, Any] = {}
        for key in CONFIG_KEYS:
            if key not in config:
                continue
            problems = getattr(options, f"_configure_{key}", None)
            value = config[key]
            found = problems(value) if problems is not None else \
                options._configure_limit(key, value)
            if found:
                errors[key] = found
            else:
                stored[key] = str(value) if isinstance(value, Decimal) else \
                    list(value) if isinstance(value, tuple) else value
        if "max_tokens" in stored and not errors and \
                (problems := options._parse_thinking(options.thinking)):
            errors["max_tokens"] = [f"{problem} (Agent.thinking)" for problem in problems]
        if errors:
            raise InvalidConfig(errors, "Invalid conversation config.", label=label)
        options.config = stored
        return options

    def _configure_model(self, value: Any) -> list[str]:
        """A model id of the agent's provider, or ``"provider:model"``."""
        if not isinstance(value, str) or not value.strip(":"):
            return [f'Must be a model id or "provider:model", got {value!r}.']
        client = value if ":" in value else f"{self.provider}:{value}"
        problems = self._parse_client(client)
        if problems:
            return [f'Must be a model id or "provider:model", got {value!r}.']
        try:  # a known provider (its client is made at the first turn)
            get_client_class(self.provider)
        except Exception as error:  # ImproperlyConfigured, or the class cannot be imported
            return [str(error)]
        return []

    def _configure_instruction_args(self, value: Any) -> list[str]:
        """Checked here for shape and names; their values when the session is created
        (merged over the caller's args), by ``instruction_schema``."""
        if not isinstance(value, Mapping):
            return ["Expected an object."]
        if self.instruction_serializer is not None:
            known = set(self.instruction_serializer().fields)
            if unknown := sorted(str(key) for key in value if key not in known):
                return [f"Unknown instruction arg(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(known))}."]
        return []

    def _configure_tools(self, value: Any) -> list[str]:
        """A subset of the agent's tools, by name (an MCP toolset's tools cannot be checked
        before their server is listed: a name of one is accepted when the agent has any)."""
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return ["Expected a list of tool names."]
        known = set(self.tools)
        if missing := sorted(set(value) - known) if not self.tools.sources else []:
            return [f"Not a tool of {self.model.__name__}: {', '.join(missing)}; its tools: "
                    f"{', '.join(sorted(known)) or '(none)'}."]
        self.tools = ToolSubset(self.tools, value)
        return []

    def _configure_limit(self, key: str, value: Any) -> list[str]:
        option = next(option for option in self.OPTIONS if option.name == key)
        problem = option.check(value)
        problems = [problem] if problem else option.apply(self, value)
        return [_sentence(p.removeprefix(f"{key} ")) for p in problems]

    #: Every option, once. Order matters where a parse method reads an earlier option.
    OPTIONS: ClassVar[tuple[Option, ...]] = (
        Option("client", _REQUIRED, (str,), 'a "provider:model" string', _parse_client),
        Option("instruction", "", (str,), "a string", _parse_instruction),
        Option("instruction_schema", None, (type, dict, type(None)), SCHEMA,
               _parse_instruction_schema),
        Option("input_schema", None, (type, dict, type(None)), SCHEMA, _parse_input_schema),
        Option("output_schema", None, (type, dict, type(None)), SCHEMA, _parse_output_schema),
        Option("context_field", "context", (str,), "a field name", _parse_context_field),
        Option("max_tokens", 1024, (int,), "a positive int", valid=_positive),
        Option("temperature", None, (int, float, type(None)),
               "a number between 0 and 1, or None", _parse_temperature),
        Option("tools", (), (list, tuple), "a list or tuple of functions", _parse_tools),
        Option("max_iterations", 10, (int,), "a positive int", valid=_positive),
        Option("token_budget", None, (int, type(None)), "a positive int or None",
               _parse_token_budget),
        Option("cost_budget", None, (int, float, str, Decimal, type(None)),
               "an amount in USD (a Decimal, str or number) or None", _parse_cost_budget),
        _choice("budget_strategy", "halt", "warn"),
        Option("on_max_tokens", "incomplete", (str,), '"incomplete" or "continue"',
               _parse_on_max_tokens, valid=frozenset(("incomplete", "continue")).__contains__),
        Option("max_continuations", 2, (int,), "a positive int", valid=_positive),
        Option("compaction", None, (bool, dict, type(None)),
               "True, a dict of compaction settings, or None", _parse_compaction),
        _choice("title", "first_message", "model"),
        Option("title_model", None, (str, type(None)), '"provider:model" or None',
               _parse_title_model),
        _choice("tool_errors", "continue", "halt"),
        _choice("multitask", "enqueue", "reject", "interrupt", "rollback"),
        Option("approval_timeout", None, (int, float, type(None)),
               "seconds or None", valid=lambda v: v is None or v > 0),
        Option("tool_timeout", None, (int, float, type(None)), "seconds or None"),
        Option("cache", True, (bool,), "a bool"),
        Option("thinking", None, (str, int, dict, type(None)),
               '"adaptive", a token budget, or a dict', _parse_thinking),
        Option("viewset", None, (type, str, type(None)), "a ViewSet class or dotted path"),
        Option("hooks", None, (dict, type(None)),
               f"a dict of hook name ({', '.join(HOOK_NAMES)}) to callables, or None",
               _parse_hooks),
    )


class ToolSubset(ToolSet):
    """The tools of a conversation configured with ``tools``: those of ``base`` named in
    ``names``, in ``base``'s order (its MCP tools too, once found)."""

    def __init__(self, base: ToolSet, names: Any) -> None:  # noqa: D107 (no ToolSet state)
        self.base, self.names = base, frozenset(names)
        self.sources = base.sources

    def _picked(self) -> dict[str, Tool]:
        return {name: tool for name, tool in self.base.items() if name in self.names}

    def __getitem__(self, name: str) -> Tool:
        if name not in self.names:
            raise KeyError(name)
        return self.base[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._picked())

    def __len__(self) -> int:
        return len(self._picked())

    def get(self, name: str, default: Any = None) -> Any:
        return self.base.get(name, default) if name in self.names else default

    def values(self) -> Any:
        return self._picked().values()

    def params(self) -> list[dict[str, Any]]:
        return [param for param in self.base.params() if param.get("name") in self.names]

    def refresh(self) -> None:
        self.base.refresh()

    async def arefresh(self) -> None:
        await self.base.arefresh()

    def __repr__(self) -> str:
        return f"<ToolSubset {', '.join(self) or '(none)'}>"


def _sentence(text: str) -> str:
    """An option problem as a field error: capitalized, ending with a period."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else f"{text}."


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))
