"""Who may use the session endpoints, and which sessions they can see.

DRF permission classes answer "may this request go on"; the session endpoints also need
"which rows exist for this caller", answered *before* any lookup so another user's session is
a 404 exactly like a missing one. A permission class answers that with ``scope_queryset``;
the viewset applies the scope of every permission class that has one (so they intersect, as
permissions do), and scopes to the owner when none has.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework.permissions import BasePermission
from rest_framework.request import Request


def _authenticated(request: Request) -> bool:
    return bool(request.user and request.user.is_authenticated)


def owned_by(request: Request, queryset: QuerySet) -> QuerySet:
    """The caller's own sessions (none for an anonymous caller)."""
    if not _authenticated(request):
        return queryset.none()
    return queryset.filter(owner=request.user)


class IsSessionOwner(BasePermission):
    """Authenticated users, each seeing only the sessions they own (the default)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return _authenticated(request)

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        return obj.owner_id is not None and obj.owner_id == request.user.pk

    def scope_queryset(self, request: Request, view: Any, queryset: QuerySet) -> QuerySet:
        return owned_by(request, queryset)


class IsStaffOrSessionOwner(IsSessionOwner):
    """Like :class:`IsSessionOwner`, but staff users see every session. Opt-in only."""

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        return bool(request.user.is_staff) or super().has_object_permission(request, view, obj)

    def scope_queryset(self, request: Request, view: Any, queryset: QuerySet) -> QuerySet:
        if _authenticated(request) and request.user.is_staff:
            return queryset
        return owned_by(request, queryset)
