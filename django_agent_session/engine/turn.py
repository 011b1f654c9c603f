"""One agent turn, with no database.

The turn is written once, as a generator that *yields* what it needs done (call the model, call
a tool, report progress) and receives the results. Two small drivers run it: :meth:`TurnEngine.run`
(sync client, sync tools) and :meth:`TurnEngine.arun` (async client on the running loop; sync
tools in the tool pool, each with its own database connection). So the sync and async paths
cannot drift apart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Generator
from datetime import datetime
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from django.core.serializers.json import DjangoJSONEncoder
from django.db import close_old_connections
from django.utils import timezone

from .. import exceptions as exc
from ..clients.base import ModelRequest, ModelResponse, maybe_await
from ..clients.registry import get_client
from ..conf import agent_settings
from ..declaration.options import AgentOptions
from ..declaration.schemas import validate
from ..declaration.tools import Halt, Tool, ToolContext
from . import attachments, compaction, telemetry
from .context import Context, add_usage, empty_usage, message_text, storable
from .hooks import Hooks, ModelCall, TurnError
from .limits import EXACT_COUNT_AT, context_window, estimate_tokens
from .pricing import add_cost, cost_of, weighted_tokens

ProgressCallback = Callable[[str, dict[str, Any]], Any]

logger = logging.getLogger("django_agent_session")


def guard_progress(on_progress: ProgressCallback | None) -> ProgressCallback | None:
    """Wrap a sync progress callback so its failure is logged, not fatal to the turn.

    Progress is a courtesy to viewers; what a turn stores must not depend on whether a
    browser, a channel layer or a queue accepted a delta. Cancellation still propagates.
    """
    if on_progress is None:
        return None

    def call(kind: str, data: dict[str, Any]) -> None:
        try:
            on_progress(kind, data)
        except Exception:
            logger.exception("on_progress failed for %r; the turn goes on", kind)
    return call


def aguard_progress(on_progress: ProgressCallback | None) -> ProgressCallback | None:
    """Async twin of :func:`guard_progress` (the callback may be sync or async)."""
    if on_progress is None:
        return None

    async def call(kind: str, data: dict[str, Any]) -> None:
        try:
            await maybe_await(on_progress(kind, data))
        except Exception:
            logger.exception("on_progress failed for %r; the turn goes on", kind)
    return call

BUDGET_WARNING_RATIO = 0.8
_COST_WARNING_RATIO = Decimal(str(BUDGET_WARNING_RATIO))


#: stop reasons after which the model has more to say in the same assistant message
CONTINUE_PROMPT = ("Your previous reply was cut off by the output token limit. Continue it "
                   "exactly where it stopped, without repeating anything.")


@dataclasses.dataclass
class CallModel:
    request: ModelRequest
    iteration: int
    #: another provider's client (a compaction model); None: the agent's
    provider: str | None = None
    #: whether its deltas are the turn's reply (viewers see them); not for a summary
    streamed: bool = True


@dataclasses.dataclass
class CountTokens:
    """Ask the client for the exact input tokens of a request (None if it cannot count)."""

    request: ModelRequest


@dataclasses.dataclass
class CallTool:
    tool: Tool
    input: dict[str, Any]
    tool_use_id: str


@dataclasses.dataclass
class Emit:
    type: str
    data: dict[str, Any]


@dataclasses.dataclass
class Heartbeat:
    """Yielded before every model call after the first, so the store can renew its lease."""


@dataclasses.dataclass
class CheckApproval:
    """Ask the driver whether a call needs a person's decision (the tool's predicate may need
    the tool context); answered with a bool."""

    tool: Tool
    input: dict[str, Any]
    tool_use_id: str


@dataclasses.dataclass
class Decision:
    """A person's decision on a paused tool call."""

    approved: bool
    input: dict[str, Any] | None = None  # an edited input (validated when decided)
    reason: str = ""


@dataclasses.dataclass
class SideTotals:
    """What a turn's side calls (compactions) spent before it paused for approval. They are
    recorded as runs when it pauses; the conversation's totals take them when it ends."""

    usage: dict[str, int] = dataclasses.field(default_factory=empty_usage)
    cost: Decimal | None = dataclasses.field(default_factory=Decimal)
    compactions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"usage": self.usage, "cost": None if self.cost is None else str(self.cost),
                "compactions": self.compactions}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SideTotals:
        if not data:  # paused before side calls were carried over
            return cls()
        cost = data.get("cost", "0")
        return cls(usage=add_usage(empty_usage(), data.get("usage") or {}),
                   cost=None if cost is None else Decimal(cost),
                   compactions=int(data.get("compactions") or 0))


@dataclasses.dataclass
class ResumePoint:
    """Where a paused turn goes on: the messages so far (ending with the assistant's tool
    calls), those calls, the decisions, and what the turn did before it paused."""

    messages: list[dict[str, Any]]
    tool_uses: list[dict[str, Any]]
    decisions: dict[str, Decision]
    iteration: int
    events: list[tuple[str, dict[str, Any]]]
    usage: dict[str, int]
    model: str = ""
    cost: Decimal | None = dataclasses.field(default_factory=Decimal)
    #: the side calls made before the pause (the turn's totals take them when it ends)
    side: SideTotals = dataclasses.field(default_factory=SideTotals)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "tool_uses": self.tool_uses,
                "iteration": self.iteration, "events": [list(e) for e in self.events],
                "usage": self.usage, "model": self.model,
                "cost": None if self.cost is None else str(self.cost),
                "side": self.side.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], decisions: dict[str, Decision]) -> ResumePoint:
        cost = data.get("cost", "0")
        return cls(messages=data["messages"], tool_uses=data["tool_uses"],
                   decisions=decisions, iteration=int(data["iteration"]),
                   events=[(kind, payload) for kind, payload in data["events"]],
                   usage=dict(data["usage"]), model=data.get("model") or "",
                   cost=None if cost is None else Decimal(cost),
                   side=SideTotals.from_dict(data.get("side")))


