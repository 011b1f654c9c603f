"""The session change page's tool calls awaiting approval: shown in the transcript, approved (with
an edited input) or rejected through the manager, behind the change permission and
``may_decide``, POST-only with CSRF, every refusal an admin message (never a 500).

The session admins are registered on a site of this module, as in test_admin.py.
"""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.admin import AdminSite
from django.contrib.auth.models import Permission
from django.test import Client, override_settings
from django.urls import path, reverse

from django_agent_session import admin as session_admin
from django_agent_session.admin.approvals import REASON_MAX_LENGTH, staff_approvers
from django_agent_session.clients.base import ModelResponse
from django_agent_session.models import AgentEvent, AgentRun, EventType, RunStatus
from django_agent_session.runs.stream import frame_of, group_name
from django_agent_session.testing import text_reply, tool_reply
from django_agent_session.testing.scripted import Scripted
from tests.helpers.executors import Recording
from tests.testapp.models import REFUNDS, ApprovalAgent

site = AdminSite(name="agent_admin_approvals")
session_admin.register_session_admins(site)
site.register(AgentRun, session_admin.AgentRunAdmin)

urlpatterns = [path("admin/", site.urls)]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

ARGS = {"company_name": "Acme"}
XSS = "<script>alert(1)</script>"


def url(model, view, *args):
    opts = model._meta
    return reverse(f"{site.name}:{opts.app_label}_{opts.model_name}_{view}", args=args)


def change_url(session):
    return url(ApprovalAgent, "change", session.pk)


def decide_url(session):
    return url(ApprovalAgent, "decide_tool_call", session.pk)


def texts(response):
    """The admin messages the change page showed after the decision's redirect."""
    return [str(m) for m in response.context["messages"]]


@pytest.fixture(autouse=True)
def recording(scripted):
    """Resumed turns are drained by the test (``drain``): each step is deterministic."""
    Recording.calls.clear()
    Recording.later.clear()
    REFUNDS.clear()
    with override_settings(AGENT_SESSION={"EXECUTOR": "tests.helpers.executors.Recording"}):
        yield Recording


@pytest.fixture
def owner(django_user_model):
    """A superuser who owns the session (``may_decide``: its owner)."""
    return django_user_model.objects.create_superuser("owner", "owner@example.com", None)


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def both(*blocks) -> Scripted:
    return Scripted(ModelResponse(content=list(blocks), stop_reason="tool_use",
                                  usage={"input_tokens": 10, "output_tokens": 5}))


def use(id, name, **input) -> dict:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def paused(scripted, owner, *replies, message="refund order 7"):
    """A session whose first turn paused on the replies' tool calls."""
    scripted.enqueue(*replies)
    session = ApprovalAgent.objects.start_session(message, instruction_args=ARGS, owner=owner)
    assert session.last_turn.status == RunStatus.AWAITING_APPROVAL
    return session


def refund_paused(scripted, owner, **input):
    return paused(scripted, owner, tool_reply("refund", input or {"order": 7, "amount": 250},
                                              id="t1"))


def decide(client, session, tool_use_id="t1", **data):
    """POST a decision and follow the redirect to the change page (it renders: never a 500)."""
    response = client.post(decide_url(session), {"tool_use_id": tool_use_id, **data},
                           follow=True)
    if response.redirect_chain:
        assert response.redirect_chain == [(change_url(session), 302)]
        assert response.status_code == 200
    return response


def pending_ids(session):
    return [c["tool_use_id"] for c in ApprovalAgent.objects.pending_tool_calls(session.pk)]


# -- the change page ----------------------------------------------------------------------------


