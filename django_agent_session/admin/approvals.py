"""Tool calls awaiting approval on the session change page: shown in the transcript, decided
with Approve (optionally with an edited JSON input) and Reject (with a reason).

Who may decide: a user with the model's ``change`` permission who also passes
``Model.objects.may_decide(session, user)`` (the session's owner, or whom
``AGENT_SESSION["APPROVERS"]`` admits), checked by
:meth:`ApprovalAdminMixin.has_decide_permission` (override it to narrow it further). The
decision is taken by the manager as that user (``by=request.user``), so it checks
``may_decide`` again under the session's lock and records who decided. To let staff decide the
calls of sessions they do not own, set ``AGENT_SESSION["APPROVERS"]`` to
:func:`staff_approvers` (or a callable of your own): it widens every surface alike (admin,
REST, WebSocket), so there is one rule for who may decide.

The decision is a POST (CSRF-protected, like every admin view) to
``<session>/tool-calls/decide/``; its outcome is an admin message, never an error page. The
admin writes no row itself: the manager records the decision, then the viewers of the
conversation are told (the frame every open chat tab resolves its card with) and a resumed run
is handed to the executor, in that order, as the REST and WebSocket surfaces do.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from .. import exceptions as exc
from ..models import AgentRun, EventType, RunStatus
from .rendering import _admin_url, _input_text, _when, pretty_json

logger = logging.getLogger("django_agent_session.admin")

#: longest rejection reason the admin accepts (the model is told it; as over WebSocket)
REASON_MAX_LENGTH = 2000


def staff_approvers(session: Any, user: Any) -> bool:
    """An ``AGENT_SESSION["APPROVERS"]`` callable: active staff users with the ``change``
    permission on the session's model may decide its tool calls (besides its owner)."""
    opts = session._meta
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False)
                and user.has_perm(f"{opts.app_label}.change_{opts.model_name}"))


class _BadInput(Exception):
    """The edited input of an approval is not a JSON object."""