class TurnPaused(Exception):  # noqa: N818 (an outcome, not an error)
    """The model asked for calls that need a person's decision: the turn stops here.

    ``point`` is where it goes on (without decisions yet); ``pending`` the calls waiting,
    each ``{"tool_use_id", "name", "input"}``.
    """

    def __init__(self, point: ResumePoint, pending: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(pending)} tool call(s) await approval")
        self.point, self.pending = point, pending


@dataclasses.dataclass
class ToolOutcome:
    value: Any = None
    error: BaseException | None = None


@dataclasses.dataclass
class SideRun:
    """A model call the library made for the session besides the turn's own (a compaction
    summary, a title): recorded as a run of its own, so its tokens and cost are not lost."""

    kind: str
    model: str
    usage: dict[str, int]
    cost: Decimal | None
    output: dict[str, Any]
    started_at: datetime
    duration_ms: int
    stop_reason: str | None = None


@dataclasses.dataclass
class TurnState:
    """What a turn has done so far; read by the store when a turn fails or is cancelled."""

    iterations: int = 0
    usage: dict[str, int] = dataclasses.field(default_factory=empty_usage)
    partial_text: list[str] = dataclasses.field(default_factory=list)
    model: str = ""
    #: the turn's own model calls in USD (None once a call had no price)
    cost: Decimal | None = dataclasses.field(default_factory=Decimal)
    #: the ``stop_reason`` of the last response
    stop_reason: str | None = None
    #: compaction calls made during the turn (recorded even if the turn then fails)
    side_runs: list[SideRun] = dataclasses.field(default_factory=list)
    #: side calls made before the turn paused for approval (recorded then)
    earlier: SideTotals = dataclasses.field(default_factory=SideTotals)
    #: what the session spent that its context does not count (failed turns, titles): set
    #: by the store for an agent with a budget, which counts it
    outside: SideTotals = dataclasses.field(default_factory=SideTotals)

    @property
    def partial(self) -> str:
        return "".join(self.partial_text)

    @property
    def side(self) -> SideTotals:
        """Every side call of the turn, before a pause and since."""
        return _with_side_runs(self.earlier, self.side_runs)


@dataclasses.dataclass
class TurnResult:
    """The outcome of a successful turn: the full new message list, output, what happened."""

    messages: list[dict[str, Any]]
    output: Any
    usage: dict[str, int]
    iterations: int
    model: str
    stop_reason: str | None
    events: list[tuple[str, dict[str, Any]]]
    halted: bool = False
    #: the turn's own calls in USD (None: a model had no price)
    cost: Decimal | None = dataclasses.field(default_factory=Decimal)
    #: compaction calls made during the turn (since a pause: those before it are recorded)
    side_runs: list[SideRun] = dataclasses.field(default_factory=list)
    #: the size of system, tools and ``messages`` in tokens, as last measured (None: unknown)
    tokens: int | None = None
    #: every side call of the turn, before a pause and since
    side: SideTotals = dataclasses.field(default_factory=SideTotals)

    @property
    def compactions(self) -> int:
        """How many compactions the turn made."""
        return self.side.compactions

    @property
    def all_usage(self) -> dict[str, int]:
        """The turn's tokens and those of its side calls (what the session paid for)."""
        return add_usage(dict(self.usage), self.side.usage)

    @property
    def all_cost(self) -> Decimal | None:
        return add_cost(self.cost, self.side.cost)


def _with_side_runs(totals: SideTotals, runs: list[SideRun]) -> SideTotals:
    usage, cost, compactions = dict(totals.usage), totals.cost, totals.compactions
    for run in runs:
        usage, cost = add_usage(usage, run.usage), add_cost(cost, run.cost)
        compactions += run.kind == "compaction" and bool(run.output.get("summary"))
    return SideTotals(usage=usage, cost=cost, compactions=compactions)


