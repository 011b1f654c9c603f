"""The Anthropic provider, over the official ``anthropic`` SDK.

The sync path uses ``anthropic.Anthropic`` and the async path ``anthropic.AsyncAnthropic``
directly (no thread hop for the network call). Streaming uses the SDK's own
``messages.stream`` helper, which also assembles the final message; retries with back-off and
``retry-after`` are the SDK's. SDK errors become the library's typed ``ModelError``s.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx2

from .. import exceptions as exc
from ..conf import agent_settings
from .base import (
    AsyncDeltaCallback,
    DeltaCallback,
    ModelRequest,
    ModelResponse,
    maybe_await,
)
from .tracing import tracer_provider_set

_DELTA_KINDS = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
    "input_json_delta": ("tool_input", "partial_json"),
}


def client_options(*, traced: bool = True) -> dict[str, Any]:
    """SDK constructor options from ``AGENT_SESSION["ANTHROPIC"]`` (``None`` = SDK default).

    Not ``traced`` (no tracer provider set yet): the SDK's own spans are off, as they could
    record nothing (:mod:`.tracing`); a client is built again once a provider is set.
    """
    conf = agent_settings.ANTHROPIC
    options: dict[str, Any] = {
        "api_key": conf.get("API_KEY"),
        "base_url": conf.get("BASE_URL"),
        "timeout": conf.get("TIMEOUT"),
        "max_retries": conf.get("MAX_RETRIES"),
        "open_telemetry": None if traced else False,
    }
    return {k: v for k, v in options.items() if v is not None}


def request_params(request: ModelRequest) -> dict[str, Any]:
    """``ModelRequest`` -> keyword arguments of ``messages.create``/``messages.stream``."""
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": request.messages,
    }
    if request.system:
        params["system"] = request.system
    if request.tools:
        params["tools"] = request.tools
    if request.cache:
        params.update(cache_breakpoints(request))
    if request.output_schema is not None:
        params["output_config"] = {
            "format": {"type": "json_schema", "schema": request.output_schema}
        }
    if request.thinking:
        params["thinking"] = request.thinking
    if request.temperature is not None:
        # SDK 2.x no longer lists ``temperature`` as a keyword; the API still reads it
        params["extra_body"] = {"temperature": request.temperature}
    if request.metadata.get("user_id"):
        params["metadata"] = {"user_id": str(request.metadata["user_id"])}
    if request.compaction:
        edit: dict[str, Any] = {"type": COMPACT_EDIT, "trigger": {
            "type": "input_tokens", "value": int(request.compaction["trigger"])}}
        if request.compaction.get("instructions"):
            edit["instructions"] = request.compaction["instructions"]
        params["context_management"] = {"edits": [edit]}
        params["betas"] = [COMPACT_BETA]
    return params


_EPHEMERAL = {"type": "ephemeral"}

#: the Messages API's server-side compaction (a beta in the installed SDK)
COMPACT_BETA = "compact-2026-01-12"
COMPACT_EDIT = "compact_20260112"


def cache_breakpoints(request: ModelRequest) -> dict[str, Any]:
    """``system``, ``tools`` and ``messages`` with prompt-cache breakpoints for a chat.

    The API caches the prefix up to each ``cache_control`` block (tools, then system, then
    messages) and looks back at most 20 blocks from a breakpoint for an earlier cached
    prefix. So: one on the system prompt and one on the last tool (they survive a compaction,
    which rewrites the messages), one on the last user message (the whole conversation, read
    back by the next call) and one on the user message before it (a tool loop may add more
    than 20 blocks between two calls). Four is the API's maximum. The stored messages are
    not changed: the marked ones are copies.
    """
    params: dict[str, Any] = {}
    if request.system:
        params["system"] = [{"type": "text", "text": request.system,
                             "cache_control": _EPHEMERAL}]
    if request.tools:
        params["tools"] = [*request.tools[:-1],
                           {**request.tools[-1], "cache_control": _EPHEMERAL}]
    messages = list(request.messages)
    marked = 0
    for index in range(len(messages) - 1, -1, -1):
        if marked == 2:
            break
        message = messages[index]
        if message.get("role") != "user":
            continue
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) \
            else list(content or [])
        if not blocks or not _cacheable(blocks[-1]):
            continue
        blocks[-1] = {**blocks[-1], "cache_control": _EPHEMERAL}
        messages[index] = {**message, "content": blocks}
        marked += 1
    params["messages"] = messages
    return params


def _cacheable(block: dict[str, Any]) -> bool:
    """Whether a block may carry ``cache_control`` (an empty text block may not)."""
    if block.get("type") == "text":
        return bool(block.get("text"))
    return block.get("type") in ("tool_result", "image", "document")


def count_params(request: ModelRequest) -> dict[str, Any]:
    """``ModelRequest`` -> keyword arguments of ``messages.count_tokens``."""
    params = request_params(request)
    return {key: params[key] for key in ("model", "messages", "system", "tools", "thinking",
                                         "output_config") if key in params}


def block_to_param(block: Any) -> dict[str, Any]:
    """An SDK content block as a JSON param, kept exactly as received (thinking signatures too)."""
    return block.model_dump(mode="json", exclude_none=True)


def _tokens(usage: Any) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
        "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
    }


def to_response(message: Any, request_id: str | None) -> ModelResponse:
    usage = message.usage
    # a server-side compaction is billed apart: its tokens are not in the top-level usage
    compactions = [_tokens(item) for item in getattr(usage, "iterations", None) or ()
                   if getattr(item, "type", None) == "compaction"]
    compaction_usage = None
    if compactions:
        compaction_usage = {key: sum(c[key] for c in compactions) for key in compactions[0]}
    return ModelResponse(
        content=[block_to_param(b) for b in message.content],
        stop_reason=message.stop_reason,
        usage=_tokens(usage),
        model=message.model,
        request_id=request_id,
        compaction_usage=compaction_usage,
    )


def _delta(event: Any) -> dict[str, Any] | None:
    if event.type != "content_block_delta":
        return None
    spec = _DELTA_KINDS.get(event.delta.type)
    if spec is None:
        return None
    kind, attr = spec
    return {"kind": kind, "index": event.index, "text": getattr(event.delta, attr)}


def translate_error(error: BaseException) -> exc.ModelError:
    """Map an SDK (or transport) error to the library's typed ``ModelError``."""
    request_id = getattr(error, "request_id", None)
    status = getattr(error, "status_code", None)
    message = str(getattr(error, "message", None) or error)
    kwargs = {"request_id": request_id, "status_code": status}
    if isinstance(error, anthropic.APITimeoutError):
        return exc.ModelTimeout(message, **kwargs)
    if isinstance(error, anthropic.APIConnectionError):
        return exc.ModelConnectionError(message, **kwargs)
    if isinstance(error, anthropic.RateLimitError):
        return exc.ModelRateLimited(message, **kwargs)
    if isinstance(error, anthropic.OverloadedError):
        return exc.ModelOverloaded(message, **kwargs)
    if isinstance(error, anthropic.InternalServerError):
        return exc.ModelUnavailable(message, **kwargs)
    if isinstance(error, (anthropic.AuthenticationError, anthropic.PermissionDeniedError)):
        return exc.ModelAuthenticationError(message, **kwargs)
    if isinstance(error, (anthropic.BadRequestError, anthropic.NotFoundError,
                          anthropic.UnprocessableEntityError)):
        return exc.ModelBadRequest(message, **kwargs)
    # an `error` event inside a 200 SSE stream arrives as a bare APIStatusError
    by_type = _BY_ERROR_TYPE.get(getattr(error, "type", None) or "")
    if by_type is not None and isinstance(error, anthropic.APIStatusError):
        return by_type(message, **kwargs)
    if isinstance(error, (httpx2.TransportError, anthropic.APIResponseValidationError)):
        # a stream cut mid-reply surfaces as a transport error from the body iterator
        return exc.ModelConnectionError(message or type(error).__name__, **kwargs)
    return exc.ModelError(message, **kwargs)


