"""Django admin for agent sessions: a readable transcript, runs, events and artifacts.

Session models are the project's own, so the app registers no session admin; projects register
:class:`AgentSessionAdmin` for their models, or call :func:`register_session_admins` once (in
their ``admin.py``) to register every concrete session model not registered yet. Runs, events
and artifacts are the app's own models and get read-only admins on the default site (importing
this package registers them, as Django's admin autodiscovery expects).

Everything a model or a user wrote (messages, tool inputs and results, errors, the context
JSON) reaches the page through ``format_html`` or an autoescaping template, never as markup.

Modules: :mod:`.rendering` (JSON, dates, badges, the transcript), :mod:`.search`,
:mod:`.filters`, :mod:`.sessions` (:class:`AgentSessionAdmin` and its actions),
:mod:`.approvals` (tool calls awaiting approval: Approve / Reject on the change page),
:mod:`.logs` (runs, events, artifacts) and :mod:`.registration`.
"""

from __future__ import annotations

from ..store.export import export_session
from ..store.queries import json_text_q
from ..store.sessions import reset_context, update_fields
from .approvals import ApprovalAdminMixin, staff_approvers
from .filters import SessionModelFilter
from .logs import AgentEventAdmin, AgentRunAdmin, ArtifactAdmin, SessionLogAdmin
from .registration import register_session_admins
from .rendering import PREVIEW_CHARS, TIMELINE_LIMIT, pretty_json, transcript_entries
from .sessions import AgentSessionAdmin, SessionChangeList
from .sessions import _export_documents as _export_documents
from .sessions import _live_stop as _live_stop

__all__ = [
    "PREVIEW_CHARS",
    "TIMELINE_LIMIT",
    "AgentEventAdmin",
    "AgentRunAdmin",
    "AgentSessionAdmin",
    "ApprovalAdminMixin",
    "ArtifactAdmin",
    "SessionChangeList",
    "SessionLogAdmin",
    "SessionModelFilter",
    "export_session",
    "json_text_q",
    "pretty_json",
    "register_session_admins",
    "reset_context",
    "staff_approvers",
    "transcript_entries",
    "update_fields",
]
