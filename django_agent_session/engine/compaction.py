"""Compaction: older turns of a long conversation replaced by a summary a model writes.

Where to cut: at the start of a turn (:func:`~.context.turn_starts`), keeping the most recent
``keep_turns`` turns word for word, so a ``tool_use`` and its ``tool_result`` are always on the
same side. What the summary replaces stays in the event log (every message of every turn was
logged when it was said); only what is *sent* gets shorter. The summary opens the first kept
user message, so roles still alternate and nothing before it can hold a dangling tool call.

Compaction changes the conversation's prefix and so invalidates the prompt cache: the engine
does it rarely (past a threshold, not every turn) and at a turn boundary, before the turn's
first call, unless a request would not fit at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..clients.base import ModelRequest
from ..declaration.options import Compaction
from .context import content_blocks, turn_starts

#: what the first kept user message starts with once earlier turns were compacted
SUMMARY_PREFIX = "[Summary of the earlier conversation]\n"

#: characters of one tool result or input shown to the summarizing model
TRANSCRIPT_CLIP = 2000

SUMMARY_SYSTEM = (
    "You compress conversations between a user and an AI assistant. Write a summary that "
    "lets the assistant continue the conversation without the original messages: the user's "
    "goals and preferences, facts and decisions established, names, numbers and identifiers "
    "mentioned, what tools were called and what they returned that still matters, and any "
    "open questions or unfinished tasks. Write plain prose and lists, no preamble."
)

#: output tokens the summary may use
SUMMARY_MAX_TOKENS = 2048


@dataclass
class Cut:
    """Messages split for compaction: ``old`` is summarized, ``recent`` kept as is."""

    old: list[dict[str, Any]]
    recent: list[dict[str, Any]]


def split(messages: list[dict[str, Any]], keep_turns: int) -> Cut | None:
    """Cut before the last ``keep_turns`` turns; None when there is nothing older to cut."""
    starts = turn_starts(messages)
    if len(starts) <= keep_turns:
        return None
    index, block = starts[len(starts) - keep_turns]
    if index == 0 and block == 0:
        return None
    old, recent = list(messages[:index]), list(messages[index:])
    if block:  # the previous turn's tool results share the message with the kept question
        blocks = content_blocks(messages[index])
        old.append({**messages[index], "content": blocks[:block]})
        recent[0] = {**messages[index], "content": blocks[block:]}
    return Cut(old=old, recent=recent)


def transcript(messages: list[dict[str, Any]]) -> str:
    """The messages as plain text for the summarizing model (tool traffic clipped)."""
    lines = []
    for message in messages:
        role = "User" if message.get("role") == "user" else "Assistant"
        for block in content_blocks(message):
            kind = block.get("type")
            if kind == "text":
                lines.append(f"{role}: {block.get('text', '')}")
            elif kind == "tool_use":
                args = json.dumps(block.get("input", {}), ensure_ascii=False)
                lines.append(f"{role} called tool {block.get('name')}: {_clip(args)}")
            elif kind == "tool_result":
                content = block.get("content")
                if isinstance(content, list):
                    content = " ".join(b.get("text", "") for b in content
                                       if isinstance(b, dict) and b.get("type") == "text")
                error = " (error)" if block.get("is_error") else ""
                lines.append(f"Tool result{error}: {_clip(str(content or ''))}")
            elif kind not in ("thinking", "redacted_thinking"):
                lines.append(f"{role}: [{kind}]")
    return "\n".join(lines)


def summary_request(settings: Compaction, model_name: str, old: list[dict[str, Any]],
                    metadata: dict[str, Any] | None = None) -> ModelRequest:
    """The request that asks for a summary of ``old``."""
    ask = ("Summarize this conversation so far:\n<conversation>\n"
           f"{transcript(old)}\n</conversation>")
    if settings.instructions:
        ask += f"\n\n{settings.instructions}"
    return ModelRequest(model=model_name, system=SUMMARY_SYSTEM,
                        messages=[{"role": "user", "content": [{"type": "text", "text": ask}]}],
                        max_tokens=SUMMARY_MAX_TOKENS, cache=False, metadata=metadata or {})


def compacted(summary: str, recent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages sent from now on: the summary, then the kept turns."""
    first = recent[0]
    opening = {"type": "text", "text": SUMMARY_PREFIX + summary}
    return [{**first, "content": [opening, *content_blocks(first)]}, *recent[1:]]


#: the user message that opens a context the API compacted (it drops it with the rest)
COMPACTED_OPENING = "(The earlier conversation was compacted.)"


def after_server_compaction(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages worth keeping once the API returned a ``compaction`` block: the API
    drops everything before that block itself, so the context keeps the assistant message
    holding it and what follows, behind a short user message that keeps roles alternating.
    (A ``tool_result`` only ever answers the message right before it, so none is orphaned.)"""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant" and any(
        b.get("type") == "compaction" for b in content_blocks(m))), default=None)
    if last is None or last == 0:
        return messages
    opening = {"role": "user", "content": [{"type": "text", "text": COMPACTED_OPENING}]}
    return [opening, *messages[last:]]


def _clip(text: str) -> str:
    return text if len(text) <= TRANSCRIPT_CLIP else text[:TRANSCRIPT_CLIP] + "…"


__all__ = ["SUMMARY_PREFIX", "Cut", "after_server_compaction", "compacted", "split",
           "summary_request", "transcript"]
