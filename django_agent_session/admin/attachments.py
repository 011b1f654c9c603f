"""The files a user attached, in the admin: a thumbnail (image) or a link (PDF) in the
transcript, served by a view of the session's own admin, so whoever may not open the session
(``owner_scoped``, view permission) may not open its files either."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest
from django.urls import path, reverse

from ..store.attachments import attachments_of


class AttachmentAdminMixin:
    """``<object_id>/attachments/<artifact_id>/``: one attachment of a session the user may
    view (through :meth:`get_object`, hence :meth:`get_queryset` and its owner scope)."""

    opts: Any
    admin_site: Any
    get_object: Any
    has_view_or_change_permission: Any

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<path:object_id>/attachments/<str:artifact_id>/",
                 self.admin_site.admin_view(self.attachment_view),
                 name="{}_{}_attachment".format(*info)),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def attachment_url(self, obj: Any) -> Callable[[str], str]:
        """``artifact id -> URL`` of ``obj``'s attachments (what the transcript links)."""
        name = f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_attachment"
        return lambda artifact_id: reverse(name, args=[quote(obj.pk), artifact_id])

    def attachment_view(self, request: HttpRequest, object_id: str,
                        artifact_id: str) -> FileResponse:
        obj = self.get_object(request, unquote(object_id))
        if obj is None or not self.has_view_or_change_permission(request, obj):
            raise Http404
        try:
            artifact = attachments_of(obj).filter(pk=artifact_id).first()
        except (ValidationError, ValueError):
            artifact = None
        if artifact is None or not artifact.file.name:
            raise Http404
        try:
            handle = artifact.file.storage.open(artifact.file.name, "rb")
        except OSError:
            raise Http404 from None
        response = FileResponse(handle, content_type=artifact.content_type,
                                as_attachment=artifact.content_type == "application/pdf",
                                filename=str((artifact.metadata or {}).get("filename") or ""))
        response["X-Content-Type-Options"] = "nosniff"
        return response


__all__ = ["AttachmentAdminMixin"]