def merge_content(first: list[dict[str, Any]], then: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    """One assistant message's content from a reply and its continuation (after
    ``pause_turn`` or a continued ``max_tokens``): a text continuing a text is joined to it,
    and the continuation's thinking is dropped (only a message's start may think)."""
    if not first:
        return list(then)
    merged = list(first)
    for block in then:
        kind = block.get("type")
        if kind in ("thinking", "redacted_thinking"):
            continue
        if kind == "text" and merged and merged[-1].get("type") == "text":
            merged[-1] = {**merged[-1], "text": merged[-1]["text"] + block.get("text", "")}
        else:
            merged.append(block)
    return merged


def _text_of(content: list[dict[str, Any]]) -> str:
    return "".join(b.get("text", "") for b in content if b.get("type") == "text")


@dataclasses.dataclass
class _Size:
    """The measured size in tokens of system, tools and ``messages[:upto]``."""

    tokens: int
    upto: int


def tool_result_content(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return storable(text)


def parse_output(options: AgentOptions, text: str) -> Any:
    """The validated output of a final reply (``InvalidInput`` when it does not validate)."""
    if not options.structured_output:
        return {"content": text}  # free text: nothing to validate
    try:
        data = json.loads(text)
    except ValueError:
        raise exc.InvalidInput({"non_field_errors": ["The reply is not valid JSON."]},
                               label=options.error_label("output_schema")) from None
    assert options.output_serializer is not None  # structured_output: output_schema is set
    return validate(options.output_serializer, data, label=options.error_label("output_schema"))


def _without(messages: list[dict[str, Any]], attempt: dict[str, Any], ask: dict[str, Any]
             ) -> list[dict[str, Any]]:
    """``messages`` less an invalid attempt and the block that asked to retry (wherever a
    compaction left them; a message left empty goes too)."""
    kept = []
    for message in messages:
        if message is attempt:
            continue
        blocks = message.get("content")
        if isinstance(blocks, list) and any(block is ask for block in blocks):
            blocks = [block for block in blocks if block is not ask]
            if not blocks:
                continue
            message = {**message, "content": blocks}
        kept.append(message)
    return kept


def append_user(messages: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> None:
    """Append a user message, merging into a trailing user message (keeps roles alternating)."""
    if messages and messages[-1].get("role") == "user":
        last = messages[-1]
        content = last["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        messages[-1] = {**last, "content": [*content, *blocks]}
    else:
        messages.append({"role": "user", "content": list(blocks)})


def _measured(response: ModelResponse, upto: int) -> _Size | None:
    """The size of a request and its reply as the API counted them (None: not reported)."""
    usage = response.usage
    read = sum(int(usage.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                                "cache_read_input_tokens"))
    if not read:
        return None
    return _Size(read + int(usage.get("output_tokens") or 0), upto)


def _grown(size: _Size | None, messages: list[dict[str, Any]]) -> _Size | None:
    """``size`` grown by an estimate of the messages added after it (a client that reports
    no usage, like the offline ones): the history is never estimated twice."""
    if size is None or size.upto > len(messages):
        return None
    return _Size(size.tokens + estimate_tokens(None, messages[size.upto:]), len(messages))


class _Budgets:
    """``token_budget`` and ``cost_budget`` of one turn: checked before it, warned about at
    80 %, and (``budget_strategy = "halt"``) enforced between calls of the tool loop."""

    def __init__(self, options: AgentOptions, context: Context, outside: SideTotals) -> None:
        self.options = options
        self.tokens_before = weighted_tokens(add_usage(dict(context.usage), outside.usage))
        self.cost_before = add_cost(context.cost, outside.cost)
        token_budget, cost_budget = options.token_budget, options.cost_budget
        self.token_warned = (self.tokens_before >= token_budget * BUDGET_WARNING_RATIO
                             if token_budget else True)
        self.cost_warned = (self.cost_before is None
                            or self.cost_before >= cost_budget * _COST_WARNING_RATIO
                            if cost_budget is not None else True)

    def spent(self, state: TurnState) -> tuple[int, Decimal | None]:
        side = state.side
        tokens = self.tokens_before + weighted_tokens(add_usage(state.usage, side.usage))
        return tokens, add_cost(add_cost(self.cost_before, state.cost), side.cost)

    def check_before_turn(self) -> None:
        opts = self.options
        if opts.budget_strategy != "halt":
            return
        if opts.token_budget and self.tokens_before >= opts.token_budget:
            raise exc.TokenBudgetExceeded(
                f"Session used {self.tokens_before} of its {opts.token_budget} token budget.",
                used=self.tokens_before, budget=opts.token_budget)
        if opts.cost_budget is not None and self.cost_before is not None \
                and self.cost_before >= opts.cost_budget:
            raise exc.CostBudgetExceeded(
                f"Session cost ${self.cost_before} of its ${opts.cost_budget} budget.",
                cost=str(self.cost_before), budget=str(opts.cost_budget))

    def check_in_loop(self, state: TurnState) -> None:
        opts = self.options
        if opts.budget_strategy != "halt":
            return
        tokens, cost = self.spent(state)
        if opts.token_budget and tokens >= opts.token_budget:
            raise exc.TokenBudgetExceeded(
                f"Token budget of {opts.token_budget} used up inside the tool loop.",
                used=tokens, budget=opts.token_budget)
        if opts.cost_budget is not None and cost is not None and cost >= opts.cost_budget:
            raise exc.CostBudgetExceeded(
                f"Cost budget of ${opts.cost_budget} used up inside the tool loop.",
                cost=str(cost), budget=str(opts.cost_budget))

    def account(self, response: ModelResponse, state: TurnState,
                events: list[tuple[str, dict[str, Any]]]) -> Generator[Any, Any, None]:
        """Add a response's tokens and cost to the turn; warn once per budget at 80 %."""
        opts = self.options
        state.usage = add_usage(state.usage, response.usage)
        state.model = response.model or opts.model_name
        state.cost = add_cost(state.cost, cost_of(state.model, response.usage))
        tokens, cost = self.spent(state)
        if not self.token_warned and opts.token_budget and \
                tokens >= opts.token_budget * BUDGET_WARNING_RATIO:
            self.token_warned = True
            warning: dict[str, Any] = {"used": tokens, "budget": opts.token_budget}
            events.append(("budget.warning", warning))
            yield Emit("budget.warning", warning)
        if not self.cost_warned and opts.cost_budget is not None and cost is not None and \
                cost >= opts.cost_budget * _COST_WARNING_RATIO:
            self.cost_warned = True
            warning = {"cost": str(cost), "cost_budget": str(opts.cost_budget)}
            events.append(("budget.warning", warning))
            yield Emit("budget.warning", warning)


class TurnEngine:
    """Runs one turn for one agent declaration."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.hooks = Hooks(options)

    @property
    def tool_params(self) -> list[dict[str, Any]]:
        """The tool definitions sent to the model (an MCP toolset's, once listed)."""
        return self.options.tools.params()

    # -- the turn, written once -------------------------------------------------------------

    def steps(self, context: Context, user_blocks: list[dict[str, Any]], state: TurnState,
              metadata: dict[str, Any] | None = None, resume: ResumePoint | None = None
              ) -> Generator[Any, Any, TurnResult]:
        opts = self.options
        budgets = _Budgets(opts, context, state.outside)
        if resume is None:
            budgets.check_before_turn()

        retried_output = False
        # the invalid attempt and the request to retry (by identity: a compaction during the
        # retry moves them, and may fold the request into the summary's message)
        retry_marks: tuple[dict[str, Any], dict[str, Any]] | None = None
        size: _Size | None = None
        if resume is None:
            messages = list(context.messages)  # a new list: the stored context is never mutated
            if context.tokens is not None:
                # a trailing user message (a halted turn's results) takes the new blocks in:
                # it is estimated again, whole
                trailing = bool(messages) and messages[-1].get("role") == "user"
                size = _Size(context.tokens, len(messages) - trailing)
            append_user(messages, user_blocks)
            events: list[tuple[str, dict[str, Any]]] = [
                ("message.user", {"content": user_blocks})]
            first = 1
        else:  # a paused turn goes on with the decided calls (earlier events are logged)
            messages, events = list(resume.messages), []
            state.iterations, state.usage = resume.iteration, dict(resume.usage)
            state.model, state.cost, state.earlier = resume.model, resume.cost, resume.side
            results, halt = yield from self._run_tools(resume.tool_uses, events, messages,
                                                       resume.iteration, resume.decisions)
            append_user(messages, results)
            if halt is not None:
                output = json.loads(json.dumps(halt.value, cls=DjangoJSONEncoder))
                return TurnResult(messages=messages, output=output, usage=state.usage,
                                  iterations=state.iterations, model=state.model,
                                  stop_reason="tool_use", events=events, halted=True,
                                  cost=state.cost, side=state.side)
            first = resume.iteration + 1

        carry: list[dict[str, Any]] = []  # an assistant message the model goes on with
        continue_prompt = False  # the carried reply was cut at max_tokens: ask to go on
        continuations = 0
        for iteration in range(first, opts.max_iterations + 1):
            state.iterations = iteration
            if iteration > 1:
                yield Heartbeat()
            state.partial_text.clear()
            sent = list(messages)
            if carry:
                sent.append({"role": "assistant", "content": carry})
                if continue_prompt:
                    sent.append({"role": "user", "content": [
                        {"type": "text", "text": CONTINUE_PROMPT}]})
            request = self._request(context, sent, metadata)
            if not carry:  # a continuation adds only what the model itself just wrote
                request, messages, size = yield from self._fit(
                    request, messages, context, size, state, events, metadata,
                    boundary=iteration == first and resume is None)
            response: ModelResponse = yield CallModel(request, iteration)
            response.content = storable(response.content)
            yield from budgets.account(response, state, events)
            server_compacted = any(b.get("type") == "compaction" for b in response.content)
            if server_compacted:
                yield from self._compacted_by_server(response, state, events)
            stop = state.stop_reason = response.stop_reason
            content = merge_content(carry, response.content)
            carry, continue_prompt = [], False

            if stop == "pause_turn":  # a server tool paused a long turn: send it back as is
                carry = content
                continue
            if stop in ("max_tokens", "model_context_window_exceeded"):
                cut_tool = any(b.get("type") == "tool_use" for b in response.content)
                if stop == "max_tokens" and opts.on_max_tokens == "continue" and \
                        continuations < opts.max_continuations and not cut_tool:
                    continuations += 1
                    carry, continue_prompt = content, True
                    events.append(("reply.continued", {"continuation": continuations}))
                    continue
                state.partial_text[:] = [_text_of(content)]
                raise exc.ReplyIncomplete(
                    ("The reply was cut off at max_tokens"
                     + (f" after {continuations} continuation(s)" if continuations else "")
                     + (" inside a tool call" if cut_tool else "")
                     + f". Raise {opts.model.__name__}.Agent.max_tokens"
                     + ("" if opts.on_max_tokens == "continue"
                        else ' or set on_max_tokens = "continue"') + "."
                     if stop == "max_tokens" else
                     "The reply was cut off at the model's context window."),
                    stop_reason=stop, continuations=continuations)
            if stop == "refusal":
                state.partial_text[:] = [_text_of(content)]
                raise exc.ModelRefused("The model declined to answer.", stop_reason=stop)

            assistant = {"role": "assistant", "content": content}
            tool_uses = [b for b in content if b.get("type") == "tool_use"]
            if tool_uses and stop == "tool_use":
                messages.append(assistant)
                size = _measured(response, len(messages)) or _grown(size, messages)
                if server_compacted:
                    messages, size = compaction.after_server_compaction(messages), None
                events.append(("message.assistant", {"content": content}))
                budgets.check_in_loop(state)
                results, halt = yield from self._run_tools(tool_uses, events, messages,
                                                           iteration)
                append_user(messages, results)
                if halt is not None:
                    # the output as the JSON fields will store it (Decimal, datetime, UUID)
                    output = json.loads(json.dumps(halt.value, cls=DjangoJSONEncoder))
                    return self._result(messages, output, state, response, events, size,
                                        halted=True)
                continue

            try:
                output = parse_output(self.options, _text_of(content))
            except exc.InvalidInput as error:
                if retried_output:
                    raise exc.InvalidModelOutput(
                        "The model's reply did not match output_schema after a retry.",
                        errors=error.errors) from None
                retried_output = True
                events.append(("output.invalid", {"errors": error.errors}))
                # ask once more; the invalid attempt is not kept in the stored context
                ask = {"type": "text", "text": (
                    "Your reply did not match the required JSON schema. Errors: "
                    f"{json.dumps(error.errors)}. Reply again with valid JSON only.")}
                retry_marks = (assistant, ask)
                messages = [*messages, assistant, {"role": "user", "content": [ask]}]
                continue
            if retry_marks is not None:  # tool calls may have followed the request to retry
                messages = _without(messages, *retry_marks)
                size = None  # measured with the attempt that is no longer there
                messages.append(assistant)
            else:
                messages.append(assistant)
                size = _measured(response, len(messages)) or _grown(size, messages)
            if server_compacted:
                messages, size = compaction.after_server_compaction(messages), None
            events.append(("message.assistant", {"content": content}))
            return self._result(messages, output, state, response, events, size)
        raise exc.MaxIterationsExceeded(
            f"No final answer within max_iterations={opts.max_iterations}.")

    def _request(self, context: Context, messages: list[dict[str, Any]],
                 metadata: dict[str, Any] | None) -> ModelRequest:
        opts = self.options
        settings, server = opts.compaction, None
        if settings is not None and settings.strategy == "server":
            server = {"trigger": int(settings.threshold * context_window(opts.model_name)),
                      "instructions": settings.instructions}
        return ModelRequest(
            model=opts.model_name, system=context.system, messages=messages,
            max_tokens=opts.max_tokens, tools=self.tool_params,
            temperature=opts.temperature, output_schema=opts.output_json_schema,
            thinking=opts.thinking_param, cache=opts.cache, metadata=metadata or {},
            compaction=server,
        )

    # -- context limits and compaction --------------------------------------------------------

    def _fit(self, request: ModelRequest, messages: list[dict[str, Any]], context: Context,
             size: _Size | None, state: TurnState, events: list[tuple[str, dict[str, Any]]],
             metadata: dict[str, Any] | None, *, boundary: bool
             ) -> Generator[Any, Any, tuple[ModelRequest, list[dict[str, Any]], _Size | None]]:
        """Make sure ``request`` fits the model's context window: compact first if the agent
        may (past its threshold, only at a turn boundary, so the cached prefix survives
        between compactions), else fail typed. Returns the request, messages and size."""
        opts = self.options
        window = context_window(opts.model_name)
        limit = window - opts.max_tokens  # the reply needs its room in the window too
        if size is not None and size.upto <= len(messages):
            tokens = size.tokens + estimate_tokens(None, messages[size.upto:])
            exact = tokens > limit
        else:  # not measured yet: a generous estimate, checked against the API near the limit
            tokens = estimate_tokens(context.system, messages, self.tool_params)
            exact = tokens >= EXACT_COUNT_AT * limit
        settings = opts.compaction
        if settings is not None and settings.strategy == "server":
            settings = None  # the API compacts past the trigger by itself
        trigger = settings.threshold * window if settings is not None else None
        if exact:
            counted = yield CountTokens(request)
            if counted is not None:
                tokens = int(counted)
                size = _Size(tokens, len(messages))
        over = tokens > limit
        if settings is not None and (over or (boundary and trigger is not None
                                              and tokens >= trigger)):
            compacted = yield from self._compact(messages, context, tokens, state, events,
                                                 metadata)
            if compacted is not None:
                messages = compacted
                request = dataclasses.replace(request, messages=list(messages))
                tokens = estimate_tokens(context.system, messages, self.tool_params)
                size = None
                if tokens > limit:
                    counted = yield CountTokens(request)
                    if counted is not None:
                        tokens = int(counted)
                        size = _Size(tokens, len(messages))
                over = tokens > limit
        if size is None or size.upto != len(messages):
            size = _Size(tokens, len(messages))  # estimated: grown turn by turn from here
        if over:
            raise exc.ContextWindowExceeded(
                f"The conversation needs about {tokens} input tokens, but "
                f"{opts.model_name} takes {limit} (a {window}-token window less max_tokens "
                f"{opts.max_tokens}). "
                + ("Compaction could not shorten it enough; reset the session or start a "
                   "new one." if settings is not None else
                   f"Set {opts.model.__name__}.Agent.compaction = True, or reset the session."),
                tokens=tokens, window=window, limit=limit)
        return request, messages, size

    def _compacted_by_server(self, response: ModelResponse, state: TurnState,
                             events: list[tuple[str, dict[str, Any]]]
                             ) -> Generator[Any, Any, None]:
        """Record a compaction the API did (its own billing line) as one made here is."""
        usage = response.compaction_usage or {}
        used = response.model or self.options.model_name
        block = next((b for b in response.content if b.get("type") == "compaction"), {})
        summary = block.get("content") or ""
        run = SideRun(kind="compaction", model=used, usage=dict(usage),
                      cost=cost_of(used, usage),
                      output={"summary": summary, "strategy": "server"},
                      started_at=timezone.now(), duration_ms=0, stop_reason="compaction")
        state.side_runs.append(run)
        data = {"strategy": "server", "summary": summary, "model": used,
                "cost": None if run.cost is None else str(run.cost)}
        events.append(("context.compacted", data))
        yield Emit("context.compacted", data)

    def _compact(self, messages: list[dict[str, Any]], context: Context, tokens: int,
                 state: TurnState, events: list[tuple[str, dict[str, Any]]],
                 metadata: dict[str, Any] | None
                 ) -> Generator[Any, Any, list[dict[str, Any]] | None]:
        """Replace all but the last turns with a summary; None if there is nothing older."""
        opts = self.options
        settings = opts.compaction
        assert settings is not None
        cut = compaction.split(messages, settings.keep_turns)
        if cut is None:
            return None
        provider, model_name = (settings.model.split(":", 1) if settings.model
                                else (None, opts.model_name))
        request = compaction.summary_request(settings, model_name, cut.old, metadata)
        started, clock = timezone.now(), time.monotonic()
        response: ModelResponse = yield CallModel(request, state.iterations, provider=provider,
                                                  streamed=False)
        summary = storable(response.text.strip())
        used = response.model or model_name
        run = SideRun(kind="compaction", model=used, usage=dict(response.usage),
                      cost=cost_of(used, response.usage),
                      output={"summary": summary, "replaced": len(cut.old),
                              "kept": len(cut.recent), "tokens_before": tokens},
                      started_at=started, duration_ms=int((time.monotonic() - clock) * 1000),
                      stop_reason=response.stop_reason)
        state.side_runs.append(run)
        if not summary:
            logger.warning("%s: the compaction model returned no summary; not compacted",
                           opts.model.__name__)
            return None
        compacted = compaction.compacted(summary, cut.recent)
        data = {"replaced": len(cut.old), "kept": len(cut.recent), "tokens_before": tokens,
                "summary": summary, "model": used,
                "cost": None if run.cost is None else str(run.cost)}
        events.append(("context.compacted", data))
        yield Emit("context.compacted", data)
        return compacted

    @staticmethod
    def _announce(block: dict[str, Any], events: list[tuple[str, dict[str, Any]]]
                  ) -> Generator[Any, Any, None]:
        call = {"id": block["id"], "name": block["name"], "input": block.get("input", {})}
        events.append(("tool.call", call))
        yield Emit("tool.call", call)

    def _pending(self, tool_uses: list[dict[str, Any]]
                 ) -> Generator[Any, Any, list[dict[str, Any]]]:
        """The calls of a response that wait for a person's decision."""
        pending = []
        for block in tool_uses:
            tool = self.options.tools.get(block["name"])
            if tool is None or tool.requires_approval is False:
                continue
            try:
                kwargs = validate(tool.serializer, block.get("input") or {})
            except exc.InvalidInput:
                continue  # answered with the validation error, like any bad call
            if (yield CheckApproval(tool, kwargs, block["id"])):
                pending.append({"tool_use_id": block["id"], "name": tool.name,
                                "input": block.get("input") or {}})
        return pending

    def _run_tools(self, tool_uses: list[dict[str, Any]],
                   events: list[tuple[str, dict[str, Any]]], messages: list[dict[str, Any]],
                   iteration: int, decisions: dict[str, Decision] | None = None
                   ) -> Generator[Any, Any, tuple[list[dict[str, Any]], Halt | None]]:
        """Run one response's tool calls in order. If some need approval and are undecided,
        the turn pauses before any of them runs (those that need none are held with them)."""
        announce = decisions is None  # a resumed response's calls were announced already
        if decisions is None:
            pending = yield from self._pending(tool_uses)
            if pending:
                for block in tool_uses:
                    yield from self._announce(block, events)
                for call in pending:
                    events.append(("tool.approval_requested", call))
                    yield Emit("tool.approval_requested", call)
                raise TurnPaused(ResumePoint(
                    messages=list(messages), tool_uses=tool_uses, decisions={},
                    iteration=iteration, events=list(events), usage={}, model=""), pending)
            decisions = {}
        results: list[dict[str, Any]] = []
        halt: Halt | None = None
        for block in tool_uses:
            if announce:
                yield from self._announce(block, events)
            tool = self.options.tools.get(block["name"])
            decision = decisions.get(block["id"])
            is_error = True
            if tool is None:
                content = f"Unknown tool {block['name']!r}."
            elif decision is not None and not decision.approved:
                content = storable(f"Not run: the call was rejected. {decision.reason}".strip())
            else:
                raw = decision.input if decision is not None and decision.input is not None \
                    else block.get("input") or {}
                try:
                    kwargs = validate(tool.serializer, raw,
                                      message=f"Invalid input for tool {tool.name}.")
                except exc.InvalidInput as error:
                    content = f"Invalid input: {json.dumps(error.errors)}"
                else:
                    outcome: ToolOutcome = yield CallTool(tool, kwargs, block["id"])
                    if outcome.error is not None:
                        if self.options.tool_errors == "halt":
                            raise exc.ToolFailed(
                                f"Tool {tool.name} failed: {outcome.error!r}",
                                tool=tool.name) from outcome.error
                        content = storable(f"{tool.name} failed: "
                                           f"{type(outcome.error).__name__}: {outcome.error}")
                    elif isinstance(outcome.value, Halt):
                        halt = outcome.value
                        is_error, content = False, tool_result_content(halt.value)
                    else:
                        is_error, content = False, tool_result_content(outcome.value)
            result = {"type": "tool_result", "tool_use_id": block["id"], "content": content}
            if is_error:
                result["is_error"] = True
            results.append(result)
            data = {"id": block["id"], "name": block["name"], "content": content,
                    "is_error": is_error}
            events.append(("tool.result", data))
            yield Emit("tool.result", data)
            if halt is not None:
                break
        # every tool_use must be answered, also those after a halting one
        answered = {r["tool_use_id"] for r in results}
        for block in tool_uses:
            if block["id"] not in answered:
                results.append({"type": "tool_result", "tool_use_id": block["id"],
                                "content": "Not run: the turn was halted.", "is_error": True})
        return results, halt

    def _result(self, messages: list[dict[str, Any]], output: Any, state: TurnState,
                response: ModelResponse, events: list[tuple[str, dict[str, Any]]],
                size: _Size | None, halted: bool = False) -> TurnResult:
        return TurnResult(messages=messages, output=output, usage=state.usage,
                          iterations=state.iterations, model=state.model,
                          stop_reason=response.stop_reason, events=events,
                          halted=halted, cost=state.cost, side_runs=list(state.side_runs),
                          tokens=size.tokens if size is not None and size.upto == len(messages)
                          else None, side=state.side)

    # -- drivers -----------------------------------------------------------------------------

    def _delta_handler(self, state: TurnState, on_progress: ProgressCallback | None,
                       iteration: int, cancelled: Callable[[], bool] | None = None
                       ) -> Callable[[dict[str, Any]], Any] | None:
        """Stream only when someone listens; the partial text is kept for failure reports.
        A sync turn is also told of a cancel between deltas (``cancelled``)."""
        if on_progress is None:
            return None

        def on_delta(delta: dict[str, Any]) -> Any:
            if cancelled is not None and cancelled():
                raise exc.TurnCancelled("The run was cancelled.")
            if delta["kind"] == "text":
                state.partial_text.append(storable(delta["text"]))
            return on_progress("delta", {**delta, "iteration": iteration})
        return on_delta

    def run(self, context: Context, user_blocks: list[dict[str, Any]], client: Any, *,
            state: TurnState | None = None, tool_context: ToolContext | None = None,
            on_progress: ProgressCallback | None = None,
            heartbeat: Callable[[], Any] | None = None,
            metadata: dict[str, Any] | None = None,
            cancelled: Callable[[], bool] | None = None,
            resume: ResumePoint | None = None) -> TurnResult:
        """Drive the turn synchronously. ``cancelled`` is asked before every step (a model
        call, a tool) and between streamed deltas: a thread cannot be interrupted, so a cancel
        takes effect there (a non-streamed model call ends first)."""
        state = state or TurnState()
        self.options.tools.refresh()  # MCP toolsets list their tools (bounded by timeouts)
        gen = self.steps(context, user_blocks, state, metadata, resume)
        value: Any = None
        try:
            while True:
                try:
                    effect = gen.send(value)
                except StopIteration as stop:
                    return stop.value
                value = None
                if cancelled is not None and cancelled():
                    raise exc.TurnCancelled("The run was cancelled.")
                if isinstance(effect, CheckApproval):
                    value = self._needs_approval(effect, tool_context)
                    continue
                if isinstance(effect, CallModel):
                    value = self._call_model(effect, client, tool_context, self._delta_handler(
                        state, on_progress if effect.streamed else None, effect.iteration,
                        cancelled))
                elif isinstance(effect, CountTokens):
                    count = getattr(client, "count_tokens", None)
                    value = count(effect.request) if count is not None else None
                elif isinstance(effect, CallTool):
                    with telemetry.tool_call(effect.tool.name, effect.tool_use_id, effect.input,
                                             _session_id(tool_context)) as span:
                        value = self._call_tool(effect, tool_context)
                        span.outcome(value.value, value.error)
                elif isinstance(effect, Emit):
                    if on_progress is not None:
                        on_progress(effect.type, effect.data)
                elif isinstance(effect, Heartbeat) and heartbeat is not None:
                    heartbeat()
        except Exception as error:
            if self.hooks.on_error and not isinstance(error, TurnPaused):
                self.hooks.failed(self._turn_error(error, tool_context))
            raise
        finally:
            gen.close()

    async def arun(self, context: Context, user_blocks: list[dict[str, Any]], client: Any, *,
                   state: TurnState | None = None, tool_context: ToolContext | None = None,
                   on_progress: ProgressCallback | None = None,
                   heartbeat: Callable[[], Any] | None = None,
                   metadata: dict[str, Any] | None = None,
                   resume: ResumePoint | None = None) -> TurnResult:
        state = state or TurnState()
        await self.options.tools.arefresh()
        gen = self.steps(context, user_blocks, state, metadata, resume)
        value: Any = None
        try:
            while True:
                try:
                    effect = gen.send(value)
                except StopIteration as stop:
                    return stop.value
                value = None
                if isinstance(effect, CheckApproval):  # a predicate may read the database
                    value = await asyncio.get_running_loop().run_in_executor(
                        _tool_pool(), functools.partial(
                            _in_pool_thread, self._needs_approval, effect, tool_context))
                    continue
                if isinstance(effect, CallModel):
                    value = await self._acall_model(
                        effect, client, tool_context, self._delta_handler(
                            state, on_progress if effect.streamed else None, effect.iteration))
                elif isinstance(effect, CountTokens):
                    count = getattr(client, "acount_tokens", None)
                    value = await count(effect.request) if count is not None else None
                elif isinstance(effect, CallTool):
                    with telemetry.tool_call(effect.tool.name, effect.tool_use_id, effect.input,
                                             _session_id(tool_context)) as span:
                        value = await self._acall_tool(effect, tool_context)
                        span.outcome(value.value, value.error)
                elif isinstance(effect, Emit):
                    if on_progress is not None:
                        await maybe_await(on_progress(effect.type, effect.data))
                elif isinstance(effect, Heartbeat) and heartbeat is not None:
                    await maybe_await(heartbeat())
        except Exception as error:
            if self.hooks.on_error and not isinstance(error, TurnPaused):
                await self.hooks.afailed(self._turn_error(error, tool_context), _offload)
            raise
        finally:
            gen.close()

    # -- model calls, with their hooks and spans ---------------------------------------------

    def _model_call(self, effect: CallModel, tool_context: ToolContext | None) -> ModelCall:
        return ModelCall(request=effect.request, model=self.options.model,
                         session=getattr(tool_context, "session", None),
                         run_id=getattr(tool_context, "run_id", None),
                         iteration=effect.iteration)

    def _turn_error(self, error: BaseException, tool_context: ToolContext | None) -> TurnError:
        return TurnError(error=error, model=self.options.model,
                         session=getattr(tool_context, "session", None),
                         run_id=getattr(tool_context, "run_id", None))

    def _call_model(self, effect: CallModel, client: Any, tool_context: ToolContext | None,
                    on_delta: Callable[[dict[str, Any]], Any] | None) -> ModelResponse:
        """One model call: ``before_call`` hooks (the turn's own calls only), the call in a
        ``chat`` span, then ``after_call`` hooks."""
        hooked = effect.streamed and (self.hooks.before_call or self.hooks.after_call)
        call = self._model_call(effect, tool_context) if hooked else None
        request = effect.request
        if call is not None and self.hooks.before_call:
            request = self.hooks.before(call)
        with telemetry.model_call(effect.provider or self.options.provider, request,
                                  _session_id(tool_context)) as span:
            response: ModelResponse = _client_for(effect, client).create(request, on_delta)
            span.response(response)
        if call is not None and self.hooks.after_call:
            self.hooks.after(dataclasses.replace(call, request=request, response=response))
        return response

    async def _acall_model(self, effect: CallModel, client: Any,
                           tool_context: ToolContext | None,
                           on_delta: Callable[[dict[str, Any]], Any] | None) -> ModelResponse:
        """Async twin of :meth:`_call_model`."""
        hooked = effect.streamed and (self.hooks.before_call or self.hooks.after_call)
        call = self._model_call(effect, tool_context) if hooked else None
        request = effect.request
        if call is not None and self.hooks.before_call:
            request = await self.hooks.abefore(call, _offload)
        with telemetry.model_call(effect.provider or self.options.provider, request,
                                  _session_id(tool_context)) as span:
            response: ModelResponse = await _client_for(effect, client).acreate(request,
                                                                                 on_delta)
            span.response(response)
        if call is not None and self.hooks.after_call:
            await self.hooks.aafter(dataclasses.replace(call, request=request,
                                                        response=response), _offload)
        return response

    @staticmethod
    def _needs_approval(check: CheckApproval, tool_context: ToolContext | None) -> bool:
        if check.tool.requires_approval is True:
            return True
        ctx = (tool_context or ToolContext(None, None)).for_call(check.tool_use_id)
        return check.tool.needs_approval(ctx, check.input)

    def _timeout(self, tool: Tool, *, declared_only: bool = False) -> float | None:
        """The tool's timeout: its own, the agent's, else ``TOOL_TIMEOUT`` (unless
        ``declared_only``)."""
        default = None if declared_only else agent_settings.TOOL_TIMEOUT
        for value in (tool.timeout, self.options.tool_timeout, default):
            if value is not None:
                return float(value)
        return None

    @staticmethod
    def _args(call: CallTool, tool_context: ToolContext | None) -> tuple[tuple[Any, ...], dict]:
        if call.tool.takes_context:
            ctx = (tool_context or ToolContext(None, None)).for_call(call.tool_use_id)
            return (ctx,), call.input
        return (), call.input

    def _call_tool(self, call: CallTool, tool_context: ToolContext | None) -> ToolOutcome:
        args, kwargs = self._args(call, tool_context)
        try:
            if call.tool.is_async:
                async def bounded() -> Any:
                    return await asyncio.wait_for(call.tool.fn(*args, **kwargs),
                                                  self._timeout(call.tool))
                return ToolOutcome(async_to_sync(bounded)())
            # a sync tool of a sync turn runs in the caller's thread, inside the caller's
            # transaction, unless the tool or the agent declares a timeout (a pool thread
            # then, which can be given up on; no thread can be interrupted)
            timeout = self._timeout(call.tool, declared_only=True)
            if timeout is None:
                return ToolOutcome(call.tool.fn(*args, **kwargs))
            future = _tool_pool().submit(_in_pool_thread, call.tool.fn, *args, **kwargs)
            try:
                return ToolOutcome(future.result(timeout=timeout))
            except concurrent.futures.TimeoutError:
                raise TimeoutError(f"{call.tool.name} timed out after {timeout}s") from None
        except Exception as error:  # a tool's failure is data for the model (or a halt)
            return ToolOutcome(error=error)

    async def _acall_tool(self, call: CallTool, tool_context: ToolContext | None) -> ToolOutcome:
        args, kwargs = self._args(call, tool_context)
        timeout = self._timeout(call.tool)
        try:
            if call.tool.is_async:
                coro = call.tool.fn(*args, **kwargs)
            else:
                # in the tool pool, with its own database connection: never on the one thread
                # every database_sync_to_async call of the process (other sessions' turns,
                # commits) waits for
                coro = asyncio.get_running_loop().run_in_executor(
                    _tool_pool(), functools.partial(_in_pool_thread, call.tool.fn, *args,
                                                    **kwargs))
            try:
                return ToolOutcome(await asyncio.wait_for(coro, timeout))
            except asyncio.TimeoutError:
                raise TimeoutError(f"{call.tool.name} timed out after {timeout}s") from None
        except Exception as error:
            return ToolOutcome(error=error)


def _client_for(call: CallModel, client: Any) -> Any:
    """The client of a call: the turn's, or another provider's (a compaction model)."""
    return client if call.provider is None else get_client(call.provider)


_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _in_pool_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a tool in a pool thread, closing the thread's database connections around it as
    Django does around a request (else they stay open, and go stale, for the process's life)."""
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


def _offload(fn: Callable[..., Any], arg: Any) -> Any:
    """Run a sync hook in the tool pool (its own database connection), off the loop."""
    return asyncio.get_running_loop().run_in_executor(
        _tool_pool(), functools.partial(_in_pool_thread, fn, arg))


def _session_id(tool_context: ToolContext | None) -> Any:
    return getattr(getattr(tool_context, "session", None), "pk", None)


def _tool_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                      thread_name_prefix="agent-tool")
    return _pool


def user_blocks_for(validated_input: dict[str, Any]) -> list[dict[str, Any]]:
    """The user message for a validated input: its attachments' reference blocks
    (``engine/attachments.py``), then the text of ``message``, else the rest as JSON."""
    validated_input, files = attachments.split_input(validated_input)
    if set(validated_input) == {"message"} and isinstance(validated_input["message"], str):
        return [*files, {"type": "text", "text": validated_input["message"]}]
    if files and not validated_input:
        return files
    return [*files, {"type": "text", "text": json.dumps(validated_input, ensure_ascii=False)}]


__all__ = ["Decision", "ResumePoint", "SideRun", "TurnEngine", "TurnPaused", "TurnResult",
           "TurnState", "merge_content",
           "append_user", "message_text",
           "user_blocks_for"]
