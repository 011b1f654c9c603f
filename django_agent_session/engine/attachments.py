"""Files in the conversation: stored as references, sent as the blocks the Messages API takes.

A user's image or PDF is stored once, as an artifact; the context (and the run's input, and
the event log) hold only a *reference block*, the API's own block with a source of our own::

    {"type": "image", "source": {"type": "artifact", "artifact_id": "…",
                                 "media_type": "image/png", "tokens": 1600}}

so the stored JSON never carries the bytes. Just before a request goes out (the model call
and the token count), :class:`AttachingClient` swaps each reference for the base64 block the
API accepts, reading the file through a loader the store gives it. The engine knows no
database: the loader finds the files (one query per turn, scoped to the session) and reads
them; a turn reads each file once however many model calls it makes (the resolved blocks are
cached per turn), and the next turn reads them again: the API is stateless, so the bytes are
sent on every call anyway, and reading them back from storage costs less than that upload.
The resolved blocks are byte-for-byte the same every time, so the prompt cache still hits.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from ..clients.base import ModelRequest

#: the ``source.type`` of a reference block (never sent to the API)
SOURCE = "artifact"

#: the block type the API takes for each media type family
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
DOCUMENT_TYPES = frozenset({"application/pdf"})

#: the most tokens the API spends on one image (it scales larger ones down to about 1.15
#: megapixels, ~1,600 tokens); an image of known size costs ``width * height / 750``
IMAGE_MAX_TOKENS = 1600
#: tokens assumed per PDF page: its extracted text plus the page as an image, on the large side
PDF_PAGE_TOKENS = 3000

#: what a turn sends for a reference whose file is gone (deleted, or imported without files):
#: the conversation goes on without it rather than failing every later turn
MISSING_TEXT = "[An attached file ({media_type}) is no longer available.]"


def block_type(media_type: str) -> str:
    """``"image"`` or ``"document"``: the API's block for ``media_type``."""
    return "document" if media_type in DOCUMENT_TYPES else "image"


