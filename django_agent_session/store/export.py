"""Export a session (context, runs, events, artifacts) as one JSON document, and import it back.

The document is plain JSON (``json.dumps`` works on it as is)::

    {"schema_version": 1, "model": "app_label.modelname",
     "session": {"id", "owner", "title", "status", "metadata", "pinned", "created_at", ...},
     "fields": {<extra concrete fields of the model>},
     "context": {...}, "runs": [...], "events": [...], "artifacts": [...]}

Timestamps keep their microseconds (``isoformat()``), event ``seq`` numbers are kept, and run
ids are kept or remapped consistently (also inside event data), so ``export(import(doc))``
equals ``doc`` up to the ids. Artifact files are described by metadata; their bytes are
included (base64) only with ``include_files=True``.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any, cast

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils.dateparse import parse_datetime

from .. import exceptions as exc
from ..declaration.registry import session_models
from ..engine.attachments import remap
from ..engine.context import USAGE_KEYS, repair_dangling_tool_use
from ..records import (
    AgentEvent,
    AgentRun,
    Artifact,
    SessionRecord,
    SessionStatus,
    extra_fields,
)
from .artifacts import digest

SCHEMA_VERSION = 1

#: session columns carried by the document (the context column is exported as "context")
SESSION_FIELDS = (
    "title", "status", "metadata", "pinned", "created_at", "updated_at", "last_activity_at",
    "turn_count", "version", "event_seq", *USAGE_KEYS,
)
RUN_FIELDS = (
    "kind", "status", "input", "output", "error", "model", "iterations", *USAGE_KEYS, "cost",
    "stop_reason", "origin", "started_at", "ended_at", "duration_ms",
)
ARTIFACT_FIELDS = ("key", "size", "checksum", "content_type", "metadata", "created_at")
#: columns that are bookkeeping of a live turn, not part of the conversation
_NOT_EXPORTED = {"id", "owner", "lease_token", "lease_expires_at"}


def _json(value: Any) -> Any:
    """Plain JSON values, as the JSON columns would store them."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _column(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    """The concrete column ``name`` of ``model`` (the names here are never reverse relations)."""
    return cast("models.Field[Any, Any]", model._meta.get_field(name))


def _value(field: models.Field, obj: models.Model) -> Any:
    value = field.value_from_object(obj)
    if isinstance(value, datetime):
        return value.isoformat()
    return _json(value)


# -- export ----------------------------------------------------------------------------------

def export_session(session: SessionRecord, *, include_files: bool = False) -> dict[str, Any]:
    """The session as one JSON-ready document (see the module docstring)."""
    model = type(session)
    ct = ContentType.objects.get_for_model(model)
    doc_session: dict[str, Any] = {"id": str(session.pk), "owner": _json(session.owner_id)}
    for name in SESSION_FIELDS:
        doc_session[name] = _value(_column(model, name), session)
    runs = AgentRun.objects.filter(session_type=ct, session_id=session.pk).order_by(
        "started_at", "id")
    events = AgentEvent.objects.filter(session_type=ct, session_id=session.pk).order_by("seq")
    artifacts = Artifact.objects.filter(session_type=ct, session_id=session.pk).order_by(
        "created_at", "key")
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model._meta.label_lower,
        "session": doc_session,
        "fields": {f.attname: _value(f, session) for f in extra_fields(model)},
        "context": _json(session.context_data),
        "runs": [_export_run(run) for run in runs],
        "events": [_export_event(event) for event in events],
        "artifacts": [_export_artifact(a, include_files) for a in artifacts],
    }


def _export_run(run: AgentRun) -> dict[str, Any]:
    data: dict[str, Any] = {"id": str(run.pk)}
    for name in RUN_FIELDS:
        data[name] = _value(_column(AgentRun, name), run)
    return data


def _export_event(event: AgentEvent) -> dict[str, Any]:
    data = event.as_dict()
    return {"seq": data["seq"], "type": data["type"], "run": data["run_id"],
            "data": _json(data["data"]), "created_at": data["created_at"], "id": data["id"]}


def _export_artifact(artifact: Artifact, include_files: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"id": str(artifact.pk),
                            "run": str(artifact.run_id) if artifact.run_id else None,
                            "file": artifact.file.name}
    for name in ARTIFACT_FIELDS:
        data[name] = _value(_column(Artifact, name), artifact)
    if include_files and artifact.file.name:
        with artifact.file.storage.open(artifact.file.name, "rb") as fh:
            data["content"] = base64.b64encode(fh.read()).decode("ascii")
    return data


# -- import ----------------------------------------------------------------------------------

def import_session(data: dict[str, Any], *, model: type[SessionRecord] | None = None,
                   new_id: bool = True, owner: Any = ...) -> SessionRecord:
    """Restore an exported session; returns the new row.

    ``model`` defaults to the one named in the document. With ``new_id`` (the default) the
    session, its runs and its artifacts get fresh ids (run ids are remapped everywhere they
    appear); otherwise the exported ids are kept and an existing session with that id is an
    error. ``owner`` defaults to the document's owner if that user exists here, else none;
    pass a user (or ``None``) to choose. Event ``seq`` numbers and the ``event_seq`` counter
    are restored, so a later event never collides with an imported one.

    Artifact files come from the document's base64 ``content`` (checked against the
    checksum) or, without it, are copied from the stored file the document names if it still
    exists; otherwise the artifact row is restored without a file.
    """
    model = _target_model(data, model)
    _check_document(data)
    doc = data["session"]
    session_id = uuid.uuid4() if new_id else uuid.UUID(doc["id"])
    if not new_id and model._base_manager.filter(pk=session_id).exists():
        raise exc.InvalidInput({"id": [f"A {model.__name__} with id {session_id} exists."]},
                               "Session already exists.")
    run_ids = {r["id"]: (uuid.uuid4() if new_id else uuid.UUID(r["id"])) for r in data["runs"]}
    # attachments are named by artifact id in the context, run inputs and events: new ids
    # are put there too
    artifact_ids = {str(a.get("id")): str(uuid.uuid4()) for a in data["artifacts"]
                    if isinstance(a, dict)} if new_id else {}
    if artifact_ids:
        data = {**data, **{key: remap(data.get(key), artifact_ids)
                           for key in ("context", "runs", "events")}}

    # the plugin gives an abstract model (SessionRecord) no ``pk``; every concrete one has it
    session = model(pk=session_id,  # type: ignore[misc]
                    owner_id=_owner_id(doc.get("owner"), owner))
    for name in SESSION_FIELDS:
        setattr(session, name, _restore(_column(model, name), doc.get(name)))
    for attname, value in (data.get("fields") or {}).items():
        field = _field_by_attname(model, attname)
        if field is not None:
            setattr(session, attname, _restore(field, value))
    if session.status == SessionStatus.RUNNING:
        session.status = SessionStatus.IDLE  # no lease comes with it: the turn is not running
    setattr(session, model.agent_options.context_field, _repaired(data.get("context") or {}))
    last_seq = max((e["seq"] for e in data["events"]), default=0)
    session.event_seq = max(int(doc.get("event_seq") or 0), last_seq)

    ct = ContentType.objects.get_for_model(model)
    written: list[tuple[Any, str]] = []
    try:
        with transaction.atomic():
            updated_at = session.updated_at
            session.save(force_insert=True)
            # auto_now stamps updated_at on insert; put the exported value back
            model._base_manager.filter(pk=session_id).update(updated_at=updated_at)
            session.updated_at = updated_at
            AgentRun.objects.bulk_create([_import_run(r, run_ids, ct, session_id)
                                          for r in data["runs"]])
            AgentEvent.objects.bulk_create([_import_event(e, run_ids, ct, session_id)
                                            for e in data["events"]])
            artifacts = [_import_artifact(a, run_ids, ct, session_id, new_id, written,
                                          artifact_ids)
                         for a in data["artifacts"]]
            Artifact.objects.bulk_create(artifacts)
    except BaseException:
        for storage, name in written:  # storage is not transactional: undo the writes
            storage.delete(name)
        raise
    return session


def _repaired(context: Any) -> Any:
    """An imported context with every dangling ``tool_use`` answered: turns repair only the
    tail of a history on load (engine/context.py), and an imported one may come from
    anywhere."""
    if isinstance(context, dict) and isinstance(context.get("messages"), list):
        messages = list(context["messages"])
        if repair_dangling_tool_use(messages):
            return {**context, "messages": messages}
    return context


def _target_model(data: Any, model: type[SessionRecord] | None
                  ) -> type[SessionRecord]:
    if not isinstance(data, dict):
        raise exc.InvalidInput({"non_field_errors": ["An export document must be an object."]},
                               "Invalid export document.")
    if model is None:
        try:
            model = apps.get_model(str(data.get("model")))
        except (LookupError, ValueError):
            raise exc.InvalidInput({"model": [f"Unknown model {data.get('model')!r}."]},
                                   "Invalid export document.") from None
    if model not in session_models():
        raise exc.InvalidInput({"model": [f"{model.__name__} is not a session model."]},
                               "Invalid export document.")
    return model


def _check_document(data: dict[str, Any]) -> None:
    errors: dict[str, list[str]] = {}
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        errors["schema_version"] = [f"Unsupported schema_version {version!r}; "
                                    f"this version reads {SCHEMA_VERSION}."]
    if not isinstance(data.get("session"), dict) or "id" not in data.get("session", {}):
        errors["session"] = ["Missing or invalid."]
    for key in ("runs", "events", "artifacts"):
        if not isinstance(data.get(key, None), list):
            errors[key] = ["Must be a list."]
    if not isinstance(data.get("context", {}), dict):
        errors["context"] = ["Must be an object."]
    if errors:
        raise exc.InvalidInput(errors, "Invalid export document.")


def _owner_id(exported: Any, owner: Any) -> Any:
    if owner is not ...:
        return owner.pk if isinstance(owner, models.Model) else owner
    if exported is None:
        return None
    user_model = get_user_model()
    return exported if user_model._default_manager.filter(pk=exported).exists() else None


def _field_by_attname(model: type[SessionRecord], attname: str) -> models.Field | None:
    for field in extra_fields(model):
        if field.attname == attname:
            return field
    return None


def _restore(field: models.Field, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(field, models.DateTimeField):
        return parse_datetime(value)
    if isinstance(field, models.JSONField):
        return value
    return field.to_python(value)


def _restore_fields(model: type[models.Model], names: tuple[str, ...], doc: dict[str, Any]
                    ) -> dict[str, Any]:
    # a key an older document does not have takes the column's default
    return {name: _restore(_column(model, name), doc[name]) for name in names if name in doc}


def _remap(value: Any, run_ids: dict[str, uuid.UUID]) -> Any:
    return str(run_ids.get(value, value)) if isinstance(value, str) else value


def _import_run(doc: dict[str, Any], run_ids: dict[str, uuid.UUID], ct: ContentType,
                session_id: uuid.UUID) -> AgentRun:
    return AgentRun(id=run_ids[doc["id"]], session_type=ct, session_id=session_id,
                    **_restore_fields(AgentRun, RUN_FIELDS, doc))


def _import_event(doc: dict[str, Any], run_ids: dict[str, uuid.UUID], ct: ContentType,
                  session_id: uuid.UUID) -> AgentEvent:
    data = doc.get("data") or {}
    if isinstance(data, dict) and "run_id" in data:
        data = {**data, "run_id": _remap(data["run_id"], run_ids)}
    # a malformed created_at parses to None, which the NOT NULL column rejects on insert
    # (run and artifact timestamps behave the same, through _restore_fields)
    return AgentEvent(  # type: ignore[misc]
        session_type=ct, session_id=session_id, seq=doc["seq"], type=doc["type"],
        run_id=run_ids.get(doc["run"]) if doc.get("run") else None, data=data,
        created_at=parse_datetime(doc["created_at"]), key=doc.get("id"))  # the caller's id


def _import_artifact(doc: dict[str, Any], run_ids: dict[str, uuid.UUID], ct: ContentType,
                     session_id: uuid.UUID, new_id: bool, written: list[tuple[Any, str]],
                     artifact_ids: dict[str, str]) -> Artifact:
    new = artifact_ids.get(str(doc.get("id"))) if new_id else doc["id"]
    artifact = Artifact(id=uuid.UUID(new) if new else uuid.uuid4(), session_type=ct,
                        session_id=session_id,
                        run_id=run_ids.get(doc["run"]) if doc.get("run") else None,
                        **_restore_fields(Artifact, ARTIFACT_FIELDS, doc))
    storage = artifact.file.storage
    source = doc.get("file") or ""
    filename = source.rsplit("/", 1)[-1] or "artifact"
    if doc.get("content") is not None:
        try:
            content = ContentFile(base64.b64decode(doc["content"], validate=True), name=filename)
        except (binascii.Error, ValueError):
            raise exc.InvalidInput({"artifacts": [f"{doc['key']}: content is not base64."]},
                                   "Invalid export document.") from None
        checksum, _ = digest(content)
        if doc.get("checksum") and checksum != doc["checksum"]:
            raise exc.InvalidInput({"artifacts": [f"{doc['key']}: checksum mismatch."]},
                                   "Invalid export document.")
    elif source and storage.exists(source):
        target = artifact.file.field.generate_filename(artifact, filename)
        if target == source:  # the same ids: the file is already where it belongs
            artifact.file.name = source
            return artifact
        with storage.open(source, "rb") as fh:
            content = ContentFile(fh.read(), name=filename)
    else:
        return artifact  # metadata only: the file is gone
    artifact.file.save(filename, content, save=False)
    assert artifact.file.name is not None  # save() named the file
    written.append((storage, artifact.file.name))
    return artifact


__all__ = ["SCHEMA_VERSION", "export_session", "import_session"]