def _deadline(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def announce_decision(model: Any, run: AgentRun, tool_use_id: str, resumed: bool) -> None:
    """Tell the conversation's WebSocket viewers of the decision (each open chat tab resolves
    its card); a channel layer that fails, or is missing, does not fail the decision."""
    try:
        from channels.layers import get_channel_layer

        from ..runs.stream import announce, decision_frame

        layer = get_channel_layer()
        if layer is None:
            return
        frame = decision_frame(model, run, tool_use_id, resumed)
        async_to_sync(announce)(layer, model, run.session_id, frame)
    except Exception:
        logger.warning("Could not announce the decision on %s", tool_use_id, exc_info=True)


class ApprovalAdminMixin:
    """The approval part of :class:`~django_agent_session.admin.AgentSessionAdmin`.

    Its change page template (``AgentSessionAdmin.change_form_template``) adds one (empty)
    form per decision after the change form; the transcript's controls belong to them through
    their ``form`` attribute, so nothing is nested in the change form and Enter in the change
    form never decides a call. A subclass with a ``change_form_template`` of its own extends
    ``admin/django_agent_session/change_form.html``.
    """

    model: Any
    opts: Any
    admin_site: Any

    # -- permission ------------------------------------------------------------------------

    def has_decide_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Whether ``request.user`` may approve or reject ``obj``'s tool calls here: the
        model's ``change`` permission, and ``Model.objects.may_decide(obj, user)``."""
        if not self.has_change_permission(request, obj):  # type: ignore[attr-defined]
            return False
        return obj is None or bool(self.model._default_manager.may_decide(obj, request.user))

    # -- what the page shows ---------------------------------------------------------------

    def approvals(self, request: HttpRequest | None, obj: Any) -> dict[str, Any] | None:
        """The session's runs awaiting approval with their calls (pending, and those already
        decided while others wait), for the transcript; ``None`` when nothing waits."""
        runs = {str(run.pk): run for run in self._runs(obj)  # type: ignore[attr-defined]
                if run.status == RunStatus.AWAITING_APPROVAL}
        if not runs:  # the page reads the runs anyway: no query more for most sessions
            return None
        pending = self.model._default_manager.pending_tool_calls(obj.pk)
        requested = {
            (str(run_id), (data or {}).get("tool_use_id")): created
            for run_id, data, created in obj.events.filter(
                type=EventType.TOOL_APPROVAL_REQUESTED, run_id__in=list(runs)
            ).values_list("run_id", "data", "created_at")
        }
        may_decide = request is not None and self.has_decide_permission(request, obj)
        now = timezone.now()
        groups: dict[str, dict[str, Any]] = {}

        def group(run_id: str) -> dict[str, Any]:
            if run_id not in groups:
                run = runs.get(run_id)
                groups[run_id] = {
                    "run_id": run_id, "run": run,
                    "input": _input_text(run.input) if run is not None else "",
                    "url": _admin_url(self.admin_site, AgentRun, "change", run_id),
                    "calls": [], "decided": []}
            return groups[run_id]

        for index, call in enumerate(pending, start=1):
            expires = _deadline(call.get("expires_at"))
            group(call["run_id"])["calls"].append({
                "index": index, "tool_use_id": call["tool_use_id"], "name": call["name"],
                "input": pretty_json(call["input"]),
                "requested_at": _when(requested.get((call["run_id"], call["tool_use_id"]))),
                "expires_at": _when(expires) if expires else "",
                "expired": bool(expires and expires <= now),
            })
        for run_id, run in runs.items():
            for call in (run.pause or {}).get("calls", []):
                decision = call.get("decision")
                if isinstance(decision, dict):
                    group(run_id)["decided"].append({
                        "tool_use_id": call.get("tool_use_id", ""), "name": call.get("name", ""),
                        "approved": bool(decision.get("approved")),
                        "reason": decision.get("reason") or "",
                        "at": _when(_deadline(decision.get("at")))})
        return {"may_decide": may_decide, "runs": list(groups.values()),
                "calls": [c for g in groups.values() for c in g["calls"]],
                "url": self._decide_url(obj) if may_decide else "",
                "reason_max_length": REASON_MAX_LENGTH}

    def render_change_form(self, request: HttpRequest, context: dict[str, Any],
                           add: bool = False, change: bool = False, form_url: str = "",
                           obj: Any = None) -> HttpResponse:
        if obj is not None and change:
            # read once: the transcript (a read-only field, given only ``obj``) shows them and
            # the template adds their forms
            obj._admin_approvals = self.approvals(request, obj)
            context["agent_approvals"] = obj._admin_approvals
        return super().render_change_form(  # type: ignore[misc]
            request, context, add=add, change=change, form_url=form_url, obj=obj)

    # -- deciding --------------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<path:object_id>/tool-calls/decide/",
                 self.admin_site.admin_view(self.decide_view),
                 name="{}_{}_decide_tool_call".format(*info)),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def _decide_url(self, obj: Any) -> str:
        opts = self.opts
        return reverse(f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}"
                       "_decide_tool_call", args=[quote(obj.pk)])

    def _change_url(self, obj: Any) -> str:
        opts = self.opts
        return reverse(f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                       args=[quote(obj.pk)])

    def decide_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST ``tool_use_id`` and ``decision`` (``approve``, with an optional edited JSON
        ``input``, or ``reject``, with an optional ``reason``); back to the change page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        if obj is None:
            return self._get_obj_does_not_exist_redirect(  # type: ignore[attr-defined]
                request, self.opts, object_id)
        if not self.has_decide_permission(request, obj):
            raise PermissionDenied
        back = HttpResponseRedirect(self._change_url(obj))
        tool_use_id = request.POST.get("tool_use_id", "")
        decision = request.POST.get("decision")
        if not tool_use_id or decision not in ("approve", "reject"):
            self._fail(request, _("Choose a tool call to approve or reject."))
            return back
        manager = self.model._default_manager
        try:
            if decision == "approve":
                edited = self._edited_input(obj, tool_use_id, request.POST.get("input"))
                run = manager.approve_tool_call(obj.pk, tool_use_id, by=request.user,
                                                input=edited, dispatch=False)
            else:
                reason = request.POST.get("reason", "").strip()
                if len(reason) > REASON_MAX_LENGTH:
                    raise _BadInput(_("The reason is longer than %(max)d characters.")
                                    % {"max": REASON_MAX_LENGTH})
                run = manager.reject_tool_call(obj.pk, tool_use_id, by=request.user,
                                               reason=reason, dispatch=False)
        except _BadInput as error:
            self._fail(request, str(error))
            return back
        except exc.AlreadyDecided as error:
            self._fail(request, _("Not decided: %(error)s") % {"error": error})
            return back
        except exc.ToolCallNotFound:
            self._fail(request, _("Not decided: tool call %(id)s no longer waits for a "
                                  "decision.") % {"id": tool_use_id})
            return back
        except exc.InvalidInput as error:
            details = f" {json.dumps(error.errors, ensure_ascii=False)}" if error.errors else ""
            self._fail(request, _("Not approved: %(error)s") % {"error": f"{error}{details}"})
            return back
        except exc.AgentSessionError as error:  # any other refusal of the store
            self._fail(request, _("Not decided: %(error)s") % {"error": error})
            return back
        resumed = run.status == RunStatus.QUEUED
        announce_decision(self.model, run, tool_use_id, resumed)
        if resumed:
            manager.dispatch(obj.pk)
        name = self._call_name(run, tool_use_id)
        done = (_("Approved %(name)s (%(id)s).") if decision == "approve"
                else _("Rejected %(name)s (%(id)s).")) % {"name": name, "id": tool_use_id}
        after = (_("The turn goes on.") if resumed
                 else _("Other calls of this turn still wait for a decision."))
        self.message_user(request, f"{done} {after}", messages.SUCCESS)  # type: ignore[attr-defined]
        return back

    def _fail(self, request: HttpRequest, message: str) -> None:
        self.message_user(request, message, messages.ERROR)  # type: ignore[attr-defined]

    def _edited_input(self, obj: Any, tool_use_id: str, text: str | None
                      ) -> dict[str, Any] | None:
        """The edited input of an approval, or ``None`` when it is the model's own."""
        if text is None or not text.strip():
            return None
        try:
            edited = json.loads(text)
        except ValueError as error:
            raise _BadInput(_("Not approved: the edited input is not valid JSON (%(error)s).")
                            % {"error": error}) from None
        if not isinstance(edited, dict):
            raise _BadInput(_("Not approved: the edited input must be a JSON object."))
        call = next((c for c in self.model._default_manager.pending_tool_calls(obj.pk)
                     if c["tool_use_id"] == tool_use_id), None)
        if call is not None and call["input"] == edited:
            return None  # unchanged: approved as the model asked
        return edited

    @staticmethod
    def _call_name(run: AgentRun, tool_use_id: str) -> str:
        for call in (run.pause or {}).get("calls", []):
            if call.get("tool_use_id") == tool_use_id:
                return str(call.get("name", ""))
        return _("the call")


__all__ = ["REASON_MAX_LENGTH", "ApprovalAdminMixin", "announce_decision", "staff_approvers"]
