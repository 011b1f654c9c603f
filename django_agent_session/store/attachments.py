"""Attachments: images and PDFs a user sends with a message, kept as the session's artifacts.

A file is checked before anything is stored: its type is *sniffed from its first bytes* (the
magic numbers of PNG, JPEG, GIF, WebP and PDF), never taken from the client's Content-Type or
filename, and must be one of ``AGENT_SESSION["ATTACHMENT_TYPES"]``; it must not be larger
than ``ATTACHMENT_MAX_BYTES``. It is then saved once, as an artifact of the session
(``metadata["attachment"]`` marks it, with its size in pixels or pages and who uploaded it).

A message names its attachments by id. :func:`attach` checks every id against the session
the message is for (and, when the sender is known, against who uploaded it) and puts the
reference block the context stores in the input's place; an id of another session or another
user is "not found", exactly like an id that never existed. :class:`SessionFiles` is what a
turn reads the files through (``engine/attachments.py`` builds the API's blocks from them).
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from collections.abc import Iterable
from typing import IO, Any

from channels.db import database_sync_to_async
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.core.files import File

from .. import exceptions as exc
from ..conf import agent_settings
from ..engine.attachments import estimate_tokens, reference_block, references
from ..records import Artifact
from ..records.artifacts import artifact_storage
from .artifacts import artifact_filename, save_artifact

#: the extension a stored file gets for its sniffed type (whatever the client called it)
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif",
              "image/webp": ".webp", "application/pdf": ".pdf"}
#: the largest image side the Messages API takes
MAX_IMAGE_SIDE = 8000
#: bytes read to sniff a type and an image's size
HEAD_BYTES = 64 * 1024

Upload = bytes | File | IO[bytes]


# -- sniffing ---------------------------------------------------------------------------------

def sniff(data: bytes) -> str:
    """The media type ``data`` really is, from its magic numbers.

    One of :data:`EXTENSIONS`' types; for anything else a descriptive type for the error
    message (``application/zip``, ``image/svg+xml``, ``text/html``...) or
    ``application/octet-stream``.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data.startswith(b"PK\x03\x04"):
        return "application/zip"
    head = data[:1024].lstrip().lower()
    if b"<svg" in head:
        return "image/svg+xml"
    if head.startswith((b"<!doctype html", b"<html")):
        return "text/html"
    return "application/octet-stream"


def image_size(data: bytes, media_type: str) -> tuple[int, int] | None:
    """``(width, height)`` of an image from its header, or None when it cannot be read."""
    try:
        if media_type == "image/png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if media_type == "image/gif":
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if media_type == "image/webp":
            return _webp_size(data)
        if media_type == "image/jpeg":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def pdf_pages(data: bytes) -> int:
    """How many pages a PDF has, counted from its page objects (at least 1)."""
    return max(1, len(_PAGE.findall(data)))


# -- storing ----------------------------------------------------------------------------------

def _read(content: Upload, limit: int) -> bytes | None:
    """At most ``limit + 1`` bytes of ``content`` (one more tells it is too large); None when
    the file says it is too large (an ``UploadedFile`` knows its size: it is not read)."""
    if isinstance(content, (bytes, bytearray, memoryview)):
        return bytes(content)
    size = getattr(content, "size", None)
    if isinstance(size, int) and size > limit:
        return None
    if hasattr(content, "seek"):
        content.seek(0)
    data = content.read(limit + 1)
    if not isinstance(data, bytes):
        raise TypeError("an attachment must be bytes or a binary file")
    return data


def check_upload(content: Upload) -> tuple[bytes, str]:
    """The file's bytes and sniffed media type, or :class:`InvalidAttachment` (too large,
    empty, or a type not in ``ATTACHMENT_TYPES``)."""
    limit = int(agent_settings.ATTACHMENT_MAX_BYTES)
    data = _read(content, limit)
    if data is None or len(data) > limit:
        raise exc.InvalidAttachment(
            {"file": [f"The file is larger than the {limit} bytes allowed."]},
            "Attachment too large.", reason="too_large")
    if not data:
        raise exc.InvalidAttachment({"file": ["The file is empty."]}, reason="empty")
    media_type = sniff(data)
    allowed = list(agent_settings.ATTACHMENT_TYPES)
    if media_type not in allowed or media_type not in EXTENSIONS:
        raise exc.InvalidAttachment(
            {"file": [f"The file is {media_type} (read from its content); allowed: "
                      f"{', '.join(allowed)}."]},
            "Attachment type not allowed.", reason="type")
    return data, media_type


