"""Image and document blocks: checked as the API checks them, counted as it counts them.

The Messages API takes an image as ``{"type": "image", "source": {"type": "base64",
"media_type": "image/png", "data": "<base64>"}}`` (or a ``url`` / ``file`` source) and a PDF as
a ``document`` block with an ``application/pdf`` base64 source (or ``text``, ``url``,
``file``); it refuses, with a 400 ``invalid_request_error``, a source of another type, a media
type it does not take, data that is not base64, and bytes that are not what the media type
says. :func:`media_error` applies those rules, so a client that sends anything else (a
reference meant to be resolved first, say) fails here as it would against the API.

Tokens: an image costs about ``width * height / 750`` (at most ~1,600: larger images are
scaled down) and a PDF page about its text plus its image; :func:`media_tokens` stands in,
deterministically, so the base64 text itself is never counted as prompt text.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Iterator, Mapping
from typing import Any

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DOCUMENT_MEDIA_TYPES = ("application/pdf",)
IMAGE_MAX_TOKENS = 1600
PDF_PAGE_TOKENS = 1500

_MAGIC = {
    "image/png": lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/jpeg": lambda d: d.startswith(b"\xff\xd8\xff"),
    "image/gif": lambda d: d[:6] in (b"GIF87a", b"GIF89a"),
    "image/webp": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP",
    "application/pdf": lambda d: d.startswith(b"%PDF-"),
}
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def media_blocks(body: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(path, block)`` for every image and document block of a request's messages (tool
    results' content included)."""
    if not isinstance(body, Mapping):
        return
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if not isinstance(block, Mapping):
                continue
            where = f"messages.{i}.content.{j}"
            if block.get("type") in ("image", "document"):
                yield where, block
            elif isinstance(block.get("content"), list):
                for k, inner in enumerate(block["content"]):
                    if isinstance(inner, Mapping) and inner.get("type") in ("image", "document"):
                        yield f"{where}.content.{k}", inner


def _quoted(options: tuple[str, ...]) -> str:
    quoted = [f"'{o}'" for o in options]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def media_error(body: Any) -> str | None:
    """The API's 400 message for the first malformed image or document block, or None."""
    for where, block in media_blocks(body):
        kind = block["type"]
        source = block.get("source")
        if not isinstance(source, Mapping):
            return f"{where}.{kind}.source: Field required"
        allowed_sources = ("base64", "url", "file") + (("text",) if kind == "document" else ())
        if source.get("type") not in allowed_sources:
            return (f"{where}.{kind}.source: Input tag {source.get('type')!r} found using "
                    f"'type' does not match any of the expected tags: {_quoted(allowed_sources)}")
        if source["type"] != "base64":
            continue
        media = IMAGE_MEDIA_TYPES if kind == "image" else DOCUMENT_MEDIA_TYPES
        if source.get("media_type") not in media:
            return f"{where}.{kind}.source.base64.media_type: Input should be {_quoted(media)}"
        try:
            data = base64.b64decode(str(source.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            return f"{where}.{kind}.source.base64.data: Invalid base64 data"
        if not data:
            return f"{where}.{kind}.source.base64.data: String should have at least 1 character"
        if not _MAGIC[source["media_type"]](data):
            what = "Image" if kind == "image" else "Document"
            return (f"{where}.{kind}.source.base64.data: {what} does not match the provided "
                    f"media type {source['media_type']}")
    return None


def decoded(block: Mapping[str, Any]) -> bytes | None:
    """The bytes of a base64 image or document block (None for another source)."""
    source = block.get("source")
    if not isinstance(source, Mapping) or source.get("type") != "base64":
        return None
    try:
        return base64.b64decode(str(source.get("data", "")), validate=True)
    except (binascii.Error, ValueError):
        return None


def media_tokens(block: Mapping[str, Any]) -> int:
    """The tokens one image or document block costs (a deterministic stand-in)."""
    data = decoded(block) or b""
    if block.get("type") == "document":
        return PDF_PAGE_TOKENS * max(1, len(_PAGE.findall(data)))
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return max(1, min(IMAGE_MAX_TOKENS, -(-width * height // 750)))
    return IMAGE_MAX_TOKENS


def without_media(body: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """``body`` with each base64 payload blanked, and the tokens of the blocks blanked."""
    tokens = 0

    def strip(block: Any) -> Any:
        nonlocal tokens
        if isinstance(block, Mapping) and block.get("type") in ("image", "document") and \
                isinstance(block.get("source"), Mapping) and "data" in block["source"]:
            tokens += media_tokens(block)
            return {**block, "source": {**block["source"], "data": ""}}
        if isinstance(block, Mapping) and isinstance(block.get("content"), list):
            return {**block, "content": [strip(b) for b in block["content"]]}
        return block

    messages = []
    for message in body.get("messages") or []:
        if isinstance(message, Mapping) and isinstance(message.get("content"), list):
            message = {**message, "content": [strip(b) for b in message["content"]]}
        messages.append(message)
    return {**body, "messages": messages}, tokens


__all__ = ["media_blocks", "media_error", "media_tokens", "decoded", "without_media"]
