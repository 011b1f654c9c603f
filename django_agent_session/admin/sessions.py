"""The admin of a concrete session model: changelist, transcript change page and actions.

The admin writes no session row itself: saving and the reset action go through
:mod:`django_agent_session.store.sessions`, the stop action through the live API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.utils import lookup_spawns_duplicates
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import F, Q
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .. import admin as admin_package
from ..engine.context import USAGE_KEYS
from ..models import AgentEvent, AgentRun, AgentSessionModel, Artifact, RunStatus
from ..records import SessionRecord
from ..store.export import export_session
from ..store.queries import json_text_q
from ..store.sessions import reset_context, update_fields
from .approvals import ApprovalAdminMixin
from .attachments import AttachmentAdminMixin
from .rendering import (
    TIMELINE_LIMIT,
    _admin_url,
    _duration,
    _error_text,
    _input_text,
    _money,
    _pre,
    _ratio,
    _status_badge,
    _when,
    transcript_entries,
)
from .search import _parse_uuid, _search_bits, _search_lookup

#: what transcript() finds on a session render_change_form did not prepare
_UNSET = object()

#: longest title and owner text of a changelist cell (CSS then cuts it to the column's width)
TITLE_CHARS = 60
OWNER_CHARS = 30


def _cell(text: str, limit: int, kind: str) -> str:
    """``text`` cut to ``limit`` characters, on one line with a CSS ellipsis; whole as tooltip."""
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return format_html('<span class="agent-cell {}" title="{}">{}</span>', kind, text, shown)


def _live_stop() -> Callable[..., bool] | None:
    """``django_agent_session.live.api.stop_session``, or ``None`` without live sessions."""
    try:
        # kept inside: tests take the live API away (sys.modules) to show the fallback message
        from ..live.api import stop_session
    except ImportError:
        return None
    return stop_session


def _export_documents(sessions: Iterable[AgentSessionModel]) -> list[dict[str, Any]]:
    return [export_session(session) for session in sessions]


class SessionChangeList(ChangeList):
    """The changelist reads every column but the (possibly large) context JSON."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        qs = super().get_queryset(request, exclude_parameters)
        return qs.defer(cast(type[SessionRecord], self.model).agent_options.context_field)


