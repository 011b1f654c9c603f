"""The admin: transcript change page, changelist queries, search, actions and permissions.

The session admins are registered on a site of this module (mounted by ``urlpatterns`` below), so
the project-wide ``admin.site`` is not changed by the tests; the run/event/artifact admins the
app registers on the default site are checked separately.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.admin import AdminSite
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.models.signals import pre_save
from django.test.utils import CaptureQueriesContext
from django.urls import path, reverse
from django.utils import timezone

from django_agent_session import admin as session_admin
from django_agent_session.declaration.registry import session_models
from django_agent_session.exceptions import ModelOverloaded
from django_agent_session.export import import_session
from django_agent_session.models import (
    AgentEvent,
    AgentRun,
    Artifact,
    EventType,
    RunStatus,
)
from django_agent_session.testing import text_reply, tool_reply
from tests.testapp.models import ChatAgent, Order, PlainAgent, ToolAgent

site = AdminSite(name="agent_admin_test")
session_admin.register_session_admins(site)
for _model, _admin_class in ((AgentRun, session_admin.AgentRunAdmin),
                             (AgentEvent, session_admin.AgentEventAdmin),
                             (Artifact, session_admin.ArtifactAdmin)):
    site.register(_model, _admin_class)

urlpatterns = [path("admin/", site.urls)]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def url(model, view, *args):
    opts = model._meta
    return reverse(f"{site.name}:{opts.app_label}_{opts.model_name}_{view}", args=args)


# users without passwords (force_login needs none): password hashing would dominate the run


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob")


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", None)


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def tool_session(scripted, user):
    """A ToolAgent session: a turn with a successful and a failing tool call, then a failed turn."""
    Order.objects.create(number=42, status="shipped", customer="Ann")
    scripted.enqueue(
        tool_reply("lookup_order", {"number": 42}, id="toolu_ok"),
        tool_reply("lookup_order", {"number": 7}, id="toolu_missing"),
        text_reply("Order 42 has shipped; I found no order 7.", thinking="Both orders, then."),
    )
    session = ToolAgent.objects.start_session(
        "Where are orders 42 and 7?", instruction_args={"company_name": "Acme"}, owner=user)
    scripted.enqueue(ModelOverloaded("The model is overloaded."))
    with pytest.raises(ModelOverloaded):
        ToolAgent.objects.continue_session(session, "And order 43?")
    session.refresh_from_db()
    return session


def sessions(count, owner_factory):
    now = timezone.now()
    return ChatAgent.objects.bulk_create([
        ChatAgent(title=f"session {i}", owner=owner_factory(i), turn_count=i, input_tokens=i,
                  output_tokens=1, last_activity_at=now - timedelta(minutes=i),
                  context={"version": 1, "messages": [
                      {"role": "user", "content": [{"type": "text", "text": f"hello {i}"}]}]})
        for i in range(count)
    ])


# -- change page and changelist ---------------------------------------------------------------


def test_change_page_shows_transcript_instructions_usage_and_runs(admin_client, tool_session):
    response = admin_client.get(url(ToolAgent, "change", tool_session.pk))
    assert response.status_code == 200
    html = response.content.decode()
    # the conversation, in order: user, tool calls with inputs, tool results, the answer
    positions = [html.index(text) for text in (
        "Where are orders 42 and 7?", "toolu_ok", "&quot;shipped&quot;", "toolu_missing",
        "lookup_order failed: LookupError: no order 7",
        "Order 42 has shipped; I found no order 7.")]
    assert positions == sorted(positions)
    assert '<div class="agent-tool-head">Tool call <code>lookup_order</code>' in html
    assert "&quot;number&quot;: 42" in html  # the tool input, pretty-printed
    # the failing tool result is highlighted, the good one is not
    assert html.count("agent-tool agent-tool-result agent-error") == 1
    # thinking is collapsed
    assert '<details class="agent-thinking"><summary>Thinking</summary>' in html
    assert "Both orders, then." in html
    # the failed turn is not in the context, but shown last, highlighted, with its input
    failed = html.index("agent-msg agent-msg-failed agent-error")
    assert failed > html.index("Order 42 has shipped")
    assert "And order 43?" in html[failed:]
    assert "model_overloaded: The model is overloaded." in html[failed:]
    # instructions
    assert "You are a helpful assistant for Acme." in html
    assert "&quot;company_name&quot;: &quot;Acme&quot;" in html
    # usage totals: three scripted calls of 10 input + 5 output tokens each
    assert "<td>30</td><td>15</td><td>0</td><td>0</td><td>45</td>" in html
    # the run timeline: one completed, one failed run (highlighted), with durations and model
    timeline = html[html.index('<table class="agent-runs">'):]
    assert timeline.count('<tr class="agent-row-error">') == 1
    assert "agent-status-completed" in timeline and "agent-status-failed" in timeline
    assert "claude-sonnet-5-5" in timeline
    assert " ms</td>" in timeline or " s</td>" in timeline
    # the raw context, pretty-printed and read-only (no form field for it)
    assert '&quot;role&quot;: &quot;assistant&quot;' in html
    assert 'name="context"' not in html


def test_changelist_shows_turns_tokens_and_last_activity(admin_client, tool_session):
    response = admin_client.get(url(ToolAgent, "changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Where are orders 42 and 7?" in html
    assert '<td class="field-turns">1</td>' in html
    assert '<td class="field-tokens">45</td>' in html
    assert "field-last_activity_at" in html
    # the token column sorts in SQL
    assert admin_client.get(url(ToolAgent, "changelist"), {"o": "5"}).status_code == 200


def test_changelist_query_count_does_not_grow_with_sessions(admin_client, django_user_model):
    def owner(i):
        return django_user_model.objects.create_user(f"owner{uuid.uuid4().hex[:8]}-{i}")

    def count_queries():
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url(ChatAgent, "changelist"))
        assert response.status_code == 200
        return len(queries), response.content.decode().count('class="action-select"')

    sessions(3, owner)
    few, rows_few = count_queries()
    sessions(27, owner)
    many, rows_many = count_queries()
    assert (rows_few, rows_many) == (3, 30)
    assert few == many


def test_changelist_does_not_load_the_context_column(admin_client, user):
    sessions(2, lambda i: user)
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(url(ChatAgent, "changelist"))
    selects = [q["sql"] for q in queries if "testapp_chatagent" in q["sql"]
               and "COUNT(" not in q["sql"]]
    assert selects and all('"context"' not in sql for sql in selects)


def test_filters(admin_client, tool_session, user, other_user):
    ToolAgent.objects.create(title="quiet one", owner=other_user)
    changelist = url(ToolAgent, "changelist")
    failed = admin_client.get(changelist, {"status__exact": "failed"}).content.decode()
    assert "Where are orders 42" in failed and "quiet one" not in failed
    mine = admin_client.get(changelist, {"owner__id__exact": other_user.pk}).content.decode()
    assert "quiet one" in mine and "Where are orders 42" not in mine
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    recent = admin_client.get(changelist, {"last_activity_at__gte": since}).content.decode()
    assert "Where are orders 42" in recent and "quiet one" in recent
    until = (timezone.now() - timedelta(hours=1)).isoformat()
    old = admin_client.get(changelist, {"created_at__lt": until}).content.decode()
    assert "Where are orders 42" not in old and "quiet one" not in old


@pytest.mark.parametrize("term, found", [
    ("orders 42", True),          # title
    ("alice", True),              # owner username
    ("shipped", True),            # message text (a tool result)
    ("Acme", True),               # system prompt
    ("zebra", False),
    ("nothing-like-this", False),
])
def test_search(admin_client, tool_session, term, found):
    html = admin_client.get(url(ToolAgent, "changelist"), {"q": term}).content.decode()
    assert ("Where are orders 42" in html) is found


def test_search_by_id_email_and_non_ascii_text(admin_client, scripted, user):
    user.email = "alice@example.org"
    user.save()
    scripted.enqueue('Voilà: "crème brûlée" \\ done')
    session = PlainAgent.objects.start_session("Un café, s'il vous plaît", owner=user)
    PlainAgent.objects.create(title="other")
    changelist = url(PlainAgent, "changelist")
    for term in ("café", '"crème brûlée"', "\\ done", str(session.pk), "alice@example",
                 "plaît café"):
        html = admin_client.get(changelist, {"q": term}).content.decode()
        assert "Un café" in html, term
        assert ">other<" not in html, term


# -- escaping ---------------------------------------------------------------------------------


def test_message_content_is_escaped(admin_client, scripted, user):
    scripted.enqueue(tool_reply("lookup_order", {"number": XSS}),
                     text_reply(XSS, thinking=XSS))
    session = ToolAgent.objects.start_session(
        XSS, instruction_args={"company_name": XSS}, owner=user, title=XSS)
    html = admin_client.get(url(ToolAgent, "change", session.pk)).content.decode()
    assert XSS_ESCAPED in html
    assert XSS not in html
    listing = admin_client.get(url(ToolAgent, "changelist")).content.decode()
    assert XSS_ESCAPED in listing and XSS not in listing


def test_failed_run_error_and_input_are_escaped(admin_client, scripted, user):
    scripted.enqueue("hi")
    session = ToolAgent.objects.start_session("hi", instruction_args={"company_name": "A"},
                                              owner=user)
    scripted.enqueue(ModelOverloaded(XSS))
    with pytest.raises(ModelOverloaded):
        ToolAgent.objects.continue_session(session, XSS)
    html = admin_client.get(url(ToolAgent, "change", session.pk)).content.decode()
    assert html.count(XSS_ESCAPED) >= 3  # transcript input, transcript error, timeline error
    assert XSS not in html
    run = session.runs.get(status=RunStatus.FAILED)
    run_html = admin_client.get(url(AgentRun, "change", run.pk)).content.decode()
    assert XSS_ESCAPED in run_html and XSS not in run_html


# -- permissions ------------------------------------------------------------------------------


def test_non_staff_users_are_sent_to_login(client, user, tool_session):
    for target in (url(ToolAgent, "changelist"), url(ToolAgent, "change", tool_session.pk),
                   url(AgentRun, "changelist"), url(AgentEvent, "changelist")):
        response = client.get(target)
        assert response.status_code == 302 and "/login/" in response["Location"]
        client.force_login(user)  # logged in, but not staff: still the login page
        response = client.get(target)
        assert response.status_code == 302 and "/login/" in response["Location"]
        assert "Where are orders" not in response.content.decode()
        client.logout()


def test_staff_without_view_permission_gets_403(client, django_user_model, tool_session):
    staff = django_user_model.objects.create_user("staff", is_staff=True)
    client.force_login(staff)
    assert client.get(url(ToolAgent, "changelist")).status_code == 403
    assert client.get(url(ToolAgent, "change", tool_session.pk)).status_code == 403
    assert client.get(url(AgentRun, "changelist")).status_code == 403
    # with the view permission: read-only access, no save button, no reset/stop actions
    staff.user_permissions.add(Permission.objects.get(codename="view_toolagent"))
    page = client.get(url(ToolAgent, "change", tool_session.pk))
    assert page.status_code == 200 and "Where are orders 42 and 7?" in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    listing = client.get(url(ToolAgent, "changelist")).content.decode()
    assert 'value="export_json"' in listing and 'value="reset_sessions"' not in listing


def test_sessions_cannot_be_added_and_runs_are_read_only(admin_client, tool_session):
    assert admin_client.get(url(ToolAgent, "add")).status_code == 403
    assert admin_client.get(url(AgentRun, "add")).status_code == 403
    run = tool_session.runs.first()
    page = admin_client.get(url(AgentRun, "change", run.pk)).content.decode()
    assert 'name="_save"' not in page
    assert admin_client.post(url(AgentRun, "delete", run.pk), {"post": "yes"}).status_code == 403
    assert AgentRun.objects.filter(pk=run.pk).exists()


def test_saving_writes_only_the_edited_columns(admin_client, tool_session, user):
    """A turn committing while the admin form is saved keeps its context."""
    def concurrent_turn(sender, instance, **kwargs):
        ToolAgent.objects.filter(pk=instance.pk).update(
            context={"version": 1, "messages": [], "system": "committed meanwhile"})

    pre_save.connect(concurrent_turn, sender=ToolAgent)
    try:
        response = admin_client.post(url(ToolAgent, "change", tool_session.pk), {
            "title": "Renamed", "owner": user.pk, "metadata": '{"tag": "x"}', "_save": "Save"})
    finally:
        pre_save.disconnect(concurrent_turn, sender=ToolAgent)
    assert response.status_code == 302, response.content.decode()[:2000]
    tool_session.refresh_from_db()
    assert tool_session.title == "Renamed" and tool_session.metadata == {"tag": "x"}
    assert tool_session.context["system"] == "committed meanwhile"


# -- actions ----------------------------------------------------------------------------------


def run_action(client, model, action, sessions, *, follow=False, **extra):
    return client.post(url(model, "changelist"), {
        "action": action, "_selected_action": [str(s.pk) for s in sessions], **extra},
        follow=follow)


def test_export_round_trips_through_import(admin_client, tool_session, scripted, user):
    scripted.enqueue("second")
    other = ToolAgent.objects.start_session("second session",
                                            instruction_args={"company_name": "B"}, owner=user)
    response = run_action(admin_client, ToolAgent, "export_json", [tool_session, other])
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert "attachment;" in response["Content-Disposition"]
    documents = json.loads(response.content)
    assert len(documents) == 2
    by_id = {doc["session"]["id"]: doc for doc in documents}
    doc = by_id[str(tool_session.pk)]
    assert doc["context"] == tool_session.context
    assert [r["status"] for r in doc["runs"]] == ["completed", "failed"]
    assert [e["seq"] for e in doc["events"]] == list(range(1, tool_session.event_seq + 1))

    imported = import_session(doc)
    assert imported.pk != tool_session.pk
    again = session_admin._export_documents([ToolAgent.objects.get(pk=imported.pk)])[0]

    def without_ids(document):
        document = json.loads(json.dumps(document))
        document["session"].pop("id")
        for run in document["runs"]:
            run.pop("id")
        for event in document["events"]:
            event.pop("run")
            event["data"].pop("run_id", None)
        return document

    assert without_ids(again) == without_ids(doc)
    # and the imported conversation renders like the original
    html = admin_client.get(url(ToolAgent, "change", imported.pk)).content.decode()
    assert "Order 42 has shipped" in html and "And order 43?" in html


def test_reset_keeps_instructions_and_records_an_event(admin_client, tool_session):
    before = tool_session.version
    response = run_action(admin_client, ToolAgent, "reset_sessions", [tool_session],
                          follow=True)
    assert "Reset 1 session." in response.content.decode()
    tool_session.refresh_from_db()
    context = tool_session.get_context()
    assert context.messages == [] and context.turns == 0 and context.last_output is None
    assert context.usage == dict.fromkeys(context.usage, 0)
    assert context.system == "You are a helpful assistant for Acme."
    assert context.instruction_args == {"company_name": "Acme"}
    assert tool_session.version == before + 1
    assert tool_session.turn_count == 0 and tool_session.status == "idle"
    event = tool_session.events.order_by("-seq").first()
    assert event.type == EventType.CONTEXT_RESET and event.seq == tool_session.event_seq
    assert event.data == {"by": "root", "messages": 6, "turns": 1}


def test_reset_refuses_while_a_turn_holds_the_lease(admin_client, tool_session):
    ToolAgent.objects.filter(pk=tool_session.pk).update(
        lease_token=uuid.uuid4(), lease_expires_at=timezone.now() + timedelta(minutes=1))
    response = run_action(admin_client, ToolAgent, "reset_sessions", [tool_session],
                          follow=True)
    assert "A turn is running; not reset" in response.content.decode()
    after = ToolAgent.objects.get(pk=tool_session.pk)
    assert after.context == tool_session.context and after.version == tool_session.version
    assert not after.events.filter(type=EventType.CONTEXT_RESET).exists()


def test_reset_takes_over_an_expired_lease_and_fails_its_run(tool_session, scripted):
    stale = AgentRun.objects.create(session_type=ContentType.objects.get_for_model(ToolAgent),
                                    session_id=tool_session.pk, status=RunStatus.RUNNING)
    ToolAgent.objects.filter(pk=tool_session.pk).update(
        lease_token=stale.pk, lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert session_admin.reset_context(tool_session, by="ops")
    stale.refresh_from_db()
    assert stale.status == RunStatus.FAILED and stale.error["code"] == "interrupted"
    after = ToolAgent.objects.get(pk=tool_session.pk)
    assert after.lease_token is None
    # the session keeps working after the reset
    scripted.enqueue("fresh start")
    session = ToolAgent.objects.continue_session(after, "hello again")
    assert [m["role"] for m in session.get_context().messages] == ["user", "assistant"]


def test_stop_live_sessions_without_live_support(admin_client, tool_session, monkeypatch):
    monkeypatch.setitem(sys.modules, "django_agent_session.live.api", None)
    assert session_admin._live_stop() is None
    response = run_action(admin_client, ToolAgent, "stop_live_sessions", [tool_session],
                          follow=True)
    assert response.status_code == 200
    assert "Live sessions are unavailable" in response.content.decode()


def test_stop_live_sessions_calls_the_live_api(admin_client, tool_session, monkeypatch):
    calls = []

    def stop_session(session, *, reason):
        calls.append((session.pk, reason))
        if len(calls) == 2:
            raise RuntimeError("owner unreachable")
        return True

    monkeypatch.setattr(session_admin, "_live_stop", lambda: stop_session)
    other = ToolAgent.objects.create(title="second")
    response = run_action(admin_client, ToolAgent, "stop_live_sessions", [tool_session, other],
                          follow=True)
    html = response.content.decode()
    assert sorted(calls) == sorted([(tool_session.pk, "admin"), (other.pk, "admin")])
    assert "Stopped 1 live session." in html and "owner unreachable" in html


@pytest.mark.django_db(transaction=True)  # the live API closes the request's connection
def test_stop_through_the_live_api_reports_sessions_that_are_not_live(admin_client,
                                                                     tool_session):
    from django_agent_session.live.api import stop_session

    assert session_admin._live_stop() is stop_session
    response = run_action(admin_client, ToolAgent, "stop_live_sessions", [tool_session],
                          follow=True)
    assert "1 session was not live." in response.content.decode()


def test_delete_cascades_to_runs_and_events(client, django_user_model, tool_session):
    # a staff user allowed to delete sessions, without any permission on runs or events
    staff = django_user_model.objects.create_user("ops", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(
        codename__in=["view_toolagent", "delete_toolagent"]))
    client.force_login(staff)
    assert AgentRun.objects.filter(session_id=tool_session.pk).count() == 2
    assert AgentEvent.objects.filter(session_id=tool_session.pk).exists()
    confirm = run_action(client, ToolAgent, "delete_selected", [tool_session])
    assert confirm.status_code == 200
    assert "Are you sure" in confirm.content.decode()
    done = run_action(client, ToolAgent, "delete_selected", [tool_session], post="yes")
    assert done.status_code == 302
    assert not ToolAgent.objects.filter(pk=tool_session.pk).exists()
    assert not AgentRun.objects.filter(session_id=tool_session.pk).exists()
    assert not AgentEvent.objects.filter(session_id=tool_session.pk).exists()


# -- runs, events, artifacts ------------------------------------------------------------------


def test_run_and_event_admins_are_registered_on_the_default_site():
    for model in (AgentRun, AgentEvent, Artifact):
        assert admin.site.is_registered(model)
    assert not any(admin.site.is_registered(m) for m in session_models())


def test_runs_changelist_filters_and_search(admin_client, tool_session, scripted, user):
    scripted.enqueue("plain")
    plain = PlainAgent.objects.start_session("plain hello", owner=user)
    changelist = url(AgentRun, "changelist")
    rows = 'class="field-session_link"'  # one cell a row (read-only lists have no checkboxes)
    html = admin_client.get(changelist).content.decode()
    assert html.count(rows) == 3
    assert "model_overloaded: The model is overloaded." in html
    assert url(ToolAgent, "change", tool_session.pk) in html  # the session link
    ct = ContentType.objects.get_for_model(PlainAgent)
    only_plain = admin_client.get(changelist, {"session_type": ct.pk}).content.decode()
    assert only_plain.count(rows) == 1
    assert url(PlainAgent, "change", plain.pk) in only_plain
    failed = admin_client.get(changelist, {"status__exact": "failed"}).content.decode()
    assert failed.count(rows) == 1
    by_session = admin_client.get(changelist, {"q": str(tool_session.pk)}).content.decode()
    assert by_session.count(rows) == 2


def test_events_changelist_and_run_page(admin_client, tool_session):
    changelist = url(AgentEvent, "changelist")
    rows = 'class="field-seq"'
    everything = admin_client.get(changelist, {"session_id": str(tool_session.pk)})
    assert everything.status_code == 200
    html = everything.content.decode()
    assert html.count(rows) == tool_session.event_seq
    tool_calls = admin_client.get(changelist, {"type__exact": "tool.call"}).content.decode()
    assert tool_calls.count(rows) == 2
    run = tool_session.runs.get(status=RunStatus.COMPLETED)
    page = admin_client.get(url(AgentRun, "change", run.pk)).content.decode()
    assert "tool.result" in page and "no order 7" in page


def test_admin_log_pages_query_count_is_constant(admin_client, scripted, user):
    def count(model):
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(url(model, "changelist")).status_code == 200
        return len(queries)

    scripted.default = "ok"
    args = {"company_name": "Acme"}
    session = ChatAgent.objects.start_session("one", instruction_args=args, owner=user)
    few = {m: count(m) for m in (AgentRun, AgentEvent)}
    for i in range(5):
        ChatAgent.objects.continue_session(session, f"more {i}")
    ChatAgent.objects.start_session("two", instruction_args=args, owner=user)
    assert {m: count(m) for m in (AgentRun, AgentEvent)} == few


def test_register_session_admins_registers_each_concrete_model_once():
    fresh = AdminSite(name="fresh")
    fresh.register(ChatAgent, admin.ModelAdmin)
    registered = session_admin.register_session_admins(fresh)
    assert set(registered) == set(session_models()) - {ChatAgent}
    assert type(fresh.get_model_admin(ChatAgent)) is admin.ModelAdmin
    assert isinstance(fresh.get_model_admin(ToolAgent), session_admin.AgentSessionAdmin)
    assert session_admin.register_session_admins(fresh) == []


# -- cost, cache and stop reasons -------------------------------------------------------------

def priced_runs(session):
    ct = ContentType.objects.get_for_model(type(session))
    return AgentRun.objects.bulk_create([
        AgentRun(session_type=ct, session_id=session.pk, status="completed", model="sonnet",
                 cost=Decimal("0.030750"), stop_reason="end_turn", input_tokens=1000,
                 output_tokens=200, cache_creation_input_tokens=5000,
                 cache_read_input_tokens=20000, started_at=timezone.now()),
        AgentRun(session_type=ct, session_id=session.pk, status="incomplete", kind="title",
                 model="mystery", cost=None, stop_reason="max_tokens", input_tokens=10,
                 started_at=timezone.now()),
    ])


def test_runs_show_kind_stop_reason_cost_and_cache_ratio(admin_client, user, monkeypatch):
    # the session cost column is opt-in (the default columns fit a 1280 px screen)
    monkeypatch.setattr(site._registry[ChatAgent], "list_display",
                        [*session_admin.AgentSessionAdmin.list_display, "cost"])
    session = ChatAgent.objects.create(owner=user, input_tokens=1000,
                                       cache_read_input_tokens=3000)
    priced, unpriced = priced_runs(session)
    listing = admin_client.get(url(AgentRun, "changelist")).content.decode()
    assert '<td class="field-cost_usd">$0.030750</td>' in listing
    assert '<td class="field-cost_usd">unknown</td>' in listing
    assert '<td class="field-cache_ratio">77%</td>' in listing  # 20,000 of 26,000 read
    assert '<td class="field-stop_reason">max_tokens</td>' in listing
    assert "agent-status-incomplete" in listing
    filtered = admin_client.get(url(AgentRun, "changelist"), {"kind__exact": "title"})
    assert filtered.content.decode().count('<td class="field-kind">') == 1
    page = admin_client.get(url(AgentRun, "change", priced.pk)).content.decode()
    assert "$0.030750" in page and "end_turn" in page and "77%" in page
    # the session: unknown cost once a run has no price, the ratio from its token columns
    listing = admin_client.get(url(ChatAgent, "changelist")).content.decode()
    assert '<td class="field-cost">unknown</td>' in listing
    unpriced.delete()
    listing = admin_client.get(url(ChatAgent, "changelist")).content.decode()
    assert '<td class="field-cost">$0.030750</td>' in listing
    assert admin_client.get(url(ChatAgent, "changelist"), {"o": "7"}).status_code == 200
    page = admin_client.get(url(ChatAgent, "change", session.pk)).content.decode()
    assert "<td>$0.030750</td>" in page and "<td>75%</td>" in page  # 3,000 of 4,000
