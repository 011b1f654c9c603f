"""Attachments in the admin transcript: a thumbnail for an image, a link for a PDF, both served
by the session's own admin, so only someone who may see the session can open them."""

from __future__ import annotations

import pytest
from django.contrib.admin import AdminSite
from django.contrib.auth.models import Permission
from django.urls import path, reverse

from django_agent_session import admin as session_admin
from django_agent_session.store.attachments import save_attachment
from django_agent_session.testing.loopback import Reply
from tests.helpers import files
from tests.testapp.models import PlainAgent


class OwnedPlainAdmin(session_admin.AgentSessionAdmin):
    owner_scoped = True


site = AdminSite(name="agent_admin_attachments")
site.register(PlainAgent, OwnedPlainAdmin)
urlpatterns = [path("admin/", site.urls)]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


def url(view, *args):
    return reverse(f"{site.name}:testapp_plainagent_{view}", args=args)


def staff(django_user_model, name):
    user = django_user_model.objects.create_user(name, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename="view_plainagent"))
    return user


@pytest.fixture(autouse=True)
def storage(tmp_storage):
    return tmp_storage


@pytest.fixture
def alice(django_user_model):
    return staff(django_user_model, "alice")


@pytest.fixture
def bob(django_user_model):
    return staff(django_user_model, "bob")


@pytest.fixture
def conversation(alice, loopback):
    session = PlainAgent.objects.create_session(owner=alice)
    image = save_attachment(session, files.png(), filename="red.png", uploaded_by=alice)
    document = save_attachment(session, files.pdf(1), filename="terms.pdf", uploaded_by=alice)
    loopback.enqueue(Reply.text("Got both."))
    PlainAgent.objects.continue_session(session, {"message": "Look",
                                                  "attachments": [image.pk, document.pk]})
    return session, image, document


def test_the_transcript_shows_a_thumbnail_and_a_link(client, alice, conversation):
    session, image, document = conversation
    client.force_login(alice)

    page = client.get(url("change", session.pk)).content.decode()

    image_url = url("attachment", session.pk, image.pk)
    assert (f'<a class="agent-attachment" href="{image_url}" target="_blank" '
            f'rel="noopener"><img class="agent-thumb" src="{image_url}"') in page
    assert f'<a class="agent-attachment" href="{url("attachment", session.pk, document.pk)}">' \
        in page
    response = client.get(image_url)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == files.png()
    pdf = client.get(url("attachment", session.pk, document.pk))
    assert pdf["Content-Disposition"].startswith("attachment")


def test_someone_who_may_not_see_the_session_cannot_open_its_files(client, bob,
                                                                   conversation):
    session, image, _ = conversation
    client.force_login(bob)

    assert client.get(url("attachment", session.pk, image.pk)).status_code == 404
    page = client.get(url("change", session.pk), follow=True).content.decode()
    assert "thumb" not in page


def test_an_unknown_attachment_is_404(client, alice, conversation):
    session, _, _ = conversation
    client.force_login(alice)
    assert client.get(url("attachment", session.pk, "nope")).status_code == 404
