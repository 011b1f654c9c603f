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
from collections.abc import Callable, Generator
from typing import Any

from asgiref.sync import async_to_sync
from django.core.serializers.json import DjangoJSONEncoder
from django.db import close_old_connections

from .. import exceptions as exc
from ..clients.base import ModelRequest, ModelResponse, maybe_await
from ..conf import agent_settings
from ..declaration.options import AgentOptions
from ..declaration.schemas import validate
from ..declaration.tools import Halt, Tool, ToolContext
from .context import Context, add_usage, empty_usage, message_text, storable

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


@dataclasses.dataclass
class CallModel:
    request: ModelRequest
    iteration: int


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

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "tool_uses": self.tool_uses,
                "iteration": self.iteration, "events": [list(e) for e in self.events],
                "usage": self.usage, "model": self.model}

    @classmethod
    def from_dict(cls, data: dict[str, Any], decisions: dict[str, Decision]) -> ResumePoint:
        return cls(messages=data["messages"], tool_uses=data["tool_uses"],
                   decisions=decisions, iteration=int(data["iteration"]),
                   events=[(kind, payload) for kind, payload in data["events"]],
                   usage=dict(data["usage"]), model=data.get("model") or "")


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
class TurnState:
    """What a turn has done so far; read by the store when a turn fails or is cancelled."""

    iterations: int = 0
    usage: dict[str, int] = dataclasses.field(default_factory=empty_usage)
    partial_text: list[str] = dataclasses.field(default_factory=list)
    model: str = ""

    @property
    def partial(self) -> str:
        return "".join(self.partial_text)


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


def total_tokens(usage: dict[str, Any]) -> int:
    """Tokens counted against ``token_budget``: everything the model read or wrote."""
    return sum(int(usage.get(k) or 0) for k in empty_usage())


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
        raise exc.InvalidInput({"non_field_errors": ["The reply is not valid JSON."]}) from None
    assert options.output_serializer is not None  # structured_output: output_schema is set
    return validate(options.output_serializer, data)


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


