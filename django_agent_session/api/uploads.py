"""Files over REST: upload an attachment, read it back, and send files with a turn (multipart).

Uploads are bound to a session: ``POST /<prefix>/{id}/attachments/`` (multipart, field
``file``) stores one image or PDF on a session the caller may see and answers its id, which a
later message names (``{"input": {"message": "...", "attachments": [id]}}``, over REST or a
WebSocket). Binding to the session, rather than to the user with a claim at first use, means
the existing owner-scoped session lookup is the whole access check, an upload can never be
attached to another conversation, and nothing is ever left unclaimed: retention, export and
deletion already follow a session's artifacts.

``create`` and ``continue`` also take ``multipart/form-data``: ``message`` (or ``input`` as
JSON text), ``instruction_args`` (JSON text), ``wait``, ``multitask`` and any number of
``files``; the files are stored first, then named in the input's attachments field.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import FileResponse
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from .. import exceptions as exc
from ..conf import agent_settings
from ..declaration.attachments import attachment_fields
from ..declaration.schemas import plain_errors
from ..engine.attachments import block_type
from ..records import Artifact
from ..store.attachments import (
    attachments_of,
    check_upload,
    delete_attachments,
    save_attachment,
)

#: the status an attachment refused for each ``InvalidAttachment.reason`` answers
STATUS_BY_REASON = {"too_large": status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                    "type": status.HTTP_415_UNSUPPORTED_MEDIA_TYPE}
#: what a multipart body may hold besides its files (its form fields are small)
FORM_OVERHEAD = 256 * 1024
#: the actions that also accept ``multipart/form-data``
MULTIPART_ACTIONS = frozenset({"create", "continue_turn"})
#: form field names that hold files
FILE_FIELDS = ("files", "file")


class AttachmentRejected(APIException):
    """An ``InvalidAttachment`` as a response: 413 too large, 415 type, else 400;
    ``{"code": "invalid_attachment", "detail", "reason", "errors", "retryable": false}``."""

    #: the response body, as plain values (not ``ErrorDetail``)
    detail: Any

    def __init__(self, error: exc.InvalidAttachment) -> None:
        super().__init__(error.message, error.code)
        self.status_code = STATUS_BY_REASON.get(error.reason, status.HTTP_400_BAD_REQUEST)
        self.detail = {"code": error.code, "detail": error.message, "reason": error.reason,
                       "errors": plain_errors(error.errors), "retryable": False}


class AttachmentSerializer(serializers.Serializer):
    """An uploaded attachment: its id (what a message's ``attachments`` names) and what was
    read from its bytes."""

    id = serializers.UUIDField()
    kind = serializers.CharField(help_text="`image` or `document` (a PDF).")
    content_type = serializers.CharField(help_text="Sniffed from the bytes.")
    size = serializers.IntegerField()
    filename = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    pages = serializers.IntegerField(required=False)


class AttachmentErrorSerializer(serializers.Serializer):
    """A refused attachment (400, 413, 415)."""

    code = serializers.CharField()
    detail = serializers.CharField()
    reason = serializers.CharField(help_text="`too_large`, `type`, `empty`.")
    errors = serializers.DictField()  # type: ignore[assignment]  # a field, not .errors
    retryable = serializers.BooleanField()




def describe(artifact: Artifact) -> dict[str, Any]:
    """What a client is told of an attachment."""
    meta = artifact.metadata or {}
    data = {"id": str(artifact.pk), "kind": block_type(artifact.content_type),
            "content_type": artifact.content_type, "size": artifact.size,
            "filename": meta.get("filename", ""), "created_at": artifact.created_at}
    for key in ("width", "height", "pages"):
        if key in meta:
            data[key] = meta[key]
    return data


class AttachmentsMixin:
    """The attachment endpoints and multipart turns of :class:`AgentSessionViewSet`."""

    request: Any
    action: Any
    action_map: dict[str, str]
    kwargs: dict[str, Any]
    manager: Any
    # the viewset's (annotations only: the viewset's own methods must stay first in the MRO)
    get_object: Any
    owner: Any
    submission: Any
    accepted: Any
    turn_data: Any

    def get_parsers(self) -> list[Any]:
        parsers = super().get_parsers()  # type: ignore[misc]
        # the action is not set yet when the request's parsers are chosen: read the map
        method = getattr(getattr(self, "request", None), "method", "") or ""
        if getattr(self, "action_map", {}).get(method.lower()) in MULTIPART_ACTIONS:
            parsers += [MultiPartParser()]
        return list(parsers)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        """Refuse an upload larger than it may be from its Content-Length, before anything
        reads the body: session authentication's CSRF check parses a multipart body (writing
        its files to disk) before the view runs."""
        if (request.content_type or "").startswith("multipart/form-data"):
            files = 1 if self.action == "upload_attachment" else \
                int(agent_settings.ATTACHMENT_MAX_COUNT)
            limit = int(agent_settings.ATTACHMENT_MAX_BYTES)
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > limit * files + FORM_OVERHEAD:
                raise AttachmentRejected(exc.InvalidAttachment(
                    {"file": [f"The request is larger than {files} file(s) of the {limit} "
                              f"bytes allowed."]}, "Attachment too large.", reason="too_large"))
        super().initial(request, *args, **kwargs)  # type: ignore[misc]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # a file answers as itself whatever ``Accept`` says (an error, as JSON)
        force = force or getattr(self, "action", None) == "attachment"
        return super().perform_content_negotiation(request, force)  # type: ignore[misc]

    # -- multipart turns ------------------------------------------------------------------

    def is_multipart(self) -> bool:
        return (self.request.content_type or "").startswith("multipart/form-data")

    def request_body(self) -> Any:
        """``request.data``; a multipart form as the JSON body it stands for (no files)."""
        if not self.is_multipart():
            return self.request.data
        form, body = self.request.data, {}
        for name in ("input", "instruction_args"):
            if name in form:
                try:
                    body[name] = json.loads(form[name])
                except ValueError:
                    raise ValidationError({name: ["Must be JSON text in a multipart form."]}) \
                        from None
        if "input" not in body and "message" in form:
            body["input"] = {"message": form["message"]}
        elif "input" not in body and self.uploads():
            body["input"] = {}
        for name in ("wait", "multitask"):
            if name in form:
                body[name] = form[name]
        return body

    def uploads(self) -> list[Any]:
        """The files of a multipart request (none for JSON)."""
        if not self.is_multipart():
            return []
        return [f for name in FILE_FIELDS for f in self.request.FILES.getlist(name)]

    def check_uploads(self) -> list[Any]:
        """The request's files, each checked (type, size) before anything is stored."""
        files = self.uploads()
        limit = agent_settings.ATTACHMENT_MAX_COUNT
        if len(files) > limit:
            raise ValidationError({"files": [f"At most {limit} files per message."]})
        if files and not attachment_fields(self.manager.model.agent_options.input_serializer):
            raise ValidationError({"files": ["This agent's input takes no attachments."]})
        for upload in files:
            try:
                check_upload(upload)
            except exc.InvalidAttachment as error:
                raise AttachmentRejected(error) from None
        return files

    def with_uploads(self, session: Any, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the request's files stored on ``session`` and named in its input's
        first attachments field (after any ids the input names itself)."""
        files = self.check_uploads()
        if not files:
            return body
        field = attachment_fields(self.manager.model.agent_options.input_serializer)[0]
        saved = [self.store_upload(session, upload) for upload in files]
        input = dict(body["input"]) if isinstance(body.get("input"), dict) else {}
        named: list[Any] = input[field] if isinstance(input.get(field), list) else []
        input[field] = [*named, *(str(a.pk) for a in saved)]
        return {**body, "input": input, "uploaded": saved}

    def store_upload(self, session: Any, upload: Any) -> Artifact:
        try:
            return save_attachment(session, upload, filename=upload.name,
                                   uploaded_by=self.request.user)
        except exc.InvalidAttachment as error:
            raise AttachmentRejected(error) from None

    def start_with_files(self, body: dict[str, Any], args: Any) -> Response:
        """``create`` with files: the session is created first (the files need it), then its
        first turn runs on it as ``continue`` would, answering as ``create`` does."""
        self.check_uploads()
        self.manager.validate_input(body["input"])
        self.manager.initial_context(args)
        session = self.manager.create_session(instruction_args=args, owner=self.owner())
        body = self.with_uploads(session, body)
        return self.run_with_files(session, body, created=True)

    def run_with_files(self, session: Any, body: dict[str, Any], *, created: bool = False
                       ) -> Response:
        """Run (or queue) the turn of a body whose files are stored; a turn refused before it
        was queued (bad input) deletes them again."""
        manager, submission = self.manager, self.submission()
        try:
            if not body["wait"]:
                submitted = manager.submit(session, body["input"],
                                           multitask=body.get("multitask"), **submission)
                return self.accepted(submitted.run, submitted.created)
            session = manager.continue_session(session, body["input"],
                                               multitask=body.get("multitask"), **submission)
        except exc.InvalidInput:
            delete_attachments(body.get("uploaded") or ())
            raise
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(self.turn_data(session), status=code)

    # -- endpoints ------------------------------------------------------------------------

    @action(detail=True, methods=["post"], url_path="attachments", url_name="attachments",
            parser_classes=[MultiPartParser, FormParser])
    def upload_attachment(self, request: Request, pk: Any = None) -> Response:
        """Store one image or PDF (multipart field ``file``) on the session; 201 with its id,
        which a message's ``attachments`` then names. Its type is read from its bytes."""
        session = self.get_object()  # a body too large was refused by ``initial``
        files = self.uploads()
        if len(files) != 1:
            raise ValidationError({"file": ["Send exactly one file, in the field `file`."]})
        artifact = self.store_upload(session, files[0])
        return Response(AttachmentSerializer(describe(artifact)).data,
                        status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["get"], url_path=r"attachments/(?P<artifact_id>[^/]+)",
            url_name="attachment", renderer_classes=[JSONRenderer])
    def attachment(self, request: Request, pk: Any = None, artifact_id: Any = None) -> Any:
        """The file of one of the session's attachments (an image inline, a PDF as a
        download), served with its sniffed type."""
        session = self.get_object()
        try:
            artifact = attachments_of(session).filter(pk=artifact_id).first()
        except (DjangoValidationError, ValueError):
            artifact = None
        if artifact is None or not artifact.file.name:
            raise NotFound()
        try:
            handle = artifact.file.storage.open(artifact.file.name, "rb")
        except (FileNotFoundError, OSError):
            raise NotFound() from None
        response = FileResponse(
            handle, content_type=artifact.content_type,
            as_attachment=artifact.content_type == "application/pdf",
            filename=str((artifact.metadata or {}).get("filename") or ""))
        response["X-Content-Type-Options"] = "nosniff"
        response["Cache-Control"] = "private, max-age=3600"
        return response


__all__ = ["AttachmentErrorSerializer", "AttachmentRejected", "AttachmentSerializer",
           "AttachmentsMixin", "describe"]
