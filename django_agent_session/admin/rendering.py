"""What the admin pages show: pretty JSON, durations, dates, errors, badges and the transcript.

Everything a model or a user wrote reaches the page through ``format_html`` or an autoescaping
template, never as markup.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.urls import NoReverseMatch, reverse
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..engine.attachments import is_reference

#: how many runs the change page lists inline (the runs changelist has them all)
TIMELINE_LIMIT = 200
#: characters of event data shown in the events changelist
PREVIEW_CHARS = 120


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder)


def _pre(value: Any) -> str:
    """``value`` as pretty JSON in a ``<pre>`` (escaped)."""
    return format_html('<pre class="agent-json">{}</pre>', pretty_json(value))


def _preview(data: Any, limit: int = PREVIEW_CHARS) -> str:
    text = json.dumps(data, ensure_ascii=False, cls=DjangoJSONEncoder)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _admin_url(site: admin.AdminSite, model: type[models.Model], view: str, *args: Any) -> str:
    """A URL of ``site`` for ``model``, or ``""`` if that admin is not registered."""
    opts = model._meta
    try:
        return reverse(f"{site.name}:{opts.app_label}_{opts.model_name}_{view}", args=args)
    except NoReverseMatch:
        return ""


def _status_badge(obj: Any) -> str:
    """The status of a session or a run as a coloured badge."""
    return format_html('<span class="agent-badge agent-status-{}">{}</span>', obj.status,
                       obj.get_status_display())


def _money(cost: Any) -> str:
    """A cost in USD for a table cell; an unknown cost (a model with no price) says so."""
    if cost is None:
        return str(_("unknown"))
    return f"${cost:,.6f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _duration(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    return f"{ms / 1000:.1f} s"


def _when(value: Any) -> str:
    if value is None:
        return "—"
    return formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")


def _error_text(error: Any) -> str:
    if not error:
        return ""
    if isinstance(error, dict):
        code, message = error.get("code", ""), error.get("message", "")
        return f"{code}: {message}" if code and message else str(code or message)
    return str(error)


# -- the transcript ---------------------------------------------------------------------------


def _result_text(content: Any) -> str:
    """The readable text of a ``tool_result`` block's content (JSON results pretty-printed)."""
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(_result_text(block.get("text", "")))
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'block')}]")
            else:
                parts.append(str(block))
        return "\n".join(parts)
    if not isinstance(content, str):
        return pretty_json(content)
    stripped = content.strip()
    if stripped[:1] in ("{", "["):
        try:
            return pretty_json(json.loads(stripped))
        except ValueError:
            pass
    return content


def _transcript_block(block: Any, tool_names: dict[str, str],
                      attachment_url: Callable[[str], str] | None = None) -> dict[str, Any]:
    if not isinstance(block, dict):
        return {"kind": "text", "text": str(block)}
    kind = block.get("type")
    if kind == "text":
        return {"kind": "text", "text": block.get("text", "")}
    if kind == "thinking":
        return {"kind": "thinking", "text": block.get("thinking", "")}
    if kind == "redacted_thinking":
        return {"kind": "thinking", "text": _("(redacted by the provider)")}
    if kind in ("tool_use", "server_tool_use"):
        tool_names[block.get("id", "")] = block.get("name", "")
        return {"kind": "tool_use", "name": block.get("name", ""), "id": block.get("id", ""),
                "input": pretty_json(block.get("input", {}))}
    if kind == "tool_result":
        tool_id = block.get("tool_use_id", "")
        return {"kind": "tool_result", "id": tool_id, "name": tool_names.get(tool_id, ""),
                "is_error": bool(block.get("is_error")),
                "text": _result_text(block.get("content", ""))}
    if is_reference(block) and attachment_url is not None:  # a file the user attached
        source = block["source"]
        return {"kind": "attachment", "media": kind, "url": attachment_url(source["artifact_id"]),
                "text": source.get("media_type", "")}
    if kind in ("image", "document"):
        source = block.get("source") or {}
        described = source.get("media_type") or source.get("type", "")
        return {"kind": "media", "text": f"[{kind}: {described}]"}
    return {"kind": "other", "type": kind or "?", "text": pretty_json(block)}


def transcript_entries(messages: Iterable[dict[str, Any]],
                       attachment_url: Callable[[str], str] | None = None
                       ) -> list[dict[str, Any]]:
    """The context's messages as display entries: role, label and typed blocks
    (``attachment_url(artifact id)`` links the files the user attached).

    A user message that only answers tool calls is shown as "tool results", not as the user.
    """
    tool_names: dict[str, str] = {}
    entries = []
    for index, message in enumerate(messages):
        role = message.get("role", "")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        blocks = [_transcript_block(b, tool_names, attachment_url) for b in content or ()]
        kind = role if role in ("user", "assistant") else "other"
        if role == "user" and blocks and all(b["kind"] == "tool_result" for b in blocks):
            kind = "tool"
        labels = {"user": _("User"), "assistant": _("Assistant"), "tool": _("Tool results")}
        entries.append({"index": index, "kind": kind, "label": labels.get(kind, role),
                        "blocks": blocks,
                        "has_error": any(b.get("is_error") for b in blocks)})
    return entries


def _input_text(run_input: Any) -> str:
    if isinstance(run_input, dict) and set(run_input) == {"message"}:
        return str(run_input["message"])
    return pretty_json(run_input)