def _user_pk(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", True):
        return None
    return getattr(user, "pk", user)


def save_attachment(session: Any, content: Upload, *, filename: str | None = None,
                    uploaded_by: Any = None) -> Artifact:
    """Check ``content`` (see :func:`check_upload`) and store it as an attachment of
    ``session``; returns the artifact, whose ``pk`` a message's ``attachments`` names.

    ``uploaded_by`` (a user or a user pk) may attach it; another user may not, even on a
    session they can see. Raises :class:`~django_agent_session.exceptions.InvalidAttachment`.
    """
    data, media_type = check_upload(content)
    original = filename or getattr(content, "name", None) or "attachment"
    original = os.path.basename(str(original))[:200] or "attachment"
    stem = os.path.splitext(artifact_filename(original))[0] or "attachment"
    metadata: dict[str, Any] = {"attachment": True, "filename": original,
                                "uploaded_by": _user_pk(uploaded_by)}
    if media_type == "application/pdf":
        metadata["pages"] = pdf_pages(data)
    else:
        size = image_size(data[:HEAD_BYTES], media_type)
        if size is not None:
            if max(size) > MAX_IMAGE_SIDE:
                raise exc.InvalidAttachment(
                    {"file": [f"The image is {size[0]}x{size[1]} pixels; the largest side "
                              f"allowed is {MAX_IMAGE_SIDE}."]},
                    "Attachment too large.", reason="too_large")
            metadata["width"], metadata["height"] = size
    metadata["tokens"] = estimate_tokens(media_type, width=metadata.get("width"),
                                         height=metadata.get("height"),
                                         pages=metadata.get("pages"))
    return save_artifact(session, f"attachments/{uuid.uuid4().hex}", data,
                         content_type=media_type, metadata=metadata,
                         filename=stem + EXTENSIONS[media_type], replace=False)


async def asave_attachment(session: Any, content: Upload, **kwargs: Any) -> Artifact:
    """Async twin of :func:`save_attachment`."""
    return await database_sync_to_async(save_attachment)(session, content, **kwargs)


def attachments_of(session: Any) -> Any:
    """The session's attachments (artifacts marked as such), oldest first."""
    return Artifact.objects.filter(
        session_type=ContentType.objects.get_for_model(type(session)), session_id=session.pk,
        metadata__attachment=True)


def copy_attachments(source: Any, target: Any, messages: list[dict[str, Any]]
                     ) -> dict[str, str]:
    """Copy the attachments of ``source`` that ``messages`` refer to into ``target`` (a fork:
    a turn reads only its own session's files); returns ``{old id: new id}`` for
    :func:`~django_agent_session.engine.attachments.remap`. Each file is copied, so deleting
    either session never takes the other's files."""
    wanted = _uuids(b["source"]["artifact_id"] for b in references(messages))
    ids: dict[str, str] = {}
    for artifact in attachments_of(source).filter(pk__in=wanted):
        with artifact.file.open("rb") as fh:
            data = fh.read()
        copied = save_artifact(target, f"attachments/{uuid.uuid4().hex}", data,
                               content_type=artifact.content_type,
                               metadata=dict(artifact.metadata),
                               filename=os.path.basename(artifact.file.name), replace=False)
        ids[str(artifact.pk)] = str(copied.pk)
    return ids


def delete_attachments(artifacts: Iterable[Artifact]) -> None:
    """Delete attachments stored for a message that was then refused (their files go on
    commit, as every artifact's)."""
    pks = [a.pk for a in artifacts]
    if pks:
        Artifact.objects.filter(pk__in=pks).delete()


# -- a message's attachments ------------------------------------------------------------------

def _uuids(values: Iterable[Any]) -> list[uuid.UUID]:
    out = []
    for value in values:
        try:
            out.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return out


def attach(model: type, pk: Any, validated: dict[str, Any], fields: list[str], *,
           user_id: Any = None, label: str | None = None) -> dict[str, Any]:
    """``validated`` with the attachment ids in ``fields`` replaced by reference blocks.

    Each id must name an attachment of session ``pk`` (of ``model``) uploaded by ``user_id``
    or by nobody in particular (``None``: the sender is not known, e.g. Python code); any other
    id is ``InvalidAttachment`` ``not_found``, with the same message whether it exists
    elsewhere or not.
    """
    wanted = {name: validated[name] for name in fields if validated.get(name)}
    if not wanted:
        return validated
    ids = _uuids(i for values in wanted.values() for i in values)
    found: dict[str, Artifact] = {}
    if pk is not None and ids:
        ct = ContentType.objects.get_for_model(model)
        try:
            rows = Artifact.objects.filter(session_type=ct, session_id=pk, pk__in=ids,
                                           metadata__attachment=True)
            found = {str(a.pk): a for a in rows}
        except ValidationError:  # a session pk that is not a UUID: nothing is found
            found = {}
    errors: dict[str, list[str]] = {}
    result = dict(validated)
    for name, values in wanted.items():
        blocks = []
        for value in values:
            artifact = found.get(str(value))
            uploader = artifact.metadata.get("uploaded_by") if artifact is not None else None
            if artifact is None or (user_id is not None and uploader is not None
                                    and str(uploader) != str(user_id)):
                errors.setdefault(name, []).append(
                    f"No attachment {value} on this session.")
                continue
            blocks.append(reference_block(artifact.pk, artifact.content_type,
                                          int(artifact.metadata.get("tokens") or 0)
                                          or estimate_tokens(artifact.content_type)))
        result[name] = blocks
    if errors:
        raise exc.InvalidAttachment(errors, "Unknown attachment.", reason="not_found",
                                    label=label)
    return result


class SessionFiles:
    """A turn's way to its session's attachment files (``engine.attachments.AttachmentLoader``):
    only the session's own artifacts are ever found."""

    def __init__(self, model: type, pk: Any) -> None:
        self.model, self.pk = model, pk

    def locate(self, artifact_ids: list[str]) -> dict[str, str]:
        ids = _uuids(artifact_ids)
        if not ids:
            return {}
        ct = ContentType.objects.get_for_model(self.model)
        rows = Artifact.objects.filter(session_type=ct, session_id=self.pk, pk__in=ids,
                                       metadata__attachment=True).values_list("id", "file")
        return {str(artifact_id): name for artifact_id, name in rows if name}

    def read(self, name: str) -> bytes:
        with artifact_storage().open(name, "rb") as fh:
            data: bytes = fh.read()
        return data


__all__ = ["SessionFiles", "asave_attachment", "attach", "attachments_of", "check_upload",
           "delete_attachments", "image_size",
           "pdf_pages", "save_attachment", "sniff"]
