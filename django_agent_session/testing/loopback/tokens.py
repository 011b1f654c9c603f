"""Rough, deterministic token counts for the ``usage`` the loopback server reports.

The real API counts tokens with the model's tokenizer; a test double only needs
numbers that are non-zero, stable from run to run and grow with the size of
what was sent or scripted.  ``/v1/messages/count_tokens``, the default
``usage`` of a reply and the simulated prompt cache all use these estimates, so
their numbers agree and live apart from any of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .media import without_media


def _estimate_tokens(text: str) -> int:
    """A rough, deterministic token count: about four characters per token, at least one."""
    return _tokens_for_chars(len(text))


def _tokens_for_chars(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


def estimate_input_tokens(body: Any) -> int:
    """Tokens for a request body's ``system``, ``messages`` and ``tools`` (1 if the body is not an object)."""
    if not isinstance(body, dict):
        return 1
    body, media = without_media(body)  # an image costs its pixels, not its base64 text
    relevant = [body.get("system"), body.get("messages"), body.get("tools")]
    return _estimate_tokens(json.dumps(relevant, separators=(",", ":"), ensure_ascii=False)) + media


def estimate_output_tokens(content: Sequence[Mapping[str, Any]]) -> int:
    """Tokens for a reply's content blocks: their text, thinking or tool input (other blocks whole)."""
    size = 0
    for block in content:
        if block.get("type") == "text":
            size += len(block.get("text", ""))
        elif block.get("type") == "thinking":
            size += len(block.get("thinking", ""))
        elif block.get("type") == "tool_use":
            size += len(json.dumps(block.get("input", {})))
        else:
            size += len(json.dumps(block))
    return _tokens_for_chars(size)
