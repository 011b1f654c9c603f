"""The Messages API's prompt cache and context window, simulated, so tests and benchmarks can
see what a client's cache breakpoints and compaction would do against the real API.

The cache follows the API's documented rules, not its implementation: a prompt is the blocks
of ``tools``, then ``system``, then the messages' content, in order; a block carrying
``cache_control`` (or the last block of the last message, with the request's top-level
``cache_control``) is a breakpoint; a request reads the longest prefix that an earlier request
wrote at a breakpoint, looking back at most :data:`LOOKBACK` blocks from each of its own
breakpoints; it writes the prefix up to its last breakpoint; prefixes under the minimum
(1,024 tokens by default) are never cached. Token counts use the same estimate as the rest of
the server (about four characters a token), so they agree with ``count_tokens``.

Server-side compaction (the beta ``compact_20260112`` context edit) is simulated here too:
past its trigger, a reply is preceded by a ``compaction`` block, and a later request's input
is counted from its last ``compaction`` block on, as the API drops everything before it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

from .tokens import estimate_input_tokens

#: blocks the API looks back from a breakpoint for an earlier cached prefix
LOOKBACK = 20
#: the API caches no prefix shorter than this many tokens (Sonnet and Opus; Haiku: 2,048)
MIN_CACHE_TOKENS = 1024
#: the edit type of server-side compaction, and its default trigger in input tokens
COMPACT_EDIT = "compact_20260112"
DEFAULT_COMPACTION_TRIGGER = 150_000


def _plain(value: Any) -> Any:
    """``value`` without ``cache_control`` keys (a breakpoint does not change the prefix)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def compacted_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` as the API reads it: messages from the last ``compaction`` block on."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return dict(body)
    for i in range(len(messages) - 1, -1, -1):
        content = messages[i].get("content") if isinstance(messages[i], dict) else None
        if not isinstance(content, list):
            continue
        for j in range(len(content) - 1, -1, -1):
            if isinstance(content[j], dict) and content[j].get("type") == "compaction":
                kept = [{**messages[i], "content": content[j:]}, *messages[i + 1:]]
                return {**body, "messages": kept}
    return dict(body)


def input_tokens(body: Any) -> int:
    """The input tokens of a request as the API would count them (after compaction)."""
    if not isinstance(body, dict):
        return estimate_input_tokens(body)
    return estimate_input_tokens(compacted_body(body))


Where = tuple[str, int, int]
"""Where a block sits in a request: ``("tools", i, 0)``, ``("system", i, 0)`` or ``("messages", i, j)``."""


def _blocks(body: Mapping[str, Any]) -> list[tuple[Any, bool, Where]]:
    """``(block, is breakpoint, where)`` for every block of the prompt, in the API's prefix order."""
    out: list[tuple[Any, bool, Where]] = []
    for i, tool in enumerate(body.get("tools") or []):
        out.append((tool, _marked(tool), ("tools", i, 0)))
    system = body.get("system")
    if isinstance(system, list):
        out += [(b, _marked(b), ("system", i, 0)) for i, b in enumerate(system)]
    elif system:
        out.append((system, False, ("system", 0, 0)))
    for i, message in enumerate(body.get("messages") or []):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        blocks = content if isinstance(content, list) else [content]
        for j, block in enumerate(blocks):
            # the role is part of the prefix: the same text said by the other side differs
            key = {"role": message.get("role"), "block": block} if j == 0 else block
            out.append((key, _marked(block), ("messages", i, j)))
    if body.get("cache_control") and out:
        out[-1] = (out[-1][0], True, out[-1][2])  # automatic caching: the last block of the prompt
    return out


def _marked(block: Any) -> bool:
    return isinstance(block, dict) and "cache_control" in block


def _prefix_tokens(body: Mapping[str, Any], where: Where) -> int:
    """Tokens of the prompt up to and including the block at ``where``, without its ``cache_control`` markers.

    Counted with the estimate ``count_tokens`` uses, on the request cut after
    that block, so a prefix that runs to the end of the prompt is the whole
    request's count less only the markers' own characters, and the same
    prefix has the same size whichever request (and breakpoint) it is read in.
    """
    section, i, j = where
    prefix: dict[str, Any] = {"tools": body.get("tools"), "system": body.get("system")}
    if section == "tools":
        prefix = {"tools": prefix["tools"][: i + 1]}
    elif section == "system":
        system = prefix["system"]
        prefix["system"] = system[: i + 1] if isinstance(system, list) else system
    else:
        messages = body["messages"]
        content = messages[i].get("content")
        last = {**messages[i], "content": content[: j + 1]} if isinstance(content, list) else messages[i]
        prefix["messages"] = [*messages[:i], last]
    return estimate_input_tokens(_plain(prefix))


class PromptCache:
    """The cached prefixes of one server, and the cache usage of each request."""

    def __init__(self, min_tokens: int = MIN_CACHE_TOKENS) -> None:
        self.min_tokens = min_tokens
        self._written: set[str] = set()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._written.clear()

    def usage(self, body: Any) -> tuple[int, int]:
        """``(cache read tokens, cache write tokens)`` of a request, which is then cached."""
        if not isinstance(body, dict):
            return 0, 0
        read_body = compacted_body(body)
        blocks = _blocks(read_body)
        breakpoints = [i for i, (_, marked, _) in enumerate(blocks) if marked]
        if not breakpoints:
            return 0, 0
        digest = hashlib.sha256()
        hashes: list[str] = []
        for block, _, _ in blocks:
            digest.update(json.dumps(_plain(block), sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode())
            digest.update(b"\x1e")
            hashes.append(digest.hexdigest())
        sizes = {point: _prefix_tokens(read_body, blocks[point][2]) for point in breakpoints}
        with self._lock:
            read_at = -1
            for point in breakpoints:
                for j in range(point, max(-1, point - LOOKBACK), -1):
                    if hashes[j] in self._written:
                        read_at = max(read_at, j)
                        break
            for point in breakpoints:
                if sizes[point] >= self.min_tokens:
                    self._written.add(hashes[point])
        total = input_tokens(body)
        read = 0
        if read_at >= 0:
            size = sizes[read_at] if read_at in sizes else _prefix_tokens(read_body, blocks[read_at][2])
            read = min(size, total)
        last = breakpoints[-1]
        written = 0
        if last > read_at and sizes[last] >= self.min_tokens:
            written = max(0, min(sizes[last], total) - read)
        return read, written


def compaction_edit(body: Any) -> dict[str, Any] | None:
    """The request's server-side compaction edit, if it asks for one."""
    if not isinstance(body, dict):
        return None
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, dict) else None
    for edit in edits or []:
        if isinstance(edit, dict) and edit.get("type") == COMPACT_EDIT:
            return edit
    return None


def compaction_trigger(edit: Mapping[str, Any]) -> int:
    trigger = edit.get("trigger")
    if isinstance(trigger, dict) and isinstance(trigger.get("value"), int):
        return int(trigger["value"])
    return DEFAULT_COMPACTION_TRIGGER


__all__ = ["COMPACT_EDIT", "LOOKBACK", "MIN_CACHE_TOKENS", "PromptCache", "compacted_body",
           "compaction_edit", "compaction_trigger", "input_tokens"]