_BY_ERROR_TYPE: dict[str, type[exc.ModelError]] = {
    "overloaded_error": exc.ModelOverloaded,
    "rate_limit_error": exc.ModelRateLimited,
    "api_error": exc.ModelUnavailable,
    "timeout_error": exc.ModelTimeout,
}

#: a 200 whose body is neither the API's JSON nor its SSE (a garbled answer, a broken proxy)
#: fails while the SDK decodes it: a model error like any other, not an internal one
_UNDECODABLE = (json.JSONDecodeError, UnicodeDecodeError)
_SDK_ERRORS = (anthropic.AnthropicError, httpx2.HTTPError, *_UNDECODABLE)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except exc.AgentSessionError:
        raise
    except _SDK_ERRORS as error:
        raise translate_error(error) from error


def _final(get: Any) -> Any:
    """The stream's final message; a stream that carried no message at all (a 200 of garbage)
    makes the SDK fail an ``assert``: a model error."""
    try:
        return get()
    except AssertionError as error:
        raise exc.ModelError("The model's stream ended without a message.") from error


async def _afinal(get: Any) -> Any:
    try:
        return await get()
    except AssertionError as error:
        raise exc.ModelError("The model's stream ended without a message.") from error


def _checked(sdk: Any) -> Any:
    """Fail early, and typed, when no credentials are configured at all."""
    if not any(getattr(sdk, name, None) for name in ("api_key", "auth_token", "credentials")):
        raise exc.ModelAuthenticationError(
            "No Anthropic API key: set ANTHROPIC_API_KEY or AGENT_SESSION['ANTHROPIC']['API_KEY'].")
    return sdk


