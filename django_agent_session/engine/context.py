"""The conversation context stored in a session's context field.

Stored in the Messages API's own message format, so it can be sent back as is, under a
``version`` key so a future format can migrate old rows on read. Loading also repairs a
``tool_use`` block left without its ``tool_result`` at the end of the history (a tool turn
interrupted before this library committed turns atomically), which would otherwise make
every later call fail. Only the tail is looked at on load: a commit stores whole turns, so a
dangling call can only be the last thing written, and a scan of every message on every turn
was a measurable part of a long conversation's turn. :func:`repair_dangling_tool_use` still
repairs a whole history (an imported one, say).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

CONTEXT_VERSION = 1

USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)

INTERRUPTED_TOOL_RESULT = "Tool call interrupted before it returned a result."

#: the key of ``Context.metadata`` holding the conversation's configuration
CONFIG_KEY = "config"


#: the characters a database cannot store in JSON: U+0000 and lone surrogates
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """``value`` with U+0000 and lone surrogates replaced by U+FFFD in every string (keys
    included).

    PostgreSQL's ``jsonb`` cannot store U+0000 or a lone surrogate (U+D800 to U+DFFF, which
    Python strings and JSON ``\\ud800`` escapes can hold); SQLite stores them, and every later
    call to the model then fails encoding the request as UTF-8. A turn whose text (the model's
    reply, a partial reply, a tool's error, the user's input) held one could neither be
    committed nor recorded as failed, or wedged the conversation for every turn after.
    Everything a turn stores goes through here.
    """
    if isinstance(value, str):
        if value.isascii():  # the common case, and no surrogate can be in it
            return value.replace("\x00", "\ufffd") if "\x00" in value else value
        return UNSTORABLE.sub("\ufffd", value) if UNSTORABLE.search(value) else value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


def empty_usage() -> dict[str, int]:
    return dict.fromkeys(USAGE_KEYS, 0)


def add_usage(total: dict[str, int], extra: dict[str, Any]) -> dict[str, int]:
    return {key: int(total.get(key) or 0) + int(extra.get(key) or 0) for key in USAGE_KEYS}


@dataclass
class Context:
    """Typed access to a stored context; ``to_dict()`` gives the stored JSON back."""

    system: str = ""
    instruction_args: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=empty_usage)
    turns: int = 0
    last_output: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: what this conversation's model calls cost in USD (None: some call had no price);
    #: counted against ``Agent.cost_budget`` like ``usage`` against ``token_budget``
    cost: Decimal | None = field(default_factory=Decimal)
    #: the size in tokens of system, tools and messages after the last reply, as the API
    #: counted it (None: not known, e.g. a context stored by an older version)
    tokens: int | None = None
    #: how many times older turns were replaced by a summary (``Agent.compaction``)
    compactions: int = 0
    version: int = CONTEXT_VERSION
    #: True when loading changed the stored data (migration or repair)
    repaired: bool = field(default=False, compare=False)

    @property
    def config(self) -> dict[str, Any]:
        """The conversation's configuration (``start_session(config=)``, a factory's
        ``config``): kept in ``metadata``, which every commit, reset, fork and export carries,
        so a turn in any process runs with it."""
        return self.metadata.get(CONFIG_KEY) or {}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Context:
        if not data:
            return cls()
        data = migrate(data)
        ctx = cls(
            system=data.get("system", ""),
            instruction_args=data.get("instruction_args") or {},
            messages=list(data.get("messages") or []),
            usage=add_usage(empty_usage(), data.get("usage") or {}),
            turns=int(data.get("turns") or 0),
            last_output=data.get("last_output"),
            metadata=data.get("metadata") or {},
            cost=_decimal(data.get("cost", "0")),
            tokens=data.get("tokens"),
            compactions=int(data.get("compactions") or 0),
            version=CONTEXT_VERSION,
        )
        ctx.repaired = repair_dangling_tool_use(ctx.messages, start=len(ctx.messages) - 2)
        return ctx

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "system": self.system,
            "instruction_args": self.instruction_args,
            "messages": self.messages,
            "usage": self.usage,
            "turns": self.turns,
            "last_output": self.last_output,
            "metadata": self.metadata,
            "cost": None if self.cost is None else str(self.cost),
            "tokens": self.tokens,
            "compactions": self.compactions,
        }


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or () if b.get("type") == "text")


def content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's content as a list of blocks (a string content is one text block)."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content or [])


def turn_starts(messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """``(message index, block index)`` where each turn begins: the first block of a user
    message that is not a tool result. A cut there never separates a ``tool_use`` from its
    ``tool_result`` (results before the block stay with the turn that called)."""
    starts = []
    for i, message in enumerate(messages):
        if message.get("role") != "user":
            continue
        for j, block in enumerate(content_blocks(message)):
            if block.get("type") != "tool_result":
                starts.append((i, j))
                break
    return starts


#: version -> function migrating a dict of that version to the next one
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    # 0 is the unversioned shape: a bare list of messages or a dict without "version"
    0: lambda d: {"version": 1, **d} if isinstance(d, dict) else {"version": 1, "messages": d},
}


def migrate(data: Any) -> dict[str, Any]:
    """Bring stored data of any known version to :data:`CONTEXT_VERSION`."""
    version = data.get("version", 0) if isinstance(data, dict) else 0
    if version > CONTEXT_VERSION:
        raise ValueError(f"context version {version} is newer than this library "
                         f"({CONTEXT_VERSION}); upgrade django-agent-session")
    while version < CONTEXT_VERSION:
        data = MIGRATIONS[version](data)
        version = data["version"]
    return data


def repair_dangling_tool_use(messages: list[dict[str, Any]], start: int = 0) -> bool:
    """Give every ``tool_use`` (from message ``start`` on) a ``tool_result``; returns whether
    anything changed.

    The Messages API rejects a conversation whose assistant ``tool_use`` is not answered by
    a ``tool_result`` in the next user message; a turn interrupted mid-tool leaves exactly
    that. The repair answers it with an error result so the conversation stays usable.
    """
    changed = False
    i = max(start, 0)
    while i < len(messages):
        msg = messages[i]
        if msg.get("role") != "assistant" or isinstance(msg.get("content"), str):
            i += 1
            continue
        ids = [b["id"] for b in msg.get("content") or () if b.get("type") == "tool_use"]
        if not ids:
            i += 1
            continue
        nxt = messages[i + 1] if i + 1 < len(messages) else None
        if nxt is None or nxt.get("role") != "user":
            nxt = {"role": "user", "content": []}
            messages.insert(i + 1, nxt)
            changed = True
        content: Any = nxt.get("content")  # JSON: a string or a list of blocks
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        answered = {b.get("tool_use_id") for b in content if b.get("type") == "tool_result"}
        missing = [
            {"type": "tool_result", "tool_use_id": tid, "is_error": True,
             "content": INTERRUPTED_TOOL_RESULT}
            for tid in ids if tid not in answered
        ]
        if missing:
            # tool results must come first in the user message; a new dict, so the stored
            # data the messages came from (the session's field) is not changed
            messages[i + 1] = {**nxt, "content": missing + content}
            changed = True
        i += 2
    return changed


__all__ = ["CONFIG_KEY", "CONTEXT_VERSION", "INTERRUPTED_TOOL_RESULT", "UNSTORABLE", "USAGE_KEYS",
           "Context", "add_usage", "content_blocks", "empty_usage", "message_text", "migrate",
           "repair_dangling_tool_use", "storable", "turn_starts"]