def test_the_transcript_shows_a_pending_call_with_its_controls(owner_client, scripted, owner,
                                                               monkeypatch):
    monkeypatch.setattr(ApprovalAgent.agent_options, "approval_timeout", 600)
    session = refund_paused(scripted, owner)
    response = owner_client.get(change_url(session))
    assert response.status_code == 200
    html = response.content.decode()
    section = html[html.index('id="agent-approvals"'):]
    assert "Waiting for approval" in section and "refund order 7" in section  # the run's input
    assert "Tool call awaiting approval <code>refund</code>" in section
    assert "t1" in section
    assert "&quot;amount&quot;: 250" in section  # the input, pretty-printed and escaped
    run = AgentRun.objects.get(session_id=session.pk)
    requested = AgentEvent.objects.get(session_id=session.pk,
                                       type=EventType.TOOL_APPROVAL_REQUESTED)
    assert requested.run_id == run.pk
    assert re.search(r"requested \w", section)
    assert "rejected automatically at" in section  # the expiry
    # the controls belong to forms outside the change form (forms do not nest)
    assert 'form="agent-approve-1"' in section and 'form="agent-reject-1"' in section
    form_end = html.index("</form></div>")
    assert html.index('<form id="agent-approve-1"') > form_end
    assert html.index('<form id="agent-reject-1"') > form_end
    forms = html[form_end:]
    assert f'action="{decide_url(session)}"' in forms
    assert forms.count('name="csrfmiddlewaretoken"') == 2
    assert 'name="decision" value="approve"' in forms
    assert 'name="decision" value="reject"' in forms
    # the run is shown as awaiting approval in the timeline
    assert "agent-status-awaiting_approval" in html


def test_a_session_without_pending_calls_has_no_approvals_section(owner_client, scripted, owner):
    scripted.enqueue(tool_reply("refund", {"order": 1, "amount": 5}, id="small"), "Done.")
    session = ApprovalAgent.objects.start_session("refund 5", instruction_args=ARGS, owner=owner)
    assert session.last_turn.status == RunStatus.COMPLETED  # a small refund needs nobody
    html = owner_client.get(change_url(session)).content.decode()
    assert 'id="agent-approvals"' not in html and "agent-approve-" not in html


def test_tool_input_is_escaped(owner_client, scripted, owner):
    session = paused(scripted, owner, tool_reply("send_email", {"to": XSS, "body": XSS},
                                                 id="mail"))
    html = owner_client.get(change_url(session)).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and XSS not in html


# -- approve and reject -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # drain runs the turn on its own connection
def test_approve_resumes_the_turn_and_tells_the_viewers(owner_client, scripted, owner, recording,
                                                        django_capture_on_commit_callbacks):
    session = refund_paused(scripted, owner)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group_name(ApprovalAgent, session.pk), channel)
    with django_capture_on_commit_callbacks(execute=True):
        response = decide(owner_client, session, decision="approve")
    assert texts(response) == ["Approved refund (t1). The turn goes on."]
    assert pending_ids(session) == []
    assert AgentRun.objects.get(session_id=session.pk).status == RunStatus.QUEUED
    assert recording.calls == [(ApprovalAgent, str(session.pk))]  # handed to the executor
    # every open chat tab is told (the frame it resolves its card with)
    message = async_to_sync(layer.receive)(channel)
    frame = frame_of(message)
    assert frame["type"] == "tool.approval_granted"
    assert frame["tool_use_id"] == "t1" and frame["approved"] is True
    assert frame["by"] == owner.pk and frame["resumed"] is True
    granted = AgentEvent.objects.get(session_id=session.pk, type=EventType.TOOL_APPROVAL_GRANTED)
    assert granted.data["by"] == owner.pk and "input" not in granted.data
    # the executor runs the call and the rest of the turn
    scripted.enqueue(text_reply("Refunded."))
    ApprovalAgent.objects.drain(session.pk)
    assert REFUNDS == [(7, 250.0)]
    session.refresh_from_db()
    assert session.get_context().messages[-1]["content"][0]["text"] == "Refunded."
    page = owner_client.get(change_url(session)).content.decode()
    assert 'id="agent-approvals"' not in page and "Refunded." in page


@pytest.mark.django_db(transaction=True)  # drain runs the turn on its own connection
def test_approve_with_an_edited_input(owner_client, scripted, owner):
    session = refund_paused(scripted, owner)
    response = decide(owner_client, session, decision="approve",
                      input='{\n  "order": 7,\n  "amount": 120\n}')
    assert texts(response) == ["Approved refund (t1). The turn goes on."]
    granted = AgentEvent.objects.get(session_id=session.pk, type=EventType.TOOL_APPROVAL_GRANTED)
    assert granted.data["input"] == {"order": 7, "amount": 120}
    scripted.enqueue(text_reply("Refunded 120."))
    ApprovalAgent.objects.drain(session.pk)
    assert REFUNDS == [(7, 120.0)]


