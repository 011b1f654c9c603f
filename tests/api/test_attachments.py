"""Files over REST: upload then send by id (JSON), multipart turns, sniffing, limits, access."""

from __future__ import annotations

import base64
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from django_agent_session.models import Artifact
from django_agent_session.testing.loopback import Reply
from tests.helpers import files
from tests.helpers.loopback import loopback_settings
from tests.testapp.models import PlainAgent

pytestmark = pytest.mark.django_db

URL = "/api/plain-agents/"


@pytest.fixture(autouse=True)
def storage(tmp_storage):
    return tmp_storage


@pytest.fixture
def session(user):
    return PlainAgent.objects.create_session(owner=user)


def upload(name: str, data: bytes, content_type: str = "image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def post_file(api, session, data: bytes, name: str = "red.png",
              content_type: str = "image/png"):
    return api.post(f"{URL}{session.pk}/attachments/",
                    {"file": upload(name, data, content_type)}, format="multipart")


def test_upload_then_send_by_id_in_json(api, session, loopback):
    loopback.enqueue(Reply.text("A red square."))
    uploaded = post_file(api, session, files.png())
    assert uploaded.status_code == 201, uploaded.content
    body = uploaded.json()
    assert body["kind"] == "image" and body["content_type"] == "image/png"
    assert body["width"] == 2 and body["height"] == 3 and body["filename"] == "red.png"

    response = api.post(f"{URL}{session.pk}/continue/", {"input": {
        "message": "What is this?", "attachments": [body["id"]]}}, format="json")

    assert response.status_code == 200, response.content
    (request,) = loopback.message_requests
    assert request.attachments[0]["media_type"] == "image/png"
    assert request.attachments[0]["base64"] == base64.b64encode(files.png()).decode()
    context = api.get(f"{URL}{session.pk}/context/").json()
    assert context["messages"][0]["content"][0]["source"] == {
        "type": "artifact", "artifact_id": body["id"], "media_type": "image/png", "tokens": 1}


def test_a_multipart_turn_stores_its_files_and_sends_them(api, session, loopback):
    loopback.enqueue(Reply.text("Both."))
    response = api.post(f"{URL}{session.pk}/continue/", {
        "message": "Compare", "files": [upload("a.png", files.png()),
                                        upload("b.pdf", files.pdf(1), "application/pdf")],
    }, format="multipart")

    assert response.status_code == 200, response.content
    assert [(a["type"], a["media_type"]) for a in loopback.message_requests[0].attachments] \
        == [("image", "image/png"), ("document", "application/pdf")]
    assert loopback.message_requests[0].user_text == "Compare"
    assert Artifact.objects.filter(session_id=session.pk).count() == 2


def test_a_multipart_start_creates_the_session_then_runs_with_the_files(api, user, loopback):
    loopback.enqueue(Reply.text("Red."))
    response = api.post(URL, {"message": "Colour?", "files": [upload("x.png", files.png())]},
                        format="multipart")

    assert response.status_code == 201, response.content
    session_id = response.json()["session"]["id"]
    assert response.json()["output"] == {"content": "Red."}
    assert loopback.message_requests[0].attachments[0]["data"] == files.png()
    assert PlainAgent.objects.get(pk=session_id).owner == user


def test_a_multipart_turn_may_be_queued(api, session, recording):
    response = api.post(f"{URL}{session.pk}/continue/", {
        "message": "Later", "wait": "false", "files": [upload("x.png", files.png())]},
        format="multipart")

    assert response.status_code == 202, response.content
    attachments = response.json()["run"]["input"]["attachments"]
    assert attachments[0]["source"]["type"] == "artifact"


def test_a_png_declared_as_pdf_is_sniffed_as_the_png_it_is(api, session):
    response = post_file(api, session, files.png(), name="contract.pdf",
                         content_type="application/pdf")

    assert response.status_code == 201
    assert response.json()["content_type"] == "image/png"
    assert response.json()["kind"] == "image"


@pytest.mark.parametrize(("name", "data", "declared"), [
    ("archive.png", files.ZIP, "image/png"),
    ("logo.svg", files.SVG, "image/svg+xml"),
    ("page.png", b"<!DOCTYPE html><script>x()</script>", "image/png"),
])
def test_a_type_not_allowed_is_415_with_a_clear_body(api, session, storage, name, data,
                                                     declared):
    response = post_file(api, session, data, name=name, content_type=declared)

    assert response.status_code == 415
    body = response.json()
    assert body["code"] == "invalid_attachment" and body["reason"] == "type"
    assert "allowed: image/png, image/jpeg, image/gif, image/webp, application/pdf" in \
        body["errors"]["file"][0]
    assert not Artifact.objects.exists() and not list(storage.rglob("*.*"))