class AgentSessionAdmin(AttachmentAdminMixin, ApprovalAdminMixin, admin.ModelAdmin):
    """The admin of a concrete session model: a transcript change page and session actions.

    Register it for your models (``admin.site.register(ChatAgent, AgentSessionAdmin)``) or
    subclass it. Sessions are created by turns, not by the admin, and only the title, owner,
    pinned flag and metadata are editable; saving writes just those columns, so a turn that
    commits meanwhile is not overwritten. Tool calls awaiting approval are shown at the end of
    the transcript, with Approve and Reject for users who may decide them (see
    :mod:`.approvals`: ``has_decide_permission``).

    With ``owner_scoped = True`` users who are not superusers see, and act on, only the
    sessions they own: the changelist, change page, actions and approvals all read
    :meth:`get_queryset`, and the run, event and artifact admins of the same site show only
    those sessions' rows (:meth:`scope_sessions`; override :meth:`sees_all_sessions` to let a
    support group see everything).
    """

    #: non-superusers see only the sessions they own (and only their runs, events, artifacts)
    owner_scoped = False

    #: fits a 1280 px screen beside the admin's sidebars: titles and owners are cut short
    #: (:data:`TITLE_CHARS`, :data:`OWNER_CHARS`, then a CSS ellipsis; the whole text is the
    #: cell's tooltip); add ``"cost"`` or ``"created_at"`` in a subclass for more columns
    list_display = ["session", "owner_name", "status", "turns", "tokens", "last_activity_at"]
    list_filter = ["status", ("owner", admin.RelatedOnlyFieldListFilter), "pinned",
                   "created_at", "last_activity_at"]
    list_select_related = ["owner"]
    #: searched like Django's ``search_fields``; the owner's username and email fields, the
    #: context JSON (message text) and a pasted session id are searched as well
    search_fields = ["title"]
    search_help_text = _("Title, owner, message text or session id.")
    raw_id_fields = ["owner"]
    actions = ["export_json", "reset_sessions", "stop_live_sessions"]
    #: Django's, plus the forms of the Approve / Reject buttons (see :mod:`.approvals`)
    change_form_template = "admin/django_agent_session/change_form.html"
    readonly_fields = ["overview", "usage_totals", "system_prompt", "instruction_args",
                       "transcript", "run_timeline", "context_json"]

    class Media:
        css = {"all": ["django_agent_session/admin.css"]}

    # -- queries ---------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        total = sum((F(name) for name in USAGE_KEYS[1:]), F(USAGE_KEYS[0]))
        sessions = self.scope_sessions(request, super().get_queryset(request))
        return sessions.annotate(admin_total_tokens=total).with_cost()

    def sees_all_sessions(self, request: HttpRequest) -> bool:
        """Whether ``request.user`` sees every session here: always, unless ``owner_scoped``;
        then superusers only."""
        return not self.owner_scoped or bool(getattr(request.user, "is_superuser", False))

    def scope_sessions(self, request: HttpRequest, queryset: models.QuerySet
                       ) -> models.QuerySet:
        """``queryset`` narrowed to the sessions ``request.user`` may see here (the log admins
        of the site call it too)."""
        if self.sees_all_sessions(request):
            return queryset
        return queryset.filter(owner_id=getattr(request.user, "pk", None))

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return SessionChangeList

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        user = get_user_model()
        names = {f.name for f in user._meta.get_fields()}
        owner = [f"owner__{name}" for name in (user.USERNAME_FIELD, user.get_email_field_name())
                 if name in names]
        fields = list(super().get_search_fields(request))
        return fields + [name for name in owner if name not in fields]

    def get_search_results(self, request: HttpRequest, queryset: models.QuerySet,
                           search_term: str) -> tuple[models.QuerySet, bool]:
        """Every word must be in a search field, in the context JSON, or be the session id."""
        fields = self.get_search_fields(request)
        context_field = self.model.agent_options.context_field
        lookups = [_search_lookup(str(name)) for name in fields]
        for bit in _search_bits(search_term):
            q = json_text_q(context_field, bit)
            for lookup in lookups:
                q |= Q(**{lookup: bit})
            if (pk := _parse_uuid(bit)) is not None:
                q |= Q(pk=pk)
            queryset = queryset.filter(q)
        duplicates = bool(search_term) and any(
            lookup_spawns_duplicates(self.opts, lookup) for lookup in lookups)
        return queryset, duplicates

    # -- permissions and saving ------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sessions are started by turns (start_session), not typed in

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """Runs, events and artifacts belong to the session: deleting it may delete them."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        owned = {str(m._meta.verbose_name) for m in (AgentRun, AgentEvent, Artifact)}
        return deleted, counts, {p for p in perms_needed if str(p) not in owned}, protected

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        own = {f.name for f in AgentSessionModel._meta.fields}
        context_field = self.model.agent_options.context_field
        extra = [f.name for f in self.model._meta.concrete_fields
                 if f.editable and not f.primary_key and f.name not in own
                 and f.name != context_field]
        return [
            (None, {"fields": ["title", "owner", "pinned", *extra, "overview", "usage_totals"]}),
            (_("Instructions"), {"fields": ["system_prompt", "instruction_args"]}),
            (_("Transcript"), {"fields": ["transcript"], "classes": ["agent-wide"]}),
            (_("Runs"), {"fields": ["run_timeline"], "classes": ["agent-wide"]}),
            (_("Metadata"), {"fields": ["metadata"], "classes": ["collapse"]}),
            (_("Raw context"), {"fields": ["context_json"], "classes": ["collapse", "agent-wide"]}),
        ]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            return super().save_model(request, obj, form, change)
        changed = [name for name in form.changed_data if name in form.fields]
        if changed:
            update_fields(obj, changed)

    # -- changelist columns ----------------------------------------------------------------

    @admin.display(description=_("session"), ordering="title")
    def session(self, obj: Any) -> str:
        if not obj.title:  # the model name and the full id would be as wide as a title
            return format_html('<span class="agent-quiet" title="{}">{} · {}</span>',
                               obj.pk, _("untitled"), str(obj.pk)[:8])
        return _cell(obj.title, TITLE_CHARS, "agent-cell-title")

    @admin.display(description=_("owner"), ordering="owner")
    def owner_name(self, obj: Any) -> str:
        return _cell(str(obj.owner), OWNER_CHARS, "agent-cell-owner") if obj.owner_id else "—"

    @admin.display(description=_("turns"), ordering="turn_count")
    def turns(self, obj: Any) -> int:
        return obj.turn_count

    @admin.display(description=_("tokens"), ordering="admin_total_tokens")
    def tokens(self, obj: Any) -> int:
        total = getattr(obj, "admin_total_tokens", None)
        return total if total is not None else sum(getattr(obj, n) for n in USAGE_KEYS)

    @admin.display(description=_("cost"), ordering="runs_cost")
    def cost(self, obj: Any) -> str:
        return _money(obj.total_cost)

    # -- change page -----------------------------------------------------------------------

    @admin.display(description=_("session"))
    def overview(self, obj: Any) -> str:
        lease = ""
        # a lease left by a crashed turn (expired, not yet taken over) is shown too
        if obj.lease_token is not None:
            lease = format_html(' · <span class="agent-badge agent-status-running">{} {}</span>',
                                _("turn lease until"), _when(obj.lease_expires_at))
        events_url = _admin_url(self.admin_site, AgentEvent, "changelist")
        events = ""
        if events_url:
            events = format_html(' · <a href="{}?session_id={}">{}</a>', events_url, obj.pk,
                                 _("events"))
        return format_html(
            '{} · {} {} · {} {} · {} {} · {} {} · <code>{}</code>{}{}',
            _status_badge(obj), obj.turn_count, _("turns"), _("version"), obj.version,
            _("created"), _when(obj.created_at), _("last activity"),
            _when(obj.last_activity_at), obj.pk, lease, events)

    @admin.display(description=_("token totals"))
    def usage_totals(self, obj: Any) -> str:
        labels = [_("input"), _("output"), _("cache creation"), _("cache read"), _("total"),
                  _("cache hit ratio"), _("cost")]
        values: list[Any] = [getattr(obj, name) for name in USAGE_KEYS]
        values.append(sum(values))
        cells = [f"{value:,}" for value in values]
        cells += [_ratio(obj.cache_hit_ratio), _money(obj.total_cost)]
        return format_html(
            '<table class="agent-usage"><thead><tr>{}</tr></thead><tbody><tr>{}</tr></tbody>'
            "</table>",
            format_html_join("", "<th>{}</th>", ((label,) for label in labels)),
            format_html_join("", "<td>{}</td>", ((cell,) for cell in cells)))

    @admin.display(description=_("system prompt"))
    def system_prompt(self, obj: Any) -> str:
        system = obj.get_context().system
        if not system:
            return "—"
        return format_html('<pre class="agent-prose">{}</pre>', system)

    @admin.display(description=_("instruction args"))
    def instruction_args(self, obj: Any) -> str:
        return _pre(obj.get_context().instruction_args)

    @admin.display(description=_("conversation"))
    def transcript(self, obj: Any) -> str:
        context = obj.get_context()
        # failed runs after the last completed one are not in the context: show them last
        trailing = []
        for run in reversed(self._runs(obj)):
            if run.status == RunStatus.COMPLETED:
                break
            if run.status in (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INCOMPLETE,
                              RunStatus.REFUSED):
                trailing.append({"run": run, "input": _input_text(run.input),
                                 "error": _error_text(run.error),
                                 "partial": (run.output or {}).get("partial_text", "")})
        # set by render_change_form (with the user's permission); else shown without controls
        approvals = getattr(obj, "_admin_approvals", _UNSET)
        if approvals is _UNSET:
            approvals = self.approvals(None, obj)
        return render_to_string("admin/django_agent_session/transcript.html", {
            "entries": transcript_entries(context.messages, self.attachment_url(obj)),
            "failures": list(reversed(trailing)),
            "repaired": context.repaired,
            "approvals": approvals,
        })

    @admin.display(description=_("timeline"))
    def run_timeline(self, obj: Any) -> str:
        runs = self._runs(obj)
        shown = runs[-TIMELINE_LIMIT:]
        run_url = _admin_url(self.admin_site, AgentRun, "changelist")
        rows = [{
            "run": run,
            "url": _admin_url(self.admin_site, AgentRun, "change", run.pk),
            "duration": _duration(run.duration_ms),
            "tokens": sum(run.usage.values()),
            "error": _error_text(run.error),
        } for run in shown]
        return render_to_string("admin/django_agent_session/run_timeline.html", {
            "rows": rows, "hidden": len(runs) - len(shown),
            "all_url": f"{run_url}?session_id={obj.pk}" if run_url else "",
        })

    @admin.display(description=_("context JSON"))
    def context_json(self, obj: Any) -> str:
        return _pre(obj.context_data)

    def _runs(self, obj: Any) -> list[AgentRun]:
        """The session's runs, read once per page (the transcript and timeline share them)."""
        cached = getattr(obj, "_admin_runs", None)
        if cached is None:
            cached = obj._admin_runs = list(obj.runs.order_by("started_at"))
        return cached

    # -- actions ---------------------------------------------------------------------------

    @admin.action(description=_("Export selected sessions as JSON"), permissions=["view"])
    def export_json(self, request: HttpRequest, queryset: models.QuerySet) -> HttpResponse:
        documents = _export_documents(queryset.defer(None).select_related("owner"))
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = HttpResponse(
            json.dumps(documents, cls=DjangoJSONEncoder, ensure_ascii=False, indent=2),
            content_type="application/json; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="{self.opts.model_name}-{stamp}.json"')
        return response

    @admin.action(description=_("Reset the context of selected sessions"),
                  permissions=["change"])
    def reset_sessions(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        by = request.user.get_username()
        done, busy = 0, []
        for session in queryset:
            if reset_context(session, by=by):
                done += 1
            else:
                busy.append(str(session))
        if done:
            self.message_user(request, ngettext(
                "Reset %(count)d session.", "Reset %(count)d sessions.", done)
                % {"count": done}, messages.SUCCESS)
        if busy:
            self.message_user(request, format_html(
                "{} {}", _("A turn is running; not reset (try again when it ends):"),
                ", ".join(busy)), messages.ERROR)

    @admin.action(description=_("Stop live sessions"), permissions=["change"])
    def stop_live_sessions(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        # looked up on the package: ``django_agent_session.admin._live_stop`` is the one name
        # to replace (the admin tests do)
        stop = admin_package._live_stop()
        if stop is None:
            self.message_user(request, _("Live sessions are unavailable: "
                                         "django_agent_session.live is not installed."),
                              messages.WARNING)
            return
        stopped, idle, failed = 0, 0, []
        for session in queryset:
            try:
                found = stop(session, reason="admin")
            except Exception as error:  # report every session, don't lose the others
                failed.append(f"{session}: {error}")
            else:
                stopped += found is not False
                idle += found is False
        if stopped:
            self.message_user(request, ngettext(
                "Stopped %(count)d live session.", "Stopped %(count)d live sessions.", stopped)
                % {"count": stopped}, messages.SUCCESS)
        if idle:
            self.message_user(request, ngettext(
                "%(count)d session was not live.", "%(count)d sessions were not live.", idle)
                % {"count": idle}, messages.INFO)
        for failure in failed:
            self.message_user(request, failure, messages.ERROR)
