"""Django admin for agent sessions: a readable transcript, runs, events and artifacts.

Session models are the project's own, so the app registers no session admin; projects register
:class:`AgentSessionAdmin` for their models, or call :func:`register_session_admins` once (in
their ``admin.py``) to register every concrete session model not registered yet. Runs, events
and artifacts are the app's own models and get read-only admins on the default site.

Everything a model or a user wrote (messages, tool inputs and results, errors, the context
JSON) reaches the page through ``format_html`` or an autoescaping template, never as markup.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.contrib.admin.utils import lookup_spawns_duplicates
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models import F, Q
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import smart_split, unescape_string_literal
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .checks import session_models
from .context import Context
from .models import (
    AgentEvent,
    AgentRun,
    AgentSessionModel,
    Artifact,
    EventType,
    RunStatus,
    SessionStatus,
)

#: how many runs the change page lists inline (the runs changelist has them all)
TIMELINE_LIMIT = 200
#: characters of event data shown in the events changelist
PREVIEW_CHARS = 120

TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens")
INTERRUPTED = {"code": "interrupted", "retryable": True,
               "message": "The turn's process stopped before it finished; its lease expired."}


# -- helpers ----------------------------------------------------------------------------------


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder)


def _pre(value: Any) -> str:
    """``value`` as pretty JSON in a ``<pre>`` (escaped)."""
    return format_html('<pre class="agent-json">{}</pre>', pretty_json(value))


def _parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        return None


def _search_bits(search_term: str) -> list[str]:
    """The words of an admin search, as ``ModelAdmin.get_search_results`` splits them."""
    bits = []
    for bit in smart_split(search_term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
            bit = unescape_string_literal(bit)
        bits.append(bit)
    return bits


def _search_lookup(field_name: str) -> str:
    """The ORM lookup of one ``search_fields`` entry (the prefixes Django's admin knows)."""
    for prefix, lookup in (("^", "istartswith"), ("=", "iexact"), ("@", "search")):
        if field_name.startswith(prefix):
            return f"{field_name[1:]}__{lookup}"
    return f"{field_name}__icontains"


def json_text_q(field_name: str, text: str) -> Q:
    """Match ``text`` inside a JSON column read as text, on SQLite and PostgreSQL.

    ``icontains`` on a ``JSONField`` compares against the stored JSON text (PostgreSQL casts
    ``jsonb`` to text). That text escapes quotes and backslashes, and SQLite's also escapes
    non-ASCII characters as ``\\uXXXX``; so the escaped spellings of ``text`` are tried too.
    """
    spellings = {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    q = Q()
    for spelling in sorted(spellings):
        q |= Q(**{f"{field_name}__icontains": spelling})
    return q


def _admin_url(site: admin.AdminSite, model: type[models.Model], view: str, *args: Any) -> str:
    """A URL of ``site`` for ``model``, or ``""`` if that admin is not registered."""
    opts = model._meta
    try:
        return reverse(f"{site.name}:{opts.app_label}_{opts.model_name}_{view}", args=args)
    except NoReverseMatch:
        return ""


def _duration(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    return f"{ms / 1000:.1f} s"


def _when(value: Any) -> str:
    if value is None:
        return "—"
    return formats.date_format(timezone.localtime(value), "DATETIME_FORMAT")


def _error_text(error: Any) -> str:
    if not error:
        return ""
    if isinstance(error, dict):
        code, message = error.get("code", ""), error.get("message", "")
        return f"{code}: {message}" if code and message else str(code or message)
    return str(error)


# -- the transcript ---------------------------------------------------------------------------


def _result_text(content: Any) -> str:
    """The readable text of a ``tool_result`` block's content (JSON results pretty-printed)."""
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(_result_text(block.get("text", "")))
            elif isinstance(block, dict):
                parts.append(f"[{block.get('type', 'block')}]")
            else:
                parts.append(str(block))
        return "\n".join(parts)
    if not isinstance(content, str):
        return pretty_json(content)
    stripped = content.strip()
    if stripped[:1] in ("{", "["):
        try:
            return pretty_json(json.loads(stripped))
        except ValueError:
            pass
    return content


def _transcript_block(block: Any, tool_names: dict[str, str]) -> dict[str, Any]:
    if not isinstance(block, dict):
        return {"kind": "text", "text": str(block)}
    kind = block.get("type")
    if kind == "text":
        return {"kind": "text", "text": block.get("text", "")}
    if kind == "thinking":
        return {"kind": "thinking", "text": block.get("thinking", "")}
    if kind == "redacted_thinking":
        return {"kind": "thinking", "text": _("(redacted by the provider)")}
    if kind in ("tool_use", "server_tool_use"):
        tool_names[block.get("id", "")] = block.get("name", "")
        return {"kind": "tool_use", "name": block.get("name", ""), "id": block.get("id", ""),
                "input": pretty_json(block.get("input", {}))}
    if kind == "tool_result":
        tool_id = block.get("tool_use_id", "")
        return {"kind": "tool_result", "id": tool_id, "name": tool_names.get(tool_id, ""),
                "is_error": bool(block.get("is_error")),
                "text": _result_text(block.get("content", ""))}
    if kind in ("image", "document"):
        source = block.get("source") or {}
        described = source.get("media_type") or source.get("type", "")
        return {"kind": "media", "text": f"[{kind}: {described}]"}
    return {"kind": "other", "type": kind or "?", "text": pretty_json(block)}


def transcript_entries(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The context's messages as display entries: role, label and typed blocks.

    A user message that only answers tool calls is shown as "tool results", not as the user.
    """
    tool_names: dict[str, str] = {}
    entries = []
    for index, message in enumerate(messages):
        role = message.get("role", "")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        blocks = [_transcript_block(b, tool_names) for b in content or ()]
        kind = role if role in ("user", "assistant") else "other"
        if role == "user" and blocks and all(b["kind"] == "tool_result" for b in blocks):
            kind = "tool"
        labels = {"user": _("User"), "assistant": _("Assistant"), "tool": _("Tool results")}
        entries.append({"index": index, "kind": kind, "label": labels.get(kind, role),
                        "blocks": blocks,
                        "has_error": any(b.get("is_error") for b in blocks)})
    return entries


def _input_text(run_input: Any) -> str:
    if isinstance(run_input, dict) and set(run_input) == {"message"}:
        return str(run_input["message"])
    return pretty_json(run_input)


# -- admin actions outside a turn -------------------------------------------------------------


def reset_context(session: AgentSessionModel, *, by: str = "") -> bool:
    """Empty a session's conversation, keeping its system prompt and instruction args.

    Clears messages, context usage, turns and the last output, bumps ``version`` and records a
    ``context.reset`` event. Returns ``False`` (and changes nothing) while a turn holds the
    session's lease. The row's token columns keep what the session has cost so far (its runs
    keep their usage too). A lease left by a crashed turn is taken over and its run failed.
    """
    model = type(session)
    manager = model._base_manager
    field = model.agent_options.context_field
    now = timezone.now()
    row = manager.filter(pk=session.pk).values(field, "lease_token", "lease_expires_at",
                                               "version").first()
    if row is None:
        return False
    if row["lease_token"] is not None and row["lease_expires_at"] > now:
        return False
    old = Context.from_dict(row[field])
    fresh = Context(system=old.system, instruction_args=old.instruction_args,
                    metadata=old.metadata)
    from .store import SessionStore

    store = SessionStore(model)
    with transaction.atomic():
        # compare-and-set on the version and lease read above, as the store takes a lease
        if not manager.filter(pk=session.pk, version=row["version"],
                              lease_token=row["lease_token"]).update(
                **{field: fresh.to_dict()}, version=F("version") + 1, turn_count=0,
                status=SessionStatus.IDLE, lease_token=None, lease_expires_at=None,
                last_activity_at=now, updated_at=now):
            return False
        events: list[tuple[str, dict[str, Any]]] = []
        stale = row["lease_token"]
        if stale is not None and AgentRun.objects.filter(
                pk=stale, status=RunStatus.RUNNING).update(
                status=RunStatus.FAILED, error=INTERRUPTED, ended_at=now):
            events.append((EventType.RUN_FAILED, {"run_id": str(stale), "error": INTERRUPTED}))
        events.append((EventType.CONTEXT_RESET, {"by": by, "messages": len(old.messages),
                                                 "turns": old.turns}))
        store.append_events(session.pk, events)
    return True


def _live_stop() -> Any:
    """``django_agent_session.live.api.stop_session``, or ``None`` without live sessions."""
    try:
        from .live.api import stop_session
    except ImportError:
        return None
    if inspect.iscoroutinefunction(stop_session):
        return async_to_sync(stop_session)
    return stop_session


def _export_documents(sessions: Iterable[AgentSessionModel]) -> list[dict[str, Any]]:
    from .export import export_session

    return [export_session(session) for session in sessions]


# -- list filters -----------------------------------------------------------------------------


class SessionModelFilter(admin.SimpleListFilter):
    """Filter runs, events and artifacts by the session model they belong to."""

    title = _("agent model")
    parameter_name = "session_type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[Any, str]]:
        types = ContentType.objects.get_for_models(*session_models())
        return sorted(((str(ct.pk), str(model._meta.verbose_name).capitalize())
                       for model, ct in types.items()), key=lambda item: item[1])

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        if self.value():
            return queryset.filter(session_type_id=self.value())
        return queryset


# -- sessions ---------------------------------------------------------------------------------


class SessionChangeList(ChangeList):
    """The changelist reads every column but the (possibly large) context JSON."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        qs = super().get_queryset(request, exclude_parameters)
        return qs.defer(self.model.agent_options.context_field)


class AgentSessionAdmin(admin.ModelAdmin):
    """The admin of a concrete session model: a transcript change page and session actions.

    Register it for your models (``admin.site.register(ChatAgent, AgentSessionAdmin)``) or
    subclass it. Sessions are created by turns, not by the admin, and only the title, owner,
    pinned flag and metadata are editable; saving writes just those columns, so a turn that
    commits meanwhile is not overwritten.
    """

    list_display = ["__str__", "owner", "status", "turns", "tokens", "last_activity_at",
                    "created_at"]
    list_filter = ["status", ("owner", admin.RelatedOnlyFieldListFilter), "pinned",
                   "created_at", "last_activity_at"]
    list_select_related = ["owner"]
    #: searched like Django's ``search_fields``; the owner's username and email fields, the
    #: context JSON (message text) and a pasted session id are searched as well
    search_fields = ["title"]
    search_help_text = _("Title, owner, message text or session id.")
    raw_id_fields = ["owner"]
    actions = ["export_json", "reset_sessions", "stop_live_sessions"]
    readonly_fields = ["overview", "usage_totals", "system_prompt", "instruction_args",
                       "transcript", "run_timeline", "context_json"]

    class Media:
        css = {"all": ["django_agent_session/admin.css"]}

    # -- queries ---------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        total = F(TOKEN_FIELDS[0])
        for name in TOKEN_FIELDS[1:]:
            total = total + F(name)
        return super().get_queryset(request).annotate(admin_total_tokens=total)

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

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> list[tuple[Any, dict]]:
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
        fields = [name for name in form.changed_data if name in form.fields]
        if fields:
            obj.save(update_fields=[*fields, "updated_at"])

    # -- changelist columns ----------------------------------------------------------------

    @admin.display(description=_("turns"), ordering="turn_count")
    def turns(self, obj: Any) -> int:
        return obj.turn_count

    @admin.display(description=_("tokens"), ordering="admin_total_tokens")
    def tokens(self, obj: Any) -> int:
        total = getattr(obj, "admin_total_tokens", None)
        return total if total is not None else sum(getattr(obj, n) for n in TOKEN_FIELDS)

    # -- change page -----------------------------------------------------------------------

    @admin.display(description=_("session"))
    def overview(self, obj: Any) -> str:
        lease = ""
        if obj.lease_token is not None:
            lease = format_html(' · <span class="agent-badge agent-status-running">{} {}</span>',
                                _("turn lease until"), _when(obj.lease_expires_at))
        events_url = _admin_url(self.admin_site, AgentEvent, "changelist")
        events = ""
        if events_url:
            events = format_html(' · <a href="{}?session_id={}">{}</a>', events_url, obj.pk,
                                 _("events"))
        return format_html(
            '<span class="agent-badge agent-status-{}">{}</span> · {} {} · {} {} · {} {} · '
            '{} {} · <code>{}</code>{}{}',
            obj.status, obj.get_status_display(), obj.turn_count, _("turns"), _("version"),
            obj.version, _("created"), _when(obj.created_at), _("last activity"),
            _when(obj.last_activity_at), obj.pk, lease, events)

    @admin.display(description=_("token totals"))
    def usage_totals(self, obj: Any) -> str:
        labels = [_("input"), _("output"), _("cache creation"), _("cache read"), _("total")]
        values = [getattr(obj, name) for name in TOKEN_FIELDS]
        values.append(sum(values))
        return format_html(
            '<table class="agent-usage"><thead><tr>{}</tr></thead><tbody><tr>{}</tr></tbody>'
            "</table>",
            format_html_join("", "<th>{}</th>", ((label,) for label in labels)),
            format_html_join("", "<td>{}</td>", ((f"{value:,}",) for value in values)))

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
            if run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
                trailing.append({"run": run, "input": _input_text(run.input),
                                 "error": _error_text(run.error),
                                 "partial": (run.output or {}).get("partial_text", "")})
        return render_to_string("admin/django_agent_session/transcript.html", {
            "entries": transcript_entries(context.messages),
            "failures": list(reversed(trailing)),
            "repaired": context.repaired,
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
        stop = _live_stop()
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


def register_session_admins(site: admin.AdminSite = admin.site,
                            admin_class: type[admin.ModelAdmin] = AgentSessionAdmin
                            ) -> list[type[models.Model]]:
    """Register ``admin_class`` for every concrete session model ``site`` does not have yet.

    Returns the models it registered. Call it from your project's ``admin.py``.
    """
    registered = []
    for model in session_models():
        if not site.is_registered(model):
            site.register(model, admin_class)
            registered.append(model)
    return registered


# -- runs, events and artifacts (read-only) ---------------------------------------------------


class SessionLogAdmin(admin.ModelAdmin):
    """Read-only admin of a log row of some session (runs, events, artifacts).

    The row's session is linked through its content type (one ``select_related``), and a pasted
    UUID finds rows by their own id or their session's.
    """

    list_select_related = ["session_type"]
    uuid_search_fields: tuple[str, ...] = ("id", "session_id")

    class Media:
        css = {"all": ["django_agent_session/admin.css"]}

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


@admin.register(AgentRun)
class AgentRunAdmin(SessionLogAdmin):
    list_display = ["started_at", "session_link", "status_badge", "model", "duration",
                    "iterations", "tokens", "error_summary"]
    list_filter = ["status", SessionModelFilter, "model", "started_at"]
    search_fields = ["model"]
    search_help_text = _("Model name, run id or session id.")
    ordering = ["-started_at"]
    fields = ["id", "session_link", "status_badge", "model", "started_at", "ended_at",
              "duration", "iterations", "usage_table", "input_json", "output_json",
              "error_json", "run_events"]
    readonly_fields = fields

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: AgentRun) -> str:
        return format_html('<span class="agent-badge agent-status-{}">{}</span>', obj.status,
                           obj.get_status_display())

    @admin.display(description=_("duration"), ordering="duration_ms")
    def duration(self, obj: AgentRun) -> str:
        return _duration(obj.duration_ms)

    @admin.display(description=_("tokens"))
    def tokens(self, obj: AgentRun) -> int:
        return sum(obj.usage.values())

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


def _preview(data: Any, limit: int = PREVIEW_CHARS) -> str:
    text = json.dumps(data, ensure_ascii=False, cls=DjangoJSONEncoder)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@admin.register(AgentEvent)
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
    fields = ["session_link", "seq", "type", "run", "created_at", "data_json"]
    readonly_fields = fields

    @admin.display(description=_("data"))
    def data_preview(self, obj: AgentEvent) -> str:
        return _preview(obj.data)

    @admin.display(description=_("data"))
    def data_json(self, obj: AgentEvent) -> str:
        return _pre(obj.data)


@admin.register(Artifact)
class ArtifactAdmin(SessionLogAdmin):
    list_display = ["key", "session_link", "run", "content_type", "size", "created_at"]
    list_filter = [SessionModelFilter, "content_type", "created_at"]
    search_fields = ["key", "checksum"]
    search_help_text = _("Key, checksum, artifact id or session id.")
    list_select_related = ["session_type", "run"]
    ordering = ["-created_at"]
    fields = ["id", "key", "session_link", "run", "file", "size", "checksum", "content_type",
              "metadata_json", "created_at"]
    readonly_fields = fields

    @admin.display(description=_("metadata"))
    def metadata_json(self, obj: Artifact) -> str:
        return _pre(obj.metadata)