def test_an_oversized_file_is_413(api, session, loopback):
    with override_settings(AGENT_SESSION=loopback_settings(loopback, ATTACHMENT_MAX_BYTES=64)):
        response = post_file(api, session, files.png(30, 30))
        multipart = api.post(f"{URL}{session.pk}/continue/", {
            "message": "x", "files": [upload("x.png", files.png(30, 30))]}, format="multipart")

    for answer in (response, multipart):
        assert answer.status_code == 413
        assert answer.json()["reason"] == "too_large"
        assert "larger than the 64 bytes allowed" in answer.json()["errors"]["file"][0]
    assert not Artifact.objects.exists()


def test_a_body_far_over_the_limit_is_refused_before_it_is_read(api, session, loopback):
    with override_settings(AGENT_SESSION=loopback_settings(loopback, ATTACHMENT_MAX_BYTES=10)):
        response = post_file(api, session, files.png() + b"\0" * 400_000)
    assert response.status_code == 413


@pytest.mark.parametrize("path", ["attachments/", "continue/"])
def test_a_logged_in_browser_s_oversized_body_is_never_parsed(client, user, session, loopback,
                                                             monkeypatch, path):
    """With session authentication the CSRF check reads ``request.POST``, which parses a
    multipart body (its files written to disk) before the view runs: the size is checked
    from Content-Length before that."""
    from django.http.multipartparser import MultiPartParser

    def parse(self):
        raise AssertionError("the oversized body was parsed")

    monkeypatch.setattr(MultiPartParser, "parse", parse)
    client.force_login(user)
    client.handler.enforce_csrf_checks = True
    with override_settings(AGENT_SESSION=loopback_settings(loopback, ATTACHMENT_MAX_BYTES=10)):
        response = client.post(f"{URL}{session.pk}/{path}",
                               {"file": upload("big.png", files.png() + b"\0" * 2_000_000)})
    assert response.status_code == 413
    assert response.json()["reason"] == "too_large"


def test_upload_needs_exactly_one_file(api, session):
    response = api.post(f"{URL}{session.pk}/attachments/", {"other": "x"}, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"file": ["Send exactly one file, in the field `file`."]}


def test_another_users_session_takes_no_upload(other_api, session):
    response = post_file(other_api, session, files.png())
    assert response.status_code == 404
    assert not Artifact.objects.exists()


def test_another_users_attachment_id_is_refused_without_a_leak(api, other_api, other_user,
                                                               session, loopback):
    theirs = PlainAgent.objects.create_session(owner=other_user)
    their_id = post_file(other_api, theirs, files.png()).json()["id"]
    missing = "00000000-0000-0000-0000-000000000001"

    bodies = []
    for artifact_id in (their_id, missing):
        response = api.post(f"{URL}{session.pk}/continue/", {"input": {
            "message": "x", "attachments": [artifact_id]}}, format="json")
        assert response.status_code == 400
        bodies.append(json.dumps(response.json()).replace(artifact_id, "ID"))
    assert bodies[0] == bodies[1]
    assert json.loads(bodies[0]) == {"input": {"attachments": [
        "No attachment ID on this session."]}}
    assert loopback.message_requests == []


def test_the_file_is_served_to_the_owner_only(api, other_api, session):
    artifact_id = post_file(api, session, files.png()).json()["id"]

    response = api.get(f"{URL}{session.pk}/attachments/{artifact_id}/")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content) == files.png()
    assert other_api.get(f"{URL}{session.pk}/attachments/{artifact_id}/").status_code == 404
    assert api.get(f"{URL}{session.pk}/attachments/nope/").status_code == 404


def test_an_agent_without_an_attachments_field_refuses_files(api, loopback):
    response = api.post("/api/chat-agents/", {
        "input": json.dumps({"message": "x"}),
        "instruction_args": json.dumps({"company_name": "Acme"}),
        "files": [upload("x.png", files.png())]}, format="multipart")

    assert response.status_code == 400
    assert response.json() == {"files": ["This agent's input takes no attachments."]}


def test_multipart_json_fields_must_be_json(api, session):
    response = api.post(f"{URL}{session.pk}/continue/", {
        "input": "{not json", "files": [upload("x.png", files.png())]}, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"input": ["Must be JSON text in a multipart form."]}
