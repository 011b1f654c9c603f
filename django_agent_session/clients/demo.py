"""An offline client with deterministic, clearly labelled replies.

The example project uses it when ``ANTHROPIC_API_KEY`` is unset, so everything (streaming,
tools, structured output, persistence) can be tried without a network or a key.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import AsyncDeltaCallback, DeltaCallback, ModelRequest, ModelResponse
from .streaming import example_for_schema, stream_async, stream_sync

LABEL = "[offline demo]"


class DemoClient:
    """Echoes the last user message; calls a tool when the message names one.

    ``/lookup_order 1001`` calls ``lookup_order`` with ``1001``; a message starting with the
    first word of a tool's name calls it too, with the first number in the message (``refund
    order 1001`` calls ``refund_order``), so a call that needs approval can be shown offline.
    """

    #: seconds between streamed words, so streaming is visible in a browser
    delay: float = 0.04

    def reply(self, request: ModelRequest) -> ModelResponse:
        last = request.messages[-1] if request.messages else {"content": []}
        content = last.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        results = [b for b in blocks if b.get("type") == "tool_result"]
        said = " ".join(b.get("text", "") for b in blocks if b.get("type") == "text").strip()
        usage = {"input_tokens": sum(len(json.dumps(m)) for m in request.messages) // 4,
                 "output_tokens": 0}
        if results:
            text = f"{LABEL} The tool answered: {_result_text(results[0])}"
        else:
            tool, arg = _named_tool(request.tools, said)
            if tool is not None:
                args = _tool_args(tool["input_schema"], arg)
                usage["output_tokens"] = 20
                return ModelResponse(
                    content=[{"type": "text", "text": f"{LABEL} Calling {tool['name']}."},
                             {"type": "tool_use", "id": f"toolu_demo_{len(request.messages)}",
                              "name": tool["name"], "input": args}],
                    stop_reason="tool_use", usage=usage, model=request.model)
            text = (f"{LABEL} You said: {said!r}. This reply comes from the offline demo "
                    f"client; set ANTHROPIC_API_KEY to talk to Claude.")
        if request.output_schema is not None:
            text = json.dumps(example_for_schema(request.output_schema, text))
        usage["output_tokens"] = max(1, len(text) // 4)
        return ModelResponse(content=[{"type": "text", "text": text}], usage=usage,
                             model=request.model)

    def create(self, request: ModelRequest, on_delta: DeltaCallback | None = None
               ) -> ModelResponse:
        response = self.reply(request)
        stream_sync(response, on_delta, self.delay if on_delta else 0.0)
        return response

    async def acreate(self, request: ModelRequest, on_delta: AsyncDeltaCallback | None = None
                      ) -> ModelResponse:
        response = self.reply(request)
        await stream_async(response, on_delta, self.delay if on_delta else 0.0)
        return response


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(c.get("text", "") for c in content)
    return str(content)


def _named_tool(tools: list[dict[str, Any]], said: str
                ) -> tuple[dict[str, Any] | None, str]:
    """The tool the message asks for and its argument text: ``/name arg``, or a message whose
    first word starts the tool's name (``refund 1001`` for ``refund_order``: its first number)."""
    for tool in tools:
        if f"/{tool['name']}" in said:
            return tool, said.split(f"/{tool['name']}", 1)[1].strip()
    first = re.match(r"\W*([A-Za-z]+)", said)
    if first is not None:
        word = first.group(1).lower()
        for tool in tools:
            if tool["name"].lower().split("_")[0] == word:
                number = re.search(r"\d+", said)
                rest = said[first.end():].strip()
                return tool, number.group(0) if number else rest
    return None, ""


def _tool_args(schema: dict[str, Any], arg: str) -> dict[str, Any]:
    required = schema.get("required") or list(schema.get("properties", {}))[:1]
    args: dict[str, Any] = {}
    for name in required:
        kind = schema["properties"][name].get("type")
        args[name] = int(arg) if kind == "integer" and arg.isdigit() else arg
    return args
