"""``AgentSessionAdmin.owner_scoped``: staff who are not superusers see, and act on, only the
sessions they own, and only those sessions' runs, events and artifacts.

Two staff users with the view permissions, each owning a ChatAgent session (scoped here) and a
PlainAgent session (registered unscoped, so its rows stay visible to both).
"""

from __future__ import annotations

import json

import pytest
from django.contrib.admin import AdminSite
from django.contrib.auth.models import Permission
from django.urls import path, reverse

from django_agent_session import admin as session_admin
from django_agent_session.artifacts import save_artifact
from django_agent_session.models import AgentEvent, AgentRun, Artifact
from tests.testapp.models import ChatAgent, PlainAgent


class OwnedChatAdmin(session_admin.AgentSessionAdmin):
    owner_scoped = True


site = AdminSite(name="agent_admin_owner_scope")
site.register(ChatAgent, OwnedChatAdmin)
site.register(PlainAgent, session_admin.AgentSessionAdmin)
site.register(AgentRun, session_admin.AgentRunAdmin)
site.register(AgentEvent, session_admin.AgentEventAdmin)
site.register(Artifact, session_admin.ArtifactAdmin)

urlpatterns = [path("admin/", site.urls)]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

PERMISSIONS = ["view_chatagent", "change_chatagent", "view_plainagent", "view_agentrun",
               "view_agentevent", "view_artifact"]


def url(model, view, *args):
    opts = model._meta
    return reverse(f"{site.name}:{opts.app_label}_{opts.model_name}_{view}", args=args)


def staff(django_user_model, name):
    user = django_user_model.objects.create_user(name, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=PERMISSIONS))
    return user


@pytest.fixture(autouse=True)
def storage(tmp_storage):
    return tmp_storage


@pytest.fixture
def world(scripted, django_user_model):
    """alice's and bob's ChatAgent and PlainAgent sessions, each with a run, events and an
    artifact."""
    found = {}
    for name in ("alice", "bob"):
        user = staff(django_user_model, name)
        for model in (ChatAgent, PlainAgent):
            scripted.enqueue(f"hi {name}")
            session = model.objects.start_session(
                f"{model.__name__} of {name}", owner=user,
                **({"instruction_args": {"company_name": "Acme"}} if model is ChatAgent else {}))
            save_artifact(session, f"{name}-{model.__name__}.txt", b"x")
            found[name, model] = session
        found[name] = user
    return found


def as_user(client, user):
    client.force_login(user)
    return client


def test_the_changelist_shows_only_own_sessions(client, world, admin_user):
    html = as_user(client, world["alice"]).get(url(ChatAgent, "changelist")).content.decode()
    assert "ChatAgent of alice" in html and "ChatAgent of bob" not in html
    # an unscoped admin on the same site still lists everyone's
    html = client.get(url(PlainAgent, "changelist")).content.decode()
    assert "PlainAgent of alice" in html and "PlainAgent of bob" in html
    # superusers see every session
    html = as_user(client, admin_user).get(url(ChatAgent, "changelist")).content.decode()
    assert "ChatAgent of alice" in html and "ChatAgent of bob" in html


def test_another_owners_change_page_does_not_exist(client, world, admin_user):
    as_user(client, world["alice"])
    assert client.get(url(ChatAgent, "change", world["alice", ChatAgent].pk)).status_code == 200
    response = client.get(url(ChatAgent, "change", world["bob", ChatAgent].pk))
    assert response.status_code == 302 and response["Location"] == reverse(f"{site.name}:index")
    assert as_user(client, admin_user).get(
        url(ChatAgent, "change", world["bob", ChatAgent].pk)).status_code == 200


def test_actions_and_approvals_act_only_on_own_sessions(client, world):
    as_user(client, world["alice"])
    mine, theirs = world["alice", ChatAgent], world["bob", ChatAgent]
    response = client.post(url(ChatAgent, "changelist"), {
        "action": "export_json", "_selected_action": [str(mine.pk), str(theirs.pk)]})
    assert [doc["session"]["id"] for doc in json.loads(response.content)] == [str(mine.pk)]
    # the decide endpoint of someone else's session: "does not exist", not their change page
    response = client.post(url(ChatAgent, "decide_tool_call", theirs.pk),
                           {"tool_use_id": "toolu_x", "decision": "reject"})
    assert response["Location"] == reverse(f"{site.name}:index")
    response = client.post(url(ChatAgent, "decide_tool_call", mine.pk),
                           {"tool_use_id": "toolu_x", "decision": "reject"})
    assert response["Location"] == url(ChatAgent, "change", mine.pk)


@pytest.mark.parametrize("log_model", [AgentRun, AgentEvent, Artifact])
def test_runs_events_and_artifacts_follow_their_session_admin(client, world, admin_user,
                                                              log_model):
    def rows(session):
        return log_model.objects.filter(session_id=session.pk)

    def listed(response):
        return {str(pk) for pk in response.context["cl"].result_list.values_list("pk", flat=True)}

    as_user(client, world["alice"])
    shown = listed(client.get(url(log_model, "changelist")))
    for owner, model, visible in [("alice", ChatAgent, True), ("bob", ChatAgent, False),
                                  ("alice", PlainAgent, True), ("bob", PlainAgent, True)]:
        ids = {str(pk) for pk in rows(world[owner, model]).values_list("pk", flat=True)}
        assert ids and (ids <= shown if visible else not ids & shown), (owner, model)
    theirs = rows(world["bob", ChatAgent]).first()
    response = client.get(url(log_model, "change", theirs.pk))
    assert response.status_code == 302 and response["Location"] == reverse(f"{site.name}:index")
    mine = rows(world["alice", ChatAgent]).first()
    assert client.get(url(log_model, "change", mine.pk)).status_code == 200
    # superusers see every row
    as_user(client, admin_user)
    assert len(listed(client.get(url(log_model, "changelist")))) == log_model.objects.count()
    assert client.get(url(log_model, "change", theirs.pk)).status_code == 200
