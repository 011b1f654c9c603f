"""How big a request is, and how big it may be: context windows and a cheap token estimate.

A turn must never send a request that cannot fit the model's context window: the API would
refuse it after the whole history was uploaded, every turn, forever. Before a call the engine
estimates the request's size from its characters (no call, no tokenizer), and only when that
estimate comes near the window asks the API's token counting endpoint for the exact number.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..conf import agent_settings
from .attachments import reference_tokens

#: input tokens a model accepts (the ``max_input_tokens`` of the Models API), by model id
#: prefix; ``"default"`` for any other model. ``AGENT_SESSION["CONTEXT_WINDOWS"]`` overrides.
CONTEXT_WINDOWS: dict[str, int] = {
    "default": 200_000,
    "claude-opus-4": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-haiku-4": 200_000,
    "claude-3": 200_000,
}

#: characters per token assumed by the estimate: lower than the ~4 of English prose, so the
#: estimate errs on the large side (code, JSON and other languages use more tokens)
CHARS_PER_TOKEN = 3.0

#: an estimate at or above this share of the window is checked with the exact count
EXACT_COUNT_AT = 0.6


def context_window(model: str) -> int:
    """The context window of ``model`` in tokens (longest matching prefix, else default)."""
    table = {**CONTEXT_WINDOWS, **(agent_settings.CONTEXT_WINDOWS or {})}
    best = max((key for key in table if key != "default" and model.startswith(key)),
               key=len, default="default")
    return int(table[best])


def estimate_tokens(system: Any, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> int:
    """A deliberately generous token estimate of a request, from its JSON size (and, for
    the attachments, whose stored JSON is a reference, from their size in pixels or pages)."""
    size = len(json.dumps([system, messages, tools or []], separators=(",", ":"),
                          ensure_ascii=False, default=str))
    return math.ceil(size / CHARS_PER_TOKEN) + reference_tokens(messages)


__all__ = ["CHARS_PER_TOKEN", "CONTEXT_WINDOWS", "EXACT_COUNT_AT", "context_window",
           "estimate_tokens"]