def test_an_unchanged_input_is_not_an_edit(owner_client, scripted, owner):
    session = refund_paused(scripted, owner)
    # the page's textarea holds the pretty-printed input: sent back as it is
    decide(owner_client, session, decision="approve", input='{"amount": 250, "order": 7}')
    granted = AgentEvent.objects.get(session_id=session.pk, type=EventType.TOOL_APPROVAL_GRANTED)
    assert "input" not in granted.data


@pytest.mark.parametrize("text, message", [
    ("{not json", "Not approved: the edited input is not valid JSON"),
    ("[7, 250]", "Not approved: the edited input must be a JSON object."),
    ('{"order": "seven", "amount": 250}', "Not approved: Invalid input for tool refund."),
])
def test_an_invalid_edited_input_is_a_message_and_the_call_still_waits(
        owner_client, scripted, owner, text, message):
    session = refund_paused(scripted, owner)
    response = decide(owner_client, session, decision="approve", input=text)
    (shown,) = texts(response)
    assert shown.startswith(message), shown
    assert pending_ids(session) == ["t1"]
    assert 'form="agent-approve-1"' in response.content.decode()  # still waits, decidable


@pytest.mark.django_db(transaction=True)  # drain runs the turn on its own connection
def test_reject_with_a_reason(owner_client, scripted, owner):
    session = refund_paused(scripted, owner)
    response = decide(owner_client, session, decision="reject", reason="  Too large.  ")
    assert texts(response) == ["Rejected refund (t1). The turn goes on."]
    denied = AgentEvent.objects.get(session_id=session.pk, type=EventType.TOOL_APPROVAL_DENIED)
    assert denied.data["reason"] == "Too large." and denied.data["by"] == owner.pk
    scripted.enqueue(text_reply("I could not refund it."))
    ApprovalAgent.objects.drain(session.pk)
    assert REFUNDS == []
    results = [b for m in ApprovalAgent.objects.get_context(session.pk).messages
               for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
    assert results[0]["is_error"] and "Too large." in results[0]["content"]


def test_a_too_long_reason_is_refused(owner_client, scripted, owner):
    session = refund_paused(scripted, owner)
    response = decide(owner_client, session, decision="reject",
                      reason="x" * (REASON_MAX_LENGTH + 1))
    assert texts(response) == [f"The reason is longer than {REASON_MAX_LENGTH} characters."]
    assert pending_ids(session) == ["t1"]


def test_two_calls_one_decided_then_the_other(owner_client, scripted, owner, recording,
                                             django_capture_on_commit_callbacks):
    session = paused(scripted, owner, both(use("a", "refund", order=1, amount=500),
                                           use("b", "send_email", to="x@y.z", body="hi")))
    html = owner_client.get(change_url(session)).content.decode()
    assert 'form="agent-approve-1"' in html and 'form="agent-approve-2"' in html
    with django_capture_on_commit_callbacks(execute=True):
        first = decide(owner_client, session, "a", decision="approve")
    assert texts(first) == [
        "Approved refund (a). Other calls of this turn still wait for a decision."]
    assert recording.calls == []  # not resumed yet
    page = owner_client.get(change_url(session)).content.decode()
    section = page[page.index('id="agent-approvals"'):]
    assert "Approved <code>refund</code>" in section  # decided, shown with the waiting one
    assert "Tool call awaiting approval <code>send_email</code>" in section
    assert 'form="agent-approve-1"' in section and 'form="agent-approve-2"' not in section
    with django_capture_on_commit_callbacks(execute=True):
        second = decide(owner_client, session, "b", decision="reject", reason="No mail.")
    assert texts(second) == ["Rejected send_email (b). The turn goes on."]
    assert recording.calls == [(ApprovalAgent, str(session.pk))]


def test_a_call_decided_elsewhere_is_a_message_not_an_error(owner_client, scripted, owner):
    session = refund_paused(scripted, owner)
    ApprovalAgent.objects.reject_tool_call(session.pk, "t1", by=owner, reason="by REST")
    response = decide(owner_client, session, decision="approve")
    assert texts(response) == ["Not decided: Tool call t1 was already decided."]
    unknown = decide(owner_client, session, "nope", decision="reject")
    assert texts(unknown) == ["Not decided: tool call nope no longer waits for a decision."]
    assert REFUNDS == []


def test_an_incomplete_post_is_a_message(owner_client, scripted, owner):
    session = refund_paused(scripted, owner)
    for data in ({"decision": "approve"}, {"tool_use_id": "t1"},
                 {"tool_use_id": "t1", "decision": "maybe"}):
        response = owner_client.post(decide_url(session), data, follow=True)
        assert texts(response) == ["Choose a tool call to approve or reject."]
    assert pending_ids(session) == ["t1"]


# -- POST only, CSRF, permissions ---------------------------------------------------------------


def test_deciding_is_post_only(owner_client, scripted, owner):
    session = refund_paused(scripted, owner)
    response = owner_client.get(decide_url(session), {"tool_use_id": "t1", "decision": "approve"})
    assert response.status_code == 405
    assert pending_ids(session) == ["t1"]


def test_deciding_needs_the_csrf_token(scripted, owner):
    session = refund_paused(scripted, owner)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    refused = client.post(decide_url(session), {"tool_use_id": "t1", "decision": "approve"})
    assert refused.status_code == 403 and b"CSRF" in refused.content
    assert pending_ids(session) == ["t1"]
    # the page's own decision form carries the token
    page = client.get(change_url(session)).content.decode()
    form = page[page.index('<form id="agent-approve-1"'):]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    done = client.post(decide_url(session), {"tool_use_id": "t1", "decision": "approve",
                                             "csrfmiddlewaretoken": token})
    assert done.status_code == 302 and pending_ids(session) == []


def test_a_superuser_who_is_not_the_owner_may_not_decide(client, django_user_model, scripted,
                                                         owner):
    session = refund_paused(scripted, owner)
    root = django_user_model.objects.create_superuser("root", "root@example.com", None)
    client.force_login(root)
    html = client.get(change_url(session)).content.decode()
    assert "Tool call awaiting approval <code>refund</code>" in html  # shown, read-only
    assert "agent-approve-1" not in html and "may decide this call" in html
    assert decide(client, session, decision="approve").status_code == 403
    assert pending_ids(session) == ["t1"]


def test_staff_approvers_lets_staff_with_the_change_permission_decide(
        client, django_user_model, scripted, owner):
    session = refund_paused(scripted, owner)
    staff = django_user_model.objects.create_user("ops", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_approvalagent"))
    client.force_login(staff)
    settings = {"EXECUTOR": "tests.helpers.executors.Recording",
                "APPROVERS": "django_agent_session.admin.approvals.staff_approvers"}
    with override_settings(AGENT_SESSION=settings):
        # the view permission alone: shown, no controls, a POST is refused
        html = client.get(change_url(session)).content.decode()
        assert "Tool call awaiting approval" in html and "agent-approve-1" not in html
        assert decide(client, session, decision="approve").status_code == 403
        assert not staff_approvers(session, staff)
        staff.user_permissions.add(Permission.objects.get(codename="change_approvalagent"))
        staff = django_user_model.objects.get(pk=staff.pk)  # permissions are cached
        assert staff_approvers(session, staff)
        html = client.get(change_url(session)).content.decode()
        assert 'form="agent-approve-1"' in html
        response = decide(client, session, decision="reject", reason="Policy.")
        assert texts(response) == ["Rejected refund (t1). The turn goes on."]
    denied = AgentEvent.objects.get(session_id=session.pk, type=EventType.TOOL_APPROVAL_DENIED)
    assert denied.data["by"] == staff.pk


def test_an_owner_with_only_the_view_permission_may_not_decide(client, django_user_model,
                                                               scripted):
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_approvalagent"))
    session = refund_paused(scripted, viewer)
    client.force_login(viewer)
    html = client.get(change_url(session)).content.decode()
    assert "Tool call awaiting approval" in html and "agent-approve-1" not in html
    assert decide(client, session, decision="approve").status_code == 403
    assert pending_ids(session) == ["t1"]


def test_a_missing_session_redirects_with_a_message(owner_client):
    missing = "00000000-0000-0000-0000-000000000001"
    response = owner_client.post(url(ApprovalAgent, "decide_tool_call", missing),
                                 {"tool_use_id": "t1", "decision": "approve"}, follow=True)
    assert response.status_code == 200
    assert "doesn’t exist" in texts(response)[0]