def estimate_tokens(media_type: str, *, width: int | None = None, height: int | None = None,
                    pages: int | None = None) -> int:
    """A generous token estimate of one attachment (what the context-window check adds)."""
    if media_type in DOCUMENT_TYPES:
        return PDF_PAGE_TOKENS * max(pages or 1, 1)
    if width and height:
        return max(1, min(IMAGE_MAX_TOKENS, -(-width * height // 750)))
    return IMAGE_MAX_TOKENS


def reference_block(artifact_id: Any, media_type: str, tokens: int) -> dict[str, Any]:
    """The block stored in the context for an attachment."""
    return {"type": block_type(media_type),
            "source": {"type": SOURCE, "artifact_id": str(artifact_id),
                       "media_type": media_type, "tokens": int(tokens)}}


#: the block types an attachment is stored as
MEDIA_TYPES = ("image", "document")


def is_reference(block: Any) -> bool:
    """Whether ``block`` is a reference block (an attachment not yet resolved)."""
    return (isinstance(block, Mapping) and block.get("type") in MEDIA_TYPES
            and isinstance(block.get("source"), Mapping)
            and block["source"].get("type") == SOURCE
            and isinstance(block["source"].get("artifact_id"), str))


def references(messages: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every reference block of ``messages`` (user content and tool results alike)."""
    # on every model call over the whole history: the plain-dict checks come first (a stored
    # context is JSON), the full check only for media blocks
    for message in messages:
        content = message.get("content")
        if type(content) is not list:
            continue
        for block in content:
            if type(block) is not dict:
                continue
            if block.get("type") in MEDIA_TYPES:
                if is_reference(block):
                    yield block
            elif type(block.get("content")) is list:
                yield from (b for b in block["content"] if is_reference(b))


def reference_tokens(messages: list[dict[str, Any]]) -> int:
    """The estimated tokens of the attachments in ``messages`` (their JSON is tiny)."""
    return sum(int(b["source"].get("tokens") or IMAGE_MAX_TOKENS) for b in references(messages))


def remap(value: Any, ids: Mapping[str, str]) -> Any:
    """``value`` (any JSON) with each reference's ``artifact_id`` mapped through ``ids`` (an
    import that gives the artifacts new ids)."""
    if is_reference(value):
        source = value["source"]
        return {**value, "source": {**source, "artifact_id": ids.get(source["artifact_id"],
                                                                     source["artifact_id"])}}
    if isinstance(value, Mapping):
        return {k: remap(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [remap(v, ids) for v in value]
    return value


class AttachmentLoader(Protocol):
    """Finds and reads a session's attachment files (the store implements it)."""

    def locate(self, artifact_ids: list[str]) -> dict[str, str]:
        """``{artifact id: storage name}`` of those that are the session's (database)."""
        ...

    def read(self, name: str) -> bytes:
        """The bytes of a stored file (storage; ``FileNotFoundError`` when gone)."""
        ...


class AttachingClient:
    """Wraps a turn's client: every request goes out with its references resolved.

    Anything else (attributes the engine or a test looks up) is the wrapped client's.
    """

    def __init__(self, client: Any, loader: AttachmentLoader,
                 locate_async: Callable[[list[str]], Any] | None = None) -> None:
        self.client = client
        self.loader = loader
        #: ``await locate_async(ids)``: the loader's ``locate`` run where the ORM may be used
        self.locate_async = locate_async
        #: artifact id -> the block sent (one read per file per turn)
        self.resolved: dict[str, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    # -- resolving ----------------------------------------------------------------------------

    def _wanted(self, found: list[dict[str, Any]]) -> list[str]:
        return list(dict.fromkeys(b["source"]["artifact_id"] for b in found
                                  if b["source"]["artifact_id"] not in self.resolved))

    def _fill(self, wanted: list[str], names: dict[str, str]) -> None:
        for artifact_id in wanted:
            name = names.get(artifact_id)
            try:
                data = self.loader.read(name) if name else None
            except (FileNotFoundError, OSError):
                data = None
            self.resolved[artifact_id] = {"data": data}

    def _swap(self, request: ModelRequest) -> ModelRequest:
        messages = [self._swap_message(m) for m in request.messages]
        return dataclasses.replace(request, messages=messages)

    def _swap_message(self, message: dict[str, Any]) -> dict[str, Any]:
        content = message.get("content")
        if not isinstance(content, list):
            return message
        return {**message, "content": [self._swap_block(b) for b in content]}

    def _swap_block(self, block: Any) -> Any:
        if is_reference(block):
            source = block["source"]
            data = self.resolved.get(source["artifact_id"], {}).get("data")
            if data is None:
                return {"type": "text",
                        "text": MISSING_TEXT.format(media_type=source.get("media_type", "?"))}
            sent = {k: v for k, v in block.items() if k != "source"}
            sent["source"] = {"type": "base64", "media_type": source["media_type"],
                              "data": base64.b64encode(data).decode("ascii")}
            return sent
        if isinstance(block, Mapping) and isinstance(block.get("content"), list):
            return {**block, "content": [self._swap_block(b) for b in block["content"]]}
        return block

    def resolve(self, request: ModelRequest) -> ModelRequest:
        # one walk of the history per call: a conversation without files pays only that
        found = list(references(request.messages))
        if not found:
            return request
        wanted = self._wanted(found)
        if wanted:
            self._fill(wanted, self.loader.locate(wanted))
        return self._swap(request)

    async def aresolve(self, request: ModelRequest) -> ModelRequest:
        found = list(references(request.messages))
        if not found:
            return request
        wanted = self._wanted(found)
        if wanted:
            if self.locate_async is not None:
                names = await self.locate_async(wanted)
            else:
                names = self.loader.locate(wanted)
            # storage reads block (a remote storage for long): off the event loop
            await asyncio.to_thread(self._fill, wanted, names)
        return self._swap(request)

    # -- the client protocol --------------------------------------------------------------------

    def create(self, request: ModelRequest, on_delta: Any = None) -> Any:
        return self.client.create(self.resolve(request), on_delta)

    async def acreate(self, request: ModelRequest, on_delta: Any = None) -> Any:
        return await self.client.acreate(await self.aresolve(request), on_delta)

    def count_tokens(self, request: ModelRequest) -> Any:
        count = getattr(self.client, "count_tokens", None)
        return count(self.resolve(request)) if count is not None else None

    async def acount_tokens(self, request: ModelRequest) -> Any:
        count = getattr(self.client, "acount_tokens", None)
        return await count(await self.aresolve(request)) if count is not None else None


def split_input(validated: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A validated input without its attachments, and the attachments' reference blocks (the
    values of top-level fields that hold only reference blocks, as the store put them)."""
    rest: dict[str, Any] = {}
    blocks: list[dict[str, Any]] = []
    for key, value in validated.items():
        if isinstance(value, list) and value and all(is_reference(v) for v in value):
            blocks.extend(value)
        else:
            rest[key] = value
    return rest, blocks


__all__ = ["AttachingClient", "AttachmentLoader", "IMAGE_MAX_TOKENS", "PDF_PAGE_TOKENS",
           "block_type", "estimate_tokens", "is_reference", "reference_block",
           "reference_tokens", "references", "remap", "split_input"]
