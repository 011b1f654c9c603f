"""Read-only admins of the sessions' logs: runs, events and artifacts.

Registered on the default site by :mod:`.registration`; importing this module registers nothing.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Q
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from ..declaration.registry import session_models
from ..models import AgentEvent, AgentRun, Artifact
from .filters import SessionModelFilter
from .rendering import (
    TIMELINE_LIMIT,
    _admin_url,
    _duration,
    _error_text,
    _money,
    _pre,
    _preview,
    _ratio,
    _status_badge,
)
from .search import _parse_uuid, _search_bits


class SessionLogAdmin(admin.ModelAdmin):
    """Read-only admin of a log row of some session (runs, events, artifacts).

    The row's session is linked through its content type (one ``select_related``), and a pasted
    UUID finds rows by their own id or their session's. A row shows only to users who may see
    its session in that session model's admin on the same site (``owner_scoped``; rows of
    models the site has no session admin for are not narrowed).
    """

    list_select_related = ["session_type"]
    uuid_search_fields: tuple[str, ...] = ("id", "session_id")

    class Media:
        css = {"all": ["django_agent_session/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        rows = super().get_queryset(request)
        scope = self.session_scope(request)
        return rows if scope is None else rows.filter(scope)

    def session_scope(self, request: HttpRequest) -> Q | None:
        """The rows whose sessions ``request.user`` may see, or None for all of them.

        Each session model's admin on this site decides for its rows (``scope_sessions``, a
        subquery: the row count does not change the query count).
        """
        models_ = session_models()
        types = ContentType.objects.get_for_models(*models_)
        scope, narrowed = Q(), False
        for model in models_:
            model_admin = self.admin_site._registry.get(model)
            sees_all = getattr(model_admin, "sees_all_sessions", None)
            if sees_all is None or sees_all(request):
                scope |= Q(session_type=types[model])
            else:
                narrowed = True
                visible = model_admin.scope_sessions(  # type: ignore[union-attr]
                    request, model._default_manager.all())
                scope |= Q(session_type=types[model], session_id__in=visible.values("pk"))
        return scope if narrowed else None

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleted with their session

    def get_search_results(self, request: HttpRequest, queryset: models.QuerySet,
                           search_term: str) -> tuple[models.QuerySet, bool]:
        matched, duplicates = super().get_search_results(request, queryset, search_term)
        ids = [pk for bit in _search_bits(search_term) if (pk := _parse_uuid(bit))]
        if ids:
            q = Q()
            for name in self.uuid_search_fields:
                q |= Q(**{f"{name}__in": ids})
            matched = matched | queryset.filter(q)
        return matched, duplicates

    @admin.display(description=_("session"), ordering="session_id")
    def session_link(self, obj: Any) -> str:
        model = obj.session_type.model_class()
        url = _admin_url(self.admin_site, model, "change", obj.session_id) if model else ""
        name = model._meta.verbose_name if model else obj.session_type
        label = f"{name} {str(obj.session_id)[:8]}"
        if url:
            return format_html('<a href="{}">{}</a>', url, label)
        return label


class AgentRunAdmin(SessionLogAdmin):
    list_display = ["started_at", "session_link", "kind", "status_badge", "model", "duration",
                    "iterations", "tokens", "cost_usd", "cache_ratio", "stop_reason",
                    "error_summary"]
    list_filter = ["status", "kind", SessionModelFilter, "model", "stop_reason", "started_at"]
    search_fields = ["model"]
    search_help_text = _("Model name, run id or session id.")
    ordering = ["-started_at"]
    fields = readonly_fields = (
        "id", "session_link", "kind", "status_badge", "stop_reason", "model", "started_at",
        "ended_at", "duration", "iterations", "usage_table", "cost_usd", "cache_ratio",
        "input_json", "output_json", "error_json", "run_events")

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: AgentRun) -> str:
        return _status_badge(obj)

    @admin.display(description=_("duration"), ordering="duration_ms")
    def duration(self, obj: AgentRun) -> str:
        return _duration(obj.duration_ms)

    @admin.display(description=_("tokens"))
    def tokens(self, obj: AgentRun) -> int:
        return sum(obj.usage.values())

    @admin.display(description=_("cost"), ordering="cost")
    def cost_usd(self, obj: AgentRun) -> str:
        return _money(obj.cost)

    @admin.display(description=_("cache hit ratio"))
    def cache_ratio(self, obj: AgentRun) -> str:
        return _ratio(obj.cache_hit_ratio)

    @admin.display(description=_("error"))
    def error_summary(self, obj: AgentRun) -> str:
        text = _error_text(obj.error)
        return format_html('<span class="agent-error-text">{}</span>', text) if text else "—"

    @admin.display(description=_("usage"))
    def usage_table(self, obj: AgentRun) -> str:
        return format_html_join(" · ", "{}: {}", ((name.replace("_", " "), value)
                                                   for name, value in obj.usage.items()))

    @admin.display(description=_("input"))
    def input_json(self, obj: AgentRun) -> str:
        return _pre(obj.input)

    @admin.display(description=_("output"))
    def output_json(self, obj: AgentRun) -> str:
        return _pre(obj.output)

    @admin.display(description=_("error"))
    def error_json(self, obj: AgentRun) -> str:
        return _pre(obj.error) if obj.error else "—"

    @admin.display(description=_("events"))
    def run_events(self, obj: AgentRun) -> str:
        events = list(obj.events.order_by("seq")[:TIMELINE_LIMIT])
        if not events:
            return "—"
        return format_html(
            '<table class="agent-events"><tbody>{}</tbody></table>',
            format_html_join("", "<tr><td>#{}</td><td>{}</td><td><code>{}</code></td></tr>",
                             ((e.seq, e.type, _preview(e.data, 400)) for e in events)))


class AgentEventAdmin(SessionLogAdmin):
    list_display = ["id", "session_link", "seq", "type", "run", "created_at", "data_preview"]
    list_filter = ["type", SessionModelFilter, "created_at"]
    search_fields = ["type"]
    search_help_text = _("Event type, session id or run id.")
    uuid_search_fields = ("session_id", "run_id")
    list_select_related = ["session_type", "run"]
    ordering = ["-id"]
    #: event tables grow fast: skip the unfiltered COUNT(*) the changelist would run
    show_full_result_count = False
    fields = readonly_fields = ("session_link", "seq", "type", "run", "created_at", "data_json")

    @admin.display(description=_("data"))
    def data_preview(self, obj: AgentEvent) -> str:
        return _preview(obj.data)

    @admin.display(description=_("data"))
    def data_json(self, obj: AgentEvent) -> str:
        return _pre(obj.data)


class ArtifactAdmin(SessionLogAdmin):
    list_display = ["key", "session_link", "run", "content_type", "size", "created_at"]
    list_filter = [SessionModelFilter, "content_type", "created_at"]
    search_fields = ["key", "checksum"]
    search_help_text = _("Key, checksum, artifact id or session id.")
    list_select_related = ["session_type", "run"]
    ordering = ["-created_at"]
    fields = readonly_fields = (
        "id", "key", "session_link", "run", "file", "size", "checksum", "content_type",
        "metadata_json", "created_at")

    @admin.display(description=_("metadata"))
    def metadata_json(self, obj: Artifact) -> str:
        return _pre(obj.metadata)