class TurnEngine:
    """Runs one turn for one agent declaration."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.tool_params = [t.to_param() for t in options.tools.values()]

    # -- the turn, written once -------------------------------------------------------------

    def steps(self, context: Context, user_blocks: list[dict[str, Any]], state: TurnState,
              metadata: dict[str, Any] | None = None, resume: ResumePoint | None = None
              ) -> Generator[Any, Any, TurnResult]:
        opts = self.options
        budget = opts.token_budget
        spent_before = total_tokens(context.usage)
        if resume is None and budget and opts.budget_strategy == "halt" and \
                spent_before >= budget:
            raise exc.TokenBudgetExceeded(
                f"Session used {spent_before} of its {budget} token budget.",
                used=spent_before, budget=budget)

        retried_output = False
        retry_at = 0  # where the invalid attempt and the request to retry start in messages
        warned = spent_before >= budget * BUDGET_WARNING_RATIO if budget else True
        if resume is None:
            messages = list(context.messages)  # a new list: the stored context is never mutated
            append_user(messages, user_blocks)
            events: list[tuple[str, dict[str, Any]]] = [
                ("message.user", {"content": user_blocks})]
            first = 1
        else:  # a paused turn goes on with the decided calls (earlier events are logged)
            messages, events = list(resume.messages), []
            state.iterations, state.usage = resume.iteration, dict(resume.usage)
            state.model = resume.model
            results, halt = yield from self._run_tools(resume.tool_uses, events, messages,
                                                       resume.iteration, resume.decisions)
            append_user(messages, results)
            if halt is not None:
                output = json.loads(json.dumps(halt.value, cls=DjangoJSONEncoder))
                return TurnResult(messages=messages, output=output, usage=state.usage,
                                  iterations=state.iterations, model=state.model,
                                  stop_reason="tool_use", events=events, halted=True)
            first = resume.iteration + 1

        for iteration in range(first, opts.max_iterations + 1):
            state.iterations = iteration
            if iteration > 1:
                yield Heartbeat()
            state.partial_text.clear()
            request = ModelRequest(
                model=opts.model_name, system=context.system, messages=list(messages),
                max_tokens=opts.max_tokens, tools=self.tool_params,
                temperature=opts.temperature, output_schema=opts.output_json_schema,
                thinking=opts.thinking_param, cache=opts.cache, metadata=metadata or {},
            )
            response: ModelResponse = yield CallModel(request, iteration)
            response.content = storable(response.content)
            state.usage = add_usage(state.usage, response.usage)
            state.model = response.model or opts.model_name
            spent = spent_before + total_tokens(state.usage)
            if budget and not warned and spent >= budget * BUDGET_WARNING_RATIO:
                warned = True
                warning = {"used": spent, "budget": budget}
                events.append(("budget.warning", warning))
                yield Emit("budget.warning", warning)

            assistant = {"role": "assistant", "content": response.content}
            tool_uses = response.tool_uses
            if tool_uses and response.stop_reason == "tool_use":
                messages.append(assistant)
                events.append(("message.assistant", {"content": response.content}))
                if budget and opts.budget_strategy == "halt" and spent >= budget:
                    raise exc.TokenBudgetExceeded(
                        f"Token budget of {budget} used up inside the tool loop.",
                        used=spent, budget=budget)
                results, halt = yield from self._run_tools(tool_uses, events, messages,
                                                           iteration)
                append_user(messages, results)
                if halt is not None:
                    # the output as the JSON fields will store it (Decimal, datetime, UUID)
                    output = json.loads(json.dumps(halt.value, cls=DjangoJSONEncoder))
                    return self._result(messages, output, state, response,
                                        events, halted=True)
                continue

            try:
                output = parse_output(self.options, response.text)
            except exc.InvalidInput as error:
                if retried_output:
                    raise exc.InvalidModelOutput(
                        "The model's reply did not match output_schema after a retry.",
                        errors=error.errors) from None
                retried_output, retry_at = True, len(messages)
                events.append(("output.invalid", {"errors": error.errors}))
                # ask once more; the invalid attempt is not kept in the stored context
                messages = [*messages, assistant]
                append_user(messages, [{"type": "text", "text": (
                    "Your reply did not match the required JSON schema. Errors: "
                    f"{json.dumps(error.errors)}. Reply again with valid JSON only.")}])
                continue
            if retried_output:  # tool calls may have followed the request to retry
                del messages[retry_at:retry_at + 2]
            messages.append(assistant)
            events.append(("message.assistant", {"content": response.content}))
            return self._result(messages, output, state, response, events)
        raise exc.MaxIterationsExceeded(
            f"No final answer within max_iterations={opts.max_iterations}.")

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
                halted: bool = False) -> TurnResult:
        return TurnResult(messages=messages, output=output, usage=state.usage,
                          iterations=state.iterations, model=state.model,
                          stop_reason=response.stop_reason, events=events,
                          halted=halted)

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
                    value = client.create(effect.request, self._delta_handler(
                        state, on_progress, effect.iteration, cancelled))
                elif isinstance(effect, CallTool):
                    value = self._call_tool(effect, tool_context)
                elif isinstance(effect, Emit):
                    if on_progress is not None:
                        on_progress(effect.type, effect.data)
                elif isinstance(effect, Heartbeat) and heartbeat is not None:
                    heartbeat()
        finally:
            gen.close()

    async def arun(self, context: Context, user_blocks: list[dict[str, Any]], client: Any, *,
                   state: TurnState | None = None, tool_context: ToolContext | None = None,
                   on_progress: ProgressCallback | None = None,
                   heartbeat: Callable[[], Any] | None = None,
                   metadata: dict[str, Any] | None = None,
                   resume: ResumePoint | None = None) -> TurnResult:
        state = state or TurnState()
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
                    value = await client.acreate(
                        effect.request, self._delta_handler(state, on_progress, effect.iteration))
                elif isinstance(effect, CallTool):
                    value = await self._acall_tool(effect, tool_context)
                elif isinstance(effect, Emit):
                    if on_progress is not None:
                        await maybe_await(on_progress(effect.type, effect.data))
                elif isinstance(effect, Heartbeat) and heartbeat is not None:
                    await maybe_await(heartbeat())
        finally:
            gen.close()

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


_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _in_pool_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a tool in a pool thread, closing the thread's database connections around it as
    Django does around a request (else they stay open, and go stale, for the process's life)."""
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


def _tool_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=8,
                                                      thread_name_prefix="agent-tool")
    return _pool


def user_blocks_for(validated_input: dict[str, Any]) -> list[dict[str, Any]]:
    """The user message for a validated input: the text of ``message``, else the JSON."""
    if set(validated_input) == {"message"} and isinstance(validated_input["message"], str):
        return [{"type": "text", "text": validated_input["message"]}]
    return [{"type": "text", "text": json.dumps(validated_input, ensure_ascii=False)}]


__all__ = ["Decision", "ResumePoint", "TurnEngine", "TurnPaused", "TurnResult", "TurnState",
           "append_user", "message_text",
           "user_blocks_for"]
