"""Attachments over a WebSocket: uploaded over REST, then named by id in a ``message`` frame."""

from __future__ import annotations

import base64
import uuid

import pytest
from channels.db import database_sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from django_agent_session.live.api import create_conversation
from django_agent_session.live.routers import SessionSpec
from django_agent_session.testing.loopback import Reply
from tests.helpers import files
from tests.helpers.live_server import collect, completed, expect, viewer
from tests.testapp.models import PlainAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_layer")]

AGENT = "testapp.plainagent"


@pytest.fixture(autouse=True)
def storage(tmp_storage):
    return tmp_storage


@database_sync_to_async
def plain_conversation(user):
    session, _ = create_conversation(SessionSpec(PlainAgent), uuid.uuid4(), user)
    return session


@database_sync_to_async
def upload(user, session, data: bytes, name: str = "red.png") -> dict:
    client = APIClient()
    client.force_authenticate(user)
    response = client.post(f"/api/plain-agents/{session.pk}/attachments/",
                           {"file": SimpleUploadedFile(name, data)}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


async def test_a_message_frame_sends_an_uploaded_image_by_id(user, loopback):
    loopback.enqueue(Reply.text("A red square."))
    session = await plain_conversation(user)
    uploaded = await upload(user, session, files.png())
    comm, _ = await viewer(user, session.pk, agent=AGENT)

    await comm.send_json_to({"type": "message", "ref": "m1", "input": {
        "message": "What is this?", "attachments": [uploaded["id"]]}})
    frames = await collect(comm, completed("m1"))

    assert frames[-1]["status"] == "completed"
    (request,) = loopback.message_requests
    assert request.attachments[0]["media_type"] == "image/png"
    assert request.attachments[0]["base64"] == base64.b64encode(files.png()).decode()
    (message,) = [f for f in frames if f["type"] == "message"]
    context = await database_sync_to_async(PlainAgent.objects.get_context)(session.pk)
    assert context.messages[0]["content"][0]["source"]["type"] == "artifact"
    await comm.disconnect()


async def test_another_users_upload_is_an_error_frame_that_leaks_nothing(user, other_user,
                                                                        loopback):
    mine = await plain_conversation(user)
    theirs = await plain_conversation(other_user)
    their_id = (await upload(other_user, theirs, files.png()))["id"]
    comm, _ = await viewer(user, mine.pk, agent=AGENT)

    await comm.send_json_to({"type": "message", "ref": "m1", "input": {
        "message": "x", "attachments": [their_id]}})
    error = await expect(comm, "error")

    assert error["code"] == "invalid_attachment" and error["ref"] == "m1"
    assert error["errors"] == {"attachments": [f"No attachment {their_id} on this session."]}
    assert loopback.message_requests == []
    await comm.disconnect()