class AnthropicClient:
    """Client for ``"anthropic:<model>"`` agents."""

    def __init__(self) -> None:
        # each SDK client with whether it was built traced (tracer_provider_set() then)
        self._sync: tuple[bool, anthropic.Anthropic] | None = None
        # one AsyncAnthropic per event loop: its connection pool is bound to the loop
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[bool, anthropic.AsyncAnthropic]]
        self._async = weakref.WeakKeyDictionary()

    @property
    def sdk(self) -> anthropic.Anthropic:
        traced = tracer_provider_set()
        if self._sync is None or self._sync[0] != traced:
            self._sync = (traced, _checked(anthropic.Anthropic(**client_options(traced=traced))))
        return self._sync[1]

    @property
    def async_sdk(self) -> anthropic.AsyncAnthropic:
        loop = asyncio.get_running_loop()
        traced = tracer_provider_set()
        built = self._async.get(loop)
        if built is None or built[0] != traced:
            built = self._async[loop] = (traced, _checked(
                anthropic.AsyncAnthropic(**client_options(traced=traced))))
        return built[1]

    def count_tokens(self, request: ModelRequest) -> int:
        """The exact input tokens of ``request`` (the API's token counting endpoint)."""
        with _translated():
            return int(self.sdk.messages.count_tokens(**count_params(request)).input_tokens)

    async def acount_tokens(self, request: ModelRequest) -> int:
        with _translated():
            counted = await self.async_sdk.messages.count_tokens(**count_params(request))
            return int(counted.input_tokens)

    def create(self, request: ModelRequest, on_delta: DeltaCallback | None = None
               ) -> ModelResponse:
        params = request_params(request)
        # server-side compaction is a beta: the same call on the SDK's beta resource
        messages = self.sdk.beta.messages if "betas" in params else self.sdk.messages
        with _translated():
            if on_delta is None:
                message = messages.create(**params)
                return to_response(message, getattr(message, "_request_id", None))
            with messages.stream(**params) as stream:
                for event in stream:
                    delta = _delta(event)
                    if delta is not None:
                        on_delta(delta)
                message = _final(stream.get_final_message)
                return to_response(message, stream.request_id)

    async def acreate(self, request: ModelRequest, on_delta: AsyncDeltaCallback | None = None
                      ) -> ModelResponse:
        params = request_params(request)
        sdk = self.async_sdk
        messages = sdk.beta.messages if "betas" in params else sdk.messages
        with _translated():
            if on_delta is None:
                message = await messages.create(**params)
                return to_response(message, getattr(message, "_request_id", None))
            # leaving the block (also on cancellation) closes the upstream HTTP stream
            async with messages.stream(**params) as stream:
                async for event in stream:
                    delta = _delta(event)
                    if delta is not None:
                        await maybe_await(on_delta(delta))
                message = await _afinal(stream.get_final_message)
                return to_response(message, stream.request_id)
