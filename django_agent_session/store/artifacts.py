"""Artifacts: files a run produced or a tool stored, kept through Django's storage API.

An :class:`~django_agent_session.models.Artifact` row links a file (on ``artifact_storage()``:
``AGENT_SESSION["ARTIFACT_STORAGE"]`` or ``default_storage``) to its session and, optionally,
the run that made it; it records the SHA-256, size and content type so exports and admins
never need to read the file to describe it. Keys are unique per session.

Files follow their rows: a ``post_delete`` receiver on ``Artifact`` deletes the stored file once
the deleting transaction commits. Deleting a session cascades to its artifacts through the
``GenericRelation`` (Django's collector fetches them and sends ``post_delete``), so one receiver
covers every concrete session model, ``QuerySet.delete()`` and retention alike.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import uuid
from typing import IO, Any

from channels.db import database_sync_to_async
from django.contrib.contenttypes.models import ContentType
from django.core.files import File
from django.core.files.base import ContentFile
from django.db import models, transaction
from django.db.models.signals import post_delete
from django.utils.text import get_valid_filename

from ..records import AgentRun, Artifact

DEFAULT_CONTENT_TYPE = "application/octet-stream"

Content = bytes | str | File | IO[bytes]


def _session_and_run(target: Any, run: Any) -> tuple[models.Model, Any]:
    """Accept a session or a tool's ``ToolContext`` (whose run is then the default run)."""
    if isinstance(target, models.Model):
        return target, run
    session = getattr(target, "session", None)
    if isinstance(session, models.Model):  # a ToolContext
        return session, run if run is not None else getattr(target, "run_id", None)
    raise TypeError(f"expected a session or a ToolContext, got {type(target).__name__}")


def _run_id(run: Any) -> Any:
    if run is None or isinstance(run, uuid.UUID):
        return run
    if isinstance(run, AgentRun):
        return run.pk
    return uuid.UUID(str(run))


def _as_file(content: Content, filename: str) -> File:
    if isinstance(content, str):
        content = content.encode("utf-8")
    if isinstance(content, (bytes, bytearray, memoryview)):
        return ContentFile(bytes(content), name=filename)
    if isinstance(content, File):
        return content
    if hasattr(content, "read"):
        return File(content, name=filename)
    raise TypeError(f"artifact content must be bytes, str or a file, got {type(content).__name__}")


def digest(file: File) -> tuple[str, int]:
    """SHA-256 (hex) and size of ``file``, read in chunks; leaves it rewound."""
    sha, size = hashlib.sha256(), 0
    if hasattr(file, "seek"):
        file.seek(0)
    for chunk in file.chunks():
        sha.update(chunk)
        size += len(chunk)
    file.seek(0)
    return sha.hexdigest(), size


def _content_type_for(content: Content, filename: str, given: str | None) -> str:
    if given:
        return given
    guessed = getattr(content, "content_type", None)  # an UploadedFile
    if guessed:
        return guessed
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    return "text/plain; charset=utf-8" if isinstance(content, str) else DEFAULT_CONTENT_TYPE


def artifact_filename(key: str, filename: str | None = None) -> str:
    """The stored file's name: ``filename`` or the key's last segment, made storage-safe."""
    name = os.path.basename(filename or key.rstrip("/")) or "artifact"
    return get_valid_filename(name)


def save_artifact(session: Any, key: str, content: Content, *, run: Any = None,
                  content_type: str | None = None, metadata: dict[str, Any] | None = None,
                  filename: str | None = None, replace: bool = True) -> Artifact:
    """Store ``content`` as the session's artifact ``key`` and return the saved row.

    ``session`` may be a session or the ``ToolContext`` a tool receives (its ``run_id`` then
    links the artifact to the running turn). ``run`` is an ``AgentRun`` or its id. An existing
    artifact with the same key is replaced (its old file is deleted on commit) unless
    ``replace=False``, which raises :class:`FileExistsError` instead.
    """
    session, run = _session_and_run(session, run)
    if not key:
        raise ValueError("an artifact needs a non-empty key")
    name = artifact_filename(key, filename)
    file = _as_file(content, name)
    checksum, size = digest(file)
    artifact = Artifact(
        session_type=ContentType.objects.get_for_model(type(session)), session_id=session.pk,
        run_id=_run_id(run), key=key, size=size, checksum=checksum,
        content_type=_content_type_for(content, name, content_type), metadata=metadata or {},
    )
    # the file is written first (storage is not transactional); a failed insert removes it
    artifact.file.save(name, file, save=False)
    assert artifact.file.name is not None  # save() named the file
    try:
        with transaction.atomic():
            existing = Artifact.objects.filter(session_id=session.pk, key=key)
            if not replace and existing.exists():
                raise FileExistsError(f"session {session.pk} already has an artifact {key!r}")
            existing.delete()
            artifact.save(force_insert=True)
    except BaseException:
        artifact.file.storage.delete(artifact.file.name)
        raise
    return artifact


async def asave_artifact(session: Any, key: str, content: Content, **kwargs: Any) -> Artifact:
    """Async twin of :func:`save_artifact` (for async tools)."""
    return await database_sync_to_async(save_artifact)(session, key, content, **kwargs)


def get_artifact(session: Any, key: str) -> Artifact:
    """The session's artifact ``key`` (raises ``Artifact.DoesNotExist``)."""
    session, _ = _session_and_run(session, None)
    return Artifact.objects.get(session_id=session.pk, key=key)


def open_artifact(session: Any, key: str, mode: str = "rb") -> File:
    """Open the file of artifact ``key``; use it as a context manager."""
    artifact = get_artifact(session, key)
    assert artifact.file.name is not None  # a stored row has a str name (NOT NULL column)
    return artifact.file.storage.open(artifact.file.name, mode)


def read_artifact(session: Any, key: str) -> bytes:
    """The bytes of artifact ``key``."""
    with open_artifact(session, key) as fh:
        return fh.read()


def delete_artifact(session: Any, key: str) -> bool:
    """Delete artifact ``key`` and (on commit) its file; returns whether it existed."""
    session, _ = _session_and_run(session, None)
    deleted, _ = Artifact.objects.filter(session_id=session.pk, key=key).delete()
    return bool(deleted)


def _delete_file(sender: type[Artifact], instance: Artifact, using: str, **kwargs: Any) -> None:
    """Delete the stored file once the row's deletion has committed (a rollback keeps both)."""
    name = instance.file.name
    if not name:
        return
    storage = instance.file.storage
    transaction.on_commit(lambda: storage.delete(name), using=using)


post_delete.connect(_delete_file, sender=Artifact, dispatch_uid="django_agent_session.artifact_file")

__all__ = ["asave_artifact", "delete_artifact", "digest", "get_artifact", "open_artifact",
           "read_artifact", "save_artifact"]
