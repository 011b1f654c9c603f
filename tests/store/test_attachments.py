"""Files as turn input from Python: sniffed and limited, stored once, referenced from the
context, sent to the (loopback) Messages API as base64 blocks through the real SDK."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from django_agent_session import exceptions as exc
from django_agent_session.engine.limits import estimate_tokens
from django_agent_session.export import export_session, import_session
from django_agent_session.models import AgentEvent, AgentRun, Artifact
from django_agent_session.retention import RetentionPolicy, prune
from django_agent_session.store.attachments import (
    check_upload,
    image_size,
    pdf_pages,
    save_attachment,
    sniff,
)
from django_agent_session.testing.loopback import Reply
from tests.helpers import files
from tests.testapp.models import ChatAgent, PlainAgent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def storage(tmp_storage, loopback):
    return tmp_storage


def stored_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def session(user):
    return PlainAgent.objects.create_session(owner=user)


def stored_json(session) -> str:
    """Everything stored about the session's turns: context, runs' input, events."""
    session.refresh_from_db()
    return json.dumps([session.state, list(AgentRun.objects.filter(session_id=session.pk)
                                           .values_list("input", flat=True)),
                       list(AgentEvent.objects.filter(session_id=session.pk)
                            .values_list("data", flat=True))])


# -- sniffing and limits ----------------------------------------------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (files.png(), "image/png"), (files.jpeg_header(), "image/jpeg"), (files.gif(), "image/gif"),
    (files.webp(), "image/webp"), (files.pdf(), "application/pdf"),
    (files.ZIP, "application/zip"), (files.SVG, "image/svg+xml"),
    (b"<!DOCTYPE html><p>hi", "text/html"), (b"just text", "application/octet-stream"),
])
def test_types_are_read_from_the_bytes(data, expected):
    assert sniff(data) == expected


def test_image_sizes_and_pdf_pages_are_read_from_headers():
    assert image_size(files.png(7, 9), "image/png") == (7, 9)
    assert image_size(files.jpeg_header(640, 480), "image/jpeg") == (640, 480)
    assert image_size(files.gif(4, 5), "image/gif") == (4, 5)
    assert image_size(files.webp(30, 20), "image/webp") == (30, 20)
    assert pdf_pages(files.pdf(3)) == 3


def test_a_png_named_pdf_is_stored_as_the_png_it_is(session, storage):
    artifact = save_attachment(session, files.png(), filename="report.pdf")

    assert artifact.content_type == "image/png"
    assert artifact.file.name.endswith("/report.png")
    assert artifact.metadata == {"attachment": True, "filename": "report.pdf",
                                 "uploaded_by": None, "width": 2, "height": 3, "tokens": 1}
    assert (storage / artifact.file.name).read_bytes() == files.png()


@pytest.mark.parametrize("data", [files.ZIP, files.SVG, b"plain text"])
def test_a_type_not_allowed_is_refused_and_nothing_is_stored(session, storage, data):
    with pytest.raises(exc.InvalidAttachment, match="allowed: image/png") as caught:
        save_attachment(session, data, filename="picture.png")
    assert caught.value.reason == "type"
    assert stored_files(storage) == [] and not Artifact.objects.exists()


def test_too_large_and_empty_files_are_refused(session):
    with override_settings(AGENT_SESSION={"ATTACHMENT_MAX_BYTES": 100}):
        with pytest.raises(exc.InvalidAttachment, match="larger than the 100 bytes") as caught:
            check_upload(files.png(20, 20) + b"\0" * 100)
    assert caught.value.reason == "too_large"
    with pytest.raises(exc.InvalidAttachment, match="empty"):
        check_upload(b"")


def test_allowed_types_are_a_setting(session):
    with override_settings(AGENT_SESSION={"ATTACHMENT_TYPES": ["application/pdf"]}):
        with pytest.raises(exc.InvalidAttachment, match="is image/png"):
            check_upload(files.png())
        assert check_upload(files.pdf())[1] == "application/pdf"


# -- turns ------------------------------------------------------------------------------------

def test_a_turn_sends_an_image_as_a_base64_block_and_stores_only_its_reference(
        session, loopback):
    image = save_attachment(session, files.png(), filename="red.png")
    loopback.enqueue(Reply.text("A red square."))

    PlainAgent.objects.continue_session(session, {"message": "What is this?",
                                                  "attachments": [str(image.pk)]})

    (request,) = loopback.message_requests
    assert request.status == 200
    assert request.messages[-1]["content"][0] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png",
                                    "data": b64(files.png())}}
    assert request.attachments[0]["data"] == files.png()
    assert request.user_text == "What is this?"
    context = PlainAgent.objects.get_context(session.pk)
    assert context.messages[0]["content"][0] == {
        "type": "image", "source": {"type": "artifact", "artifact_id": str(image.pk),
                                    "media_type": "image/png", "tokens": 1}}
    assert b64(files.png()) not in stored_json(session)
    assert '"base64"' not in stored_json(session)


def test_a_turn_sends_a_pdf_as_a_document_block(session, loopback):
    document = save_attachment(session, files.pdf(2), filename="terms.pdf")
    loopback.enqueue(Reply.text("Two pages."))

    PlainAgent.objects.continue_session(session, {"message": "Summarise",
                                                  "attachments": [document]})

    (request,) = loopback.message_requests
    assert request.attachments == [{"type": "document", "media_type": "application/pdf",
                                    "data": files.pdf(2), "base64": b64(files.pdf(2))}]
    assert b64(files.pdf(2)) not in stored_json(session)
    assert document.metadata["pages"] == 2


@pytest.mark.django_db(transaction=True)
async def test_an_async_turn_sends_the_image_too(session, loopback):
    from channels.db import database_sync_to_async

    image = await database_sync_to_async(save_attachment)(session, files.gif())
    loopback.enqueue(Reply.text("A gif."))

    await PlainAgent.objects.acontinue_session(session.pk, {"message": "And this?",
                                                            "attachments": [image.pk]})

    assert loopback.message_requests[0].attachments[0]["media_type"] == "image/gif"


def test_every_later_call_sends_the_image_again(session, loopback):
    image = save_attachment(session, files.png())
    loopback.enqueue(Reply.text("One."), Reply.text("Two."))
    PlainAgent.objects.continue_session(session, {"message": "1", "attachments": [image.pk]})
    PlainAgent.objects.continue_session(session, "2")

    second = loopback.message_requests[1]
    assert [a["data"] for a in second.attachments] == [files.png()]
    assert second.messages[0]["content"][0]["source"]["type"] == "base64"


def test_a_deleted_file_becomes_a_note_and_the_conversation_goes_on(session, loopback,
                                                                     storage):
    image = save_attachment(session, files.png())
    loopback.enqueue(Reply.text("One."), Reply.text("Two."))
    PlainAgent.objects.continue_session(session, {"message": "1", "attachments": [image.pk]})
    image.delete()

    PlainAgent.objects.continue_session(session, "2")

    sent = loopback.message_requests[1].messages[0]["content"][0]
    assert sent == {"type": "text",
                    "text": "[An attached file (image/png) is no longer available.]"}


def test_a_fork_gets_its_own_copy_of_the_attachments_it_shows(session, loopback, storage):
    from django_agent_session.history import fork_session

    image = save_attachment(session, files.png(), filename="red.png")
    loopback.enqueue(Reply.text("A red square."), Reply.text("Still red."))
    PlainAgent.objects.continue_session(session, {"message": "What is this?",
                                                  "attachments": [str(image.pk)]})

    fork = fork_session(session)
    copied = PlainAgent.objects.get_context(fork.pk).messages[0]["content"][0]["source"]
    assert copied["artifact_id"] != str(image.pk)
    assert Artifact.objects.get(pk=copied["artifact_id"]).session_id == fork.pk
    PlainAgent.objects.get(pk=session.pk).delete()  # the source's files go; the fork's stay
    assert not Artifact.objects.filter(pk=image.pk).exists()

    PlainAgent.objects.continue_session(fork, "And now?")

    assert loopback.message_requests[1].messages[0]["content"][0] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/png",
                                    "data": b64(files.png())}}


def test_another_sessions_attachment_is_not_found_like_a_missing_one(session, user):
    other = PlainAgent.objects.create_session(owner=user)
    theirs = save_attachment(other, files.png())
    missing = "00000000-0000-0000-0000-000000000001"

    errors = []
    for artifact_id in (str(theirs.pk), missing):
        with pytest.raises(exc.InvalidAttachment) as caught:
            PlainAgent.objects.continue_session(session, {"message": "x",
                                                          "attachments": [artifact_id]})
        errors.append(caught.value.errors["attachments"][0].replace(artifact_id, "ID"))
    assert errors == ["No attachment ID on this session."] * 2
    assert not AgentRun.objects.filter(session_id=session.pk).exists()


def test_an_artifact_that_is_not_an_attachment_cannot_be_attached(session):
    from django_agent_session.artifacts import save_artifact

    report = save_artifact(session, "report.png", files.png())
    with pytest.raises(exc.InvalidAttachment):
        PlainAgent.objects.continue_session(session, {"message": "x",
                                                      "attachments": [report.pk]})


def test_an_upload_of_one_user_cannot_be_sent_by_another(session, user, other_user):
    image = save_attachment(session, files.png(), uploaded_by=user)
    with pytest.raises(exc.InvalidAttachment, match="No attachment"):
        PlainAgent.objects.submit(session, {"message": "x", "attachments": [image.pk]},
                                  origin={"surface": "rest", "user_id": other_user.pk})


def test_a_new_session_has_no_attachments_to_name(user):
    with pytest.raises(exc.InvalidAttachment):
        PlainAgent.objects.start_session({"message": "x", "attachments": [
            "00000000-0000-0000-0000-000000000001"]}, owner=user)


def test_an_agent_without_an_attachments_field_takes_none(user, loopback):
    with pytest.raises(exc.InvalidInput, match="takes no attachments"):
        ChatAgent.objects.start_session(
            {"message": "x", "attachments": ["00000000-0000-0000-0000-000000000001"]},
            owner=user, instruction_args={"company_name": "Acme"})


def test_at_most_attachment_max_count_per_message(session):
    with override_settings(AGENT_SESSION={"ATTACHMENT_MAX_COUNT": 1}):
        ids = [save_attachment(session, files.png()).pk for _ in range(2)]
        with pytest.raises(exc.InvalidInput, match="At most 1 attachments"):
            PlainAgent.objects.continue_session(session, {"message": "x", "attachments": ids})


def test_the_token_estimate_counts_an_image_by_its_pixels_not_its_reference(session):
    big = save_attachment(session, files.png(1600, 1200))
    small = save_attachment(session, files.png(60, 50))
    blocks = PlainAgent.objects.submit(
        session, {"message": "x", "attachments": [big.pk, small.pk]}).run.input["attachments"]
    with_files = [{"role": "user", "content": blocks}]
    as_text = [{"role": "user", "content": json.loads(json.dumps(blocks).replace(
        '"artifact"', '"artefakt"'))}]  # the same size, not references

    assert estimate_tokens(None, with_files) - estimate_tokens(None, as_text) == 1600 + 4
    assert big.metadata["tokens"] == 1600 and small.metadata["tokens"] == 4  # 60*50/750


# -- export, import, retention ----------------------------------------------------------------

def test_export_import_carries_the_files_and_remaps_the_references(session, loopback, user):
    image = save_attachment(session, files.png(), filename="red.png")
    loopback.enqueue(Reply.text("Red."), Reply.text("Still red."))
    session = PlainAgent.objects.continue_session(session, {"message": "1",
                                                            "attachments": [image.pk]})

    doc = json.loads(json.dumps(export_session(session, include_files=True)))
    session.delete()  # the original files go: the copy must carry its own
    copy = import_session(doc)

    (artifact,) = Artifact.objects.filter(session_id=copy.pk)
    assert artifact.pk != image.pk and artifact.content_type == "image/png"
    reference = PlainAgent.objects.get_context(copy.pk).messages[0]["content"][0]
    assert reference["source"]["artifact_id"] == str(artifact.pk)
    run = AgentRun.objects.get(session_id=copy.pk)
    assert run.input["attachments"][0]["source"]["artifact_id"] == str(artifact.pk)
    PlainAgent.objects.continue_session(copy, "2")
    assert loopback.message_requests[1].attachments[0]["data"] == files.png()
    again = export_session(copy)
    assert again["context"]["messages"][0]["content"][0]["source"]["artifact_id"] == \
        str(artifact.pk)


def test_retention_deletes_the_attachment_files(session, loopback, storage,
                                                 django_capture_on_commit_callbacks):
    image = save_attachment(session, files.png())
    loopback.enqueue(Reply.text("Red."))
    PlainAgent.objects.continue_session(session, {"message": "1", "attachments": [image.pk]})
    assert stored_files(storage) == [image.file.name]
    PlainAgent.objects.filter(pk=session.pk).update(
        last_activity_at=timezone.now() - timedelta(days=40))

    with django_capture_on_commit_callbacks(execute=True):
        report = prune(RetentionPolicy(max_age=timedelta(days=30)), models=[PlainAgent])

    assert report.sessions == 1 and report.artifacts == 1
    assert stored_files(storage) == [] and not Artifact.objects.exists()
